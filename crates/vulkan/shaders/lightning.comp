#version 450
// Lightning attention (hearth_core::linear::lightning_ref): linear attention with a fixed decay
// per head. One workgroup per (segment, head) walks the segment's tokens in order; each thread
// owns columns j of the head's state S [d, d] (in the state buffer), so the update needs no
// synchronisation beyond loading each token's silu(q) and silu(k) into shared memory. Segments
// come as (row0, n, slot, fresh).
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(std430, binding = 0) readonly buffer Q { float qkv[]; };
layout(std430, binding = 1) readonly buffer D { float dec[]; };
layout(std430, binding = 2) buffer S { float st[]; };
layout(std430, binding = 3) buffer O { float o[]; };
layout(std430, binding = 4) readonly buffer T { uint tab[]; };
layout(push_constant) uniform P {
    uint nh; uint d; uint qo; uint dco; uint so; uint stride; uint off; uint oo; uint to;
} p;
const uint MAXD = 512u;
shared float qs[MAXD];
shared float ks[MAXD];
float silu(float x) { return x / (1.0 + exp(-x)); }
void main() {
    uint grp = flat_group();
    uint sg = grp / p.nh;
    uint h = grp % p.nh;
    uint l = gl_LocalInvocationID.x;
    uint row0 = tab[p.to + 4u * sg];
    uint nt = tab[p.to + 4u * sg + 1u];
    uint slot = tab[p.to + 4u * sg + 2u];
    bool fresh = tab[p.to + 4u * sg + 3u] != 0u;
    uint sb = p.so + slot * p.stride + p.off + h * p.d * p.d;
    float decay = dec[p.dco + h];
    if (fresh) {
        for (uint j = l; j < p.d; j += WG) {
            for (uint i = 0u; i < p.d; i++) st[sb + i * p.d + j] = 0.0;
        }
    }
    uint w = 3u * p.nh * p.d;
    for (uint t = 0u; t < nt; t++) {
        uint r = row0 + t;
        uint base = p.qo + r * w + h * 3u * p.d;
        barrier();
        for (uint i = l; i < p.d; i += WG) {
            qs[i] = silu(qkv[base + i]);
            ks[i] = silu(qkv[base + p.d + i]);
        }
        barrier();
        for (uint j = l; j < p.d; j += WG) {
            float v = silu(qkv[base + 2u * p.d + j]);
            float acc = 0.0;
            for (uint i = 0u; i < p.d; i++) {
                float s = st[sb + i * p.d + j] * decay + ks[i] * v;
                st[sb + i * p.d + j] = s;
                acc += s * qs[i];
            }
            o[p.oo + (r * p.nh + h) * p.d + j] = acc;
        }
    }
}
