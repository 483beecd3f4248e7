"""Audit: does any trace of given withdrawn (user, item) pairs remain on the server?

    python -m server_app.audit --state-dir DIR [DIR ...] --user U --items I [I ...]
    python -m server_app.audit --state-dir DIR [DIR ...] --pairs withdrawn.json   # [[u, i], ...]

Give the server root (``<state-dir>/server``: every run's directory is scanned) and any
results or log directories. Every file is read: ``.pt`` state files, ``.json``, ``.npz``,
text logs, and temporary files left by an interrupted atomic write. Findings are typed
(:class:`Finding`):

* ``pair``: a withdrawn pair in a user/item column, a list of pairs, or a log line;
* ``snapshot``: a snapshot of a model generation taken at or after the round a withdrawn
  edge entered (it carries the edge's influence and must never be a clean target);
* ``optimizer``: an optimizer row of a withdrawn pair's user or item whose moment
  estimates accumulate since before the first erasure of that model generation;
* ``temp-file``: a leftover temporary file (removed when the server starts);
* ``unscanned``: a file of a type the audit cannot read.

:func:`audit_live` checks a running :class:`~server_app.state.ServerState` the same way.
Exit code 1 when anything is found.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from common.atomic import TEMP_SUFFIX

TEXT_SUFFIXES = (".log", ".txt", ".out", ".err")
PAIR_IN_TEXT = re.compile(r"[\[(]\s*(\d+)\s*,\s*(\d+)\s*[\])]")


@dataclass(frozen=True)
class Finding:
    kind: str      # pair | snapshot | optimizer | temp-file | unscanned
    where: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.kind}] {self.where}: {self.detail}"


@dataclass
class AuditReport:
    findings: list[Finding] = field(default_factory=list)
    scanned: int = 0

    @property
    def clean(self) -> bool:
        return not self.findings

    def kinds(self) -> set[str]:
        return {finding.kind for finding in self.findings}


def _pair_keys(user, item) -> set[tuple[int, int]]:
    return set(zip(np.asarray(user).tolist(), np.asarray(item).tolist()))


def _columns(obj: Any, where: str) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Every (user column, item column) found in nested dicts of arrays/tensors/lists."""
    if isinstance(obj, dict):
        if "user" in obj and "item" in obj:
            user, item = (np.asarray(v.numpy() if torch.is_tensor(v) else v) for v in
                          (obj["user"], obj["item"]))
            if user.ndim == 1 and user.shape == item.shape:
                yield where, user, item
        for key, value in obj.items():
            yield from _columns(value, f"{where}/{key}")
    elif isinstance(obj, (list, tuple)):
        pairs = [p for p in obj if isinstance(p, (list, tuple)) and len(p) == 2
                 and all(isinstance(v, int) for v in p)]
        if pairs:
            yield where, np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
        for index, value in enumerate(obj):
            if isinstance(value, (dict, list, tuple)):
                yield from _columns(value, f"{where}[{index}]")


def _pair_findings(content: Any, where: str, wanted: set) -> list[Finding]:
    found = []
    for column, user, item in _columns(content, where):
        hits = wanted & _pair_keys(user, item)
        if hits:
            found.append(Finding("pair", column, f"{len(hits)} withdrawn pair(s), e.g. "
                                 f"{sorted(hits)[0]}"))
    return found


def model_residue(where: str, snapshots: dict, taint: dict | None, moments_since: dict | None,
                  pairs: np.ndarray) -> list[Finding]:
    """Snapshots and optimizer rows of a model generation that postdate withdrawn edges."""
    if not taint:
        return []
    found = [Finding("snapshot", f"{where}/snapshots/{r}", f"taken at round {r}, after a "
                     f"withdrawn edge entered (round {taint['entered']})")
             for r in sorted(snapshots) if r >= taint["entered"]]
    if moments_since is not None and len(pairs):
        for kind, column in (("user", 0), ("item", 1)):
            since = moments_since[kind][torch.from_numpy(np.unique(pairs[:, column]))]
            stale = int((since < taint["erased"]).sum())
            if stale:
                found.append(Finding("optimizer", f"{where}/optimizer/{kind}", f"{stale} row(s) "
                                     f"of withdrawn pairs accumulate moments since before the "
                                     f"erasure in round {taint['erased']}"))
    return found


def _load(path: Path) -> Any:
    """Content of ``path`` (a temp file is read as the file it was going to replace)."""
    name = path.name
    if name.startswith(".") and name.endswith(TEMP_SUFFIX):
        name = name[1:].rsplit(".", 2)[0]   # .state.pt.abc123.tmp -> state.pt
    suffix = Path(name).suffix
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    if suffix == ".pt":
        return torch.load(path, weights_only=False)
    if suffix == ".json":
        return json.loads(path.read_text())
    if suffix in TEXT_SUFFIXES:
        return [[int(u), int(i)] for u, i in PAIR_IN_TEXT.findall(path.read_text(errors="replace"))]
    return None


def _audit_file(path: Path, pairs: np.ndarray, wanted: set) -> list[Finding]:
    found = []
    if path.name.endswith(TEMP_SUFFIX) and path.name.startswith("."):
        found.append(Finding("temp-file", str(path), "leftover of an interrupted write"))
    try:
        content = _load(path)
    except Exception as exc:  # a torn temp file, an unreadable file: say so, go on
        return found + [Finding("unscanned", str(path), f"unreadable: {exc}")]
    if content is None:
        return found + [Finding("unscanned", str(path), "unknown file type")]
    found += _pair_findings(content, str(path), wanted)
    if isinstance(content, dict) and "snapshots" in content and "taint" in content:
        model = content.get("model") or {}
        found += model_residue(str(path), content["snapshots"], content["taint"],
                               model.get("moments_since"), pairs)
    return found


def audit_state_dir(*directories: Path, pairs: np.ndarray) -> AuditReport:
    """Scan every file under ``directories`` (server root, run dirs, results, logs)."""
    wanted, report = _pair_keys(pairs[:, 0], pairs[:, 1]), AuditReport()
    for directory in directories:
        for path in sorted(Path(directory).rglob("*")):
            if path.is_file() and path.suffix != ".lock":
                report.scanned += 1
                report.findings += _audit_file(path, pairs, wanted)
    return report


def audit_live(state, pairs: np.ndarray) -> AuditReport:
    """A running server's memory: the edge store, the graph built from it (``edge_index``),
    snapshots and optimizer rows. Answers and outcomes are typed (request id, flags,
    reason) and the unlearning task holds node ids and embeddings, never pairs."""
    wanted, report = _pair_keys(pairs[:, 0], pairs[:, 1]), AuditReport(scanned=1)
    if state.edges is not None and wanted & _pair_keys(state.edges.user, state.edges.item):
        report.findings.append(Finding("pair", "memory/edge store", "withdrawn pairs stored"))
    graph = state.graph
    if graph is not None:
        src, dst = graph.edge_index
        users = src < graph.num_users
        if wanted & _pair_keys(src[users].numpy(), (dst[users] - graph.num_users).numpy()):
            report.findings.append(Finding("pair", "memory/graph edge_index", "withdrawn edges"))
    if state.model is not None:
        taint = None if state.taint is None else asdict(state.taint)
        report.findings += model_residue("memory", state.snapshots, taint,
                                         state.model.moments_since, pairs)
    return report


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0],
                                     epilog="exit code: 0 clean, 1 traces found, 2 bad arguments")
    parser.add_argument("--state-dir", required=True, nargs="+",
                        help="server root or run directories, results and log directories")
    parser.add_argument("--pairs", help="JSON file with [[user, item], ...]")
    parser.add_argument("--user", type=int)
    parser.add_argument("--items", type=int, nargs="+")
    return parser


def _pairs(args: argparse.Namespace, parser: argparse.ArgumentParser) -> np.ndarray:
    """The (m, 2) pairs asked about; a usage error (exit 2) naming what is wrong otherwise."""
    if args.pairs:
        try:
            pairs = np.asarray(json.loads(Path(args.pairs).read_text()), dtype=np.int64)
        except (OSError, ValueError, TypeError) as exc:
            parser.error(f"--pairs {args.pairs}: not a readable JSON list of [user, item] "
                         f"pairs ({exc})")
        if pairs.size == 0 or pairs.ndim != 2 or pairs.shape[1] != 2:
            parser.error(f"--pairs {args.pairs}: expected [[user, item], ...], got shape "
                         f"{pairs.shape}")
        return pairs
    if args.user is not None and args.items:
        return np.array([(args.user, i) for i in args.items], dtype=np.int64)
    parser.error("give --pairs FILE or --user U --items I [I ...]")


def main(argv: list[str] | None = None, prog: str = "python -m server_app.audit") -> int:
    parser = _parser(prog)
    args = parser.parse_args(argv)
    pairs = _pairs(args, parser)
    missing = [d for d in args.state_dir if not Path(d).is_dir()]
    if missing:   # a mistyped folder would otherwise be reported clean with 0 files scanned
        parser.error(f"--state-dir: no such directory: {', '.join(missing)}")
    report = audit_state_dir(*map(Path, args.state_dir), pairs=pairs)
    for finding in report.findings:
        print(finding)
    print(f"{'clean' if report.clean else 'FOUND'}: {len(pairs)} pair(s), {report.scanned} "
          f"file(s) scanned, {len(report.findings)} finding(s)")
    return 0 if report.clean else 1


if __name__ == "__main__":
    sys.exit(main())
