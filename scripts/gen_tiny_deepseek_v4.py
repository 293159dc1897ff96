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

save_pretrained writes the released checkpoints' names (layers.N.attn.wq_a, ffn.experts.E.w1,
hc_attn_fn, head...; with a `model.` prefix, and the attention's kv norm as attn.norm): transformers
reverses its load-time renames. The routed experts' weights are drawn on the MXFP4 grid (FP4 E2M1
values times a power of two per 32 inputs), as the released V4-Flash experts are FP4.

The GGUF comes from llama.cpp's converter (conversion/deepseek.py, DeepseekV4Model), which reads
the released layout only: a converter copy of the checkpoint has the released names (no prefix,
attn.kv_norm, embed, hc_head_fn), the experts as packed FP4 codes plus E8M0 scales, and the
released config keys (num_hash_layers, compress_ratios, qk_rope_head_dim, rope_scaling).

Run: python3 scripts/gen_tiny_deepseek_v4.py
"""
import copy, json, os, re, shutil, sys, tempfile
import torch

sys.path.insert(0, os.path.dirname(__file__))
from gen_tiny_models import save_fixture  # noqa: E402
from gen_tiny_moe import convert, out_root  # noqa: E402
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


FP4 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])


def fp4_codes(w):
    """w [rows, cols] (cols a multiple of 32) as FP4 E2M1 codes [rows, cols] and E8M0 exponents
    [rows, cols / 32] (biased by 127), by rounding to the nearest grid value."""
    rows, cols = w.shape
    g = w.reshape(rows, cols // 32, 32)
    e = torch.ceil(torch.log2(g.abs().amax(-1).clamp_min(1e-30) / 6.0))
    scaled = g / torch.exp2(e)[..., None]
    codes = (scaled[..., None] - FP4).abs().argmin(-1)
    return codes.reshape(rows, cols), (e + 127).to(torch.uint8)


def snap_experts(model):
    """Round the routed experts' weights to the MXFP4 grid (per row, 32 inputs per scale)."""
    with torch.no_grad():
        for n_, p in model.named_parameters():
            if n_.endswith("experts.gate_up_proj") or n_.endswith("experts.down_proj"):
                for e in range(p.shape[0]):
                    codes, ex = fp4_codes(p[e])
                    v = FP4[codes].reshape(p.shape[1], -1, 32) * torch.exp2(ex.float() - 127)[..., None]
                    p[e].copy_(v.reshape(p.shape[1], p.shape[2]))


def released_copy(d, out):
    """The converter copy of fixture d in out (see the module doc)."""
    from safetensors.torch import load_file, save_file
    t = load_file(os.path.join(d, "model.safetensors"))
    r = {}
    glob = {"embed_tokens.weight": "embed.weight", "hc_head.hc_fn": "hc_head_fn",
            "hc_head.hc_base": "hc_head_base", "hc_head.hc_scale": "hc_head_scale"}
    for k, v in t.items():
        k = k.removeprefix("model.")
        k = glob.get(k, k)
        k = re.sub(r"^(layers\.\d+)\.attn\.norm\.weight$", r"\1.attn.kv_norm.weight", k)
        m = re.match(r"^(layers\.\d+\.ffn\.experts\.\d+\.w[123])\.weight$", k)
        if m:
            codes, ex = fp4_codes(v)
            assert torch.equal(FP4[codes] * torch.exp2(ex.float() - 127).repeat_interleave(32, 1), v), k
            r[m.group(1) + ".weight"] = (codes[:, 0::2] | (codes[:, 1::2] << 4)).to(torch.uint8).contiguous()
            r[m.group(1) + ".scale"] = ex.contiguous()
            continue
        r[k] = v.contiguous()
    save_file(r, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    c = json.load(open(os.path.join(d, "config.json")))
    rates = {"sliding_attention": 0, **c["compress_rates"]}
    c.update(num_hash_layers=c["mlp_layer_types"].count("hash_moe"),
             compress_ratios=[rates[t] for t in c["layer_types"]], qk_rope_head_dim=CFG_ROPE_DIM,
             rope_scaling={k: v for k, v in c["rope_parameters"]["compress"].items()
                           if k not in ("rope_theta", "partial_rotary_factor", "attention_factor")})
    c["rope_scaling"]["type"] = c["rope_scaling"].pop("rope_type")
    json.dump(c, open(os.path.join(out, "config.json"), "w"), indent=2)
    for f in os.listdir(d):
        if f.startswith("tokenizer") or f.endswith(".jinja"):
            shutil.copy(os.path.join(d, f), out)


CFG_ROPE_DIM = int(32 * 0.25)


def make(ids):
    while True:
        model = build(NAME, CFG)
        snap_experts(model)
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
    with tempfile.TemporaryDirectory() as tmp:
        released_copy(d, tmp)
        convert(NAME, tmp)
        shutil.move(os.path.join(tmp, "model.gguf"), os.path.join(d, "model.gguf"))
    print(NAME, "ok", sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d)), "bytes")


if __name__ == "__main__":
    main()
