"""Secure aggregation's steps (common/secagg.py), run between real participants: the server's
result is the sum of the survivors' vectors, dropouts included, and what it sees of one node
says nothing of that node's vector."""

import numpy as np
import pytest

from common import secagg
from common.secagg import NodeSecrets, SecAggError, SecAggParams


def _round(vectors: dict[int, np.ndarray], neighbours: int, threshold: int,
           drop_after_shares: frozenset = frozenset()):
    """Every step of one round; returns (the server's unmasked sum, what it saw per node)."""
    nodes = sorted(vectors)
    secrets = {n: NodeSecrets(n) for n in nodes}
    keys = {n: s.public_keys() for n, s in secrets.items()}
    ring = secagg.neighbour_ring(nodes, neighbours, seed=3)
    inbox: dict[int, dict[int, bytes]] = {n: {} for n in nodes}
    for n in nodes:
        for dst, ciphertext in secagg.share_secrets(
                secrets[n], {v: keys[v] for v in ring[n]}, threshold).items():
            inbox[dst][n] = ciphertext
    live = {n: secagg.receive_shares(secrets[n], inbox[n]) for n in nodes}
    survivors = [n for n in nodes if n not in drop_after_shares]
    uploads = {n: secagg.masked(secrets[n], vectors[n], live[n]) for n in survivors}
    total = np.zeros_like(next(iter(uploads.values())))
    for upload in uploads.values():
        total = total + upload
    revealed = {n: secagg.reveal(secrets[n], survivors, sorted(drop_after_shares), threshold)
                for n in survivors}
    result = secagg.unmask(total, survivors, sorted(drop_after_shares), revealed, live,
                           {n: keys[n][1] for n in nodes}, threshold)
    return result, uploads, secrets


def _vectors(count: int, length: int = 500, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {100 + i: rng.integers(0, 2**20, length).astype(np.uint32) for i in range(count)}


@pytest.mark.parametrize("count,neighbours", [(5, 16), (12, 4)])
def test_the_server_gets_exactly_the_sum(count, neighbours):
    vectors = _vectors(count)
    result, uploads, _ = _round(vectors, neighbours, threshold=3)
    assert np.array_equal(result, sum(v.astype(np.uint64) for v in vectors.values()).astype(np.uint32))
    for node, upload in uploads.items():   # and never a plain vector
        assert not np.array_equal(upload, vectors[node])


def test_nodes_that_drop_after_sharing_leave_the_survivors_sum():
    vectors = _vectors(12)
    dropped = frozenset({101, 107})
    result, _, _ = _round(vectors, neighbours=6, threshold=3, drop_after_shares=dropped)
    expected = sum(v.astype(np.uint64) for n, v in vectors.items() if n not in dropped)
    assert np.array_equal(result, expected.astype(np.uint32))


def test_one_upload_is_uniform_whatever_the_vector():
    """A node whose vector is all zeros and one whose vector is all 2^20 - 1 upload values
    that look alike: mean near 2^31 and no correlation with the vector."""
    zeros = {1: np.zeros(20_000, np.uint32), 2: np.full(20_000, 2**20 - 1, np.uint32),
             3: np.arange(20_000, dtype=np.uint32)}
    _, uploads, _ = _round(zeros, neighbours=2, threshold=2)
    for node, upload in uploads.items():
        assert abs(upload.astype(np.float64).mean() / 2**31 - 1) < 0.02
    assert abs(np.corrcoef(uploads[3].astype(np.float64), zeros[3].astype(np.float64))[0, 1]) < 0.03


def test_a_node_refuses_to_reveal_both_secrets_of_one_node():
    vectors = _vectors(6)
    _, _, secrets = _round(vectors, neighbours=4, threshold=2)
    holder = secrets[100]
    with pytest.raises(SecAggError, match="both survivor and dropped"):
        secagg.reveal(holder, [100, 101, 102], [101], threshold=2)


def test_fewer_shares_than_the_threshold_do_not_rebuild_a_secret():
    holders = [NodeSecrets(n) for n in (1, 2, 3, 4, 5)]
    owner = holders[0]
    keys = {h.node: h.public_keys() for h in holders}
    secagg.share_secrets(owner, {v: keys[v] for v in (2, 3, 4, 5)}, threshold=3)
    mine = owner.held[1][0]
    with pytest.raises(SecAggError, match="3 needed"):
        secagg.rebuild([mine, mine], 3, "a seed")


def test_shares_routed_to_the_wrong_node_are_refused():
    a, b, c = NodeSecrets(1), NodeSecrets(2), NodeSecrets(3)
    keys = {n.node: n.public_keys() for n in (a, b, c)}
    out = secagg.share_secrets(a, {2: keys[2], 3: keys[3]}, threshold=2)
    secagg.share_secrets(c, {1: keys[1], 2: keys[2]}, threshold=2)
    with pytest.raises(Exception):   # a ciphertext for node 2 cannot be opened by node 3
        secagg.receive_shares(c, {1: out[2]})


def test_encode_decode_gives_the_float_sums():
    params = SecAggParams(participants=50, threshold=2, clip=2.0)
    rng = np.random.default_rng(1)
    weighted = [rng.uniform(-1.5, 1.5, (30, 4)) for _ in range(7)]
    counts = [rng.integers(0, 9, 30) for _ in range(7)]
    total = np.zeros(30 * 5, np.uint32)
    for w, c in zip(weighted, counts):
        total = total + secagg.encode(w, c, params)
    got_weighted, got_counts = secagg.decode(total, 30, 4, summed=7, params=params)
    step = 2 * params.clip / params.target
    assert np.abs(got_weighted - sum(weighted)).max() <= 7 * step + 1e-9
    assert np.array_equal(got_counts, sum(counts))


def test_zero_is_encoded_exactly():
    params = SecAggParams(participants=604, threshold=2, clip=10.0)
    total = sum(secagg.encode(np.zeros((3, 2)), np.zeros(3), params).astype(np.uint64)
                for _ in range(604))
    weighted, _ = secagg.decode(total.astype(np.uint32), 3, 2, summed=604, params=params)
    assert np.abs(weighted).max() < 1e-6


def test_the_ring_is_symmetric_and_sparse():
    ring = secagg.neighbour_ring(list(range(1, 41)), 6, seed=0)
    assert all(len(near) == 6 for near in ring.values())
    assert all(u in ring[v] for u, near in ring.items() for v in near)
