#!/usr/bin/env bash
# Debian's Chromium and its ChromeDriver (/usr/bin/chromium, /usr/bin/chromedriver), from apt,
# unless they are there already: tests/server/test_chat_page.py drives the chat page with them.
set -euo pipefail
have() { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }
if have; then
  exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  sudo=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >/dev/null
# without the recommended packages (a desktop's worth); a font for the screenshot
$sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-liberation >/dev/null
have || { echo "chromium and chromium-driver could not be installed" >&2; exit 1; }
