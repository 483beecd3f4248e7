"""Audit: does any trace of given (user, item) pairs remain in server state?

    python -m server_app.audit --state-dir DIR --user U --items I [I ...]
    python -m server_app.audit --state-dir DIR --pairs withdrawn.json   # [[u, i], ...]

Scans every file under the server state directory (``.npz`` arrays, ``.pt`` checkpoints,
``.json`` files) for user/item columns containing a pair, and :func:`audit_live` does the
same for the in-memory structures of a running :class:`ServerState`. Exit code 1 when
anything is found.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch


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


def _load(path: Path) -> Any:
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    if path.suffix == ".pt":
        return torch.load(path, weights_only=False)
    if path.suffix == ".json":
        return json.loads(path.read_text())
    return None


def audit_state_dir(state_dir: Path, pairs: np.ndarray) -> tuple[list[str], int]:
    """``(findings, files scanned)`` for ``pairs`` ((m, 2)) under ``state_dir``."""
    wanted, findings, scanned = _pair_keys(pairs[:, 0], pairs[:, 1]), [], 0
    for path in sorted(Path(state_dir).rglob("*")):
        if not path.is_file():
            continue
        scanned += 1
        content = _load(path)
        if content is None:
            if path.suffix not in (".lock",):
                findings.append(f"{path}: unknown file type, not scanned")
            continue
        for where, user, item in _columns(content, str(path)):
            hits = wanted & _pair_keys(user, item)
            if hits:
                findings.append(f"{where}: {len(hits)} withdrawn pair(s), e.g. {sorted(hits)[0]}")
    return findings, scanned


def audit_live(state, pairs: np.ndarray) -> list[str]:
    """Findings in a running server's memory. Only two structures of the server state hold
    (user, item) pairs: the edge store and the graph built from it (``edge_index``). Answers
    and outcomes are typed (:class:`common.protocol.UnshareAnswer`: request id, flag,
    reason) and the unlearning task holds node ids and embeddings, never pairs."""
    wanted, findings = _pair_keys(pairs[:, 0], pairs[:, 1]), []
    if state.edges is not None and wanted & _pair_keys(state.edges.user, state.edges.item):
        findings.append("edge store")
    graph = state.graph
    if graph is not None:
        src, dst = graph.edge_index
        users = src < graph.num_users
        if wanted & _pair_keys(src[users].numpy(), (dst[users] - graph.num_users).numpy()):
            findings.append("graph edge_index")
    return findings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server_app.audit", description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--pairs", help="JSON file with [[user, item], ...]")
    parser.add_argument("--user", type=int)
    parser.add_argument("--items", type=int, nargs="+")
    args = parser.parse_args(argv)
    if args.pairs:
        pairs = np.asarray(json.loads(Path(args.pairs).read_text()), dtype=np.int64).reshape(-1, 2)
    elif args.user is not None and args.items:
        pairs = np.array([(args.user, i) for i in args.items], dtype=np.int64)
    else:
        parser.error("give --pairs FILE or --user U --items I [I ...]")
    findings, scanned = audit_state_dir(Path(args.state_dir), pairs)
    for finding in findings:
        print(finding)
    print(f"{'FOUND' if findings else 'clean'}: {len(pairs)} pair(s), {scanned} file(s) scanned, "
          f"{len(findings)} finding(s)")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
