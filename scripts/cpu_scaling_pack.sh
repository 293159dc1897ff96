#!/usr/bin/env bash
# Prepare issue 23's CPU scaling check for the device machine's host (16 Xeon cores with AMX;
# no Rust, no registry, PyTorch and transformers installed): .gpu/ (scripts/gpu_pack.sh: a
# stripped hearth, llama.cpp's converter and a portable llama-quantize) and .cpus/ (llama.cpp's
# and ik_llama.cpp's llama-bench built for Sapphire Rapids, xz-compressed), both git-ignored.
# The builds take long on 2 cores (ik_llama.cpp about 40 minutes): start early.
# Then one device call: carry [".gpu", ".cpus"], command `bash scripts/cpu_scaling.sh`,
# timeout_s 420. Results: $OUT/cpu_scaling.log.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.cpus/' .git/info/exclude 2>/dev/null || echo /.cpus/ >>.git/info/exclude
[ -x .gpu/hearth ] && [ -x .gpu/llama-quantize ] || bash scripts/gpu_pack.sh
# the host's CPU, not this one: -march=sapphirerapids (AVX-512 VNNI/BF16 and AMX), so both
# peers get the kernels a native build there would choose
march=(-DGGML_NATIVE=OFF "-DCMAKE_C_FLAGS=-march=sapphirerapids" "-DCMAKE_CXX_FLAGS=-march=sapphirerapids")
src=$(bash scripts/build_llamacpp.sh --src-only)
cmake -S "$src" -B .llama.cpp/build-spr -DCMAKE_BUILD_TYPE=Release "${march[@]}" -DGGML_AMX_INT8=ON \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF >/dev/null
cmake --build .llama.cpp/build-spr -j"$(nproc)" --target llama-bench >/dev/null
bash scripts/build_ik_llama.sh --src-only >/dev/null
cmake -S .ik_llama/src -B .ik_llama/build-spr -DCMAKE_BUILD_TYPE=Release "${march[@]}" \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF >/dev/null
cmake --build .ik_llama/build-spr -j"$(nproc)" --target llama-bench >/dev/null
rm -rf .cpus && mkdir -p .cpus
cp .llama.cpp/build-spr/bin/llama-bench .cpus/llama-bench && strip .cpus/llama-bench
cp .ik_llama/build-spr/bin/llama-bench .cpus/ik-llama-bench && strip .cpus/ik-llama-bench
xz -T0 -6 .cpus/llama-bench .cpus/ik-llama-bench
du -sh .gpu .cpus
