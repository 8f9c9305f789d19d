#!/bin/sh
# Installs what the imagepull tests use: a registry, skopeo and umoci to build
# and push images, a static busybox to put in them, openssl for the keys of
# encrypted images and gnupg for GPG-signed ones. Idempotent: installs only
# the packages that are missing.
set -eu
need=""
for pkg in docker-registry skopeo umoci busybox-static openssl gnupg; do
	if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
		need="$need $pkg"
	fi
done
if [ -z "$need" ]; then
	exit 0
fi
export DEBIAN_FRONTEND=noninteractive
# shellcheck disable=SC2086 # word splitting of the package list is wanted
if ! apt-get install -y --no-install-recommends $need; then
	apt-get update
	apt-get install -y --no-install-recommends $need
fi
