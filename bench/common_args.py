"""Shared helpers of the benchmark scripts: output, tables, manifests, scratch folders."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from common.atomic import atomic_write_json


def print_table(rows: list[dict], columns: list[str]) -> None:
    """A fixed-width table of ``columns`` for each row (floats to 4 decimals)."""
    def cell(value) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)
    widths = [max(len(c), *(len(cell(r.get(c, ""))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in rows:
        print("  ".join(cell(row.get(c, "")).ljust(w) for c, w in zip(columns, widths)))


def write_json(path: str | Path, obj) -> None:
    atomic_write_json(path, obj)
    print(f"wrote {Path(path).resolve()}")


def load_json(path: str | Path):
    return json.loads(Path(path).read_text())


def new_scratch(prefix: str) -> Path:
    """A private temporary folder for a benchmark's runs (states, per-round results). The
    benchmark removes it when it completes (:func:`remove_scratch`); a killed or failed run
    leaves it, so its per-round results can still be read."""
    return Path(tempfile.mkdtemp(prefix=prefix))


def remove_scratch(path: str | Path) -> None:
    """Delete a completed benchmark's scratch folder (server states hold shared pairs)."""
    shutil.rmtree(path, ignore_errors=True)
