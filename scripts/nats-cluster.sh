#!/usr/bin/env bash
# A local 3-node NATS JetStream cluster, for running raftlog's benchmarks side by side with NATS
# (scripts/bench.sh; `raftlog bench produce --system nats`).
#
#   scripts/nats-cluster.sh up [--sync default|always]   # start (installs nats-server if missing)
#   scripts/nats-cluster.sh down                         # stop and delete the data
#   scripts/nats-cluster.sh status                       # version, sync mode, JetStream meta leader
#   scripts/nats-cluster.sh supports-sync-always         # exit 0 if this nats-server has it
#
# Node N (1..3) listens for clients on 127.0.0.1:422(1+N), for routes on 127.0.0.1:622(1+N),
# for monitoring on 127.0.0.1:822(1+N); data, config, log and pid in $NATS_DATA_DIR/nN (default
# /tmp/raftlog-nats). File storage on the same disk as raftlog's bench data (/tmp).
#
# --sync default: the server's default: JetStream acks a publish once the stream's replicas have
#   it (in memory / page cache) and fsyncs files every 2 minutes (sync_interval, "2m").
# --sync always: `sync_interval: always`, an fsync per write, like raftlog's acks. That option
#   exists from nats-server 2.10.0 on; Debian bookworm ships 2.9.10, which rejects it ("unknown
#   field"), so there this mode fails with a message (docs/benchmarks.md, "How NATS is set
#   up"). A newer nats-server found first on $PATH (or NATS_SERVER_BIN) is used instead of
#   Debian's.
set -euo pipefail
source "$(dirname "$0")/common.sh"

NATS_DATA_DIR="${NATS_DATA_DIR:-/tmp/raftlog-nats}"
NATS_SERVER_BIN="${NATS_SERVER_BIN:-$(command -v nats-server || true)}"
NODES=(1 2 3)

ensure_server() {
  if [ -z "$NATS_SERVER_BIN" ] || [ ! -x "$NATS_SERVER_BIN" ]; then
    log "installing nats-server (Debian package)"
    apt-get install -y nats-server >/dev/null || { apt-get update >/dev/null && apt-get install -y nats-server >/dev/null; }
    NATS_SERVER_BIN="$(command -v nats-server)"
  fi
}

version() { "$NATS_SERVER_BIN" --version | awk '{print $2}'; }

# Whether this nats-server accepts `sync_interval: always` (tests a throwaway config).
supports_sync_always() {
  local dir rc=0
  dir="$(mktemp -d)"
  printf 'listen: 127.0.0.1:-1\njetstream { store_dir: "%s", sync_interval: always }\n' "$dir" >"$dir/t.conf"
  "$NATS_SERVER_BIN" -c "$dir/t.conf" -t >/dev/null 2>&1 || rc=$?
  rm -rf "$dir"
  return $rc
}

write_config() { # node sync
  local n=$1 sync=$2 dir="$NATS_DATA_DIR/n$1" sync_line=""
  [ "$sync" = always ] && sync_line="  sync_interval: always"
  mkdir -p "$dir/js"
  cat >"$dir/nats.conf" <<EOF
server_name: n$n
listen: 127.0.0.1:$((4221 + n))
http: 127.0.0.1:$((8221 + n))
jetstream {
  store_dir: "$dir/js"
$sync_line
}
cluster {
  name: raftlog-bench
  listen: 127.0.0.1:$((6221 + n))
  routes: [
    nats-route://127.0.0.1:6222
    nats-route://127.0.0.1:6223
    nats-route://127.0.0.1:6224
  ]
}
EOF
}

pid_of() { cat "$NATS_DATA_DIR/n$1/pid" 2>/dev/null || true; }
running() { local pid; pid="$(pid_of "$1")"; [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }

# The JetStream meta leader's name as node N sees it (empty while there is none).
meta_leader() {
  curl -sf "http://127.0.0.1:$((8221 + $1))/jsz" 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin).get("meta_cluster",{}).get("leader",""))' 2>/dev/null || true
}

up() {
  local sync=default
  while [ $# -gt 0 ]; do
    case "$1" in
      --sync) sync="$2"; shift 2 ;;
      *) die "unknown option $1" ;;
    esac
  done
  [ "$sync" = default ] || [ "$sync" = always ] || die "--sync is default or always"
  ensure_server
  if [ "$sync" = always ] && ! supports_sync_always; then
    die "nats-server $(version) has no 'sync_interval: always' (it came in 2.10.0): it cannot fsync every write; use --sync default, or put a nats-server >= 2.10 first on PATH (or NATS_SERVER_BIN)"
  fi
  for n in "${NODES[@]}"; do running "$n" && die "node n$n is already running (scripts/nats-cluster.sh down)"; done
  rm -rf "$NATS_DATA_DIR"
  for n in "${NODES[@]}"; do
    write_config "$n" "$sync"
    setsid "$NATS_SERVER_BIN" -c "$NATS_DATA_DIR/n$n/nats.conf" -l "$NATS_DATA_DIR/n$n/log" \
      -P "$NATS_DATA_DIR/n$n/pid" </dev/null >/dev/null 2>&1 &
  done
  echo "$sync" >"$NATS_DATA_DIR/sync"
  local deadline=$((SECONDS + 60)) leader
  while :; do
    leader="$(meta_leader 1)"
    if [ -n "$leader" ] && [ "$(meta_leader 2)" = "$leader" ] && [ "$(meta_leader 3)" = "$leader" ]; then
      break
    fi
    for n in "${NODES[@]}"; do
      running "$n" || { tail -n 20 "$NATS_DATA_DIR/n$n/log" >&2 || true; die "node n$n exited"; }
    done
    [ $SECONDS -lt $deadline ] || die "no JetStream meta leader after 60 s (logs in $NATS_DATA_DIR/n*/log)"
    sleep 0.5
  done
  log "nats-server $(version): 3 JetStream nodes up (sync: $sync, meta leader $leader); NATS_URL=nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224"
}

down() {
  local pid
  for n in "${NODES[@]}"; do
    pid="$(pid_of "$n")"
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  done
  for n in "${NODES[@]}"; do
    pid="$(pid_of "$n")"
    for _ in $(seq 50); do [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
  done
  rm -rf "$NATS_DATA_DIR"
}

status() {
  ensure_server
  echo "nats-server $(version) at $NATS_SERVER_BIN; sync_interval always supported: $(supports_sync_always && echo yes || echo no)"
  [ -f "$NATS_DATA_DIR/sync" ] && echo "cluster sync mode: $(cat "$NATS_DATA_DIR/sync")"
  for n in "${NODES[@]}"; do
    if running "$n"; then echo "n$n: running (pid $(pid_of "$n")), meta leader: $(meta_leader "$n")"; else echo "n$n: down"; fi
  done
}

case "${1:-}" in
  up) shift; up "$@" ;;
  down) down ;;
  status) status ;;
  supports-sync-always) ensure_server; supports_sync_always ;;
  *) echo "usage: $0 up [--sync default|always] | down | status | supports-sync-always" >&2; exit 2 ;;
esac
