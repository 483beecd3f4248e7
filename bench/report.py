"""Turn quality benchmark JSON into the markdown tables of docs/benchmarks.md and PNG plots.

    python bench/report.py bench/out/quality-ml-100k-cross-user.json [more.json ...] \
        --plots docs/img --name ml-100k-cross-user

Prints one markdown table per input (every row: method, ρ, setting, test metrics at the best
validation round, that round, rounds run, seconds, configuration) and writes
``<name>-sweep.png`` (test NDCG@20 against ρ; FedAvg and centralized LightGCN as reference
lines) and ``<name>-curves.png`` (validation NDCG@20 per evaluated round, per method).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

HEADER = ["method", "ρ", "setting", "Recall@20", "NDCG@20", "Recall@10", "NDCG@10",
          "best round", "rounds run", "seconds", "config"]


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in rows:
        cells = [row["method"], f"{row['sharing_ratio']:g}", row["setting"],
                 *(f"{row[k]:.4f}" for k in ("recall@20", "ndcg@20", "recall@10", "ndcg@10")),
                 str(row.get("best_round")), str(row.get("rounds_run")), f"{row['seconds']:g}",
                 "`" + json.dumps(row.get("config", {}), sort_keys=True) + "`"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _reference(ax, rows: list[dict], method: str, style: str) -> None:
    for row in rows:
        if row["method"] == method:
            ax.axhline(row["ndcg@20"], linestyle=style, color="grey", label=f"{method} {row['ndcg@20']:.3f}")


def _finish(fig, ax, path: Path, xlabel: str, ylabel: str, legend_size: int) -> None:
    """Label, lay out and write one figure."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sweep_plot(rows: list[dict], path: Path, references: dict[str, float]) -> None:
    """Test NDCG@20 of FedShare against ρ, FedAvg and centralized LightGCN as lines (and any
    ``references`` measured elsewhere, e.g. by ``python -m common.centralized``)."""
    points = sorted((r["sharing_ratio"], r["ndcg@20"]) for r in rows
                    if r["method"] in ("fedshare", "fedavg") and r["setting"] != "centralized")
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label="FedShare (ρ = 0: FedAvg)")
    for row in rows:
        if row["method"] == "fedshare-uniform":
            ax.plot(row["sharing_ratio"], row["ndcg@20"], "s", label="FedShare, uniform ρ_u, mean 0.5")
    _reference(ax, rows, "fedavg", ":")
    _reference(ax, rows, "centralized-lightgcn", "--")
    for name, value in references.items():
        ax.axhline(value, linestyle="-.", color="black", label=f"{name} {value:.3f}")
    _finish(fig, ax, path, "sharing ratio ρ", "test NDCG@20 (best validation round)", 8)


def curves_plot(rows: list[dict], path: Path) -> None:
    """Validation NDCG@20 per evaluated round (epoch, for centralized rows) per method."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for row in rows:
        curve = [(step, valid) for step, valid, _ in row.get("curve", []) if valid is not None]
        if curve:
            label = f"{row['method']} ρ={row['sharing_ratio']:g}"
            ax.plot([c[0] for c in curve], [c[1] for c in curve], label=label)
    _finish(fig, ax, path, "round (epoch for centralized)", "validation NDCG@20", 7)


def _rows(parser: argparse.ArgumentParser, inputs: list[str]) -> list[dict]:
    """The rows of every input file; a usage error naming the file that cannot be read."""
    rows = []
    for path in inputs:
        try:
            loaded = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            parser.error(f"{path}: not a readable benchmark JSON file ({exc})")
        if not isinstance(loaded, list) or not all(isinstance(r, dict) and "method" in r
                                                   for r in loaded):
            parser.error(f"{path}: not a list of benchmark rows (bench/quality.py output)")
        rows += loaded
    return rows


def _references(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, float]:
    try:
        return {k: float(v) for k, v in (item.rsplit("=", 1) for item in items)}
    except ValueError:
        parser.error(f"--reference takes NAME=NDCG values, got {items}")


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="bench/quality.py result JSON files")
    parser.add_argument("--plots", default="docs/img", help="folder for the PNG files")
    parser.add_argument("--name", required=True, help="file name prefix of the plots")
    parser.add_argument("--reference", nargs="*", default=[], metavar="NAME=NDCG",
                        help="extra reference lines, e.g. 'centralized LightGCN=0.3311'")
    args = parser.parse_args(argv)
    rows, references = _rows(parser, args.inputs), _references(parser, args.reference)
    print(markdown_table(rows))
    out = Path(args.plots)
    out.mkdir(parents=True, exist_ok=True)
    sweep_plot(rows, out / f"{args.name}-sweep.png", references)
    curves_plot(rows, out / f"{args.name}-curves.png")
    print(f"\nplots: {out / f'{args.name}-sweep.png'}, {out / f'{args.name}-curves.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
