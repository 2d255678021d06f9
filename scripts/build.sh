#!/usr/bin/env bash
# Builds the release binaries (raftlog-node, raftlog, raftlog-jepsen). The first build compiles
# RocksDB from source: about 15 minutes on 2 cores; later builds are incremental.
set -euo pipefail
source "$(dirname "$0")/common.sh"
"$ROOT/scripts/install-deps.sh"
log "building release binaries into $PROFILE_DIR (first build compiles RocksDB: ~15 min)"
cd "$ROOT"
cargo build --release --workspace --bins
