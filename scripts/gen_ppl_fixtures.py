#!/usr/bin/env python3
"""Expected values for `hearth perplexity` and `hearth imatrix` on the tiny fixtures, from
HF transformers in float64 (and, when LLAMA_BIN names llama.cpp's build/bin, llama.cpp's own
files for the interoperability tests).

For tests/fixtures/tiny/{llama,qwen3_moe} and the text tests/fixtures/smollm2/text.txt, in
windows of N_CTX tokens as llama-perplexity cuts them:
- ppl: exp(mean NLL) over the second half of each window, each window from scratch;
  ppl_bos: the same with BOS (id 0) put before the text and as the first token of each window
  (what llama.cpp does for a model that adds BOS);
- imatrix: per weight matrix (GGUF names), the sum over all tokens of the windows of the
  squared inputs per input column, and the count of tokens; experts per expert, counting only
  the tokens routed to it (forward hooks on every nn.Linear and on the fused experts).

With LLAMA_BIN: llama-perplexity --kl-divergence-base (llama.kld) and its printed PPL,
llama-imatrix in GGUF (llama.imatrix.gguf, qwen3_moe.imatrix.gguf) and .dat
(llama.imatrix.dat), all with f32 KV caches.

Writes tests/fixtures/ppl/. Run: python3 scripts/gen_ppl_fixtures.py
"""
import json, os, re, subprocess, sys
import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

N_CTX = 64
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
text_path = os.path.join(root, "tests", "fixtures", "smollm2", "text.txt")
out_dir = os.path.join(root, "tests", "fixtures", "ppl")
os.makedirs(out_dir, exist_ok=True)
text = open(text_path).read()

HF_LIN = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_name(mod_name):
    m = re.match(r"model\.layers\.(\d+)\.(.+)$", mod_name)
    if not m or m.group(2) not in HF_LIN:
        return None
    return f"blk.{m.group(1)}.{HF_LIN[m.group(2)]}.weight"


def run(fixture):
    d = os.path.join(root, "tests", "fixtures", "tiny", fixture)
    tok = AutoTokenizer.from_pretrained(d)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float64, experts_implementation="eager")
    model.eval()
    stats = {}

    def add(name, x, n_exp=None, e=None):
        x = x.reshape(-1, x.shape[-1]).double()
        s = (x * x).sum(0).numpy()
        if n_exp is None:
            v = stats.setdefault(name, [np.zeros(x.shape[-1]), np.zeros(1)])
            v[0] += s
            v[1][0] += x.shape[0]
        else:
            v = stats.setdefault(name, [np.zeros((n_exp, x.shape[-1])), np.zeros(n_exp)])
            v[0][e] += s
            v[1][e] += x.shape[0]

    hooks = []
    for name, mod in model.named_modules():
        g = gguf_name(name)
        if g is not None and isinstance(mod, torch.nn.Linear):
            hooks.append(mod.register_forward_hook(lambda m, i, o, g=g: add(g, i[0])))
        if name.endswith("mlp.experts"):
            layer = int(name.split(".")[2])

            def moe_hook(m, inp, out, layer=layer):
                h, idx = inp[0], inp[1]
                ne = m.num_experts
                for e in range(ne):
                    tok_rows = (idx == e).any(-1).nonzero()[:, 0]
                    if len(tok_rows) == 0:
                        stats.setdefault(f"blk.{layer}.ffn_gate_exps.weight",
                                         [np.zeros((ne, h.shape[-1])), np.zeros(ne)])
                        continue
                    x = h[tok_rows]
                    gate, up = torch.nn.functional.linear(x, m.gate_up_proj[e]).chunk(2, dim=-1)
                    a = m.act_fn(gate) * up
                    add(f"blk.{layer}.ffn_gate_exps.weight", x, ne, e)
                    add(f"blk.{layer}.ffn_up_exps.weight", x, ne, e)
                    add(f"blk.{layer}.ffn_down_exps.weight", a, ne, e)

            hooks.append(mod.register_forward_hook(moe_hook))

    def ppl(toks):
        first = N_CTX // 2
        nll = []
        for c in range(len(toks) // N_CTX):
            w = list(toks[c * N_CTX:(c + 1) * N_CTX])
            if toks is not ids:
                w[0] = 0
            with torch.no_grad():
                lp = torch.log_softmax(model(torch.tensor([w])).logits[0].double(), -1)
            nll += [-lp[p, toks[c * N_CTX + p + 1]].item() for p in range(first, N_CTX - 1)]
        return float(np.exp(np.mean(nll))), len(nll)

    p, count = ppl(ids)
    imatrix = {k: {"sums": v[0].reshape(-1).tolist(), "counts": v[1].tolist()}
               for k, v in sorted(stats.items())}
    for h in hooks:
        h.remove()
    p_bos, _ = ppl([0] + ids)
    return {"n_ctx": N_CTX, "tokens": len(ids), "ppl": p, "count": count, "ppl_bos": p_bos,
            "imatrix": imatrix}


for fx in ["llama", "qwen3_moe"]:
    exp = run(fx)
    with open(os.path.join(out_dir, f"{fx}.json"), "w") as f:
        json.dump(exp, f)
    print(fx, exp["ppl"], exp["ppl_bos"], len(exp["imatrix"]), "entries")

llama = os.environ.get("LLAMA_BIN")
if llama:
    common = ["-f", text_path, "-c", str(N_CTX), "-b", str(N_CTX), "-t", "1", "-ctk", "f32",
              "-ctv", "f32"]
    m = os.path.join(root, "tests", "fixtures", "tiny", "llama", "model.gguf")
    r = subprocess.run([os.path.join(llama, "llama-perplexity"), "-m", m, *common,
                        "--kl-divergence-base", os.path.join(out_dir, "llama.kld"), "--chunks", "4"],
                       capture_output=True, text=True, check=True)
    got = re.search(r"Final estimate: PPL = ([0-9.]+)", r.stdout + r.stderr).group(1)
    with open(os.path.join(out_dir, "llama.kld.json"), "w") as f:
        json.dump({"llama_cpp_ppl": float(got)}, f)
    print("llama-perplexity:", got)
    for fx, out, extra in [("llama", "llama.imatrix.gguf", []),
                           ("llama", "llama.imatrix.dat", ["--output-format", "dat"]),
                           ("qwen3_moe", "qwen3_moe.imatrix.gguf", [])]:
        m = os.path.join(root, "tests", "fixtures", "tiny", fx, "model.gguf")
        subprocess.run([os.path.join(llama, "llama-imatrix"), "-m", m, *common, "--no-ppl",
                        "-o", os.path.join(out_dir, out), *extra],
                       capture_output=True, text=True, check=True)
        print("llama-imatrix:", out)
