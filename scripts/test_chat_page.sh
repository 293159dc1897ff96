#!/usr/bin/env bash
# The chat page at / alone, in Chromium (tests/server/test_chat_page.py; scripts/test_server.sh
# runs it too, with the other server tests). Installs Chromium + ChromeDriver (apt) and selenium
# (into .venv-tests) on first use, starts the three servers the test needs on free ports, runs
# it and stops them. Expects a release build. Arguments: test names to run (default: all).
# The screenshot goes to $HEARTH_SCREENSHOT (default target/chat_page.png).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-tests
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" 2>/dev/null || { rm -rf "$venv"; python3 -m pip install --user -q virtualenv && python3 -m virtualenv -q "$venv"; }
fi
"$venv/bin/python" -c "import selenium" 2>/dev/null ||
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "selenium>=4.20"
bash scripts/install_chromium.sh
bin="$PWD/target/release/hearth"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
p1=$(free_port); p2=$(free_port); p3=$(free_port)
key="test-key-$RANDOM"
log=$(mktemp)
"$bin" serve smollm2 --port "$p1" >>"$log" 2>&1 & s1=$!
"$bin" serve smollm2 --port "$p2" --parallel 1 --queue 1 --api-key "$key" >>"$log" 2>&1 & s2=$!
"$bin" serve smollm2 --port "$p3" --parallel 2 --chat-template-file tests/server/think_chatml.jinja >>"$log" 2>&1 & s3=$!
cleanup() { kill $s1 $s2 $s3 2>/dev/null; wait $s1 $s2 $s3 2>/dev/null; rm -f "$log"; }
trap cleanup EXIT
for p in $p1 $p2 $p3; do
  for _ in $(seq 1 300); do
    python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$p/health')" 2>/dev/null && break
    sleep 0.2
  done
done
status=0
HEARTH_URL="http://127.0.0.1:$p1" HEARTH_URL_LIMITED="http://127.0.0.1:$p2" HEARTH_KEY="$key" \
  HEARTH_URL_THINK="http://127.0.0.1:$p3" \
  "$venv/bin/python" tests/server/test_chat_page.py "$@" || status=$?
if [ $status != 0 ]; then echo "--- server logs"; tail -n 30 "$log"; fi
exit $status
