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
log "building (release profile; the first build compiles RocksDB: ~15 min on 2 cores)"
cargo build --release --workspace --all-targets
log "cargo clippy (release profile, shares the build above)"
cargo clippy --release --workspace --all-targets -- -D warnings
log "cargo test"
cargo test --release --workspace -- --test-threads=2
log "all tests passed in $((SECONDS - start)) s"
