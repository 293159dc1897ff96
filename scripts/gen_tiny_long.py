#!/usr/bin/env python3
"""A tiny random-weight qwen2 for long contexts, with expected logits from HF transformers:
16,384 tokens, four times its original context through YaRN (factor 4 over 4,096), into
tests/fixtures/long/qwen2_yarn/ as an HF directory plus
  - expected.json: the token ids (tests/fixtures/smollm2/text.txt in the tiny fixtures'
    tokenizer, repeated) and the positions whose logits are kept;
  - logits.f32: the logits [positions, vocab] at those positions.
The reference runs in float64: at this length float32's own rounding in transformers would be
larger than the tests' tolerance. Heads of 32 values, so the quantized KV types fit too.
Run: python3 scripts/gen_tiny_long.py (after scripts/gen_tiny_models.py, whose tokenizer it
copies from tests/fixtures/tiny/qwen2).
"""
import json, os, shutil
import numpy as np
import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

root = os.path.join(os.path.dirname(__file__), "..")
src = os.path.join(root, "tests", "fixtures", "tiny", "qwen2")
d = os.path.join(root, "tests", "fixtures", "long", "qwen2_yarn")
tok = transformers.PreTrainedTokenizerFast.from_pretrained(src)
text = open(os.path.join(root, "tests", "fixtures", "smollm2", "text.txt")).read()
base = tok(text, add_special_tokens=False)["input_ids"]
n = 16384
ids = (base * (n // len(base) + 1))[:n]
cfg = dict(model_type="qwen2", vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
           num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=n, rms_norm_eps=1e-6,
           bos_token_id=0, eos_token_id=2, tie_word_embeddings=False, rope_theta=10000.0,
           use_sliding_window=False,
           rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096})
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg), dtype=torch.float32)
with torch.no_grad():
    for p in model.parameters():
        p.normal_(0.0, 0.2 if p.dim() > 1 else 0.5)
model.eval()
shutil.rmtree(d, ignore_errors=True)
os.makedirs(d)
model.save_pretrained(d, safe_serialization=True)
tok.save_pretrained(d)
p = os.path.join(d, "generation_config.json")
if os.path.exists(p):
    os.remove(p)
positions = sorted(set(list(range(0, n, 1024)) + list(range(n - 8, n))))
m64 = model.double()
with torch.no_grad():
    h = m64.model(torch.tensor([ids])).last_hidden_state[0, positions]
    logits = m64.lm_head(h).float().numpy()
logits.astype(np.float32).tofile(os.path.join(d, "logits.f32"))
json.dump({"tokens": ids, "positions": positions, "vocab": len(tok),
           "transformers": transformers.__version__}, open(os.path.join(d, "expected.json"), "w"))
print(f"{n} tokens, {len(positions)} positions kept")
