#!/usr/bin/env bash
# Shows the fault-injection harness has teeth: a node built with deliberate bugs (the
# `unsafe-test-bugs` feature, the bug chosen by RAFTLOG_UNSAFE_BUG) must be caught by short runs:
#   early-ack   acknowledges a produce before it commits: 30 s of kill-leader faults must find
#               safety anomalies;
#   late-write  proposes one produce in 20 five seconds late, its deadline ignored: 20 s without
#               faults must find `late-write`;
#   group-double-owner  grants a consumer-group partition before its owner released it: 20 s of
#               members coming and going without faults must find `group-double-owner` in the
#               nodes' state and `group-overlap` in what the members were told;
#   group-commit-any-member  accepts a commit from a member that does not own the partition:
#               20 s of members (some of which come back as zombies and commit) must find
#               `group-commit-non-owner`;
#   queue-ignore-locks  takes back every lock of a queue at each receive, valid or not: 20 s of
#               queue workers without faults must find `queue-double-lock`;
#   queue-ignore-keys  hands out records of a key-ordered queue as if it were not: 20 s of
#               queue workers on a key-ordered queue must find `queue-key-order`.
# Exits 0 when every bug is caught, 1 when one is missed.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$ROOT"
UNSAFE_BIN="$PROFILE_DIR/raftlog-node-unsafe-test-bugs"
log "building raftlog-node with the unsafe-test-bugs feature (test only)"
cargo build --release -p raftlog-node --features unsafe-test-bugs --bin raftlog-node
cp "$NODE_BIN" "$UNSAFE_BIN"
# Put the real node binary back in place (cargo keeps both builds; this only re-links/copies).
cargo build --release -p raftlog-node --bin raftlog-node
touch "$NODE_BIN"
out="${1:-$(mktemp -d /tmp/raftlog-teeth.XXXXXX)}"

# caught BUG EXPECTED_ANOMALY ARGS...: runs the harness against the bug; true if the checker
# reported anomalies (EXPECTED_ANOMALY among them, when not empty).
caught() {
  local bug="$1" expected="$2"
  shift 2
  set +e
  RAFTLOG_UNSAFE_BUG="$bug" "$PROFILE_DIR/raftlog-jepsen" --node-bin "$UNSAFE_BIN" \
    --out "$out/$bug" "$@"
  local rc=$?
  set -e
  if [ $rc -ne 1 ]; then
    log "the checker did NOT catch the $bug bug (exit $rc); see $out/$bug"
    return 1
  fi
  if [ -n "$expected" ] && ! grep -q "\"$expected\"" "$out/$bug/results.json"; then
    log "the checker found anomalies with the $bug bug, but not $expected; see $out/$bug"
    return 1
  fi
  log "the checker caught the $bug bug; anomalies in $out/$bug/results.json"
}

missed=0
caught early-ack "" --time 30 --nemesis kill-leader --fault-secs 2,4 --quiet-secs 2,4 \
  --producers 8 --consumers 3 || missed=1
caught late-write late-write --time 20 --nemesis none --producers 4 --consumers 3 || missed=1
caught group-double-owner group-double-owner --time 20 --nemesis none --producers 2 \
  --consumers 1 --partitions 6 --members 3 || missed=1
grep -q '"group-overlap"' "$out/group-double-owner/results.json" || {
  log "the checker did NOT see the members told to read one partition at once"; missed=1; }
caught group-commit-any-member group-commit-non-owner --time 20 --nemesis none --producers 2 \
  --consumers 1 --partitions 6 --members 3 || missed=1
caught queue-ignore-locks queue-double-lock --time 20 --nemesis none --producers 2 \
  --consumers 1 --partitions 4 --queue-workers 4 || missed=1
caught queue-ignore-keys queue-key-order --time 20 --nemesis none --producers 2 \
  --consumers 1 --partitions 4 --queue-workers 4 --queue-key-ordered || missed=1
exit $missed
