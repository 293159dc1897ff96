#!/usr/bin/env python3
"""A tiny random-weight DeepSeek-V4 (transformers' `deepseek_v4`, issue 17), with expected logits
from HF transformers in float64 (like scripts/gen_tiny_issue17.py, whose helpers it uses):

  - four layers, one of each attention kind and a second CSA: sliding-window (window 32 < the
    320-token input), compressed sparse attention (CSA: rate 4, so 80 compressed entries, of
    which the lightning indexer keeps 12 per query: the sparse path really runs) and heavily
    compressed attention (HCA: rate 16, 20 entries); the compressors cross many windows;
  - hash-routed MoE in the first two layers (a random tid2eid table), sqrt-softplus score
    routing with a correction bias in the others, and swiglu_limit small enough that the
    clamps act;
  - hc_mult 3 hyper-connection streams, 20 Sinkhorn iterations;
  - attention sinks, the grouped low-rank output projection (2 groups), partial interleaved
    RoPE on the trailing slice of each head, yarn on the compressed layers' RoPE.

save_pretrained writes the released checkpoints' layout (layers.N.attn.wq_a, ffn.experts.E.w1,
hc_attn_fn, embed, head...): transformers reverses its load-time renames.

Run: python3 scripts/gen_tiny_deepseek_v4.py
"""
import copy, os, shutil, sys
import torch

sys.path.insert(0, os.path.dirname(__file__))
from gen_tiny_models import save_fixture  # noqa: E402
from gen_tiny_moe import out_root  # noqa: E402
from gen_tiny_hybrid import prompt_ids, save_float64_expectations, well_conditioned  # noqa: E402
from gen_tiny_issue17 import base, build  # noqa: E402

NAME = "deepseek_v4"
CFG = dict(base, model_type="deepseek_v4", num_hidden_layers=4, num_key_value_heads=1, head_dim=32,
           q_lora_rank=24, moe_intermediate_size=32, n_routed_experts=8, n_shared_experts=1,
           num_experts_per_tok=2, routed_scaling_factor=1.5, scoring_func="sqrtsoftplus",
           norm_topk_prob=True, partial_rotary_factor=0.25, sliding_window=32,
           layer_types=["sliding_attention", "compressed_sparse_attention",
                        "heavily_compressed_attention", "compressed_sparse_attention"],
           compress_rates={"compressed_sparse_attention": 4, "heavily_compressed_attention": 16},
           mlp_layer_types=["hash_moe", "hash_moe", "moe", "moe"],
           hc_mult=3, hc_sinkhorn_iters=20, hc_eps=1e-6, swiglu_limit=0.3, o_groups=2, o_lora_rank=16,
           index_n_heads=16, index_head_dim=16, index_topk=12, num_nextn_predict_layers=0,
           rope_theta=10000.0, compress_rope_theta=160000.0,
           rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128,
                            "beta_fast": 32.0, "beta_slow": 1.0})


def indexer_margin(m64, ids):
    """The smallest gap, over every CSA query that has more ready compressed entries than
    index_topk, between the top-k-th and the next indexer score, as a share of the query's
    largest |score|, in float64 (the scorer's output, captured by a hook). A near tie could
    choose differently in float32, so the seed search skips such draws."""
    gaps = []
    rate = CFG["compress_rates"]["compressed_sparse_attention"]
    k = CFG["index_topk"]

    def hook(mod, args, out):
        s = out[0]  # [S, T]
        for t in range(s.shape[0]):
            ready = (t + 1) // rate
            if ready > k:
                v = s[t, :ready].sort(descending=True).values
                gaps.append(((v[k - 1] - v[k]) / v.abs().max()).item())

    hs = [m.register_forward_hook(hook) for n_, m in m64.named_modules() if n_.endswith("indexer.scorer")]
    with torch.no_grad():
        m64(torch.tensor([ids]))
    for h in hs:
        h.remove()
    return min(gaps)


def router_margin(m64, ids):
    """The same for the score-routed layers' top-k of experts (scores plus correction bias)."""
    gaps = []
    k = CFG["num_experts_per_tok"]

    def hook(mod, args, out):
        if not hasattr(mod, "e_score_correction_bias"):
            return
        sc = mod.score_fn(out[0]) + mod.e_score_correction_bias
        v = sc.sort(dim=-1, descending=True).values
        gaps.append(((v[:, k - 1] - v[:, k]) / v.abs().max(dim=-1).values).min().item())

    hs = [m.register_forward_hook(hook) for n_, m in m64.named_modules() if n_.endswith("mlp.gate")]
    with torch.no_grad():
        m64(torch.tensor([ids]))
    for h in hs:
        h.remove()
    return min(gaps)


def make(ids):
    while True:
        model = build(NAME, CFG)
        with torch.no_grad():
            for n_, b_ in model.named_buffers():
                if n_.endswith("tid2eid"):  # distinct experts per token
                    b_.copy_(torch.stack([torch.randperm(CFG["n_routed_experts"])[: CFG["num_experts_per_tok"]]
                                          for _ in range(b_.shape[0])]))
            for n_, p in model.named_parameters():
                if n_.endswith("sinks") or n_.endswith("position_bias"):
                    p.normal_(0.0, 0.5)
        m64 = copy.deepcopy(model).double()
        gi, gr = indexer_margin(m64, ids), router_margin(m64, ids)
        print(f"{NAME}: indexer top-k gap {gi:.1e}, router top-k gap {gr:.1e}")
        if gi > 1e-5 and gr > 1e-5:
            return model


def main():
    ids = prompt_ids()
    d = os.path.join(out_root, NAME)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    model, m64, seed, noise = well_conditioned(NAME, lambda: make(ids), ids)
    save_fixture(model, ids, d)
    save_float64_expectations(m64, ids, d, seed, noise)
    print(NAME, "ok (HF)", sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d)), "bytes")


if __name__ == "__main__":
    main()
