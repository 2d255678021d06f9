#!/usr/bin/env bash
# Produce throughput and latency of a local 3-node raftlog cluster, side by side with a local
# 3-node NATS JetStream cluster, in ONE run (this machine is noisy: compare the ratios, not
# absolute figures across runs).
#
#   scripts/bench.sh [--rounds N] [--quick] [--no-nats | --nats-only] [--queue-only]
#                    [--payload random|fill]
#
# 1. The comparison, --rounds times (default 3). Each round starts a fresh cluster of each system
#    in turn, the order rotating by round so no system always meets the machine's state at the
#    start of a round: raftlog; NATS JetStream with `sync: always` (fsync per write, as raftlog
#    does); NATS with its default sync (fsync every 2 min; only nats-server >= 2.10 has
#    `always`). Every fresh cluster first takes the same unmeasured warm-up (10,000 requests of
#    1 KiB at C=64 on a topic of its own). Then the closed-loop loads of `raftlog bench produce`
#    (C requests in flight, each waiting for its ack): 1 KiB at C=1, C=64 and C=256, 100 B at
#    C=64, one record per request. raftlog runs each load three times: on one pipelined
#    ProduceStream, as one unary Produce call per request through raftlog's client, and the same
#    through the stub tonic generates from proto/ (what a program that only has the proto does
#    first). NATS's client publishes to the stream's leader (as raftlog's client follows its
#    leader), R3, file storage. raftlog acks after fsync on a majority. Then the queue load (see
#    QUEUE_COUNT below), against NATS's durable pull consumer with explicit acks.
# 2. raftlog only, once, on a fresh cluster: 8 partitions at C=64; 100 records per request; the
#    batching producer writing 1M 1 KiB records, then read back from node 1 (catch-up); end-to-end
#    latency at 2,000 records/s, pushed (Subscribe) and pulled (long-poll Fetch); then 2,000 more
#    topics of 4 partitions and the 1 KiB C=64 load again (it should match); and group commit off
#    (RAFTLOG_GROUP_COMMIT_MAX=1) at C=64 on a cluster of its own, for comparison.
# Prints one JSON line per run (with the peak RSS of the largest node), then the tables: every
# round's figures, and per load the median with the spread (min-max) over the rounds and the
# ratios of the medians.
# --quick divides every count by 4; --no-nats skips NATS, --nats-only runs only NATS;
# --queue-only runs only the queue loads of the comparison (part 1).
# --payload: what record values hold, for every system. "random" (the default): distinct,
# incompressible bytes, like real data. "fill": b'x' repeated, which RocksDB's LZ4 shrinks ~250x
# on its way to disk (flatters raftlog; NATS does not compress), kept to compare with old tables.
set -euo pipefail
source "$(dirname "$0")/common.sh"
ENDPOINTS="127.0.0.1:8051,127.0.0.1:8052,127.0.0.1:8053"
SCALE=1 NATS=1 RAFTLOG=1 PAYLOAD=random ROUNDS=3 QUEUE_ONLY=0
usage="usage: $0 [--rounds N] [--quick] [--no-nats | --nats-only] [--queue-only] [--payload random|fill]"
while [ $# -gt 0 ]; do
  arg=$1
  shift
  case "$arg" in
    --quick) SCALE=4 ;;
    --rounds)
      ROUNDS=${1:-}
      shift || true
      [[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "--rounds takes a positive number"
      ;;
    --payload)
      PAYLOAD=${1:-}
      shift || true
      case "$PAYLOAD" in random | fill) ;; *) die "--payload takes random or fill" ;; esac
      ;;
    --no-nats) NATS=0 ;;
    --nats-only) RAFTLOG=0 ;;
    --queue-only) QUEUE_ONLY=1 ;;
    *) die "$usage" ;;
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

# The compared loads: name record_bytes concurrency count. The C=64 and C=256 rows run 120k
# requests (4-7 s each): at 40k (~1.5 s) one flush or compaction moved a row by 20 % on this
# noisy 2-core machine.
COMPARED=(
  "1KiB-C1    1024   1   3000"
  "1KiB-C64   1024  64 120000"
  "1KiB-C256  1024 256 120000"
  "100B-C64    100  64 120000"
)
CATCHUP_COUNT=$((1000000 / SCALE)) CATCHUP_PARTITIONS=4 E2E_RATE=2000 MANY_TOPICS=$((2000 / SCALE))
# The queue load: a producer (64 in flight) appends this many 1 KiB records while 16 workers
# receive up to 10 at a time and ack each one (`raftlog bench queue`), then the same with workers
# taking records pushed over a stream (`--stream`: raftlog's ReceiveStream with 10 in flight per
# worker, NATS's `messages()` pulling 10 at a time); raftlog also key-ordered
# with 1,000 keys (NATS has no per-key order). In the tables its req/s are acked records/s and its
# latency is from each record's send to its ack; raftlog's row is labelled "stream" (its
# producer uses the stream).
QUEUE_COUNT=$((40000 / SCALE))
[ "$QUEUE_ONLY" = 0 ] || COMPARED=()

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

# record round name system setting rss json-line
record() {
  echo "{\"round\":$1,\"name\":\"$2\",\"system\":\"$3\",\"setting\":\"$4\",\"peak_rss_mb\":$5,\"result\":$6}" |
    tee -a "$results"
}

# One bench run: its JSON line on stdout. A failed run shows its stderr and is left out of the
# tables (the script goes on with the next one, and exits non-zero at the end).
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

raftlog_up() { # [group_commit_max]
  RAFTLOG_DATA_DIR="$(mktemp -d /tmp/raftlog-bench.XXXXXX)"
  RAFTLOG_GROUP_COMMIT_MAX=${1:-1024} "$ROOT/scripts/cluster.sh" up >/dev/null
  warm_up raftlog
}
raftlog_down() {
  "$ROOT/scripts/cluster.sh" down >/dev/null
  rm -rf "$RAFTLOG_DATA_DIR"
}

# compared_raftlog ROUND: the compared loads on a fresh raftlog cluster: stream, unary, and unary
# through the generated stub.
compared_raftlog() {
  local round=$1 row name bytes conc count transport line
  raftlog_up
  for row in "${COMPARED[@]}"; do
    read -r name bytes conc count <<<"$row"
    for transport in stream unary generated; do
      line=$(cli bench produce --payload "$PAYLOAD" \
        $(case "$transport" in unary) echo --unary ;; generated) echo --unary --generated-client ;; esac) \
        --topic "b-$name-$transport" --count $((count / SCALE)) --concurrency "$conc" \
        --record-bytes "$bytes") || { failures=$((failures + 1)); continue; }
      record "$round" "$name" raftlog "$transport" "$(raftlog_rss)" "$line"
    done
  done
  for load in "0 receive" "0 stream" "1000 receive"; do
    read -r keys workers <<<"$load"
    name=queue-1KiB-16w$([ "$workers" = receive ] || echo "-stream")$([ "$keys" = 0 ] || echo "-${keys}keys")
    line=$(cli bench queue --payload "$PAYLOAD" --topic "b-$name" --count "$QUEUE_COUNT" \
      $([ "$keys" = 0 ] || echo --keys "$keys") $([ "$workers" = receive ] || echo --stream)) ||
      { failures=$((failures + 1)); continue; }
    record "$round" "$name" raftlog stream "$(raftlog_rss)" "$line"
  done
  raftlog_down
}

# compared_nats ROUND SYNC: the compared loads on a fresh NATS cluster.
compared_nats() {
  local round=$1 sync=$2 row name bytes conc count line
  "$ROOT/scripts/nats-cluster.sh" up --sync "$sync" >/dev/null
  warm_up nats
  for row in "${COMPARED[@]}"; do
    read -r name bytes conc count <<<"$row"
    line=$(cli bench produce --payload "$PAYLOAD" --system nats --topic "b-$name" \
      --count $((count / SCALE)) --concurrency "$conc" --record-bytes "$bytes") ||
      { failures=$((failures + 1)); continue; }
    record "$round" "$name" nats "$sync" "$(nats_rss)" "$line"
  done
  for workers in receive stream; do
    name=queue-1KiB-16w$([ "$workers" = receive ] || echo "-stream")
    if line=$(cli bench queue --system nats --payload "$PAYLOAD" --topic "b-$name" \
      --count "$QUEUE_COUNT" $([ "$workers" = receive ] || echo --stream)); then
      record "$round" "$name" nats "$sync" "$(nats_rss)" "$line"
    else
      failures=$((failures + 1))
    fi
  done
  "$ROOT/scripts/nats-cluster.sh" down >/dev/null
}

systems=()
[ "$RAFTLOG" = 1 ] && systems+=(raftlog)
if [ "$NATS" = 1 ]; then
  if "$ROOT/scripts/nats-cluster.sh" supports-sync-always; then
    systems+=(nats-always)
  else
    log "this nats-server has no 'sync_interval: always': NATS runs only with its default sync (see docs/benchmarks.md)"
  fi
  systems+=(nats-default)
fi
for round in $(seq 1 "$ROUNDS"); do
  n=${#systems[@]}
  for i in $(seq 0 $((n - 1))); do
    system=${systems[$(((i + round - 1) % n))]}
    log "round $round of $ROUNDS: $system"
    case "$system" in
      raftlog) compared_raftlog "$round" ;;
      nats-always) compared_nats "$round" always ;;
      nats-default) compared_nats "$round" default ;;
    esac
  done
done

if [ "$RAFTLOG" = 1 ] && [ "$QUEUE_ONLY" = 0 ]; then
  log "raftlog alone: partitions, batches, producer, catch-up, end to end, many topics"
  raftlog_up
  line=$(cli bench produce --payload "$PAYLOAD" --topic b-1KiB-C64-p8 --partitions 8 \
    --count $((120000 / SCALE)) --concurrency 64 --record-bytes 1024) &&
    record 0 1KiB-C64-p8 raftlog stream "$(raftlog_rss)" "$line" || failures=$((failures + 1))
  line=$(cli bench produce --payload "$PAYLOAD" --topic b-1KiB-batch100 --count $((200000 / SCALE)) \
    --concurrency 8 --record-bytes 1024 --records-per-request 100) &&
    record 0 1KiB-batch100 raftlog stream "$(raftlog_rss)" "$line" || failures=$((failures + 1))
  line=$(cli bench produce --payload "$PAYLOAD" --producer --topic b-catchup --partitions "$CATCHUP_PARTITIONS" \
    --count "$CATCHUP_COUNT" --record-bytes 1024) &&
    record 0 producer-1KiB raftlog producer "$(raftlog_rss)" "$line" &&
    line=$(cli bench consume --topic b-catchup --count "$CATCHUP_COUNT" --endpoint 127.0.0.1:8051) &&
    record 0 consume-1KiB raftlog fetch "$(raftlog_rss)" "$line" ||
    failures=$((failures + 1))
  # End-to-end latency at a steady rate: send to receipt by a consumer on node 1, pushed
  # (Subscribe) or pulled (long-poll Fetch).
  for mode in push pull; do
    line=$(cli bench e2e --payload "$PAYLOAD" --mode "$mode" --topic "b-e2e-$mode" \
      --rate "$E2E_RATE" --duration-secs $((20 / SCALE)) --linger-ms 0 \
      --endpoint 127.0.0.1:8051) &&
      record 0 "e2e-$mode" raftlog "$mode" "$(raftlog_rss)" "$line" ||
      failures=$((failures + 1))
  done
  # 1 KiB C=64 again, now that the cluster holds many more topics: what an entry costs must
  # not grow with the topic count.
  log "creating $MANY_TOPICS topics of 4 partitions"
  if seq 1 "$MANY_TOPICS" | RAFTLOG_ENDPOINTS="$ENDPOINTS" xargs -P 8 -I{} \
      "$CLI_BIN" topic create "b-many-{}" --partitions 4 >/dev/null 2>"$errors"; then
    line=$(cli bench produce --payload "$PAYLOAD" --topic b-1KiB-C64-many --count $((120000 / SCALE)) \
      --concurrency 64 --record-bytes 1024) &&
      record 0 "1KiB-C64-${MANY_TOPICS}topics" raftlog stream "$(raftlog_rss)" "$line" ||
      failures=$((failures + 1))
  else
    tail -n 5 "$errors" >&2
    log "FAILED: creating $MANY_TOPICS topics"
    failures=$((failures + 1))
  fi
  raftlog_down
  log "raftlog, group commit off: 1 KiB C=64"
  raftlog_up 1
  line=$(cli bench produce --payload "$PAYLOAD" --topic b-1KiB-C64-gc-off --count $((120000 / SCALE)) \
    --concurrency 64 --record-bytes 1024) &&
    record 0 1KiB-C64 raftlog "stream, group commit off" "$(raftlog_rss)" "$line" ||
    failures=$((failures + 1))
  raftlog_down
fi

python3 "$ROOT/scripts/py/bench_tables.py" "$results"
[ "$failures" = 0 ] || die "$failures run(s) failed (see above)"
