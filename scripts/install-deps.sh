#!/usr/bin/env bash
# Installs what building raftlog needs from the system, on Debian: a C++ toolchain and libclang
# (RocksDB's Rust bindings are generated with bindgen), curl for health checks, and iproute2 +
# iptables for the partition nemeses of the fault-injection harness. Idempotent.
set -euo pipefail
source "$(dirname "$0")/common.sh"

need=()
for pkg in clang libclang-dev g++ make curl iptables iproute2; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  log "installing system packages: ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs) first"
