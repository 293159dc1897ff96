#!/usr/bin/env python3
"""Block-quantized float8 copies of two tiny fixtures, as DeepSeek-V3 and Qwen3-FP8 ship them:
every decoder projection (attention, dense MLP, experts, shared experts; not embeddings, the
output head, norms or routers) is float8_e4m3fn with a float32 `weight_scale_inv` of shape
[ceil(rows/B0), ceil(cols/B1)] (value = fp8 * scale_inv of its block), and config.json says
`quantization_config: {quant_method: fp8, weight_block_size: [B0, B1]}`.

  - tests/fixtures/tiny/qwen3-fp8: from qwen3 (dense), 128x128 blocks (one partial block per
    matrix: the fixture's matrices are 64..128 wide);
  - tests/fixtures/tiny/deepseek_v3-fp8: from deepseek_v3 (MLA, experts), 32x48 blocks, so most
    matrices have several blocks in each direction and a partial last one (e.g. 64 = 48 + 16).

Each gets the HF directory (model.safetensors, config.json, tokenizer files), expected.json and
logits.f32 from transformers running the source model with every quantized weight replaced by
its dequantized value (weight.to(float32) * scale expanded per block), and model.gguf: llama.cpp's
converter's F32 file of the float8 directory (it dequantizes the same way).

Deterministic: the quantization is round-to-nearest of w / (amax of its block / 448).
Run: python3 scripts/gen_fp8_fixtures.py   (needs torch, transformers, safetensors and
     llama.cpp's source in .llama.cpp/src)
"""
import json, os, shutil, subprocess, sys, tempfile
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

sys.path.insert(0, os.path.dirname(__file__))
from gen_tiny_models import save_expectations  # noqa: E402
from gen_tiny_moe import CONVERT, llama_src, out_root  # noqa: E402

FIXTURES = {"qwen3": (128, 128), "deepseek_v3": (32, 48)}
FP8_MAX = 448.0


def quantized(name, t):
    """Whether a checkpoint tensor is one the fp8 checkpoints store in float8."""
    return (t.ndim == 2 and name.endswith(".weight") and ".layers." in name
            and not name.endswith("norm.weight") and not name.endswith("mlp.gate.weight"))


def expand(scale, shape, block):
    """The per-element scale of a [rows, cols] matrix from its per-block scales."""
    s = scale.repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)
    return s[: shape[0], : shape[1]]


def quantize(w, block):
    """(fp8 weight, float32 scale_inv) of a float32 matrix."""
    rows, cols = w.shape
    nr, nc = -(-rows // block[0]), -(-cols // block[1])
    pad = torch.zeros(nr * block[0], nc * block[1], dtype=torch.float32)
    pad[:rows, :cols] = w
    amax = pad.view(nr, block[0], nc, block[1]).abs().amax(dim=(1, 3))
    scale = (amax / FP8_MAX).clamp(min=1e-12).float()
    q = (w / expand(scale, w.shape, block)).to(torch.float8_e4m3fn)
    return q, scale


def main():
    for src_name, block in FIXTURES.items():
        src = os.path.join(out_root, src_name)
        d = os.path.join(out_root, f"{src_name}-fp8")
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        for f in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]:
            if os.path.exists(os.path.join(src, f)):
                shutil.copy(os.path.join(src, f), d)
        cfg = json.load(open(os.path.join(src, "config.json")))
        cfg["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3",
                                      "weight_block_size": list(block)}
        json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=2)
        sd = load_file(os.path.join(src, "model.safetensors"))
        out, deq = {}, {}
        for name, t in sd.items():
            if quantized(name, t):
                q, s = quantize(t.float(), block)
                out[name] = q
                out[name + "_scale_inv"] = s
                deq[name] = q.float() * expand(s, q.shape, block)
            else:
                out[name] = t
        save_file(out, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
        # transformers loads the dequantized weights from a float32 checkpoint of the source's
        # layout (it fuses the per-expert matrices itself)
        tmp = tempfile.mkdtemp()
        shutil.copy(os.path.join(src, "config.json"), tmp)
        save_file({**sd, **deq}, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        model = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
        shutil.rmtree(tmp)
        model.eval()
        ids = json.load(open(os.path.join(src, "expected.json")))["tokens"]
        save_expectations(model, ids, d, fp8_block=list(block), fp8_tensors=len(deq))
        r = subprocess.run([sys.executable, "-c", CONVERT, llama_src, d, os.path.join(d, "model.gguf")],
                           capture_output=True, text=True)
        if r.returncode != 0:
            print(r.stderr[-3000:])
            raise SystemExit(f"{src_name}-fp8: conversion failed")
        print(f"{d}: {len(deq)} float8 tensors in {block[0]}x{block[1]} blocks")


if __name__ == "__main__":
    main()
