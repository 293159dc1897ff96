#version 450
// The gated delta rule (hearth_core::linear::delta_rule_ref). One workgroup per (segment, value
// head) walks the segment's tokens in order; each thread owns columns j of the head's state
// S [k_dim, v_dim] (in the state buffer), so the update needs no synchronisation beyond loading
// each token's normalised q and k into shared memory. Segments come as (row0, n, slot, fresh).
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(std430, binding = 0) readonly buffer Q { float qkv[]; };
layout(std430, binding = 1) readonly buffer A { float av[]; };
layout(std430, binding = 2) readonly buffer B { float bv[]; };
layout(std430, binding = 3) readonly buffer AC { float acoef[]; };
layout(std430, binding = 4) readonly buffer DT { float dtb[]; };
layout(std430, binding = 5) buffer S { float st[]; };
layout(std430, binding = 6) buffer O { float o[]; };
layout(std430, binding = 7) readonly buffer T { uint tab[]; };
layout(push_constant) uniform P {
    uint nk; uint nv; uint dk; uint dv; uint tiled; uint width;
    uint qo; uint ao; uint bo; uint aco; uint dto; uint so; uint stride; uint off; uint oo; uint to;
} p;
const uint MAXD = 512u;
shared float qs[MAXD];
shared float ks[MAXD];
shared float red[2];
// ln(1 + y) to full precision for small y (Goldberg's trick: the rounding of 1 + y cancels);
// the decay exp(g) multiplies the state every token, so its error accumulates
float log1p_(float y) {
    float u = 1.0 + y;
    return u == 1.0 ? y : log(u) * y / (u - 1.0);
}
float softplus(float x) { return x > 20.0 ? x : log1p_(exp(x)); }
void main() {
    uint grp = flat_group();
    uint sg = grp / p.nv;
    uint h = grp % p.nv;
    uint l = gl_LocalInvocationID.x;
    uint row0 = tab[p.to + 4u * sg];
    uint nt = tab[p.to + 4u * sg + 1u];
    uint slot = tab[p.to + 4u * sg + 2u];
    bool fresh = tab[p.to + 4u * sg + 3u] != 0u;
    uint kh = p.tiled != 0u ? h % p.nk : h / (p.nv / p.nk);
    uint sb = p.so + slot * p.stride + p.off + h * p.dk * p.dv;
    float scale = 1.0 / sqrt(float(p.dk));
    if (fresh) {
        // each thread clears the columns it owns
        for (uint j = l; j < p.dv; j += WG) {
            for (uint i = 0u; i < p.dk; i++) st[sb + i * p.dv + j] = 0.0;
        }
    }
    for (uint t = 0u; t < nt; t++) {
        uint r = row0 + t;
        uint base = p.qo + r * p.width;
        barrier();
        for (uint i = l; i < p.dk; i += WG) {
            qs[i] = qkv[base + kh * p.dk + i];
            ks[i] = qkv[base + (p.nk + kh) * p.dk + i];
        }
        barrier();
        if (l == 0u) {
            float sq = 0.0, sk = 0.0;
            for (uint i = 0u; i < p.dk; i++) { sq += qs[i] * qs[i]; sk += ks[i] * ks[i]; }
            red[0] = 1.0 / sqrt(sq + 1e-6) * scale;
            red[1] = 1.0 / sqrt(sk + 1e-6);
        }
        barrier();
        for (uint i = l; i < p.dk; i += WG) {
            qs[i] = qs[i] * red[0];
            ks[i] = ks[i] * red[1];
        }
        barrier();
        float g = acoef[p.aco + h] * softplus(av[p.ao + r * p.nv + h] + dtb[p.dto + h]);
        float beta = 1.0 / (1.0 + exp(-bv[p.bo + r * p.nv + h]));
        float decay = exp(g);
        for (uint j = l; j < p.dv; j += WG) {
            float kv = 0.0;
            for (uint i = 0u; i < p.dk; i++) {
                float s = st[sb + i * p.dv + j] * decay;
                st[sb + i * p.dv + j] = s;
                kv += s * ks[i];
            }
            float d = (qkv[base + 2u * p.nk * p.dk + h * p.dv + j] - kv) * beta;
            float acc = 0.0;
            for (uint i = 0u; i < p.dk; i++) {
                float s = st[sb + i * p.dv + j] + ks[i] * d;
                st[sb + i * p.dv + j] = s;
                acc += s * qs[i];
            }
            o[p.oo + (r * p.nv + h) * p.dv + j] = acc;
        }
    }
}
