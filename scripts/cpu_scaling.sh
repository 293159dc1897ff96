#!/usr/bin/env bash
# Issue 23's CPU scaling check, on the device machine's host CPU (16 Xeon cores) in one call
# of under 6 minutes: builds the Qwen3-MoE-shaped 1.8B bench model there (transformers,
# llama.cpp's converter, llama-quantize; scripts/gen_moe_bench_model.py), then runs hearth,
# llama.cpp and ik_llama.cpp (default and -rtr 1) at 4, 8 and 16 threads, alternating the
# engines, pp512 and tg128, 3 repetitions each, and prints one table.
# Here, first: bash scripts/cpu_scaling_pack.sh  (fills .gpu/ and .cpus/)
# Then: carry [".gpu", ".cpus"], command `bash scripts/cpu_scaling.sh`, timeout_s 420.
# MODEL=FILE skips building the model; THREADS="4 8 16" sets the thread counts.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/cpu-out}
mkdir -p "$out"
exec > >(tee "$out/cpu_scaling.log") 2>&1
t0=$(date +%s)
step() { echo; echo "== $1 ($(( $(date +%s) - t0 )) s)"; }
bin=/tmp/cpus && mkdir -p $bin
for f in .cpus/*.xz; do xz -dc "$f" > "$bin/$(basename "$f" .xz)"; done
chmod +x $bin/* .gpu/hearth .gpu/llama-quantize
lscpu | grep -E "Model name|^CPU\(s\)|Thread|Core|Socket|NUMA node\(s\)|L3"
m=${MODEL:-}
if [ -z "$m" ]; then
  step "building the MoE bench model"
  models=/tmp/hearth-models
  PYTHONPATH=.gpu/llama/gguf-py python3 scripts/gen_moe_bench_model.py "$models" .gpu/llama .gpu/llama-quantize
  m=$models/qwen3moe-1.8b-random.Q4_K_M.gguf
fi
[ -f "$m" ] || { echo "no model"; exit 1; }
cat "$m" > /dev/null  # into the page cache for every engine alike
step "benchmarks"
peer() {  # peer NAME BIN THREADS [ARGS]: "NAME THREADS pp t/s tg t/s" from llama-bench's JSON
  local name=$1 b=$2 t=$3; shift 3
  "$b" -m "$m" -t "$t" -p 512 -n 128 -r 3 -o json "$@" 2>/dev/null | python3 -c '
import json, sys
try:
    r = {("pp" if x["n_gen"] == 0 else "tg"): "%.1f" % x["avg_ts"] for x in json.load(sys.stdin)}
except ValueError:
    r = {}  # the run failed: its cells stay "-"
print(sys.argv[1], sys.argv[2], r.get("pp", "-"), r.get("tg", "-"))' "$name" "$t"
}
ours() {
  .gpu/hearth bench "$m" -t "$1" -p 512 -n 128 -r 3 2>/dev/null | awk -v t="$1" '
    /\| pp512 / {pp=$(NF-3)} /\| tg128 / {tg=$(NF-3)} END {print "hearth", t, pp, tg}'
}
res=$out/results.txt; : > "$res"
for t in ${THREADS:-4 8 16}; do
  ours $t | tee -a "$res"
  peer llama.cpp $bin/llama-bench $t | tee -a "$res"
  peer ik_llama $bin/ik-llama-bench $t | tee -a "$res"
  peer "ik_llama-rtr" $bin/ik-llama-bench $t -rtr 1 | tee -a "$res"
  echo "  ($(( $(date +%s) - t0 )) s)"
done
step "table (t/s; MoE 1.8B Q4_K_M)"
python3 - "$res" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
eng = ["llama.cpp", "ik_llama", "ik_llama-rtr", "hearth"]
print("| threads | " + " | ".join(f"pp512 {e}" for e in eng) + " | " + " | ".join(f"tg128 {e}" for e in eng) + " |")
print("|---" * (1 + 2 * len(eng)) + "|")
for t in sorted({r[1] for r in rows}, key=int):
    d = {r[0]: r for r in rows if r[1] == t}
    pp = [d[e][2] if e in d else "-" for e in eng]
    tg = [d[e][3] if e in d else "-" for e in eng]
    print(f"| {t} | " + " | ".join(pp) + " | " + " | ".join(tg) + " |")
PY
step "hearth's parallel steps at $(nproc) threads (HEARTH_PROFILE)"
HEARTH_PROFILE=1 .gpu/hearth bench "$m" -t "$(nproc)" -p 0 -n 64 -r 1 2>&1 | tail -16
step "done"
