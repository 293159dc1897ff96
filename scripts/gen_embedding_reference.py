#!/usr/bin/env python3
"""Reference embeddings from HF transformers, for hearth's /v1/embeddings and Engine::embed.

An embedding is the final hidden state (the base model's `last_hidden_state`: after the final
norm, before the LM head) pooled over the input's tokens and L2-normalised. transformers
computes the hidden states here on its own; only the pooling arithmetic is written out below
(it is sentence-transformers' Pooling module: mean over the tokens, the first token for "cls",
the last token for "lasttoken").

Writes tests/fixtures/embeddings/reference.json with:
  - smollm2: SmolLM2-135M-Instruct Q4_1 as transformers reads the GGUF (dequantized to
    float32), tokenized by the tokenizer it builds from the GGUF (with SmolLM2's digit split
    restored, as in gen_smollm2_reference.py); mean pooling (a plain causal LM, hearth's
    default); a few texts;
  - tiny: the float32 tiny fixtures (tests/fixtures/tiny/<name>), their expected.json tokens
    (and a prefix of them), each of mean, cls and last pooling.

Needs: pip install torch transformers gguf; the model at $HEARTH_SMOLLM2 (or the first
argument), as fetched by `hearth pull smollm2`. Run: python3 scripts/gen_embedding_reference.py
"""
import json, os, sys
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

root = os.path.join(os.path.dirname(__file__), "..")
out_dir = os.path.join(root, "tests", "fixtures", "embeddings")
os.makedirs(out_dir, exist_ok=True)


def pooled(hidden, pooling):
    """hidden [n_tok, n_embd] -> the pooled, L2-normalised vector."""
    h = hidden.double()
    v = {"mean": h.mean(dim=0), "cls": h[0], "last": h[-1]}[pooling]
    return (v / v.norm()).tolist()


def hidden_states(model, ids):
    with torch.no_grad():
        return model.model(torch.tensor([ids])).last_hidden_state[0].float()


# SmolLM2 from its GGUF
gguf_path = os.environ.get("HEARTH_SMOLLM2") or sys.argv[1]
d, f = os.path.dirname(os.path.abspath(gguf_path)), os.path.basename(gguf_path)
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
from tokenizers import pre_tokenizers
tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
    [pre_tokenizers.Digits(individual_digits=True),
     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
model.eval()
prose = open(os.path.join(root, "tests", "fixtures", "smollm2", "text.txt")).read()
texts = [
    "What is the capital of France?",
    "Paris is the capital and largest city of France.",
    "A recipe for bread: flour, water, salt and yeast, kneaded for 10 minutes.",
    "Accents and symbols: café, naïve, 你好, 🙂",
    prose[:1200],
]
smol = []
for t in texts:
    ids = tok(t, add_special_tokens=False)["input_ids"]
    smol.append({"text": t, "ids": ids, "mean": pooled(hidden_states(model, ids), "mean")})
print(f"smollm2: {len(smol)} texts, {len(smol[0]['mean'])} dimensions")

tiny = []
for name in ["llama", "qwen2", "qwen3", "qwen3_next"]:
    fd = os.path.join(root, "tests", "fixtures", "tiny", name)
    m = AutoModelForCausalLM.from_pretrained(fd, dtype=torch.float32)
    m.eval()
    ids_all = json.load(open(os.path.join(fd, "expected.json")))["tokens"]
    for ids in [ids_all, ids_all[:7]]:
        h = hidden_states(m, ids)
        tiny.append({"model": name, "ids": ids, **{p: pooled(h, p) for p in ["mean", "cls", "last"]}})
    print(f"tiny {name}: {h.shape[1]} dimensions")

json.dump({"transformers": transformers.__version__, "torch": torch.__version__, "smollm2_file": f,
           "smollm2": smol, "tiny": tiny},
          open(os.path.join(out_dir, "reference.json"), "w"))
