#!/usr/bin/env python3
"""Reference logits for SmolLM2-135M-Instruct Q4_1 from HF transformers.

transformers loads the GGUF itself (dequantizing it to float32) and tokenizes
tests/fixtures/smollm2/text.txt with the tokenizer it builds from the GGUF metadata. We save,
per position, the argmax, the top-5 logits and logsumexp, teacher-forced over the whole text.
Also writes tokenizer goldens: HF token ids for hard strings.

Needs: pip install torch transformers gguf; the model at $HEARTH_SMOLLM2 (or models/ as
fetched by `hearth pull smollm2`). Run: python3 scripts/gen_smollm2_reference.py
"""
import json, os, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

root = os.path.join(os.path.dirname(__file__), "..")
fx = os.path.join(root, "tests", "fixtures", "smollm2")
gguf_path = os.environ.get("HEARTH_SMOLLM2") or sys.argv[1]
d, f = os.path.dirname(os.path.abspath(gguf_path)), os.path.basename(gguf_path)
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
# transformers' GGUF loader has no split for tokenizer.ggml.pre == "smollm" and falls back to
# plain GPT-2 splitting. SmolLM2's own tokenizer.json (and llama.cpp's "smollm" pre-type) first
# isolate every digit; restore that pre-tokenizer so the goldens are the model's real tokenizer.
from tokenizers import pre_tokenizers
tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
    [pre_tokenizers.Digits(individual_digits=True),
     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
model.eval()
text = open(os.path.join(fx, "text.txt")).read()
ids = tok(text, add_special_tokens=False)["input_ids"]
with torch.no_grad():
    logits = model(torch.tensor([ids])).logits[0].float()
lse = torch.logsumexp(logits, dim=-1)
top = torch.topk(logits, 5, dim=-1)
rows = []
for p in range(len(ids)):
    rows.append({"pos": p, "token": ids[p], "argmax": int(top.indices[p, 0]),
                 "top": [[int(i), float(v)] for i, v in zip(top.indices[p], top.values[p])],
                 "logsumexp": float(lse[p])})
json.dump({"model": f, "transformers": __import__("transformers").__version__, "tokens": ids, "positions": rows},
          open(os.path.join(fx, "reference.json"), "w"))
print(f"{len(ids)} tokens")

hard = [
    "Hello world", " leading space", "trailing space ", "multiple   spaces\tand\ttabs\n\nnewlines\r\n",
    "Accents: café, naïve, Ångström, résumé", "CJK: 你好，世界。日本語のテキスト。한국어",
    "Emoji: 🙂👍🏽🚀 and 👨‍👩‍👧‍👦", "Code: def f(x):\n    return x**2 + 1  # comment",
    "Numbers 1234567890 3.14159 1e-10", "<|im_start|>user\nHi<|im_end|>", "   ", "",
    "Mixed\u00a0nbsp and zero\u200bwidth", "don't won't I'm you're", "URL https://example.com/a?b=c&d=e",
]
goldens = [{"text": s, "ids": tok(s, add_special_tokens=False)["input_ids"],
            "ids_special": tok(s, add_special_tokens=True)["input_ids"]} for s in hard]
json.dump(goldens, open(os.path.join(fx, "tokenizer_goldens.json"), "w"), ensure_ascii=False, indent=0)

# The GGUF's chat template as transformers renders it.
chats = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}],
]
rendered = [{"messages": m, "text": tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True)} for m in chats]
json.dump(rendered, open(os.path.join(fx, "chat_goldens.json"), "w"), ensure_ascii=False, indent=0)
print(f"{len(goldens)} tokenizer goldens")
