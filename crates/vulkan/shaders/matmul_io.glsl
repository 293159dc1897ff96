// The bindings and push constants of every dense matmul kernel (matmul.glsl,
// matmul_coop.glsl; the host's `matmul_one` binds them): the weight W [n_out, n_in] in its
// file's type (quant.glsl), rows of `row_bytes` bytes; the tokens x [n_tok, n_in] from float
// xo; the results out [n_tok, n_out] from float oo.
layout(std430, binding = 0) readonly buffer Wt { uint w[]; };
layout(std430, binding = 1) readonly buffer X { float x[]; };
layout(std430, binding = 2) buffer O { float o[]; };
layout(push_constant) uniform P {
    uint n_in; uint n_out; uint n_tok; uint row_bytes; uint xo; uint oo;
} p;
#define GRID_BINDING 3
#include "quant.glsl"
