"""A curious server's attacks on what nodes upload in ``train`` (issue 11).

The server holds, for every train reply: the item table it sent, the uploaded rows (index,
new values, counts), ``num-examples``, and the pairs the node's users chose to share. From
those it tries to tell which *other* items each user trained on (their private interactions).
:func:`capture` taps a real in-process run (the strategy's tap sees the replies exactly as
the server receives them); :func:`attack` scores every (known user, item not known shared)
candidate; :func:`evaluate` turns scores into AUC, precision, recall and F1 against the
truth, with the random-guess baseline.

Attacks (higher score = "private interaction"):

* ``rows``: the row was uploaded with a change (positives and sampled negatives are).
* ``direction``: uploaded rows first, then ordered by the cosine of their change with the
  mean change of the user's known-shared rows (positives move with the user vector,
  negatives against it).
* ``counts``: uploaded rows first, then by their count (positives are touched every epoch).
* ``imia``: a linearised replay of the local step (after Yuan et al., WWW 2023): a surrogate
  user vector and positive/negative labels for the uploaded rows are fitted alternately so
  that the one-step BPR update ``delta_i ~ y_i * e_u`` explains the upload best.
* ``replay`` (when the run's config is known, :func:`negatives_replay`): an undefended node
  seeds its local schedule from the run's public seed, the round and its partition; the server
  tries every partition, finds the one whose sampled negatives are all among the uploaded rows,
  and knows the rest of the uploaded rows are positives.
* ``prior`` (a reference, not an upload attack): the server's graph model scored on the
  shared pairs only, what sharing itself reveals; no upload defence can lower it.

Under secure aggregation a reply carries no rows but a masked vector; the attacker reads it
as if it were one plain encoded update (:func:`read_masked`), the best it can do without the
masks, and runs the same attacks on the rows that gives.

``F1@k`` cuts each ranking at the number of private items ``num-examples`` implies
(``num-examples / epochs - shared``): exact when the count is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import torch

from client_app.local_training import LocalHyper, _schedule
from common.config import RunConfig
from common.protocol import TrainReply
from common.secagg import SecAggParams, decode
from server_app.strategy import FedShareStrategy, Tap

UPLOAD_ATTACKS = ("rows", "direction", "counts", "imia", "replay")
ATTACKS = (*UPLOAD_ATTACKS, "prior")


@dataclass(frozen=True)
class Upload:
    """What the server holds about one node's train reply."""

    node: int
    round: int
    table: np.ndarray          # (I, d) the item table the server sent
    reply: TrainReply
    users: np.ndarray          # (U,) users the server knows the node shares for
    shared: np.ndarray         # (s, 2) [user, item] pairs the server holds for them
    views: tuple[np.ndarray, np.ndarray] | None   # the server's graph views (user, item)


def capture(strategy: FedShareStrategy, keep, into: list[Upload]) -> Tap:
    """A tap that stores, for each train reply ``keep(node, round)`` selects, the server's
    view of it (the table is still the one sent: aggregation runs after the replies)."""
    state = strategy.state

    def tap(phase: str, message) -> None:
        node, rnd = int(message.metadata.src_node_id), int(message.metadata.group_id)
        if phase != "train" or not keep(node, rnd):
            return
        users = state.registry.users_of(node)
        pairs = state.edges.pairs() if state.edges is not None else np.zeros((0, 2), np.int64)
        reply = TrainReply.from_content(message.content)
        if reply.masked is not None:
            reply = read_masked(reply, state.item_emb, strategy.cfg.secagg_clip,
                                2 * strategy.cfg.local_epochs * reply.num_users)
        into.append(Upload(node, rnd, state.item_emb.copy(), reply,
                           users, pairs[np.isin(pairs[:, 0], users)], state.views))
    return tap


def read_masked(reply: TrainReply, table: np.ndarray, clip: float, most_count: int) -> TrainReply:
    """A masked reply read as one plain encoded update (common/secagg.py): each word brought
    into the range an honest single update uses (values ``mod (T + 1)``, counts
    ``mod (most_count + 1)``), then decoded; rows with a non-zero count are "uploaded", each
    the table row plus its weighted change over its count."""
    num_items, dim = table.shape
    params = SecAggParams(1, 2, clip)
    words = reply.masked.astype(np.int64)
    words[:num_items * dim] %= params.target + 1
    words[num_items * dim:] %= most_count + 1
    weighted, counts = decode(words, num_items, dim, 1, params)
    index = np.flatnonzero(counts > 0)
    # float64: a change this small would vanish into float32 rounding of the table's values
    values = table[index].astype(np.float64) + weighted[index] / counts[index, None]
    return TrainReply(index, values, counts[index].astype(np.float32), reply.loss,
                      reply.num_examples, reply.pending_sharing, None, reply.num_users)


# ------------------------------------------------------------------ scores
def _changes(upload: Upload) -> tuple[np.ndarray, np.ndarray]:
    """``(I, d)`` change of every row (zero where nothing was uploaded) and ``(I,)`` whether
    the row was uploaded with a change."""
    delta = np.zeros_like(upload.table, dtype=np.float64)
    reply = upload.reply
    delta[reply.index] = reply.values.astype(np.float64) - upload.table[reply.index]
    return delta, np.linalg.norm(delta, axis=1) > 0


def _unit(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    return np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)


def _user_directions(upload: Upload, delta: np.ndarray) -> np.ndarray:
    """``(U, d)`` mean unit change of each user's known-shared rows."""
    unit = _unit(delta)
    out = np.zeros((len(upload.users), delta.shape[1]))
    for k, user in enumerate(upload.users):
        out[k] = unit[upload.shared[upload.shared[:, 0] == user, 1]].sum(0)
    return _unit(out)


def _imia_directions(upload: Upload, delta: np.ndarray, moved: np.ndarray,
                     iterations: int = 5) -> np.ndarray:
    """Surrogate user vectors refitted with the labels they imply: ``e_u`` = sum of the
    unit changes of the shared rows plus the rows labelled positive minus the negatives."""
    unit = _unit(delta)
    direction = _user_directions(upload, delta)
    for _ in range(iterations):
        labels = np.sign(direction @ unit.T) * moved            # (U, I) +1 / -1 / 0
        for k, user in enumerate(upload.users):
            labels[k, upload.shared[upload.shared[:, 0] == user, 1]] = 1.0
        direction = _unit(labels @ unit)
    return direction


def negatives_replay(upload: Upload, cfg: RunConfig, partitions: int) -> np.ndarray | None:
    """The sampled negatives of the upload, replayed from the public seed (as
    ``client_app.app.train`` seeds an undefended node) for every candidate partition: the
    first whose negatives are all uploaded rows; None when no partition fits."""
    hp = LocalHyper(cfg.local_epochs, cfg.local_lr, cfg.batch_size, cfg.reg, cfg.cl_weight,
                    cfg.cl_temperature)
    pairs, num_items = upload.reply.num_examples // max(cfg.local_epochs, 1), upload.table.shape[0]
    uploaded = np.zeros(num_items, bool)
    uploaded[upload.reply.index] = True
    for partition in range(partitions):
        seed = cfg.seed * 1_000_003 + upload.round * 7919 + partition
        steps = _schedule(pairs, num_items, hp, torch.Generator().manual_seed(seed))
        negatives = torch.cat([neg for _, neg in steps]).numpy() if steps else np.zeros(0, int)
        if len(negatives) and uploaded[negatives].all():
            return np.unique(negatives)
    return None


def attack(upload: Upload, negatives: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """``{attack: (U, I) scores}`` for the node's known users over every item;
    ``negatives``: the replayed negatives (:func:`negatives_replay`), when found."""
    delta, moved = _changes(upload)
    touched = np.broadcast_to(moved.astype(np.float64), (len(upload.users), len(moved)))
    counts = np.zeros(len(moved))
    counts[upload.reply.index] = upload.reply.counts
    unit = _unit(delta)
    scores = {"rows": touched.copy(),
              "direction": touched + (1 + _user_directions(upload, delta) @ unit.T) / 4,
              "counts": touched + 0.5 * counts / (counts.max() + 1),
              "imia": touched + (1 + _imia_directions(upload, delta, moved) @ unit.T) / 4}
    replay = touched.copy()
    if negatives is not None:
        replay[:, negatives] *= 0.5          # a negative may also be a positive: ranked between
    scores["replay"] = replay
    if upload.views is not None:
        user_views, item_views = upload.views
        scores["prior"] = user_views[upload.users] @ item_views.T
    return scores


def private_count(upload: Upload, epochs: int) -> int:
    """How many private interactions ``num-examples`` implies for the node's known users."""
    return max(0, upload.reply.num_examples // max(epochs, 1) - len(upload.shared))


# ------------------------------------------------------------------ metrics
def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half), from average ranks."""
    positives, negatives = labels.sum(), len(labels) - labels.sum()
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    _, start, count = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = start + (count + 1) / 2.0                          # 1-based average rank per tie group
    ranks[order] = np.repeat(average, count)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def best_f1(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    """``(f1, precision, recall)`` at the threshold with the best F1 (cut between tie groups):
    the strongest attacker with an oracle threshold."""
    order = np.argsort(-scores, kind="mergesort")
    hits = np.cumsum(labels[order])
    ends = np.flatnonzero(np.diff(-scores[order], append=np.inf) != 0)   # last index of each tie group
    predicted, true = ends + 1, hits[ends]
    precision, recall = true / predicted, true / max(labels.sum(), 1)
    f1 = np.where(true > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(precision[best]), float(recall[best])


def f1_at(scores: np.ndarray, labels: np.ndarray, k: int, rng: np.random.Generator) -> float:
    """F1 of the top ``k`` (ties broken at random)."""
    if k <= 0 or not labels.any():
        return 0.0
    order = np.lexsort((rng.random(len(scores)), -scores))[:k]
    true = labels[order].sum()
    return float(2 * true / (k + labels.sum()))


def evaluate(upload: Upload, private: np.ndarray, epochs: int, seed: int = 0,
             negatives: np.ndarray | None = None) -> dict:
    """Every attack's metrics on one upload; ``private`` are the (user, item) private
    training pairs of the node's known users (the truth)."""
    num_items = upload.table.shape[0]
    known = np.zeros((len(upload.users), num_items), bool)
    truth = np.zeros_like(known)
    row = {int(u): k for k, u in enumerate(upload.users)}
    known[[row[int(u)] for u in upload.shared[:, 0]], upload.shared[:, 1]] = True
    mine = private[np.isin(private[:, 0], upload.users)]
    truth[[row[int(u)] for u in mine[:, 0]], mine[:, 1]] = True
    candidates, labels = ~known, truth[~known]
    prevalence = labels.mean()
    out = {"node": upload.node, "round": upload.round, "candidates": int(candidates.sum()),
           "private": int(labels.sum()), "random_f1": float(2 * prevalence / (1 + prevalence)),
           "random_auc": 0.5, "uploaded_rows": int(len(upload.reply.index)),
           "replayed": negatives is not None,
           # the history size the reply's num-examples implies vs the truth (shared + private)
           "size_exact": bool(private_count(upload, epochs) == len(mine))}
    rng, k = np.random.default_rng(seed), private_count(upload, epochs)
    for name, scores in attack(upload, negatives).items():
        flat = scores[candidates]
        f1, precision, recall = best_f1(flat, labels)
        out[name] = {"auc": auc(flat, labels), "f1": f1, "precision": precision,
                     "recall": recall, "f1@k": f1_at(flat, labels, k, rng)}
    return out
