"""Secure aggregation of the item-table updates: the server learns only a round's sum.

SecAgg+ (Bell, Bonawitz, Gascón, Lepoint, Raykova, CCS 2020), after SecAgg (Bonawitz et al.,
CCS 2017), for an honest-but-curious server. Each of a round's ``n`` participants ``u``
turns its update into a vector ``x_u`` of integers mod 2^32 (:func:`encode`) and uploads

    y_u = x_u + PRG(b_u) + sum_{v in N(u)} sign(u, v) PRG(s_uv)      (mod 2^32)

with ``b_u`` a fresh 32-byte seed, ``N(u)`` its ``k`` neighbours on a ring
(:func:`neighbour_ring`), ``s_uv`` an X25519 agreement between the two nodes' mask keys and
``sign(u, v) = +1`` if ``u > v`` else ``-1``, so the pairwise masks cancel in
``sum_u y_u``. Before masking, ``u`` Shamir-shares ``b_u`` and its mask private key among
``N(u)`` (threshold ``t``), each share encrypted for its holder (:func:`share_secrets`).
After the masked vectors arrive, each holder reveals, per node, the ``b``-share if that node
sent a vector and the key share if it dropped, never both (:func:`reveal`); the server then
removes every survivor's ``PRG(b_u)`` and the dropped nodes' pairwise masks
(:func:`unmask`). Any ``t - 1`` holders learn nothing of a secret (Shamir), a single
``y_u`` is uniform given the server's view, and what the server reconstructs is exactly
``sum_{u survived} x_u``.

Building blocks, none written here: X25519 and HKDF from ``cryptography``, Fernet
(authenticated encryption) and Shamir sharing and the stochastic quantiser from Flower's
``flwr.common.secure_aggregation``, the PRG is ChaCha20's keystream (``cryptography``; Flower's
own ``pseudo_rand_gen`` folds its seed to 32 bits, which a server could brute-force).

Shapes: an update of ``I`` items in ``d`` dimensions is ``I * d`` quantised values of
``c_i * delta_i`` (the row's training count times its change, clipped to ``[-clip, clip]``)
followed by the ``I`` exact counts, ``I * (d + 1)`` uint32 in all; the sums give per-row
weighted FedAvg (server_app/aggregation.py) without any single node's rows.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import decrypt, encrypt
from flwr.common.secure_aggregation.quantization import quantize
from flwr.common.secure_aggregation.secaggplus_utils import (share_keys_plaintext_concat,
                                                              share_keys_plaintext_separate)

MODULUS_BITS = 32          # vectors are uint32: numpy's wrap-around is the modular sum
HEADROOM = 4               # honest sums use a quarter of the range: a forged vector shows
_NONCE = bytes(16)         # each PRG key is used for one keystream only


class SecAggError(ValueError):
    """A step of the protocol that must not go on; the text says why."""


@dataclass(frozen=True)
class SecAggParams:
    """One round's public parameters: ``participants`` nodes, ``threshold`` shares to rebuild a
    secret, values clipped to ``[-clip, clip]`` and quantised to ``[0, target]``."""

    participants: int
    threshold: int
    clip: float

    @property
    def target(self) -> int:
        """Quantisation levels: even (0 maps to an integer) and small enough that the sum of
        every participant's values stays below 2^32 / HEADROOM (a sum beyond it is forged)."""
        return ((2 ** MODULUS_BITS - 1) // (HEADROOM * max(self.participants, 1))) & ~1


# ------------------------------------------------------------------ primitives
def prg(seed: bytes, length: int) -> np.ndarray:
    """``(length,)`` uint32 from ChaCha20's keystream under the 32-byte ``seed``."""
    stream = Cipher(algorithms.ChaCha20(seed, _NONCE), mode=None).encryptor()
    return np.frombuffer(stream.update(bytes(4 * length)), dtype=np.uint32)


def new_private_key() -> bytes:
    return X25519PrivateKey.generate().private_bytes_raw()


def public_key(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def agree(private: bytes, public: bytes, purpose: bytes) -> bytes:
    """A 32-byte key shared by the two key pairs' owners (X25519, then HKDF-SHA256 bound to
    ``purpose`` so the encryption and the mask keys of a pair differ)."""
    secret = X25519PrivateKey.from_private_bytes(private).exchange(
        X25519PublicKey.from_public_bytes(public))
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(secret)


def _fernet_key(private: bytes, public: bytes) -> bytes:
    return base64.urlsafe_b64encode(agree(private, public, b"fedshare-secagg-shares"))


def neighbour_ring(nodes: list[int], neighbours: int, seed: int) -> dict[int, list[int]]:
    """Each node's ``neighbours`` (rounded down to even) nearest nodes on a seeded ring:
    SecAgg+'s sparse graph (each node masks with and shares its secrets among O(k), not n)."""
    order = [nodes[i] for i in np.random.default_rng(seed).permutation(len(nodes))]
    if len(order) - 1 <= neighbours:
        return {node: sorted(set(order) - {node}) for node in order}
    half, ring = neighbours // 2, {}
    for pos, node in enumerate(order):
        ring[node] = sorted({order[(pos + step) % len(order)] for step in range(-half, half + 1)}
                            - {node})
    return ring


# ------------------------------------------------------------------ encoding
def encode(weighted: np.ndarray, counts: np.ndarray, params: SecAggParams) -> np.ndarray:
    """``(I * (d + 1),)`` uint32: ``weighted`` (I, d) quantised (Flower's stochastic
    quantiser: unbiased, clipped to ``[-clip, clip]``), then ``counts`` (I,) exactly."""
    values = quantize([np.asarray(weighted, np.float64)], params.clip, params.target)[0]
    return np.concatenate([values.reshape(-1).astype(np.uint32),
                           np.asarray(np.rint(counts), np.int64).astype(np.uint32)])


def check_sum(total: np.ndarray, num_items: int, dim: int, summed: int, params: SecAggParams,
              most_count: float) -> None:
    """:class:`SecAggError` when ``total`` is outside what ``summed`` honest encoded vectors
    can give (a value above ``summed * target``, a count above ``most_count``): a forged
    masked vector."""
    if total[:num_items * dim].max(initial=0) > summed * params.target or \
            total[num_items * dim:].max(initial=0) > most_count:
        raise SecAggError("the unmasked sum is outside what honest updates give: a forged "
                          "masked vector")


def decode(total: np.ndarray, num_items: int, dim: int, summed: int,
           params: SecAggParams) -> tuple[np.ndarray, np.ndarray]:
    """The sums ``(I, d)`` of ``weighted`` and ``(I,)`` of ``counts`` over ``summed`` encoded
    vectors (each value ``v`` was sent as ``(v + clip) * target / (2 clip)``)."""
    values = total[:num_items * dim].astype(np.float64).reshape(num_items, dim)
    weighted = values * (2 * params.clip / params.target) - summed * params.clip
    return weighted, total[num_items * dim:].astype(np.float64)


# ------------------------------------------------------------------ a node's steps
@dataclass
class NodeSecrets:
    """What a participant keeps between the steps of one round (never sent as such)."""

    node: int
    server_round: int = 0
    share_private: bytes = field(default_factory=new_private_key)   # encrypts the shares
    mask_private: bytes = field(default_factory=new_private_key)    # pairwise masks
    seed: bytes = field(default_factory=lambda: os.urandom(32))   # the OS's CSPRNG
    peers: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # v -> (share, mask) keys
    held: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)   # v -> (b share, key share)

    def public_keys(self) -> tuple[bytes, bytes]:
        return public_key(self.share_private), public_key(self.mask_private)


def share_secrets(secrets: NodeSecrets, peers: dict[int, tuple[bytes, bytes]],
                  threshold: int) -> dict[int, bytes]:
    """Shamir shares of the seed and the mask key for ``peers`` (neighbour -> its two public
    keys), one ciphertext per neighbour; the node keeps its own share."""
    if len(peers) + 1 < threshold:
        raise SecAggError(f"{len(peers)} neighbours cannot hold a {threshold}-share secret")
    if len({key for pair in peers.values() for key in pair}) != 2 * len(peers):
        raise SecAggError("two neighbours announced the same public key")
    secrets.peers = dict(peers)
    holders = sorted([secrets.node, *peers])
    seed_shares = create_shares(secrets.seed, threshold, len(holders))
    key_shares = create_shares(secrets.mask_private, threshold, len(holders))
    out = {}
    for holder, b_share, k_share in zip(holders, seed_shares, key_shares):
        if holder == secrets.node:
            secrets.held[holder] = (b_share, k_share)
            continue
        plain = share_keys_plaintext_concat(secrets.node, holder, b_share, k_share)
        out[holder] = encrypt(_fernet_key(secrets.share_private, peers[holder][0]), plain)
    return out


def receive_shares(secrets: NodeSecrets, ciphertexts: dict[int, bytes]) -> list[int]:
    """Decrypt the shares the neighbours sent; returns the neighbours the node will mask
    with (exactly those whose shares arrived, as the server routed them)."""
    for src, ciphertext in ciphertexts.items():
        if src not in secrets.peers:
            raise SecAggError(f"shares from node {src}, not a neighbour")
        plain = decrypt(_fernet_key(secrets.share_private, secrets.peers[src][0]), ciphertext)
        actual_src, dst, b_share, k_share = share_keys_plaintext_separate(plain)
        if (actual_src, dst) != (src, secrets.node):
            raise SecAggError(f"a share routed from {src} to {secrets.node} was made by "
                              f"{actual_src} for {dst}")
        secrets.held[src] = (b_share, k_share)
    return sorted(ciphertexts)


def pair_mask(private: bytes, public: bytes, length: int) -> np.ndarray:
    return prg(agree(private, public, b"fedshare-secagg-mask"), length)


def masked(secrets: NodeSecrets, vector: np.ndarray, live: list[int]) -> np.ndarray:
    """``y_u`` of the module docstring for the neighbours ``live``."""
    out = vector.astype(np.uint32) + prg(secrets.seed, len(vector))
    for peer in live:
        mask = pair_mask(secrets.mask_private, secrets.peers[peer][1], len(vector))
        out = out + mask if secrets.node > peer else out - mask
    return out


def reveal(secrets: NodeSecrets, survivors: list[int], dropped: list[int],
           threshold: int) -> dict[int, bytes]:
    """The shares the server asks for: the seed share of each survivor and the key share of
    each dropped node this node holds. Refused when the server names a node in both lists
    (it could then remove both masks of that node) or too few survivors remain."""
    both = set(survivors) & set(dropped)
    if both:
        raise SecAggError(f"nodes {sorted(both)[:5]} named both survivor and dropped")
    if len(survivors) < threshold:
        raise SecAggError(f"{len(survivors)} survivors, below the threshold {threshold}")
    out = {v: secrets.held[v][0] for v in survivors if v in secrets.held}
    out |= {v: secrets.held[v][1] for v in dropped if v in secrets.held}
    return out


# ------------------------------------------------------------------ the server's step
def rebuild(shares: list[bytes], threshold: int, what: str) -> bytes:
    if len(shares) < threshold:
        raise SecAggError(f"{len(shares)} shares of {what}, {threshold} needed")
    return combine_shares(shares[:threshold])


def unmask(total: np.ndarray, survivors: list[int], dropped: list[int],
           revealed: dict[int, dict[int, bytes]], live: dict[int, list[int]],
           mask_public: dict[int, bytes], threshold: int) -> np.ndarray:
    """``sum_{u in survivors} x_u`` from ``total = sum_{u in survivors} y_u``.

    ``revealed``: responder -> {node: share}; ``live``: each node's masking neighbours;
    ``mask_public``: each node's mask public key."""
    def shares_of(node: int) -> list[bytes]:
        return [got[node] for got in revealed.values() if node in got]

    out = total.astype(np.uint32).copy()
    for node in survivors:
        out -= prg(rebuild(shares_of(node), threshold, f"node {node}'s seed"), len(out))
    for gone in dropped:
        key = rebuild(shares_of(gone), threshold, f"node {gone}'s mask key")
        for peer in (p for p in live.get(gone, ()) if p in survivors and gone in live.get(p, ())):
            mask = pair_mask(key, mask_public[peer], len(out))
            out = out - mask if peer > gone else out + mask   # undo the peer's sign(peer, gone)
    return out
