#!/usr/bin/env bash
# govulncheck against the module graph, offline from vuln.go.dev.
#
# CI reaches the Go module proxy but not vuln.go.dev, so the vulnerability
# database is built locally from the golang.org/x/vulndb module (its
# data/osv/*.json are the reports vuln.go.dev serves), with vulndb's own
# cmd/indexdb writing the v1 layout govulncheck reads (index/db.json,
# index/modules.json, ID/GO-….json). Everything comes through the module
# proxy and is cached in $VULNCHECK_CACHE.
#
#   bash hack/vulncheck.sh                 # scan ./... (symbol level)
#   bash hack/vulncheck.sh -show verbose   # extra govulncheck flags
#   VULNCHECK_PATTERNS=./cmd/cova-agent bash hack/vulncheck.sh   # one binary
#   VULNDB_VERSION=latest bash hack/vulncheck.sh   # newest reports
#
# Exit status is govulncheck's: 0 clean, 3 when vulnerable code is called.
set -euo pipefail
cd "$(dirname "$0")/.."

GOVULNCHECK_VERSION=${GOVULNCHECK_VERSION:-v1.9.0}
VULNDB_VERSION=${VULNDB_VERSION:-v0.0.0-20261105234957-e22db6528018}
VULNCHECK_CACHE=${VULNCHECK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cova/vulncheck}
GO=${GO:-go}
# The tools are built outside this module: its go.mod is not consulted.
export GOFLAGS=

if [ "$VULNDB_VERSION" = latest ]; then
  VULNDB_VERSION=$("$GO" list -m -f '{{.Version}}' golang.org/x/vulndb@latest)
fi

bin="$VULNCHECK_CACHE/bin"
mkdir -p "$bin"

# 1. govulncheck, pinned.
gvc="$bin/govulncheck-$GOVULNCHECK_VERSION"
if [ ! -x "$gvc" ]; then
  echo "vulncheck: installing govulncheck $GOVULNCHECK_VERSION" >&2
  GOBIN="$bin" "$GO" install "golang.org/x/vuln/cmd/govulncheck@$GOVULNCHECK_VERSION"
  mv "$bin/govulncheck" "$gvc"
fi

# 2. The database, built once per vulndb version.
db="$VULNCHECK_CACHE/db-$VULNDB_VERSION"
if [ ! -s "$db/index/modules.json" ]; then
  echo "vulncheck: building the database from golang.org/x/vulndb@$VULNDB_VERSION" >&2
  src=$("$GO" mod download -json "golang.org/x/vulndb@$VULNDB_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  n=$(find "$src/data/osv" -maxdepth 1 -name 'GO-*.json' 2>/dev/null | wc -l)
  if [ "$n" -lt 1000 ]; then
    echo "vulncheck: golang.org/x/vulndb@$VULNDB_VERSION has $n reports in data/osv: not a usable database" >&2
    exit 2
  fi
  idx="$bin/indexdb-$VULNDB_VERSION"
  if [ ! -x "$idx" ]; then
    GOBIN="$bin" "$GO" install "golang.org/x/vulndb/cmd/indexdb@$VULNDB_VERSION"
    mv "$bin/indexdb" "$idx"
  fi
  rm -rf "$db.tmp"
  "$idx" -vulns "$src/data/osv" -out "$db.tmp"
  rm -rf "$db"
  mv "$db.tmp" "$db"
  echo "vulncheck: $n reports indexed into $db" >&2
fi

# 3. The scan. The toolchain's standard library is part of the graph: a
#    stdlib finding is fixed by a newer Go, not by go.mod.
echo "vulncheck: $("$GO" version | cut -d' ' -f3), govulncheck $GOVULNCHECK_VERSION, vulndb $VULNDB_VERSION" >&2
# Arguments are govulncheck flags; the packages are $VULNCHECK_PATTERNS.
# shellcheck disable=SC2086
exec "$gvc" -db "file://$db" "$@" ${VULNCHECK_PATTERNS:-./...}
