#!/bin/sh
# Creates what a secured 3-node cluster needs, in DIR, once (files that exist are kept):
#   ca.pem, ca-key.pem          the cluster CA (ca-key.pem signs; keep it off the nodes)
#   node-N.pem, node-N-key.pem  node N's certificate (DNS name node-N, plus the hosts below)
#   admin.pem, admin-key.pem    a client certificate for User:admin (the deploy files make it a
#                               super-user)
#   bootstrap.token             a super-user token (User:bootstrap): create the first tokens and
#                               ACL entries with it
# Usage: make-pki.sh DIR HOST_PATTERN [EXTRA_HOST...]
#   HOST_PATTERN is the name clients and peers dial node N by, with {id} for N (1..3) and {ord}
#   for N-1 (a StatefulSet ordinal): `node{id}` (compose), `raftlog-{ord}.raftlog.default.svc`.
#   Every EXTRA_HOST (a service name, localhost, an IP) goes into every node certificate.
# Needs the `raftlog` CLI (RAFTLOG_CLI, default: raftlog on PATH); no openssl. POSIX sh, so it
# runs in the raftlog image as well as on an admin machine. docs/security.md, "Deploying".
set -eu
[ $# -ge 2 ] || { echo "usage: $0 DIR HOST_PATTERN [EXTRA_HOST...]" >&2; exit 2; }
dir="$1"; pattern="$2"; shift 2
cli="${RAFTLOG_CLI:-raftlog}"
umask 077
mkdir -p "$dir"

[ -f "$dir/ca.pem" ] || "$cli" cert ca --dir "$dir" >/dev/null
for id in 1 2 3; do
  [ -f "$dir/node-$id.pem" ] && continue
  ord=$((id - 1))
  host=$(printf '%s' "$pattern" | sed -e "s/{id}/$id/g" -e "s/{ord}/$ord/g")
  extra=""
  for h in "$@"; do extra="$extra --host $h"; done
  # shellcheck disable=SC2086 # the extra hosts are split on purpose
  "$cli" cert node "$id" --host "$host" $extra --dir "$dir" >/dev/null
done
[ -f "$dir/admin.pem" ] || "$cli" cert client admin --dir "$dir" >/dev/null
# 256 random bits, hex.
[ -f "$dir/bootstrap.token" ] || od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$dir/bootstrap.token"
# The certificates are public; the keys and the token stay readable by their owner only.
chmod 644 "$dir"/*.pem
chmod 600 "$dir"/*-key.pem "$dir/bootstrap.token"
chmod 755 "$dir"
# PKI_OWNER (user:group): hand the files to the user the nodes run as (the compose pki service
# runs as root to create the directory).
[ -z "${PKI_OWNER:-}" ] || chown -R "$PKI_OWNER" "$dir"
echo "PKI in $dir: CA, node-1..3 ($pattern), admin client certificate, bootstrap token"
