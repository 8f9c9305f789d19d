#!/usr/bin/env bash
# Installs what the VM tests (test/vm) and cova-rootfs's tests need, then
# fetches the guest kernel. Idempotent: a second run installs nothing and
# downloads nothing. .ci/run calls it; developers may too.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

pkgs=(qemu-system-x86 qemu-utils kmod cpio libarchive-tools e2fsprogs busybox-static file swtpm ovmf)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  # Try the package lists as they are (.ci/run has just updated them).
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  }
fi

bash "$(dirname "$0")/fetch-kernel.sh" >/dev/null
