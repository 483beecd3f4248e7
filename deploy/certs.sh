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
# Modes: DIR 0700, the private keys (ca.key, server.key) 0600, the certificates 0644 (public).
# Containers (uid 49999) do not read DIR directly: the compose TLS overlay's volumes-init
# copies the files into a volume owned by 49999 (see docs/deployment.md).
# Existing certificates are reused only if they cover every name in EXTRA_SAN; otherwise this
# stops and says so (FORCE=1 regenerates, and remote SuperNodes then need the new ca.crt).
set -euo pipefail
umask 077
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${1:-${CERTS_DIR:-$ROOT/.certs}}
DAYS=${DAYS:-30}
SAN="DNS:localhost,DNS:superlink,IP:127.0.0.1,IP:::1${EXTRA_SAN:+,$EXTRA_SAN}"

command -v openssl >/dev/null || { echo "certs.sh: openssl not found" >&2; exit 1; }
mkdir -p "$DIR"
chmod 0700 "$DIR"

covers() {   # does $DIR/server.pem name every entry of EXTRA_SAN (IP:x, DNS:y)?
  local entry
  IFS=',' read -ra entries <<<"${EXTRA_SAN:-}"
  for entry in "${entries[@]}"; do
    case "$entry" in
      IP:*) openssl x509 -noout -checkip "${entry#IP:}" -in "$DIR/server.pem" | grep -q 'does match' || return 1 ;;
      DNS:*) openssl x509 -noout -checkhost "${entry#DNS:}" -in "$DIR/server.pem" | grep -q 'does match' || return 1 ;;
      "") ;;
      *) echo "certs.sh: EXTRA_SAN entries must be IP:<address> or DNS:<name> (got '$entry')" >&2; exit 2 ;;
    esac
  done
}

if [ -z "${FORCE:-}" ] && [ -s "$DIR/ca.crt" ] && [ -s "$DIR/server.pem" ] && [ -s "$DIR/server.key" ] \
   && openssl x509 -checkend 3600 -noout -in "$DIR/server.pem" >/dev/null 2>&1; then
  if ! covers; then
    echo "certs.sh: $DIR/server.pem does not cover EXTRA_SAN=$EXTRA_SAN; regenerate with FORCE=1 (remote SuperNodes then need the new ca.crt)" >&2
    exit 1
  fi
  chmod 0600 "$DIR/server.key" "$DIR/ca.key" 2>/dev/null || true   # tighten files of older versions
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
chmod 0644 "$tmp"/ca.crt "$tmp"/server.pem; chmod 0600 "$tmp"/ca.key "$tmp"/server.key
mv "$tmp"/ca.crt "$tmp"/ca.key "$tmp"/server.pem "$tmp"/server.key "$DIR"/
echo "certs.sh: wrote CA and server certificate (SAN $SAN) to $DIR"
