"""Centralized reference (the upper bound): LightGCN or BPR-MF trained on all training data.

Training follows LightGCN's reference setting (He et al., SIGIR 2020): BPR loss (Rendle et al.,
UAI 2009) over (user, positive, negative) triples, one uniformly sampled negative per training
interaction per epoch (rejecting the user's training items), Adam, and the per-batch L2 penalty
on the layer-0 embeddings of the batch:

    L = 1/B Σ_b softplus(ŷ_{u,j} − ŷ_{u,i}) + reg · (‖e_u‖² + ‖e_i‖² + ‖e_j‖²) / (2B)

For LightGCN the whole graph is propagated for every batch (as the reference does).
Evaluation is the federated one computed in one place: all items ranked, the user's training
items masked (:func:`common.metrics.mask_scores`), Recall/NDCG@{10,20,50} on the test split
(:func:`common.metrics.ranking_metric_sums`), users in batches of 1024.

CLI::

    python -m common.centralized --dataset ml-100k --model lightgcn --epochs 10 --out res.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from common.atomic import atomic_write_json
from common.graph import Graph, build_graph
from common.losses import bpr_loss, l2_penalty
from common.metrics import KS, add_sums, finalize, mask_scores, ranking_metric_sums
from common.models import BPRMF, LightGCN

MODELS = ("lightgcn", "bprmf")
EVAL_USER_BATCH = 1024


# --------------------------------------------------------------------------- data helpers


def _sorted_by_user(pairs: np.ndarray) -> np.ndarray:
    """``(n, 2)`` int64 ``[user, item]`` pairs, stably sorted by user."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return pairs[np.argsort(pairs[:, 0], kind="stable")]


def _user_indptr(sorted_pairs: np.ndarray, num_users: int) -> np.ndarray:
    """``(U+1,)`` offsets: user u's rows are ``sorted_pairs[indptr[u]:indptr[u+1]]``."""
    return np.searchsorted(sorted_pairs[:, 0], np.arange(num_users + 1), side="left")


def _rows_of_users(indptr: np.ndarray, users: np.ndarray) -> np.ndarray:
    """Row numbers (into the user-sorted pairs) of every row belonging to ``users``."""
    starts, counts = indptr[users], indptr[users + 1] - indptr[users]
    total = int(counts.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    offsets = np.repeat(starts - np.cumsum(counts) + counts, counts)
    return offsets + np.arange(total)


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


@torch.no_grad()
def evaluate_embeddings(user_out: Tensor, item_out: Tensor, train: np.ndarray, test: np.ndarray,
                        num_users: int, ks: tuple[int, ...] = KS,
                        user_batch: int = EVAL_USER_BATCH) -> dict[str, float]:
    """Full-ranking Recall/NDCG@k of ``(U, d)`` users against ``(I, d)`` items on ``test``.

    Scores are ⟨user, item⟩; each user's ``train`` items are masked; only users with test items
    are ranked, ``user_batch`` at a time. Returns :func:`common.metrics.finalize`'d means.
    """
    train_sorted, test_sorted = _sorted_by_user(train), _sorted_by_user(test)
    train_ptr = _user_indptr(train_sorted, num_users)
    test_ptr = _user_indptr(test_sorted, num_users)
    eval_users = np.unique(test_sorted[:, 0])
    position = np.full(num_users, -1, dtype=np.int64)
    sums: dict[str, float] = {}
    for start in range(0, eval_users.size, user_batch):
        users = eval_users[start:start + user_batch]
        position[users] = np.arange(users.size)
        scores = user_out[torch.from_numpy(users)] @ item_out.T           # (b, I)
        seen = train_sorted[_rows_of_users(train_ptr, users)]
        truth = test_sorted[_rows_of_users(test_ptr, users)]
        scores = mask_scores(scores, torch.from_numpy(position[seen[:, 0]]),
                             torch.from_numpy(seen[:, 1]))
        part = ranking_metric_sums(scores, torch.from_numpy(position[truth[:, 0]]),
                                   torch.from_numpy(truth[:, 1]), ks)
        sums = add_sums(sums, part)
        position[users] = -1
    if not sums:
        sums = ranking_metric_sums(user_out.new_zeros(0, item_out.shape[0]),
                                   torch.empty(0, dtype=torch.long),
                                   torch.empty(0, dtype=torch.long), ks)
    return finalize(sums)


# --------------------------------------------------------------------------- training


def train_centralized(ds: Any, model: str, epochs: int, *, embedding_dim: int = 64,
                      num_layers: int = 3, batch_size: int = 2048, lr: float = 1e-3,
                      reg: float = 1e-4, seed: int = 0, eval_every: int = 0,
                      log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Train ``model`` ("lightgcn" | "bprmf") on ``ds.train`` and evaluate on ``ds.test``.

    Args:
        ds: a dataset with ``num_users``, ``num_items`` and ``(n, 2)`` int64 ``train`` / ``test``
            ``[user, item]`` arrays (``common.datasets.Dataset`` or anything shaped like it).
        model: "lightgcn" or "bprmf".
        epochs: passes over the training interactions.
        embedding_dim, num_layers, batch_size, lr, reg: hyper-parameters (``num_layers`` is
            ignored by BPR-MF).
        seed: seeds torch (initialisation) and the numpy sampler.
        eval_every: also evaluate on test every this many epochs (0: only at the end); the curve
            is a learning curve, not a model-selection signal.
        log: progress sink, one line per epoch.

    Returns:
        ``{"model", "epochs", "seconds", "seconds_per_epoch", "eval_seconds", "metrics",
        "curve"}``: ``seconds`` is training time without evaluation; ``metrics`` the final test
        metrics; ``curve`` one entry per epoch (``epoch``, ``loss``, ``seconds``, and the test
        metrics on evaluated epochs).
    """
    torch.manual_seed(seed)
    np.random.seed(seed)
    rng = np.random.default_rng(seed)
    train = _sorted_by_user(ds.train)
    num_users, num_items = int(ds.num_users), int(ds.num_items)
    graph = build_graph(torch.from_numpy(train[:, 0]), torch.from_numpy(train[:, 1]),
                        num_users, num_items)
    net = make_model(model, num_users, num_items, embedding_dim, num_layers)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    positive_keys = np.unique(train[:, 0] * num_items + train[:, 1])

    def evaluate() -> dict[str, float]:
        net.eval()
        with torch.no_grad():
            user_out, item_out = net(graph)
        net.train()
        return evaluate_embeddings(user_out, item_out, train, ds.test, num_users)

    curve: list[dict[str, Any]] = []
    train_seconds = eval_seconds = 0.0
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        order = rng.permutation(train.shape[0])
        users, positives = train[order, 0], train[order, 1]
        negatives = sample_negatives(users, positive_keys, num_items, rng)
        loss_sum = 0.0
        for start in range(0, users.size, batch_size):
            batch = slice(start, start + batch_size)
            loss = train_step(net, graph, optimizer, torch.from_numpy(users[batch]),
                              torch.from_numpy(positives[batch]),
                              torch.from_numpy(negatives[batch]), reg)
            loss_sum += loss * users[batch].size
        epoch_seconds = time.perf_counter() - started
        train_seconds += epoch_seconds
        entry: dict[str, Any] = {"epoch": epoch, "loss": loss_sum / max(users.size, 1),
                                 "seconds": epoch_seconds}
        if eval_every > 0 and (epoch % eval_every == 0 or epoch == epochs):
            started = time.perf_counter()
            entry["metrics"] = evaluate()
            eval_seconds += time.perf_counter() - started
        curve.append(entry)
        log(_progress_line(entry, epochs))
    if curve and "metrics" in curve[-1]:
        metrics = curve[-1]["metrics"]
    else:
        started = time.perf_counter()
        metrics = evaluate()
        eval_seconds += time.perf_counter() - started
    log("test " + _format_metrics(metrics))
    return {"model": model, "epochs": epochs, "seconds": train_seconds,
            "seconds_per_epoch": train_seconds / epochs if epochs else 0.0,
            "eval_seconds": eval_seconds, "metrics": metrics, "curve": curve}


def _format_metrics(metrics: dict[str, float]) -> str:
    return " ".join(f"{key} {value:.4f}" for key, value in metrics.items() if key != "num-users")


def _progress_line(entry: dict[str, Any], epochs: int) -> str:
    line = f"epoch {entry['epoch']}/{epochs} loss {entry['loss']:.4f} ({entry['seconds']:.2f} s)"
    if "metrics" in entry:
        line += " | " + _format_metrics(entry["metrics"])
    return line


# --------------------------------------------------------------------------- CLI


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m common.centralized", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--model", choices=MODELS, default="lightgcn")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="result JSON (default: stdout)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--reg", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--embedding-dim", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=0)
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--rating-threshold", type=float, default=0.0)
    parser.add_argument("--max-users", type=int, default=None)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """CLI entry point: load, train, evaluate, write ``{"manifest", "result"}``.

    Returns ``None`` so that the ``fedshare-centralized`` console script exits with status 0.
    """
    from common.datasets import load_dataset
    from common.manifest import run_manifest

    args = _parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    ds = load_dataset(args.dataset, args.data_root, rating_threshold=args.rating_threshold,
                      seed=args.seed, max_users=args.max_users)
    print(f"{ds.name}: {ds.num_users} users, {ds.num_items} items, {len(ds.train)} train, "
          f"{len(ds.test)} test interactions; torch threads {torch.get_num_threads()}")
    result = train_centralized(ds, args.model, args.epochs, embedding_dim=args.embedding_dim,
                               num_layers=args.num_layers, batch_size=args.batch_size,
                               lr=args.lr, reg=args.reg, seed=args.seed,
                               eval_every=args.eval_every)
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


if __name__ == "__main__":
    main()
