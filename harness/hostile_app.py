"""The FedShare ClientApp with a hostile mod, for soaks on a real federation (loopback).

``app`` serves every message with the real ClientApp (``client_app.app``); a SuperNode whose
node config sets ``hostile-rate`` > 0 then alters each reply with that probability by one
attack of :data:`harness.hostile.ATTACKS`, as a compromised node would before sending it.
Nodes without it answer exactly as the real ClientApp. One FAB serves every SuperNode, so the
behaviour is chosen per node by its node config (``deploy/federation.sh --node-config-extra``):

* ``hostile-rate``: probability that a reply is attacked (absent or 0: honest);
* ``hostile-seed``: seeds the draws (with the node's partition, round and message type, so a
  rerun attacks the same replies);
* ``hostile-users``, ``hostile-items``: the federation's catalog, for out-of-range attacks;
* ``hostile-spare-round``: the round whose evaluation is the soak's measurement: its
  evaluate reply is left honest (the measurement is not part of the attack).

Every attack applied is appended to ``<state-dir>/hostile-attacks.jsonl`` (round, node id,
message type, attack) so the soak can check that the server rejected each one, naming the
node. The soak points a copy of the project's ``pyproject.toml`` at this app
(``bench/soak_loopback.py``); the production app never imports the harness.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client_app.app import app as fedshare
from common.protocol import EVALUATE
from harness.hostile import attack_reply

ATTACK_LOG = "hostile-attacks.jsonl"


def _rng(context: Context, kind: str, rnd: int) -> np.random.Generator:
    seed = int(context.node_config.get("hostile-seed", 0))
    pid = int(context.node_config.get("partition-id", 0))
    return np.random.default_rng([seed, pid, rnd, zlib.crc32(kind.encode())])


def _log(context: Context, entry: dict) -> None:
    state_dir = Path(str(context.node_config.get("state-dir", "")) or ".")
    with open(state_dir / ATTACK_LOG, "a") as log:
        log.write(json.dumps(entry) + "\n")


def hostile_mod(msg: Message, context: Context, call_next) -> Message:
    """Answer with the real ClientApp, then maybe attack the reply (hostile nodes only)."""
    reply = call_next(msg, context)
    config = context.node_config
    rate = float(config.get("hostile-rate", 0.0))
    kind, rnd = msg.metadata.message_type, int(msg.metadata.group_id or 0)
    spared = kind == EVALUATE and rnd == int(config.get("hostile-spare-round", -1))
    if rate <= 0 or spared or not reply.has_content():
        return reply
    rng = _rng(context, kind, rnd)
    if rng.random() >= rate:
        return reply
    catalog = (int(config["hostile-users"]), int(config["hostile-items"]))
    name = attack_reply(reply.content, kind, catalog, rng)
    _log(context, {"round": rnd, "node": context.node_id, "kind": kind, "attack": name})
    return reply


app = ClientApp(mods=[hostile_mod])


def _delegate(msg: Message, context: Context) -> Message:
    return fedshare(msg, context)


# every FedShare message type (common.protocol) is served by the real ClientApp
app.query("unshare")(_delegate)
app.query("share")(_delegate)
app.train()(_delegate)
app.evaluate()(_delegate)
