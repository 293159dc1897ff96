#!/usr/bin/env python3
"""Random-weight benchmark models in real GGUF files: built with transformers, converted by
llama.cpp's convert_hf_to_gguf.py (to bf16) and quantized by its llama-quantize. For
scripts/gpu_check.sh: a SmolLM2-135M-shaped llama in Q4_1, and a Qwen3-30B-A3B-shaped MoE cut
to 12 layers in Q4_K_M (hidden 2048, 128 experts with 8 active, expert FFN 768, 32/4 heads,
head_dim 128). scripts/gen_moe_bench_model.py builds its model with `build` too.

Usage: gen_gpu_models.py OUT_DIR LLAMA_SRC LLAMA_QUANTIZE [NAME ...]
Writes OUT_DIR/NAME.TYPE.gguf for each model (default: both); skips those already there.
"""
import os, shutil, subprocess, sys
import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_tiny_models import tk  # noqa: E402
from gen_tiny_moe import CONVERT  # noqa: E402


def rope(theta):
    return {"rope_type": "default", "rope_theta": theta}


SHAPES = {
    "smollm2-shape": ("Q4_1", dict(
        model_type="llama", vocab_size=49152, hidden_size=576, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536,
        max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=True,
        bos_token_id=0, eos_token_id=2, rope_parameters=rope(100000.0))),
    "qwen3moe-30b-a3b-12l": ("Q4_K_M", dict(
        model_type="qwen3_moe", vocab_size=151936, hidden_size=2048, num_hidden_layers=12,
        num_attention_heads=32, num_key_value_heads=4, head_dim=128, intermediate_size=6144,
        moe_intermediate_size=768, num_experts=128, num_experts_per_tok=8, norm_topk_prob=True,
        max_position_embeddings=40960, rms_norm_eps=1e-6, tie_word_embeddings=False,
        bos_token_id=0, eos_token_id=2, rope_parameters=rope(1000000.0))),
}


def build(out_dir, name, qtype, shape, llama_src, quantize):
    """OUT_DIR/NAME.QTYPE.gguf: a model of `shape` (AutoConfig.for_model's arguments) with
    N(0, 0.02) weights and unit norms; its path (made only if missing)."""
    os.makedirs(out_dir, exist_ok=True)
    final = os.path.join(out_dir, f"{name}.{qtype}.gguf")
    if os.path.exists(final):
        return final
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
    # the tiny fixtures' byte-level BPE: the converter pads the vocabulary to the config's size
    PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|endoftext|>", eos_token="<|im_end|>").save_pretrained(hf)
    bf16 = os.path.join(work, "model.bf16.gguf")
    subprocess.run([sys.executable, "-c", CONVERT.replace('"f32"', '"bf16"'), llama_src, hf, bf16],
                   check=True, stdout=subprocess.DEVNULL)
    shutil.rmtree(hf)
    subprocess.run([quantize, bf16, final, qtype, str(os.cpu_count() or 4)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shutil.rmtree(work)
    return final


if __name__ == "__main__":
    out_dir, llama_src, quantize = sys.argv[1:4]
    only = sys.argv[4:]
    for name, (qtype, shape) in SHAPES.items():
        if not only or name in only:
            print(build(out_dir, name, qtype, shape, llama_src, quantize), flush=True)
