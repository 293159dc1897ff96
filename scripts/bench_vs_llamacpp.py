#!/usr/bin/env python3
"""Side-by-side speed: hearth against llama.cpp's llama-bench and ik_llama.cpp's (default, and
with -rtr 1), on the same GGUF files, same thread count, same run. Prints tokens/s (mean ±
sd over the repetitions) per engine and hearth's ratio to llama.cpp and to the better ik_llama
mode.

    python3 scripts/bench_vs_llamacpp.py [MODEL.gguf ...] [-t 2] [-p 512] [-n 128] [-r 5] [--rounds 3]
                                         [--no-ik] [--avx2]

Without models it measures issue 5's set: SmolLM2-135M-Instruct Q4_1 (`hearth pull smollm2`),
its Q8_0 and Q4_K_M re-quantizations (llama-quantize --allow-requantize), and the Qwen3-MoE
shaped 1.8B random model in Q4_K_M (scripts/gen_moe_bench_model.py). The engines run
alternately for --rounds rounds; the table gives the median round. llama.cpp is built from the
llama-cpp-python sdist by scripts/build_llamacpp.sh (needs cmake); ik_llama.cpp by
scripts/build_ik_llama.sh from the fetched mirror (about 40 minutes on 2 cores; skipped with a
notice when its source is missing, or with --no-ik). --avx2 compares HEARTH_NO_AVX512=1 with
llama.cpp built for AVX2 without AVX-512 (ik_llama.cpp's AVX2 build with NATIVE=0).
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
ap.add_argument("--no-ik", action="store_true", help="leave ik_llama.cpp out")
ap.add_argument("--avx2", action="store_true", help="HEARTH_NO_AVX512=1 against AVX2-only peer builds")
a = ap.parse_args()

subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=root, check=True)
hearth = os.path.join(root, "target", "release", "hearth")
bindir = subprocess.run(["bash", os.path.join(root, "scripts", "build_llamacpp.sh")], check=True,
                        capture_output=True, text=True).stdout.strip().splitlines()[-1]
bench_bin = bindir
if a.avx2:
    bench_bin = subprocess.run(["bash", os.path.join(root, "scripts", "build_llamacpp.sh"), "--avx2"], check=True,
                               capture_output=True, text=True).stdout.strip().splitlines()[-1]
ik_bin = None
if not a.no_ik:
    env = dict(os.environ, NATIVE="0" if a.avx2 else "1")
    r = subprocess.run(["bash", os.path.join(root, "scripts", "build_ik_llama.sh")], capture_output=True, text=True,
                       env=env)
    if r.returncode == 0:
        ik_bin = r.stdout.strip().splitlines()[-1]
    else:
        print(f"note: ik_llama.cpp left out: {(r.stderr.strip().splitlines() or ['build failed'])[-1]}")
hearth_env = dict(os.environ, **({"HEARTH_NO_AVX512": "1"} if a.avx2 else {}))


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


def peer(bin_dir, model, extra=()):
    out = subprocess.run([os.path.join(bin_dir, "llama-bench"), "-m", model, "-t", str(a.threads), "-p",
                          str(a.n_prompt), "-n", str(a.n_gen), "-r", str(a.reps), "-o", "json", *extra], check=True,
                         capture_output=True, text=True).stdout
    res = {}
    for row in json.loads(out):
        test = f"pp{row['n_prompt']}" if row["n_gen"] == 0 else f"tg{row['n_gen']}"
        res[test] = (row["avg_ts"], row["stddev_ts"])
    return res


def ours(model):
    out = subprocess.run([hearth, "bench", model, "-t", str(a.threads), "-p", str(a.n_prompt), "-n", str(a.n_gen),
                          "-r", str(a.reps)], check=True, capture_output=True, text=True, env=hearth_env).stdout
    res = {}
    for m in re.finditer(r"\| (pp\d+|tg\d+) \| ([\d.]+) ± ([\d.]+) \|", out):
        res[m.group(1)] = (float(m.group(2)), float(m.group(3)))
    bw = re.search(r"generation reads.*", out)
    return res, (bw.group(0) if bw else "")


def median(xs):
    xs = sorted(xs, key=lambda v: v[0])
    return xs[len(xs) // 2]


def cpu_name():
    info = open("/proc/cpuinfo").read()
    name = re.search(r"model name\s*: (.*)", info)
    fam = re.search(r"cpu family\s*: (\d+)", info)
    mod = re.search(r"\nmodel\s*: (\d+)", info)
    flags = re.search(r"flags\s*: (.*)", info)
    isa = "AVX-512 VNNI" if flags and "avx512_vnni" in flags.group(1) else "AVX2"
    return f"{name.group(1) if name else '?'} (family {fam.group(1) if fam else '?'}, model " \
           f"{mod.group(1) if mod else '?'}, {isa}), {os.cpu_count()} cores"


engines = [("llama.cpp", lambda m: peer(bench_bin, m))]
if ik_bin:
    engines += [("ik_llama", lambda m: peer(ik_bin, m)), ("ik_llama -rtr", lambda m: peer(ik_bin, m, ("-rtr", "1")))]
print(f"machine: {cpu_name()}; threads {a.threads}, {a.reps} repetitions x {a.rounds} rounds (median round)"
      + ("; HEARTH_NO_AVX512=1 against AVX2-only builds" if a.avx2 else ""))
names = [e[0] for e in engines]
print("| model | test | " + " | ".join(f"{n} t/s" for n in names) + " | hearth t/s | hearth / llama.cpp |"
      + (" hearth / best ik_llama |" if ik_bin else ""))
print("|---" * (4 + len(names) + (1 if ik_bin else 0)) + "|")
notes = []
for model in models:
    got = {n: {} for n in names + ["hearth"]}
    bw = ""
    for _ in range(a.rounds):
        for n, f in engines:
            for test, v in f(model).items():
                got[n].setdefault(test, []).append(v)
        h, bw = ours(model)
        for test, v in h.items():
            got["hearth"].setdefault(test, []).append(v)
    tests = set.intersection(*(set(got[n]) for n in names + ["hearth"]))
    for test in sorted(tests, key=lambda t: (t[:2] != "pp", t)):
        med = {n: median(got[n][test]) for n in got}
        cells = " | ".join(f"{med[n][0]:.2f} ± {med[n][1]:.2f}" for n in names)
        hm = med["hearth"][0]
        row = f"| {os.path.basename(model)} | {test} | {cells} | {hm:.2f} ± {med['hearth'][1]:.2f} | " \
              f"{hm / med['llama.cpp'][0]:.2f}x |"
        if ik_bin:
            best = max(med["ik_llama"][0], med["ik_llama -rtr"][0])
            row += f" {hm / best:.2f}x |"
        print(row, flush=True)
    notes.append(f"{os.path.basename(model)}: {bw}")
print()
print("\n".join(notes))
