"""Run manifests: what produced a result file (config, seed, data, code versions)."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata as _md
import platform
import subprocess
from pathlib import Path
from typing import Any

PINNED_PACKAGES = ("flwr", "torch", "torch-geometric", "numpy", "pydantic", "grpcio", "ray")


def package_versions(names: tuple[str, ...] = PINNED_PACKAGES) -> dict[str, str]:
    """Installed version of each package, or ``"not-installed"``."""
    versions = {}
    for name in names:
        try:
            versions[name] = _md.version(name)
        except _md.PackageNotFoundError:
            versions[name] = "not-installed"
    return versions


def git_revision(repo: Path | None = None) -> str:
    """Commit of the working tree (``+dirty`` when it has changes), or ``"unknown"``."""
    cwd = repo or Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=cwd, capture_output=True,
                               text=True, timeout=5, check=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_manifest(config: dict[str, Any], seed: int, data_fingerprint: str) -> dict[str, Any]:
    """The manifest stored beside every result: enough to reproduce or distrust it."""
    return {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": config,
        "seed": seed,
        "data_fingerprint": data_fingerprint,
        "packages": package_versions(),
        "python": platform.python_version(),
        "machine": f"{platform.system()} {platform.machine()}",
        "git": git_revision(),
    }
