// Reading one value of a typed KV row. Included once per buffer, with KV_BUF (a uint[]
// buffer's array), KV_FN, KV_U8 and KV_U16 defined to the names to give the functions.
// `base` is the row's first word, `e` the value's index in the row (see kv.glsl).

// Byte `b` of the row.
uint KV_U8(uint base, uint b) {
    return (KV_BUF[base + (b >> 2)] >> ((b & 3u) * 8u)) & 255u;
}

// The 16-bit half-word at byte `b` (even) of the row.
uint KV_U16(uint base, uint b) {
    return (KV_BUF[base + (b >> 2)] >> ((b & 2u) * 8u)) & 65535u;
}

float KV_FN(uint base, uint e, uint ty) {
    if (ty == KV_F32) return uintBitsToFloat(KV_BUF[base + e]);
    if (ty == KV_F16) return unpackHalf2x16(KV_U16(base, 2u * e)).x;
    if (ty == KV_BF16) return uintBitsToFloat(KV_U16(base, 2u * e) << 16);
    uint j = e & 31u;
    uint o = (e >> 5) * kv_block_bytes(ty);
    float d = unpackHalf2x16(KV_U16(base, o)).x;
    if (ty == KV_Q8_0) {
        return d * float(int(KV_U8(base, o + 2u + j) ^ 128u) - 128);
    }
    if (ty == KV_TQ3) {
        uint bit = 3u * j;
        uint c = KV_U8(base, o + 2u + (bit >> 3)) >> (bit & 7u);
        if ((bit & 7u) > 5u) c |= KV_U8(base, o + 3u + (bit >> 3)) << (8u - (bit & 7u));
        return d * TQ3_LEVELS[c & 7u];
    }
    uint qo = ty == KV_Q5_0 ? 6u : 2u;
    uint n = KV_U8(base, o + qo + (j & 15u));
    n = j < 16u ? n & 15u : n >> 4;
    if (ty == KV_Q4_0) return d * float(int(n) - 8);
    if (ty == KV_IQ4NL) return d * IQ4NL_LEVELS[n];
    // Q5_0: the fifth bit of value j is bit j of the 32-bit qh after the scale
    uint hb = (KV_U8(base, o + 2u + (j >> 3)) >> (j & 7u)) & 1u;
    return d * float(int(n | (hb << 4)) - 16);
}
