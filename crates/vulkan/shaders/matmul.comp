#version 450
// out[t, r] = dot(W[r, :], x[t, :]) for W [n_out, n_in] stored as 32-bit words: f32 values
// (dtype 0) or pairs of f16 values (dtype 1). One workgroup per (row, token).
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(std430, binding = 0) readonly buffer Wt { uint w[]; };
layout(std430, binding = 1) readonly buffer X { float x[]; };
layout(std430, binding = 2) buffer O { float o[]; };
layout(push_constant) uniform P {
    uint n_in; uint n_out; uint n_tok; uint wo; uint xo; uint oo; uint dtype;
} p;
shared float red[WG];
float weight(uint r, uint i) {
    if (p.dtype == 0u) return uintBitsToFloat(w[p.wo + r * p.n_in + i]);
    uint e = r * p.n_in + i;
    vec2 h = unpackHalf2x16(w[p.wo + e / 2u]);
    return (e & 1u) == 0u ? h.x : h.y;
}
void main() {
    uint g = flat_group();
    uint r = g % p.n_out;
    uint t = g / p.n_out;
    if (t >= p.n_tok) return;
    uint l = gl_LocalInvocationID.x;
    float acc = 0.0;
    for (uint i = l; i < p.n_in; i += WG) {
        acc += weight(r, i) * x[p.xo + t * p.n_in + i];
    }
    red[l] = acc;
    barrier();
    for (uint s = WG / 2; s > 0; s >>= 1) {
        if (l < s) red[l] += red[l + s];
        barrier();
    }
    if (l == 0u) o[p.oo + t * p.n_out + r] = red[0];
}
