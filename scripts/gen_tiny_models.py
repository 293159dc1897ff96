#!/usr/bin/env python3
"""Tiny random-weight models of every dense architecture, with expected logits from HF
transformers. Each goes to tests/fixtures/tiny/<name>/ as an HF directory (config.json,
model.safetensors in float32, tokenizer.json, tokenizer_config.json) plus:
  - expected.json: the input token ids, greedy continuation, and shapes;
  - logits.f32: float32 logits [n_tokens, vocab] for those ids (teacher-forced).
The configs exercise the options: GQA, attention bias, q/k norm, head_dim != hidden/heads,
tied and untied embeddings, sliding windows and each rope scaling (llama3, yarn, linear).
Run: python3 scripts/gen_tiny_models.py, then scripts/gen_tiny_moe.py (which also writes the
GGUF conversions of these dense models; regenerating a directory here removes its model.gguf).
"""
import json, os, shutil
import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

root = os.path.join(os.path.dirname(__file__), "..")
out_root = os.path.join(root, "tests", "fixtures", "tiny")
text = open(os.path.join(root, "tests", "fixtures", "smollm2", "text.txt")).read()

# A small byte-level BPE trained on the fixture text.
tk = Tokenizer(models.BPE())
tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tk.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=384, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
tk.train_from_iterator([text], trainer)
VOCAB = tk.get_vocab_size()
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

base = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, bos_token_id=0, eos_token_id=2)
CONFIGS = {
    "llama": dict(base, model_type="llama", tie_word_embeddings=False, rope_theta=10000.0,
                  rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                "original_max_position_embeddings": 32}),
    "mistral": dict(base, model_type="mistral", tie_word_embeddings=False, rope_theta=1000.0, sliding_window=8,
                    head_dim=16),
    "qwen2": dict(base, model_type="qwen2", tie_word_embeddings=True, rope_theta=10000.0, use_sliding_window=False,
                  rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}),
    "qwen3": dict(base, model_type="qwen3", tie_word_embeddings=False, rope_theta=10000.0, head_dim=32,
                  attention_bias=False, rope_scaling={"rope_type": "linear", "factor": 2.0}),
}


def save_fixture(model, ids, d):
    """The model (eval mode), the tiny tokenizer with the ChatML template, and transformers'
    expectations, as an HF directory d."""
    model.eval()
    model.save_pretrained(d, safe_serialization=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|endoftext|>", eos_token="<|im_end|>")
    fast.chat_template = CHATML
    fast.save_pretrained(d)
    save_expectations(model, ids, d, **tokenizer_expectations(fast))
    p = os.path.join(d, "generation_config.json")
    if os.path.exists(p):
        os.remove(p)


def save_expectations(model, ids, d, **extra):
    """logits.f32 (all positions of `ids`) and expected.json (ids, a 16-token greedy
    continuation of the first 8, and `extra`) from transformers, into directory d."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float().numpy()
        gen = model.generate(torch.tensor([ids[:8]]), max_new_tokens=16, do_sample=False, eos_token_id=None,
                             pad_token_id=0)[0, 8:].tolist()
    logits.astype(np.float32).tofile(os.path.join(d, "logits.f32"))
    json.dump({"tokens": ids, "vocab": VOCAB, "greedy_prompt": ids[:8], "greedy": gen, **extra,
               "transformers": transformers.__version__}, open(os.path.join(d, "expected.json"), "w"))


def tokenizer_expectations(fast):
    """Token ids of awkward strings, and a rendered chat, from the HF tokenizer."""
    hard = ["Hello world", "  multiple   spaces\tand\nnewlines\n\n", "café naïve Ångström", "你好，世界 🙂👍🏽",
            "def f(x):\n    return x**2  # code", "<|im_start|>user\nHi<|im_end|>", "1234567890", ""]
    goldens = [{"text": t, "ids": fast(t, add_special_tokens=False)["input_ids"],
                "ids_special": fast(t, add_special_tokens=True)["input_ids"]} for t in hard]
    chat = fast.apply_chat_template([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}],
                                    tokenize=False, add_generation_prompt=True)
    return {"tokenizer_goldens": goldens, "chat_rendered": chat}


def main():
    ids = tk.encode(text[:400]).ids[:40]
    torch.manual_seed(0)
    for name, cfg in CONFIGS.items():
        d = os.path.join(out_root, name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        config = AutoConfig.for_model(**cfg)
        config._attn_implementation = "eager"
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager")
        with torch.no_grad():  # larger-than-default init so that logits are not all ~0
            for p in model.parameters():
                if p.dim() >= 1:
                    p.normal_(0.0, 0.2 if p.dim() > 1 else 0.5)
            for n_, p in model.named_parameters():
                if "norm" in n_:
                    p.copy_(1.0 + 0.2 * torch.randn_like(p))
        save_fixture(model, ids, d)
        print(name, "ok", os.path.getsize(os.path.join(d, "model.safetensors")), "bytes")

    # Half-precision, sharded checkpoints: the weights are rounded to bf16 / f16 and saved in that
    # type across several shards (model.safetensors.index.json); transformers computes the expected
    # logits in float32 from the rounded weights, which is what hearth does with them.
    for name, src, dtype in [("llama-bf16-sharded", "llama", torch.bfloat16), ("qwen2-f16-sharded", "qwen2", torch.float16)]:
        d = os.path.join(out_root, name)
        shutil.rmtree(d, ignore_errors=True)
        model = AutoModelForCausalLM.from_pretrained(os.path.join(out_root, src), dtype=torch.float32, attn_implementation="eager")
        with torch.no_grad():  # round the weights only: buffers such as rope's inv_freq stay f32
            for p_ in model.parameters():
                p_.copy_(p_.to(dtype).to(torch.float32))
        model.eval()
        half = AutoModelForCausalLM.from_pretrained(os.path.join(out_root, src), dtype=torch.float32, attn_implementation="eager")
        half.load_state_dict(model.state_dict())
        half.to(dtype).save_pretrained(d, safe_serialization=True, max_shard_size="150KB")
        fast = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|endoftext|>", eos_token="<|im_end|>")
        fast.save_pretrained(d)
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float().numpy()
        logits.astype(np.float32).tofile(os.path.join(d, "logits.f32"))
        json.dump({"tokens": ids, "vocab": VOCAB}, open(os.path.join(d, "expected.json"), "w"))
        p = os.path.join(d, "generation_config.json")
        if os.path.exists(p):
            os.remove(p)
        print(name, "ok", sorted(f for f in os.listdir(d) if f.endswith(".safetensors") or f.endswith(".json")))


if __name__ == "__main__":
    main()
