#!/usr/bin/env python3
"""hearth fit's predicted memory against the peak RSS of a real run with the context nearly
full, with the CPU's packed weight copies (the default) and without (HEARTH_REPACK=0).

Run: python3 scripts/fit_vs_rss.py MODEL [--ctx 2048] [--gen 64] [--text FILE]
     (MODEL: a .gguf, an HF directory or an alias; the prompt is the longest run of the text's
     words that leaves --gen tokens of the context free). Needs a release build.
"""
import argparse, json, os, re, resource, subprocess, sys

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
BIN = os.environ.get("HEARTH_BIN", os.path.join(root, "target", "release", "hearth"))


def hearth(*args, **env):
    r = subprocess.run([BIN, *args], capture_output=True, text=True, env={**os.environ, **env})
    if r.returncode:
        sys.exit(f"hearth {args[0]} failed: {r.stderr[-2000:]}")
    return r.stdout


def peak_rss_mib(args, **env):
    code = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True); "
            "assert r.returncode == 0, r.stderr; print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    r = subprocess.run([sys.executable, "-c", code, BIN, *args], capture_output=True, text=True,
                       env={**os.environ, **env})
    if r.returncode:
        sys.exit(r.stderr[-2000:])
    return int(r.stdout) / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--text", default="/usr/share/common-licenses/GPL-3")
    a = ap.parse_args()
    words = open(a.text).read().split(" ")
    lo, hi, want = 0, len(words), a.ctx - a.gen
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(json.loads(hearth("tokenize", a.model, " ".join(words[:mid])))) <= want:
            lo = mid
        else:
            hi = mid - 1
    prompt = " ".join(words[:lo])
    worst = 0.0
    for repack in ("1", "0"):
        out = hearth("fit", a.model, "--ctx", str(a.ctx), HEARTH_REPACK=repack)
        predicted = float(re.search(r"= ([\d.]+) MiB", out).group(1))
        rss = peak_rss_mib(["run", a.model, "--ctx", str(a.ctx), "-n", str(a.gen), "--temp", "0", "--raw",
                            prompt], HEARTH_REPACK=repack)
        worst = max(worst, abs(rss / predicted - 1))
        print(f"{os.path.basename(a.model)} --ctx {a.ctx} HEARTH_REPACK={repack}: predicted {predicted:.1f} MiB, "
              f"peak RSS {rss:.1f} MiB, ratio {rss / predicted:.3f}")
    print(f"worst relative difference: {worst:.3f} (without packing, a run touches only the file pages it reads:\n"
          "experts never routed to stay on disk, so there the prediction is an upper bound)")


if __name__ == "__main__":
    main()
