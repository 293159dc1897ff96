#!/usr/bin/env python3
"""Tiny random-weight hybrid models (Gated DeltaNet linear attention + gated full attention),
one per architecture of issue 17's Qwen family, with expected logits from HF transformers.

  - qwen3_5:     Qwen3.5/3.6 dense, saved as the real checkpoints are: the multimodal
                 Qwen3_5ForConditionalGeneration (config.json with text_config and
                 vision_config, text weights under model.language_model.*, a vision tower);
  - qwen3_5_moe: Qwen3.5/3.6 MoE (fused expert tensors, a sigmoid-gated shared expert), also
                 multimodal;
  - qwen3_next:  Qwen3-Next (interleaved in_proj_qkvz / in_proj_ba, per-expert tensors).

Each has more key heads than one per value head group (linear_num_value_heads = 2x key heads),
so the grouped-value mapping (and llama.cpp's reordering of it in GGUF) is exercised, and a
320-token input, so that transformers' chunked delta rule crosses several 64-token chunks.

Each goes to tests/fixtures/tiny/<name>/ as the HF directory, model.gguf (llama.cpp's own
converter, f32), expected.json and logits.f32, like scripts/gen_tiny_moe.py.

Run: python3 scripts/gen_tiny_hybrid.py [names]   (needs torch, transformers 5.23, safetensors;
     and scripts/build_llamacpp.sh --src-only for the converter)
"""
import copy, os, shutil, sys
import torch
from transformers import AutoConfig, AutoModelForCausalLM

sys.path.insert(0, os.path.dirname(__file__))
from gen_tiny_models import tk, VOCAB, text, save_fixture, save_expectations, tokenizer_expectations  # noqa: E402
from gen_tiny_moe import convert, out_root  # noqa: E402

N_TOKENS = 320
# Weights a little smaller than gen_tiny_moe.py's 0.2: with 0.2 these models' float32 rounding
# (transformers' own, measured against float64) reaches 3e-5 of the logit scale at some positions
# of the 320, more than the tests' tolerance; here it stays well below it.
MATRIX_STD = 0.1
# The decay rates A (g = -A * softplus(a + dt_bias)): with A up to 4 or 16 the models' float32
# rounding (transformers', decoding token by token) is 2-6e-5 of the logits; with weak decay
# it is 4-7e-6.
A_LO, A_HI = 0.05, 0.5
NORM_STD = 0.2
SEEDS = {}

text_base = dict(vocab_size=VOCAB, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                 max_position_embeddings=512, rms_norm_eps=1e-6, bos_token_id=0, eos_token_id=2,
                 linear_conv_kernel_dim=4, linear_key_head_dim=16, linear_value_head_dim=32,
                 linear_num_key_heads=2, linear_num_value_heads=4, num_hidden_layers=4,
                 layer_types=["linear_attention", "linear_attention", "full_attention", "linear_attention"],
                 tie_word_embeddings=False)
# interleaved multimodal rope over the rotated quarter of each head (text-only input: plain rope)
mrope = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
         "mrope_section": [2, 1, 1], "mrope_interleaved": True}
vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=4,
              spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=16)
CONFIGS = {
    "qwen3_5": dict(model_type="qwen3_5", tie_word_embeddings=False,
                    text_config=dict(text_base, model_type="qwen3_5_text", intermediate_size=96,
                                     rope_parameters=mrope),
                    vision_config=vision),
    "qwen3_5_moe": dict(model_type="qwen3_5_moe", tie_word_embeddings=False,
                        text_config=dict(text_base, model_type="qwen3_5_moe_text", moe_intermediate_size=32,
                                         shared_expert_intermediate_size=48, num_experts=8, num_experts_per_tok=2,
                                         rope_parameters=mrope),
                        vision_config=vision),
    "qwen3_next": dict(text_base, model_type="qwen3_next", intermediate_size=96, moe_intermediate_size=32,
                       shared_expert_intermediate_size=48, num_experts=8, num_experts_per_tok=2,
                       norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                        "partial_rotary_factor": 0.25}),
}


def build(name, cfg):
    config = AutoConfig.for_model(**cfg)
    if "text_config" in cfg:
        from transformers import AutoModelForImageTextToText
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32, attn_implementation="eager",
                                                           experts_implementation="eager")
    else:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager",
                                                 experts_implementation="eager")
    with torch.no_grad():  # larger-than-default init so that logits (and routing) are decisive
        for n_, p in model.named_parameters():
            if n_.endswith("A_log"):
                p.copy_(torch.log(torch.empty_like(p).uniform_(A_LO, A_HI)))
            elif n_.endswith("dt_bias"):
                p.copy_(0.5 * torch.randn_like(p))
            elif "norm" in n_ and not n_.endswith("linear_attn.norm.weight"):
                # Qwen3.5/Next RMSNorms scale by (1 + weight): weights around 0
                p.copy_(NORM_STD * torch.randn_like(p))
            elif "norm" in n_:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, MATRIX_STD if p.dim() > 1 else 0.5)
    return model


def f32_noise(model, ids):
    """How far transformers' float32 logits are from the same weights run in float64, as a
    share of the largest logit of the position (the tests compare decoded positions so), at
    the worst position: of the whole prompt at once (the chunked delta rule) and of decoding
    token by token (the recurrent one). The float64 model is returned too."""
    m64 = copy.deepcopy(model).double()
    x = torch.tensor([ids])
    with torch.no_grad():
        l64 = m64(x).logits[0]
        l32 = model(x).logits[0].double()
        out = model(x[:, :1], use_cache=True)
        dec = [out.logits[0, -1]]
        for i in range(1, len(ids)):
            out = model(x[:, i:i + 1], past_key_values=out.past_key_values, use_cache=True)
            dec.append(out.logits[0, -1])
        d32 = torch.stack(dec).double()
    scale = l64.abs().max(dim=1).values
    noise = max(((l - l64).abs().max(dim=1).values / scale).max().item() for l in (l32, d32))
    return noise, m64


def prompt_ids():
    """The fixtures' N_TOKENS input ids: the fixture text, repeated if it is too short."""
    ids = tk.encode(text).ids
    while len(ids) < N_TOKENS:
        ids = ids + ids
    return ids[:N_TOKENS]


def well_conditioned(name, make, ids):
    """The first model `make()` draws (seeds 1, 2, ...) whose float32 noise is under half the
    tests' tolerance, with its float64 copy, the seed and the noise.

    Random models of these tiny sizes are sometimes ill-conditioned at a few of the 320
    positions (larger convolution weights, as PyTorch's init gives, make it worse): there
    float32 rounding, transformers' own, reaches 5e-5 of the logit scale, more than the tests'
    tolerance of 2e-5, and no float32 implementation could be told right from wrong. The
    expectations come from float64."""
    for seed in range(1, 50):
        torch.manual_seed(seed)
        model = make()
        noise, m64 = f32_noise(model, ids)
        print(f"{name} seed {seed}: transformers' float32 logits differ from float64 by {noise:.1e}")
        if noise < 1e-5:
            return model, m64, seed, noise
    raise SystemExit(f"{name}: no well-conditioned seed")


def save_float64_expectations(m64, ids, d, seed, noise):
    """expected.json and logits.f32 of the HF directory d, from the float64 model."""
    from transformers import PreTrainedTokenizerFast
    fast = PreTrainedTokenizerFast.from_pretrained(d)
    save_expectations(m64, ids, d, reference_dtype="float64", seed=seed, float32_noise=noise,
                      **tokenizer_expectations(fast))


def main():
    only = sys.argv[1:]
    ids = prompt_ids()
    for name, cfg in CONFIGS.items():
        if only and name not in only:
            continue
        d = os.path.join(out_root, name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        model, m64, seed, noise = well_conditioned(name, lambda: build(name, cfg), ids)
        save_fixture(model, ids, d)
        save_float64_expectations(m64, ids, d, seed, noise)
        # these fixtures have no multi-token-prediction layers (transformers builds none)
        convert(name, d, "--no-mtp")
        print(name, "ok", sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d)), "bytes")


if __name__ == "__main__":
    main()
