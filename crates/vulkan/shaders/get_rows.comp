#version 450
// out[t, :] = W[tab[to + t], :] for W [rows, width] held in its file's type (quant.glsl), rows
// of `row_bytes` bytes: a thread per (t, chunk of 32 values), the last chunk of a float row
// possibly shorter.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(std430, binding = 0) readonly buffer Wt { uint w[]; };
layout(std430, binding = 1) buffer O { float o[]; };
layout(std430, binding = 2) readonly buffer T { uint tab[]; };
layout(push_constant) uniform P { uint n; uint width; uint oo; uint to; uint row_bytes; } p;
#define GRID_BINDING 3
#include "quant.glsl"
void main() {
    uint i = flat_group() * WG + gl_LocalInvocationID.x;
    uint per = (p.width + 31u) / 32u;
    if (i >= p.n * per) return;
    uint t = i / per, c = i % per;
    uint rb = tab[p.to + t] * p.row_bytes;
    uint ob = p.oo + t * p.width + 32u * c;
    if (32u * c + 32u <= p.width) {
        float v[32];
        q_chunk(rb, c, v);
        for (uint j = 0u; j < 32u; j++) o[ob + j] = v[j];
    } else {
        for (uint j = 32u * c; j < p.width; j++) o[p.oo + t * p.width + j] = q_elem(rb, j);
    }
}
