#!/usr/bin/env bash
# Fault-injection run against a real cluster (see jepsen-tests/README.md).
#   scripts/jepsen.sh --time S --nemesis LIST|all --out DIR [--nodes 3|5] [--seed N] [...]
# Every option is passed to raftlog-jepsen (--help lists them). Partition nemeses need root (network
# namespaces + iptables); without it they are skipped with a message. Exit status: 0 no anomaly,
# 1 anomalies found, 2 the run itself failed.
set -euo pipefail
source "$(dirname "$0")/common.sh"
JEPSEN_BIN="$PROFILE_DIR/raftlog-jepsen"
if [ ! -x "$JEPSEN_BIN" ] || [ ! -x "$NODE_BIN" ]; then "$ROOT/scripts/build.sh"; fi
exec "$JEPSEN_BIN" --node-bin "${RAFTLOG_JEPSEN_NODE_BIN:-$NODE_BIN}" "$@"
