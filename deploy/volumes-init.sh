#!/bin/sh
# One-shot preparation of the compose volumes, run as root by the `volumes-init` service before
# any Flower container starts (docker-compose.yml). Why: the official Flower images run as uid
# 49999 (`app`), while the host's private keys are 0600 and owned by the operator. Instead of
# making the host files world-readable, this copies each secret into a named volume that only
# 49999 can read, and hands every state volume to 49999 with mode 0700.
#
#   SRC/certs (optional, host .certs mounted read-only): ca.crt -> VOL/tls-ca/ (every service
#       that verifies the SuperLink); ca.crt, server.pem, server.key -> VOL/tls-server/ (the
#       SuperLink and the Fleet gateway only)
#   SRC/keys (optional, host .keys mounted read-only): node-<i> -> VOL/node-<i>-key/ (SuperNode
#       i sees only its own private key)
#
# A target volume that is not mounted is skipped, so one script serves the insecure, TLS and
# TLS + SuperNode-auth variants. Copies are refreshed on every `docker compose up`.
# Environment (tests): SRC [/src], VOL [/vol], OWNER [49999:49999].
set -eu
SRC=${SRC:-/src}
VOL=${VOL:-/vol}
OWNER=${OWNER:-49999:49999}
umask 077

copy() {   # copy MODE FILE... DIR: install files with MODE into DIR (which must exist)
  mode=$1; shift
  eval "dest=\${$#}"
  while [ $# -gt 1 ]; do
    [ -s "$1" ] || { echo "volumes-init: missing $1 (deploy/certs.sh / deploy/supernode-keys.sh)" >&2; exit 1; }
    cp "$1" "$dest/"; chmod "$mode" "$dest/$(basename "$1")"; shift
  done
}

if [ -d "$SRC/certs" ]; then
  if [ -d "$VOL/tls-ca" ]; then copy 0644 "$SRC/certs/ca.crt" "$VOL/tls-ca"; fi
  if [ -d "$VOL/tls-server" ]; then
    copy 0644 "$SRC/certs/ca.crt" "$SRC/certs/server.pem" "$VOL/tls-server"
    copy 0600 "$SRC/certs/server.key" "$VOL/tls-server"
  fi
fi
if [ -d "$SRC/keys" ]; then
  for dir in "$VOL"/node-*-key; do
    [ -d "$dir" ] || continue
    i=${dir#"$VOL"/node-}; i=${i%-key}
    copy 0600 "$SRC/keys/node-$i" "$dir"
  done
fi
for dir in "$VOL"/*; do
  [ -d "$dir" ] || continue
  chown -R "$OWNER" "$dir"
  chmod 0700 "$dir"
done
echo "volumes-init: $(ls "$VOL" | tr '\n' ' ')ready for uid ${OWNER%%:*}"
