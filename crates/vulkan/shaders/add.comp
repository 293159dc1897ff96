#version 450
// x[xo + i] += y[yo + i] (mode 0); x[xo + i] += y[yo + i % bw] (mode 1: a bias of width bw
// added to every row); x[xo + i] += s[so + i / bw] * y[yo + i] (mode 2: rows of width bw,
// each scaled).
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(std430, binding = 0) buffer X { float x[]; };
layout(std430, binding = 1) readonly buffer Y { float y[]; };
layout(std430, binding = 2) readonly buffer S { float s[]; };
layout(push_constant) uniform P { uint n; uint xo; uint yo; uint mode; uint bw; uint so; } p;
void main() {
    uint i = flat_group() * WG + gl_LocalInvocationID.x;
    if (i >= p.n) return;
    if (p.mode == 0u) {
        x[p.xo + i] += y[p.yo + i];
    } else if (p.mode == 1u) {
        x[p.xo + i] += y[p.yo + i % p.bw];
    } else {
        x[p.xo + i] += s[p.so + i / p.bw] * y[p.yo + i];
    }
}
