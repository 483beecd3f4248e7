"""Centralized reference (the upper bound): LightGCN or BPR-MF trained on all training data.

Training follows LightGCN's reference setting (He et al., SIGIR 2020): BPR loss (Rendle et al.,
UAI 2009) over (user, positive, negative) triples, one uniformly sampled negative per training
interaction per epoch (rejecting the user's training items), Adam, and the per-batch L2 penalty
on the layer-0 embeddings of the batch:

    L = 1/B Σ_b softplus(ŷ_{u,j} − ŷ_{u,i}) + reg · (‖e_u‖² + ‖e_i‖² + ‖e_j‖²) / (2B)

For LightGCN the whole graph is propagated for every batch (as the reference does).
Evaluation is the one evaluator (:func:`common.metrics.evaluate_split`), the same as federated
evaluation: all items ranked; validation masks the user's training items, test masks training
and validation items; Recall/NDCG@{10,20,50}. Model selection (:mod:`common.selection`):
validation every ``eval_every`` epochs, early stopping with a patience, and the reported test
metrics are those of the best validation epoch (its weights are kept and evaluated once).

CLI::

    python -m common.centralized --dataset ml-100k --model lightgcn --epochs 50 --patience 10 --out res.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from common import progress
from common.atomic import atomic_write_json
from common.formats import FORMATS
from common.graph import Graph, build_graph
from common.losses import bpr_loss, l2_penalty
from common.metrics import evaluate_split, finalize
from common.models import BPRMF, LightGCN
from common.selection import DEFAULT_METRIC, Selection
from common.sources import SPLIT_MODES

MODELS = ("lightgcn", "bprmf")


# --------------------------------------------------------------------------- data helpers


def _sorted_by_user(pairs: np.ndarray) -> np.ndarray:
    """``(n, 2)`` int64 ``[user, item]`` pairs, stably sorted by user."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return pairs[np.argsort(pairs[:, 0], kind="stable")]


def sample_negatives(user_index: np.ndarray, positive_keys: np.ndarray, num_items: int,
                     rng: np.random.Generator, max_tries: int = 100) -> np.ndarray:
    """One uniform negative item per user, resampled while it is one of the user's positives.

    Args:
        user_index: ``(B,)`` user ids.
        positive_keys: sorted ``user * I + item`` keys of the training pairs.
        num_items: I.
        rng: numpy generator (reproducibility).
        max_tries: resampling rounds; a user who has every item keeps a positive.

    Returns:
        ``(B,)`` int64 item ids.
    """
    negatives = rng.integers(0, num_items, size=user_index.shape[0])
    pending = np.arange(user_index.shape[0])
    for _ in range(max_tries):
        keys = user_index[pending] * num_items + negatives[pending]
        where = np.searchsorted(positive_keys, keys).clip(max=max(len(positive_keys) - 1, 0))
        clash = positive_keys[where] == keys if len(positive_keys) else np.zeros(len(keys), bool)
        pending = pending[clash]
        if pending.size == 0:
            break
        negatives[pending] = rng.integers(0, num_items, size=pending.size)
    return negatives


# --------------------------------------------------------------------------- model helpers


def make_model(model: str, num_users: int, num_items: int, embedding_dim: int,
               num_layers: int) -> nn.Module:
    """``LightGCN`` or ``BPRMF`` by name (see :data:`MODELS`)."""
    if model == "lightgcn":
        return LightGCN(num_users, num_items, embedding_dim=embedding_dim, num_layers=num_layers)
    if model == "bprmf":
        return BPRMF(num_users, num_items, embedding_dim=embedding_dim)
    raise ValueError(f"unknown model {model!r}; expected one of {', '.join(MODELS)}")


def train_step(model: nn.Module, graph: Graph, optimizer: torch.optim.Optimizer,
               user_index: Tensor, pos_item_index: Tensor, neg_item_index: Tensor,
               reg: float) -> float:
    """One BPR step on a ``(B,)`` batch of (user, positive item, negative item); returns the loss."""
    user_out, item_out = model(graph)
    user_vec = user_out[user_index]
    pos_scores = (user_vec * item_out[pos_item_index]).sum(dim=1)
    neg_scores = (user_vec * item_out[neg_item_index]).sum(dim=1)
    penalty = l2_penalty(model.user_emb(user_index), model.item_emb(pos_item_index),
                         model.item_emb(neg_item_index))
    loss = bpr_loss(pos_scores, neg_scores) + reg * penalty
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


# --------------------------------------------------------------------------- training


def _run_epoch(net: nn.Module, graph: Graph, optimizer: torch.optim.Optimizer, train: np.ndarray,
               positive_keys: np.ndarray, num_items: int, batch_size: int, reg: float,
               rng: np.random.Generator) -> float:
    """One shuffled pass of BPR steps over the ``(n, 2)`` ``train`` pairs; the mean loss."""
    order = rng.permutation(train.shape[0])
    users, positives = train[order, 0], train[order, 1]
    negatives = sample_negatives(users, positive_keys, num_items, rng)
    loss_sum = 0.0
    for start in range(0, users.size, batch_size):
        batch = slice(start, start + batch_size)
        loss = train_step(net, graph, optimizer, torch.from_numpy(users[batch]),
                          torch.from_numpy(positives[batch]), torch.from_numpy(negatives[batch]),
                          reg)
        loss_sum += loss * users[batch].size
    return loss_sum / max(users.size, 1)


def evaluate_model(net: nn.Module, graph: Graph, ds: Any, split: str) -> dict[str, float]:
    """Means of the one evaluator on ``split`` ("valid" | "test") for the model's ``(U, d)`` /
    ``(I, d)`` output tables (training mode is restored afterwards)."""
    was_training = net.training
    net.eval()
    with torch.no_grad():
        user_out, item_out = net(graph)
    net.train(was_training)
    return finalize(evaluate_split(user_out, item_out, ds.train, ds.valid, ds.test, split))


def _snapshot(net: nn.Module) -> dict[str, Tensor]:
    """A detached copy of the weights (the best epoch's model)."""
    return {key: value.detach().clone() for key, value in net.state_dict().items()}


@dataclass
class _Run:
    """What one training run works on: model, graph of ``train``, optimizer, sampler state."""

    net: nn.Module
    graph: Graph
    optimizer: torch.optim.Optimizer
    train: np.ndarray            # (n, 2) [user, item], sorted by user
    positive_keys: np.ndarray    # sorted user * I + item keys of train
    num_items: int
    rng: np.random.Generator


def _start(ds: Any, model: str, embedding_dim: int, num_layers: int, lr: float, seed: int) -> _Run:
    """Seed everything, build the training graph, the model and its optimizer."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    train = _sorted_by_user(ds.train)
    num_users, num_items = int(ds.num_users), int(ds.num_items)
    graph = build_graph(torch.from_numpy(train[:, 0]), torch.from_numpy(train[:, 1]),
                        num_users, num_items)
    net = make_model(model, num_users, num_items, embedding_dim, num_layers)
    return _Run(net, graph, torch.optim.Adam(net.parameters(), lr=lr), train,
                np.unique(train[:, 0] * num_items + train[:, 1]), num_items,
                np.random.default_rng(seed))


def _fit(run: _Run, ds: Any, epochs: int, batch_size: int, reg: float, eval_every: int,
         state: Selection, log: Callable[[str], Any],
         bar: Any) -> tuple[Selection, dict | None, list, float]:
    """Train up to ``epochs``, validating and early-stopping; returns (state, best weights,
    curve, seconds spent validating)."""
    best_weights, curve, eval_seconds = None, [], 0.0
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        loss = _run_epoch(run.net, run.graph, run.optimizer, run.train, run.positive_keys,
                          run.num_items, batch_size, reg, run.rng)
        entry: dict[str, Any] = {"epoch": epoch, "loss": loss, "seconds": time.perf_counter() - started}
        if len(ds.valid) and ((eval_every > 0 and epoch % eval_every == 0) or epoch == epochs):
            started = time.perf_counter()
            entry["valid"] = evaluate_model(run.net, run.graph, ds, "valid")
            state = state.observe(epoch, entry["valid"])
            best_weights = _snapshot(run.net) if state.improved else best_weights
            eval_seconds += time.perf_counter() - started
        curve.append(entry)
        log(_progress_line(entry, epochs))
        bar.set_postfix_str(f"loss {loss:.4f}" + (f" best {state.metric} {state.best_value:.4f}"
                                                  if state.best_step is not None else ""))
        bar.update(1)
        if state.should_stop:
            break
    return state, best_weights, curve, eval_seconds


def train_centralized(ds: Any, model: str, epochs: int, *, embedding_dim: int = 64,
                      num_layers: int = 3, batch_size: int = 2048, lr: float = 1e-3,
                      reg: float = 1e-4, seed: int = 0, eval_every: int = 1, patience: int = 10,
                      metric: str = DEFAULT_METRIC, log: Callable[[str], Any] = print,
                      show_progress: bool = False, keep_model: bool = False) -> dict[str, Any]:
    """Train ``model`` ("lightgcn" | "bprmf") on ``ds.train``, select on ``ds.valid``, test once.

    Args:
        ds: a dataset with ``num_users``, ``num_items`` and ``(n, 2)`` int64 ``train`` / ``valid``
            / ``test`` ``[user, item]`` arrays (``common.datasets.Dataset`` or alike).
        model: "lightgcn" or "bprmf".
        epochs: at most this many passes over the training interactions.
        embedding_dim, num_layers, batch_size, lr, reg: hyper-parameters (``num_layers`` is
            ignored by BPR-MF).
        seed: seeds torch (initialisation) and the numpy sampler.
        eval_every: validate every this many epochs (and after the last; 0: only after the last).
        patience: stop after this many validations without improvement (0: never stop early).
        metric: the validation metric selected on.
        log: progress sink, one line per epoch.
        show_progress: draw a bar of epochs (:mod:`common.progress`: on a terminal only);
            pass ``log=common.progress.write`` with it so the lines scroll above the bar.
        keep_model: also return the selected model's weights (``"model_state"``).

    With an empty ``ds.valid`` nothing can be selected: the last epoch's model is tested
    (``result["selection"]["best_step"]`` is then ``None``).

    Returns:
        ``{"model", "epochs" (run), "max_epochs", "best_epoch", "seconds" (training only),
        "seconds_per_epoch", "eval_seconds", "metrics" (test at the best epoch), "valid_metrics"
        (at the best epoch), "selection", "curve"}``; ``curve`` has one entry per epoch
        (``epoch``, ``loss``, ``seconds``, and ``valid`` metrics on validated epochs).
    """
    run = _start(ds, model, embedding_dim, num_layers, lr, seed)
    with progress.bar(epochs, f"{model} epochs", enabled=show_progress, unit="epoch",
                      leave=None) as bar:   # None: kept unless nested in another bar
        state, best_weights, curve, eval_seconds = _fit(
            run, ds, epochs, batch_size, reg, eval_every,
            Selection(metric=metric, patience=patience), log, bar)
    if best_weights is not None:
        run.net.load_state_dict(best_weights)
    started = time.perf_counter()
    metrics = evaluate_model(run.net, run.graph, ds, "test")
    eval_seconds += time.perf_counter() - started
    best_epoch = state.best_step if len(ds.valid) else len(curve)
    log(f"test at epoch {best_epoch} (best validation {metric}) " + _format_metrics(metrics))
    train_seconds = sum(entry["seconds"] for entry in curve)
    return {"model": model, "epochs": len(curve), "max_epochs": epochs, "best_epoch": best_epoch,
            "seconds": train_seconds, "seconds_per_epoch": train_seconds / max(len(curve), 1),
            "eval_seconds": eval_seconds, "metrics": metrics,
            "valid_metrics": dict(state.best_valid or {}), "selection": state.summary(),
            "curve": curve, **({"model_state": _snapshot(run.net)} if keep_model else {})}


def _format_metrics(metrics: dict[str, float]) -> str:
    return " ".join(f"{key} {value:.4f}" for key, value in metrics.items() if key != "num-users")


def _progress_line(entry: dict[str, Any], epochs: int) -> str:
    line = f"epoch {entry['epoch']}/{epochs} loss {entry['loss']:.4f} ({entry['seconds']:.2f} s)"
    if "valid" in entry:
        line += " | valid " + _format_metrics(entry["valid"])
    return line


# --------------------------------------------------------------------------- CLI


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="exit code: 0 done, 2 bad arguments or unusable data")
    parser.add_argument("--dataset", default="ml-100k", help="a dataset name or a file / folder path")
    parser.add_argument("--model", choices=MODELS, default="lightgcn")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="result JSON (default: stdout)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--reg", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--embedding-dim", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=1, help="validate every N epochs")
    parser.add_argument("--patience", type=int, default=10,
                        help="stop after N validations without improvement (0: never)")
    parser.add_argument("--metric", default="ndcg@20", help="validation metric selected on")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--rating-threshold", type=float, default=0.0)
    parser.add_argument("--max-users", type=int, default=None)
    parser.add_argument("--k-core", type=int, default=0, help="keep the k-core (0: off)")
    parser.add_argument("--split", choices=SPLIT_MODES, default="auto")
    parser.add_argument("--format", choices=("auto",) + FORMATS, default="auto")
    parser.add_argument("--valid-ratio", type=float, default=0.1)
    parser.add_argument("--test-ratio", type=float, default=0.1)
    parser.add_argument("--no-valid-from-train", action="store_true",
                        help="do not carve a validation part from a given split that has none")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m common.centralized") -> int:
    """CLI entry point: load, train, evaluate, write ``{"manifest", "result"}``; returns the
    exit code (2, with the reason, when the data cannot be loaded)."""
    from common.datasets import load_dataset
    from common.manifest import run_manifest

    parser = _parser(prog)
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        ds = load_dataset(args.dataset, args.data_root, rating_threshold=args.rating_threshold,
                          seed=args.seed, max_users=args.max_users, k_core=args.k_core,
                          split=args.split, fmt=args.format, valid_ratio=args.valid_ratio,
                          test_ratio=args.test_ratio,
                          valid_from_train=not args.no_valid_from_train)
    except (OSError, ValueError) as exc:   # missing or malformed data: the loader names it
        parser.error(f"--dataset {args.dataset}: {exc}")
    print(f"{ds.name}: {ds.num_users} users, {ds.num_items} items, {len(ds.train)} train, "
          f"{len(ds.valid)} valid, {len(ds.test)} test interactions; "
          f"torch threads {torch.get_num_threads()}")
    result = train_centralized(ds, args.model, args.epochs, embedding_dim=args.embedding_dim,
                               num_layers=args.num_layers, batch_size=args.batch_size,
                               lr=args.lr, reg=args.reg, seed=args.seed,
                               eval_every=args.eval_every, patience=args.patience,
                               metric=args.metric, log=progress.write, show_progress=True)
    config = {key: (str(value) if isinstance(value, Path) else value)
              for key, value in vars(args).items() if key != "out"}
    config["torch_threads"] = torch.get_num_threads()
    record = {"manifest": run_manifest(config, args.seed, ds.fingerprint), "result": result}
    if args.out is None:
        print(json.dumps(record, indent=1, sort_keys=True))
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out, record)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
