#!/usr/bin/env python3
"""tests/fixtures/tiny/glm4_moe-mtp: the tiny glm4_moe fixture with one multi-token-prediction
layer appended, as GLM-4.5 checkpoints ship it (config num_nextn_predict_layers: 1; the layer
after the last, model.layers.3, holds a decoder layer's tensors plus eh_proj, enorm, hnorm,
embed_tokens, shared_head.head and shared_head.norm). transformers never builds that layer, so
expected.json/logits.f32 are transformers' on this directory (the same as glm4_moe's);
model.gguf is llama.cpp's converter's F32 file, which keeps the layer (block_count 4,
nextn_predict_layers 1, blk.3.nextn.*).

Deterministic (the new tensors: copies of layer 2's, and torch.manual_seed(0) normals).
Run: python3 scripts/gen_glm_mtp_fixture.py
"""
import json, os, shutil, subprocess, sys
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

sys.path.insert(0, os.path.dirname(__file__))
from gen_tiny_models import save_expectations  # noqa: E402
from gen_tiny_moe import CONVERT, llama_src, out_root  # noqa: E402


def main():
    src = os.path.join(out_root, "glm4_moe")
    d = os.path.join(out_root, "glm4_moe-mtp")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for f in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]:
        shutil.copy(os.path.join(src, f), d)
    cfg = json.load(open(os.path.join(src, "config.json")))
    n = cfg["num_hidden_layers"]
    cfg["num_nextn_predict_layers"] = 1
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=2)
    sd = load_file(os.path.join(src, "model.safetensors"))
    last = f"model.layers.{n - 1}."
    mtp = f"model.layers.{n}."
    for k in sorted(sd):
        if k.startswith(last):
            sd[mtp + k[len(last):]] = sd[k].clone()
    torch.manual_seed(0)
    h, v = cfg["hidden_size"], cfg["vocab_size"]
    sd[mtp + "eh_proj.weight"] = torch.randn(h, 2 * h) * 0.02
    for name in ["enorm", "hnorm", "shared_head.norm"]:
        sd[mtp + name + ".weight"] = 1 + 0.1 * torch.randn(h)
    sd[mtp + "embed_tokens.weight"] = torch.randn(v, h) * 0.02
    sd[mtp + "shared_head.head.weight"] = torch.randn(v, h) * 0.02
    save_file(sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    ids = json.load(open(os.path.join(src, "expected.json")))["tokens"]
    save_expectations(model, ids, d)
    r = subprocess.run([sys.executable, "-c", CONVERT, llama_src, d, os.path.join(d, "model.gguf")],
                       capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stderr[-3000:])
        raise SystemExit("glm4_moe-mtp: conversion failed")
    print(d)


if __name__ == "__main__":
    main()
