"""Training losses: BPR, InfoNCE and the per-batch L2 penalty (torch only).

Imported on the client path: no torch_geometric, no flwr.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def bpr_loss(pos_scores: Tensor, neg_scores: Tensor) -> Tensor:
    """Bayesian Personalized Ranking loss (Rendle et al., UAI 2009, eq. BPR-Opt).

        L = -1/B Σ_b log σ(s⁺_b − s⁻_b) = 1/B Σ_b softplus(s⁻_b − s⁺_b)

    ``softplus`` is the numerically stable form of ``-log σ``.

    Args:
        pos_scores: ``(B,)`` scores of the observed (user, positive item) pairs.
        neg_scores: ``(B,)`` scores of the sampled (user, negative item) pairs.

    Returns:
        Scalar loss; 0.0 (still attached to the graph) for B = 0.
    """
    if pos_scores.shape != neg_scores.shape:
        raise ValueError(f"pos_scores {tuple(pos_scores.shape)} and neg_scores "
                         f"{tuple(neg_scores.shape)} differ in shape")
    if pos_scores.numel() == 0:
        return (pos_scores.sum() + neg_scores.sum()) * 0.0
    return F.softplus(neg_scores - pos_scores).mean()


def info_nce(anchor: Tensor, positive: Tensor, negatives: Tensor | None,
             temperature: float) -> Tensor:
    """InfoNCE with cosine similarity (van den Oord et al., "Representation Learning with
    Contrastive Predictive Coding", 2018, eq. 4).

    For row b, with s(x, y) = cos(x, y) / τ:

        L_b = −log [ exp s(a_b, p_b) / ( Σ_{c=1..B} exp s(a_b, p_c) + Σ_{m=1..M} exp s(a_b, n_m) ) ]

    i.e. the positive of ``anchor[b]`` is ``positive[b]``; its negatives are the other rows of
    ``positive`` (in-batch) and every row of ``negatives``. Computed as cross-entropy over the
    ``(B, B+M)`` logits via ``log_softmax`` (numerically stable). Returns the mean over b.

    Args:
        anchor: ``(B, d)``.
        positive: ``(B, d)``.
        negatives: ``(M, d)`` extra negatives shared by all rows, or ``None`` (M = 0).
        temperature: τ > 0.

    Returns:
        Scalar loss; 0.0 (attached to the inputs' graph) for B = 0.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if anchor.dim() != 2 or anchor.shape != positive.shape:
        raise ValueError(f"anchor {tuple(anchor.shape)} and positive {tuple(positive.shape)} "
                         f"must both be (B, d)")
    if anchor.shape[0] == 0:
        return (anchor.sum() + positive.sum()) * 0.0
    anchor_unit = F.normalize(anchor, dim=1)
    candidates = positive
    if negatives is not None and negatives.shape[0] > 0:
        if negatives.dim() != 2 or negatives.shape[1] != anchor.shape[1]:
            raise ValueError(f"negatives {tuple(negatives.shape)} must be (M, {anchor.shape[1]})")
        candidates = torch.cat([positive, negatives], dim=0)
    logits = anchor_unit @ F.normalize(candidates, dim=1).T / temperature   # (B, B+M)
    target = torch.arange(anchor.shape[0], device=anchor.device)
    return -logits.log_softmax(dim=1).gather(1, target[:, None]).mean()


def l2_penalty(*tensors: Tensor) -> Tensor:
    """Per-batch L2 regulariser as in LightGCN's reference code (He et al., SIGIR 2020):

        R = ( Σ_t ‖t‖²_F ) / (2 · B),   B = tensors[0].shape[0]

    Args:
        tensors: e.g. the layer-0 ``(B, d)`` user, positive-item and negative-item embeddings
            of the batch.

    Returns:
        Scalar; 0.0 when B = 0.
    """
    if not tensors:
        raise ValueError("l2_penalty needs at least one tensor")
    total = sum(t.pow(2).sum() for t in tensors)
    batch_size = tensors[0].shape[0]
    if batch_size == 0:
        return total * 0.0
    return total / (2 * batch_size)
