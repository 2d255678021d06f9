#!/usr/bin/env bash
# Produce throughput and latency of a local 3-node raftlog cluster, side by side with a local
# 3-node NATS JetStream cluster, in ONE run (this machine is noisy: compare the ratios, not
# absolute figures across runs).
#
#   scripts/bench.sh [--quick] [--no-nats | --nats-only] [--payload random|fill]
#
# 1. raftlog, group commit off (RAFTLOG_GROUP_COMMIT_MAX=1: every request its own Raft entry,
#    proposed at once as before group commit), the C=64 rows only; then group commit on (1024:
#    requests that arrive together share one entry), every row. Each is a fresh cluster running
#    the closed-loop load of `raftlog bench produce` (C requests in flight, each waiting for its
#    replicated, fsynced ack): 1 KiB and 100 B records, C=1 and C=64, 1 and 8 partitions, and 100
#    records per request (what the batching producer sends). Requests go on one pipelined
#    ProduceStream; the C=64 rows also run with one unary Produce call per request (--unary).
# 2. On the group-commit cluster, catch-up consumption: 1M 1 KiB records written through the
#    batching idempotent producer (`bench produce --producer`, its MB/s is printed too), then read
#    back from node 1 (`bench consume`), every partition in parallel.
#    Then end-to-end latency (`bench e2e`): 2,000 records/s for 20 s through the producer (linger
#    0), received by a consumer on node 1, pushed (Subscribe) and pulled (long-poll Fetch).
#    Last, 2,000 more topics of 4 partitions are created and the 1 KiB C=64 load runs again
#    (row 1KiB-C64-2000topics): it should match the 1KiB-C64 row.
# 3. NATS JetStream (scripts/nats-cluster.sh: stream with 3 replicas, file storage), the same
#    1KiB-C1, 1KiB-C64 and 100B-C64 loads (`bench produce --system nats`), once per sync mode the
#    installed nats-server has: "default" (fsync every 2 min) always; "always" (fsync per write)
#    only with nats-server >= 2.10 (Debian bookworm's 2.9.10 does not have it).
# Every fresh cluster, raftlog's and NATS's alike, first takes the same unmeasured warm-up (10,000
# requests of 1 KiB at C=64 on a topic of its own): a cluster's first seconds run slow on this
# kind of machine (scripts/ab.sh saw it in nearly every run), and a row measures the steady state.
# Prints one JSON line per run (with the peak RSS of the largest node), then one table.
# --quick divides every count by 4; --no-nats skips step 3, --nats-only runs only step 3.
# --payload: what record values hold, for every system. "random" (the default): distinct,
# incompressible bytes, like real data. "fill": b'x' repeated, which RocksDB's LZ4 shrinks ~250x
# on its way to disk (flatters raftlog; NATS does not compress), kept to compare with old tables.
set -euo pipefail
source "$(dirname "$0")/common.sh"
ENDPOINTS="127.0.0.1:8051,127.0.0.1:8052,127.0.0.1:8053"
SCALE=1 NATS=1 RAFTLOG=1 PAYLOAD=random
while [ $# -gt 0 ]; do
  arg=$1
  shift
  case "$arg" in
    --quick) SCALE=4 ;;
    --payload)
      PAYLOAD=${1:-}
      shift || true
      case "$PAYLOAD" in random | fill) ;; *) die "--payload takes random or fill" ;; esac
      ;;
    --no-nats) NATS=0 ;;
    --nats-only) RAFTLOG=0 ;;
    *) die "usage: $0 [--quick] [--no-nats | --nats-only] [--payload random|fill]" ;;
  esac
done
[ -x "$CLI_BIN" ] && { [ "$RAFTLOG" = 0 ] || [ -x "$NODE_BIN" ]; } || "$ROOT/scripts/build.sh"
[ "$NATS$RAFTLOG" != 00 ] || die "--no-nats and --nats-only leave nothing to run"

export RAFTLOG_DATA_DIR NATS_DATA_DIR
NATS_DATA_DIR="$(mktemp -d /tmp/raftlog-bench-nats.XXXXXX)"
results="$(mktemp /tmp/raftlog-bench.XXXXXX.jsonl)" errors="$(mktemp /tmp/raftlog-bench.XXXXXX.err)"
cleanup() {
  if [ -n "${RAFTLOG_DATA_DIR:-}" ]; then # only the cluster this script started
    "$ROOT/scripts/cluster.sh" down >/dev/null 2>&1 || true
    rm -rf "$RAFTLOG_DATA_DIR"
  fi
  [ "$NATS" = 1 ] && "$ROOT/scripts/nats-cluster.sh" down >/dev/null 2>&1 || true
  rm -rf "$NATS_DATA_DIR"
  rm -f "$results" "$errors"
}
trap cleanup EXIT

# name record_bytes concurrency partitions records_per_request count group-commit-off-too nats-too
# The C=64 rows run 120k requests (4-7 s each): at 40k (~1.5 s) one flush or compaction moved a
# row by 20 % on this noisy 2-core machine.
MATRIX=(
  "1KiB-C1       1024  1  1   1   2000 no  yes"
  "1KiB-C64      1024 64  1   1 120000 yes yes"
  "100B-C64       100 64  1   1 120000 yes yes"
  "1KiB-C64-p8   1024 64  8   1 120000 yes no"
  "1KiB-batch100 1024  8  1 100 200000 no  no"
)
CATCHUP_COUNT=$((1000000 / SCALE)) CATCHUP_PARTITIONS=4 E2E_RATE=2000 MANY_TOPICS=$((2000 / SCALE))

peak_rss_mb() { # the largest VmHWM of the given pid files, in MiB
  local max=0 kb f
  for f in "$@"; do
    kb=$(awk '/VmHWM/ {print $2}' "/proc/$(cat "$f")/status" 2>/dev/null || echo 0)
    [ "${kb:-0}" -gt "$max" ] && max=$kb
  done
  echo $((max / 1024))
}
raftlog_rss() { peak_rss_mb "$RAFTLOG_DATA_DIR"/node-{1,2,3}/pid; }
nats_rss() { peak_rss_mb "$NATS_DATA_DIR"/n{1,2,3}/pid; }

# record name system setting rss json-line
record() {
  echo "{\"name\":\"$1\",\"system\":\"$2\",\"setting\":\"$3\",\"peak_rss_mb\":$4,\"result\":$5}" | tee -a "$results"
}

# One bench run: its JSON line on stdout. A failed run shows its stderr and is left out of the
# table (the script goes on with the next one, and exits non-zero at the end).
failures=0
cli() {
  local out
  if ! out=$(RAFTLOG_ENDPOINTS="$ENDPOINTS" "$CLI_BIN" --json "$@" 2>"$errors"); then
    tail -n 20 "$errors" >&2
    log "FAILED: raftlog $*"
    return 1
  fi
  tail -n 1 <<<"$out"
}

# The unmeasured warm-up of a fresh cluster of system $1 (raftlog or nats); a failure counts.
warm_up() {
  cli bench produce --payload "$PAYLOAD" --system "$1" --topic b-warm-up --count $((10000 / SCALE)) \
    --concurrency 64 --record-bytes 1024 >/dev/null || failures=$((failures + 1))
}

for gc in 1 1024; do
  [ "$RAFTLOG" = 1 ] || break
  RAFTLOG_DATA_DIR="$(mktemp -d /tmp/raftlog-bench.XXXXXX)"
  RAFTLOG_GROUP_COMMIT_MAX=$gc "$ROOT/scripts/cluster.sh" up >/dev/null
  warm_up raftlog
  for row in "${MATRIX[@]}"; do
    read -r name bytes conc parts per count gc_off _ <<<"$row"
    [ "$gc" = 1 ] && [ "$gc_off" != yes ] && continue
    line=$(cli bench produce --payload "$PAYLOAD" --topic "b-$name" --partitions "$parts" --count $((count / SCALE)) \
      --concurrency "$conc" --record-bytes "$bytes" --records-per-request "$per") || { failures=$((failures + 1)); continue; }
    record "$name" raftlog "gc$gc" "$(raftlog_rss)" "$line"
    # The same load as one unary Produce call per request instead of the pipelined stream.
    if [ "$gc" = 1024 ] && [ "$gc_off" = yes ]; then
      line=$(cli bench produce --payload "$PAYLOAD" --unary --topic "b-$name-unary" --partitions "$parts" \
        --count $((count / SCALE)) --concurrency "$conc" --record-bytes "$bytes" \
        --records-per-request "$per") || { failures=$((failures + 1)); continue; }
      record "$name" raftlog "gc$gc-unary" "$(raftlog_rss)" "$line"
    fi
  done
  if [ "$gc" = 1024 ]; then
    line=$(cli bench produce --payload "$PAYLOAD" --producer --topic b-catchup --partitions "$CATCHUP_PARTITIONS" \
      --count "$CATCHUP_COUNT" --record-bytes 1024) &&
      record producer-1KiB raftlog "gc$gc" "$(raftlog_rss)" "$line" &&
      line=$(cli bench consume --topic b-catchup --count "$CATCHUP_COUNT" --endpoint 127.0.0.1:8051) &&
      record consume-1KiB raftlog "gc$gc" "$(raftlog_rss)" "$line" ||
      failures=$((failures + 1))
    # End-to-end latency at a steady rate: send to receipt by a consumer on node 1, pushed
    # (Subscribe) or pulled (long-poll Fetch).
    for mode in push pull; do
      line=$(cli bench e2e --payload "$PAYLOAD" --mode "$mode" --topic "b-e2e-$mode" \
        --rate "$E2E_RATE" --duration-secs $((20 / SCALE)) --linger-ms 0 \
        --endpoint 127.0.0.1:8051) &&
        record "e2e-$mode" raftlog "gc$gc" "$(raftlog_rss)" "$line" ||
        failures=$((failures + 1))
    done
    # 1 KiB C=64 again, now that the cluster holds many more topics: what an entry costs must
    # not grow with the topic count (it did until applying stopped copying the topic table).
    log "creating $MANY_TOPICS topics of 4 partitions"
    if seq 1 "$MANY_TOPICS" | RAFTLOG_ENDPOINTS="$ENDPOINTS" xargs -P 8 -I{} \
        "$CLI_BIN" topic create "b-many-{}" --partitions 4 >/dev/null 2>"$errors"; then
      line=$(cli bench produce --payload "$PAYLOAD" --topic b-1KiB-C64-many --count $((120000 / SCALE)) \
        --concurrency 64 --record-bytes 1024) &&
        record "1KiB-C64-${MANY_TOPICS}topics" raftlog "gc$gc" "$(raftlog_rss)" "$line" ||
        failures=$((failures + 1))
    else
      tail -n 5 "$errors" >&2
      log "FAILED: creating $MANY_TOPICS topics"
      failures=$((failures + 1))
    fi
  fi
  "$ROOT/scripts/cluster.sh" down >/dev/null
  rm -rf "$RAFTLOG_DATA_DIR"
done

if [ "$NATS" = 1 ]; then
  syncs=(default)
  if "$ROOT/scripts/nats-cluster.sh" supports-sync-always; then
    syncs+=(always)
  else
    log "this nats-server has no 'sync_interval: always': NATS runs only with its default sync (see docs/benchmarks.md)"
  fi
  for sync in "${syncs[@]}"; do
    "$ROOT/scripts/nats-cluster.sh" up --sync "$sync"
    warm_up nats
    for row in "${MATRIX[@]}"; do
      read -r name bytes conc parts per count _ nats <<<"$row"
      [ "$nats" = yes ] || continue
      line=$(cli bench produce --payload "$PAYLOAD" --system nats --topic "b-$name" --count $((count / SCALE)) \
        --concurrency "$conc" --record-bytes "$bytes") || { failures=$((failures + 1)); continue; }
      record "$name" nats "$sync" "$(nats_rss)" "$line"
    done
    "$ROOT/scripts/nats-cluster.sh" down
  done
fi

python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {(r["name"], r["system"], r["setting"]): r for r in rows}
def label(r):
    if r["system"] == "raftlog":
        gc = "group commit " + ("off" if r["setting"] == "gc1" else "on")
        return f"raftlog, {gc}, " + ("unary Produce" if r["setting"].endswith("unary") else "ProduceStream")
    sync = "fsync per write" if r["setting"] == "always" else "default sync (no fsync per write)"
    return f"NATS {r['result']['nats']['server_version']}, {sync}"
order = {("raftlog", "gc1024"): 0, ("raftlog", "gc1024-unary"): 1, ("raftlog", "gc1"): 2,
         ("nats", "default"): 3, ("nats", "always"): 4}
table = [["run", "system", "req/s", "MB/s", "p50 ms", "p99 ms", "peak RSS MiB", "raftlog on / this"]]
# Runs in matrix order (the group-commit-on pass runs every row; the off pass came first).
for name in dict.fromkeys(r["name"] for r in sorted(rows, key=lambda r: not r["setting"].startswith("gc1024"))):
    if name in ("producer-1KiB", "consume-1KiB") or name.startswith("e2e-"):
        continue
    base = by.get((name, "raftlog", "gc1024"))
    for r in sorted((r for r in rows if r["name"] == name), key=lambda r: order[(r["system"], r["setting"])]):
        x = r["result"]
        ratio = f"{base['result']['requests_per_s'] / x['requests_per_s']:.2f}" if base and r is not base else ""
        table.append([name, label(r), f"{x['requests_per_s']:,.0f}", f"{x['mb_per_s']:.1f}",
                      f"{x['latency_us']['p50'] / 1000:.2f}", f"{x['latency_us']['p99'] / 1000:.2f}",
                      str(r["peak_rss_mb"]), ratio])
widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
print()
print(f"Closed loop, 1 record per request unless noted, payload {rows[0]['result'].get('payload', '?')}; raftlog acks after fsync on a majority; NATS: R3 stream, file storage.")
print("'raftlog on / this': raftlog with group commit divided by the row (above 1: raftlog is faster).")
for i, row in enumerate(table):
    print("  ".join(c.ljust(w) if j < 2 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))))
p, c = by.get(("producer-1KiB", "raftlog", "gc1024")), by.get(("consume-1KiB", "raftlog", "gc1024"))
if p:
    p = p["result"]
    print(f"batching producer, 1 KiB, {p['partitions']} partitions: {p['records']:,} records in "
          f"{p['seconds']:.1f} s, {p['records_per_s']:,.0f} records/s, {p['mb_per_s']:.1f} MB/s")
if c:
    c = c["result"]
    print(f"catch-up consume from {c['endpoint']} ({c['node_role']}), {c['partitions']} partitions: "
          f"{c['records']:,} records in {c['seconds']:.2f} s, {c['records_per_s']:,.0f} records/s, "
          f"{c['mb_per_s']:.1f} MB/s")
for mode in ("push", "pull"):
    e = by.get((f"e2e-{mode}", "raftlog", "gc1024"))
    if e:
        e = e["result"]
        lat, ack = e["e2e_latency_us"], e["ack_latency_us"]
        print(f"end to end, {e['rate']:,} records/s of {e['record_bytes']} B, consumer {mode} on {e['endpoint']}: "
              f"send to receipt p50 {lat['p50'] / 1000:.2f} ms, p99 {lat['p99'] / 1000:.2f} ms "
              f"(send to ack p50 {ack['p50'] / 1000:.2f} ms, p99 {ack['p99'] / 1000:.2f} ms)")
PY
[ "$failures" = 0 ] || die "$failures run(s) failed (see above)"
