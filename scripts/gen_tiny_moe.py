#!/usr/bin/env python3
"""Tiny random-weight Mixture-of-Experts / MLA models, one per architecture in issue 3, with
expected logits from HF transformers.

Each goes to tests/fixtures/tiny/<name>/ as
  - an HF directory (config.json, model.safetensors in float32, tokenizer files);
  - model.gguf: the same weights converted by llama.cpp's own convert_hf_to_gguf.py (from the
    llama-cpp-python sdist that scripts/build_llamacpp.sh unpacks into .llama.cpp/src), in f32;
  - expected.json (input ids, 16-token greedy continuation) and logits.f32 ([n_tokens, vocab]).

The configs exercise the options issue 3 names: several expert groups with group-limited routing,
nonzero score-correction biases, partial rotary, head_dim != hidden/heads, dense first layers,
dense layers between sparse ones, shared experts (plain and sigmoid-gated), MLA with and without
the q low-rank path, YaRN with DeepSeek's mscale, attention sinks and alternating sliding windows.

Run: python3 scripts/gen_tiny_moe.py   (needs torch, transformers, safetensors; and
     scripts/build_llamacpp.sh --src-only to have unpacked llama.cpp's source)
"""
import json, os, shutil, subprocess, sys
import numpy as np
import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

sys.path.insert(0, os.path.dirname(__file__))
from gen_tiny_models import tk, VOCAB, text, save_expectations, save_fixture  # noqa: E402

root = os.path.join(os.path.dirname(__file__), "..")
out_root = os.path.join(root, "tests", "fixtures", "tiny")
llama_src = os.path.join(root, ".llama.cpp", "src")

base = dict(vocab_size=VOCAB, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=256, rms_norm_eps=1e-6, bos_token_id=0, eos_token_id=2,
            tie_word_embeddings=False)
yarn_ds = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64,
           "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 0.707, "mscale_all_dim": 0.707}
CONFIGS = {
    # softmax top-k with renormalisation; a dense layer between sparse ones; head_dim 32 != 64/4
    "qwen3_moe": dict(base, model_type="qwen3_moe", num_hidden_layers=3, head_dim=32, intermediate_size=96,
                      moe_intermediate_size=32, num_experts=8, num_experts_per_tok=3, norm_topk_prob=True,
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    # dense layers where mlp_only_layers / decoder_sparse_step say. llama.cpp's converter cannot map
    # such layers, so this one is an HF directory only.
    "qwen3_moe-dense-layers": dict(base, model_type="qwen3_moe", num_hidden_layers=4, head_dim=32,
                                   intermediate_size=96, moe_intermediate_size=32, num_experts=8,
                                   num_experts_per_tok=2, norm_topk_prob=False, mlp_only_layers=[0],
                                   decoder_sparse_step=2,
                                   rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    # softmax top-k without renormalisation, attention bias, a sigmoid-gated shared expert
    "qwen2_moe": dict(base, model_type="qwen2_moe", num_hidden_layers=2, intermediate_size=96,
                      moe_intermediate_size=32, shared_expert_intermediate_size=48, num_experts=8,
                      num_experts_per_tok=2, norm_topk_prob=False, qkv_bias=True, use_sliding_window=False,
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    "mixtral": dict(base, model_type="mixtral", num_hidden_layers=2, intermediate_size=48, num_local_experts=4,
                    num_experts_per_tok=2, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
    # (scoring_func / topk_method are not read by transformers, which hard-codes each version's
    # routing, but real DeepSeek config.json files carry them and llama.cpp's converter reads them.)
    # MLA without the q low-rank path; softmax scores, group-limited greedy routing, YaRN + mscale
    "deepseek_v2": dict(base, model_type="deepseek_v2", num_hidden_layers=3, num_key_value_heads=4,
                        intermediate_size=96, moe_intermediate_size=32, first_k_dense_replace=1,
                        q_lora_rank=None, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
                        v_head_dim=24, head_dim=8, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=3,
                        topk_method="group_limited_greedy", n_group=4, topk_group=2, routed_scaling_factor=1.5,
                        norm_topk_prob=False, scoring_func="softmax", rope_parameters=yarn_ds),
    # MLA with the q low-rank path; sigmoid scores + correction bias, groups, scaling, renorm
    "deepseek_v3": dict(base, model_type="deepseek_v3", num_hidden_layers=3, num_key_value_heads=4,
                        intermediate_size=96, moe_intermediate_size=32, first_k_dense_replace=1,
                        q_lora_rank=24, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
                        v_head_dim=24, head_dim=8, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=3,
                        n_group=4, topk_group=2, routed_scaling_factor=2.5, norm_topk_prob=True,
                        num_nextn_predict_layers=0, scoring_func="sigmoid", topk_method="noaux_tc",
                        rope_parameters=yarn_ds),
    # partial rotary, q/k norm, attention bias, shared expert, sigmoid + correction bias, groups
    "glm4_moe": dict(base, model_type="glm4_moe", num_hidden_layers=3, head_dim=32, intermediate_size=96,
                     moe_intermediate_size=32, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=3,
                     n_group=2, topk_group=1, first_k_dense_replace=1, routed_scaling_factor=1.8,
                     norm_topk_prob=True, use_qk_norm=True, attention_bias=True, num_nextn_predict_layers=0,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}),
    # q/k norm over all heads at once, partial rotary (rotary_dim), sigmoid + correction bias
    "minimax_m2": dict(base, model_type="minimax_m2", num_hidden_layers=2, head_dim=32, intermediate_size=32,
                       num_local_experts=8, num_experts_per_tok=3, rotary_dim=16, scoring_func="sigmoid",
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    # attention sinks, alternating sliding window, clamped SwiGLU with biases, YaRN
    "gpt_oss": dict(base, model_type="gpt_oss", num_hidden_layers=4, head_dim=16, intermediate_size=32,
                    num_local_experts=8, num_experts_per_tok=2, sliding_window=8, attention_bias=True,
                    layer_types=["sliding_attention", "full_attention"] * 2,
                    rope_parameters={"rope_type": "yarn", "rope_theta": 150000.0, "factor": 4.0, "beta_fast": 32.0,
                                     "beta_slow": 1.0, "truncate": False, "original_max_position_embeddings": 64}),
}

# Runs llama.cpp's converter. Our tiny tokenizer is unknown to its pre-tokenizer hash table, so the
# wrapper names it plain "gpt-2" (byte-level BPE with GPT-2's split regex, which it is), and has
# GLM's vocabulary writer (which looks up GLM's own special tokens) write it as plain GPT-2 BPE.
CONVERT = r"""
import sys, runpy
src = sys.argv[1]
sys.path.insert(0, src + "/gguf-py"); sys.path.insert(0, src)
import conversion.base as b
b.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
b.TextModel._set_vocab_glm = lambda self: self._set_vocab_gpt2()
sys.argv = ["convert_hf_to_gguf.py", sys.argv[2], "--outfile", sys.argv[3], "--outtype", "f32"] + sys.argv[4:]
runpy.run_path(src + "/convert_hf_to_gguf.py", run_name="__main__")
"""

NO_GGUF = {"qwen3_moe-dense-layers"}
only = []
ids = tk.encode(text[:400]).ids[:40]


def convert(name, d, *extra):
    """d/model.gguf from the HF directory d, by llama.cpp's converter in f32 (`extra`: more of
    its arguments)."""
    r = subprocess.run([sys.executable, "-c", CONVERT, llama_src, d, os.path.join(d, "model.gguf"), *extra],
                       capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stderr[-3000:])
        raise SystemExit(f"{name}: conversion failed")


def gpt_oss_mxfp4():
    """gpt-oss ships its experts in MXFP4. tests/fixtures/tiny/gpt_oss-mxfp4/model.gguf is the
    gpt_oss GGUF with its expert matrices quantized to MXFP4 by gguf-py (llama.cpp's own Python
    package); the expected logits come from transformers running the gpt_oss model with those
    experts replaced by their dequantized values."""
    sys.path.insert(0, os.path.join(llama_src, "gguf-py"))
    import gguf
    src = os.path.join(out_root, "gpt_oss")
    d = os.path.join(out_root, "gpt_oss-mxfp4")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    reader = gguf.GGUFReader(os.path.join(src, "model.gguf"))
    writer = gguf.GGUFWriter(os.path.join(d, "model.gguf"), arch="gpt-oss")
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        vt = field.types[0]
        sub = field.types[-1] if vt == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vt, sub_type=sub)
    MX = gguf.GGMLQuantizationType.MXFP4
    deq = {}
    out = []
    for t in reader.tensors:
        data = np.array(t.data)
        if t.name.endswith(("ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_down_exps.weight")):
            q = gguf.quants.quantize(data, MX)
            deq[t.name] = gguf.quants.dequantize(q, MX)
            out.append((t.name, q, MX))
        else:
            out.append((t.name, data, t.tensor_type))
    for name, data, ty in out:
        writer.add_tensor_info(name, data.shape, data.dtype, data.nbytes, ty)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for name, data, ty in out:
        writer.write_tensor_data(data)
    writer.close()

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            ex = layer.mlp.experts
            g = torch.from_numpy(deq[f"blk.{i}.ffn_gate_exps.weight"])  # [E, ff, hidden]
            u = torch.from_numpy(deq[f"blk.{i}.ffn_up_exps.weight"])
            dn = torch.from_numpy(deq[f"blk.{i}.ffn_down_exps.weight"])  # [E, hidden, ff]
            ex.gate_up_proj[:, :, 0::2] = g.transpose(1, 2)
            ex.gate_up_proj[:, :, 1::2] = u.transpose(1, 2)
            ex.down_proj.copy_(dn.transpose(1, 2))
    model.eval()
    save_expectations(model, ids, d)
    print("gpt_oss-mxfp4 ok")



def main():
    global only, ids
    only = sys.argv[1:]
    ids = tk.encode(text[:400]).ids[:40]
    for name, cfg in CONFIGS.items():
        if only and name not in only:
            continue
        torch.manual_seed(1)
        d = os.path.join(out_root, name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        config = AutoConfig.for_model(**cfg)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager")
        with torch.no_grad():  # larger-than-default init so that logits (and routing) are decisive
            for n_, p in model.named_parameters():
                p.normal_(0.0, 0.2 if p.dim() > 1 else 0.5)
                if "norm" in n_:
                    p.copy_(1.0 + 0.2 * torch.randn_like(p))
            for n_, b_ in model.named_buffers():
                if "e_score_correction_bias" in n_:  # nonzero, comparable to the sigmoid scores' spread
                    b_.copy_(0.1 * torch.randn_like(b_))
        save_fixture(model, ids, d)
        if name in NO_GGUF:
            print(name, "ok (HF only)")
            continue
        convert(name, d)
        print(name, "ok", os.path.getsize(os.path.join(d, "model.safetensors")), "bytes")

    # The dense fixtures of scripts/gen_tiny_models.py get their GGUF conversions here too, so every
    # architecture is tested from both formats (the llama GGUF has llama.cpp's Q/K permutation).
    # Not mistral: the converter writes it as plain llama and drops its sliding window.
    for name in ["llama", "qwen2", "qwen3"]:
        if only and name not in only:
            continue
        d = os.path.join(out_root, name)
        convert(name, d)
        print(name, "gguf ok")
    if not only or "gpt_oss" in only or "gpt_oss-mxfp4" in only:
        gpt_oss_mxfp4()


if __name__ == "__main__":
    main()
