#!/usr/bin/env bash
# Runs COMMAND (here, outside) beside Mesa 26's lavapipe, which has cooperative matrices: the
# Debian 13 root of scripts/install_lavapipe_coop.sh (installed if missing; root needed), with
# this repository and the model cache bind-mounted at their own paths and /proc mounted while
# COMMAND runs. COMMAND finds two wrappers in the environment:
# - $COOP ARGS...: runs ARGS inside the root, in the current directory (which must lie in the
#   repository), with PATH, HOME, HEARTH_MODELS and every HEARTH_* variable passed in;
# - $COOP_HEARTH ARGS...: this repository's target/release/hearth run that way (a server it
#   starts keeps the wrapper's process id, so it can be stopped by it).
#
# Usage: scripts/in_coop_root.sh COMMAND [ARGS...]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
root=$(bash "$repo/scripts/install_lavapipe_coop.sh")
models=${HEARTH_MODELS:-${XDG_CACHE_HOME:-$HOME/.cache}/hearth/models}
mkdir -p "$models"
wrap=$(mktemp -d)
mounted=()
cleanup() {
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount "${mounted[$i]}" 2>/dev/null || true; done
  rm -rf "$wrap"
}
trap cleanup EXIT
bind() {
  mkdir -p "$root$2"
  # a run killed before its cleanup leaves its mounts: reuse none of them
  if mountpoint -q "$root$2"; then umount "$root$2"; fi
  mount --bind "$1" "$root$2"
  mounted+=("$root$2")
}
bind "$repo" "$repo"
bind "$models" "$models"
mkdir -p "$root/proc"
if mountpoint -q "$root/proc"; then umount "$root/proc"; fi
mount -t proc proc "$root/proc"
mounted+=("$root/proc")
cat >"$wrap/coop" <<WRAP
#!/usr/bin/env bash
vars=(PATH=/usr/bin:/bin "HOME=\$HOME" "HEARTH_MODELS=$models")
while IFS= read -r -d '' kv; do
  case \$kv in HEARTH_*) [[ \$kv == HEARTH_MODELS=* ]] || vars+=("\$kv") ;; esac
done < <(env -0)
exec chroot "$root" /usr/bin/env -i "\${vars[@]}" sh -c 'cd "\$0" && exec "\$@"' "\$PWD" "\$@"
WRAP
printf '#!/bin/sh\nexec "%s" "%s" "$@"\n' "$wrap/coop" "$repo/target/release/hearth" >"$wrap/hearth"
chmod +x "$wrap/coop" "$wrap/hearth"
COOP="$wrap/coop" COOP_HEARTH="$wrap/hearth" "$@"
