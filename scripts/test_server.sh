#!/usr/bin/env bash
# Integration tests of `hearth serve smollm2` with the official `openai` Python client
# (tests/server/test_openai.py, test_responses.py, test_embeddings.py) and the official
# `anthropic` client (test_anthropic.py), and the chat page at / in Chromium
# (test_chat_page.py, on the CPU run only; scripts/install_chromium.sh installs Chromium and
# ChromeDriver from apt).
# Installs openai + anthropic + jsonschema into .venv-tests (git-ignored) on first use, starts
# four servers on free ports (a plain one; one with an API key, one slot and a queue of one;
# one whose KV pool is too small for its four slots; one whose template opens <think>), runs
# the tests and stops the servers; then tests/server/test_hardening.py, which starts its own. Expects a
# release build.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-tests
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" 2>/dev/null || { rm -rf "$venv"; python3 -m pip install --user -q virtualenv && python3 -m virtualenv -q "$venv"; }
fi
"$venv/bin/python" -c "import openai, jsonschema, anthropic, selenium" 2>/dev/null ||
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "openai>=1.40" jsonschema "anthropic>=0.40" "selenium>=4.20"
if [ -z "${HEARTH_SERVE_ARGS:-}" ]; then
  bash scripts/install_chromium.sh
fi
# HEARTH_BIN: the binary (test.sh: a wrapper that runs it under Mesa 26's lavapipe)
bin="${HEARTH_BIN:-$PWD/target/release/hearth}"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
p1=$(free_port); p2=$(free_port); p3=$(free_port); p4=$(free_port)
key="test-key-$RANDOM"
log1=$(mktemp); log2=$(mktemp); log3=$(mktemp); log4=$(mktemp)
# HEARTH_SERVE_ARGS: more arguments for these servers (test.sh: --device vulkan; a quantized KV
# cache, with HEARTH_LOGITS_ARGS the same for `hearth logits`; --device vulkan for both)
read -r -a extra <<<"${HEARTH_SERVE_ARGS:-}"
"$bin" serve smollm2 --port "$p1" "${extra[@]}" >"$log1" 2>&1 & s1=$!
"$bin" serve smollm2 --port "$p2" --parallel 1 --queue 1 --api-key "$key" "${extra[@]}" >"$log2" 2>&1 & s2=$!
# a KV pool of one context (17 pages of 16) for 4 sequences: generation must preempt
"$bin" serve smollm2 --port "$p3" --parallel 4 --ctx 256 --kv-mib 1 "${extra[@]}" >"$log3" 2>&1 & s3=$!
# a template that opens <think> in the prompt: the output starts as reasoning
"$bin" serve smollm2 --port "$p4" --parallel 2 --chat-template-file tests/server/think_chatml.jinja "${extra[@]}" >"$log4" 2>&1 & s4=$!
cleanup() { kill $s1 $s2 $s3 $s4 2>/dev/null; wait $s1 $s2 $s3 $s4 2>/dev/null; rm -f "$log1" "$log2" "$log3" "$log4"; }
trap cleanup EXIT
for p in $p1 $p2 $p3 $p4; do
  for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$p/health" >/dev/null 2>&1 && break
    python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$p/health')" 2>/dev/null && break
    sleep 0.2
  done
done
status=0
HEARTH_URL="http://127.0.0.1:$p1" HEARTH_URL_LIMITED="http://127.0.0.1:$p2" HEARTH_KEY="$key" \
  HEARTH_URL_SMALL_POOL="http://127.0.0.1:$p3" \
  HEARTH_BIN="$bin" "$venv/bin/python" tests/server/test_openai.py "$@" || status=$?
# embeddings with the official openai client
HEARTH_URL="http://127.0.0.1:$p1" HEARTH_URL_LIMITED="http://127.0.0.1:$p2" HEARTH_KEY="$key" \
  "$venv/bin/python" tests/server/test_embeddings.py "$@" || status=$?
# the Anthropic Messages API with the official anthropic client
HEARTH_URL="http://127.0.0.1:$p1" HEARTH_URL_LIMITED="http://127.0.0.1:$p2" HEARTH_KEY="$key" \
  HEARTH_URL_THINK="http://127.0.0.1:$p4" \
  "$venv/bin/python" tests/server/test_anthropic.py "$@" || status=$?
# the Responses API with the official openai client
HEARTH_URL="http://127.0.0.1:$p1" HEARTH_URL_THINK="http://127.0.0.1:$p4" \
  "$venv/bin/python" tests/server/test_responses.py "$@" || status=$?
if [ -z "${HEARTH_SERVE_ARGS:-}" ]; then
  # the chat page at / in Chromium (screenshot: target/chat_page.png)
  HEARTH_URL="http://127.0.0.1:$p1" HEARTH_URL_LIMITED="http://127.0.0.1:$p2" HEARTH_KEY="$key" \
    HEARTH_URL_THINK="http://127.0.0.1:$p4" \
    "$venv/bin/python" tests/server/test_chat_page.py "$@" || status=$?
fi
if [ -n "${HEARTH_SERVE_ARGS:-}" ]; then
  # the hardening tests start servers of their own, on the CPU
  trap - EXIT
  cleanup || true
  exit $status
fi
if [ $status != 0 ]; then echo "--- server log"; tail -n 30 "$log1"; fi
trap - EXIT
cleanup || true
# issue 22's regressions start servers of their own (small limits, hostile models)
HEARTH_BIN="$bin" "$venv/bin/python" tests/server/test_hardening.py || status=$?
exit $status
