#!/usr/bin/env bash
# Local simulation of a FedShare federation with `flwr run .`.
#
#   deploy/simulate.sh [--nodes N] [OVERRIDES ...]
#
#   --nodes N    [NODES, 100]  simulated SuperNodes (node i hosts user partition i of N)
#   OVERRIDES    run-config values, e.g. "num-rounds=5 sharing-ratio=0.25" or num-rounds=5
#                sharing-ratio=0.25 (strings in double quotes: 'dataset="ml-1m"'); the keys
#                are [tool.flwr.app.config] in pyproject.toml (README, "Configuration")
#
# Uses a project-local Flower home (.flwr/), passes absolute data/state/result paths
# (Flower runs the app from its own FAB copy, so relative paths would land elsewhere),
# and stops the local simulation SuperLink that `flwr run` starts, by PID. Exit code: 0 the
# run completed, 1 it did not (the ServerApp's error is printed), 2 bad arguments.
# Environment: VENV (default <repo>/.venv), FEDSHARE_DATA_DIR, FEDSHARE_STATE_DIR (default
# <repo>/.fedshare-state), FEDSHARE_OUT_DIR (default <repo>/results), FLWR_HOME (<repo>/.flwr).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROG=${FEDSHARE_PROG:-$0}   # how the user called it: `fedshare simulate` or the script
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed "\$d; s/^# \{0,1\}//; s#deploy/simulate.sh#$PROG#"; }
bad_usage() { echo "$PROG: $* (see '$PROG --help')" >&2; exit 2; }

VENV=${VENV:-$ROOT/.venv}
NODES=${NODES:-100}
OVERRIDES=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --nodes) [ $# -ge 2 ] || bad_usage "--nodes needs a value"; NODES=$2; shift 2 ;;
    --nodes=*) NODES=${1#*=}; shift ;;
    --) shift; OVERRIDES+=("$@"); break ;;
    -*) bad_usage "unknown option '$1'" ;;
    *) OVERRIDES+=("$1"); shift ;;
  esac
done
[[ "$NODES" =~ ^[1-9][0-9]*$ ]] || bad_usage "--nodes must be a positive integer (got '$NODES')"
export PATH="$VENV/bin:$PATH"
export FLWR_HOME=${FLWR_HOME:-$ROOT/.flwr}
export FLWR_DISABLE_UPDATE_CHECK=1                        # offline: no call to api.flower.ai
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1     # never `uv sync` app deps at run time
export FEDSHARE_DATA_DIR=${FEDSHARE_DATA_DIR:-$(cd "$ROOT/.." && pwd)/shared/data}
mkdir -p "$FLWR_HOME"
cat > "$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "local"

[superlink.local]
address = ":local:"
TOML

stop_local_superlink() {
  # The CLI leaves a detached `flower-superlink --simulation` running; ours has our FLWR_HOME.
  local pids=()
  for pid in $(pgrep -f "flower-superlink.*--simulation" || true); do
    if tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | grep -qx "FLWR_HOME=$FLWR_HOME"; then
      pids+=("$pid")
    fi
  done
  [ ${#pids[@]} -eq 0 ] && return 0
  kill "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 50); do   # wait up to 10 s for a clean exit, then force it
    kill -0 "${pids[@]}" 2>/dev/null || return 0
    sleep 0.2
  done
  kill -9 "${pids[@]}" 2>/dev/null || true
}
trap stop_local_superlink EXIT
stop_local_superlink   # one left over from an earlier run keeps its old environment

STATE_DIR=${FEDSHARE_STATE_DIR:-$ROOT/.fedshare-state}
OUT_DIR=${FEDSHARE_OUT_DIR:-$ROOT/results}
overrides="data-dir=\"$FEDSHARE_DATA_DIR\" state-dir=\"$STATE_DIR\" out-dir=\"$OUT_DIR\""
LOG=$(mktemp)
trap 'rm -f "$LOG"; stop_local_superlink' EXIT
"$VENV/bin/flwr" run "$ROOT" local --stream \
  --federation-config "num-supernodes=$NODES client-resources-num-cpus=1" \
  --run-config "$overrides ${OVERRIDES[*]}" 2>&1 | tee "$LOG"

# `flwr run --stream` exits 0 even when the run failed: ask the SuperLink how it ended.
run_id=$(sed -nE 's/.*Successfully started run ([0-9]+).*/\1/p' "$LOG" | head -1)
[ -n "$run_id" ] || { echo "$PROG: the run did not start (see above)" >&2; exit 1; }
status=$("$VENV/bin/flwr" ls local --run-id "$run_id" --format json 2>/dev/null \
         | sed -nE 's/.*"status": "([^"]+)".*/\1/p' | head -1)
[ "$status" = finished:completed ] || {
  echo "$PROG: run $run_id did not complete (${status:-unknown}); the ServerApp's error is above" >&2
  exit 1; }
