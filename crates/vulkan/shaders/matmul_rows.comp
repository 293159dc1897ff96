#version 450
// out[t, r] = dot(W[r, :], x[t, :]) with one thread per output value (row-major weights as
// in matmul.comp): no reductions or barriers, for devices whose threads are SIMD lanes of a
// CPU (lavapipe), where matmul.comp's per-workgroup reduction costs more than the product.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(std430, binding = 0) readonly buffer Wt { uint w[]; };
layout(std430, binding = 1) readonly buffer X { float x[]; };
layout(std430, binding = 2) buffer O { float o[]; };
layout(push_constant) uniform P {
    uint n_in; uint n_out; uint n_tok; uint wo; uint xo; uint oo; uint dtype;
} p;
void main() {
    uint g = flat_group() * WG + gl_LocalInvocationID.x;
    uint r = g % p.n_out;
    uint t = g / p.n_out;
    if (t >= p.n_tok) return;
    uint xb = p.xo + t * p.n_in;
    float acc = 0.0;
    if (p.dtype == 0u) {
        uint wb = p.wo + r * p.n_in;
        for (uint i = 0; i < p.n_in; i++) acc += uintBitsToFloat(w[wb + i]) * x[xb + i];
    } else {
        uint wb = p.wo + r * p.n_in / 2u;
        for (uint i = 0; i < p.n_in / 2u; i++) {
            vec2 h = unpackHalf2x16(w[wb + i]);
            acc += h.x * x[xb + 2u * i] + h.y * x[xb + 2u * i + 1u];
        }
    }
    o[p.oo + t * p.n_out + r] = acc;
}
