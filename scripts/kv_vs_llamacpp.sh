#!/usr/bin/env bash
# KV-cache types against llama.cpp, each judged against its own unquantized cache on the same
# model and text (issue 18's bar): hearth's KLD with a cache of type T against its f32-cache
# run, next to llama.cpp's KLD with T against its f16-cache run (llama-perplexity
# --kl-divergence, flash attention on, as its quantized V cache needs). tq3 is hearth's only:
# its number stands alone. Then decode speed at depth 4,096 with each hearth type against f32,
# alternating rounds.
#
#   scripts/kv_vs_llamacpp.sh [MODEL.gguf] [TEXT]
#
# MODEL: default SmolLM2-135M-Instruct Q4_1. TEXT: default Debian's GPL-3 text. LLAMA_BIN:
# llama.cpp's build/bin (scripts/build_llamacpp.sh). CTX (512), THREADS (2), ROUNDS (3).
set -euo pipefail
cd "$(dirname "$0")/.."
LLAMA_BIN=${LLAMA_BIN:-$(bash scripts/build_llamacpp.sh)}
CTX=${CTX:-512}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
HEARTH=${HEARTH:-target/release/hearth}
[ -x "$HEARTH" ] || cargo build --release --locked -p hearth
MODEL=${1:-$("$HEARTH" pull smollm2)}
TEXT=${2:-}
if [ -z "$TEXT" ]; then
  for t in /usr/share/common-licenses/GPL-3 /usr/share/common-licenses/GPL-2 \
           /usr/share/common-licenses/Apache-2.0; do
    [ -f "$t" ] && TEXT=$t && break
  done
fi
[ -n "$TEXT" ] || { echo "no text found: give one as the second argument" >&2; exit 1; }
W=$(mktemp -d /tmp/kv_cmp.XXXXXX)
trap 'rm -rf "$W"' EXIT
echo "model: $MODEL"
echo "text:  $TEXT, ctx $CTX, $THREADS threads; CPU: $(lscpu | sed -n 's/^Model name: *//p')"
kld() { grep -E "Mean +KLD" | tail -1 | grep -oE '[0-9]+\.[0-9]+(e-?[0-9]+)?' | head -1; }

"$HEARTH" perplexity "$MODEL" -f "$TEXT" -c "$CTX" -t "$THREADS" --save-logits "$W/h.kld" >/dev/null 2>&1
"$LLAMA_BIN/llama-perplexity" -m "$MODEL" -f "$TEXT" -c "$CTX" -b "$CTX" -t "$THREADS" -fa on \
  --kl-divergence-base "$W/l.kld" >/dev/null 2>&1
echo
echo "| cache type | hearth bytes/token | hearth KLD vs its f32 cache | llama.cpp KLD vs its f16 cache |"
echo "|---|---|---|---|"
for t in f16 q8_0 q5_0 q4_0 iq4_nl tq3; do
  hk=$("$HEARTH" perplexity "$MODEL" -t "$THREADS" --ctk "$t" --ctv "$t" --kl-divergence "$W/h.kld" 2>/dev/null | kld)
  bytes=$("$HEARTH" inspect "$MODEL" --ctk "$t" --ctv "$t" | sed -n 's/^KV cache: *\([0-9]*\) bytes\/token as.*/\1/p')
  lk="(no such type)"
  if [ "$t" != tq3 ]; then
    lk=$("$LLAMA_BIN/llama-perplexity" -m "$MODEL" -t "$THREADS" -b "$CTX" -fa on -ctk "$t" -ctv "$t" \
      --kl-divergence-base "$W/l.kld" --kl-divergence 2>&1 | kld || echo "?")
  fi
  echo "| $t | $bytes | $hk | $lk |"
done
echo
echo "decode at depth 4096 (hearth bench -d 4096 -p 0 -n 64), $ROUNDS alternating rounds, t/s:"
for r in $(seq 1 "$ROUNDS"); do
  for t in f32 q8_0 q4_0 tq3; do
    s=$("$HEARTH" bench "$MODEL" -t "$THREADS" -d 4096 -p 0 -n 64 -r 1 --ctk "$t" --ctv "$t" 2>/dev/null |
      grep -E "\| tg64" | awk -F'|' '{print $5}' | awk '{print $1}')
    echo "round $r $t $s"
  done
done | tee "$W/speed.txt"
python3 - "$W/speed.txt" <<'PY'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1]) if l.startswith("round")]
by = {}
for _, r, t, s in rows:
    by.setdefault(r, {})[t] = float(s)
for t in ["q8_0", "q4_0", "tq3"]:
    ratios = [v[t] / v["f32"] for v in by.values() if t in v and "f32" in v]
    print(f"{t} / f32 decode speed at depth 4096: median of {len(ratios)} rounds {statistics.median(ratios):.2f}")
PY
