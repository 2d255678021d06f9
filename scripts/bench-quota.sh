#!/usr/bin/env bash
# How closely a produce quota holds a principal to its rate: on a local secured 3-node cluster
# (`cluster.sh up --secure`), a principal with a quota of Q produce bytes/s runs `raftlog bench
# produce` (1 KiB records, unary Produce, 64 in flight, far more than Q allows) for about
# --seconds, and its achieved record bytes/s is compared with Q, for each Q in turn.
#
#   scripts/bench-quota.sh [--seconds N] [--quotas "256KiB 1MiB 4MiB"]
#
# Prints one JSON line per run and a table: quota, achieved record bytes/s, their ratio, the
# throttled calls. A unary Produce is counted at its message size (the record plus ~20 bytes of
# request), so a principal held exactly to its quota gets ~98 % of it in record bytes; the
# bucket's one second of burst adds 1/seconds at the start.
set -euo pipefail
source "$(dirname "$0")/common.sh"
ENDPOINTS="127.0.0.1:8051,127.0.0.1:8052,127.0.0.1:8053"
SECONDS_PER_RUN=30 QUOTAS="256KiB 1MiB 4MiB"
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECONDS_PER_RUN=${2:-}; shift 2 || true; [[ "$SECONDS_PER_RUN" =~ ^[1-9][0-9]*$ ]] || die "--seconds takes a positive number" ;;
    --quotas) QUOTAS=${2:-}; shift 2 || true ;;
    *) die "usage: $0 [--seconds N] [--quotas \"256KiB 1MiB 4MiB\"]" ;;
  esac
done
[ -x "$CLI_BIN" ] && [ -x "$NODE_BIN" ] || "$ROOT/scripts/build.sh"
command -v jq >/dev/null || die "needs jq"

export RAFTLOG_DATA_DIR
RAFTLOG_DATA_DIR="$(mktemp -d /tmp/raftlog-bench-quota.XXXXXX)"
results="$(mktemp /tmp/raftlog-bench-quota.XXXXXX.jsonl)"
cleanup() {
  "$ROOT/scripts/cluster.sh" down >/dev/null 2>&1 || true
  rm -rf "$RAFTLOG_DATA_DIR" "$results"
}
trap cleanup EXIT

RAFTLOG_NO_BUILD=1 "$ROOT/scripts/cluster.sh" up --secure >/dev/null
PKI="$RAFTLOG_DATA_DIR/pki"
# As the admin (a super-user by its certificate).
admin() {
  RAFTLOG_ENDPOINTS="$ENDPOINTS" "$CLI_BIN" --json --tls-ca "$PKI/ca.pem" \
    --tls-cert "$PKI/admin.pem" --tls-key "$PKI/admin-key.pem" "$@"
}
token=$(admin token create --principal quota-bench | jq -r .token)
admin acl add --principal quota-bench --resource topic --name b-quota- --prefix --operation all >/dev/null

# Bytes in a size such as 256KiB or 4MiB.
bytes_of() {
  local n=${1%%[KMG]iB}
  case "$1" in
    *KiB) echo $((n * 1024)) ;; *MiB) echo $((n * 1024 * 1024)) ;; *GiB) echo $((n * 1024 * 1024 * 1024)) ;;
    *) echo "$1" ;;
  esac
}

for quota in $QUOTAS; do
  q=$(bytes_of "$quota")
  admin quota set --principal quota-bench --produce-bytes-per-sec "$q" >/dev/null
  count=$((q * SECONDS_PER_RUN / 1024))
  throttled_before=$(curl -fsS -H "Authorization: Bearer $(cat "$PKI/bootstrap.token")" \
    http://127.0.0.1:9091/metrics http://127.0.0.1:9092/metrics http://127.0.0.1:9093/metrics |
    awk '/^raftlog_throttled_total/ {s += $2} END {print s + 0}')
  line=$(RAFTLOG_ENDPOINTS="$ENDPOINTS" RAFTLOG_TOKEN="$token" "$CLI_BIN" --json --tls-ca "$PKI/ca.pem" \
    bench produce --unary --payload random --topic "b-quota-$quota" --count "$count" \
    --concurrency 64 --record-bytes 1024 | tail -n 1)
  throttled_after=$(curl -fsS -H "Authorization: Bearer $(cat "$PKI/bootstrap.token")" \
    http://127.0.0.1:9091/metrics http://127.0.0.1:9092/metrics http://127.0.0.1:9093/metrics |
    awk '/^raftlog_throttled_total/ {s += $2} END {print s + 0}')
  echo "{\"quota\":\"$quota\",\"quota_bytes_per_s\":$q,\"throttled\":$((throttled_after - throttled_before)),\"result\":$line}" | tee -a "$results"
done

jq -rs '
  (["quota", "record bytes/s", "of quota", "seconds", "throttled calls"] | @tsv),
  (.[] | [.quota, (.result.requests_per_s * 1024 | floor),
          "\((.result.requests_per_s * 1024 / .quota_bytes_per_s * 1000 | floor) / 10) %",
          (.result.seconds * 10 | floor) / 10, .throttled] | @tsv)
' "$results" | column -t -s $'\t'
