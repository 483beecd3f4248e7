"""Full-ranking top-K metrics, Recall@K and NDCG@K (torch only).

Protocol (as in LightGCN, He et al., SIGIR 2020, §4.1.1): every user ranks *all* items; the
items it was trained on are masked out (score −∞); its held-out items are the relevant set T_u.

    Recall@K(u) = |top_K(u) ∩ T_u| / |T_u|
    DCG@K(u)    = Σ_{r=1..K} 1[item at rank r ∈ T_u] / log2(r + 1)          (binary gains)
    IDCG@K(u)   = Σ_{r=1..min(|T_u|, K)} 1 / log2(r + 1)
    NDCG@K(u)   = DCG@K(u) / IDCG@K(u)

Users with T_u = ∅ are skipped. :func:`ranking_metric_sums` returns *sums* over the counted users
plus their number, so federated nodes can report them and the server divides once
(:func:`finalize`). Ties in the scores are broken by ``torch.topk``'s order (unspecified but
deterministic for a given input on a given build).

Imported on the client path: no torch_geometric, no flwr.
"""

from __future__ import annotations

import torch
from torch import Tensor

KS: tuple[int, ...] = (10, 20, 50)
NUM_USERS_KEY = "num-users"


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
