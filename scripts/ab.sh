#!/usr/bin/env bash
# A/B of two raftlog builds on this (noisy) machine: the same loads, the builds alternating, a
# fresh 3-node cluster per run, so both builds meet the same noise. Compare within one run.
#
#   scripts/ab.sh [--rounds N] [--payload random|fill] [--records N] [--c64-requests N] A B
#
# A, B: directories each holding a `raftlog-node` and a `raftlog` binary (copy them out of
# $CARGO_TARGET_DIR/release after building each version). Per run: the batching producer writes
# --records 1 KiB records (default 400000) over 4 partitions; node 1 reads them all back
# (catch-up); then --c64-requests single-record requests (default 60000) at C=64 on a
# ProduceStream, as many at C=64 as unary Produce calls, and 3000 at C=1 on that (filled)
# cluster. One JSON line per run on stdout, then a table. Besides the rates, the CPU time the
# three nodes spent per C=64 request (stream and unary): throughput on this machine moves with
# its noise, CPU per request much less, so it is the figure to compare for CPU-side changes. Builds
# alternate within a round, A first in odd rounds and B first in even ones, after one unmeasured
# warm-up cluster.
set -euo pipefail
source "$(dirname "$0")/common.sh"
ROUNDS=2 PAYLOAD=random RECORDS=400000 C64=60000
while [ $# -gt 2 ]; do
  case "$1" in
    --rounds) ROUNDS=$2 ;;
    --payload) PAYLOAD=$2 ;;
    --records) RECORDS=$2 ;;
    --c64-requests) C64=$2 ;;
    *) die "unknown option $1 (usage: scripts/ab.sh [--rounds N] [--payload random|fill] [--records N] [--c64-requests N] A B)" ;;
  esac
  shift 2
done
[ $# -eq 2 ] || die "usage: scripts/ab.sh [options] A B (directories with raftlog-node and raftlog)"
work="$(mktemp -d /tmp/raftlog-ab.XXXXXX)"
results="$work/results.jsonl"
export RAFTLOG_DATA_DIR="$work/data" RAFTLOG_NO_BUILD=1
# Results were printed as they came; the copies of both builds (~1 GB) and the data go.
cleanup() { "$ROOT/scripts/cluster.sh" down >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
labels=(A B)
dirs=("$1" "$2")
for i in 0 1; do
  for bin in raftlog-node raftlog; do
    [ -x "${dirs[$i]}/$bin" ] || die "${dirs[$i]}/$bin is not an executable"
  done
  # cluster.sh and the CLI paths come from CARGO_TARGET_DIR/release.
  mkdir -p "$work/${labels[$i]}/release"
  cp "${dirs[$i]}/raftlog-node" "${dirs[$i]}/raftlog" "$work/${labels[$i]}/release/"
done
sync # the copies are ~1 GB of dirty page cache; written back, not during a measured run

peak_rss() { # VmHWM of each node, MiB
  local n
  for n in 1 2 3; do
    awk '/VmHWM/ {printf "%d,", $2 / 1024}' "/proc/$(cat "$RAFTLOG_DATA_DIR/node-$n/pid")/status"
  done
}

cpu_ticks() { # utime + stime of the three nodes together, in clock ticks
  local n total=0 stat
  for n in 1 2 3; do
    stat=$(cat "/proc/$(cat "$RAFTLOG_DATA_DIR/node-$n/pid")/stat")
    stat=${stat##*) } # the fields after the command name; utime and stime are the 12th and 13th
    total=$((total + $(echo "$stat" | awk '{print $12 + $13}')))
  done
  echo "$total"
}

# The first cluster started after this script starts runs slow, even with the writeback above
# done: without a warm-up, build A's first round came out low in nearly every run. So one fresh
# cluster of A takes a short load first and is not measured. The load includes C=64: behind a
# producer-only warm-up A's first C=64 round still came out ~10 % low (CPU per request +12 %).
# (docs/benchmarks.md, "Two builds against each other".)
export CARGO_TARGET_DIR="$work/A"
rm -rf "$RAFTLOG_DATA_DIR"
"$ROOT/scripts/cluster.sh" up >/dev/null
log "warm-up (not measured)"
"$work/A/release/raftlog" bench produce --producer --topic warm --partitions 4 --count 50000 \
  --record-bytes 1024 --payload "$PAYLOAD" >/dev/null
"$work/A/release/raftlog" bench produce --topic warm-c64 --partitions 1 --count "$C64" \
  --concurrency 64 --record-bytes 1024 --payload "$PAYLOAD" >/dev/null
"$ROOT/scripts/cluster.sh" down >/dev/null

for round in $(seq 1 "$ROUNDS"); do
  # A first in odd rounds, B first in even ones: neither build always meets what the machine
  # does at the start of a round.
  order=("${labels[@]}")
  [ $((round % 2)) -eq 0 ] && order=(B A)
  for label in "${order[@]}"; do
    export CARGO_TARGET_DIR="$work/$label"
    cli="$CARGO_TARGET_DIR/release/raftlog"
    rm -rf "$RAFTLOG_DATA_DIR"
    "$ROOT/scripts/cluster.sh" up >/dev/null
    log "round $round, build $label: producer, catch-up, C=64, C=1"
    producer=$("$cli" bench produce --producer --topic ab --partitions 4 --count "$RECORDS" \
      --record-bytes 1024 --payload "$PAYLOAD" | tail -n 1)
    consume=$("$cli" bench consume --topic ab --count "$RECORDS" --endpoint 127.0.0.1:8051 | tail -n 1)
    rss=$(peak_rss)
    ticks_before=$(cpu_ticks)
    c64=$("$cli" bench produce --topic ab-c64 --partitions 1 --count "$C64" --concurrency 64 \
      --record-bytes 1024 --records-per-request 1 --payload "$PAYLOAD" | tail -n 1)
    c64_cpu_ticks=$(($(cpu_ticks) - ticks_before))
    ticks_before=$(cpu_ticks)
    unary=$("$cli" bench produce --topic ab-unary --partitions 1 --count "$C64" --concurrency 64 \
      --record-bytes 1024 --unary --payload "$PAYLOAD" | tail -n 1)
    unary_cpu_ticks=$(($(cpu_ticks) - ticks_before))
    c1=$("$cli" bench produce --topic ab-c1 --partitions 1 --count 3000 --concurrency 1 \
      --record-bytes 1024 --records-per-request 1 --payload "$PAYLOAD" | tail -n 1)
    "$ROOT/scripts/cluster.sh" down >/dev/null
    python3 - "$label" "$round" "$producer" "$consume" "$c64" "$c1" "${rss%,}" \
    "$c64_cpu_ticks" "$(getconf CLK_TCK)" "$C64" "$unary" "$unary_cpu_ticks" <<'PY' | tee -a "$results"
import json, sys
label, rnd, p, c, c64, c1, rss, ticks, hz, n, unary, unary_ticks = sys.argv[1:]
p, c, c64, c1, unary = (json.loads(x) for x in (p, c, c64, c1, unary))
us_per_req = lambda t: round(int(t) / int(hz) * 1e6 / int(n), 1)
print(json.dumps({"build": label, "round": int(rnd), "payload": c64["payload"],
    "producer_mb_s": round(p["mb_per_s"], 1), "catchup_mb_s": round(c["mb_per_s"], 1),
    "c64_req_s": round(c64["requests_per_s"]), "c64_p99_ms": c64["latency_us"]["p99"] / 1000,
    "c64_node_cpu_us_per_req": us_per_req(ticks),
    "unary_req_s": round(unary["requests_per_s"]), "unary_p99_ms": unary["latency_us"]["p99"] / 1000,
    "unary_node_cpu_us_per_req": us_per_req(unary_ticks),
    "c1_p50_ms": c1["latency_us"]["p50"] / 1000, "c1_p99_ms": c1["latency_us"]["p99"] / 1000,
    "peak_rss_mib": [int(x) for x in rss.split(",")]}))
PY
  done
done

python3 - "$results" "$1" "$2" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"\nA = {sys.argv[2]}\nB = {sys.argv[3]}\npayload {rows[0]['payload']}")
head = ["build", "round", "producer MB/s", "catch-up MB/s", "C=64 req/s", "C=64 p99 ms",
        "C=64 node CPU µs/req", "unary req/s", "unary p99 ms", "unary node CPU µs/req",
        "C=1 p50 ms", "C=1 p99 ms", "peak RSS MiB (nodes 1/2/3)"]
table = [head] + [[r["build"], str(r["round"]), f"{r['producer_mb_s']}", f"{r['catchup_mb_s']}",
                   f"{r['c64_req_s']:,}", f"{r['c64_p99_ms']:.2f}", f"{r['c64_node_cpu_us_per_req']}",
                   f"{r['unary_req_s']:,}", f"{r['unary_p99_ms']:.2f}", f"{r['unary_node_cpu_us_per_req']}",
                   f"{r['c1_p50_ms']:.2f}", f"{r['c1_p99_ms']:.2f}", "/".join(map(str, r["peak_rss_mib"]))] for r in rows]
widths = [max(len(row[i]) for row in table) for i in range(len(head))]
for row in table:
    print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
PY
