#version 450
// Rotate x [n_tok, n_heads, head_dim] in place: one thread per (token, head, pair), with each
// token's (cos, sin) per pair from the table (computed on the host, as the CPU backend does).
// Pairs are (2i, 2i + 1) (style 0) or (i, i + half) (style 1, NeoX).
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(std430, binding = 0) buffer X { float x[]; };
layout(std430, binding = 1) readonly buffer T { uint tab[]; };
layout(push_constant) uniform P {
    uint n; uint n_heads; uint head_dim; uint half_; uint style; uint xo; uint to;
} p;
void main() {
    uint i = flat_group() * WG + gl_LocalInvocationID.x;
    if (i >= p.n) return;
    uint pair = i % p.half_;
    uint th = i / p.half_;
    uint t = th / p.n_heads;
    uint base = p.xo + th * p.head_dim;
    uint a = p.style == 0u ? 2u * pair : pair;
    uint b = p.style == 0u ? 2u * pair + 1u : pair + p.half_;
    float c = uintBitsToFloat(tab[p.to + 2u * (t * p.half_ + pair)]);
    float s = uintBitsToFloat(tab[p.to + 2u * (t * p.half_ + pair) + 1u]);
    float x0 = x[base + a];
    float x1 = x[base + b];
    x[base + a] = x0 * c - x1 * s;
    x[base + b] = x0 * s + x1 * c;
}
