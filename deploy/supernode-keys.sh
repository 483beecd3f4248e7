#!/usr/bin/env bash
# Generate one EC (ECDSA P-384, OpenSSH format) key pair per SuperNode for SuperNode
# authentication (`flower-superlink --enable-supernode-auth`).
#
#   deploy/supernode-keys.sh [DIR] [N]     # default DIR: $KEYS_DIR or <repo>/.keys, N: $NODES or 3
#
# Writes DIR/node-<i> (private, for `flower-supernode --auth-supernode-private-key`) and
# DIR/node-<i>.pub (public, for `flwr supernode register DIR/node-<i>.pub <connection>`),
# i = 0..N-1. Existing keys are kept (a key is a SuperNode's identity: once registered,
# regenerating it means registering again). FORCE=1 regenerates.
# DIR is 0700 and the private keys 0600 (the public keys 0644). Containers (uid 49999) get
# them through the compose tls-auth overlay's volumes-init, which copies them into a volume
# owned by 49999 (docs/deployment.md). KEY_MODE overrides the private keys' mode (deprecated:
# a world-readable private key lets every local user impersonate the SuperNode).
set -euo pipefail
umask 077
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${1:-${KEYS_DIR:-$ROOT/.keys}}
N=${2:-${NODES:-3}}
command -v ssh-keygen >/dev/null || { echo "supernode-keys.sh: ssh-keygen not found (openssh-client)" >&2; exit 1; }
[[ "$N" =~ ^[1-9][0-9]*$ ]] || { echo "supernode-keys.sh: N must be a positive integer (got '$N')" >&2; exit 2; }
mkdir -p "$DIR"
chmod 0700 "$DIR"
made=0
for ((i = 0; i < N; i++)); do
  key="$DIR/node-$i"
  if [ -n "${FORCE:-}" ] || [ ! -s "$key" ] || [ ! -s "$key.pub" ]; then
    rm -f "$key" "$key.pub"
    ssh-keygen -q -t ecdsa -b 384 -N "" -C "fedshare-supernode-$i" -f "$key"
    made=$((made + 1))
  fi
  chmod "${KEY_MODE:-0600}" "$key"
  chmod 0644 "$key.pub"
done
echo "supernode-keys.sh: $N key pair(s) in $DIR ($made new)"
