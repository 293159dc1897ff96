// Weights as the file stores them, decoded in registers: the shared block decoders of the
// matmul, moe_mm and get_rows shaders. The includer declares `uint w[]` (the weight's bytes,
// padded with at least 4 bytes past the end) and defines GRID_BINDING, where the i-quants'
// grids are (crates/vulkan/src/weights.rs `grids`); specialization constant 1 says the type.
//
// Block layouts: llama.cpp's ggml-common.h (the GGUF format spec), as crates/quant's reference
// dequantizers read them; each decoder below computes what that crate's `dequant` computes.
// Every type decodes in chunks of 32 values (a block, or a sub-block of a 256-value
// super-block); F32, F16 and BF16 also decode single values for rows that end mid-chunk.
layout(constant_id = 1) const uint QT = 0;
const uint QT_F32 = 0, QT_F16 = 1, QT_BF16 = 2, QT_Q4_0 = 3, QT_Q4_1 = 4, QT_Q5_0 = 5,
    QT_Q5_1 = 6, QT_Q8_0 = 7, QT_Q2_K = 8, QT_Q3_K = 9, QT_Q4_K = 10, QT_Q5_K = 11,
    QT_Q6_K = 12, QT_IQ4_NL = 13, QT_IQ4_XS = 14, QT_MXFP4 = 15, QT_IQ2_XXS = 16,
    QT_IQ2_XS = 17, QT_IQ2_S = 18, QT_IQ3_XXS = 19, QT_IQ3_S = 20;

// ggml-common.h's i-quant grids, as words (weights.rs `grids`): the rows of iq2xxs_grid,
// iq2xs_grid and iq2s_grid (8 bytes each), iq3xxs_grid and iq3s_grid (4 bytes each), then
// ksigns_iq2xs (a byte each)
layout(std430, binding = GRID_BINDING) readonly buffer G { uint gr[]; };
const uint G_IQ2XXS = 0u, G_IQ2XS = 512u, G_IQ2S = 1536u, G_IQ3XXS = 3584u, G_IQ3S = 3840u,
    G_KSIGNS = 4352u;
// Value j (0..7) of row `row` of an 8-byte grid at word `g`.
float grid8(uint g, uint row, uint j) {
    return float((gr[g + 2u * row + (j >> 2)] >> (8u * (j & 3u))) & 0xFFu);
}
// Value j (0..3) of row `row` of a 4-byte grid at word `g`.
float grid4(uint g, uint row, uint j) {
    return float((gr[g + row] >> (8u * j)) & 0xFFu);
}
// ksigns_iq2xs[i]: 7 sign bits and their parity.
uint ksigns(uint i) {
    return (gr[G_KSIGNS + (i >> 2)] >> (8u * (i & 3u))) & 0xFFu;
}
// -1 where bit j of `bits` is set, else 1.
float sgn(uint bits, uint j) {
    return ((bits >> j) & 1u) == 1u ? -1.0 : 1.0;
}

// ggml-common.h: kvalues_iq4nl and kvalues_mxfp4 (the E2M1 values, doubled)
const float KV_IQ4NL[16] = float[16](-127.0, -104.0, -83.0, -65.0, -49.0, -35.0, -22.0, -10.0,
    1.0, 13.0, 25.0, 38.0, 53.0, 69.0, 89.0, 113.0);
const float KV_MXFP4[16] = float[16](0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 0.0, -1.0, -2.0,
    -3.0, -4.0, -6.0, -8.0, -12.0);

// The 4 bytes at byte `b` (any alignment), little-endian.
uint u32at(uint b) {
    uint s = (b & 3u) * 8u;
    uint lo = w[b >> 2];
    return s == 0u ? lo : (lo >> s) | (w[(b >> 2) + 1u] << (32u - s));
}
// The byte at `b`.
uint u8at(uint b) {
    return (w[b >> 2] >> ((b & 3u) * 8u)) & 0xFFu;
}
// The 16-bit value at even byte `b`.
uint u16at(uint b) {
    return (w[b >> 2] >> ((b & 2u) * 8u)) & 0xFFFFu;
}
float f16at(uint b) {
    return unpackHalf2x16(u16at(b)).x;
}
// Byte k (0..3) of word q.
uint bk(uint q, uint k) {
    return (q >> (8u * k)) & 0xFFu;
}

// Bytes of a block and values in it.
uint q_block_bytes() {
    switch (QT) {
    case QT_F32: return 128u;
    case QT_F16: case QT_BF16: return 64u;
    case QT_Q4_0: case QT_IQ4_NL: return 18u;
    case QT_Q4_1: return 20u;
    case QT_Q5_0: return 22u;
    case QT_Q5_1: return 24u;
    case QT_Q8_0: return 34u;
    case QT_MXFP4: return 17u;
    case QT_Q2_K: return 84u;
    case QT_Q3_K: return 110u;
    case QT_Q4_K: return 144u;
    case QT_Q5_K: return 176u;
    case QT_Q6_K: return 210u;
    case QT_IQ2_XXS: return 66u;
    case QT_IQ2_XS: return 74u;
    case QT_IQ2_S: return 82u;
    case QT_IQ3_XXS: return 98u;
    case QT_IQ3_S: return 110u;
    default: return 136u; // IQ4_XS
    }
}
uint q_block_values() {
    return QT >= QT_Q2_K && QT <= QT_Q6_K || QT == QT_IQ4_XS || QT >= QT_IQ2_XXS ? 256u : 32u;
}

// Value i of the row at byte rb, for the float types.
float q_elem(uint rb, uint i) {
    if (QT == QT_F32) return uintBitsToFloat(w[(rb >> 2) + i]);
    uint h = u16at(rb + 2u * i);
    return QT == QT_F16 ? unpackHalf2x16(h).x : uintBitsToFloat(h << 16);
}

// (sc, m) of sub-block j of a Q4_K / Q5_K super-block whose 12 scale bytes start at `s`.
uvec2 scale_min_k4(uint s, uint j) {
    if (j < 4u) return uvec2(u8at(s + j) & 63u, u8at(s + j + 4u) & 63u);
    uint a = u8at(s + j + 4u);
    return uvec2((a & 15u) | ((u8at(s + j - 4u) >> 6) << 4), (a >> 4) | ((u8at(s + j) >> 6) << 4));
}

// Values 32c..32c+32 of the row at byte rb.
void q_chunk(uint rb, uint c, out float v[32]) {
    if (QT == QT_F32) {
        uint b = (rb >> 2) + 32u * c;
        for (uint i = 0u; i < 32u; i++) v[i] = uintBitsToFloat(w[b + i]);
    } else if (QT == QT_F16 || QT == QT_BF16) {
        uint b = rb + 64u * c;
        for (uint i = 0u; i < 16u; i++) {
            uint q = u32at(b + 4u * i);
            if (QT == QT_F16) {
                vec2 h = unpackHalf2x16(q);
                v[2u * i] = h.x;
                v[2u * i + 1u] = h.y;
            } else {
                v[2u * i] = uintBitsToFloat(q << 16);
                v[2u * i + 1u] = uintBitsToFloat(q & 0xFFFF0000u);
            }
        }
    } else if (QT == QT_Q4_0 || QT == QT_Q4_1 || QT == QT_IQ4_NL || QT == QT_MXFP4) {
        // 16 bytes of nibbles: low nibbles are values 0..16, high ones 16..32
        uint b = rb + q_block_bytes() * c;
        float d, m = 0.0;
        uint qs;
        if (QT == QT_MXFP4) {
            uint e = u8at(b);
            d = uintBitsToFloat(e < 2u ? 0x00200000u << e : (e - 1u) << 23);
            qs = b + 1u;
        } else {
            d = f16at(b);
            if (QT == QT_Q4_1) m = f16at(b + 2u);
            qs = QT == QT_Q4_1 ? b + 4u : b + 2u;
        }
        for (uint j = 0u; j < 4u; j++) {
            uint q = u32at(qs + 4u * j);
            for (uint k = 0u; k < 4u; k++) {
                uint x = bk(q, k);
                uint l = 4u * j + k;
                if (QT == QT_Q4_0) {
                    v[l] = d * float(int(x & 15u) - 8);
                    v[l + 16u] = d * float(int(x >> 4) - 8);
                } else if (QT == QT_Q4_1) {
                    v[l] = d * float(x & 15u) + m;
                    v[l + 16u] = d * float(x >> 4) + m;
                } else if (QT == QT_IQ4_NL) {
                    v[l] = d * KV_IQ4NL[x & 15u];
                    v[l + 16u] = d * KV_IQ4NL[x >> 4];
                } else {
                    v[l] = d * KV_MXFP4[x & 15u];
                    v[l + 16u] = d * KV_MXFP4[x >> 4];
                }
            }
        }
    } else if (QT == QT_Q5_0 || QT == QT_Q5_1) {
        // d (, m), 32 high bits, 16 bytes of low nibbles
        uint b = rb + q_block_bytes() * c;
        float d = f16at(b);
        float m = QT == QT_Q5_1 ? f16at(b + 2u) : 0.0;
        uint hb = QT == QT_Q5_1 ? b + 4u : b + 2u;
        uint qh = u32at(hb);
        for (uint j = 0u; j < 4u; j++) {
            uint q = u32at(hb + 4u + 4u * j);
            for (uint k = 0u; k < 4u; k++) {
                uint x = bk(q, k);
                uint l = 4u * j + k;
                uint lo = (x & 15u) | (((qh >> l) & 1u) << 4);
                uint hi = (x >> 4) | (((qh >> (l + 16u)) & 1u) << 4);
                if (QT == QT_Q5_0) {
                    v[l] = d * float(int(lo) - 16);
                    v[l + 16u] = d * float(int(hi) - 16);
                } else {
                    v[l] = d * float(lo) + m;
                    v[l + 16u] = d * float(hi) + m;
                }
            }
        }
    } else if (QT == QT_Q8_0) {
        uint b = rb + 34u * c;
        float d = f16at(b);
        for (uint j = 0u; j < 8u; j++) {
            int q = int(u32at(b + 2u + 4u * j));
            for (uint k = 0u; k < 4u; k++) v[4u * j + k] = d * float(bitfieldExtract(q, int(8u * k), 8));
        }
    } else {
        // a 32-value sub-block s of super-block c / 8
        uint b = rb + q_block_bytes() * (c >> 3);
        uint s = c & 7u;
        if (QT == QT_Q2_K) {
            // scales[16], qs[64], d, dmin; sub-block s: qs[32 (s / 4) ..] >> 2 (s % 4)
            float d = f16at(b + 80u), dmin = f16at(b + 82u);
            uint sh = 2u * (s & 3u);
            for (uint h = 0u; h < 2u; h++) {
                uint sc = u8at(b + 2u * s + h);
                float dl = d * float(sc & 15u), ml = dmin * float(sc >> 4);
                for (uint j = 0u; j < 4u; j++) {
                    uint q = u32at(b + 16u + 32u * (s >> 2) + 16u * h + 4u * j);
                    for (uint k = 0u; k < 4u; k++) {
                        v[16u * h + 4u * j + k] = dl * float((bk(q, k) >> sh) & 3u) - ml;
                    }
                }
            }
        } else if (QT == QT_Q3_K) {
            // hmask[32], qs[64], scales[12], d; q = (2 bits) - 4 (1 - high bit s)
            float d = f16at(b + 108u);
            uint sh = 2u * (s & 3u);
            for (uint h = 0u; h < 2u; h++) {
                uint j16 = 2u * s + h;
                uint lo = (u8at(b + 96u + (j16 & 7u)) >> (4u * (j16 >> 3))) & 15u;
                uint hi = (u8at(b + 104u + (j16 & 3u)) >> (2u * (j16 >> 2))) & 3u;
                float dl = d * float(int(lo | (hi << 4)) - 32);
                for (uint j = 0u; j < 4u; j++) {
                    uint q = u32at(b + 32u + 32u * (s >> 2) + 16u * h + 4u * j);
                    uint m = u32at(b + 16u * h + 4u * j);
                    for (uint k = 0u; k < 4u; k++) {
                        int x = int((bk(q, k) >> sh) & 3u) - 4 * int(1u - ((bk(m, k) >> s) & 1u));
                        v[16u * h + 4u * j + k] = dl * float(x);
                    }
                }
            }
        } else if (QT == QT_Q4_K || QT == QT_Q5_K) {
            // d, dmin, scales[12], (Q5_K: qh[32],) qs[128]: sub-block s is the nibbles s % 2
            // of qs[32 (s / 2) ..] (and bit s of qh)
            float d = f16at(b), dmin = f16at(b + 2u);
            uvec2 sm = scale_min_k4(b + 4u, s);
            float dl = d * float(sm.x), ml = dmin * float(sm.y);
            uint qs = b + (QT == QT_Q5_K ? 48u : 16u) + 32u * (s >> 1);
            for (uint j = 0u; j < 8u; j++) {
                uint q = u32at(qs + 4u * j);
                uint qh = QT == QT_Q5_K ? u32at(b + 16u + 4u * j) : 0u;
                for (uint k = 0u; k < 4u; k++) {
                    uint x = (bk(q, k) >> (4u * (s & 1u))) & 15u;
                    if (QT == QT_Q5_K) x |= ((bk(qh, k) >> s) & 1u) << 4;
                    v[4u * j + k] = dl * float(x) - ml;
                }
            }
        } else if (QT == QT_Q6_K) {
            // ql[128], qh[64], scales[16] (i8), d; sub-block s = 4 h + t
            float d = f16at(b + 208u);
            uint h = s >> 2, t = s & 3u;
            for (uint g = 0u; g < 2u; g++) {
                int sc = bitfieldExtract(int(u8at(b + 192u + 2u * s + g)), 0, 8);
                float dl = d * float(sc);
                for (uint j = 0u; j < 4u; j++) {
                    uint l = 16u * g + 4u * j;
                    uint ql = u32at(b + 64u * h + 32u * (t & 1u) + l);
                    uint qh = u32at(b + 128u + 32u * h + l);
                    for (uint k = 0u; k < 4u; k++) {
                        uint lo = (bk(ql, k) >> (4u * (t >> 1))) & 15u;
                        uint hi = (bk(qh, k) >> (2u * t)) & 3u;
                        v[l + k] = dl * float(int(lo | (hi << 4)) - 32);
                    }
                }
            }
        } else if (QT == QT_IQ2_XXS || QT == QT_IQ3_XXS) {
            // d, then per sub-block: grid indices (IQ2_XXS: 4 bytes, then a word of 4 x 7 sign
            // bits and a 4-bit scale; IQ3_XXS: 8 bytes, the words after all 64 index bytes)
            float d = f16at(b);
            uint aux = QT == QT_IQ2_XXS ? u32at(b + 6u + 8u * s) : u32at(b + 66u + 4u * s);
            float db = d * (0.5 + float(aux >> 28)) * (QT == QT_IQ2_XXS ? 0.25 : 0.5);
            for (uint l = 0u; l < 4u; l++) {
                uint sg = ksigns((aux >> (7u * l)) & 127u);
                if (QT == QT_IQ2_XXS) {
                    uint row = u8at(b + 2u + 8u * s + l);
                    for (uint j = 0u; j < 8u; j++) {
                        v[8u * l + j] = db * grid8(G_IQ2XXS, row, j) * sgn(sg, j);
                    }
                } else {
                    uint r1 = u8at(b + 2u + 8u * s + 2u * l), r2 = u8at(b + 3u + 8u * s + 2u * l);
                    for (uint j = 0u; j < 4u; j++) {
                        v[8u * l + j] = db * grid4(G_IQ3XXS, r1, j) * sgn(sg, j);
                        v[8u * l + 4u + j] = db * grid4(G_IQ3XXS, r2, j) * sgn(sg, j + 4u);
                    }
                }
            }
        } else if (QT == QT_IQ2_XS || QT == QT_IQ2_S) {
            // groups of 8 values 4s..4s+4, a 4-bit scale per two groups. IQ2_XS: d, qs[32]
            // (u16: 9-bit index, 7-bit sign code), scales[8]. IQ2_S: d, qs[32], signs[32],
            // qh[8] (2 index bits a group), scales[8]
            float d = f16at(b);
            for (uint gi = 0u; gi < 4u; gi++) {
                uint g = 4u * s + gi;
                uint sc = (u8at(b + (QT == QT_IQ2_XS ? 66u : 74u) + (g >> 2)) >> (4u * ((g >> 1) & 1u))) & 15u;
                float db = d * (0.5 + float(sc)) * 0.25;
                uint row, sg, grid;
                if (QT == QT_IQ2_XS) {
                    uint q = u16at(b + 2u + 2u * g);
                    row = q & 511u;
                    sg = ksigns(q >> 9);
                    grid = G_IQ2XS;
                } else {
                    row = u8at(b + 2u + g) | (((u8at(b + 66u + (g >> 2)) >> (2u * (g & 3u))) & 3u) << 8);
                    sg = u8at(b + 34u + g);
                    grid = G_IQ2S;
                }
                for (uint j = 0u; j < 8u; j++) v[8u * gi + j] = db * grid8(grid, row, j) * sgn(sg, j);
            }
        } else if (QT == QT_IQ3_S) {
            // d, qs[64], qh[8], signs[32], scales[4]: index i (4 values) = qs[i] | bit i of qh
            float d = f16at(b);
            uint sc = (u8at(b + 106u + (s >> 1)) >> (4u * (s & 1u))) & 15u;
            float db = d * float(1u + 2u * sc);
            uint qh = u8at(b + 66u + s);
            for (uint ii = 0u; ii < 8u; ii++) {
                uint i = 8u * s + ii;
                uint row = u8at(b + 2u + i) | (((qh >> ii) & 1u) << 8);
                uint sg = u8at(b + 74u + (i >> 1));
                for (uint j = 0u; j < 4u; j++) {
                    v[4u * ii + j] = db * grid4(G_IQ3S, row, j) * sgn(sg, 4u * (ii & 1u) + j);
                }
            }
        } else {
            // IQ4_XS: d, scales_h (u16), scales_l[4], qs[128]
            float d = f16at(b);
            uint ls = ((u8at(b + 4u + (s >> 1)) >> (4u * (s & 1u))) & 15u)
                | (((u16at(b + 2u) >> (2u * s)) & 3u) << 4);
            float dl = d * float(int(ls) - 32);
            for (uint j = 0u; j < 4u; j++) {
                uint q = u32at(b + 8u + 16u * s + 4u * j);
                for (uint k = 0u; k < 4u; k++) {
                    uint x = bk(q, k);
                    v[4u * j + k] = dl * KV_IQ4NL[x & 15u];
                    v[4u * j + k + 16u] = dl * KV_IQ4NL[x >> 4];
                }
            }
        }
    }
}
