// KV-cache types (hearth_core::kv::KvType), shared by the shaders that store and read a
// typed cache. A type is named by its index in hearth_core::kv::KV_TYPES; a row of a type
// holds its blocks in ggml's layouts (ggml-common.h: block_q8_0, block_q4_0, block_q5_0,
// block_iq4_nl), or hearth's tq3 block (an f16 scale, then 32 3-bit codes, little-endian).
const uint KV_F32 = 0u;
const uint KV_F16 = 1u;
const uint KV_BF16 = 2u;
const uint KV_Q8_0 = 3u;
const uint KV_Q4_0 = 4u;
const uint KV_Q5_0 = 5u;
const uint KV_IQ4NL = 6u;
const uint KV_TQ3 = 7u;

// Bytes per block of 32 values (the block types).
uint kv_block_bytes(uint ty) {
    if (ty == KV_Q8_0) return 34u;
    if (ty == KV_Q5_0) return 22u;
    if (ty == KV_TQ3) return 14u;
    return 18u;
}

// IQ4_NL's 16 levels (kvalues_iq4nl, ggml-common.h).
const float IQ4NL_LEVELS[16] = float[16](-127.0, -104.0, -83.0, -65.0, -49.0, -35.0, -22.0,
    -10.0, 1.0, 13.0, 25.0, 38.0, 53.0, 69.0, 89.0, 113.0);
// tq3's 8 levels: the Lloyd-Max quantizer of a unit Gaussian (hearth_quant::kv::TQ3_LEVELS).
const float TQ3_LEVELS[8] = float[8](-2.1520, -1.3439, -0.7560, -0.2451, 0.2451, 0.7560,
    1.3439, 2.1520);
