#!/usr/bin/env bash
# Build ik_llama.cpp's llama-bench (issue 23's second peer) into .ik_llama/ (git-ignored).
# Source: a git directory of github.com/ikawrakow/ik_llama.cpp, given as $IK_GIT (default: the
# tool library's fetched mirror, /work/.mirror/ikawrakow+ik_llama.cpp/repo). Its tree is checked
# out without examples/server/public*, whose large files the mirror does not store.
# The build takes about 40 minutes on 2 cores. Prints the bin directory.
# NATIVE=0 builds for AVX2 without AVX-512 (the HEARTH_NO_AVX512 comparison), into .ik_llama/build-avx2.
# With --src-only it only checks the source out and prints its directory.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD/.ik_llama"
git_dir="${IK_GIT:-/work/.mirror/ikawrakow+ik_llama.cpp/repo}"
native="${NATIVE:-1}"
build="$root/build"; flags=(-DGGML_NATIVE=ON)
if [ "$native" = 0 ]; then build="$root/build-avx2"; flags=(-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=OFF -DGGML_FMA=ON -DGGML_F16C=ON); fi
bin="$build/bin"
src_only=0; [ "${1:-}" = "--src-only" ] && src_only=1
if [ $src_only = 0 ] && [ -x "$bin/llama-bench" ]; then echo "$bin"; exit 0; fi
[ -d "$git_dir" ] || { echo "ik_llama.cpp's source is not at $git_dir (fetch github:ikawrakow/ik_llama.cpp, or set IK_GIT)" >&2; exit 1; }
command -v cmake >/dev/null || { echo "cmake is needed: apt-get install -y cmake" >&2; exit 1; }
mkdir -p "$root"
if [ ! -f "$root/src/CMakeLists.txt" ]; then
  rm -rf "$root/src"; mkdir -p "$root/src"
  rev="$(git --git-dir="$git_dir" rev-parse HEAD)"
  # every path whose blob the mirror stores (it leaves out large web files such as
  # examples/server/public* and examples/server/webui/dist, which llama-bench does not use)
  git --git-dir="$git_dir" ls-tree -r "$rev" | awk '$2 == "blob" {print $3}' \
    | git --git-dir="$git_dir" cat-file --batch-check | awk '$2 == "missing" {print $1}' > "$root/missing"
  git --git-dir="$git_dir" ls-tree -r "$rev" | awk -v m="$root/missing" \
      'BEGIN { while ((getline l < m) > 0) bad[l] = 1 } $2 == "blob" && !($3 in bad) { sub(/^[^\t]*\t/, ""); print }' \
    | tr '\n' '\0' > "$root/paths"
  GIT_INDEX_FILE="$root/index" git --git-dir="$git_dir" read-tree "$rev"
  GIT_INDEX_FILE="$root/index" git --git-dir="$git_dir" checkout-index -z --stdin --prefix="$root/src/" < "$root/paths"
  echo "$rev" > "$root/src/.rev"
fi
if [ $src_only = 1 ]; then echo "$root/src"; exit 0; fi
cmake -S "$root/src" -B "$build" -DCMAKE_BUILD_TYPE=Release "${flags[@]}" -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF >&2
cmake --build "$build" -j"$(nproc)" --target llama-bench >&2
echo "$bin"
