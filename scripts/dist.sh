#!/usr/bin/env bash
# Shippable binaries: raftlog-node and raftlog without their debug info, which goes to a .debug
# file beside each (GNU debuglink), so gdb, perf and addr2line find it when it is put next to the
# binary or under /usr/lib/debug. The release profile keeps line tables (and RocksDB's C++ its
# -g): raftlog-node is ~470 MB as built, ~26 MB without them (the .debug file, compressed, ~140
# MB). Symbols stay in the binary, so backtraces still name functions.
#   scripts/dist.sh [OUT_DIR]     (default $CARGO_TARGET_DIR/dist; builds the binaries first
#                                  unless RAFTLOG_NO_BUILD=1)
set -euo pipefail
source "$(dirname "$0")/common.sh"

out="${1:-$CARGO_TARGET_DIR/dist}"
command -v objcopy >/dev/null || die "objcopy not found: apt-get install binutils"
if [ -z "${RAFTLOG_NO_BUILD:-}" ]; then
  "$ROOT/scripts/build.sh"
fi
mkdir -p "$out"
for bin in raftlog-node raftlog; do
  src="$PROFILE_DIR/$bin"
  [ -x "$src" ] || die "$src not built (scripts/build.sh)"
  # The debug info first, compressed; then a copy without it that points at it.
  objcopy --only-keep-debug --compress-debug-sections=zlib "$src" "$out/$bin.debug"
  objcopy --strip-debug --add-gnu-debuglink="$out/$bin.debug" "$src" "$out/$bin.tmp"
  chmod 0755 "$out/$bin.tmp"
  mv "$out/$bin.tmp" "$out/$bin"
  log "$out/$bin: $(du -h "$out/$bin" | cut -f1) (debug info in $bin.debug: $(du -h "$out/$bin.debug" | cut -f1); built $(du -h "$src" | cut -f1))"
done
