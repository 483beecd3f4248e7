#!/usr/bin/env bash
# Generate a throw-away test CA and a SuperLink server certificate (openssl) for TLS runs.
#
#   deploy/certs.sh [DIR]          # default DIR: $CERTS_DIR or <repo>/.certs (git-ignored)
#   FORCE=1 deploy/certs.sh        # regenerate even if the files exist
#
# Writes DIR/ca.crt, DIR/ca.key, DIR/server.pem, DIR/server.key. The server certificate has
# subjectAltName DNS:localhost, DNS:superlink (the compose service name), IP:127.0.0.1 and
# IP:::1, plus anything in EXTRA_SAN (e.g. EXTRA_SAN="IP:10.0.0.5,DNS:fl.example.org").
# Validity: DAYS (default 30). For testing only: the CA key sits next to the certificates.
# Files are made readable by everyone (0644) so that the non-root `app` user (uid 49999) of
# the official Flower images can read them when the folder is mounted into a container.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${1:-${CERTS_DIR:-$ROOT/.certs}}
DAYS=${DAYS:-30}
SAN="DNS:localhost,DNS:superlink,IP:127.0.0.1,IP:::1${EXTRA_SAN:+,$EXTRA_SAN}"

command -v openssl >/dev/null || { echo "certs.sh: openssl not found" >&2; exit 1; }
mkdir -p "$DIR"
if [ -z "${FORCE:-}" ] && [ -s "$DIR/ca.crt" ] && [ -s "$DIR/server.pem" ] && [ -s "$DIR/server.key" ] \
   && openssl x509 -checkend 3600 -noout -in "$DIR/server.pem" >/dev/null 2>&1; then
  echo "certs.sh: using existing certificates in $DIR (FORCE=1 to regenerate)"
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days "$DAYS" \
  -keyout "$tmp/ca.key" -out "$tmp/ca.crt" -subj "/CN=FedShare test CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  2>/dev/null
openssl req -newkey rsa:2048 -nodes -sha256 -keyout "$tmp/server.key" -out "$tmp/server.csr" \
  -subj "/CN=superlink" 2>/dev/null
printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=%s\n' \
  "$SAN" > "$tmp/ext.cnf"
openssl x509 -req -sha256 -days "$DAYS" -in "$tmp/server.csr" -CA "$tmp/ca.crt" -CAkey "$tmp/ca.key" \
  -CAcreateserial -out "$tmp/server.pem" -extfile "$tmp/ext.cnf" 2>/dev/null
openssl verify -CAfile "$tmp/ca.crt" "$tmp/server.pem" >/dev/null
chmod 0644 "$tmp"/ca.crt "$tmp"/server.pem "$tmp"/server.key; chmod 0600 "$tmp"/ca.key
mv "$tmp"/ca.crt "$tmp"/ca.key "$tmp"/server.pem "$tmp"/server.key "$DIR"/
echo "certs.sh: wrote CA and server certificate (SAN $SAN) to $DIR"
