#version 450
// The KV cache's randomized Walsh-Hadamard rotation (hearth_core::kv::rotate) in place on
// `n` chunks of `rot` values (a power of two up to 128) at x[xo..]: mode 0 rotates (signs,
// then the transform), mode 1 undoes it (the transform, then signs). One invocation per
// chunk, with the CPU's butterfly order and scale, so the bits are the CPU's.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(std430, binding = 0) buffer X { float x[]; };
layout(push_constant) uniform P {
    uint n; uint rot; uint xo; uint mode; uint sign_lo; uint sign_hi; float scale;
} p;

float a[128];

float sgn(uint i) {
    uint m = i % 64u;
    uint b = m < 32u ? (p.sign_lo >> m) : (p.sign_hi >> (m - 32u));
    return (b & 1u) == 1u ? -1.0 : 1.0;
}

void main() {
    uint c = flat_group() * WG + gl_LocalInvocationID.x;
    if (c >= p.n) return;
    uint base = p.xo + c * p.rot;
    for (uint i = 0u; i < p.rot; i++) {
        a[i] = x[base + i];
        if (p.mode == 0u) a[i] *= sgn(i);
    }
    for (uint h = 1u; h < p.rot; h *= 2u) {
        for (uint i = 0u; i < p.rot; i += 2u * h) {
            for (uint j = i; j < i + h; j++) {
                float u = a[j];
                float v = a[j + h];
                a[j] = u + v;
                a[j + h] = u - v;
            }
        }
    }
    for (uint i = 0u; i < p.rot; i++) {
        float v = a[i] * p.scale;
        if (p.mode == 1u) v *= sgn(i);
        x[base + i] = v;
    }
}
