#!/usr/bin/env python3
"""Reference for crates/cli/tests/long_context.rs: SmolLM2-135M-Instruct Q4_1 at its full
trained context (8,192 tokens) in HF transformers.

The tokens are tests/fixtures/smollm2/reference.json's (transformers' tokenization of
text.txt) repeated to 8,192. transformers loads the GGUF itself (dequantizing to float32) and
runs the whole sequence in one pass; we save the argmax and logsumexp of the last 512
positions, where every prediction depends on attention over more than 7,000 earlier tokens.

Needs: pip install torch transformers gguf. Run:
  python3 scripts/gen_long_context_reference.py "$(./target/release/hearth pull smollm2)"
"""
import json, os, sys
import torch
from transformers import AutoModelForCausalLM

root = os.path.join(os.path.dirname(__file__), "..")
fx = os.path.join(root, "tests", "fixtures", "smollm2")
gguf_path = os.environ.get("HEARTH_SMOLLM2") or sys.argv[1]
d, f = os.path.dirname(os.path.abspath(gguf_path)), os.path.basename(gguf_path)
base = json.load(open(os.path.join(fx, "reference.json")))["tokens"]
n_ctx, tail = 8192, 512
ids = (base * (n_ctx // len(base) + 1))[:n_ctx]
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
model.eval()
with torch.no_grad():
    h = model.model(torch.tensor([ids])).last_hidden_state[0, n_ctx - tail:]
    logits = model.lm_head(h).float()
lse = torch.logsumexp(logits, dim=-1)
am = logits.argmax(-1)
hits = sum(int(am[i]) == ids[n_ctx - tail + i + 1] for i in range(tail - 1))
json.dump({"model": f, "transformers": __import__("transformers").__version__,
           "period": len(base), "n_ctx": n_ctx, "first": n_ctx - tail,
           "argmax": am.tolist(), "logsumexp": lse.tolist()},
          open(os.path.join(fx, "long_context.json"), "w"))
print(f"{n_ctx} tokens (a text of {len(base)} repeated); recall of the next token over the "
      f"last {tail}: {hits / (tail - 1):.3f}")
