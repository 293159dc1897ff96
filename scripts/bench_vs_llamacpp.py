#!/usr/bin/env python3
"""Side-by-side speed: llama.cpp's llama-bench and `hearth bench` on the same GGUF files, same
thread count, same run. Prints tokens/s (mean ± sd over the repetitions) and hearth/llama.cpp.

    python3 scripts/bench_vs_llamacpp.py [MODEL.gguf ...] [-t 2] [-p 512] [-n 128] [-r 5] [--rounds 3]

Without models it measures issue 5's set: SmolLM2-135M-Instruct Q4_1 (`hearth pull smollm2`),
its Q8_0 and Q4_K_M re-quantizations (llama-quantize --allow-requantize), and the Qwen3-MoE
shaped 1.8B random model in Q4_K_M (scripts/gen_moe_bench_model.py). The two engines run
alternately for --rounds rounds; the table gives the median round. llama.cpp is built from the
llama-cpp-python sdist by scripts/build_llamacpp.sh (needs cmake).
"""
import argparse, json, os, re, subprocess, sys

root = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
ap = argparse.ArgumentParser()
ap.add_argument("models", nargs="*")
ap.add_argument("-t", "--threads", type=int, default=2)
ap.add_argument("-p", "--n-prompt", type=int, default=512)
ap.add_argument("-n", "--n-gen", type=int, default=128)
ap.add_argument("-r", "--reps", type=int, default=5)
ap.add_argument("--rounds", type=int, default=3)
a = ap.parse_args()

subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=root, check=True)
hearth = os.path.join(root, "target", "release", "hearth")
bindir = subprocess.run(["bash", os.path.join(root, "scripts", "build_llamacpp.sh")], check=True,
                        capture_output=True, text=True).stdout.strip().splitlines()[-1]


def default_models():
    q41 = subprocess.run([hearth, "pull", "smollm2"], check=True, capture_output=True, text=True).stdout.strip()
    d = os.path.dirname(q41)
    out = [q41]
    for ty in ["Q8_0", "Q4_K_M"]:
        p = os.path.join(d, f"SmolLM2-135M-Instruct.{ty}.gguf")
        if not os.path.exists(p):
            subprocess.run([os.path.join(bindir, "llama-quantize"), "--allow-requantize", q41, p, ty], check=True,
                           capture_output=True)
        out.append(p)
    moe = subprocess.run([sys.executable, os.path.join(root, "scripts", "gen_moe_bench_model.py"), d], check=True,
                         capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return out + [moe]


models = a.models or default_models()


def llama(model):
    out = subprocess.run([os.path.join(bindir, "llama-bench"), "-m", model, "-t", str(a.threads), "-p", str(a.n_prompt),
                          "-n", str(a.n_gen), "-r", str(a.reps), "-o", "json"], check=True, capture_output=True, text=True).stdout
    res = {}
    for row in json.loads(out):
        test = f"pp{row['n_prompt']}" if row["n_gen"] == 0 else f"tg{row['n_gen']}"
        res[test] = (row["avg_ts"], row["stddev_ts"])
    return res


def ours(model):
    out = subprocess.run([hearth, "bench", model, "-t", str(a.threads), "-p", str(a.n_prompt), "-n", str(a.n_gen),
                          "-r", str(a.reps)], check=True, capture_output=True, text=True).stdout
    res = {}
    for m in re.finditer(r"\| (pp\d+|tg\d+) \| ([\d.]+) ± ([\d.]+) \|", out):
        res[m.group(1)] = (float(m.group(2)), float(m.group(3)))
    bw = re.search(r"generation reads.*", out)
    return res, (bw.group(0) if bw else "")


def median(xs):
    xs = sorted(xs, key=lambda v: v[0])
    return xs[len(xs) // 2]


print(f"threads {a.threads}, {a.reps} repetitions x {a.rounds} rounds (median round), machine: {os.cpu_count()} cores")
print("| model | test | llama.cpp t/s | hearth t/s | hearth / llama.cpp |")
print("|---|---|---|---|---|")
notes = []
for model in models:
    ls, hs = {}, {}
    bw = ""
    for _ in range(a.rounds):
        for test, v in llama(model).items():
            ls.setdefault(test, []).append(v)
        h, bw = ours(model)
        for test, v in h.items():
            hs.setdefault(test, []).append(v)
    for test in sorted(set(ls) & set(hs), key=lambda t: (t[:2] != "pp", t)):
        (lm, lsd), (hm, hsd) = median(ls[test]), median(hs[test])
        print(f"| {os.path.basename(model)} | {test} | {lm:.2f} ± {lsd:.2f} | {hm:.2f} ± {hsd:.2f} | {hm / lm:.2f}x |",
              flush=True)
    notes.append(f"{os.path.basename(model)}: {bw}")
print()
print("\n".join(notes))
