#!/usr/bin/env bash
# What coordinated consumer groups cost and how fast they move, on a fresh 3-node cluster
# (docs/benchmarks.md, "Consumer groups"):
#   1. heartbeats: the nodes' CPU and the Raft entries appended per second, idle and then with
#      100 idle members of one group heartbeating (each long-polls: one heartbeat per interval,
#      2 s at the default 10 s session), over the same window;
#   2. rebalance: members read a 12-partition topic under a steady produce; each round one
#      member stops, by crashing (no leave: its session has to expire) or by leaving, and the
#      time until the others read every partition it had is reported.
#
#   scripts/bench-groups.sh [--rounds N] [--window SECS] [--members N]
#
# One JSON line per measurement, then a table. Uses the build in $CARGO_TARGET_DIR/release
# (RAFTLOG_NO_BUILD=1 to skip building).
set -euo pipefail
source "$(dirname "$0")/common.sh"
ROUNDS=3 WINDOW=30 MEMBERS=100
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2 ;;
    --window) WINDOW=$2 ;;
    --members) MEMBERS=$2 ;;
    *) die "unknown option $1 (usage: scripts/bench-groups.sh [--rounds N] [--window SECS] [--members N])" ;;
  esac
  shift 2
done
work="$(mktemp -d /tmp/raftlog-bench-groups.XXXXXX)"
results="$work/results.jsonl"
export RAFTLOG_DATA_DIR="$work/data"
cleanup() { "$ROOT/scripts/cluster.sh" down >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
[ "${RAFTLOG_NO_BUILD:-}" = 1 ] || "$ROOT/scripts/build.sh"
export RAFTLOG_NO_BUILD=1

all_ticks() { echo $(($(node_cpu_ticks 1) + $(node_cpu_ticks 2) + $(node_cpu_ticks 3))); }
log_index() { admin_get "127.0.0.1:909$1/metrics" | awk '/^raftlog_raft_last_log_index/ {print $2; exit}'; }
heartbeats() { # GroupHeartbeat requests node $1 answered
  admin_get "127.0.0.1:909$1/metrics" |
    awk '/^raftlog_requests_total\{method="GroupHeartbeat"/ {n += $2} END {print n + 0}'
}

# window CASE: CPU of the nodes, Raft entries and heartbeats over $WINDOW seconds.
window() {
  local case=$1 l t0 lt0 i0 h0
  l=$(leader_node)
  t0=$(all_ticks); lt0=$(node_cpu_ticks "$l"); i0=$(log_index "$l"); h0=$(heartbeats "$l")
  sleep "$WINDOW" # the measurement window itself
  python3 - "$case" "$WINDOW" "$(($(all_ticks) - t0))" "$(($(node_cpu_ticks "$l") - lt0))" \
    "$(($(log_index "$l") - i0))" "$(($(heartbeats "$l") - h0))" "$(getconf CLK_TCK)" <<'PY' | tee -a "$results"
import json, sys
case, secs, ticks, leader_ticks, entries, hbs, hz = sys.argv[1], *map(int, sys.argv[2:])
print(json.dumps({"bench": "heartbeats", "case": case, "window_s": secs,
    "cpu_pct_all_nodes": round(100 * ticks / hz / secs, 2),
    "cpu_pct_leader": round(100 * leader_ticks / hz / secs, 2),
    "raft_entries_per_s": round(entries / secs, 2),
    "heartbeats_per_s": round(hbs / secs, 1)}))
PY
}

log "starting a fresh 3-node cluster in $work"
"$ROOT/scripts/cluster.sh" up >/dev/null
"$CLI_BIN" topic create bench-group --partitions 12 >/dev/null

log "heartbeats: $WINDOW s idle"
window idle
log "heartbeats: $MEMBERS idle members joining"
"$CLI_BIN" bench group-members --topic bench-group --members "$MEMBERS" \
  --hold-secs $((WINDOW + 15)) --json >"$work/members.out" 2>"$work/members.err" &
members_pid=$!
# Wait for the joined line (the members print it once all are in), then let the joins' own
# rebalancing settle before measuring.
until grep -q '"joined"' "$work/members.out" 2>/dev/null; do
  kill -0 "$members_pid" 2>/dev/null || die "group-members failed: $(cat "$work/members.err")"
  sleep 0.2
done
sleep 5
log "heartbeats: $WINDOW s with $MEMBERS idle members"
window "$MEMBERS-members"
wait "$members_pid"

for stop in crash leave; do
  log "rebalance: $ROUNDS rounds, one of 4 members ${stop}s each round"
  "$CLI_BIN" bench rebalance --topic "bench-rebalance-$stop" --rounds "$ROUNDS" --stop "$stop" \
    --json | grep '"round"' | tee -a "$results"
done

python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print()
print("| heartbeats | CPU, 3 nodes | CPU, leader | Raft entries/s | heartbeats/s |")
print("|---|---:|---:|---:|---:|")
for r in rows:
    if r["bench"] == "heartbeats":
        print(f"| {r['case']} | {r['cpu_pct_all_nodes']} % | {r['cpu_pct_leader']} % | "
              f"{r['raft_entries_per_s']} | {r['heartbeats_per_s']} |")
print()
print("| rebalance (4 members, 12 partitions) | partitions moved | first read again | all read again |")
print("|---|---:|---:|---:|")
for r in rows:
    if r["bench"] == "rebalance":
        print(f"| {r['stop']}, round {r['round']} | {r['moved_partitions']} | "
              f"{r['first_taken_ms']} ms | {r['all_taken_ms']} ms |")
PY
