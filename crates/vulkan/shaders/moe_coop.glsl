// A MoE layer's expert matmuls with cooperative matrices (coop_core.glsl), over the slots
// grouped by expert (moe_group.comp's table gt): for every block b of up to 16 slots of expert
// e and every 16 output rows, out[s, r] = dot(W[e, r, :], x[row, :]) (+ bias[e, r]) for each
// slot s of the block, with row = s / k (per_slot 0: the layer's input) or s (per_slot 1: the
// slot's own input). W holds experts e0 .. e0 + ne of [E, n_out, n_in] in one type
// (quant.glsl), rows of `row_bytes` bytes; blocks of other experts are left to their piece's
// dispatch. The dispatch covers max_blocks blocks; those past the table's count return.
#include "common.glsl"
layout(std430, binding = 0) readonly buffer Wt { uint w[]; };
layout(std430, binding = 1) readonly buffer X { float x[]; };
layout(std430, binding = 2) readonly buffer Groups { uint gt[]; };
layout(std430, binding = 3) buffer O { float o[]; };
layout(std430, binding = 4) readonly buffer B { float b[]; };
layout(push_constant) uniform P {
    uint n_in; uint n_out; uint k; uint per_slot; uint has_b;
    uint xo; uint oo; uint row_bytes; uint e0; uint ne; uint max_blocks;
} p;
#define GRID_BINDING 5
#include "quant.glsl"
#include "coop_core.glsl"

// each token's slot
shared uint ts[T];

void main() {
    uint gi = flat_group();
    uint nrb = (p.n_out + T - 1u) / T;
    uint r0 = (gi % nrb) * T;
    uint bl = gi / nrb;
    // the same for the whole workgroup: no barrier is skipped by part of it
    if (bl >= gt[0]) return;
    uint e = gt[1u + 3u * bl];
    if (e < p.e0 || e >= p.e0 + p.ne) return;
    uint first = gt[2u + 3u * bl], n = gt[3u + 3u * bl];
    uint l = gl_LocalInvocationID.x;
    uint ord = 1u + 3u * p.max_blocks;
    for (uint t = l; t < T; t += WG) {
        uint s = t < n ? gt[ord + first + t] : NONE;
        ts[t] = s;
        tx[t] = s == NONE ? NONE : p.xo + (p.per_slot == 1u ? s : s / p.k) * p.n_in;
    }
    barrier();
    coop_block((e - p.e0) * p.n_out * p.row_bytes, r0, p.n_out, p.n_in, p.row_bytes);
    for (uint q = l; q < T * T; q += WG) {
        uint r = q / T, t = q % T;
        if (r0 + r < p.n_out && t < n) {
            float v = sc[q];
            if (p.has_b == 1u) v += b[e * p.n_out + r0 + r];
            o[p.oo + ts[t] * p.n_out + r0 + r] = v;
        }
    }
}
