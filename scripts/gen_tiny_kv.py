#!/usr/bin/env python3
"""Tiny fixtures for the KV-cache types (crates/models/tests/kv_types.rs) where the registry's
own cannot take the quantized types: latent attention (MLA) whose latent rows are whole
blocks of 32 (kv_lora_rank 64 + qk_rope_head_dim 32; tests/fixtures/tiny/deepseek_v3 has
32 + 8). Otherwise scripts/gen_tiny_moe.py's deepseek_v3, with its init; into
tests/fixtures/kv/deepseek_v3/ (HF directory, expected.json, logits.f32).
Run: python3 scripts/gen_tiny_kv.py
"""
import os, shutil, sys
import torch
from transformers import AutoConfig, AutoModelForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_tiny_moe as g  # noqa: E402

root = os.path.join(os.path.dirname(__file__), "..")
d = os.path.join(root, "tests", "fixtures", "kv", "deepseek_v3")
cfg = dict(g.CONFIGS["deepseek_v3"], kv_lora_rank=64, qk_rope_head_dim=32, head_dim=32)
ids = g.tk.encode(g.text[:400]).ids[:40]
torch.manual_seed(1)
shutil.rmtree(d, ignore_errors=True)
os.makedirs(d)
model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg), dtype=torch.float32,
                                         attn_implementation="eager")
with torch.no_grad():
    for n_, p in model.named_parameters():
        p.normal_(0.0, 0.2 if p.dim() > 1 else 0.5)
        if "norm" in n_:
            p.copy_(1.0 + 0.2 * torch.randn_like(p))
    for n_, b_ in model.named_buffers():
        if "e_score_correction_bias" in n_:
            b_.copy_(0.1 * torch.randn_like(b_))
g.save_fixture(model, ids, d)
print("deepseek_v3 (kv 64 + rope 32) ok")
