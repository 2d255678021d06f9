# Shared settings for raftlog's scripts. Source it; do not run it.
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Build output lives outside the clone so CI and fresh clones reuse it (RocksDB's C++ takes ~13 min).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/raftlog/target}"
# The one cargo profile everything uses (tests, clippy, cluster): each profile rebuilds RocksDB.
PROFILE_DIR="$CARGO_TARGET_DIR/release"
NODE_BIN="$PROFILE_DIR/raftlog-node"
CLI_BIN="$PROFILE_DIR/raftlog"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
