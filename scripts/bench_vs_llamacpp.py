#!/usr/bin/env python3
"""Side-by-side speed: llama.cpp's llama-bench and `hearth bench` on the same GGUF files, same
thread count, same run. Prints tokens/s (mean ± sd over the repetitions) and hearth/llama.cpp.

    python3 scripts/bench_vs_llamacpp.py [MODEL.gguf ...] [-t 2] [-p 512] [-n 128] [-r 5]

Without models it uses smollm2 (fetched by `hearth pull smollm2`). llama.cpp is built from the
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
a = ap.parse_args()

subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=root, check=True)
hearth = os.path.join(root, "target", "release", "hearth")
bindir = subprocess.run(["bash", os.path.join(root, "scripts", "build_llamacpp.sh")], check=True,
                        capture_output=True, text=True).stdout.strip().splitlines()[-1]
models = a.models or [subprocess.run([hearth, "pull", "smollm2"], check=True, capture_output=True, text=True).stdout.strip()]


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


print(f"threads {a.threads}, {a.reps} repetitions, machine: {os.cpu_count()} cores")
print("| model | test | llama.cpp t/s | hearth t/s | hearth / llama.cpp |")
print("|---|---|---|---|---|")
notes = []
for model in models:
    l = llama(model)
    h, bw = ours(model)
    for test in sorted(set(l) & set(h)):
        (lm, ls), (hm, hs) = l[test], h[test]
        print(f"| {os.path.basename(model)} | {test} | {lm:.2f} ± {ls:.2f} | {hm:.2f} ± {hs:.2f} | {hm / lm:.2f}x |")
    notes.append(f"{os.path.basename(model)}: {bw}")
print()
print("\n".join(notes))
