#version 450
// A MoE batch's slots grouped by expert, for moe_coop.glsl: one workgroup counts each
// expert's slots (ids[io + s], s < n_slots, as floats), then lists the blocks of up to 16
// slots of one expert and each expert's slots one after another. The table gt (uints):
// - gt[0]: the number of blocks nb (at most max_blocks);
// - gt[1 + 3b], gt[2 + 3b], gt[3 + 3b]: block b's expert, its first position in the order,
//   and its number of slots (1 to 16);
// - gt[1 + 3 max_blocks + i]: the order, the slots of expert 0, then of expert 1, ...
// A slot's place within its expert's run depends on the threads' timing; nothing computed
// from the table does (a token's result is its own column of a block: coop_core.glsl).
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(std430, binding = 0) readonly buffer I { float ids[]; };
layout(std430, binding = 1) buffer Groups { uint gt[]; };
layout(push_constant) uniform P { uint n_slots; uint n_exp; uint io; uint max_blocks; } p;
// experts a layer may have (the host checks)
const uint MAX_EXPERTS = 1024u;
shared uint cnt[MAX_EXPERTS];
shared uint cur[MAX_EXPERTS];
void main() {
    uint l = gl_LocalInvocationID.x;
    for (uint e = l; e < p.n_exp; e += WG) cnt[e] = 0u;
    barrier();
    for (uint s = l; s < p.n_slots; s += WG) {
        uint e = uint(ids[p.io + s]);
        if (e < p.n_exp) atomicAdd(cnt[e], 1u);
    }
    barrier();
    if (l == 0u) {
        uint off = 0u, nb = 0u;
        for (uint e = 0u; e < p.n_exp; e++) {
            uint c = cnt[e];
            cur[e] = off;
            for (uint q = 0u; q < c; q += 16u) {
                gt[1u + 3u * nb] = e;
                gt[2u + 3u * nb] = off + q;
                gt[3u + 3u * nb] = min(16u, c - q);
                nb++;
            }
            off += c;
        }
        gt[0] = nb;
    }
    barrier();
    uint ord = 1u + 3u * p.max_blocks;
    for (uint s = l; s < p.n_slots; s += WG) {
        uint e = uint(ids[p.io + s]);
        if (e < p.n_exp) gt[ord + atomicAdd(cur[e], 1u)] = s;
    }
}
