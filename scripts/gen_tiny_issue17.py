#!/usr/bin/env python3
"""Tiny random-weight models for issue 17's other two architectures, with expected logits from
HF transformers (in float64, like scripts/gen_tiny_hybrid.py, whose seed search and weight
scales this reuses):

  - minimax:  MiniMax-M1 / MiniMax-Text-01: lightning attention (linear attention with a fixed
              per-head, per-layer decay, blocked in transformers' prefill) with softmax attention
              layers between, Mixtral-style MoE, and the residual scaling
              (x = alpha * norm(x) + beta * f(norm(x))) with factors other than 1. block_size 64
              < the 320-token input, so transformers' blocked path crosses several blocks.
              HF only: llama.cpp's converter (conversion/minimax.py) registers only the remote-code
              classes (MiniMaxText01ForCausalLM / MiniMaxM1ForCausalLM) and reads their config
              keys (layernorm_*_alpha/beta, rotary_dim) and a sharded index, none of which
              transformers' MiniMaxConfig writes; it also requires every beta to be 1.
  - kimi_k25: Kimi K2.5: the multimodal Kimi_K25ForConditionalGeneration, whose text_config is
              DeepSeek-V3 (MLA with the q low-rank path, sigmoid routing with correction bias and
              groups); saved as the real checkpoints are (language_model.model.*,
              language_model.lm_head, a vision tower and projector that hearth must skip).
              Its GGUF comes from llama.cpp's converter (deepseek2).

Each goes to tests/fixtures/tiny/<name>/.

Run: python3 scripts/gen_tiny_issue17.py [names]
"""
import os, re, shutil, sys
import torch
from transformers import AutoConfig, AutoModelForCausalLM

sys.path.insert(0, os.path.dirname(__file__))
from gen_tiny_models import VOCAB, save_fixture  # noqa: E402
from gen_tiny_moe import convert, out_root  # noqa: E402
from gen_tiny_hybrid import MATRIX_STD, prompt_ids, save_float64_expectations, well_conditioned  # noqa: E402

base = dict(vocab_size=VOCAB, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=512, rms_norm_eps=1e-6, bos_token_id=0, eos_token_id=2,
            tie_word_embeddings=False)
yarn_ds = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64,
           "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 0.707, "mscale_all_dim": 0.707}
CONFIGS = {
    # three lightning layers, a softmax one, a lightning one (M1: seven and one)
    "minimax": dict(base, model_type="minimax", num_hidden_layers=5, head_dim=16, intermediate_size=32,
                    num_local_experts=4, num_experts_per_tok=2, block_size=64,
                    layer_types=["linear_attention"] * 3 + ["full_attention", "linear_attention"],
                    full_attn_alpha_factor=1.5, full_attn_beta_factor=0.8,
                    linear_attn_alpha_factor=1.25, linear_attn_beta_factor=1.1,
                    mlp_alpha_factor=1.4, mlp_beta_factor=0.9,
                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    "kimi_k25": dict(model_type="kimi_k25", tie_word_embeddings=False, projection_hidden_size=32,
                     text_config=dict(base, model_type="deepseek_v3", num_hidden_layers=3, num_key_value_heads=4,
                                      intermediate_size=96, moe_intermediate_size=32, first_k_dense_replace=1,
                                      q_lora_rank=24, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
                                      v_head_dim=24, head_dim=8, n_routed_experts=8, n_shared_experts=1,
                                      num_experts_per_tok=3, n_group=4, topk_group=2, routed_scaling_factor=2.5,
                                      norm_topk_prob=True, num_nextn_predict_layers=0, scoring_func="sigmoid",
                                      topk_method="noaux_tc", rope_parameters=yarn_ds),
                     vision_config=dict(patch_size=4, pos_emb_height=4, pos_emb_width=4, pos_emb_time=2,
                                        num_attention_heads=2, num_hidden_layers=1, hidden_size=32,
                                        intermediate_size=64, merge_kernel_size=[2, 2])),
    # MLA + DSA: index_topk 48 of the 320 positions, so most queries attend to a chosen subset;
    # 16 indexer heads (the real ones have 32-64), as with few heads a position often scores
    # exactly 0 (every head's ReLU at 0), and ties at the top-k boundary make the choice
    # arbitrary
    "deepseek_v32": dict(base, model_type="deepseek_v32", num_hidden_layers=3, num_key_value_heads=4,
                         intermediate_size=96, moe_intermediate_size=32, first_k_dense_replace=1,
                         q_lora_rank=24, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
                         v_head_dim=24, head_dim=8, n_routed_experts=8, n_shared_experts=1,
                         num_experts_per_tok=3, n_group=4, topk_group=2, routed_scaling_factor=2.5,
                         norm_topk_prob=True, index_topk=48, index_head_dim=16, index_n_heads=16,
                         rope_parameters=yarn_ds),
    # GLM-5.2's shared indexers: layers 1 and 3 reuse the choice of layers 0 and 2
    "glm_moe_dsa": dict(base, model_type="glm_moe_dsa", num_hidden_layers=4, num_key_value_heads=4,
                        intermediate_size=96, moe_intermediate_size=32, first_k_dense_replace=1,
                        q_lora_rank=24, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
                        v_head_dim=24, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2,
                        n_group=1, topk_group=1, routed_scaling_factor=2.5, norm_topk_prob=True,
                        index_topk=40, index_head_dim=16, index_n_heads=16,
                        indexer_types=["full", "shared", "full", "shared"],
                        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
}
# llama.cpp's DeepSeek-V3.2 conversion asserts that AutoTokenizer reports add_bos_token, which
# transformers 5.23's TokenizersBackend (the fixtures' tokenizer) does not; glm_moe_dsa's GGUF
# covers the same indexer tensors and keys
NO_GGUF = {"minimax", "deepseek_v32"}
DSA = {"deepseek_v32", "glm_moe_dsa"}


def dsa_margin(m64, ids):
    """The smallest gap, over every query with more positions than index_topk and every layer
    with an indexer, between the top-k-th and the next score of its positions, as a share of the
    query's largest |score|, in float64 (from the indexer's own inputs, captured by a hook). A
    draw where two scores at the boundary almost tie could choose differently in float32 (ours
    or transformers'), so the seed search skips it."""
    gaps = []

    def hook(mod, args, kwargs):
        h, q_resid, (cos, sin) = args[0], args[1], args[2]
        t = h.shape[1]
        q = mod.wq_b(q_resid).view(1, t, mod.n_heads, mod.head_dim)[0]
        k = mod.k_norm(mod.wk(h))[0]
        r = mod.qk_rope_head_dim
        c, s_ = cos[0, :, :r], sin[0, :, :r]
        if "glm" in type(mod).__name__.lower():
            def rot(x, cc, ss):
                cc, ss = cc[..., : r // 2], ss[..., : r // 2]
                x1, x2 = x[..., 0:r:2], x[..., 1:r:2]
                return torch.cat([x1 * cc - x2 * ss, x2 * cc + x1 * ss, x[..., r:]], dim=-1)
        else:
            def rot(x, cc, ss):
                x1, x2 = x[..., : r // 2], x[..., r // 2 : r]
                return torch.cat([x[..., :r] * cc + torch.cat([-x2, x1], -1) * ss, x[..., r:]], dim=-1)
        q = rot(q, c[:, None, :], s_[:, None, :])
        k = rot(k, c, s_)
        sc = torch.relu(torch.einsum("shd,td->sht", q, k))
        w = mod.weights_proj(h)[0]
        idx = torch.einsum("sh,sht->st", w, sc)
        for i in range(mod.index_topk, t):
            v = idx[i, : i + 1].sort(descending=True).values
            gaps.append(((v[mod.index_topk - 1] - v[mod.index_topk]) / v.abs().max()).item())

    hs = [m.register_forward_pre_hook(hook, with_kwargs=True)
          for n_, m in m64.named_modules() if n_.endswith("indexer")]
    with torch.no_grad():
        m64(torch.tensor([ids]))
    for h in hs:
        h.remove()
    return min(gaps)


def fix_minimax_cache():
    """transformers 5.23's MiniMaxCache answers get_seq_length() from layer 0, which in MiniMax
    (as in M1 and Text-01) is a lightning layer with no KV rows: it says 0 at every step, so
    decoding through the cache (f32_noise, generate) restarts the positions, and the softmax
    layers' RoPE, at 0 (the logits of position 1 are already 2% off the prefill's). The length
    is that of the layers that keep KV rows; with it, decoding token by token gives the
    prefill's logits (2e-7 of the scale, in float64: the blocked prefill's decay factors are
    float32 buffers)."""
    from transformers.models.minimax import modeling_minimax as mm

    def get_seq_length(self, layer_idx=0):
        return max((layer.get_seq_length() for layer in self.layers), default=0)
    mm.MiniMaxCache.get_seq_length = get_seq_length


def build(name, cfg):
    config = AutoConfig.for_model(**cfg)
    if "text_config" in cfg:
        from transformers import AutoModelForImageTextToText
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32, attn_implementation="eager",
                                                           experts_implementation="eager")
    else:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager",
                                                 experts_implementation="eager")
    with torch.no_grad():
        for n_, p in model.named_parameters():
            if "norm" in n_:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, MATRIX_STD if p.dim() > 1 else 0.5)
        for n_, b_ in model.named_buffers():
            if "e_score_correction_bias" in n_:  # nonzero, comparable to the sigmoid scores' spread
                b_.copy_(0.1 * torch.randn_like(b_))
    return model


def dsa_build(name, cfg, ids):
    """build(), redrawn until the indexer's choice is clear (dsa_margin over 1e-5, ten times the float32 error of the scores) at every
    query: the seed search then checks the float32 noise as for the others."""
    while True:
        model = build(name, cfg)
        import copy
        gap = dsa_margin(copy.deepcopy(model).double(), ids)
        print(f"{name}: top-k boundary gap {gap:.1e}")
        if gap > 1e-5:
            return model


def as_released(model, d):
    """Kimi K2.5's released files name the text layers language_model.model.layers.* and the
    class KimiK25ForConditionalGeneration (llama.cpp's converter knows it by that name).
    transformers 5.23 saves its text layers as language_model.model.blocks.* (its reverse of a
    vision-tower rename) and names the class Kimi_K25ForConditionalGeneration: rename both, and
    check that transformers reads the renamed file back to the same logits."""
    import json
    from safetensors.torch import load_file, save_file
    f = os.path.join(d, "model.safetensors")
    t = load_file(f)
    t = {re.sub(r"^language_model\.model\.blocks\.", "language_model.model.layers.", k): v for k, v in t.items()}
    save_file(t, f, metadata={"format": "pt"})
    c = json.load(open(os.path.join(d, "config.json")))
    c["architectures"] = ["KimiK25ForConditionalGeneration"]
    json.dump(c, open(os.path.join(d, "config.json"), "w"), indent=2)
    from transformers import AutoModelForImageTextToText
    back = AutoModelForImageTextToText.from_pretrained(d, dtype=torch.float32, attn_implementation="eager",
                                                       experts_implementation="eager")
    x = torch.tensor([list(range(3, 40))])
    with torch.no_grad():
        assert torch.equal(back(x).logits, model(x).logits), "kimi_k25: the renamed file reads back differently"


def main():
    only = sys.argv[1:]
    fix_minimax_cache()
    ids = prompt_ids()
    for name, cfg in CONFIGS.items():
        if only and name not in only:
            continue
        d = os.path.join(out_root, name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        make = (lambda: build(name, cfg)) if name not in DSA else (lambda: dsa_build(name, cfg, ids))
        model, m64, seed, noise = well_conditioned(name, make, ids)
        save_fixture(model, ids, d)
        if name == "kimi_k25":
            as_released(model, d)
        save_float64_expectations(m64, ids, d, seed, noise)
        if name in NO_GGUF:
            print(name, "ok (HF only)")
            continue
        convert(name, d)
        print(name, "ok", sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d)), "bytes")


if __name__ == "__main__":
    main()
