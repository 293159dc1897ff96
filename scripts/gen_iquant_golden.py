#!/usr/bin/env python3
"""Golden i-quant (and MXFP4) blocks from llama.cpp itself, for hearth-quant's byte-identity tests.

gguf-py cannot quantize the i-quants, so this writes the test rows as one F32 tensor of a
minimal llama GGUF (plus an importance matrix in llama-imatrix's GGUF format, counts 1 so
that the weights are exactly the stored sums), runs `llama-quantize --pure` to each type, with
and without the imatrix, and extracts the tensor's bytes. Writes into crates/quant/tests/data/:
    iq_in.f32         16 rows x 512, little-endian f32
    iq_imatrix.f32    512 importance weights
    iq_<TYPE>.bin     llama-quantize's bytes with the imatrix
    iq_<TYPE>_noim.bin  without it (the types ggml can quantize without one)
Run from the repository root (LLAMA_BIN: llama.cpp's build/bin, default .llama.cpp/build/bin):
    python3 scripts/gen_iquant_golden.py
"""
import os, subprocess, sys, tempfile
import numpy as np
from gguf import GGUFReader, GGUFWriter

LLAMA_BIN = os.environ.get("LLAMA_BIN", ".llama.cpp/build/bin")
OUT = "crates/quant/tests/data/"
N = 512
# tensor type -> the llama-quantize file type whose --pure default it is
TYPES = {"IQ1_S": "IQ1_S", "IQ1_M": "IQ1_M", "IQ2_XXS": "IQ2_XXS", "IQ2_XS": "IQ2_XS",
         "IQ2_S": "IQ2_M", "IQ3_XXS": "IQ3_XXS", "IQ3_S": "IQ3_S", "MXFP4": "MXFP4_MOE"}
# ggml quantizes these without an importance matrix too; llama-quantize insists on one for
# IQ3_XXS and IQ1_M except in output.weight, so the rows go there for the runs without one
NOIM = ["IQ3_S", "IQ3_XXS", "IQ1_M"]

rng = np.random.default_rng(2026)
ties = np.round(rng.standard_normal(N) * 2) / 8  # few distinct values: the sort's tie order
signed_zeros = np.where(rng.random(N) < 0.3, -0.0, 0.0) + np.where(rng.random(N) < 0.5, 0, 1) \
    * rng.standard_normal(N)
outlier = rng.standard_normal(N) * 0.01
outlier[77] = 40.0
tiny = rng.standard_normal(N) * 1e-9
tiny[256:] = rng.standard_normal(256) * 1e-3
rows = [
    rng.standard_normal(N),
    rng.standard_normal(N) * 0.02,
    rng.uniform(-1, 1, N) ** 3,
    rng.standard_t(3, N) * 0.1,
    np.concatenate([np.zeros(32), rng.standard_normal(N - 32)]),
    rng.uniform(0.1, 2.0, N),
    -rng.uniform(0.1, 2.0, N),
    np.round(rng.standard_normal(N) * 4) / 4,
    ties,
    signed_zeros,
    outlier,
    tiny,
    np.concatenate([np.zeros(16), rng.standard_normal(N - 16) * 0.05]),
    rng.laplace(0, 0.03, N),
    np.sign(rng.standard_normal(N)) * 0.5,
    (rng.standard_normal(N) * 0.05).astype(np.float16).astype(np.float64),
]
x = np.stack(rows).astype(np.float32)
imat = (rng.gamma(0.5, 2.0, N)).astype(np.float32)
imat[rng.random(N) < 0.05] = 0.0

NAME = "blk.0.ffn_down.weight"
NAME_NOIM = "output.weight"


def model(path, name):
    w = GGUFWriter(path, arch="llama")
    w.add_context_length(64)
    w.add_embedding_length(N)
    w.add_block_count(1)
    w.add_feed_forward_length(N)
    w.add_head_count(1)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(0)
    w.add_tensor(name, x)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()


def imatrix(path):
    w = GGUFWriter(path, arch="")
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", ["golden"])
    w.add_uint32("imatrix.chunk_count", 1)
    w.add_uint32("imatrix.chunk_size", 512)
    w.add_tensor(NAME + ".in_sum2", imat)
    w.add_tensor(NAME + ".counts", np.array([1.0], dtype=np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()


def quantize(src, dst, ftype, im, name):
    cmd = [os.path.join(LLAMA_BIN, "llama-quantize"), "--pure"]
    if im:
        cmd += ["--imatrix", im]
    r = subprocess.run(cmd + [src, dst, ftype, "1"], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    t = next(t for t in GGUFReader(dst).tensors if t.name == name)
    return np.asarray(t.data).view(np.uint8).tobytes(), t.tensor_type.name


with tempfile.TemporaryDirectory() as d:
    src, src_noim = os.path.join(d, "in.gguf"), os.path.join(d, "in_noim.gguf")
    im = os.path.join(d, "im.gguf")
    model(src, NAME)
    model(src_noim, NAME_NOIM)
    imatrix(im)
    x.tofile(OUT + "iq_in.f32")
    imat.tofile(OUT + "iq_imatrix.f32")
    for t, ftype in TYPES.items():
        for use_im in [True, False]:
            if not use_im and t not in NOIM:
                continue
            out = os.path.join(d, "out.gguf")
            if use_im:
                b, got = quantize(src, out, ftype, im, NAME)
            else:
                b, got = quantize(src_noim, out, ftype, None, NAME_NOIM)
            assert got == t, (t, got)
            name = f"iq_{t}.bin" if use_im else f"iq_{t}_noim.bin"
            open(OUT + name, "wb").write(b)
            print("wrote", name, len(b), "bytes")
