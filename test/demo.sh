#!/usr/bin/env bash
# Host-mode demo: start cova-agent on a unix socket, run a busybox container
# through it with cova-ctl, show the output and exit code, clean up.
# (The confidential VM demo replaces this once the QEMU harness exists.)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo: needs root (containers)"; exit 1; }
bb=$(command -v busybox || true)
[ -n "$bb" ] && file -L "$bb" | grep -q 'statically linked' || { echo "demo: apt-get install busybox-static"; exit 1; }
work=$(mktemp -d /tmp/cova-demo.XXXXXX)
agent_pid=""
cleanup() { [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
[ -n "${COVA_DEMO_KEEP:-}" ] && trap - EXIT
mkdir -p "$work/rootfs/bin"
cp "$bb" "$work/rootfs/bin/busybox"
for a in $("$bb" --list); do [ "$a" = busybox ] || ln -sf busybox "$work/rootfs/bin/$a"; done
mkdir -p "$work/rootfs"/{proc,sys,dev,tmp,etc}
sock="$work/agent.sock"
t0=$(date +%s%N)
bin/cova-agent --listen "unix://$sock" --root "$work/state" 2>"$work/agent.log" &
agent_pid=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.02; done
echo "== agent listening after $(( ($(date +%s%N)-t0)/1000000 )) ms (pid $agent_pid)"
bin/cova-ctl --addr "unix://$sock" check
bin/cova-ctl --addr "unix://$sock" version
echo "== cova-ctl run -- sh -c 'echo hi from a container; uname -n; exit 3'"
set +e
bin/cova-ctl --addr "unix://$sock" run --rootfs "$work/rootfs" -- sh -c 'echo hi from a container; uname -n; exit 3'
rc=$?
set -e
echo "== container exit code: $rc (expected 3)"
echo "== agent log lines: $(wc -l <"$work/agent.log")"
[ "$rc" = 3 ]
