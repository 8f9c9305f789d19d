#!/usr/bin/env bash
# Fetches Debian's cloud kernel for the VM tests without installing it:
# `apt-get download` of the linux-image-<ver>-cloud-amd64 package that
# linux-image-cloud-amd64 depends on, `dpkg-deb -x` into the cache, then
# `depmod` there. Idempotent: a kernel already in the cache is reused, and if
# apt cannot name or fetch one, the newest cached kernel is used.
#
# Cache: $COVA_VM_CACHE, default /var/cache/cova-vm. Prints, one per line:
#   KVER=<release>  ROOT=<extracted tree>  KERNEL=<bzImage>
set -euo pipefail

cache=${COVA_VM_CACHE:-/var/cache/cova-vm}
meta=${COVA_VM_KERNEL_META:-linux-image-cloud-amd64}
mkdir -p "$cache"
# One fetch at a time (test packages run in parallel).
exec 9>"$cache/.lock"
flock 9

emit() { # $1 = release
  printf 'KVER=%s\nROOT=%s\nKERNEL=%s\n' "$1" "$cache/$1" "$cache/$1/boot/vmlinuz-$1"
}
ready() { [[ -f $cache/$1/boot/vmlinuz-$1 && -s $cache/$1/lib/modules/$1/modules.dep && -f $cache/$1/.complete ]]; }
newest_cached() {
  local d best=""
  for d in "$cache"/*/; do
    d=$(basename "$d")
    ready "$d" && best=$d
  done
  [[ -n $best ]] && printf '%s\n' "$best"
}

depname() { apt-cache depends "$meta" 2>/dev/null | awk '$1=="Depends:" && $2 ~ /^linux-image-/ {print $2; exit}'; }
pkg=$(depname || true)
if [[ -z $pkg ]]; then
  apt-get update -qq >/dev/null 2>&1 || true
  pkg=$(depname || true)
fi
if [[ -z $pkg ]]; then
  if rel=$(newest_cached); then emit "$rel"; exit 0; fi
  echo "fetch-kernel: apt-cache cannot resolve $meta and nothing is cached in $cache" >&2
  exit 1
fi
rel=${pkg#linux-image-}
rel=${rel%-unsigned}
if ready "$rel"; then emit "$rel"; exit 0; fi

for tool in dpkg-deb depmod; do
  command -v "$tool" >/dev/null || { echo "fetch-kernel: $tool missing (apt-get install kmod dpkg)" >&2; exit 1; }
done
work=$(mktemp -d "$cache/.fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT
(cd "$work" && { apt-get download -qq "$pkg" >/dev/null 2>&1 || { apt-get update -qq >/dev/null && apt-get download -qq "$pkg" >/dev/null; }; })
deb=$(ls "$work"/*.deb)
dpkg-deb -x "$deb" "$work/tree"
# Keep what booting needs: the kernel image, config and modules.
rm -rf "$work/tree/usr/share" "$work/tree/usr/lib/linux" 2>/dev/null || true
[[ -f $work/tree/boot/vmlinuz-$rel ]] || { echo "fetch-kernel: $deb has no boot/vmlinuz-$rel" >&2; exit 1; }
depmod -b "$work/tree" "$rel"
touch "$work/tree/.complete"
rm -rf "${cache:?}/$rel"
mv "$work/tree" "$cache/$rel"
emit "$rel"
