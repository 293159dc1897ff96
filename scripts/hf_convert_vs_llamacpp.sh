#!/usr/bin/env bash
# llama.cpp loads and runs what `hearth quantize` makes of Hugging Face directories: for each
# tiny fixture (MoE, MLA, float8; tests/fixtures/tiny), hearth's F32 file must give, under
# llama-perplexity on the same text, the perplexity llama.cpp's converter's own file
# (model.gguf) gives, and hearth's Q8_0 and Q4_K_M files must load and give a finite one.
# It also prints how many tensors of hearth's Q4_K_M file differ (type or bytes) from
# llama-quantize's Q4_K_M of the converter's file (scripts/gguf_diff.py). (qwen2_moe's two
# ffn_gate_inp_shexp tensors "differ" only in shape: same bytes, but llama-quantize writes the
# converter's {64, 1} as {64}, and hearth keeps the converter's shape.)
#
#   scripts/hf_convert_vs_llamacpp.sh [FIXTURE...]
#
# LLAMA_BIN: llama.cpp's build/bin (default .llama.cpp/build/bin). TEXT: default README.md.
# The F32 comparison is exact (the tensors are byte-identical, crates/convert/tests/hf_archs.rs);
# what this adds is llama.cpp's loader and graph accepting hearth's metadata and layouts.
set -euo pipefail
cd "$(dirname "$0")/.."
LLAMA_BIN=${LLAMA_BIN:-.llama.cpp/build/bin}
HEARTH=${HEARTH:-target/release/hearth}
TEXT=${TEXT:-README.md}
[ -x "$HEARTH" ] || cargo build --release --locked -p hearth
FIXTURES=("$@")
# (deepseek_v2, MLA without q_lora_rank, is left out: this llama.cpp refuses even its own
# converter's file of it, "key not found in model: deepseek2.attention.q_lora_rank")
[ ${#FIXTURES[@]} -gt 0 ] || FIXTURES=(qwen3_moe qwen2_moe mixtral deepseek_v3 glm4_moe glm4_moe-mtp qwen3-fp8 deepseek_v3-fp8)
W=$(mktemp -d /tmp/hfconv.XXXXXX)
trap 'rm -rf "$W"' EXIT
head -c 6000 "$TEXT" >"$W/text.txt"

ppl() { # model -> PPL. llama.cpp's logging thread sometimes loses the last lines at exit
  # (exit status 0, "Final estimate" missing): such runs are repeated, up to 10 times.
  local rc
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    rc=0
    "$LLAMA_BIN/llama-perplexity" -m "$1" -f "$W/text.txt" -c 64 -b 64 --chunks 8 -t 2 >"$W/log" 2>&1 || rc=$?
    [ $rc = 0 ] || break
    if grep -q 'Final estimate' "$W/log"; then
      grep -oE 'Final estimate: PPL = [0-9.]+' "$W/log" | grep -oE '[0-9.]+$'
      return
    fi
  done
  echo "llama-perplexity on $1: exit status $rc" >&2
  tail -5 "$W/log" >&2
  echo FAIL
}

fail=0
printf '%-16s %12s %12s %12s %12s  %s\n' fixture converter hearth-F32 hearth-Q8_0 hearth-Q4_K_M "Q4_K_M vs llama-quantize"
for f in "${FIXTURES[@]}"; do
  d=tests/fixtures/tiny/$f
  for t in F32 Q8_0 Q4_K_M; do
    "$HEARTH" quantize "$d" "$W/$f-$t.gguf" "$t" >/dev/null 2>"$W/qlog" || { cat "$W/qlog" >&2; fail=1; }
  done
  ref=$(ppl "$d/model.gguf")
  a=$(ppl "$W/$f-F32.gguf")
  b=$(ppl "$W/$f-Q8_0.gguf")
  c=$(ppl "$W/$f-Q4_K_M.gguf")
  "$LLAMA_BIN/llama-quantize" "$d/model.gguf" "$W/$f-lq.gguf" Q4_K_M 2 >/dev/null 2>&1
  diff=$(PYTHONPATH=.llama.cpp/src/gguf-py python3 scripts/gguf_diff.py "$W/$f-Q4_K_M.gguf" "$W/$f-lq.gguf" \
    | grep -oE '^tensors [0-9]+ [0-9]+ differ [0-9]+' | awk '{print $5 " of " $2 " tensors differ"}')
  printf '%-16s %12s %12s %12s %12s  %s\n' "$f" "$ref" "$a" "$b" "$c" "$diff"
  [ "$ref" = "$a" ] && [ "$a" != FAIL ] || { echo "  $f: F32 differs from the converter's" >&2; fail=1; }
  [ "$b" != FAIL ] && [ "$c" != FAIL ] || fail=1
done
[ $fail = 0 ] && echo "all loaded by llama.cpp; F32 perplexities equal the converter's" || { echo FAILED; exit 1; }
