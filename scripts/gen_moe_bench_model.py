#!/usr/bin/env python3
"""The Qwen3-MoE-shaped benchmark model of issue 5: random weights, about 1.8B parameters in
total and 0.35B active (64 experts, 8 used per token, hidden 1024, 16 layers), built with
transformers, converted by llama.cpp's convert_hf_to_gguf.py and quantized by its
llama-quantize to Q4_K_M.

Run: python3 scripts/gen_moe_bench_model.py [OUT_DIR [LLAMA_SRC LLAMA_QUANTIZE]]
     (OUT_DIR default: $HEARTH_MODELS or ~/.cache/hearth/models; llama.cpp default:
     scripts/build_llamacpp.sh's source and build; scripts/cpu_scaling.sh passes the copies
     it carries to the device machine). Needs torch and transformers.
Writes OUT_DIR/qwen3moe-1.8b-random.Q4_K_M.gguf (about 1.1 GB); intermediates go to a
temporary directory next to it and are removed.
"""
import os, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_gpu_models import build  # noqa: E402
from gen_tiny_moe import llama_src  # noqa: E402

root = os.path.join(os.path.dirname(__file__), "..")
out_dir = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
    "HEARTH_MODELS", os.path.expanduser("~/.cache/hearth/models"))
shape = dict(
    model_type="qwen3_moe", vocab_size=32768, hidden_size=1024, num_hidden_layers=16,
    num_attention_heads=16, num_key_value_heads=4, head_dim=128, intermediate_size=3072,
    moe_intermediate_size=512, num_experts=64, num_experts_per_tok=8, norm_topk_prob=True,
    max_position_embeddings=4096, rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=0,
    eos_token_id=2, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
quantize = os.path.join(root, ".llama.cpp", "build", "bin", "llama-quantize")
if len(sys.argv) > 3:
    llama_src, quantize = sys.argv[2], sys.argv[3]
print(build(out_dir, "qwen3moe-1.8b-random", "Q4_K_M", shape, llama_src, quantize))
