#!/usr/bin/env python3
"""tests/fixtures/tiny/llama-spm: the tiny llama model (scripts/gen_tiny_models.py's weights)
with a SentencePiece tokenizer, as Llama 2, Mistral 7B and Mixtral ship theirs: tokenizer.model
(a BPE SentencePiece model with byte fallback, trained here on the fixture text) beside the
tokenizer.json and tokenizer_config.json transformers writes for it. expected.json and
logits.f32 are transformers' for ids of this tokenizer; model.gguf is llama.cpp's converter's,
which reads tokenizer.model with sentencepiece (its _set_vocab_sentencepiece).

Run: python3 scripts/gen_spm_fixture.py   (needs torch, transformers, sentencepiece, protobuf,
     and the llama.cpp source of scripts/build_llamacpp.sh --src-only)
"""
import io, json, os, shutil, sys

import sentencepiece as spm
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_tiny_models import CHATML, out_root, save_expectations, text, tokenizer_expectations  # noqa: E402
from gen_tiny_moe import convert  # noqa: E402

src = os.path.join(out_root, "llama")
d = os.path.join(out_root, "llama-spm")
shutil.rmtree(d, ignore_errors=True)
os.makedirs(d)
cfg = json.load(open(os.path.join(src, "config.json")))
vocab = cfg["vocab_size"]

buf = io.BytesIO()
spm.SentencePieceTrainer.train(
    sentence_iterator=iter(text.splitlines()), model_writer=buf, vocab_size=vocab, model_type="bpe",
    byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
    user_defined_symbols=["<|im_start|>", "<|im_end|>"], split_digits=True, add_dummy_prefix=True,
    num_threads=1, minloglevel=2)
with open(os.path.join(d, "tokenizer.model"), "wb") as f:
    f.write(buf.getvalue())

# as a Llama 2 / Mistral repository has it; transformers builds its tokenizer.json from this
with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
    json.dump({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
               "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False, "legacy": False}, f)
tok = AutoTokenizer.from_pretrained(d)
assert len(tok) == vocab, len(tok)
tok.chat_template = CHATML
tok.save_pretrained(d)

cfg.update(bos_token_id=1, eos_token_id=2)
model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, attn_implementation="eager")
model.config.bos_token_id, model.config.eos_token_id = 1, 2
model.save_pretrained(d, safe_serialization=True)
p = os.path.join(d, "generation_config.json")
if os.path.exists(p):
    os.remove(p)
ids = tok(text[:400], add_special_tokens=False)["input_ids"][:40]
save_expectations(model, ids, d, **tokenizer_expectations(tok))
convert("llama-spm", d)
print(f"{d}: vocabulary {len(tok)}, {len(ids)} ids, model.gguf written")
