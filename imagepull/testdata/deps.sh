#!/bin/sh
# Installs the tools the imagepull tests use (registry, skopeo, umoci, busybox).
# Idempotent: does nothing when every tool is already present.
set -eu
need=""
for pair in docker-registry:docker-registry skopeo:skopeo umoci:umoci busybox:busybox-static; do
	tool=${pair%%:*}
	pkg=${pair#*:}
	if ! command -v "$tool" >/dev/null 2>&1; then
		need="$need $pkg"
	fi
done
if [ -z "$need" ]; then
	exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends $need; then
	apt-get update
	apt-get install -y --no-install-recommends $need
fi
