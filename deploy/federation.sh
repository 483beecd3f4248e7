#!/usr/bin/env bash
# A real local Flower federation for FedShare: one SuperLink and N SuperNodes on 127.0.0.1.
# The SuperLink always listens on 127.0.0.1 only: its one port serves the Fleet API and also the
# Control API (`flwr`: register SuperNodes, run, stop; no user authentication in OSS Flower
# 1.41) and the Runtime API (SuperExec). To let SuperNodes of other machines in, --fleet-host
# starts deploy/fleet_gateway.py there: it forwards only the Fleet API (see docs/deployment.md).
#
#   deploy/federation.sh [options] start          start SuperLink + SuperExecs + N SuperNodes
#   deploy/federation.sh [options] run [OVERRIDES] `flwr run . <conn> --stream` against it, with
#                                 data-fingerprint computed from the local data unless given
#   deploy/federation.sh [options] stop           stop every process it started, by PID
#   deploy/federation.sh [options] start-node I   start SuperNode I (and its SuperExec) again
#                                 after it died or was killed (same port, key and node config)
#   deploy/federation.sh [options] status         what is running, the connection config
#   deploy/federation.sh [options] print-commands the commands `start` runs (no side effects)
#
# Options (environment variable in brackets; the values of the last `start` are recorded in
# <run-dir>/federation.env and reused by every later command on that run folder, so after the
# first `start` only --run-dir matters; options given again win):
#   --mode insecure|tls|tls-auth  [MODE, insecure]  tls: server cert from deploy/certs.sh;
#                                 tls-auth: TLS + SuperNode authentication (EC key per node,
#                                 registered with `flwr supernode register` before start)
#   --nodes N                     [NODES, 3]         SuperNodes; node i: partition-id=i, num-partitions=N
#   --node-config-extra 'I:K=V ...' [NODE_CONFIG_EXTRA, entries joined by ';']  more node
#                                 config for SuperNode I (TOML values, as --node-config);
#                                 repeatable (bench/soak.py makes nodes hostile with it)
#   --app DIR                     [FED_APP_DIR, <repo>]  the Flower app `run` builds its FAB from
#   --superlink-port P            [SUPERLINK_PORT, 8000]  SuperLink HTTP port on 127.0.0.1 (Fleet,
#                                 Control, Runtime API): operator-only
#   --fleet-host H                [FLEET_HOST, none]  address (IPv4 or host name; 0.0.0.0 = all
#                                 interfaces) where the Fleet gateway listens for SuperNodes;
#                                 none, 127.0.0.1 or localhost: no gateway, SuperNodes use the
#                                 SuperLink port. With TLS, H is added to the certificate's SAN
#   --fleet-port P                [FLEET_PORT, 9092]  the gateway's port
#   --max-body-bytes N            [FLEET_MAX_BODY, 67108864]  largest request the gateway forwards
#   --node-port-base P            [NODE_PORT_BASE, 9094]  SuperNode i's Runtime API port: P+i
#   --isolation process|subprocess [ISOLATION, process]  process: this script starts one
#                                 flower-superexec per SuperLink/SuperNode (as docker-compose.yml
#                                 does); subprocess: Flower starts them itself
#   --clientapp-exec warm|flower  [CLIENTAPP_EXEC, warm]  with --isolation process, what runs
#                                 each SuperNode's ClientApp tasks: warm: deploy/warm_superexec.py
#                                 (Flower's SuperExec loop; each task forked from a process that
#                                 imported flwr/torch/numpy once); flower: flower-superexec (a
#                                 fresh interpreter per message)
#   --supernode-loop quick|flower [SUPERNODE_LOOP, quick]  what runs each SuperNode: quick:
#                                 deploy/quick_supernode.py (flower-supernode with its fixed 3 s
#                                 idle sleep, 0.5 s local polls and 1 s first object retry
#                                 shortened; FEDSHARE_SUPERNODE_IDLE_POLL, default 0.25 s);
#                                 flower: flower-supernode as shipped
#   --run-dir DIR                 [FED_RUN_DIR, <repo>/.federation]  PIDs, logs, SuperLink db, state
#   --certs-dir DIR               [CERTS_DIR, <repo>/.certs]
#   --keys-dir DIR                [KEYS_DIR, <run-dir>/keys]  SuperNode auth keys (tls-auth)
#   --conn NAME                   [FED_CONN, fedshare]  connection name in $FLWR_HOME/config.toml
#   --print-commands              same as the print-commands subcommand
# Files: everything this script creates (run folder, logs, state, superlink.db, FLWR_HOME) is
# private to its user (umask 077: directories 0700, files 0600).
# Other environment: FLWR_HOME (default <run-dir>/flwr-home), VENV (default <repo>/.venv),
# FEDSHARE_DATA_DIR, FEDSHARE_STATE_DIR (default <run-dir>/state), FEDSHARE_OUT_DIR
# (default <repo>/results), START_TIMEOUT (s, default 90), STOP_TIMEOUT (s, default 15).
#
# FLWR_SUPEREXEC_TASK_POLL_INTERVAL (s, default here 0.1; Flower's own default 1).
# FEDSHARE_SUPERNODE_IDLE_POLL (s, default 0.25; --supernode-loop quick only): how long an idle
# SuperNode waits between pulls (Flower's fixed 3 s).
# Offline-safe: FLWR_DISABLE_UPDATE_CHECK=1 and FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
# are exported, and the SuperLink gets --disable-runtime-dependency-installation (no `uv sync`
# of the app's dependencies at run time: they are in the venv / the superexec image).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
export PATH="$VENV/bin:$PATH"
export FLWR_DISABLE_UPDATE_CHECK=1                     # offline: no call to api.flower.ai
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1  # never `uv sync` app deps at run time
# How often each flower-superexec asks its SuperLink/SuperNode for a task to launch (Flower's
# default 1 s; range 0.01-60). A message waits for this poll before its ClientApp process
# starts, so 0.1 s takes ~0.45 s off every message on average (docs/benchmarks.md,
# "Deployment latency"); the cost is a local request every 0.1 s per superexec.
export FLWR_SUPEREXEC_TASK_POLL_INTERVAL=${FLWR_SUPEREXEC_TASK_POLL_INTERVAL:-0.1}
HOST=127.0.0.1                                        # the SuperLink's address: loopback only
umask 077                                             # run folder, logs, db, state: owner only

PROG=${FEDSHARE_PROG:-$0}   # how the user called it: `fedshare federation` or the script
die() { echo "$PROG: $*" >&2; exit 1; }
bad_usage() { echo "$PROG: $* (see '$PROG --help')" >&2; exit 2; }   # exit 2: bad arguments

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed "\$d; s/^# \{0,1\}//; s#deploy/federation.sh#$PROG#"; }

# ------------------------------------------------------------------ arguments
MODE=${MODE:-}
NODES=${NODES:-}
NODE_CONFIG_EXTRA=${NODE_CONFIG_EXTRA:-}
APP_DIR=${FED_APP_DIR:-$ROOT}
SUPERLINK_PORT=${SUPERLINK_PORT:-}
NODE_PORT_BASE=${NODE_PORT_BASE:-}
FLEET_HOST=${FLEET_HOST:-}
FLEET_PORT=${FLEET_PORT:-}
FLEET_MAX_BODY=${FLEET_MAX_BODY:-}
ISOLATION=${ISOLATION:-}
CLIENTAPP_EXEC=${CLIENTAPP_EXEC:-}
SUPERNODE_LOOP=${SUPERNODE_LOOP:-}
RUN_DIR=${FED_RUN_DIR:-$ROOT/.federation}
CERTS_DIR=${CERTS_DIR:-}
KEYS_DIR=${KEYS_DIR:-}
CONN=${FED_CONN:-}
CMD=""
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --mode) MODE=${2:?--mode needs a value}; shift 2 ;;
    --mode=*) MODE=${1#*=}; shift ;;
    --nodes) NODES=${2:?--nodes needs a value}; shift 2 ;;
    --nodes=*) NODES=${1#*=}; shift ;;
    --node-config-extra) NODE_CONFIG_EXTRA="${NODE_CONFIG_EXTRA:+$NODE_CONFIG_EXTRA;}${2:?--node-config-extra needs a value}"; shift 2 ;;
    --node-config-extra=*) NODE_CONFIG_EXTRA="${NODE_CONFIG_EXTRA:+$NODE_CONFIG_EXTRA;}${1#*=}"; shift ;;
    --app) APP_DIR=${2:?--app needs a value}; shift 2 ;;
    --app=*) APP_DIR=${1#*=}; shift ;;
    --superlink-port) SUPERLINK_PORT=${2:?}; shift 2 ;;
    --superlink-port=*) SUPERLINK_PORT=${1#*=}; shift ;;
    --fleet-host) FLEET_HOST=${2:?--fleet-host needs a value}; shift 2 ;;
    --fleet-host=*) FLEET_HOST=${1#*=}; shift ;;
    --fleet-port) FLEET_PORT=${2:?--fleet-port needs a value}; shift 2 ;;
    --fleet-port=*) FLEET_PORT=${1#*=}; shift ;;
    --max-body-bytes) FLEET_MAX_BODY=${2:?--max-body-bytes needs a value}; shift 2 ;;
    --max-body-bytes=*) FLEET_MAX_BODY=${1#*=}; shift ;;
    --node-port-base) NODE_PORT_BASE=${2:?}; shift 2 ;;
    --node-port-base=*) NODE_PORT_BASE=${1#*=}; shift ;;
    --isolation) ISOLATION=${2:?}; shift 2 ;;
    --isolation=*) ISOLATION=${1#*=}; shift ;;
    --clientapp-exec) CLIENTAPP_EXEC=${2:?--clientapp-exec needs a value}; shift 2 ;;
    --clientapp-exec=*) CLIENTAPP_EXEC=${1#*=}; shift ;;
    --supernode-loop) SUPERNODE_LOOP=${2:?--supernode-loop needs a value}; shift 2 ;;
    --supernode-loop=*) SUPERNODE_LOOP=${1#*=}; shift ;;
    --run-dir) RUN_DIR=${2:?}; shift 2 ;;
    --run-dir=*) RUN_DIR=${1#*=}; shift ;;
    --certs-dir) CERTS_DIR=${2:?}; shift 2 ;;
    --certs-dir=*) CERTS_DIR=${1#*=}; shift ;;
    --keys-dir) KEYS_DIR=${2:?}; shift 2 ;;
    --keys-dir=*) KEYS_DIR=${1#*=}; shift ;;
    --conn) CONN=${2:?}; shift 2 ;;
    --conn=*) CONN=${1#*=}; shift ;;
    --print-commands) CMD=print-commands; shift ;;
    -h|--help|help) usage; exit 0 ;;
    --) shift; ARGS+=("$@"); break ;;
    start|run|stop|status|print-commands|start-node)
      if [ -z "$CMD" ]; then CMD=$1; else ARGS+=("$1"); fi; shift ;;
    *) if [ -n "$CMD" ]; then ARGS+=("$1"); shift; else bad_usage "unknown argument '$1'"; fi ;;
  esac
done
[ -n "$CMD" ] || bad_usage "no command: give start, run, stop, status or print-commands"
RUN_DIR=$(realpath -m "$RUN_DIR")
[ "$CMD" = print-commands ] || mkdir -p "$RUN_DIR"
ENV_FILE="$RUN_DIR/federation.env"
PID_DIR="$RUN_DIR/pids"
LOG_DIR="$RUN_DIR/logs"

# Every command but print-commands starts from what the last `start` recorded in the run
# folder (so `start` after `stop` brings the same federation back on the same database);
# options and environment variables given now win.
SAVED_VARS="MODE NODES NODE_CONFIG_EXTRA SUPERLINK_PORT NODE_PORT_BASE FLEET_HOST FLEET_PORT FLEET_MAX_BODY ISOLATION CLIENTAPP_EXEC SUPERNODE_LOOP CERTS_DIR KEYS_DIR CONN FLWR_HOME STATE_DIR"
STATE_DIR=${FEDSHARE_STATE_DIR:-}
if [ "$CMD" != print-commands ] && [ -f "$ENV_FILE" ]; then
  declare -A _given=()
  for _v in $SAVED_VARS; do _given[$_v]=${!_v:-}; done
  # shellcheck disable=SC1090
  . "$ENV_FILE"
  for _v in $SAVED_VARS; do [ -z "${_given[$_v]}" ] || printf -v "$_v" '%s' "${_given[$_v]}"; done
fi
MODE=${MODE:-insecure}
NODES=${NODES:-3}
SUPERLINK_PORT=${SUPERLINK_PORT:-8000}
NODE_PORT_BASE=${NODE_PORT_BASE:-9094}
FLEET_PORT=${FLEET_PORT:-9092}
FLEET_MAX_BODY=${FLEET_MAX_BODY:-67108864}
ISOLATION=${ISOLATION:-process}
CLIENTAPP_EXEC=${CLIENTAPP_EXEC:-warm}
SUPERNODE_LOOP=${SUPERNODE_LOOP:-quick}
CERTS_DIR=${CERTS_DIR:-$ROOT/.certs}
KEYS_DIR=${KEYS_DIR:-$RUN_DIR/keys}
CONN=${CONN:-fedshare}
export FLWR_HOME=${FLWR_HOME:-$RUN_DIR/flwr-home}
STATE_DIR=${STATE_DIR:-$RUN_DIR/state}
OUT_DIR=${FEDSHARE_OUT_DIR:-$ROOT/results}
if [ -z "${FEDSHARE_DATA_DIR:-}" ]; then
  FEDSHARE_DATA_DIR="$(dirname "$ROOT")/shared/data"
fi
export FEDSHARE_DATA_DIR

case "$MODE" in insecure|tls|tls-auth) ;; *) bad_usage "--mode must be insecure, tls or tls-auth (got '$MODE')" ;; esac
case "$ISOLATION" in process|subprocess) ;; *) bad_usage "--isolation must be process or subprocess (got '$ISOLATION')" ;; esac
case "$CLIENTAPP_EXEC" in warm|flower) ;; *) bad_usage "--clientapp-exec must be warm or flower (got '$CLIENTAPP_EXEC')" ;; esac
case "$SUPERNODE_LOOP" in quick|flower) ;; *) bad_usage "--supernode-loop must be quick or flower (got '$SUPERNODE_LOOP')" ;; esac
[[ "$NODES" =~ ^[1-9][0-9]*$ ]] || bad_usage "--nodes must be a positive integer (got '$NODES')"
if [ -n "$NODE_CONFIG_EXTRA" ]; then
  IFS=';' read -ra _extras <<<"$NODE_CONFIG_EXTRA"
  for _e in "${_extras[@]}"; do
    [[ "$_e" =~ ^([0-9]+):[[:space:]]*[A-Za-z] ]] && [ "${BASH_REMATCH[1]}" -lt "$NODES" ] \
      || bad_usage "--node-config-extra must be 'I:KEY=VALUE ...' with 0 <= I < $NODES (got '$_e')"
  done
fi
for p in "$SUPERLINK_PORT" "$NODE_PORT_BASE"; do
  [[ "$p" =~ ^[0-9]+$ ]] && [ "$p" -ge 1 ] && [ $((p + NODES)) -le 65535 ] || bad_usage "bad port '$p' (--superlink-port / --node-port-base: 1..65535 with room for every node)"
done
[[ "$FLEET_PORT" =~ ^[0-9]+$ ]] && [ "$FLEET_PORT" -ge 1 ] && [ "$FLEET_PORT" -le 65535 ] \
  || bad_usage "--fleet-port must be a port number 1..65535 (got '$FLEET_PORT')"
[[ "$FLEET_MAX_BODY" =~ ^[0-9]+$ ]] && [ "$FLEET_MAX_BODY" -ge 1024 ] \
  || bad_usage "--max-body-bytes must be an integer >= 1024 (got '$FLEET_MAX_BODY')"
case "$FLEET_HOST" in
  *:*) bad_usage "--fleet-host: IPv6 addresses are not supported by this script (got '$FLEET_HOST'); use an IPv4 address or a host name" ;;
  *[!A-Za-z0-9.-]*) bad_usage "--fleet-host must be an IPv4 address or a host name (got '$FLEET_HOST')" ;;
esac
case "$CERTS_DIR" in /*) ;; *) CERTS_DIR="$(pwd)/$CERTS_DIR" ;; esac
case "$KEYS_DIR" in /*) ;; *) KEYS_DIR="$(pwd)/$KEYS_DIR" ;; esac
case "$FLWR_HOME" in /*) ;; *) FLWR_HOME="$(pwd)/$FLWR_HOME" ;; esac
case "$STATE_DIR" in /*) ;; *) STATE_DIR="$(pwd)/$STATE_DIR" ;; esac
CA="$CERTS_DIR/ca.crt"

node_port() { echo $((NODE_PORT_BASE + $1)); }

node_extra() {   # the --node-config-extra of SuperNode $1 (space-joined)
  local e out="" extras=()
  [ -n "$NODE_CONFIG_EXTRA" ] || return 0
  IFS=';' read -ra extras <<<"$NODE_CONFIG_EXTRA"
  for e in "${extras[@]}"; do
    [ "${e%%:*}" != "$1" ] || out+=" ${e#*:}"
  done
  echo "$out"
}

# The gateway runs when the SuperNodes are to connect somewhere else than the SuperLink's own
# loopback address (127.0.0.2 is a different address, hence gets a gateway).
gateway_on() { [ -n "$FLEET_HOST" ] && [ "$FLEET_HOST" != "$HOST" ] && [ "$FLEET_HOST" != localhost ]; }

fleet_dial() {   # HOST:PORT the SuperNodes started here connect to
  if ! gateway_on; then echo "$HOST:$SUPERLINK_PORT"
  elif [ "$FLEET_HOST" = 0.0.0.0 ]; then echo "$HOST:$FLEET_PORT"   # all interfaces incl. loopback
  else echo "$FLEET_HOST:$FLEET_PORT"; fi
}

gateway_san() {  # the SAN entry the server certificate needs for the gateway address
  gateway_on && [ "$FLEET_HOST" != 0.0.0.0 ] || return 0
  if [[ "$FLEET_HOST" =~ ^[0-9.]+$ ]]; then echo "IP:$FLEET_HOST"; else echo "DNS:$FLEET_HOST"; fi
}

# ------------------------------------------------------------------ the commands
# Every command line of the federation is built here, once; docker-compose.yml uses the same
# flags (tests/deploy/test_compose.py compares them with `print-commands`).
components() {   # names in start order
  echo superlink
  if gateway_on; then echo fleet-gateway; fi
  if [ "$ISOLATION" = process ]; then echo superexec-serverapp; fi
  local i
  for ((i = 0; i < NODES; i++)); do
    echo "supernode-$i"
    if [ "$ISOLATION" = process ]; then echo "superexec-clientapp-$i"; fi
  done
  return 0
}

command_of() {   # sets CMDLINE=(argv) for component $1
  local name=$1 i
  case "$name" in
    superlink)
      CMDLINE=(flower-superlink)
      if [ "$MODE" = insecure ]; then CMDLINE+=(--insecure)
      else CMDLINE+=(--ssl-ca-certfile "$CA" --ssl-certfile "$CERTS_DIR/server.pem"
                     --ssl-keyfile "$CERTS_DIR/server.key"); fi
      CMDLINE+=(--isolation "$ISOLATION" --host "$HOST" --port "$SUPERLINK_PORT"
                --database "$RUN_DIR/superlink.db" --disable-runtime-dependency-installation)
      if [ "$MODE" = tls-auth ]; then CMDLINE+=(--enable-supernode-auth); fi
      ;;
    fleet-gateway)
      CMDLINE=(python "$ROOT/deploy/fleet_gateway.py" --listen-host "$FLEET_HOST"
               --listen-port "$FLEET_PORT" --upstream "$HOST:$SUPERLINK_PORT")
      if [ "$MODE" = insecure ]; then CMDLINE+=(--insecure)
      else CMDLINE+=(--certfile "$CERTS_DIR/server.pem" --keyfile "$CERTS_DIR/server.key"
                     --upstream-ca "$CA"); fi
      CMDLINE+=(--max-body-bytes "$FLEET_MAX_BODY")
      ;;
    superexec-serverapp)
      CMDLINE=(flower-superexec)
      if [ "$MODE" = insecure ]; then CMDLINE+=(--insecure); else CMDLINE+=(--root-certificates "$CA"); fi
      CMDLINE+=(--runtime-api-address "$HOST:$SUPERLINK_PORT")
      ;;
    supernode-*)
      i=${name#supernode-}
      if [ "$SUPERNODE_LOOP" = quick ]; then CMDLINE=(python "$ROOT/deploy/quick_supernode.py")
      else CMDLINE=(flower-supernode); fi
      if [ "$MODE" = insecure ]; then CMDLINE+=(--insecure); else CMDLINE+=(--root-certificates "$CA"); fi
      CMDLINE+=(--superlink "$(fleet_dial)")
      if [ "$MODE" = tls-auth ]; then CMDLINE+=(--auth-supernode-private-key "$KEYS_DIR/node-$i"); fi
      CMDLINE+=(--isolation "$ISOLATION" --host "$HOST" --port "$(node_port "$i")"
                --node-config "partition-id=$i num-partitions=$NODES state-dir=\"$STATE_DIR/node-$i\"$(node_extra "$i")")
      ;;
    superexec-clientapp-*)
      i=${name#superexec-clientapp-}
      # The SuperNode's own Runtime API (loopback, same host/container pair) is plain HTTP.
      if [ "$CLIENTAPP_EXEC" = warm ]; then CMDLINE=(python "$ROOT/deploy/warm_superexec.py")
      else CMDLINE=(flower-superexec); fi
      CMDLINE+=(--insecure --runtime-api-address "$HOST:$(node_port "$i")")
      ;;
    *) die "unknown component $name" ;;
  esac
}

marker_of() {    # a token of the component's command line that identifies our process
  case "$1" in
    superlink|supernode-*|fleet-gateway) command_of "$1"; local a prev=""
      for a in "${CMDLINE[@]}"; do
        case "$prev" in --port|--listen-port) echo "$prev $a"; return 0 ;; esac; prev=$a
      done ;;
    superexec-*) command_of "$1"; echo "${CMDLINE[*]: -1}" ;;
  esac
}

print_commands() {
  local name
  while read -r name; do
    command_of "$name"
    printf '%s:' "$name"
    printf ' %q' "${CMDLINE[@]}"
    printf '\n'
  done < <(components)
}

# ------------------------------------------------------------------ helpers
alive() {   # pid exists and is not a zombie
  local state
  [ -r "/proc/$1/stat" ] || return 1
  state=$(sed -E 's/^[0-9]+ \(.*\) ([A-Za-z]).*/\1/' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

ours() {    # pid $1 is alive and its command line contains the whole argument(s) $2
  alive "$1" && tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$2 "
}

descendants() {  # all live descendants of pid $1 (children first-level order)
  local kids k
  kids=$(pgrep -P "$1" 2>/dev/null || true)
  for k in $kids; do echo "$k"; descendants "$k"; done
}

recorded() {     # "name pid marker" for every pid file
  local f name
  [ -d "$PID_DIR" ] || return 0
  for f in "$PID_DIR"/*.pid; do
    [ -e "$f" ] || continue
    name=$(basename "$f" .pid)
    echo "$name $(sed -n 1p "$f") $(sed -n '2,$p' "$f")"
  done
}

port_free() {    # can we bind ${2:-HOST}:$1 (as uvicorn does, SO_REUSEADDR)?
  python - "${2:-$HOST}" "$1" <<'PY'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind((sys.argv[1], int(sys.argv[2])))
except OSError:
    sys.exit(1)
finally:
    s.close()
PY
}

port_owner() {
  ss -Hltnp "sport = :$1" 2>/dev/null | sed -nE 's/.*users:\(\("([^"]+)",pid=([0-9]+).*/\1 (pid \2)/p' | head -1
}

superlink_url() {
  if [ "$MODE" = insecure ]; then echo "http://$HOST:$SUPERLINK_PORT"; else echo "https://$HOST:$SUPERLINK_PORT"; fi
}

superlink_healthy() {
  local tls=()
  [ "$MODE" = insecure ] || tls=(--cacert "$CA")
  curl -sf -o /dev/null --max-time 2 "${tls[@]}" "$(superlink_url)/health"
}

gateway_url() {
  if [ "$MODE" = insecure ]; then echo "http://$(fleet_dial)"; else echo "https://$(fleet_dial)"; fi
}

gateway_healthy() {  # /health through the gateway: it is up and reaches the SuperLink
  local tls=()
  [ "$MODE" = insecure ] || tls=(--cacert "$CA")
  curl -sf -o /dev/null --max-time 2 "${tls[@]}" "$(gateway_url)/health"
}

write_connection() {   # [superlink.<CONN>] in $FLWR_HOME/config.toml (other tables kept)
  mkdir -p "$FLWR_HOME"
  python - "$FLWR_HOME/config.toml" "$CONN" "$HOST:$SUPERLINK_PORT" "$MODE" "$CA" <<'PY'
import sys, tomllib, tomli_w
from pathlib import Path
path, conn, address, mode, ca = sys.argv[1:]
p = Path(path)
cfg = tomllib.loads(p.read_text()) if p.exists() else {}
links = cfg.setdefault("superlink", {})
links.setdefault("default", conn)
links.setdefault("local", {"address": ":local:"})
table = {"address": address}
if mode == "insecure":
    table["insecure"] = True
else:
    table["root-certificates"] = ca
links[conn] = table
tmp = p.with_suffix(".tmp")
tmp.write_text(tomli_w.dumps(cfg))
tmp.replace(p)
PY
}

launch() {   # start component $1 in its own session, log to LOG_DIR, record the pid
  local name=$1 pid
  command_of "$name"
  {
    printf '### %s' "$(date -u +%FT%TZ)"; printf ' %q' "${CMDLINE[@]}"; printf '\n'
  } >> "$LOG_DIR/$name.log"
  setsid "${CMDLINE[@]}" >> "$LOG_DIR/$name.log" 2>&1 < /dev/null &
  pid=$!
  printf '%s\n%s\n' "$pid" "$(marker_of "$name")" > "$PID_DIR/$name.pid"
  STARTED_PIDS+=("$pid")
}

log_tail() { echo "--- last lines of $1:" >&2; tail -n "${2:-15}" "$1" >&2 || true; }

fail_start() {
  echo "$PROG: $*" >&2
  if [ "$CMD" = start-node ]; then   # leave the running federation alone
    kill -TERM "${STARTED_PIDS[@]}" 2>/dev/null || true
    exit 1
  fi
  echo "$PROG: stopping what was started" >&2
  do_stop >&2 || true
  exit 1
}

wait_for() {   # wait_for NAME PID CHECK-FUNCTION: until CHECK succeeds, the pid dies or timeout
  local name=$1 pid=$2 check=$3 deadline=$((SECONDS + ${START_TIMEOUT:-90}))
  while ! "$check" "$name"; do
    if ! alive "$pid"; then
      log_tail "$LOG_DIR/$name.log" 25
      fail_start "$name (pid $pid) exited during start-up; see $LOG_DIR/$name.log"
    fi
    [ $SECONDS -lt $deadline ] || { log_tail "$LOG_DIR/$name.log"; fail_start "$name not ready after ${START_TIMEOUT:-90} s"; }
    sleep 0.3
  done
}

check_superlink() { superlink_healthy; }
check_gateway() { gateway_healthy; }
check_supernode() { grep -q "SuperNode ID:" "$LOG_DIR/$1.log" 2>/dev/null; }
check_superexec() { grep -q "Starting Flower SuperExec" "$LOG_DIR/$1.log" 2>/dev/null; }
since_last_launch() { sed -n '/^### /h; /^### /!H; ${x;p}' "$LOG_DIR/$1.log" 2>/dev/null; }  # log since the last launch
check_supernode_restarted() { since_last_launch "$1" | grep -q "SuperNode ID:"; }
check_superexec_restarted() { since_last_launch "$1" | grep -q "Starting Flower SuperExec"; }

register_keys() {   # tls-auth: register every SuperNode's public key (idempotent)
  local i out
  "$ROOT/deploy/supernode-keys.sh" "$KEYS_DIR" "$NODES" >/dev/null
  for ((i = 0; i < NODES; i++)); do
    out=$(flwr supernode register --format json "$KEYS_DIR/node-$i.pub" "$CONN" 2>&1) || true
    if grep -q '"success": true' <<<"$out"; then
      echo "registered SuperNode key $KEYS_DIR/node-$i.pub ($(grep -o '"node-id": "\{0,1\}[0-9]*' <<<"$out" || true))"
    elif grep -q "already in use" <<<"$out"; then
      echo "SuperNode key $KEYS_DIR/node-$i.pub already registered"
    else
      echo "$out" >&2
      fail_start "could not register $KEYS_DIR/node-$i.pub"
    fi
  done | tee -a "$LOG_DIR/register.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || exit 1
}

# ------------------------------------------------------------------ subcommands
private_files() {  # tighten what older versions (umask 022) left readable to everyone
  chmod 0700 "$RUN_DIR" "$PID_DIR" "$LOG_DIR" "$STATE_DIR"
  [ ! -d "$FLWR_HOME" ] || chmod 0700 "$FLWR_HOME"
  find "$LOG_DIR" "$RUN_DIR"/superlink.db* "$ENV_FILE" -maxdepth 1 -type f -exec chmod 0600 {} + 2>/dev/null || true
}

do_start() {
  local name pid live=() t0=$SECONDS
  mkdir -p "$PID_DIR" "$LOG_DIR" "$STATE_DIR"
  private_files
  while read -r name pid marker; do
    ours "$pid" "$marker" && live+=("$name:$pid")
  done < <(recorded)
  [ ${#live[@]} -eq 0 ] || die "a federation is already running from $RUN_DIR (${live[*]}); run '$PROG --run-dir $RUN_DIR stop' first"
  rm -f "$PID_DIR"/*.pid

  local ports=("$SUPERLINK_PORT") i
  for ((i = 0; i < NODES; i++)); do ports+=("$(node_port "$i")"); done
  [ "$(printf '%s\n' "${ports[@]}" | sort -u | wc -l)" -eq ${#ports[@]} ] || die "ports overlap: ${ports[*]}"
  for p in "${ports[@]}"; do
    port_free "$p" || die "port $p on $HOST is already in use${p:+ by $(port_owner "$p")}; choose other ports (--superlink-port / --node-port-base)"
  done
  if gateway_on && [ "$MODE" != tls-auth ]; then
    # Without SuperNode auth the Fleet API's own register-node lets any client join (checked
    # against Flower 1.41), so the gateway hides the Control API but not the federation.
    echo "$PROG: WARNING: --fleet-host with --mode $MODE: anyone who reaches $FLEET_HOST:$FLEET_PORT can join as a new SuperNode; use --mode tls-auth to expose a Fleet port" >&2
  fi
  if gateway_on; then
    for p in "${ports[@]}"; do
      [ "$p" != "$FLEET_PORT" ] || die "--fleet-port $FLEET_PORT is also the SuperLink's or a SuperNode's port; choose another"
    done
    port_free "$FLEET_PORT" "$FLEET_HOST" || die "cannot listen on $FLEET_HOST:$FLEET_PORT (in use${FLEET_PORT:+ by $(port_owner "$FLEET_PORT")}, or not an address of this host); choose another --fleet-host / --fleet-port"
  fi

  if [ "$MODE" != insecure ]; then
    local san
    san=$(gateway_san)
    EXTRA_SAN="${EXTRA_SAN:-}${EXTRA_SAN:+${san:+,}}$san" "$ROOT/deploy/certs.sh" "$CERTS_DIR" \
      || die "no usable certificate in $CERTS_DIR (see above)"
    [ -s "$CA" ] || die "no CA certificate at $CA"
  fi
  for ((i = 0; i < NODES; i++)); do mkdir -p "$STATE_DIR/node-$i"; done

  {
    echo "# written by deploy/federation.sh start, $(date -u +%FT%TZ)"
    for v in $SAVED_VARS; do printf '%s=%q\n' "$v" "${!v}"; done
  } > "$ENV_FILE"
  write_connection

  STARTED_PIDS=()
  launch superlink
  wait_for superlink "${STARTED_PIDS[-1]}" check_superlink
  echo "superlink up (pid ${STARTED_PIDS[-1]}, $(superlink_url), $((SECONDS - t0)) s)"
  if gateway_on; then
    launch fleet-gateway
    wait_for fleet-gateway "${STARTED_PIDS[-1]}" check_gateway
    echo "fleet gateway up (pid ${STARTED_PIDS[-1]}, $(gateway_url) -> $(superlink_url), Fleet API only)"
  fi
  if [ "$ISOLATION" = process ]; then
    launch superexec-serverapp
  fi
  if [ "$MODE" = tls-auth ]; then register_keys; fi
  for ((i = 0; i < NODES; i++)); do
    launch "supernode-$i"
    if [ "$ISOLATION" = process ]; then launch "superexec-clientapp-$i"; fi
  done
  while read -r name pid marker; do
    case "$name" in
      supernode-*) wait_for "$name" "$pid" check_supernode ;;
      superexec-*) wait_for "$name" "$pid" check_superexec ;;
    esac
  done < <(recorded)
  echo "federation up in $((SECONDS - t0)) s: mode $MODE, $NODES SuperNodes, SuperLink $HOST:$SUPERLINK_PORT, SuperNode ports $(node_port 0)..$(node_port $((NODES - 1)))"
  if gateway_on; then echo "  SuperNodes connect through the Fleet gateway $FLEET_HOST:$FLEET_PORT"; fi
  echo "  run folder $RUN_DIR (logs/, pids/, superlink.db, state/)"
  echo "  FLWR_HOME=$FLWR_HOME  connection '$CONN'"
  echo "  next: $PROG --run-dir $RUN_DIR run 'num-rounds=2'   then: $PROG --run-dir $RUN_DIR stop"
}

do_stop() {
  local entries=() name pid marker
  while read -r name pid marker; do entries+=("$name $pid $marker"); done < <(recorded)
  if [ ${#entries[@]} -eq 0 ]; then echo "nothing recorded in $PID_DIR"; return 0; fi
  # Stop order: ClientApp executors and SuperNodes first (a SuperNode deactivates itself on
  # SIGTERM), then the ServerApp executor, then the SuperLink.
  local order=() e
  for pattern in 'superexec-clientapp-*' 'supernode-*' 'fleet-gateway' 'superexec-serverapp' 'superlink'; do
    for e in "${entries[@]}"; do
      # shellcheck disable=SC2254
      case "${e%% *}" in $pattern) order+=("$e") ;; esac
    done
  done
  local victims=() kids=() p
  for e in "${order[@]}"; do
    read -r name pid marker <<<"$e"
    if ours "$pid" "$marker"; then
      for p in $(descendants "$pid"); do alive "$p" && kids+=("$p"); done
      kill -TERM "$pid" 2>/dev/null && victims+=("$pid") && echo "stopping $name (pid $pid)"
    elif alive "$pid"; then
      echo "pid $pid is no longer $name (not touched)"
    fi
  done
  local all=("${victims[@]}" "${kids[@]}") deadline=$((SECONDS + ${STOP_TIMEOUT:-15}))
  while :; do
    local left=()
    for p in "${victims[@]}"; do alive "$p" && left+=("$p"); done
    [ ${#left[@]} -eq 0 ] && break
    if [ $SECONDS -ge $deadline ]; then
      echo "forcing (SIGKILL) pids ${left[*]}"
      kill -KILL "${left[@]}" 2>/dev/null || true
      sleep 0.5
      break
    fi
    sleep 0.2
  done
  # Children (superexec, flwr-clientapp/-serverapp) of what we stopped.
  local rest=()
  for p in "${kids[@]}"; do alive "$p" && rest+=("$p"); done
  if [ ${#rest[@]} -gt 0 ]; then
    kill -TERM "${rest[@]}" 2>/dev/null || true
    sleep 2
    for p in "${rest[@]}"; do alive "$p" && kill -KILL "$p" 2>/dev/null || true; done
  fi
  local still=()
  for p in "${all[@]}"; do alive "$p" && still+=("$p"); done
  rm -f "$PID_DIR"/*.pid
  if [ ${#still[@]} -gt 0 ]; then echo "still alive: ${still[*]}" >&2; return 1; fi
  echo "stopped (${#victims[@]} processes${kids:+ + ${#kids[@]} children})"
}

do_start_node() {   # SuperNode $1 (and its SuperExec) again, if not running
  local i=${ARGS[0]:-} name pid marker
  [[ "$i" =~ ^[0-9]+$ ]] && [ "$i" -lt "$NODES" ] || die "start-node needs a node index 0..$((NODES - 1)) (got '${i}')"
  superlink_healthy || die "SuperLink $(superlink_url) is not answering; use start"
  STARTED_PIDS=()
  for name in "supernode-$i" "superexec-clientapp-$i"; do
    [ "$name" = "supernode-$i" ] || [ "$ISOLATION" = process ] || continue
    if [ -f "$PID_DIR/$name.pid" ]; then
      pid=$(sed -n 1p "$PID_DIR/$name.pid"); marker=$(sed -n '2,$p' "$PID_DIR/$name.pid")
      if ours "$pid" "$marker"; then echo "$name already running (pid $pid)"; continue; fi
    fi
    [ "$name" != "supernode-$i" ] || port_free "$(node_port "$i")" \
      || die "port $(node_port "$i") on $HOST is still in use${i:+ by $(port_owner "$(node_port "$i")")}"
    launch "$name"
    case "$name" in
      supernode-*) wait_for "$name" "${STARTED_PIDS[-1]}" check_supernode_restarted ;;
      *) wait_for "$name" "${STARTED_PIDS[-1]}" check_superexec_restarted ;;
    esac
    echo "$name started (pid ${STARTED_PIDS[-1]})"
  done
}

do_status() {
  local name pid marker n=0 up=0
  while read -r name pid marker; do
    n=$((n + 1))
    if ours "$pid" "$marker"; then up=$((up + 1)); printf '%-24s pid %-7s running\n' "$name" "$pid"
    else printf '%-24s pid %-7s not running\n' "$name" "$pid"; fi
  done < <(recorded)
  [ $n -gt 0 ] || { echo "no federation recorded in $RUN_DIR"; return 3; }
  echo "mode $MODE, SuperLink $(superlink_url) (loopback, operator only): $(superlink_healthy && echo healthy || echo 'not answering')"
  if gateway_on; then
    echo "Fleet gateway $FLEET_HOST:$FLEET_PORT ($(gateway_url), Fleet API only): $(gateway_healthy && echo healthy || echo 'not answering')"
  fi
  echo "export FLWR_HOME=$FLWR_HOME   # connection '$CONN'"
  if superlink_healthy; then flwr supernode list "$CONN" 2>&1 | tail -n +2 || true; fi
  [ $up -eq $n ] || return 3
}

do_run() {
  [ -f "$ENV_FILE" ] || die "no federation started from $RUN_DIR (run '$PROG start' first)"
  superlink_healthy || die "SuperLink $(superlink_url) is not answering (see '$PROG --run-dir $RUN_DIR status')"
  [ -d "$FEDSHARE_DATA_DIR" ] || die "no data directory $FEDSHARE_DATA_DIR (set FEDSHARE_DATA_DIR)"
  mkdir -p "$STATE_DIR" "$OUT_DIR" "$LOG_DIR"
  local out log rc
  out=$(cd "$OUT_DIR" && pwd)
  # Absolute paths (Flower runs the app from its own copy of the project) and min-nodes = the
  # number of SuperNodes, unless the extra overrides set them (TOML forbids duplicate keys).
  local user=" ${ARGS[*]} " kv overrides=""
  for kv in "data-dir=\"$FEDSHARE_DATA_DIR\"" "state-dir=\"$STATE_DIR\"" "out-dir=\"$out\"" "min-nodes=$NODES"; do
    [[ "$user" =~ [[:space:]]${kv%%=*}[[:space:]]*= ]] || overrides+="$kv "
  done
  overrides+="${ARGS[*]}"
  log="$LOG_DIR/run-$(date -u +%Y%m%dT%H%M%S).log"
  [ -f "$APP_DIR/pyproject.toml" ] || die "--app $APP_DIR: no pyproject.toml there"
  # The data fingerprint every node must report, computed here from the operator's copy of the
  # data: left empty, the first node to share would fix it (a hostile one, a forged one).
  if ! [[ "$user" =~ [[:space:]]data-fingerprint[[:space:]]*= ]]; then
    local fp
    fp=$(cd "$ROOT" && python -m fedshare.fingerprint --app "$APP_DIR" "$overrides") \
      || die "cannot compute the run's data fingerprint (above); set data-fingerprint=\"...\" to give it"
    overrides+=" data-fingerprint=\"$fp\""
  fi
  echo "flwr run $APP_DIR $CONN --stream --run-config '$overrides'   (log: $log)"
  set +e
  flwr run "$APP_DIR" "$CONN" --stream --run-config "$overrides" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  set -e
  [ "$rc" -eq 0 ] || return "$rc"
  # `flwr run --stream` exits 0 even when the ServerApp fails: ask the SuperLink.
  local run_id status="" i
  run_id=$(sed -nE 's/.*Successfully started run ([0-9]+).*/\1/p' "$log" | tail -1)
  [ -n "$run_id" ] || { echo "$PROG: no run id in the output of flwr run" >&2; return 1; }
  for i in $(seq 20); do
    status=$(flwr ls "$CONN" --run-id "$run_id" --format json 2>/dev/null \
             | sed -nE 's/.*"status": "([^"]+)".*/\1/p' | head -1)
    case "$status" in finished:*) break ;; esac
    sleep 1
  done
  echo "run $run_id: ${status:-unknown}" | tee -a "$log"
  [ "$status" = finished:completed ] || { echo "$PROG: run $run_id did not complete (${status:-unknown}); log: $log" >&2; return 1; }
}

case "$CMD" in
  start) do_start ;;
  stop) do_stop ;;
  start-node) do_start_node ;;
  status) do_status ;;
  run) do_run ;;
  print-commands) print_commands ;;
esac
