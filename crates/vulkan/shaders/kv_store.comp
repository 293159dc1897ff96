#version 450
// Row t of src (rows of `width` f32 values) into cache row tab[to + t] of dst (rows of
// `row_words` words) as KV type `ty` (kv.glsl), already rotated where the type is (see
// hadamard.comp). One invocation per unit of a row: a word (two values) of the 16-bit types,
// two blocks of the block types (a pair of blocks is a whole number of words in every one of
// them, so no two invocations share a word). The rounding is hearth_quant::kv's (ggml's
// reference quantizers; IQ4_NL and tq3 search nine scales for the least squared error).
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
#include "kv.glsl"
layout(std430, binding = 0) readonly buffer S { float src[]; };
layout(std430, binding = 1) buffer D { uint dst[]; };
layout(std430, binding = 2) readonly buffer T { uint tab[]; };
layout(push_constant) uniform P {
    uint n; uint units; uint width; uint so; uint dof; uint row_words; uint ty; uint to;
} p;

// f32 to IEEE half, rounding to nearest even (as the `half` crate does).
uint f16_bits(float f) {
    uint x = floatBitsToUint(f);
    uint sgn = (x >> 16) & 0x8000u;
    uint ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return sgn | 0x7e00u;
    if (ax >= 0x477ff000u) return sgn | 0x7c00u;
    if (ax < 0x38800000u) return sgn | uint(roundEven(uintBitsToFloat(ax) * 16777216.0));
    uint e = ax - 0x38000000u;
    uint m = e >> 13;
    uint rem = e & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (m & 1u) == 1u)) m += 1u;
    return sgn | m;
}

// f32 to bfloat16, rounding to nearest even.
uint bf16_bits(float f) {
    uint x = floatBitsToUint(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (x >> 16) | 0x40u;
    return (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
}

// Rust's f32::round: half away from zero.
float round_away(float v) {
    float r = trunc(v);
    if (abs(v - r) >= 0.5) r += sign(v);
    return r;
}

float x[32];
uint q[32];
uint outw[17];

void put8(uint b, uint v) {
    outw[b >> 2] |= (v & 255u) << ((b & 3u) * 8u);
}

void put16(uint b, uint v) {
    outw[b >> 2] |= (v & 65535u) << ((b & 2u) * 8u);
}

// The value of largest magnitude, with its sign (the first of equal magnitudes).
float signed_max() {
    float m = 0.0;
    for (uint i = 0u; i < 32u; i++) {
        if (abs(x[i]) > abs(m)) m = x[i];
    }
    return m;
}

float level(uint ty, uint k) {
    return ty == KV_TQ3 ? TQ3_LEVELS[k] : IQ4NL_LEVELS[k];
}

// The index of the level nearest v (the lower one on a tie).
uint nearest(uint ty, uint n, float v) {
    uint i = 0u;
    while (i < n && level(ty, i) < v) i++;
    if (i == 0u) return 0u;
    if (i == n || v - level(ty, i - 1u) <= level(ty, i) - v) return i - 1u;
    return i;
}

// The codes of least squared error among the scales d0 * (1 + s/16), s in -4..=4, each
// refitted by least squares: the scale into the result, the codes into q.
float search(uint ty, uint n, float d0) {
    float best_e = uintBitsToFloat(0x7f800000u);
    float best_d = 0.0;
    uint codes[32];
    for (int s = -4; s <= 4; s++) {
        float d = d0 * (1.0 + float(s) / 16.0);
        float id = d != 0.0 ? 1.0 / d : 0.0;
        precise float sxg = 0.0;
        precise float sgg = 0.0;
        for (uint i = 0u; i < 32u; i++) {
            uint k = nearest(ty, n, x[i] * id);
            codes[i] = k;
            float g = level(ty, k);
            sxg += x[i] * g;
            sgg += g * g;
        }
        float b = sgg > 0.0 ? sxg / sgg : 0.0;
        precise float e = 0.0;
        for (uint i = 0u; i < 32u; i++) {
            precise float r = x[i] - b * level(ty, codes[i]);
            e += r * r;
        }
        if (e < best_e) {
            best_e = e;
            best_d = b;
            for (uint i = 0u; i < 32u; i++) q[i] = codes[i];
        }
    }
    return best_d;
}

// The block in x as type ty at byte o of outw.
void block(uint ty, uint o) {
    if (ty == KV_Q8_0) {
        float amax = 0.0;
        for (uint i = 0u; i < 32u; i++) amax = max(amax, abs(x[i]));
        float d = amax / 127.0;
        float id = d != 0.0 ? 1.0 / d : 0.0;
        put16(o, f16_bits(d));
        for (uint i = 0u; i < 32u; i++) {
            put8(o + 2u + i, uint(int(clamp(round_away(x[i] * id), -128.0, 127.0))));
        }
        return;
    }
    if (ty == KV_Q4_0 || ty == KV_Q5_0) {
        float half_range = ty == KV_Q4_0 ? 8.0 : 16.0;
        float off = half_range + 0.5;
        float d = signed_max() / -half_range;
        float id = d != 0.0 ? 1.0 / d : 0.0;
        put16(o, f16_bits(d));
        int top = ty == KV_Q4_0 ? 15 : 31;
        uint qh = 0u;
        uint qo = ty == KV_Q4_0 ? 2u : 6u;
        for (uint j = 0u; j < 16u; j++) {
            precise float ta = x[j] * id + off;
            precise float tb = x[j + 16u] * id + off;
            uint a = uint(clamp(int(ta), 0, top));
            uint b = uint(clamp(int(tb), 0, top));
            put8(o + qo + j, (a & 15u) | ((b & 15u) << 4));
            qh |= ((a >> 4) << j) | ((b >> 4) << (j + 16u));
        }
        if (ty == KV_Q5_0) {
            put16(o + 2u, qh);
            put16(o + 4u, qh >> 16);
        }
        return;
    }
    float d;
    if (ty == KV_IQ4NL) {
        float m = signed_max();
        d = search(ty, 16u, m < 0.0 ? m / -127.0 : m / 113.0);
        for (uint j = 0u; j < 16u; j++) put8(o + 2u + j, q[j] | (q[j + 16u] << 4));
    } else {
        precise float ss = 0.0;
        for (uint i = 0u; i < 32u; i++) ss += x[i] * x[i];
        d = search(ty, 8u, sqrt(ss / 32.0));
        // 8 codes in each 3 bytes
        for (uint g = 0u; g < 4u; g++) {
            uint bits = 0u;
            for (uint i = 0u; i < 8u; i++) bits |= q[8u * g + i] << (3u * i);
            put8(o + 2u + 3u * g, bits);
            put8(o + 3u + 3u * g, bits >> 8);
            put8(o + 4u + 3u * g, bits >> 16);
        }
    }
    put16(o, f16_bits(d));
}

void main() {
    uint i = flat_group() * WG + gl_LocalInvocationID.x;
    if (i >= p.n) return;
    uint t = i / p.units;
    uint u = i % p.units;
    uint row = p.dof + tab[p.to + t] * p.row_words;
    uint s0 = p.so + t * p.width;
    if (p.ty == KV_F16 || p.ty == KV_BF16) {
        uint w = 0u;
        for (uint h = 0u; h < 2u; h++) {
            uint c = 2u * u + h;
            if (c < p.width) {
                float v = src[s0 + c];
                w |= (p.ty == KV_F16 ? f16_bits(v) : bf16_bits(v)) << (16u * h);
            }
        }
        dst[row + u] = w;
        return;
    }
    uint bb = kv_block_bytes(p.ty);
    uint nb = min(2u, p.width / 32u - 2u * u);
    for (uint k = 0u; k < 17u; k++) outw[k] = 0u;
    for (uint b = 0u; b < nb; b++) {
        for (uint k = 0u; k < 32u; k++) x[k] = src[s0 + (2u * u + b) * 32u + k];
        block(p.ty, b * bb);
    }
    uint w0 = u * bb / 2u;
    uint nw = (nb * bb + 3u) / 4u;
    for (uint k = 0u; k < nw; k++) dst[row + w0 + k] = outw[k];
}
