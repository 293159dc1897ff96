#version 450
// Causal attention with an online softmax, one workgroup per (token, query head), over a paged
// cache. The table holds, per token, its position and the offset of its sequence's page table
// (relative to `to`), then the page tables. Sinks (gpt-oss) are one logit per head in S, at
// `sinks - 1` (0: none).
// Each chunk of WG positions: every thread scores one key, then every thread adds the chunk's
// values to the output elements it owns (d = l, l + WG, ...).
// The caches are of KV types `kt` and `vt` (kv.glsl; rows of k_stride and v_stride words),
// read value by value; the rotated types' queries come rotated, and their output is rotated
// back afterwards (hadamard.comp).
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
#include "kv.glsl"
layout(std430, binding = 0) readonly buffer K { uint k[]; };
layout(std430, binding = 1) readonly buffer V { uint v[]; };
layout(std430, binding = 2) readonly buffer Q { float q[]; };
layout(std430, binding = 3) buffer O { float o[]; };
layout(std430, binding = 4) readonly buffer T { uint tab[]; };
layout(std430, binding = 5) readonly buffer S { float sk[]; };
layout(push_constant) uniform P {
    uint n_tok; uint n_head; uint n_kv_head; uint head_dim; uint v_dim;
    uint k_stride; uint v_stride; float scale; uint window;
    uint ko; uint vo; uint qo; uint oo; uint to; uint page_size; uint sinks;
    uint kt; uint vt;
} p;
#define KV_BUF k
#define KV_FN load_k
#define KV_U8 k_u8
#define KV_U16 k_u16
#include "kv_load.glsl"
#undef KV_BUF
#undef KV_FN
#undef KV_U8
#undef KV_U16
#define KV_BUF v
#define KV_FN load_v
#define KV_U8 v_u8
#define KV_U16 v_u16
#include "kv_load.glsl"
const uint MAXV = 16;
shared float qs[1024];
shared float sc[WG];
shared float red[WG];

uint cache_row(uint tbase, uint j) {
    return tab[tbase + j / p.page_size] * p.page_size + j % p.page_size;
}

void main() {
    uint g = flat_group();
    uint h = g % p.n_head;
    uint t = g / p.n_head;
    if (t >= p.n_tok) return;
    uint l = gl_LocalInvocationID.x;
    uint pos = tab[p.to + 2u * t];
    uint tbase = p.to + tab[p.to + 2u * t + 1u];
    uint kh = h / (p.n_head / p.n_kv_head);
    for (uint i = l; i < p.head_dim; i += WG) {
        qs[i] = q[p.qo + (t * p.n_head + h) * p.head_dim + i];
    }
    barrier();
    float ninf = uintBitsToFloat(0xff800000u);
    float m = ninf;
    float lsum = 0.0;
    if (p.sinks != 0u) {
        m = sk[p.sinks - 1u + h];
        lsum = 1.0;
    }
    float acc[MAXV];
    for (uint i = 0; i < MAXV; i++) acc[i] = 0.0;
    uint lo = (p.window == 0u || pos + 1u <= p.window) ? 0u : pos + 1u - p.window;
    for (uint c0 = lo; c0 <= pos; c0 += WG) {
        uint j = c0 + l;
        float s = ninf;
        if (j <= pos) {
            uint kb = p.ko + cache_row(tbase, j) * p.k_stride;
            float d = 0.0;
            if (p.kt == KV_F32) {
                kb += kh * p.head_dim;
                for (uint i = 0; i < p.head_dim; i++) d += qs[i] * uintBitsToFloat(k[kb + i]);
            } else {
                uint e0 = kh * p.head_dim;
                for (uint i = 0; i < p.head_dim; i++) d += qs[i] * load_k(kb, e0 + i, p.kt);
            }
            s = d * p.scale;
        }
        sc[l] = s;
        red[l] = s;
        barrier();
        for (uint st = WG / 2; st > 0; st >>= 1) {
            if (l < st) red[l] = max(red[l], red[l + st]);
            barrier();
        }
        float mn = max(m, red[0]);
        float corr = exp(m - mn);
        lsum *= corr;
        for (uint i = 0; i < MAXV; i++) acc[i] *= corr;
        uint cn = min(WG, pos + 1u - c0);
        for (uint jj = 0; jj < cn; jj++) {
            float pj = exp(sc[jj] - mn);
            lsum += pj;
            uint vb = p.vo + cache_row(tbase, c0 + jj) * p.v_stride;
            uint e0 = kh * p.v_dim;
            uint i = 0;
            for (uint d = l; d < p.v_dim; d += WG) {
                float x = p.vt == KV_F32 ? uintBitsToFloat(v[vb + e0 + d]) : load_v(vb, e0 + d, p.vt);
                acc[i] += pj * x;
                i++;
            }
        }
        m = mn;
        barrier();
    }
    uint i = 0;
    for (uint d = l; d < p.v_dim; d += WG) {
        o[p.oo + (t * p.n_head + h) * p.v_dim + d] = acc[i] / lsum;
        i++;
    }
}
