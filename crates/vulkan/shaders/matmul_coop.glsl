// out[t, r] = dot(W[r, :], x[t, :]) with cooperative matrices (VK_KHR_cooperative_matrix):
// weights decoded from their file's type (quant.glsl) and tokens rounded to f16, products
// summed in f32, in C x C x C products at subgroup scope (C = 16, matmul_coop.comp, or 8,
// matmul_coop8.comp: the sizes devices report; lavapipe has only 8).
//
// A workgroup per block of 16 rows and 16 tokens. For each chunk of 32 values along n_in, its
// threads decode the block's 16 rows and round its 16 tokens' values into shared memory, and
// subgroup 0 adds the chunk's products to its (16 / C)^2 accumulators, C values of depth at a
// time in order. A token's result is its own column of those products, summed over the
// chunks in order: it does not depend on the other tokens of the batch, nor on how many there
// are, so a batch of one (decoding) and a prompt give a row the same bits.
#extension GL_KHR_cooperative_matrix : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
#include "common.glsl"
#include "matmul_io.glsl"

// rows and tokens of a block
const uint T = 16u;
// products per side of a block
const uint NC = T / C;
// the chunk: 16 rows x 32 values, row-major
shared float16_t sa[T * 32u];
// the tokens: 16 tokens x 32 values, token-major (column-major as the product's B)
shared float16_t sb[T * 32u];
// the block's results, row-major
shared float sc[T * T];

// f16's largest finite value: larger activations are clamped to it rather than becoming inf
const float F16_MAX = 65504.0;

// x rounded to the nearest f16 value (ties to even), as an f32 that converts to f16 exactly:
// a conversion's own rounding mode is the driver's choice. Exact steps: scale so that f16's
// last place is 1, round to an integer, scale back (f16's subnormals have the last place of
// its smallest normal exponent, -14).
float r16(float x) {
    int e = max(int((floatBitsToUint(x) >> 23) & 0xFFu) - 127, -14);
    return ldexp(roundEven(ldexp(x, 10 - e)), e - 10);
}

void main() {
    uint g = flat_group();
    uint nrb = (p.n_out + T - 1u) / T;
    uint r0 = (g % nrb) * T;
    uint t0 = (g / nrb) * T;
    if (t0 >= p.n_tok) return;
    uint l = gl_LocalInvocationID.x;
    coopmat<float, gl_ScopeSubgroup, C, C, gl_MatrixUseAccumulator> acc[NC * NC];
    for (uint i = 0u; i < NC * NC; i++) {
        acc[i] = coopmat<float, gl_ScopeSubgroup, C, C, gl_MatrixUseAccumulator>(0.0);
    }
    uint nch = (p.n_in + 31u) / 32u;
    for (uint c = 0u; c < nch; c++) {
        // the weights: a thread per row
        for (uint r = l; r < T; r += WG) {
            float v[32];
            if (r0 + r >= p.n_out) {
                for (uint i = 0u; i < 32u; i++) v[i] = 0.0;
            } else if (32u * (c + 1u) <= p.n_in) {
                q_chunk((r0 + r) * p.row_bytes, c, v);
            } else {
                // a float row's last values (quantized rows are whole chunks)
                for (uint i = 0u; i < 32u; i++) {
                    uint k = 32u * c + i;
                    v[i] = k < p.n_in ? q_elem((r0 + r) * p.row_bytes, k) : 0.0;
                }
            }
            for (uint i = 0u; i < 32u; i++) sa[r * 32u + i] = float16_t(r16(v[i]));
        }
        // the tokens: a thread per value
        for (uint e = l; e < T * 32u; e += WG) {
            uint t = e / 32u, k = 32u * c + e % 32u;
            float xv = 0.0;
            if (t0 + t < p.n_tok && k < p.n_in) xv = x[p.xo + (t0 + t) * p.n_in + k];
            sb[e] = float16_t(r16(clamp(xv, -F16_MAX, F16_MAX)));
        }
        barrier();
        if (gl_SubgroupID == 0u) {
            coopmat<float16_t, gl_ScopeSubgroup, C, C, gl_MatrixUseA> a;
            coopmat<float16_t, gl_ScopeSubgroup, C, C, gl_MatrixUseB> b;
            for (uint k = 0u; k < 32u; k += C) {
                for (uint i = 0u; i < NC; i++) {
                    // rows C i.. of the chunk, then each C tokens
                    coopMatLoad(a, sa, i * C * 32u + k, 32u, gl_CooperativeMatrixLayoutRowMajor);
                    for (uint j = 0u; j < NC; j++) {
                        coopMatLoad(b, sb, j * C * 32u + k, 32u,
                                    gl_CooperativeMatrixLayoutColumnMajor);
                        acc[i * NC + j] = coopMatMulAdd(a, b, acc[i * NC + j]);
                    }
                }
            }
        }
        barrier();
    }
    if (gl_SubgroupID == 0u) {
        for (uint i = 0u; i < NC; i++) {
            for (uint j = 0u; j < NC; j++) {
                coopMatStore(acc[i * NC + j], sc, i * C * T + j * C, T,
                             gl_CooperativeMatrixLayoutRowMajor);
            }
        }
    }
    barrier();
    for (uint e = l; e < T * T; e += WG) {
        uint r = e / T, t = e % T;
        if (r0 + r < p.n_out && t0 + t < p.n_tok) o[p.oo + (t0 + t) * p.n_out + r0 + r] = sc[e];
    }
}
