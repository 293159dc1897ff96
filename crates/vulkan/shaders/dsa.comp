#version 450
// DeepSeek Sparse Attention's choice of positions (hearth_core::dsa::dsa_select_ref). One
// workgroup per query: it scores the query's positions into its row of `sc`, finds the score
// key of the top_k-th best by a bitwise search over order-preserving keys (as f32::total_cmp
// orders), and writes the chosen positions in increasing order: every score above that key,
// then the positions that tie with it, lowest first, until top_k. tab holds per query
// (position, offset of its page table), then the page tables.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(std430, binding = 0) readonly buffer K { float kc[]; };
layout(std430, binding = 1) readonly buffer Q { float q[]; };
layout(std430, binding = 2) readonly buffer W { float w[]; };
layout(std430, binding = 3) buffer S { float sc[]; };
layout(std430, binding = 4) buffer O { float o[]; };
layout(std430, binding = 5) readonly buffer T { uint tab[]; };
layout(push_constant) uniform P {
    uint n; uint n_head; uint head_dim; uint top_k; uint scale; uint width; uint ps;
    uint ko; uint qo; uint wo; uint so; uint oo; uint to;
} p;

shared uint red[WG];

// f32 bits to a key whose unsigned order is f32::total_cmp's
uint okey(float f) {
    uint b = floatBitsToUint(f);
    return (b & 0x80000000u) != 0u ? ~b : (b | 0x80000000u);
}

// the sum of every thread's v
uint total(uint v) {
    uint tid = gl_LocalInvocationID.x;
    red[tid] = v;
    barrier();
    for (uint off = WG / 2u; off > 0u; off >>= 1u) {
        if (tid < off) red[tid] += red[tid + off];
        barrier();
    }
    uint t = red[0];
    barrier();
    return t;
}

void main() {
    uint r = flat_group();
    if (r >= p.n) return;
    uint tid = gl_LocalInvocationID.x;
    uint pos = tab[p.to + 2u * r];
    uint toff = p.to + tab[p.to + 2u * r + 1u];
    uint cnt = pos + 1u;
    uint ob = p.oo + r * p.top_k;
    if (cnt <= p.top_k) {
        for (uint i = tid; i < p.top_k; i += WG) o[ob + i] = i < cnt ? float(i) : -1.0;
        return;
    }
    uint sb = p.so + r * p.width;
    float scale = uintBitsToFloat(p.scale);
    uint qb = p.qo + r * p.n_head * p.head_dim;
    for (uint j = tid; j < cnt; j += WG) {
        uint row = tab[toff + j / p.ps] * p.ps + j % p.ps;
        uint kb = p.ko + row * p.head_dim;
        float s = 0.0;
        for (uint h = 0u; h < p.n_head; h++) {
            float d = 0.0;
            for (uint i = 0u; i < p.head_dim; i++) d += q[qb + h * p.head_dim + i] * kc[kb + i];
            d *= scale;
            s += w[p.wo + r * p.n_head + h] * (d > 0.0 ? d : 0.0);
        }
        sc[sb + j] = s;
    }
    memoryBarrierBuffer();
    barrier();
    // the largest key with at least top_k scores at or above it: the top_k-th best
    uint thr = 0u;
    for (int bit = 31; bit >= 0; bit--) {
        uint cand = thr | (1u << uint(bit));
        uint c = 0u;
        for (uint j = tid; j < cnt; j += WG) c += okey(sc[sb + j]) >= cand ? 1u : 0u;
        if (total(c) >= p.top_k) thr = cand;
    }
    uint above = 0u;
    for (uint j = tid; j < cnt; j += WG) above += okey(sc[sb + j]) > thr ? 1u : 0u;
    uint need = p.top_k - total(above);  // ties to take, lowest positions first
    // compaction in position order, WG positions at a time: a position's slot is the count of
    // chosen ones before it (scores above, plus ties up to `need`)
    uint gt0 = 0u;
    uint eq0 = 0u;
    for (uint c0 = 0u; c0 < cnt; c0 += WG) {
        uint j = c0 + tid;
        uint key = j < cnt ? okey(sc[sb + j]) : 0u;
        bool gt = j < cnt && key > thr;
        bool eq = j < cnt && key == thr;
        uint mine = (gt ? 1u : 0u) | (eq ? 0x10000u : 0u);
        red[tid] = mine;
        barrier();
        for (uint off = 1u; off < WG; off <<= 1u) {
            uint v = tid >= off ? red[tid - off] : 0u;
            barrier();
            red[tid] += v;
            barrier();
        }
        uint before = red[tid] - mine;
        uint chunk = red[WG - 1u];
        barrier();
        uint gtb = gt0 + (before & 0xffffu);
        uint eqb = eq0 + (before >> 16u);
        if (gt || (eq && eqb < need)) o[ob + gtb + min(eqb, need)] = float(j);
        gt0 += chunk & 0xffffu;
        eq0 += chunk >> 16u;
    }
}
