#!/usr/bin/env bash
# Build llama.cpp's tools (llama-bench, llama-quantize, llama-perplexity, llama-server) from the
# source vendored in the PyPI sdist of llama-cpp-python, into .llama.cpp/ (git-ignored).
# Needs cmake (apt-get install cmake). Prints the bin directory. With --src-only it only unpacks
# the source (for convert_hf_to_gguf.py) and prints its directory; with --avx2 it builds
# llama-bench for AVX2 without AVX-512 into .llama.cpp/build-avx2.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD/.llama.cpp"
bin="$root/build/bin"
case "${1:-}" in --src-only) mode=src ;; --avx2) mode=avx2 ;; *) mode=tools ;; esac
if [ $mode = tools ] && [ -x "$bin/llama-bench" ] && [ -x "$bin/llama-quantize" ] && [ -x "$bin/llama-server" ]; then echo "$bin"; exit 0; fi
mkdir -p "$root"
if [ ! -d "$root/src" ]; then
  pip download --no-deps --no-binary llama-cpp-python llama-cpp-python -d "$root/dl" >&2
  tar -xzf "$root"/dl/llama_cpp_python-*.tar.gz -C "$root"
  mv "$root"/llama_cpp_python-*/vendor/llama.cpp "$root/src"
fi
if [ $mode = src ]; then echo "$root/src"; exit 0; fi
command -v cmake >/dev/null || { echo "cmake is needed: apt-get install -y cmake" >&2; exit 1; }
if [ $mode = avx2 ]; then
  # llama-bench for AVX2 CPUs without AVX-512 (Intel desktops, Zen 2/3): issue 23's comparison
  # against HEARTH_NO_AVX512=1
  b="$root/build-avx2"
  if [ ! -x "$b/bin/llama-bench" ]; then
    cmake -S "$root/src" -B "$b" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=OFF \
      -DGGML_FMA=ON -DGGML_F16C=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
      -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF >&2
    cmake --build "$b" -j"$(nproc)" --target llama-bench >&2
  fi
  echo "$b/bin"; exit 0
fi
cmake -S "$root/src" -B "$root/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF >&2
cmake --build "$root/build" -j"$(nproc)" --target llama-bench llama-quantize llama-perplexity llama-server >&2
echo "$bin"
