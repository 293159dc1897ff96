#version 450
// A MoE layer's expert matmuls without grouping: for every token t, chosen slot j and output
// row r, out[(t*k + j), r] = dot(W[e, r, :], x[row, :]) (+ bias[e, r]) with e = ids[t*k + j]
// and row = t (per_slot 0: the layer's input) or t*k + j (per_slot 1: the slot's own input).
// W holds experts e0 .. e0 + ne of [E, n_out, n_in] in one type (quant.glsl), rows of
// `row_bytes` bytes (a layer's experts may be split over several buffers; slots of other
// experts are left to their piece's dispatch).
// One workgroup per (t, j, r); thread l sums chunks l, l + WG, ... (the order per output
// does not depend on the batch).
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(std430, binding = 0) readonly buffer Wt { uint w[]; };
layout(std430, binding = 1) readonly buffer X { float x[]; };
layout(std430, binding = 2) readonly buffer I { float ids[]; };
layout(std430, binding = 3) buffer O { float o[]; };
layout(std430, binding = 4) readonly buffer B { float b[]; };
layout(push_constant) uniform P {
    uint n_in; uint n_out; uint n_slots; uint k; uint per_slot; uint has_b;
    uint xo; uint io; uint oo; uint row_bytes; uint e0; uint ne;
} p;
#define GRID_BINDING 5
#include "quant.glsl"
shared float red[WG];
void main() {
    uint g = flat_group();
    uint r = g % p.n_out;
    uint sl = g / p.n_out;
    if (sl >= p.n_slots) return;
    uint e = uint(ids[p.io + sl]);
    // the same for the whole workgroup: no barrier is skipped by part of it
    if (e < p.e0 || e >= p.e0 + p.ne) return;
    uint row = p.per_slot == 1u ? sl : sl / p.k;
    uint rb = ((e - p.e0) * p.n_out + r) * p.row_bytes;
    uint xb = p.xo + row * p.n_in;
    uint l = gl_LocalInvocationID.x;
    float acc = 0.0;
    uint nch = p.n_in / 32u;
    float v[32];
    for (uint c = l; c < nch; c += WG) {
        q_chunk(rb, c, v);
        float s = 0.0;
        for (uint i = 0u; i < 32u; i++) s += v[i] * x[xb + 32u * c + i];
        acc += s;
    }
    if (l == 0u) {
        for (uint i = 32u * nch; i < p.n_in; i++) acc += q_elem(rb, i) * x[xb + i];
    }
    red[l] = acc;
    barrier();
    for (uint s = WG / 2; s > 0; s >>= 1) {
        if (l < s) red[l] += red[l + s];
        barrier();
    }
    if (l == 0u) {
        float v = red[0];
        if (p.has_b == 1u) v += b[e * p.n_out + r];
        o[p.oo + sl * p.n_out + r] = v;
    }
}
