#version 450
// x = 1 / (1 + exp(-x)) (mode 0).
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(std430, binding = 0) buffer X { float x[]; };
layout(push_constant) uniform P { uint n; uint xo; uint mode; } p;
void main() {
    uint i = flat_group() * WG + gl_LocalInvocationID.x;
    if (i >= p.n) return;
    float v = x[p.xo + i];
    x[p.xo + i] = 1.0 / (1.0 + exp(-v));
}
