"""Full-ranking top-K metrics, Recall@K and NDCG@K (torch only).

Protocol (as in LightGCN, He et al., SIGIR 2020, §4.1.1): every user ranks *all* items; the
items it was trained on are masked out (score −∞); its held-out items are the relevant set T_u.

    Recall@K(u) = |top_K(u) ∩ T_u| / |T_u|
    DCG@K(u)    = Σ_{r=1..K} 1[item at rank r ∈ T_u] / log2(r + 1)          (binary gains)
    IDCG@K(u)   = Σ_{r=1..min(|T_u|, K)} 1 / log2(r + 1)
    NDCG@K(u)   = DCG@K(u) / IDCG@K(u)

Users with T_u = ∅ are skipped. :func:`ranking_metric_sums` returns *sums* over the counted users
plus their number, so federated nodes can report them and the server divides once
(:func:`finalize`).

The one evaluator: :func:`evaluate_split` (and :func:`evaluate_ranking` under it) is used by
centralized training and by every federated node. Which items are masked is decided in one place,
:func:`split_pairs`: scoring ``"valid"`` masks the user's training items; scoring ``"test"`` masks
training *and* validation items (neither may be recommended as a "new" item at test time).
Because results are sums, evaluating users in any grouping (batches, nodes) and adding the sums
gives exactly the centralized numbers: ``finalize(Σ_nodes sums) == finalize(sums of all users)``. Ties in the scores are broken by ``torch.topk``'s order (unspecified but
deterministic for a given input on a given build).

Imported on the client path: no torch_geometric, no flwr.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

KS: tuple[int, ...] = (10, 20, 50)
NUM_USERS_KEY = "num-users"
SPLITS = ("valid", "test")
EVAL_USER_BATCH = 1024


def metric_names(ks: tuple[int, ...] = KS) -> list[str]:
    """``["recall@10", "ndcg@10", "recall@20", ...]`` for ``ks``."""
    return [f"{name}@{k}" for k in ks for name in ("recall", "ndcg")]


def mask_scores(scores: Tensor, row_index: Tensor, item_index: Tensor) -> Tensor:
    """A copy of ``scores`` with the listed (row, item) entries set to −∞.

    Args:
        scores: ``(B, I)`` user-by-item scores.
        row_index: ``(n,)`` int64 rows (users of this batch, 0..B-1).
        item_index: ``(n,)`` int64 items (e.g. the users' training items).

    Returns:
        ``(B, I)`` masked copy; ``scores`` is unchanged.
    """
    masked = scores.clone()
    masked[row_index.long(), item_index.long()] = float("-inf")
    return masked


def _truth_matrix(truth_row: Tensor, truth_item: Tensor, shape: torch.Size) -> Tensor:
    """``(B, I)`` bool relevance matrix; duplicate (row, item) pairs count once."""
    num_rows, num_items = shape
    if truth_row.shape != truth_item.shape or truth_row.dim() != 1:
        raise ValueError(f"truth_row {tuple(truth_row.shape)} and truth_item "
                         f"{tuple(truth_item.shape)} must be equal 1-D shapes")
    if truth_row.numel() and (int(truth_row.min()) < 0 or int(truth_row.max()) >= num_rows):
        raise ValueError(f"truth_row outside [0, {num_rows})")
    if truth_item.numel() and (int(truth_item.min()) < 0 or int(truth_item.max()) >= num_items):
        raise ValueError(f"truth_item outside [0, {num_items})")
    truth = torch.zeros(num_rows, num_items, dtype=torch.bool, device=truth_row.device)
    truth[truth_row.long(), truth_item.long()] = True
    return truth


def _ideal_dcg(num_truth: Tensor, k: int, discount: Tensor) -> Tensor:
    """``(B,)`` IDCG@k = Σ_{r=1..min(|T_u|, k)} 1/log2(r+1); 0 for |T_u| = 0.

    ``discount`` is ``(K_max,)`` with ``discount[r-1] = 1/log2(r+1)``.
    """
    prefix = torch.cat([discount.new_zeros(1), torch.cumsum(discount[:k], dim=0)])
    return prefix[num_truth.clamp(max=min(k, discount.numel()))]


def ranking_metric_sums(scores: Tensor, truth_row: Tensor, truth_item: Tensor,
                        ks: tuple[int, ...] = KS) -> dict[str, float]:
    """Sums of Recall@k and NDCG@k over the rows of ``scores`` that have truth items.

    Args:
        scores: ``(B, I)`` scores, already masked (:func:`mask_scores`) where needed.
        truth_row: ``(m,)`` int64 rows in ``[0, B)`` of the relevant pairs.
        truth_item: ``(m,)`` int64 items in ``[0, I)`` of the relevant pairs.
        ks: cut-offs; a k larger than I ranks all I items.

    Returns:
        ``{"recall@k": Σ_u Recall@k(u), "ndcg@k": Σ_u NDCG@k(u), ..., "num-users": n}`` over
        the n rows with at least one truth item (plain Python floats).
    """
    num_rows, num_items = scores.shape
    truth = _truth_matrix(truth_row, truth_item, scores.shape)
    counted = truth.any(dim=1)
    sums: dict[str, float] = {name: 0.0 for name in metric_names(ks)}
    sums[NUM_USERS_KEY] = float(counted.sum())
    if num_items == 0 or not bool(counted.any()):
        return sums
    scores, truth = scores[counted], truth[counted]
    num_truth = truth.sum(dim=1)                                       # (n,)
    max_k = min(max(ks), num_items)
    top_items = torch.topk(scores, max_k, dim=1).indices               # (n, max_k)
    hits = truth.gather(1, top_items).to(torch.float64)                # (n, max_k)
    discount = 1.0 / torch.log2(torch.arange(2, max_k + 2, dtype=torch.float64,
                                             device=scores.device))
    for k in ks:
        hits_k = hits[:, :k]
        recall = hits_k.sum(dim=1) / num_truth
        ndcg = (hits_k * discount[:hits_k.shape[1]]).sum(dim=1) / _ideal_dcg(num_truth, k,
                                                                               discount)
        sums[f"recall@{k}"] = float(recall.sum())
        sums[f"ndcg@{k}"] = float(ndcg.sum())
    return sums


def add_sums(total: dict[str, float], part: dict[str, float]) -> dict[str, float]:
    """Key-wise sum of two metric-sum dicts (missing keys count as 0)."""
    return {key: total.get(key, 0.0) + part.get(key, 0.0) for key in {**total, **part}}


def finalize(sums: dict[str, float]) -> dict[str, float]:
    """Means from sums: every metric divided by ``sums["num-users"]`` (0 users → 0.0).

    Keeps ``"num-users"``.
    """
    num_users = sums.get(NUM_USERS_KEY, 0.0)
    means = {key: (value / num_users if num_users > 0 else 0.0)
             for key, value in sums.items() if key != NUM_USERS_KEY}
    means[NUM_USERS_KEY] = num_users
    return means


# --------------------------------------------------------------------------- the one evaluator


def _pair_tensor(pairs) -> Tensor:
    """``(n, 2)`` int64 tensor from a tensor or array of ``[row, item]`` pairs (arrays are copied:
    datasets hand out read-only arrays, which torch may not wrap)."""
    if isinstance(pairs, Tensor):
        return pairs.long().reshape(-1, 2)
    return torch.tensor(np.asarray(pairs), dtype=torch.long).reshape(-1, 2)


def split_pairs(split: str, train, valid, test) -> tuple[Tensor, Tensor]:
    """The masking rule: ``(known, truth)`` pairs for scoring ``split``.

    Args:
        split: ``"valid"`` or ``"test"``.
        train, valid, test: ``(n, 2)`` ``[row, item]`` pairs (tensors or numpy arrays; ``valid``
            may be empty).

    Returns:
        ``known`` ``(n_k, 2)``: masked items, ``train`` for "valid" and ``train ∪ valid`` for
        "test"; ``truth`` ``(m, 2)``: the relevant items, ``valid`` or ``test``.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    train, valid, test = _pair_tensor(train), _pair_tensor(valid), _pair_tensor(test)
    if split == "valid":
        return train, valid
    return torch.cat([train, valid]), test


def _group_rows(pairs: Tensor, num_rows: int) -> tuple[Tensor, Tensor]:
    """``pairs`` stably sorted by row, and ``(num_rows + 1,)`` offsets of each row's block."""
    order = torch.argsort(pairs[:, 0], stable=True)
    grouped = pairs[order]
    indptr = torch.searchsorted(grouped[:, 0].contiguous(), torch.arange(num_rows + 1))
    return grouped, indptr


def _pairs_of_rows(grouped: Tensor, indptr: Tensor, rows: Tensor) -> Tensor:
    """The pairs of the sorted ``(b,)`` ``rows``, their row replaced by its position in ``rows``."""
    starts, counts = indptr[rows], indptr[rows + 1] - indptr[rows]
    total = int(counts.sum())
    if total == 0:
        return grouped.new_zeros(0, 2)
    block_start = torch.repeat_interleave(starts - torch.cumsum(counts, 0) + counts, counts)
    picked = grouped[block_start + torch.arange(total)]
    position = torch.repeat_interleave(torch.arange(rows.numel()), counts)
    return torch.stack([position, picked[:, 1]], dim=1)


def _check_pairs(name: str, pairs: Tensor, num_rows: int, num_items: int) -> None:
    if pairs.numel() and (int(pairs.min()) < 0 or int(pairs[:, 0].max()) >= num_rows
                          or int(pairs[:, 1].max()) >= num_items):
        raise ValueError(f"{name} pairs outside the {num_rows} x {num_items} score table")


@torch.no_grad()
def evaluate_ranking(user_vecs: Tensor, item_vecs: Tensor, known, truth, ks: tuple[int, ...] = KS,
                     user_batch: int = EVAL_USER_BATCH) -> dict[str, float]:
    """Full-ranking metric sums: every row with truth items ranks all items by ⟨user, item⟩.

    Args:
        user_vecs: ``(U, d)`` user representations (row r is user r of ``known`` / ``truth``).
        item_vecs: ``(I, d)`` item representations.
        known: ``(n, 2)`` ``[row, item]`` pairs masked out of the ranking (see :func:`split_pairs`).
        truth: ``(m, 2)`` ``[row, item]`` relevant pairs.
        ks: cut-offs.
        user_batch: rows scored at a time (memory ``user_batch × I``; results do not depend on it).

    Returns:
        :func:`ranking_metric_sums`-style sums over the rows with truth, plus ``"num-users"``.
    """
    known, truth = _pair_tensor(known), _pair_tensor(truth)
    num_rows, num_items = user_vecs.shape[0], item_vecs.shape[0]
    _check_pairs("known", known, num_rows, num_items)
    _check_pairs("truth", truth, num_rows, num_items)
    known_grouped, known_ptr = _group_rows(known, num_rows)
    truth_grouped, truth_ptr = _group_rows(truth, num_rows)
    rows_with_truth = torch.unique(truth[:, 0])
    sums = ranking_metric_sums(user_vecs.new_zeros(0, num_items), truth.new_zeros(0),
                               truth.new_zeros(0), ks)
    for rows in rows_with_truth.split(max(user_batch, 1)):
        scores = user_vecs[rows] @ item_vecs.T                                       # (b, I)
        mask = _pairs_of_rows(known_grouped, known_ptr, rows)
        relevant = _pairs_of_rows(truth_grouped, truth_ptr, rows)
        scores = mask_scores(scores, mask[:, 0], mask[:, 1])
        sums = add_sums(sums, ranking_metric_sums(scores, relevant[:, 0], relevant[:, 1], ks))
    return sums


def evaluate_split(user_vecs: Tensor, item_vecs: Tensor, train, valid, test, split: str = "test",
                   ks: tuple[int, ...] = KS, user_batch: int = EVAL_USER_BATCH) -> dict[str, float]:
    """Metric sums on ``split`` ("valid" | "test") with the masking rule of :func:`split_pairs`.

    ``user_vecs`` ``(U, d)``, ``item_vecs`` ``(I, d)``; ``train`` / ``valid`` / ``test`` are
    ``(n, 2)`` ``[row, item]`` pairs. Use :func:`finalize` for means.
    """
    known, truth = split_pairs(split, train, valid, test)
    return evaluate_ranking(user_vecs, item_vecs, known, truth, ks, user_batch)
