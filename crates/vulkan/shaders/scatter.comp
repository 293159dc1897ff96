#version 450
// Row t of src (rows of `width`) into row tab[to + t] of dst.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(std430, binding = 0) readonly buffer S { float src[]; };
layout(std430, binding = 1) buffer D { float dst[]; };
layout(std430, binding = 2) readonly buffer T { uint tab[]; };
layout(push_constant) uniform P { uint n; uint width; uint so; uint dof; uint to; } p;
void main() {
    uint i = flat_group() * WG + gl_LocalInvocationID.x;
    if (i >= p.n) return;
    uint t = i / p.width;
    uint c = i % p.width;
    dst[p.dof + tab[p.to + t] * p.width + c] = src[p.so + i];
}
