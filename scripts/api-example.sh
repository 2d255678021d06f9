#!/usr/bin/env bash
# Runs the Python example of docs/api.md (scripts/py/api_example.py) against a running node: a
# client generated from proto/raftlog/v1/*.proto with grpcio-tools, in a virtualenv under the cache
# dir, produces and consumes through the Broker API and exits non-zero on any mismatch.
#   scripts/api-example.sh [HOST:PORT]      (default 127.0.0.1:8051; any node of the cluster)
set -euo pipefail
source "$(dirname "$0")/common.sh"
addr="${1:-127.0.0.1:8051}"

venv="${RAFTLOG_CACHE_DIR:-$HOME/.cache/raftlog}/pyenv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" 2>/dev/null || {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null && python3 -m venv "$venv"; }
fi
"$venv/bin/pip" install -q --disable-pip-version-check grpcio grpcio-tools xxhash

# The stubs are generated at every run, so they always match the .proto files of this checkout.
stubs="$(mktemp -d /tmp/raftlog-py-stubs.XXXXXX)"
trap 'rm -rf "$stubs"' EXIT
"$venv/bin/python" -m grpc_tools.protoc -I "$ROOT/proto" --python_out="$stubs" --grpc_python_out="$stubs" \
  "$ROOT/proto/raftlog/v1/broker.proto" "$ROOT/proto/raftlog/v1/cluster.proto"
# docs/api.md shows excerpts of the example: each ```python block there must appear in the script
# verbatim (at some indentation), so the page cannot drift from the code that runs.
"$venv/bin/python" - "$ROOT/docs/api.md" "$ROOT/scripts/py/api_example.py" <<'EOF'
import re
import sys

doc, script = (open(path).read() for path in sys.argv[1:3])
blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
def indented(block, indent):
    return "".join(indent + line if line.strip() else line for line in block.splitlines(True))
missing = [b for b in blocks if not any(indented(b, i) in script for i in ("", " " * 4, " " * 8))]
for block in missing:
    print(f"docs/api.md shows code that scripts/py/api_example.py lacks:\n{block}", file=sys.stderr)
sys.exit(1 if missing or not blocks else 0)
EOF
log "Python example (stubs from grpcio-tools) against $addr"
PYTHONPATH="$stubs" "$venv/bin/python" "$ROOT/scripts/py/api_example.py" "$addr"
