#version 450
// n_rows rows of `width` values: dst[do + r * ds + c] = src[so + r * ss + c].
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(std430, binding = 0) readonly buffer S { float src[]; };
layout(std430, binding = 1) buffer D { float dst[]; };
layout(push_constant) uniform P { uint n; uint width; uint so; uint ss; uint dof; uint ds; } p;
void main() {
    uint i = flat_group() * WG + gl_LocalInvocationID.x;
    if (i >= p.n) return;
    uint r = i / p.width;
    uint c = i % p.width;
    dst[p.dof + r * p.ds + c] = src[p.so + r * p.ss + c];
}
