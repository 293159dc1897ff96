#version 450
// out[t, c] = W[tab[to + t], c] for W [rows, width] stored as 32-bit words: f32 values
// (dtype 0) or pairs of f16 values (dtype 1).
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(std430, binding = 0) readonly buffer Wt { uint w[]; };
layout(std430, binding = 1) buffer O { float o[]; };
layout(std430, binding = 2) readonly buffer T { uint tab[]; };
layout(push_constant) uniform P { uint n; uint width; uint oo; uint to; uint dtype; } p;
void main() {
    uint i = flat_group() * WG + gl_LocalInvocationID.x;
    if (i >= p.n) return;
    uint t = i / p.width;
    uint e = tab[p.to + t] * p.width + i % p.width;
    float v;
    if (p.dtype == 0u) {
        v = uintBitsToFloat(w[e]);
    } else {
        vec2 h = unpackHalf2x16(w[e / 2u]);
        v = (e & 1u) == 0u ? h.x : h.y;
    }
    o[p.oo + i] = v;
}
