// The block product every cooperative-matrix kernel shares (matmul_coop.glsl, moe_coop.glsl;
// VK_KHR_cooperative_matrix): 16 weight rows decoded from their file's type (quant.glsl) and
// 16 tokens rounded to f16, their products summed in f32, in C x C x C products at subgroup
// scope (C = 16 or 8, set by the including .comp: the sizes devices report; lavapipe has only
// 8). The includer declares the weight buffer `w` and the tokens `x` (with quant.glsl) first.
//
// For each chunk of 32 values along n_in, the workgroup's threads decode the block's 16 rows
// and round its 16 tokens' values into shared memory, and subgroup 0 adds the chunk's
// products to its (16 / C)^2 accumulators, C values of depth at a time in order. A token's
// result is its own column of those products, summed over the chunks in order: it does not
// depend on the other tokens of the block, nor on how many there are, so a batch of one
// (decoding) and a prompt give a row the same bits, whichever tokens share its block.
#extension GL_KHR_cooperative_matrix : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require

// rows and tokens of a block
const uint T = 16u;
// products per side of a block
const uint NC = T / C;
// no token in this column of the block
const uint NONE = 0xFFFFFFFFu;
// the chunk: 16 rows x 32 values, row-major
shared float16_t sa[T * 32u];
// the tokens: 16 tokens x 32 values, token-major (column-major as the product's B)
shared float16_t sb[T * 32u];
// the block's results, row-major: sc[r * T + t]
shared float sc[T * T];
// where each token's values start in x (NONE: a column of zeros); set by the includer
shared uint tx[T];

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

// Rows r0 .. r0 + 15 of a weight of n_out rows (row r's bytes from wb + r * row_bytes) times
// the tokens of tx, into sc. Every thread of the workgroup calls it, after a barrier that
// makes tx visible; it ends with one that makes sc visible.
void coop_block(uint wb, uint r0, uint n_out, uint n_in, uint row_bytes) {
    uint l = gl_LocalInvocationID.x;
    coopmat<float, gl_ScopeSubgroup, C, C, gl_MatrixUseAccumulator> acc[NC * NC];
    for (uint i = 0u; i < NC * NC; i++) {
        acc[i] = coopmat<float, gl_ScopeSubgroup, C, C, gl_MatrixUseAccumulator>(0.0);
    }
    uint nch = (n_in + 31u) / 32u;
    for (uint c = 0u; c < nch; c++) {
        // the weights: a thread per row
        for (uint r = l; r < T; r += WG) {
            float v[32];
            uint rb = wb + (r0 + r) * row_bytes;
            if (r0 + r >= n_out) {
                for (uint i = 0u; i < 32u; i++) v[i] = 0.0;
            } else if (32u * (c + 1u) <= n_in) {
                q_chunk(rb, c, v);
            } else {
                // a float row's last values (quantized rows are whole chunks)
                for (uint i = 0u; i < 32u; i++) {
                    uint k = 32u * c + i;
                    v[i] = k < n_in ? q_elem(rb, k) : 0.0;
                }
            }
            for (uint i = 0u; i < 32u; i++) sa[r * 32u + i] = float16_t(r16(v[i]));
        }
        // the tokens: a thread per value
        for (uint e = l; e < T * 32u; e += WG) {
            uint t = e / 32u, k = 32u * c + e % 32u;
            float xv = 0.0;
            if (tx[t] != NONE && k < n_in) xv = x[tx[t] + k];
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
}
