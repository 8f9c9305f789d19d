#!/usr/bin/env bash
# Prints the agent's code+data size attributed to each module (from the symbol
# table of an unstripped build), largest first. The stripped binary is smaller
# overall, but the shares hold.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
CGO_ENABLED=1 go build -trimpath -tags 'netgo osusergo' -ldflags '-extldflags -static' -o "$tmp/agent" ./cmd/cova-agent
go tool nm -size "$tmp/agent" | awk '
  $3 !~ /^[TtRr]$/ { next }   # code and read-only data; skip bss/data
  { name=$4; for (i=5;i<=NF;i++) name=name" "$i
    sub(/^type:\.?/, "", name); sub(/^go:/, "", name)
    if (name ~ /^[a-z0-9-]+\.[a-z.]+\//) {          # module path: host/owner/repo
      n=split(name, p, "/"); last=(n<3)?n:3; sub(/\..*$/, "", p[last]); mod=p[1]
      for (i=2;i<=last;i++) mod=mod"/"p[i]
    } else { mod=name; sub(/[.\/].*$/, "", mod); mod=(mod=="")?"(other)":"std:"mod }
    tot[mod]+=$2; all+=$2 }
  END { for (m in tot) printf "%8.2f MB  %s\n", tot[m]/1e6, m; printf "%8.2f MB  TOTAL (text+rodata symbols)\n", all/1e6 }' | sort -rn | head -25
