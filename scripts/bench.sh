#!/usr/bin/env bash
# Produce throughput and latency of a local 3-node cluster, with group commit on and off, in ONE
# run (this machine is noisy: compare the ratios, not absolute figures across runs).
#
#   scripts/bench.sh [--quick]
#
# For each group-commit setting (RAFTLOG_GROUP_COMMIT_MAX=1: every request its own Raft entry,
# proposed at once as before group commit;
# 1024: requests that arrive together share one entry) it starts a fresh cluster and runs the
# closed-loop load of `raftlog bench produce` (C requests in flight, each waiting for its
# replicated, fsynced ack): 1 KiB and 100 B records, C=1 and C=64, 1 and 8 partitions, and 100
# records per request (what the batching producer sends). Prints one JSON line per run (with the
# nodes' peak RSS), then a table of throughput ratios.
# Not yet here: the NATS JetStream side by side and catch-up consumption (see issue 5's notes).
set -euo pipefail
source "$(dirname "$0")/common.sh"
ENDPOINTS="127.0.0.1:50051,127.0.0.1:50052,127.0.0.1:50053"
[ -x "$NODE_BIN" ] && [ -x "$CLI_BIN" ] || "$ROOT/scripts/build.sh"
SCALE=1
[ "${1:-}" = "--quick" ] && SCALE=4

export RAFTLOG_DATA_DIR
results="$(mktemp /tmp/raftlog-bench.XXXXXX.jsonl)"
cleanup() { "$ROOT/scripts/cluster.sh" down >/dev/null 2>&1 || true; rm -rf "${RAFTLOG_DATA_DIR:-/nonexistent}"; }
trap cleanup EXIT

# name record_bytes concurrency partitions records_per_request count
MATRIX=(
  "1KiB-C1       1024  1  1   1   2000"
  "1KiB-C64      1024 64  1   1  40000"
  "100B-C64       100 64  1   1  40000"
  "1KiB-C64-p8   1024 64  8   1  40000"
  "1KiB-batch100 1024  8  1 100 200000"
)

peak_rss_mb() { # the largest VmHWM of the three nodes, in MiB
  local max=0 kb
  for n in 1 2 3; do
    kb=$(awk '/VmHWM/ {print $2}' "/proc/$(cat "$RAFTLOG_DATA_DIR/node-$n/pid")/status" 2>/dev/null || echo 0)
    [ "$kb" -gt "$max" ] && max=$kb
  done
  echo $((max / 1024))
}

for gc in 1 1024; do
  RAFTLOG_DATA_DIR="$(mktemp -d /tmp/raftlog-bench.XXXXXX)"
  RAFTLOG_GROUP_COMMIT_MAX=$gc "$ROOT/scripts/cluster.sh" up >/dev/null
  for row in "${MATRIX[@]}"; do
    read -r name bytes conc parts per count <<<"$row"
    count=$((count / SCALE))
    line=$(RAFTLOG_ENDPOINTS="$ENDPOINTS" "$CLI_BIN" --json bench produce --topic "b-$name" \
      --partitions "$parts" --count "$count" --concurrency "$conc" --record-bytes "$bytes" \
      --records-per-request "$per" 2>/dev/null | tail -1)
    echo "{\"name\":\"$name\",\"group_commit_max\":$gc,\"peak_rss_mb\":$(peak_rss_mb),\"result\":$line}" | tee -a "$results"
  done
  "$ROOT/scripts/cluster.sh" down >/dev/null
  rm -rf "$RAFTLOG_DATA_DIR"
done

python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {(r["name"], r["group_commit_max"]): r["result"] for r in rows}
print(f"{'run':<15}{'off req/s':>11}{'on req/s':>11}{'ratio':>7}{'on MB/s':>9}{'on p50 ms':>10}{'on p99 ms':>10}")
for name in dict.fromkeys(r["name"] for r in rows):
    off, on = by[(name, 1)], by[(name, 1024)]
    print(f"{name:<15}{off['requests_per_s']:>11.0f}{on['requests_per_s']:>11.0f}"
          f"{on['requests_per_s'] / off['requests_per_s']:>7.2f}{on['mb_per_s']:>9.1f}"
          f"{on['latency_us']['p50'] / 1000:>10.2f}{on['latency_us']['p99'] / 1000:>10.2f}")
PY
rm -f "$results"
