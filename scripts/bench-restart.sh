#!/usr/bin/env bash
# Restart time of a node as the log grows: does it stay flat (snapshot + bounded log tail) or grow
# with the number of entries ever written?
#
#   scripts/bench-restart.sh [SMALL_ENTRIES] [LARGE_ENTRIES]      (defaults 10000 and 1000000)
#
# Starts a 3-node cluster in a temporary directory, writes SMALL_ENTRIES entries (one 100-byte
# record per Raft entry, 64 in flight), then measures how long node 2 takes from process start to
# /readyz (a leader known and everything committed applied), after kill -9 and after SIGTERM.
# Then writes up to LARGE_ENTRIES and measures again. Prints one JSON line per measurement.
set -euo pipefail
source "$(dirname "$0")/common.sh"
SMALL="${1:-10000}"
LARGE="${2:-1000000}"
[ -x "$NODE_BIN" ] && [ -x "$CLI_BIN" ] || "$ROOT/scripts/build.sh"

export RAFTLOG_DATA_DIR
RAFTLOG_DATA_DIR="$(mktemp -d /tmp/raftlog-bench-restart.XXXXXX)"
cleanup() { "$ROOT/scripts/cluster.sh" down >/dev/null 2>&1 || true; rm -rf "$RAFTLOG_DATA_DIR"; }
trap cleanup EXIT
"$ROOT/scripts/cluster.sh" up >/dev/null

ms_now() { date +%s%3N; }

measure() { # $1 = entries written so far, $2 = how the node was stopped (KILL or TERM)
  local entries="$1" how="$2" start end
  if [ "$how" = KILL ]; then "$ROOT/scripts/cluster.sh" kill 2 >/dev/null 2>&1
  else "$ROOT/scripts/cluster.sh" restart 2 >/dev/null 2>&1 && "$ROOT/scripts/cluster.sh" kill 2 >/dev/null 2>&1; fi
  if [ "$how" = TERM ]; then
    # Start it, let it settle, then stop it gracefully so the measurement is a clean restart.
    "$ROOT/scripts/cluster.sh" restart 2 >/dev/null 2>&1
    kill -TERM "$(cat "$RAFTLOG_DATA_DIR/node-2/pid")"
    while kill -0 "$(cat "$RAFTLOG_DATA_DIR/node-2/pid")" 2>/dev/null; do sleep 0.05; done
  fi
  local size; size=$(du -sm "$RAFTLOG_DATA_DIR/node-2" | cut -f1)
  start=$(ms_now)
  "$ROOT/scripts/cluster.sh" restart 2 >/dev/null 2>&1
  end=$(ms_now)
  printf '{"bench":"restart","entries":%s,"stop":"%s","restart_to_ready_ms":%s,"node_data_mb":%s}\n' \
    "$entries" "$how" "$((end - start))" "$size"
}

write_until() { # total entries
  local have="$1" want="$2"
  [ "$want" -gt "$have" ] || return 0
  log "writing $((want - have)) entries (to $want)"
  "$CLI_BIN" bench produce --topic restart --count "$((want - have))" --concurrency 64 --record-bytes 100 --json >/dev/null
}

write_until 0 "$SMALL"
measure "$SMALL" KILL
measure "$SMALL" TERM
write_until "$SMALL" "$LARGE"
measure "$LARGE" KILL
measure "$LARGE" TERM
