"""Scale: how a round's time, the bytes per client and the server's memory grow with the data.

    python bench/scale.py --dataset gowalla --out bench/out/scale-gowalla.json

Cross-user setting (one user per in-process node, the real strategy and ClientApp handlers).
Two series, each run in its own process so its peak memory is its own:

* ``users``: the first N users of the dataset (``max-users``; their items come along) at
  sharing ratio 0.5;
* ``edges``: all users of the largest size at sharing ratios 0.25 / 0.5 / 1.0 (shared edges
  grow at a fixed catalog);
* ``server``: the server's graph step alone on the full dataset's shared edges at each sharing
  ratio (``--ratios``): one epoch of the server LightGCN as the strategy runs it, its seconds,
  the state bytes and the peak RSS. In the federated series the shared edges are only those of
  the few rounds' sampled clients; here they are what a long run accumulates;
* ``items``: whole other datasets (``--item-datasets``, e.g. ML-1M 3.7k items, Amazon-Beauty
  12k) beside the main one (Gowalla 41k): ``max-users`` keeps the catalog, so only other data
  changes the number of items.

Each run: ``--rounds`` rounds, ``--clients`` sampled clients a round (a fixed number, so the
per-client cost shows and a round's client work stays comparable), no evaluation. Reported per
run (rounds 2..): seconds per phase, bytes down / up per client, the server state's bytes
(every tensor and array the server keeps: model, optimizer moments, snapshots, edge store, graph,
FedAvg table, views), and the process's peak RSS (server and in-process nodes together: an
upper bound for the server). ``docs/scaling.md`` fits and projects these numbers.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common_args import new_scratch, print_table, remove_scratch, write_json  # noqa: E402
from common.manifest import run_manifest  # noqa: E402

COLUMNS = ["series", "dataset", "users", "items", "shared_edges", "round_seconds", "graph_seconds",
           "graph_batch", "train_seconds", "down_bytes_per_client", "up_bytes_per_client",
           "server_state_bytes", "peak_rss_bytes"]


def _nbytes(value) -> int:
    """Bytes of every tensor / array reachable through dicts, lists, tuples and dataclasses."""
    if isinstance(value, torch.Tensor) and value.layout == torch.sparse_csr:
        return _nbytes([value.crow_indices(), value.col_indices(), value.values()])
    if isinstance(value, torch.Tensor) and value.layout == torch.sparse_coo:
        return _nbytes([value._indices(), value._values()])
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    if hasattr(value, "__dataclass_fields__"):
        return sum(_nbytes(getattr(value, f)) for f in value.__dataclass_fields__)
    return 0


def server_state_bytes(state) -> int:
    """What the server holds between rounds (the ServerState's tensors and arrays)."""
    model = state.model
    parts = [state.snapshots, state.edges, state.graph, state.item_emb, state.views, state.ego]
    if model is not None:
        parts += [model.user_weight, model.item_weight, list(model.optimizer.state.values())]
    return sum(_nbytes(p) for p in parts)


def child(config: dict, rounds: int) -> dict:
    """One run in this process; its measurements."""
    from harness.session import new_session
    from common.config import load_config

    tmp = new_scratch("fedshare-scale-")
    cfg = load_config({**config, "state-dir": str(tmp / "state"), "out-dir": str(tmp / "out")})
    ds = cfg.load_data()
    session = new_session(cfg, ds.num_users, tmp)
    started = time.perf_counter()
    records = session.run_rounds(rounds)[1:]
    phase = lambda name, key: float(np.mean([r.phases[name].__dict__[key] for r in records  # noqa: E731
                                             if name in r.phases]))
    sent = phase("train", "sent")
    remove_scratch(tmp)
    return {"dataset": cfg.dataset, "users": ds.num_users, "items": ds.num_items, "shared_edges": len(session.state.edges),
            "round_seconds": float(np.mean([r.seconds for r in records])),
            **{f"{p}_seconds": phase(p, "seconds") for p in ("unshare", "share", "graph", "train")},
            "down_bytes_per_client": phase("train", "bytes_down") / sent,
            "up_bytes_per_client": phase("train", "bytes_up") / sent,
            "server_state_bytes": server_state_bytes(session.state),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "seconds": time.perf_counter() - started}


def server_child(config: dict) -> dict:
    """One server graph step (the strategy's: ``ServerState.train_graph``) on every shared edge
    of the dataset at the config's sharing ratio."""
    from common.config import load_config
    from common.sharing import shared_pairs
    from server_app.records import Catalog
    from server_app.state import ServerState

    tmp = new_scratch("fedshare-scale-")
    cfg = load_config({**config, "state-dir": str(tmp / "state"), "out-dir": str(tmp / "out")})
    ds = cfg.load_data()
    pairs = shared_pairs(ds.train, cfg.sharing_ratio, cfg.sharing_distribution, cfg.seed)
    state = ServerState(cfg, tmp / "server")
    state.check_catalog(Catalog(ds.num_users, ds.num_items, ds.fingerprint))
    state.add_edges(pairs, 1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started = time.perf_counter()
    state.train_graph()
    seconds = time.perf_counter() - started
    state.refresh_views()
    remove_scratch(tmp)
    return {"dataset": cfg.dataset, "users": ds.num_users, "items": ds.num_items,
            "shared_edges": len(state.edges), "graph_seconds": seconds,
            "graph_batch": state.model.hp.batch_size_for(len(state.edges)),
            "server_state_bytes": server_state_bytes(state),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "rss_before_graph_step_bytes": before}


def run_child(config: dict, rounds: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(config),
                           "--rounds", str(rounds), "--out", "-"], cwd=ROOT, capture_output=True,
                          text=True, timeout=7200)
    if proc.returncode != 0:
        raise RuntimeError(f"run {config} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="gowalla")
    parser.add_argument("--out", required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=[3000, 10000, 0],
                        help="max-users of the users series (0: all)")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    parser.add_argument("--item-datasets", nargs="*", default=["ml-1m", "amazon-beauty"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=200, help="clients sampled per round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--server-epoch-steps", type=int,
                        help="the run config's server-epoch-steps (default: the config's)")
    parser.add_argument("--series", nargs="+", default=["users", "edges", "items", "server"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        config = json.loads(args.child)
        measured = server_child(config) if config.pop("server-only", False) else \
            child(config, args.rounds)
        print(json.dumps(measured))
        return
    base = {"dataset": args.dataset, "eval-every": 0, "num-rounds": args.rounds,
            "torch-threads": args.threads, "server-epochs": 1}
    if args.server_epoch_steps is not None:
        base["server-epoch-steps"] = args.server_epoch_steps
    plan = [("users", {"max-users": n, "sharing-ratio": 0.5}) for n in args.sizes] + \
        [("edges", {"max-users": args.sizes[-1], "sharing-ratio": r}) for r in args.ratios
         if r != 0.5] + \
        [("items", {"dataset": d, "max-users": 0, "sharing-ratio": 0.5}) for d in args.item_datasets] + \
        [("server", {"max-users": 0, "sharing-ratio": r, "server-only": True}) for r in args.ratios]
    manifest = run_manifest({**base, "bench": vars(args)}, 0, "")   # before any work
    rows = []
    for series, overrides in [(name, o) for name, o in plan if name in args.series]:
        config = {**base, **overrides}
        config["fraction-train"] = _fraction(config["dataset"], overrides["max-users"], args.clients)
        rows.append({"series": series, **overrides, **run_child(config, args.rounds)})
        print_table(rows[-1:], COLUMNS)
        write_json(args.out, {"rows": rows, "manifest": manifest})
    print_table(rows, COLUMNS)


def _fraction(dataset: str, users: int, clients: int) -> float:
    """The fraction-train that samples ``clients`` clients of ``users`` (0: all of them)."""
    from common.config import load_config
    total = users or load_config({"dataset": dataset}).load_data().num_users
    return min(1.0, clients / total)


if __name__ == "__main__":
    main()
