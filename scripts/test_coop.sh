#!/usr/bin/env bash
# The Vulkan cooperative-matrix matmul kernel (HEARTH_VK_MATMUL=coop) on a lavapipe that has
# cooperative matrices (scripts/install_lavapipe_coop.sh): the conformance suite (every type
# the kernel takes against the CPU with the same f16 rounding, the MoE experts' kernel over
# slots grouped by expert, and a row or token alone equal to the same in a batch, bit for
# bit) and SmolLM2's top-1 agreement with transformers over real text (>= 98%), on this kernel and on lavapipe's default f32-activation one; with
# HEARTH_COOP_TINY=1 also every architecture's tiny fixtures (their float weights stay on the
# f32 kernel, so CI leaves them to scripts/test.sh).
#
# The test binaries are built here (cargo, as scripts/test.sh builds them) and run inside the
# Debian 13 root with this repository and the model cache bind-mounted at their own paths
# (scripts/in_coop_root.sh).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
if [ -z "${COOP:-}" ]; then
  ./target/release/hearth pull smollm2 >/dev/null
  # the test binaries' paths, as cargo reports them
  bins=()
  for t in "-p hearth-vulkan --test conformance" "-p hearth --test smollm2" \
    "-p hearth-models --test tiny_hf"; do
    # shellcheck disable=SC2086
    bins+=("$(cargo test --release --locked $t --no-run --message-format=json 2>/dev/null |
      python3 -c 'import json, sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])' | tail -1)")
  done
  # again, beside the root ($COOP runs a command in it)
  exec bash scripts/in_coop_root.sh bash "$repo/scripts/test_coop.sh" "${bins[@]}"
fi
bins=("$@")
run() {
  # $1: the matmul kernel, $2: the crate's directory (cargo runs tests there), then the binary
  # and its arguments
  local kernel=$1 dir=$2
  shift 2
  (cd "$repo/$dir" && HEARTH_REQUIRE_VULKAN=1 HEARTH_TEST_BACKEND=vulkan HEARTH_VK_MATMUL="$kernel" \
    "$COOP" "$@")
}
HEARTH_VK_MATMUL=coop "$COOP_HEARTH" devices | grep vulkan
run coop crates/vulkan "${bins[0]}" --test-threads 1 every_op_agrees_with_the_cpu_backend
run coop crates/cli "${bins[1]}" smollm2_top1
# SmolLM2 on the f32-activation kernel lavapipe uses by default: here rather than on Debian 12's
# lavapipe because Mesa 26's runs it about 6 times as fast (pp64 10.6 against 1.8 t/s, Zen 3)
run rows crates/cli "${bins[1]}" smollm2_top1
if [ "${HEARTH_COOP_TINY:-0}" = 1 ]; then
  run coop crates/models "${bins[2]}"
fi
