#!/usr/bin/env bash
# What a down follower costs the leader: CPU per record and throughput at C=64 with all three
# nodes up, and with one follower killed, side by side in one run on fresh clusters (the order
# alternating by round). Without raftlog's per-peer backoff (docs/decisions.md, "Backoff for
# unreachable peers") a down follower is retried in a tight loop that writes two warnings per
# try; this measures what a down follower costs with it (docs/benchmarks.md, "A follower down").
#
#   scripts/bench-peer-down.sh [--rounds N] [--requests N]
#
# One JSON line per measurement, then a table. Uses the build in $CARGO_TARGET_DIR/release
# (RAFTLOG_NO_BUILD=1 to skip building).
set -euo pipefail
source "$(dirname "$0")/common.sh"
ROUNDS=3 REQUESTS=60000
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2 ;;
    --requests) REQUESTS=$2 ;;
    *) die "unknown option $1 (usage: scripts/bench-peer-down.sh [--rounds N] [--requests N])" ;;
  esac
  shift 2
done
work="$(mktemp -d /tmp/raftlog-peer-down.XXXXXX)"
results="$work/results.jsonl"
export RAFTLOG_DATA_DIR="$work/data"
cleanup() { "$ROOT/scripts/cluster.sh" down >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
[ "${RAFTLOG_NO_BUILD:-}" = 1 ] || "$ROOT/scripts/build.sh"
export RAFTLOG_NO_BUILD=1

lines() { wc -l < "$RAFTLOG_DATA_DIR/node-$1/node.log"; }

# measure CASE ROUND: C=64 single-record produce on the current cluster; the leader's CPU per
# record, its log lines during the load, the rate.
measure() {
  local case=$1 round=$2 l ticks lines_before out
  l=$(leader_node)
  ticks=$(node_cpu_ticks "$l")
  lines_before=$(lines "$l")
  out=$("$CLI_BIN" bench produce --topic "pd-$case-$round" --partitions 1 --count "$REQUESTS" \
    --concurrency 64 --record-bytes 1024 --records-per-request 1 | tail -n 1)
  python3 - "$case" "$round" "$out" "$(($(node_cpu_ticks "$l") - ticks))" "$(getconf CLK_TCK)" \
    "$REQUESTS" "$(($(lines "$l") - lines_before))" <<'PY' | tee -a "$results"
import json, sys
case, rnd, out, ticks, hz, n, lines = sys.argv[1:]
out = json.loads(out)
print(json.dumps({"case": case, "round": int(rnd), "req_s": round(out["requests_per_s"]),
    "p99_ms": out["latency_us"]["p99"] / 1000,
    "leader_cpu_us_per_record": round(int(ticks) / int(hz) * 1e6 / int(n), 1),
    "leader_log_lines": int(lines)}))
PY
}

for round in $(seq 1 "$ROUNDS"); do
  order=(all-up follower-down)
  [ $((round % 2)) -eq 0 ] && order=(follower-down all-up)
  for case in "${order[@]}"; do
    rm -rf "$RAFTLOG_DATA_DIR"
    "$ROOT/scripts/cluster.sh" up >/dev/null
    log "round $round: $case"
    # Unmeasured warm-up on every fresh cluster.
    "$CLI_BIN" bench produce --topic warm --partitions 1 --count 20000 --concurrency 64 \
      --record-bytes 1024 --records-per-request 1 >/dev/null
    if [ "$case" = follower-down ]; then
      l=$(leader_node)
      follower=$(( l % 3 + 1 ))
      "$ROOT/scripts/cluster.sh" kill "$follower" >/dev/null
    fi
    measure "$case" "$round"
    "$ROOT/scripts/cluster.sh" down >/dev/null
  done
done

python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
head = ["case", "round", "C=64 req/s", "p99 ms", "leader CPU µs/record", "leader log lines"]
table = [head] + [[r["case"], str(r["round"]), f"{r['req_s']:,}", f"{r['p99_ms']:.2f}",
                   f"{r['leader_cpu_us_per_record']}", str(r["leader_log_lines"])] for r in rows]
widths = [max(len(row[i]) for row in table) for i in range(len(head))]
for row in table:
    print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
PY
