"""The secure-aggregation messages of the protocol (``secure-aggregation = true``).

Part of :mod:`common.protocol` (same record helpers and error type), kept apart because only
runs with secure aggregation use it; the steps themselves are in :mod:`common.secagg`.
Around a round's ``train`` (docs/design.md, "Secure aggregation"):

* ``query.secagg`` stage ``keys``: server sends :class:`SecAggRequest`; node replies
  :class:`SecAggReply` with its two public keys;
* stage ``shares``: the request names the node's neighbours and their keys; the reply holds
  one ciphertext per neighbour (its Shamir shares, encrypted for that neighbour);
* ``train``: the model message also carries a :class:`SecAggInbox` (the ciphertexts addressed
  to the node and the round's quantisation parameters); the :class:`~common.protocol.TrainReply`
  carries the masked vector instead of item rows;
* stage ``unmask``: the request names the survivors and the dropped nodes; the reply holds
  the node's share of each survivor's seed and each dropped node's mask key.

Node ids are Flower's unsigned 64-bit ids (uint64 arrays). ``query.secagg`` carries no
header: the server owes nothing on it, and every node of the round gets a ``train`` message
with the header in the same round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from common.protocol import ProtocolError, UnshareReply, _array, _record, to_record, with_withdrawals
from common.secagg import NodeSecrets

SECAGG = "query.secagg"
STAGES = ("keys", "shares", "unmask")
MAX_BLOB = 4096   # a public key, a ciphertext of two shares or one share is far smaller


def _ids(values) -> np.ndarray:
    return np.asarray(values, dtype=np.uint64).reshape(-1)


def _listed(key: str, blobs) -> dict:
    """``{key: blobs}``, or nothing for no blobs (Flower cannot size an empty list)."""
    return {key: list(blobs)} if len(blobs) else {}


def _blobs(config: ConfigRecord, key: str) -> tuple[bytes, ...]:
    values = config.get(key, [])
    if not isinstance(values, list) or not all(isinstance(v, bytes) for v in values):
        raise ProtocolError(f"secagg {key!r} must be a list of bytes")
    if any(len(v) > MAX_BLOB for v in values):
        raise ProtocolError(f"secagg {key!r} holds a value over {MAX_BLOB} bytes")
    return tuple(values)


@dataclass(frozen=True)
class SecAggRequest:
    """One ``query.secagg`` stage: ``peers`` (k,) and their ``peer_keys`` (2k: share key, mask
    key per peer) for ``shares``; ``survivors`` and ``dropped`` for ``unmask``."""

    stage: str
    server_round: int
    threshold: int
    peers: np.ndarray = field(default_factory=lambda: _ids([]))
    peer_keys: tuple[bytes, ...] = ()
    survivors: np.ndarray = field(default_factory=lambda: _ids([]))
    dropped: np.ndarray = field(default_factory=lambda: _ids([]))

    def to_content(self) -> RecordDict:
        return RecordDict({
            "secagg": ConfigRecord({"stage": self.stage, "server-round": self.server_round,
                                    "threshold": self.threshold, **_listed("peer-keys", self.peer_keys)}),
            "secagg-nodes": to_record(peers=_ids(self.peers), survivors=_ids(self.survivors),
                                      dropped=_ids(self.dropped))})

    @classmethod
    def from_content(cls, content: RecordDict) -> "SecAggRequest":
        config = _record(content, "secagg", ConfigRecord)
        stage = config.get("stage")
        if stage not in STAGES:
            raise ProtocolError(f"unknown secagg stage {stage!r}")
        nodes = _record(content, "secagg-nodes", ArrayRecord)
        peers, survivors, dropped = (_array(nodes, key, "uint64", 1)
                                     for key in ("peers", "survivors", "dropped"))
        keys = _blobs(config, "peer-keys")
        if len(keys) != 2 * len(peers):
            raise ProtocolError(f"{len(keys)} peer keys for {len(peers)} peers")
        return cls(str(stage), int(config["server-round"]), int(config["threshold"]), peers, keys,
                   survivors, dropped)


@dataclass(frozen=True)
class SecAggReply:
    """The reply to ``stage``: ``keys``, no nodes and the two public keys (share, mask);
    ``shares``, per neighbour in ``nodes`` (m,) the ciphertext for it; ``unmask``, per node
    the share of its secret."""

    stage: str
    nodes: np.ndarray
    blobs: tuple[bytes, ...]
    withdrawals: UnshareReply | None = None

    def to_content(self) -> RecordDict:
        return with_withdrawals(RecordDict({
            "secagg": ConfigRecord({"stage": self.stage, **_listed("blobs", self.blobs)}),
            "secagg-nodes": to_record(nodes=_ids(self.nodes))}), self.withdrawals)

    @classmethod
    def from_content(cls, content: RecordDict) -> "SecAggReply":
        config = _record(content, "secagg", ConfigRecord)
        stage = config.get("stage")
        nodes = _array(_record(content, "secagg-nodes", ArrayRecord), "nodes", "uint64", 1)
        blobs = _blobs(config, "blobs")
        expected = 2 if stage == "keys" else len(nodes)
        if stage not in STAGES or len(blobs) != expected or (stage == "keys" and len(nodes)):
            raise ProtocolError(f"secagg {stage!r} reply: {len(blobs)} blobs for "
                                f"{len(nodes)} nodes")
        return cls(str(stage), nodes, blobs, UnshareReply.rider(content))


@dataclass(frozen=True)
class SecAggInbox:
    """What a ``train`` message adds under secure aggregation: the round's ``participants``,
    ``threshold`` and ``clip``, and the ciphertexts (with their ``sources``) for the node."""

    participants: int
    threshold: int
    clip: float
    sources: np.ndarray
    ciphertexts: tuple[bytes, ...]

    def write(self, content: RecordDict) -> RecordDict:
        content["secagg-inbox"] = ConfigRecord({
            "participants": self.participants, "threshold": self.threshold, "clip": self.clip,
            **_listed("ciphertexts", self.ciphertexts)})
        content["secagg-sources"] = to_record(nodes=_ids(self.sources))
        return content

    @classmethod
    def read(cls, content: RecordDict) -> "SecAggInbox | None":
        if "secagg-inbox" not in content.config_records:
            return None
        config = content.config_records["secagg-inbox"]
        sources = _array(_record(content, "secagg-sources", ArrayRecord), "nodes", "uint64", 1)
        ciphertexts = _blobs(config, "ciphertexts")
        if len(ciphertexts) != len(sources):
            raise ProtocolError("secagg inbox: sources and ciphertexts disagree")
        return cls(int(config["participants"]), int(config["threshold"]), float(config["clip"]),
                   sources, ciphertexts)


# --------------------------------------------------------------------- a node's round secrets
def secrets_to_record(secrets: NodeSecrets) -> ConfigRecord:
    """``secrets`` for ``context.state`` (kept in the SuperNode's memory between messages)."""
    record = {"node": int(secrets.node).to_bytes(8, "little"), "round": secrets.server_round,
              "share-private": secrets.share_private,
              "mask-private": secrets.mask_private, "seed": secrets.seed}
    record |= {f"peer:{v}": list(keys) for v, keys in secrets.peers.items()}
    record |= {f"held:{v}": list(shares) for v, shares in secrets.held.items()}
    return ConfigRecord(record)


def secrets_from_record(record: ConfigRecord) -> NodeSecrets:
    pairs = lambda prefix: {int(k.split(":")[1]): tuple(v) for k, v in record.items()  # noqa: E731
                            if k.startswith(prefix)}
    return NodeSecrets(int.from_bytes(record["node"], "little"), int(record["round"]),
                       record["share-private"],
                       record["mask-private"], record["seed"], pairs("peer:"), pairs("held:"))
