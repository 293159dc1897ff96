#!/usr/bin/env python3
"""Golden quantized blocks from gguf-py (`gguf.quants.quantize`), an independent implementation
of ggml's reference quantizers, for hearth-quant's bit-exact tests.

Writes crates/quant/tests/data/quant_in.f32 (little-endian f32, 8 rows x 256) and one
quant_<TYPE>.bin per type gguf-py can quantize. Run from the repository root:
    python3 scripts/gen_quant_golden.py
"""
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import quantize

rng = np.random.default_rng(18)
rows = [
    rng.standard_normal(256),
    rng.standard_normal(256) * 0.02,
    rng.uniform(-1, 1, 256) ** 3,
    rng.standard_t(3, 256) * 0.1,
    np.concatenate([np.zeros(32), rng.standard_normal(224)]),
    rng.uniform(0.1, 2.0, 256),
    -rng.uniform(0.1, 2.0, 256),
    np.round(rng.standard_normal(256) * 4) / 4,
]
x = np.stack(rows).astype(np.float32)
out = "crates/quant/tests/data/"
x.tofile(out + "quant_in.f32")
for t in [T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]:
    quantize(x, t).tofile(out + f"quant_{t.name}.bin")
print("wrote", x.shape)
