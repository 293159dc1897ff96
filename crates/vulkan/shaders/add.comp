#version 450
// x[xo + i] += y[yo + i] (mode 0), or x[xo + i] += y[yo + i % bw] (mode 1: a bias added to
// every row of width bw).
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(std430, binding = 0) buffer X { float x[]; };
layout(std430, binding = 1) readonly buffer Y { float y[]; };
layout(push_constant) uniform P { uint n; uint xo; uint yo; uint mode; uint bw; } p;
void main() {
    uint i = flat_group() * WG + gl_LocalInvocationID.x;
    if (i >= p.n) return;
    uint j = p.mode == 1u ? i % p.bw : i;
    x[p.xo + i] += y[p.yo + j];
}
