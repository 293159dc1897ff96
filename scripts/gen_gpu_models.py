#!/usr/bin/env python3
"""The benchmark models of scripts/gpu_check.sh, with random weights: a SmolLM2-135M-shaped
llama in Q4_1, and a Qwen3-30B-A3B-shaped MoE cut to 12 layers in Q4_K_M (hidden 2048, 128
experts with 8 active, expert FFN 768, 32/4 heads, head_dim 128). Built with transformers,
converted by llama.cpp's convert_hf_to_gguf.py (to bf16) and quantized by its llama-quantize.

Usage: gen_gpu_models.py OUT_DIR LLAMA_SRC LLAMA_QUANTIZE [NAME ...]
Writes OUT_DIR/NAME.TYPE.gguf for each model (default: both); skips those already there.
"""
import os, shutil, subprocess, sys
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

out_dir, llama_src, quantize = sys.argv[1:4]
only = sys.argv[4:]
SHAPES = {
    "smollm2-shape": ("Q4_1", dict(
        model_type="llama", vocab_size=49152, hidden_size=576, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536,
        max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=True,
        bos_token_id=0, eos_token_id=2, rope_theta=100000.0)),
    "qwen3moe-30b-a3b-12l": ("Q4_K_M", dict(
        model_type="qwen3_moe", vocab_size=151936, hidden_size=2048, num_hidden_layers=12,
        num_attention_heads=32, num_key_value_heads=4, head_dim=128, intermediate_size=6144,
        moe_intermediate_size=768, num_experts=128, num_experts_per_tok=8, norm_topk_prob=True,
        max_position_embeddings=40960, rms_norm_eps=1e-6, tie_word_embeddings=False,
        bos_token_id=0, eos_token_id=2, rope_theta=1000000.0)),
}
CONVERT = r"""
import sys, runpy
src = sys.argv[1]
sys.path.insert(0, src + "/gguf-py"); sys.path.insert(0, src)
import conversion.base as b
b.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
sys.argv = ["convert_hf_to_gguf.py", sys.argv[2], "--outtype", "bf16", "--outfile", sys.argv[3]]
runpy.run_path(src + "/convert_hf_to_gguf.py", run_name="__main__")
"""

# a small byte-level BPE: the converter pads the vocabulary to the config's size
tk = Tokenizer(models.BPE())
tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tk.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=384, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
tk.train_from_iterator(["the quick brown fox jumps over the lazy dog " * 50], trainer)

os.makedirs(out_dir, exist_ok=True)
for name, (qtype, shape) in SHAPES.items():
    if only and name not in only:
        continue
    final = os.path.join(out_dir, f"{name}.{qtype}.gguf")
    if os.path.exists(final):
        print(final)
        continue
    work = os.path.join(out_dir, f"{name}-work")
    shutil.rmtree(work, ignore_errors=True)
    hf = os.path.join(work, "hf")
    os.makedirs(hf)
    cfg = AutoConfig.for_model(**shape)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    print(name, "parameters:", sum(p.numel() for p in model.parameters()), flush=True)
    model.save_pretrained(hf, safe_serialization=True)
    del model
    PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|endoftext|>", eos_token="<|im_end|>").save_pretrained(hf)
    bf16 = os.path.join(work, "model.bf16.gguf")
    subprocess.run([sys.executable, "-c", CONVERT, llama_src, hf, bf16], check=True, stdout=subprocess.DEVNULL)
    shutil.rmtree(hf)
    subprocess.run([quantize, bf16, final, qtype, str(os.cpu_count() or 4)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shutil.rmtree(work)
    print(final, flush=True)
