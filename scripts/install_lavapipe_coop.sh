#!/usr/bin/env bash
# A lavapipe that has cooperative matrices (VK_KHR_cooperative_matrix), so that CI runs the
# Vulkan cooperative-matrix matmul kernel (crates/vulkan/shaders/matmul_coop.glsl).
#
# Debian 12's Mesa (22.3, scripts/install_lavapipe.sh) has none; lavapipe reports 8x8x8 f16
# products since Mesa 26, which trixie-backports carries. Its libraries need trixie's C
# library, so they live in a minimal Debian 13 root (debootstrap, about 250 MB, a few minutes)
# that the tests run in with this repository bind-mounted at its own path
# (scripts/test_coop.sh). Needs root, as CI has.
#
# Usage: scripts/install_lavapipe_coop.sh [ROOT]   (default: $HEARTH_COOP_ROOT or
# /opt/hearth-coop); prints the root's path.
set -euo pipefail
root=${1:-${HEARTH_COOP_ROOT:-/opt/hearth-coop}}
mirror=http://deb.debian.org/debian
if [ -f "$root/.hearth-ready" ]; then
  echo "$root"
  exit 0
fi
if ! command -v debootstrap >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi
# never remove a root with something mounted in it (scripts/test_coop.sh binds this
# repository there): rm would go through the mount
if awk -v r="$root/" 'index($2, r) == 1 { found = 1 } END { exit !found }' /proc/mounts; then
  echo "error: $root has file systems mounted under it; unmount them first" >&2
  exit 1
fi
rm -rf --one-file-system "$root"
debootstrap --variant=minbase trixie "$root" "$mirror" >&2
echo "deb $mirror trixie-backports main" > "$root/etc/apt/sources.list.d/backports.list"
chroot "$root" apt-get update -qq >&2
chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t trixie-backports \
  mesa-vulkan-drivers >/dev/null
# the Vulkan loader comes with the drivers; say which Mesa this is
chroot "$root" dpkg-query -W -f '${Version}\n' mesa-vulkan-drivers | sed 's/^/lavapipe (coop): Mesa /' >&2
touch "$root/.hearth-ready"
echo "$root"
