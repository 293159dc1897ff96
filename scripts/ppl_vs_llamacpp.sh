#!/usr/bin/env bash
# hearth perplexity / imatrix against llama.cpp's llama-perplexity / llama-imatrix on the same
# file and text, each judging the other's runs through the kl-divergence-base format.
#
#   scripts/ppl_vs_llamacpp.sh [MODEL.gguf] [TEXT]
#
# MODEL: default SmolLM2-135M-Instruct Q4_1 (`hearth pull smollm2`). TEXT: default the GPL-3
# text Debian ships (/usr/share/common-licenses/GPL-3), else any English prose found offline.
# LLAMA_BIN: llama.cpp's build/bin (default /work/main/.llama.cpp/build/bin). CTX (512),
# CHUNKS (all the text holds), THREADS (2). Also runs both on an F32 copy of the model made by
# llama-quantize (exact), with f32 KV caches on llama.cpp's side: that removes llama.cpp's
# 8-bit activations and f16 cache from the comparison, leaving the two implementations.
set -euo pipefail
cd "$(dirname "$0")/.."
LLAMA_BIN=${LLAMA_BIN:-/work/main/.llama.cpp/build/bin}
CTX=${CTX:-512}
THREADS=${THREADS:-2}
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
CH=()
[ -n "${CHUNKS:-}" ] && CH=(--chunks "$CHUNKS")
W=$(mktemp -d /tmp/ppl_cmp.XXXXXX)
trap 'rm -rf "$W"' EXIT
echo "model: $MODEL"
echo "text:  $TEXT ($(wc -c <"$TEXT") bytes), ctx $CTX"

ppl_of() { grep -oE "$1 *[0-9.]+" | tail -1 | grep -oE '[0-9.]+$'; }
rel() { python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print(f'{abs(a-b)/b:.2e}')" "$1" "$2"; }

compare() { # label model [llama extra args...]
  local label=$1 m=$2; shift 2
  echo
  echo "== $label"
  "$LLAMA_BIN/llama-perplexity" -m "$m" -f "$TEXT" -c "$CTX" -b "$CTX" -t "$THREADS" "${CH[@]}" "$@" \
    --kl-divergence-base "$W/llama.kld" >"$W/llama.log" 2>&1
  local lp; lp=$(ppl_of "Final estimate: PPL =" <"$W/llama.log")
  "$HEARTH" perplexity "$m" -f "$TEXT" -c "$CTX" -t "$THREADS" "${CH[@]}" \
    --save-logits "$W/hearth.kld" >"$W/hearth.log" 2>/dev/null
  local hp; hp=$(ppl_of "PPL:" <"$W/hearth.log")
  echo "llama-perplexity PPL: $lp"
  echo "hearth perplexity PPL: $hp   (relative difference $(rel "$hp" "$lp"))"
  echo "-- hearth judged by llama.cpp (llama-perplexity --kl-divergence, hearth's base file):"
  "$LLAMA_BIN/llama-perplexity" -m "$m" -c "$CTX" -b "$CTX" -t "$THREADS" "$@" \
    --kl-divergence-base "$W/hearth.kld" --kl-divergence >"$W/judge.log" 2>&1
  grep -E "Mean PPL\(base\)|Mean +KLD|99.0% +KLD|Same top p:" "$W/judge.log" | sed 's/^[0-9.]* I //'
  echo "-- llama.cpp judged by hearth (hearth perplexity --kl-divergence, llama.cpp's base file):"
  "$HEARTH" perplexity "$m" -t "$THREADS" --kl-divergence "$W/llama.kld" 2>/dev/null |
    grep -E "Mean PPL\(base\)|Mean KLD|99.0%|Same top p"
}

compare "$(basename "$MODEL") (llama.cpp defaults: q8 activations, f16 KV cache)" "$MODEL"
"$LLAMA_BIN/llama-quantize" --allow-requantize "$MODEL" "$W/f32.gguf" F32 >/dev/null 2>&1
compare "F32 copy of it (llama-quantize, exact), llama.cpp with an f32 KV cache" "$W/f32.gguf" -ctk f32 -ctv f32

if [ -x "$LLAMA_BIN/llama-imatrix" ]; then
  echo
  echo "== imatrix on the F32 copy (llama-imatrix vs hearth imatrix)"
  "$LLAMA_BIN/llama-imatrix" -m "$W/f32.gguf" -f "$TEXT" -c "$CTX" -b "$CTX" -t "$THREADS" "${CH[@]}" \
    -ctk f32 -ctv f32 --no-ppl -o "$W/llama.imatrix.gguf" >"$W/imatrix.log" 2>&1
  "$HEARTH" imatrix "$W/f32.gguf" -f "$TEXT" -c "$CTX" -t "$THREADS" "${CH[@]}" \
    -o "$W/hearth.imatrix.gguf" 2>/dev/null
  python3 scripts/compare_imatrix.py "$W/hearth.imatrix.gguf" "$W/llama.imatrix.gguf"
  echo "-- llama-quantize takes hearth's imatrix (IQ2_XS):"
  if "$LLAMA_BIN/llama-quantize" --imatrix "$W/hearth.imatrix.gguf" "$W/f32.gguf" "$W/iq2.gguf" IQ2_XS \
      >"$W/q.log" 2>&1; then
    grep -E "loaded [0-9]+ importance matrix|imatrix" "$W/q.log" | head -3
    echo "ok: $(du -h "$W/iq2.gguf" | cut -f1)"
  else
    tail -5 "$W/q.log"
    exit 1
  fi
fi
