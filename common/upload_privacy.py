"""What a node does to its train upload so the server learns less about unshared interactions
(issue 11). Each defence is a run-config option (common/config.py); the server reads the same
config to bound replies (server_app/validation.py). Measured by bench/privacy.py.

* ``upload-mode = "none"``: no item rows at all; private interactions train only the private
  user vector (against the item table and the server's graph views). The upload carries
  nothing about them but the loss and ``num-examples``, which is always coarse here. The
  default ``auto`` is ``none`` whenever the run shares (RunConfig.upload_privacy) and
  ``rows`` for the FedAvg baseline. The options below apply to ``rows``.
* ``upload-padding = r``: ``r`` pseudo-positives per training pair, items the user has not
  interacted with, trained exactly as positives on the item side (the user vector does not
  learn them), so a private positive's row looks like a pseudo-positive's.
* ``upload-rows = "all"``: every row of the catalog is uploaded (untouched ones unchanged),
  so which rows moved is not in the row set; only meaningful with noise (below).
* ``dp-epsilon`` (with ``dp-delta``, ``dp-clip``): the change of the uploaded rows, as one
  matrix, is clipped to L2 norm ``dp-clip`` and Gaussian noise is added to every coordinate
  (:func:`gaussian_sigma`). Any two histories of the node give clipped changes at most
  ``2 * clip`` apart, so each upload is ``(epsilon, delta)``-DP for the node's whole data
  (all its users, shared or not) *given the row set*: with ``upload-rows = "touched"`` the
  row set itself is not protected. Rounds compose (:func:`composed_epsilon`).
* ``upload-counts = "coarse"``: every uploaded row gets the same count and ``num-examples`` is
  rounded up to a power of two, so neither says how often a row was touched nor the exact
  history size.

With any defence on uploaded rows, the node's randomness (negatives, pseudo-items, noise) comes from fresh
OS entropy, not from the run's public seed: with the seed, the server can replay the local
schedule and know which uploaded rows are sampled negatives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class UploadPrivacy:
    mode: str = "rows"            # "rows" | "none"
    rows: str = "touched"         # "touched" | "all"
    padding: float = 0.0
    dp_epsilon: float = 0.0       # 0: no noise
    dp_delta: float = 1e-5
    dp_clip: float = 0.1
    counts: str = "exact"         # "exact" | "coarse"

    @property
    def fresh_entropy(self) -> bool:
        """Rows are uploaded under a defence: the node then draws its training randomness
        from fresh entropy (a seeded schedule lets the server replay which rows were sampled
        negatives). Undefended and withheld uploads keep the reproducible seed."""
        return self.mode == "rows" and self != UploadPrivacy()

    @property
    def noise_sigma(self) -> float:
        """Per-coordinate noise of an upload (0 without DP)."""
        return gaussian_sigma(self.dp_epsilon, self.dp_delta, self.dp_clip) if self.dp_epsilon else 0.0


def initial_item_table(seed: int, num_items: int, dim: int) -> np.ndarray:
    """``(I, d)`` float32: the FedAvg item table's seeded start (the run's ``seed + 1``).

    Under withheld uploads (``mode = "none"``) no node ever changes it, so the server does not
    send it and each node rebuilds it here, bit for bit: a third of every model message."""
    generator = torch.Generator().manual_seed(seed + 1)
    return (0.1 * torch.randn(num_items, dim, generator=generator)).numpy()


# ------------------------------------------------------------------ accounting (zCDP)
def zcdp_rho(epsilon: float, delta: float) -> float:
    """The largest zCDP ``rho`` that implies ``(epsilon, delta)``-DP:
    ``epsilon = rho + 2 sqrt(rho ln(1/delta))`` (Bun & Steinke 2016, Prop. 1.3), solved."""
    log_term = math.log(1.0 / delta)
    return (math.sqrt(log_term + epsilon) - math.sqrt(log_term)) ** 2


def gaussian_sigma(epsilon: float, delta: float, clip: float) -> float:
    """Noise standard deviation per coordinate for one ``(epsilon, delta)``-DP upload: the
    Gaussian mechanism with L2 sensitivity ``2 * clip`` is ``(2 clip)^2 / (2 sigma^2)``-zCDP
    (Bun & Steinke 2016, Prop. 1.6)."""
    return 2.0 * clip / math.sqrt(2.0 * zcdp_rho(epsilon, delta))


def composed_epsilon(uploads: int, sigma: float, clip: float, delta: float) -> float:
    """``epsilon`` after ``uploads`` noised uploads of one node (zCDP adds up)."""
    rho = uploads * (2.0 * clip) ** 2 / (2.0 * sigma ** 2)
    return rho + 2.0 * math.sqrt(rho * math.log(1.0 / delta))


# ------------------------------------------------------------------ the node's side
def pseudo_pairs(pairs: np.ndarray, num_users: int, num_items: int, ratio: float,
                 rng: np.random.Generator) -> np.ndarray:
    """``(m, 2)`` [local user, item] pseudo-positives: ``round(ratio * n_u)`` items per user
    drawn without replacement from the items the user has no training interaction with."""
    out = []
    for user in range(num_users):
        mine = pairs[pairs[:, 0] == user, 1]
        others = np.setdiff1d(np.arange(num_items), mine)
        take = min(len(others), int(round(ratio * len(mine))))
        if take:
            out.append(np.stack([np.full(take, user), rng.choice(others, take, replace=False)], 1))
    return np.concatenate(out).astype(np.int64) if out else np.zeros((0, 2), np.int64)


def most_row_count(epochs: int, users: int) -> int:
    """The largest count one node's row can honestly have in a round: a positive and a
    negative per user and epoch (the server caps plain counts at it; secure aggregation's
    nodes cap theirs, and the server bounds the round's count sums by it)."""
    return 2 * epochs * users


def coarse_count(count: int, most: int) -> int:
    """``count`` rounded up to a power of two, at most ``most`` (0 stays 0)."""
    return 0 if count <= 0 else min(most, 1 << (int(count) - 1).bit_length())


def noised_rows(table: np.ndarray, index: np.ndarray, values: np.ndarray, privacy: UploadPrivacy,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(index, values)`` to upload: all rows or the touched ones; with DP, their joint change
    clipped to ``dp-clip`` and noised."""
    if privacy.rows == "all":
        full = table.astype(np.float32).copy()
        full[index] = values
        index, values = np.arange(len(table), dtype=np.int64), full
    if not privacy.dp_epsilon:
        return index, values
    change = values.astype(np.float64) - table[index]
    norm = np.linalg.norm(change)
    change *= min(1.0, privacy.dp_clip / norm) if norm > 0 else 1.0
    change += rng.normal(0.0, privacy.noise_sigma, change.shape)
    return index, (table[index] + change).astype(np.float32)


def upload_counts(index: np.ndarray, counts: np.ndarray, num_examples: int, most: int,
                  privacy: UploadPrivacy) -> tuple[np.ndarray, int]:
    """``(row counts, num-examples)`` to report. Rows without a count of their own (``rows =
    "all"``) and every row under ``counts = "coarse"`` share ``2 * num-examples`` equally (the
    server bounds the sum by that); ``num-examples`` is rounded up under ``coarse``."""
    if privacy.counts == "coarse":
        num_examples = coarse_count(num_examples, most)
    if privacy.counts == "coarse" or len(counts) != len(index):
        share = 2.0 * num_examples / max(len(index), 1)
        return np.full(len(index), share, np.float32), num_examples
    return counts.astype(np.float32), num_examples


def reported_examples(num_examples: int, most: int, privacy: UploadPrivacy) -> int:
    """``num-examples`` of a reply without rows in the clear (upload mode ``none``, no row
    touched, or secure aggregation): rounded up (:func:`coarse_count`) under mode ``none`` or
    ``counts = "coarse"``, else as is."""
    coarse = privacy.mode == "none" or privacy.counts == "coarse"
    return coarse_count(num_examples, most) if coarse else num_examples


def prepare_upload(table: np.ndarray, index: np.ndarray, values: np.ndarray, counts: np.ndarray,
                   num_examples: int, most: int, privacy: UploadPrivacy,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """``(index, values, counts, num-examples)`` of the train reply under ``privacy``;
    ``most`` bounds the reported ``num-examples`` (what the server accepts)."""
    if privacy.mode == "none" or not len(index):
        return (index[:0], values[:0], counts[:0].astype(np.float32),
                reported_examples(num_examples, most, privacy))
    index, values = noised_rows(table, index, values, privacy, rng)
    counts, examples = upload_counts(index, counts, num_examples, most, privacy)
    return index, values, counts, examples
