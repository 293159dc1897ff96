#!/usr/bin/env bash
# The checks of issue 16 on a real GPU (the device machine: an NVIDIA H200 with NVIDIA's
# Vulkan driver, no Rust, no registry, no Vulkan loader), in one call:
#   1. `hearth devices --check`: the conformance suite on the GPU (subgroups of 32), on its
#      default matmul kernel (cooperative matrices where it has 16x16x16 f16 products) and
#      again on the subgroup kernel (HEARTH_VK_MATMUL=subgroup);
#   2. every tiny fixture's logits on the GPU against transformers' (scripts/check_fixtures.py);
#   3. `hearth bench` on a SmolLM2-135M-shaped Q4_1 model and on a 12-layer
#      Qwen3-30B-A3B-shaped Q4_K_M model (hidden 2048, 128 experts with 8 active, expert FFN
#      768, 32/4 heads, head_dim 128), all on the GPU and with the experts in RAM; and the
#      SmolLM2-shaped model's prompt speed on the subgroup kernel, against cooperative matrices.
# The models are built there with transformers, llama.cpp's converter and its llama-quantize
# (scripts/gen_gpu_models.py): SmolLM2 itself (98 MB) cannot travel with the binaries in one
# call's 64 MiB, and a random model of its shape and type reads the same bytes per token.
#
# Here, first: bash scripts/gpu_pack.sh   (fills .gpu/ and .gl/, both git-ignored)
# Then one device call: carry [".gpu", ".gl"], command `bash scripts/gpu_check.sh`,
# timeout_s 480. Results: $OUT/gpu_check.log.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu-out}
mkdir -p "$out"
log="$out/gpu_check.log"
exec > >(tee "$log") 2>&1
t0=$(date +%s)
step() { echo; echo "== $1 ($(( $(date +%s) - t0 )) s)"; }
if ! ldconfig -p | grep -q libvulkan.so.1; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$icd" ] && export VK_DRIVER_FILES=$icd
h=.gpu/hearth
chmod +x "$h" .gpu/llama-quantize 2>/dev/null
step "devices and the conformance suite"
"$h" devices --check
step "the conformance suite on the subgroup matmul kernel"
HEARTH_VK_MATMUL=subgroup "$h" devices --check
step "tiny fixtures on the GPU against transformers"
python3 scripts/check_fixtures.py "$h" --device vulkan
step "building the benchmark models"
models=/tmp/hearth-models
PYTHONPATH=.gpu/llama/gguf-py python3 scripts/gen_gpu_models.py "$models" .gpu/llama .gpu/llama-quantize
step "bench: SmolLM2-135M-shaped Q4_1, all on the GPU"
"$h" bench "$models/smollm2-shape.Q4_1.gguf" --device vulkan -p 512 -n 128 -r 3
step "bench: the same on the subgroup matmul kernel (no cooperative matrices)"
HEARTH_VK_MATMUL=subgroup "$h" bench "$models/smollm2-shape.Q4_1.gguf" --device vulkan -p 512 -n 32 -r 3
step "bench: Qwen3-30B-A3B-shaped 12 layers Q4_K_M, all on the GPU"
"$h" bench "$models/qwen3moe-30b-a3b-12l.Q4_K_M.gguf" --device vulkan -p 512 -n 128 -r 3
step "bench: the same with the experts in RAM (16 CPU threads)"
"$h" bench "$models/qwen3moe-30b-a3b-12l.Q4_K_M.gguf" --device vulkan --cpu-moe -t 16 -p 512 -n 128 -r 3
step "done"
