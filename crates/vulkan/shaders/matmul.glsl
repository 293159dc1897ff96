// out[t, r] = dot(W[r, :], x[t, :]) for W [n_out, n_in] held in its file's type (quant.glsl),
// rows of `row_bytes` bytes. Tokens go in tiles of TILE: each weight chunk of 32 values is
// decoded once per tile and dotted with every token of it.
//
// A row's result does not depend on the batch: its value for a token is the sum, in a fixed
// order, of the same per-chunk dot products whatever the number of tokens. Three variants:
// - ROWS (matmul_rows.comp): a thread per (row, tile), summing chunks 0, 1, ... in turn, for
//   devices whose threads are SIMD lanes of a CPU (lavapipe), where reductions cost more than
//   the product;
// - otherwise a workgroup per (row, tile): thread l sums chunks l, l + WG, ..., then the
//   workgroup adds the threads' sums, with subgroupAdd (SUBGROUP, matmul_sg.comp) or a tree
//   in shared memory (matmul.comp).
#include "matmul_io.glsl"
const uint TILE = 8;

// acc[t] += the chunks c0, c0 + step, ... of row rb dotted with token t0 + t (t < nt), then
// (tail) the values of a float row past its last whole chunk.
void accumulate(uint rb, uint t0, uint nt, uint c0, uint step, bool tail, inout float acc[TILE]) {
    uint nch = p.n_in / 32u;
    float v[32];
    for (uint c = c0; c < nch; c += step) {
        q_chunk(rb, c, v);
        for (uint t = 0u; t < TILE; t++) {
            if (t < nt) {
                uint xb = p.xo + (t0 + t) * p.n_in + 32u * c;
                float s = 0.0;
                for (uint i = 0u; i < 32u; i++) s += v[i] * x[xb + i];
                acc[t] += s;
            }
        }
    }
    if (tail) {
        for (uint i = 32u * nch; i < p.n_in; i++) {
            float wv = q_elem(rb, i);
            for (uint t = 0u; t < TILE; t++) {
                if (t < nt) acc[t] += wv * x[p.xo + (t0 + t) * p.n_in + i];
            }
        }
    }
}

#ifdef ROWS
void main() {
    uint g = flat_group() * WG + gl_LocalInvocationID.x;
    uint r = g % p.n_out;
    uint t0 = (g / p.n_out) * TILE;
    if (t0 >= p.n_tok) return;
    uint nt = min(TILE, p.n_tok - t0);
    float acc[TILE];
    for (uint t = 0u; t < TILE; t++) acc[t] = 0.0;
    accumulate(r * p.row_bytes, t0, nt, 0u, 1u, true, acc);
    for (uint t = 0u; t < TILE; t++) {
        if (t < nt) o[p.oo + (t0 + t) * p.n_out + r] = acc[t];
    }
}
#else
shared float red[TILE][WG];
void main() {
    uint g = flat_group();
    uint r = g % p.n_out;
    uint t0 = (g / p.n_out) * TILE;
    if (t0 >= p.n_tok) return;
    uint nt = min(TILE, p.n_tok - t0);
    uint l = gl_LocalInvocationID.x;
    float acc[TILE];
    for (uint t = 0u; t < TILE; t++) acc[t] = 0.0;
    accumulate(r * p.row_bytes, t0, nt, l, WG, l == 0u, acc);
#ifdef SUBGROUP
    for (uint t = 0u; t < TILE; t++) {
        acc[t] = subgroupAdd(acc[t]);
        if (subgroupElect()) red[t][gl_SubgroupID] = acc[t];
    }
    barrier();
    if (l == 0u) {
        for (uint t = 0u; t < TILE; t++) {
            if (t < nt) {
                float s = 0.0;
                for (uint k = 0u; k < gl_NumSubgroups; k++) s += red[t][k];
                o[p.oo + (t0 + t) * p.n_out + r] = s;
            }
        }
    }
#else
    for (uint t = 0u; t < TILE; t++) red[t][l] = acc[t];
    barrier();
    for (uint s = WG / 2u; s > 0u; s >>= 1) {
        if (l < s) {
            for (uint t = 0u; t < TILE; t++) red[t][l] += red[t][l + s];
        }
        barrier();
    }
    if (l == 0u) {
        for (uint t = 0u; t < TILE; t++) {
            if (t < nt) o[p.oo + (t0 + t) * p.n_out + r] = red[t][0];
        }
    }
#endif
}
#endif
