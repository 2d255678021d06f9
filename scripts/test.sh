#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this): formatting, lints, unit tests,
# openraft's storage conformance suite on RocksDB, and the integration tests that run real node
# processes on real sockets.
set -euo pipefail
source "$(dirname "$0")/common.sh"
"$ROOT/scripts/install-deps.sh"
cd "$ROOT"
start=$SECONDS
log "cargo fmt --check"
cargo fmt --all -- --check
# The layering of docs/architecture.md: crate dependencies, module layers, no import cycle, where
# gRPC statuses are built, function lengths; then proof that each rule catches a planted break.
log "scripts/check-layers.py (and its self-test)"
python3 scripts/check-layers.py
python3 scripts/check-layers.py --self-test
log "building (release profile; the first build compiles RocksDB: ~15 min on 2 cores)"
cargo build --release --workspace --all-targets
log "cargo clippy (release profile, shares the build above)"
cargo clippy --release --workspace --all-targets -- -D warnings
log "cargo test"
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
# Two test binaries at a time: each cluster test runs 3-4 node processes on a 2-core machine.
cargo test --release --workspace --lib --bins --tests -- --test-threads=2 2>&1 | tee "$out"
passed=$(grep -Eo '[0-9]+ passed' "$out" | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' "$out" | awk '{s+=$1} END {print s+0}')

# The local cluster as the README brings it up, probed by an independent gRPC client (Python
# grpcio, in a virtualenv under the cache dir): health checking and server reflection.
log "scripts/cluster.sh up + Python grpcio: gRPC health and reflection"
venv="${RAFTLOG_CACHE_DIR:-$HOME/.cache/raftlog}/pyenv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" 2>/dev/null || {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null && python3 -m venv "$venv"; }
fi
"$venv/bin/pip" install -q --disable-pip-version-check grpcio grpcio-reflection grpcio-health-checking pyyaml
# Deployment files that cannot run here as they are (no Docker, no Kubernetes) must parse, say
# what a raftlog cluster needs and run secured; the compose file's nodes run as processes.
log "deployment files: Dockerfile, docker-compose (run as processes), Kubernetes StatefulSet, systemd unit"
if "$venv/bin/python" "$ROOT/scripts/py/check_deploy_files.py" "$ROOT" "$NODE_BIN" "$CLI_BIN"; then
  passed=$((passed + 1))
else
  failed=$((failed + 1)); log "FAILED: deployment files"
fi
cluster_dir="$(mktemp -d /tmp/raftlog-ci-cluster.XXXXXX)"
if RAFTLOG_DATA_DIR="$cluster_dir" "$ROOT/scripts/cluster.sh" up >/dev/null \
    && "$venv/bin/python" "$ROOT/scripts/py/check_reflection_health.py" 127.0.0.1:8052; then
  passed=$((passed + 1))
else
  failed=$((failed + 1)); log "FAILED: local cluster, health or reflection"
fi
# The Python example of docs/api.md (a client generated with grpcio-tools) through node 2, a
# follower most likely, so its writes also go through forwarding to the leader.
log "docs/api.md Python example (grpcio-tools stubs): produce and consume through 127.0.0.1:8052"
if "$ROOT/scripts/api-example.sh" 127.0.0.1:8052; then
  passed=$((passed + 1))
else
  failed=$((failed + 1)); log "FAILED: the docs/api.md Python example"
fi
# The event-sourcing example of docs/event-sourcing.md: concurrent tellers with conditional appends.
log "docs/event-sourcing.md example: bank account with optimistic concurrency"
if "$PROFILE_DIR/examples/bank_account" 127.0.0.1:8051,127.0.0.1:8052,127.0.0.1:8053; then
  passed=$((passed + 1))
else
  failed=$((failed + 1)); log "FAILED: the event-sourcing example"
fi
RAFTLOG_DATA_DIR="$cluster_dir" "$ROOT/scripts/cluster.sh" down >/dev/null 2>&1 || true
rm -rf "$cluster_dir"

# Fault injection: a short run with kill, pause and partition faults must find no anomaly, and the
# harness must catch a node with a deliberate safety bug.
jepsen_out="$(mktemp -d /tmp/raftlog-ci-jepsen.XXXXXX)"
# jepsen_run NAME SECONDS NEMESES WORKLOAD [ARGS...]: one short run that must find no anomaly.
jepsen_run() {
  log "fault injection: $2 s of $3 faults, $4 producers (output in $jepsen_out/$1)"
  if "$ROOT/scripts/jepsen.sh" --time "$2" --nemesis "$3" --fault-secs 2,5 --quiet-secs 2,4 \
      --workload "$4" --seed "${RAFTLOG_JEPSEN_SEED:-1}" --out "$jepsen_out/$1" "${@:5}"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1)); log "FAILED: fault-injection run '$1' found anomalies or did not complete"
  fi
}
jepsen_run run 60 kill,pause,partition plain
# Secured: TLS on client and peer ports, auth on, every client with a token (docs/security.md).
jepsen_run idempotent 30 kill,partition idempotent --secure
jepsen_run stream 30 kill,pause stream
# Members of a coordinated consumer group come, go and die under faults: no partition may have
# two owners in any node's state.
jepsen_run groups 30 kill,pause,partition plain --members 3 --partitions 6
# Queue workers (ack, release, reject, extend, hang, crash) through every kind of fault.
jepsen_run queues 30 kill,pause,partition plain --queue-workers 4 --partitions 4
# The same on a key-ordered queue: one record per key out at a time, in offset order.
jepsen_run queues-keyed 30 kill,pause,partition plain --queue-workers 4 --partitions 4 \
  --queue-key-ordered
log "fault injection: the harness must catch a node that acknowledges before commit"
if "$ROOT/scripts/jepsen-teeth.sh" "$jepsen_out/teeth"; then
  passed=$((passed + 1))
else
  failed=$((failed + 1)); log "FAILED: the harness did not catch the unsafe node"
fi

# The nodes' data dirs of passing runs are ~1 GB together; histories and reports stay.
if [ "$failed" -eq 0 ]; then
  rm -rf "$jepsen_out"/*/data
fi

log "finished in $((SECONDS - start)) s"
echo "${passed} passed, ${failed} failed"
[ "$failed" -eq 0 ]
