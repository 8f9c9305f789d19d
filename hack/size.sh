#!/usr/bin/env bash
# Prints the agent's code+data size attributed to each module (from the symbol
# table of an unstripped build), largest first. The stripped binary is smaller
# overall, but the shares hold.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
CGO_ENABLED=1 go build -trimpath -tags 'netgo osusergo' -ldflags '-extldflags -static' -o "$tmp/agent" ./cmd/cova-agent
go tool nm -size "$tmp/agent" | awk '
  { size=$2; name=$4; for (i=5;i<=NF;i++) name=name" "$i
    sub(/^type:\.?/, "", name); sub(/^go:/, "", name)
    n=split(name, parts, "/"); mod=name
    if (name ~ /^(github\.com|golang\.org|google\.golang\.org|gopkg\.in|cyphar\.com)\//) {
      mod=parts[1]"/"parts[2]; if (n>2) mod=mod"/"parts[3]; sub(/\..*$/, "", mod)
    } else { sub(/\..*$/, "", mod); sub(/\/.*$/, "", mod); if (mod=="") mod="(runtime/other)"; else mod="std:"mod }
    tot[mod]+=size; all+=size }
  END { for (m in tot) printf "%8.2f MB  %s\n", tot[m]/1e6, m; printf "%8.2f MB  TOTAL symbols\n", all/1e6 }' | sort -rn | head -25
