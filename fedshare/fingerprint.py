"""``fedshare fingerprint [OVERRIDES]``: the data fingerprint a run's nodes must report.

The ServerApp refuses a node whose dataset fingerprint differs from the run's
``data-fingerprint``; left empty, the first node to share fixes it, and a hostile first node
could fix a forged one (README, ``data-fingerprint``). An operator who holds the data computes
the fingerprint here, from the app's default run config plus the same overrides as
``flwr run --run-config``; ``fedshare federation run`` does so unless the overrides set it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_fingerprint(app_dir: Path, overrides: str) -> str:
    """Fingerprint of the dataset the fused run config (app defaults + ``overrides``) names."""
    from flwr.common.config import get_fused_config_from_dir, parse_config_args

    from common.config import load_config

    fused = get_fused_config_from_dir(app_dir, parse_config_args([overrides]))
    return load_config(fused).load_data().fingerprint


def main(argv: list[str] | None = None, prog: str = "fedshare fingerprint") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="?", default="",
                        help="run-config overrides as for flwr run, e.g. 'dataset=\"ml-1m\" max-users=500'")
    parser.add_argument("--app", type=Path, default=ROOT, help="the Flower app (its pyproject.toml)")
    args = parser.parse_args(argv)
    if not (args.app / "pyproject.toml").is_file():
        parser.error(f"--app {args.app}: no pyproject.toml there")
    try:
        print(run_fingerprint(args.app, args.overrides))
    except (ValueError, OSError) as exc:   # bad config or unreadable data: say which
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
