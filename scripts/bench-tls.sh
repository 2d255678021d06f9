#!/usr/bin/env bash
# What TLS costs: 1 KiB produce at C=64 (one record per request, on a ProduceStream) on a local
# 3-node cluster with TLS on the client and peer port (`cluster.sh up --secure`) against the same
# cluster in plaintext, in ONE run (this machine is noisy: compare the ratio, not absolute figures
# across runs).
#
#   scripts/bench-tls.sh [--rounds N] [--count N]
#
# Each round starts a fresh cluster of each kind in turn, the order alternating by round, gives it
# the unmeasured warm-up of scripts/bench.sh (10,000 requests of 1 KiB at C=64), then measures
# --count requests (default 120,000) of random (incompressible) 1 KiB values, as scripts/bench.sh. Prints one JSON line per run, then per kind the median
# throughput and p50/p99 over the rounds and the ratio of the medians (TLS / plaintext).
set -euo pipefail
source "$(dirname "$0")/common.sh"
ENDPOINTS="127.0.0.1:8051,127.0.0.1:8052,127.0.0.1:8053"
ROUNDS=3 COUNT=120000
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=${2:-}; shift 2 || true; [[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "--rounds takes a positive number" ;;
    --count) COUNT=${2:-}; shift 2 || true; [[ "$COUNT" =~ ^[1-9][0-9]*$ ]] || die "--count takes a positive number" ;;
    *) die "usage: $0 [--rounds N] [--count N]" ;;
  esac
done
[ -x "$CLI_BIN" ] && [ -x "$NODE_BIN" ] || "$ROOT/scripts/build.sh"
command -v jq >/dev/null || die "needs jq"

export RAFTLOG_DATA_DIR=""
results="$(mktemp /tmp/raftlog-bench-tls.XXXXXX.jsonl)"
cleanup() {
  if [ -n "$RAFTLOG_DATA_DIR" ]; then
    "$ROOT/scripts/cluster.sh" down >/dev/null 2>&1 || true
    rm -rf "$RAFTLOG_DATA_DIR"
  fi
  rm -f "$results"
}
trap cleanup EXIT

# The CLI against the running cluster, with its TLS files when it is secure.
cli() {
  local tls=()
  if [ -f "$RAFTLOG_DATA_DIR/pki/ca.pem" ]; then
    tls=(--tls-ca "$RAFTLOG_DATA_DIR/pki/ca.pem" --tls-cert "$RAFTLOG_DATA_DIR/pki/admin.pem" --tls-key "$RAFTLOG_DATA_DIR/pki/admin-key.pem")
  fi
  RAFTLOG_ENDPOINTS="$ENDPOINTS" "$CLI_BIN" --json "${tls[@]}" "$@" | tail -n 1
}

# run ROUND KIND: a fresh cluster of KIND (plaintext or tls), warmed up, then measured.
run() {
  local round=$1 kind=$2 line
  RAFTLOG_DATA_DIR="$(mktemp -d /tmp/raftlog-bench-tls.XXXXXX)"
  RAFTLOG_NO_BUILD=1 "$ROOT/scripts/cluster.sh" up $([ "$kind" = tls ] && echo --secure) >/dev/null
  cli bench produce --payload random --topic b-warm-up --count 10000 --concurrency 64 --record-bytes 1024 >/dev/null
  line=$(cli bench produce --payload random --topic b-1KiB-C64 --count "$COUNT" --concurrency 64 --record-bytes 1024)
  echo "{\"round\":$round,\"kind\":\"$kind\",\"result\":$line}" | tee -a "$results"
  "$ROOT/scripts/cluster.sh" down >/dev/null
  rm -rf "$RAFTLOG_DATA_DIR"
  RAFTLOG_DATA_DIR=""
}

for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) = 1 ]; then run "$round" plaintext; run "$round" tls
  else run "$round" tls; run "$round" plaintext; fi
done

jq -rs '
  def median: sort | if length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  def row(k): map(select(.kind == k).result) as $r
    | {kind: k, runs: ($r | length), ops: ($r | map(.requests_per_s) | median),
       min: ($r | map(.requests_per_s) | min), max: ($r | map(.requests_per_s) | max),
       p50: ($r | map(.latency_us.p50 / 1000) | median), p99: ($r | map(.latency_us.p99 / 1000) | median)};
  [row("plaintext"), row("tls")] as $rows
  | ($rows[] | "\(.kind): \(.ops | floor) req/s median (\(.min | floor)-\(.max | floor) over \(.runs) runs), p50 \(.p50) ms, p99 \(.p99) ms"),
    "TLS / plaintext: \(($rows[1].ops / $rows[0].ops * 100) | floor) %"
' "$results"
