# Shared settings for raftlog's scripts. Source it; do not run it.
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Build output lives outside the clone so CI and fresh clones reuse it (RocksDB's C++ takes ~13 min).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/raftlog/target}"
# The one cargo profile everything uses (tests, clippy, cluster): each profile rebuilds RocksDB.
PROFILE_DIR="$CARGO_TARGET_DIR/release"
NODE_BIN="$PROFILE_DIR/raftlog-node"
CLI_BIN="$PROFILE_DIR/raftlog"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The local cluster's nodes (scripts/cluster.sh, under $RAFTLOG_DATA_DIR), for benchmarks.
node_pid() { cat "$RAFTLOG_DATA_DIR/node-$1/pid"; }
node_cpu_ticks() { # utime + stime of node $1, in clock ticks
  local stat
  stat=$(cat "/proc/$(node_pid "$1")/stat")
  stat=${stat##*) } # the fields after the command name; utime and stime are the 12th and 13th
  echo "$stat" | awk '{print $12 + $13}'
}
# GET from a local node's admin port ($1: URL), with the bootstrap token of a `cluster.sh up
# --secure` data dir (its /metrics and /status need one).
admin_get() {
  local token="${RAFTLOG_DATA_DIR:-./data}/pki/bootstrap.token"
  if [ -f "$token" ]; then
    curl -fsS -H "Authorization: Bearer $(cat "$token")" "$1"
  else
    curl -fsS "$1"
  fi
}
leader_node() { # the node that says it leads, from its admin /status
  local n
  for n in 1 2 3; do
    if admin_get "127.0.0.1:909$n/status" 2>/dev/null | grep -q '"role":"leader"'; then
      echo "$n"; return
    fi
  done
  die "no leader found"
}
