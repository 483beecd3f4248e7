#!/usr/bin/env bash
# Make a Docker engine available on this machine (for deploy/images.sh and the compose tests).
#
#   deploy/docker.sh ensure     # install Debian's docker.io if dockerd is absent, start dockerd if
#                               # the engine does not answer, wait for its socket
#   deploy/docker.sh status     # exit 0 if the engine answers, else say why and exit 1
#   deploy/docker.sh stop       # stop the dockerd that `ensure` started (by its recorded PID)
#
# The daemon `ensure` starts has no default bridge (`--bridge=none --iptables=false`): the
# FedShare containers use host networking only, so all their traffic stays on 127.0.0.1.
# Needs root to install or start anything. Log and PID: $DOCKER_STATE_DIR (.docker-build/).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${DOCKER_STATE_DIR:-$ROOT/.docker-build}
PID_FILE=$STATE/dockerd.pid
LOG=$STATE/dockerd.log
SOCKET=/var/run/docker.sock
WAIT=${DOCKERD_START_TIMEOUT:-60}

say() { echo "docker.sh: $*" >&2; }

engine_answers() { command -v docker >/dev/null && docker info >/dev/null 2>&1; }

install_docker() {
  if command -v dockerd >/dev/null && command -v docker >/dev/null; then return 0; fi
  [ "$(id -u)" = 0 ] || { say "Docker is not installed and this is not root: cannot install docker.io"; return 1; }
  command -v apt-get >/dev/null || { say "Docker is not installed and there is no apt-get to install docker.io"; return 1; }
  say "installing docker.io from the Debian packages"
  # `apt-get update` only when the package lists do not know docker.io yet (fresh machines)
  apt-cache show docker.io >/dev/null 2>&1 || apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io >"$STATE/apt-docker.log" 2>&1 \
    || { tail -20 "$STATE/apt-docker.log" >&2; say "apt-get install docker.io failed (log: $STATE/apt-docker.log)"; return 1; }
}

start_dockerd() {
  [ "$(id -u)" = 0 ] || { say "the Docker engine is not running and this is not root: cannot start dockerd"; return 1; }
  if [ -S "$SOCKET" ] && pgrep -x dockerd >/dev/null; then
    say "a dockerd is running but does not answer on $SOCKET"; return 1
  fi
  say "starting dockerd (log: $LOG)"
  setsid dockerd --bridge=none --iptables=false >"$LOG" 2>&1 < /dev/null &
  echo $! >"$PID_FILE"
  local deadline=$((SECONDS + WAIT))
  until engine_answers; do
    if ! kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
      tail -20 "$LOG" >&2; say "dockerd exited during start-up (log: $LOG)"; rm -f "$PID_FILE"; return 1
    fi
    [ $SECONDS -lt $deadline ] || { tail -20 "$LOG" >&2; say "dockerd did not answer within ${WAIT}s"; return 1; }
    sleep 0.5
  done
  say "dockerd $(docker version --format '{{.Server.Version}}') ready (pid $(cat "$PID_FILE"))"
}

ensure() {
  mkdir -p "$STATE"
  if engine_answers; then say "Docker engine $(docker version --format '{{.Server.Version}}') is running"; return 0; fi
  install_docker
  start_dockerd
}

status() {
  command -v docker >/dev/null || { say "no docker CLI on PATH"; return 1; }
  local out
  if out=$(docker info --format '{{.ServerVersion}}' 2>&1); then echo "Docker engine $out"; return 0; fi
  say "Docker engine not reachable: $(echo "$out" | tail -1)"; return 1
}

stop() {
  [ -s "$PID_FILE" ] || { say "no dockerd started by this script ($PID_FILE absent)"; return 0; }
  local pid; pid=$(cat "$PID_FILE")
  # only our own dockerd: the PID must still be a dockerd process
  if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]; then
    kill -TERM "$pid"
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && { say "dockerd $pid did not stop within 30 s"; return 1; }
    say "stopped dockerd $pid"
  fi
  rm -f "$PID_FILE"
}

case "${1:-}" in
  ensure) ensure ;;
  status) status ;;
  stop) stop ;;
  *) echo "usage: $0 ensure|status|stop" >&2; exit 2 ;;
esac
