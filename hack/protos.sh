#!/usr/bin/env bash
# Regenerate the Go code for protocols/ from its .proto files.
#
#   hack/protos.sh           regenerate in place
#   hack/protos.sh --check   regenerate into a temp dir and fail if the
#                            committed files differ (stale or hand-edited)
#
# Tool versions are pinned because they are written into the generated
# headers; a different version would make --check fail for no real reason.
#   protoc         libprotoc 3.21.12   (Debian: protobuf-compiler, libprotobuf-dev)
#   protoc-gen-go  v1.36.12            (go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12)
#   protoc-gen-go-ttrpc from containerd/ttrpc v1.2.10
#                                      (go install github.com/containerd/ttrpc/cmd/protoc-gen-go-ttrpc@v1.2.10)
# Plugins are looked up in $(go env GOPATH)/bin first, then in PATH.
set -euo pipefail
export LC_ALL=C

want_protoc="libprotoc 3.21.12"
want_go="v1.36.12"
want_ttrpc="v1.2.10"

die() {
	echo "protos.sh: $*" >&2
	exit 1
}

check=0
case "${1:-}" in
"") ;;
--check) check=1 ;;
-h | --help)
	sed -n '2,14p' "$0"
	exit 0
	;;
*) die "unknown argument '$1' (use --check or nothing)" ;;
esac

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root/protocols"

# find_plugin NAME: print the plugin's path, GOPATH/bin winning over PATH.
find_plugin() {
	local gobin
	gobin="$(go env GOPATH 2>/dev/null | cut -d: -f1)/bin"
	if [[ -x "$gobin/$1" ]]; then
		echo "$gobin/$1"
	elif command -v "$1" >/dev/null 2>&1; then
		command -v "$1"
	else
		return 1
	fi
}

command -v protoc >/dev/null 2>&1 || die "protoc not found; install Debian package protobuf-compiler"
got="$(protoc --version)"
[[ "$got" == "$want_protoc" ]] || die "protoc is '$got', want '$want_protoc'"

plugin_go="$(find_plugin protoc-gen-go)" ||
	die "protoc-gen-go not found; go install google.golang.org/protobuf/cmd/protoc-gen-go@$want_go"
got="$("$plugin_go" --version | awk '{print $2}')"
[[ "$got" == "$want_go" ]] || die "$plugin_go is $got, want $want_go"

plugin_ttrpc="$(find_plugin protoc-gen-go-ttrpc)" ||
	die "protoc-gen-go-ttrpc not found; go install github.com/containerd/ttrpc/cmd/protoc-gen-go-ttrpc@$want_ttrpc"
got="$(go version -m "$plugin_ttrpc" | awk '$1 == "mod" && $2 == "github.com/containerd/ttrpc" {print $3}')"
[[ "$got" == "$want_ttrpc" ]] || die "$plugin_ttrpc is built from ttrpc '${got:-unknown}', want $want_ttrpc"

# Well-known types (google/protobuf/empty.proto) come from libprotobuf-dev.
wkt=""
for dir in "${PROTOC_INCLUDE:-}" /usr/include /usr/local/include; do
	if [[ -n "$dir" && -f "$dir/google/protobuf/empty.proto" ]]; then
		wkt="$dir"
		break
	fi
done
[[ -n "$wkt" ]] || die "google/protobuf/empty.proto not found; install Debian package libprotobuf-dev or set PROTOC_INCLUDE"

# dirs are the proto packages under protocols/, one directory each.
dirs=(grpc types aa cdh keyprovider)

mapfile -t protos < <(find "${dirs[@]}" -name '*.proto' | sort)
[[ ${#protos[@]} -gt 0 ]] || die "no .proto files under protocols/"

# generate OUTDIR: write all generated files under OUTDIR, laid out like protocols/.
generate() {
	protoc \
		-I . -I "$wkt" \
		--plugin=protoc-gen-go="$plugin_go" \
		--plugin=protoc-gen-go-ttrpc="$plugin_ttrpc" \
		--go_out="$1" --go_opt=paths=source_relative \
		--go-ttrpc_out="$1" --go-ttrpc_opt=paths=source_relative \
		"${protos[@]}"
	# protoc-gen-go-ttrpc glues its header to the package clause, which makes
	# it part of the package doc; split them with a blank line.
	local f
	while IFS= read -r -d '' f; do
		awk 'prev ~ /^\/\/ source: / && /^package / {print ""} {print; prev = $0}' "$f" >"$f.tmp"
		mv -- "$f.tmp" "$f"
	done < <(find "$1" -name '*_ttrpc.pb.go' -print0)
}

# committed: list the generated files now in protocols/.
committed() {
	find "${dirs[@]}" -name '*.pb.go' | sort
}

tmp="$(mktemp -d)"
trap 'rm -rf -- "$tmp"' EXIT
generate "$tmp"

if [[ $check -eq 0 ]]; then
	while IFS= read -r f; do rm -f -- "$f"; done < <(committed)
	(cd "$tmp" && find "${dirs[@]}" -name '*.pb.go' -print0 | sort -z) |
		while IFS= read -r -d '' f; do cp -- "$tmp/$f" "$f"; done
	echo "protos.sh: regenerated $(committed | wc -l) files under protocols/"
	exit 0
fi

if ! diff -u <(committed) <(cd "$tmp" && find "${dirs[@]}" -name '*.pb.go' | sort) >"$tmp/list.diff"; then
	cat "$tmp/list.diff" >&2
	die "generated file set differs from the committed one: run hack/protos.sh and commit the result"
fi
stale=0
while IFS= read -r f; do
	if ! diff -u "$f" "$tmp/$f" >&2; then
		stale=1
	fi
done < <(committed)
[[ $stale -eq 0 ]] || die "generated code in protocols/ is stale: run hack/protos.sh and commit the result"
echo "protos.sh: generated code in protocols/ is up to date"
