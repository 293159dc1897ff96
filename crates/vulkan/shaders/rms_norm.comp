#version 450
// One workgroup per row of x [rows, width]: x = x / sqrt(mean(x^2) + eps) * w.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(std430, binding = 0) buffer X { float x[]; };
layout(std430, binding = 1) readonly buffer W { float w[]; };
layout(push_constant) uniform P { uint width; uint rows; uint xo; uint wo; float eps; } p;
shared float red[WG];
void main() {
    uint row = flat_group();
    if (row >= p.rows) return;
    uint base = p.xo + row * p.width;
    uint l = gl_LocalInvocationID.x;
    float ss = 0.0;
    for (uint i = l; i < p.width; i += WG) {
        float v = x[base + i];
        ss += v * v;
    }
    red[l] = ss;
    barrier();
    for (uint s = WG / 2; s > 0; s >>= 1) {
        if (l < s) red[l] += red[l + s];
        barrier();
    }
    float r = 1.0 / sqrt(red[0] / float(p.width) + p.eps);
    for (uint i = l; i < p.width; i += WG) {
        x[base + i] = x[base + i] * r * w[p.wo + i];
    }
}
