#!/usr/bin/env bash
# Quantize SmolLM2-135M-Instruct (an F16 made from the Q4_1 file `hearth pull smollm2` fetches)
# with hearth and with llama-quantize, then judge both with llama-perplexity --kl-divergence
# against the F16's logits. Prints: type, size ratio hearth/llama, mean KLD hearth, llama, ratio.
#
#   scripts/quant_vs_llamacpp.sh            # the default types
#   TYPES="Q8_0 Q4_K_M" scripts/quant_vs_llamacpp.sh
#   TYPES= IQTYPES="IQ2_XS" IMATRIX=im.gguf scripts/quant_vs_llamacpp.sh   # i-quants only
#
# IQTYPES are llama-quantize's file types (mixes): IQ3_S/IQ3_XS/IQ3_M give IQ3_S tensors,
# IQ2_M IQ2_S tensors (the IQ2_S mix is IQ2_XS tensors), IQ1_S/IQ1_M their own.
#
# Env: LLAMA_BIN (llama.cpp's build/bin), HEARTH (the hearth binary), WORK (scratch directory),
# IQTYPES (types quantized with an importance matrix), IMATRIX (its file; default a synthetic
# one), TEXT (an English text file), CHUNKS (512-token chunks to evaluate), THREADS.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
LLAMA_BIN=${LLAMA_BIN:-/work/main/.llama.cpp/build/bin}
HEARTH=${HEARTH:-$here/target/release/hearth}
WORK=${WORK:-/tmp/q_cmp}
CHUNKS=${CHUNKS:-8}
THREADS=${THREADS:-2}
TYPES=${TYPES-"Q8_0 Q6_K Q4_K_M Q3_K_M Q2_K IQ4_XS"}
IQTYPES=${IQTYPES-"IQ3_M IQ3_S IQ3_XS IQ3_XXS IQ2_M IQ2_S IQ2_XS IQ2_XXS IQ1_M IQ1_S"}
mkdir -p "$WORK"

# An English text that is on every Debian/Ubuntu system; else the first long license text
# found in the Python installation.
if [ -z "${TEXT:-}" ]; then
  for f in /usr/share/common-licenses/GPL-3 /usr/share/common-licenses/Apache-2.0; do
    [ -f "$f" ] && TEXT=$f && break
  done
fi
if [ -z "${TEXT:-}" ]; then
  TEXT=$(python3 -c 'import sys,os; print(os.path.join(os.path.dirname(os.__file__), "LICENSE.txt"))')
fi
[ -f "$TEXT" ] || { echo "no test text found; set TEXT=" >&2; exit 1; }
echo "text: $TEXT ($(wc -c <"$TEXT") bytes), $CHUNKS chunks of 512 tokens"

q41=$("$HEARTH" pull smollm2 | tail -1)
f16=$WORK/f16.gguf
[ -f "$f16" ] || "$LLAMA_BIN/llama-quantize" --allow-requantize "$q41" "$f16" F16 >"$WORK/f16.log" 2>&1
base=$WORK/f16.kld
[ -f "$base" ] || "$LLAMA_BIN/llama-perplexity" -m "$f16" -f "$TEXT" -c 512 --chunks "$CHUNKS" -t "$THREADS" \
  --kl-divergence-base "$base" >"$WORK/base.log" 2>&1

kld() { # model -> mean KLD, or FAIL when llama.cpp cannot load/run it
  local log=$WORK/$(basename "$1" .gguf).ppl.log
  if "$LLAMA_BIN/llama-perplexity" -m "$1" -t "$THREADS" --kl-divergence-base "$base" --kl-divergence >"$log" 2>&1; then
    awk '/^Mean +KLD:/ {print $3; exit}' "$log"
  else
    echo FAIL
  fi
}

same() { # how many tensors of hearth's file are byte-identical to llama's (gguf-py reads both)
  python3 - "$1" "$2" <<'PY' 2>/dev/null || echo "?"
import sys, numpy as np
from gguf import GGUFReader
a, b = GGUFReader(sys.argv[1]), GGUFReader(sys.argv[2])
tb = {t.name: t for t in b.tensors}
n = sum(1 for t in a.tensors if t.name in tb and t.tensor_type == tb[t.name].tensor_type
        and np.array_equal(np.asarray(t.data).view(np.uint8), np.asarray(tb[t.name].data).view(np.uint8)))
print(f"{n}/{len(a.tensors)}")
PY
}

row() { # label hearth_file llama_file -> one table row
  local t=$1 h=$2 l=$3 sh sl kh kl id
  sh=$(stat -c %s "$h"); sl=$(stat -c %s "$l")
  kh=$(kld "$h"); kl=$(kld "$l")
  id=$(same "$h" "$l")
  awk -v t="$t" -v sh="$sh" -v sl="$sl" -v kh="$kh" -v kl="$kl" -v id="$id" 'BEGIN {
    r = (kh == "FAIL" || kl == "FAIL" || kl == 0) ? "n/a" : sprintf("%.3f", kh / kl);
    printf "%-10s %10.4f %12s %12s %8s %12.2f %12.2f %10s\n", t, sh / sl, kh, kl, r, sh / 1048576, sl / 1048576, id }'
}

printf '%-10s %10s %12s %12s %8s %12s %12s %10s\n' type size_ratio kld_hearth kld_llama ratio hearth_MiB llama_MiB identical
for t in $TYPES; do
  l=$WORK/llama_$t.gguf
  h=$WORK/hearth_$t.gguf
  [ -f "$l" ] || "$LLAMA_BIN/llama-quantize" "$f16" "$l" "$t" "$THREADS" >"$WORK/llama_$t.log" 2>&1
  "$HEARTH" quantize "$f16" "$h" "$t" -t "$THREADS" >"$WORK/hearth_$t.log" 2>&1
  row "$t" "$h" "$l"
done
# The i-quants below 4 bits need an importance matrix: IMATRIX when given, else a synthetic
# one (scripts/synthetic_imatrix.py). Both tools get the same file; rows named im_TYPE.
if [ -n "$IQTYPES" ]; then
  im=${IMATRIX:-$WORK/synthetic_imatrix.gguf}
  [ -f "$im" ] || python3 "$here/scripts/synthetic_imatrix.py" "$f16" "$im" "$WORK/synthetic_imatrix.dat"
  echo "imatrix: $im"
  for t in $IQTYPES; do
    l=$WORK/llama_im_$t.gguf
    h=$WORK/hearth_im_$t.gguf
    [ -f "$l" ] || "$LLAMA_BIN/llama-quantize" --imatrix "$im" "$f16" "$l" "$t" "$THREADS" >"$WORK/llama_im_$t.log" 2>&1
    "$HEARTH" quantize --imatrix "$im" "$f16" "$h" "$t" -t "$THREADS" >"$WORK/hearth_im_$t.log" 2>&1
    row "im_$t" "$h" "$l"
  done
fi
