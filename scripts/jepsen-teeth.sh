#!/usr/bin/env bash
# Shows the fault-injection harness has teeth: a node built with a deliberate safety bug (the
# `unsafe-early-ack` feature acknowledges a produce before it commits) must be caught by a short
# run with kill faults. Exits 0 when the checker reports anomalies, 1 when it misses the bug.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$ROOT"
UNSAFE_BIN="$PROFILE_DIR/raftlog-node-unsafe-early-ack"
log "building raftlog-node with the unsafe-early-ack feature (test only)"
cargo build --release -p raftlog-node --features unsafe-early-ack --bin raftlog-node
cp "$NODE_BIN" "$UNSAFE_BIN"
# Put the real node binary back in place (cargo keeps both builds; this only re-links/copies).
cargo build --release -p raftlog-node --bin raftlog-node
touch "$NODE_BIN"
out="${1:-$(mktemp -d /tmp/raftlog-teeth.XXXXXX)}"
set +e
"$PROFILE_DIR/raftlog-jepsen" --node-bin "$UNSAFE_BIN" --time 30 --nemesis kill-leader --fault-secs 2,4 \
  --quiet-secs 2,4 --producers 8 --consumers 3 --out "$out"
rc=$?
set -e
if [ $rc -eq 1 ]; then
  log "the checker caught the unsafe node; anomalies in $out/results.json"
  exit 0
fi
log "the checker did NOT catch the unsafe node (exit $rc); see $out"
exit 1
