#!/usr/bin/env bash
# A 3-node raftlog cluster on this machine.
#   scripts/cluster.sh up [--secure] | down | status | kill N | restart N | logs N
# Node N serves gRPC on 127.0.0.1:805N and admin HTTP on 127.0.0.1:909N; its data, log and pid
# are under $RAFTLOG_DATA_DIR/node-N (default ./data). `up` builds the binaries when needed.
# `up --secure` serves TLS and turns auth on (docs/security.md): it creates a CA, node
# certificates, an `admin` client certificate (a super-user) and a bootstrap token
# (pki/bootstrap.token, a super-user too) under $RAFTLOG_DATA_DIR/pki (once; `raftlog cert`), and
# from then on that data dir's nodes always start with TLS and auth (restart N included).
set -euo pipefail
source "$(dirname "$0")/common.sh"

DATA_DIR="${RAFTLOG_DATA_DIR:-./data}"
# Only starting a node creates the data dir (`down` elsewhere must not leave a stray ./data).
case "${1:-}" in up | restart) mkdir -p "$DATA_DIR" ;; esac
[ ! -d "$DATA_DIR" ] || DATA_DIR="$(cd "$DATA_DIR" && pwd)"
NODES=(1 2 3)
# Ports below Linux's ephemeral range (32768-60999): a peer that keeps reconnecting to a stopped
# node on the same host can be handed that node's own port as its source port, connect to itself
# and hold the port, so the node cannot bind it when it restarts (seen with the 50051-50053 of
# earlier versions: "Address already in use" right after a restart).
INITIAL_CLUSTER="1=127.0.0.1:8051,2=127.0.0.1:8052,3=127.0.0.1:8053"
ENDPOINTS="127.0.0.1:8051,127.0.0.1:8052,127.0.0.1:8053"

PKI_DIR="$DATA_DIR/pki"
node_dir() { echo "$DATA_DIR/node-$1"; }
secure() { [ -f "$PKI_DIR/ca.pem" ]; }
pid_of() { cat "$(node_dir "$1")/pid" 2>/dev/null || true; }
running() { local p; p="$(pid_of "$1")"; [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }
is_node() { local n; for n in "${NODES[@]}"; do [ "$n" = "$1" ] && return 0; done; return 1; }

start_node() {
  local n="$1" dir
  dir="$(node_dir "$n")"
  mkdir -p "$dir"
  if running "$n"; then log "node $n already running (pid $(pid_of "$n"))"; return; fi
  # Another process on our ports (a cluster started with another RAFTLOG_DATA_DIR, say) would
  # answer the readiness checks in place of this node: refuse instead.
  local port
  for port in "805$n" "909$n"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      die "port $port is in use: another cluster (other RAFTLOG_DATA_DIR?) or program holds it"
    fi
  done
  local tls=()
  if secure; then
    tls=(RAFTLOG_TLS_CA="$PKI_DIR/ca.pem" RAFTLOG_TLS_CERT="$PKI_DIR/node-$n.pem" RAFTLOG_TLS_KEY="$PKI_DIR/node-$n-key.pem"
         RAFTLOG_AUTH_ENABLED=true RAFTLOG_SUPER_USERS=User:admin RAFTLOG_BOOTSTRAP_TOKEN_FILE="$PKI_DIR/bootstrap.token")
  fi
  env "${tls[@]}" \
  RAFTLOG_NODE_ID="$n" \
  RAFTLOG_DATA_DIR="$dir" \
  RAFTLOG_LISTEN_ADDR="127.0.0.1:805$n" \
  RAFTLOG_ADMIN_ADDR="127.0.0.1:909$n" \
  RAFTLOG_INITIAL_CLUSTER="$INITIAL_CLUSTER" \
    nohup "$NODE_BIN" >>"$dir/node.log" 2>&1 &
  echo $! >"$dir/pid"
  log "started node $n (pid $!, gRPC 127.0.0.1:805$n, admin 127.0.0.1:909$n, data $dir)"
}

wait_ready() {
  local deadline=$((SECONDS + 60)) n
  for n in "$@"; do
    until curl -fsS "http://127.0.0.1:909$n/readyz" >/dev/null 2>&1; do
      running "$n" || { tail -n 5 "$(node_dir "$n")/node.log" >&2; die "node $n exited; see $(node_dir "$n")/node.log"; }
      [ $SECONDS -lt $deadline ] || die "node $n not ready after 60 s; see $(node_dir "$n")/node.log"
      sleep 0.2
    done
  done
}

# Stops node N; returns 1 (and stops nothing) when it is not running.
stop_node() {
  local n="$1" sig="${2:-TERM}" p
  p="$(pid_of "$n")"
  if [ -z "$p" ] || ! kill -0 "$p" 2>/dev/null; then return 1; fi
  kill "-$sig" "$p"
  for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$p" 2>/dev/null && kill -KILL "$p"
  rm -f "$(node_dir "$n")/pid"
  log "stopped node $n (SIG$sig)"
}

# The CLI's TLS environment for this data dir's cluster (none when it is plaintext).
client_tls_env() {
  if secure; then
    echo "RAFTLOG_TLS_CA=$PKI_DIR/ca.pem RAFTLOG_CERT=$PKI_DIR/admin.pem RAFTLOG_KEY=$PKI_DIR/admin-key.pem"
  fi
}
status() { env $(client_tls_env) RAFTLOG_ENDPOINTS="$ENDPOINTS" "$CLI_BIN" cluster status "$@"; }

# The bootstrap token of a secure data dir: 256 random bits, made once (also for data dirs made
# --secure before auth existed).
make_bootstrap_token() {
  [ -f "$PKI_DIR/bootstrap.token" ] && return
  (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$PKI_DIR/bootstrap.token")
}

# A CA, a certificate per node (node-N, 127.0.0.1, localhost) and an `admin` client certificate.
make_pki() {
  secure && return
  mkdir -p "$PKI_DIR"
  chmod 700 "$PKI_DIR"
  "$CLI_BIN" cert ca --dir "$PKI_DIR" >/dev/null
  local n
  for n in "${NODES[@]}"; do
    "$CLI_BIN" cert node "$n" --host 127.0.0.1 --host localhost --dir "$PKI_DIR" >/dev/null
  done
  "$CLI_BIN" cert client admin --dir "$PKI_DIR" >/dev/null
  log "created a CA, node and client certificates in $PKI_DIR (ca-key.pem signs new ones: keep it private)"
}

cmd="${1:-}"
case "$cmd" in
  up)
    case "${2:-}" in
      "") ;;
      --secure) want_secure=1 ;;
      *) die "usage: cluster.sh up [--secure]" ;;
    esac
    # RAFTLOG_NO_BUILD=1: run the binaries as they are (scripts/ab.sh runs copies of two builds).
    if [ -z "${RAFTLOG_NO_BUILD:-}" ] && { [ ! -x "$NODE_BIN" ] || [ ! -x "$CLI_BIN" ] || [ -n "$(find "$ROOT/node" "$ROOT/client" "$ROOT/cli" "$ROOT/proto" -newer "$NODE_BIN" -name '*.rs' -o -newer "$NODE_BIN" -name '*.proto' 2>/dev/null | head -1)" ]; }; then
      "$ROOT/scripts/build.sh"
    fi
    if [ -n "${want_secure:-}" ]; then
      if ! secure && [ -d "$(node_dir 1)" ]; then
        die "$DATA_DIR holds a plaintext cluster: stop it and use another RAFTLOG_DATA_DIR (or remove $DATA_DIR) for --secure"
      fi
      make_pki
    elif secure; then
      log "$DATA_DIR was set up with --secure: starting with TLS"
    fi
    if secure; then make_bootstrap_token; fi
    for n in "${NODES[@]}"; do start_node "$n"; done
    wait_ready "${NODES[@]}"
    status
    if secure; then
      log "cluster is up, TLS and auth on (clients by certificate or token; peers by certificate). To use it:"
      echo "  export $(client_tls_env)"
      echo "  (the admin certificate is a super-user; so is the token: export RAFTLOG_TOKEN=\$(cat $PKI_DIR/bootstrap.token))"
      echo "  Give others a token and ACL entries: $CLI_BIN token create --principal alice; $CLI_BIN acl add --principal alice --resource topic --name demo --operation write"
      echo "  $CLI_BIN topic create demo && $CLI_BIN produce demo hello && $CLI_BIN consume demo"
      echo "  (or pass --tls-ca $PKI_DIR/ca.pem --tls-cert $PKI_DIR/admin.pem --tls-key $PKI_DIR/admin-key.pem)"
      echo "  More clients: $CLI_BIN cert client NAME --dir $PKI_DIR. Rotate: replace a node's files, then kill -HUP its pid (or wait 10 s)."
    else
      log "cluster is up. Try: $CLI_BIN topic create demo && $CLI_BIN produce demo hello && $CLI_BIN consume demo"
    fi
    ;;
  down)
    stopped=0
    for n in "${NODES[@]}"; do stop_node "$n" && stopped=$((stopped + 1)); done
    [ "$stopped" -gt 0 ] || die "no node of $DATA_DIR is running: nothing to stop (a cluster started with another RAFTLOG_DATA_DIR, or from another directory?)"
    ;;
  status) shift; status "$@" ;;
  kill)
    [ -n "${2:-}" ] || die "usage: cluster.sh kill N"
    is_node "$2" || die "no node $2 in this cluster (nodes ${NODES[*]})"
    stop_node "$2" KILL || die "node $2 of $DATA_DIR is not running: nothing to kill (another RAFTLOG_DATA_DIR?)"
    ;;
  restart)
    [ -n "${2:-}" ] || die "usage: cluster.sh restart N"
    is_node "$2" || die "no node $2 in this cluster (nodes ${NODES[*]})"
    if secure; then make_bootstrap_token; fi
    stop_node "$2" || true; start_node "$2"; wait_ready "$2" ;;
  logs) [ -n "${2:-}" ] || die "usage: cluster.sh logs N"; tail -n "${LINES:-100}" -f "$(node_dir "$2")/node.log" ;;
  *) echo "usage: $0 up [--secure] | down | status | kill N | restart N | logs N" >&2; exit 2 ;;
esac
