#!/usr/bin/env bash
# Prepare what scripts/gpu_check.sh needs on the device machine, which has no Rust, no
# registry and no Vulkan loader: .gpu/ (a stripped release hearth, llama.cpp's converter with
# gguf-py, and a portable llama-quantize) and .gl/ (the Vulkan loader's .deb), both ignored by
# git through .git/info/exclude. See scripts/gpu_check.sh for the call.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo /.gpu/ >>.git/info/exclude
grep -qx '/.gl/' .git/info/exclude 2>/dev/null || echo /.gl/ >>.git/info/exclude
rm -rf .gpu && mkdir -p .gpu/llama .gl /tmp/amd64/partial
cargo build --release --locked --bin hearth
cp target/release/hearth .gpu/hearth && strip .gpu/hearth
src=$(bash scripts/build_llamacpp.sh --src-only)
cp -r "$src/convert_hf_to_gguf.py" "$src/gguf-py" .gpu/llama/
[ -d "$src/conversion" ] && cp -r "$src/conversion" .gpu/llama/
# llama-quantize for any x86-64 (not -march=native: the device's CPU is not this one)
cmake -S "$src" -B .gpu-build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF >/dev/null
cmake --build .gpu-build -j"$(nproc)" --target llama-quantize >/dev/null
cp .gpu-build/bin/llama-quantize .gpu/ && strip .gpu/llama-quantize
o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
apt-get $o update -qq >/dev/null
(cd .gl && apt-get $o download libvulkan1 >/dev/null)
du -sh .gpu .gl
