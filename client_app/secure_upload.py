"""A node's side of secure aggregation (common/secagg.py): its steps per ``query.secagg``
stage, and the masked vector that replaces its item rows in the ``train`` reply."""

from __future__ import annotations

import numpy as np

from common import secagg
from common.protocol_secagg import SecAggInbox, SecAggReply, SecAggRequest
from common.secagg import NodeSecrets, SecAggError, SecAggParams


def secagg_step(secrets: NodeSecrets | None, node: int,
                request: SecAggRequest) -> tuple[NodeSecrets | None, SecAggReply]:
    """The node's secrets after ``request`` (None once the round is over) and its reply."""
    if request.stage == "keys":   # a new round: fresh keys and seed, whatever was kept
        secrets = NodeSecrets(node, request.server_round)
        return secrets, SecAggReply("keys", np.zeros(0, np.uint64), secrets.public_keys())
    if secrets is None or secrets.server_round != request.server_round:
        raise SecAggError(f"secagg {request.stage!r} for round {request.server_round} without "
                          "this round's keys")
    if request.stage == "shares":
        peers = {int(v): (request.peer_keys[2 * i], request.peer_keys[2 * i + 1])
                 for i, v in enumerate(request.peers)}
        out = secagg.share_secrets(secrets, peers, request.threshold)
        return secrets, SecAggReply("shares", np.array(list(out), np.uint64), tuple(out.values()))
    revealed = secagg.reveal(secrets, [int(v) for v in request.survivors],
                             [int(v) for v in request.dropped], request.threshold)
    return None, SecAggReply("unmask", np.array(list(revealed), np.uint64), tuple(revealed.values()))


def dense_update(table: np.ndarray, index: np.ndarray, values: np.ndarray,
                 counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(I, d)`` count-weighted row changes and ``(I,)`` counts, zero where untouched."""
    weighted = np.zeros(table.shape, np.float64)
    dense_counts = np.zeros(len(table), np.float64)
    weighted[index] = counts[:, None].astype(np.float64) * (values - table[index])
    dense_counts[index] = counts
    return weighted, dense_counts


def masked_upload(secrets: NodeSecrets | None, inbox: SecAggInbox, table: np.ndarray,
                  index: np.ndarray, values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``(I * (d + 1),)`` uint32: the node's update, encoded and masked for this round."""
    if secrets is None:
        raise SecAggError("a secure train message without this round's secagg keys")
    live = secagg.receive_shares(secrets, dict(zip(inbox.sources.tolist(), inbox.ciphertexts)))
    params = SecAggParams(inbox.participants, inbox.threshold, inbox.clip)
    vector = secagg.encode(*dense_update(table, index, values, counts), params)
    return secagg.masked(secrets, vector, live)
