#!/usr/bin/env bash
# Mesa's lavapipe (a Vulkan 1.3 driver that runs on the CPU) and the Vulkan loader, from
# Debian's apt, unless they are there already. The Vulkan tests run on it in CI.
set -euo pipefail
have_loader() { ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1'; }
have_lvp() { ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; }
if have_loader && have_lvp; then
  exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  sudo=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >/dev/null
$sudo apt-get install -y -qq libvulkan1 mesa-vulkan-drivers >/dev/null
have_loader && have_lvp || { echo "lavapipe could not be installed" >&2; exit 1; }
