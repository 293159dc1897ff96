#!/usr/bin/env bash
# hearth and the Hugging Face hub (tests/hub/test_hub.py) against a fake hub in the test
# process (tests/hub/fake_hub.py), first checked with the official huggingface_hub client.
# Installs huggingface_hub (and gguf, which makes a Q8_0 copy of a tiny model) into
# .venv-tests (git-ignored) on first use. Expects a release build (SmolLM2 is pulled on first
# use).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-tests
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" 2>/dev/null || { rm -rf "$venv"; python3 -m pip install --user -q virtualenv && python3 -m virtualenv -q "$venv"; }
fi
"$venv/bin/python" -c "import huggingface_hub, gguf" 2>/dev/null ||
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "huggingface_hub>=0.30" gguf
HEARTH_BIN="$PWD/target/release/hearth" "$venv/bin/python" tests/hub/test_hub.py "$@"
