#!/usr/bin/env python3
"""Expected dequantization for every ggml type, from the PyPI `gguf` package's numpy code.

For each type this writes tests/fixtures/quant/<TYPE>.bin (block bytes) and <TYPE>.f32 (what
gguf's numpy dequantizer makes of them). Where gguf can quantize the type, the blocks are its
quantization of random data; where it cannot, they are random bytes, redrawn per block until
every value gguf decodes is finite. Run: python3 scripts/gen_quant_fixtures.py
"""
import os
import numpy as np
from gguf import GGMLQuantizationType as T, GGML_QUANT_SIZES, quants

out = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "quant")
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(1234)
TYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K",
         "Q5_K", "Q6_K", "Q8_K", "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS",
         "IQ3_S", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4"]
N_BLOCKS = 16
summary = []


def q8_k_dequant(q):
    # gguf has no Q8_K dequantizer; Q8_K is d (f32) * qs (int8), ggml-common.h's block_q8_K.
    b = q.reshape(-1, 292)
    d = b[:, :4].copy().view(np.float32)
    qs = b[:, 4:260].copy().view(np.int8).astype(np.float32)
    return (d * qs).reshape(-1)


def dequant(q, qt):
    if qt == T.Q8_K:
        return q8_k_dequant(q)
    return quants.dequantize(q.reshape(1, -1), qt).astype(np.float32).reshape(-1)

for name in TYPES:
    qt = T[name]
    bs, ts = GGML_QUANT_SIZES[qt]
    n = bs * N_BLOCKS if bs > 1 else 256
    data = (rng.standard_normal(n) * rng.uniform(0.01, 2.0)).astype(np.float32)
    how = "quantized"
    try:
        if name == "F32":
            q = data.view(np.uint8)
        elif name == "F16":
            q = data.astype(np.float16).view(np.uint8)
        else:
            q = quants.quantize(data.reshape(1, -1), qt).reshape(-1)
    except NotImplementedError:  # gguf cannot quantize this type
        how = "random"
        blocks = []
        while len(blocks) < N_BLOCKS:
            b = rng.integers(0, 256, size=ts, dtype=np.uint8)
            v = dequant(b, qt)
            if np.all(np.isfinite(v)) and np.max(np.abs(v)) < 1e6:
                blocks.append(b)
        q = np.concatenate(blocks)
    q = np.ascontiguousarray(q, dtype=np.uint8)
    deq = dequant(q, qt) if name != "F32" else data
    assert q.size * bs == deq.size * ts, name
    q.tofile(os.path.join(out, f"{name}.bin"))
    deq.tofile(os.path.join(out, f"{name}.f32"))
    summary.append(f"{name}: {how}, {deq.size} values")
print("\n".join(summary))
