"""Ownership by identity: a user is bound to the node that first shared for them; with
SuperNode authentication that is the node's public key, which survives a restart and cannot
be taken over; without it, the volatile node id, which a restarted node can take over."""

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from common.config import load_config
from common.datasets import default_data_root
from harness.session import new_session
from server_app.nodes import NodeRegistry, key_identity
from server_app.state import ServerState


def _registry(keys=None) -> NodeRegistry:
    registry = NodeRegistry()
    registry.connect([1, 2], keys)
    registry.claim(1, [10, 11])
    return registry


def test_without_keys_a_silent_owner_is_taken_over():
    registry = _registry()
    assert registry.may_act_for(1, 10) and not registry.may_act_for(2, 10)
    registry.note_lost(1)                       # node 1 stopped answering (restarted)
    assert registry.may_act_for(2, 10) and not registry.is_bound(10)


def test_a_user_bound_to_a_key_stays_with_it():
    registry = _registry({1: b"key-one", 2: b"key-two"})
    assert registry.is_bound(10) and registry.owner[10] == key_identity(b"key-one")
    registry.note_lost(1)
    registry.connect([2])                       # node 1 is gone altogether
    assert not registry.may_act_for(2, 10)
    registry.connect([2, 7], {2: b"key-two", 7: b"key-one"})   # back with a new id, same key
    assert registry.may_act_for(7, 10) and registry.users_of(7).tolist() == [10, 11]
    assert registry.users_of(2).tolist() == []


def test_only_nodes_that_may_hold_shared_data_are_polled():
    registry = _registry()                      # node 1 shares for users 10, 11; node 2 nothing
    registry.connect([1, 2, 3])
    assert registry.poll_targets([1, 2, 3], [], rnd=5, every=5) == [1]
    assert registry.poll_targets([1, 2, 3], [1], rnd=5, every=5) == []    # sampled: rides along
    registry.flag_unshare([3])                   # a flagged node is polled whatever it holds
    assert registry.poll_targets([1, 2, 3], [], rnd=5, every=5) == [1, 3]
    registry.release([10, 11])                   # node 1 withdrew everything
    registry.polled([3])
    assert registry.poll_targets([1, 2, 3], [], rnd=5, every=5) == []


def test_everyone_is_polled_while_an_unauthenticated_owner_is_silent():
    registry = _registry()
    registry.connect([1, 2, 3])
    registry.note_lost(1)                       # node 1 may be back under a new id
    assert registry.poll_targets([1, 2, 3], [], rnd=5, every=5) == [1, 2, 3]
    keyed = _registry({1: b"key-one", 2: b"key-two"})
    keyed.note_lost(1)
    keyed.connect([2, 3], {2: b"key-two"})      # a key-bound owner keeps its users: no orphan
    assert keyed.poll_targets([2, 3], [], rnd=5, every=5) == []


def test_bindings_are_saved_and_old_states_load():
    registry = _registry({1: b"key-one"})
    again = NodeRegistry.from_dict(registry.to_dict())
    assert again.owner == registry.owner and again.is_bound(11)
    legacy = NodeRegistry.from_dict({"owner": {"5": 3}})    # states saved with bare node ids
    legacy.connect([3])
    assert legacy.users_of(3).tolist() == [5] and not legacy.is_bound(5)


@pytest.mark.skipif(not (default_data_root() / "ml-100k").exists(), reason="ML-100K not available")
def test_a_restarted_authenticated_node_keeps_its_users_and_others_cannot_take_them(tmp_path):
    cfg = load_config({"max-users": 60, "num-rounds": 4, "eval-every": 0, "fraction-train": 1.0,
                       "sharing-ratio": 0.5, "state-dir": str(tmp_path / "x"),
                       "out-dir": str(tmp_path / "out")})
    session = new_session(cfg, 3, tmp_path / "fed")
    session.grid.public_keys = {1: b"pk-1", 2: b"pk-2", 3: b"pk-3"}
    session.run_rounds(1)
    users = session.state.registry.users_of(1).tolist()
    assert users and all(session.state.registry.is_bound(u) for u in users)

    # node 1's SuperNode restarts: a new node id, the same key, its node state on disk
    grid, old = session.grid, session.grid.contexts.pop(1)
    grid.contexts[4] = Context(run_id=old.run_id, node_id=4, node_config=old.node_config,
                               state=RecordDict(), run_config=old.run_config)
    grid.public_keys = {4: b"pk-1", 2: b"pk-2", 3: b"pk-3"}
    record, = session.run_rounds(1)
    assert record.phases["train"].ok == 3 and not record.phases["share"].rejected
    assert session.state.registry.users_of(4).tolist() == users

    # the server restarts too: the binding is part of its saved state
    state = ServerState.load(cfg, tmp_path / "fed" / "server")
    state.registry.connect([2, 3], {2: b"pk-2", 3: b"pk-3"})   # node 1's key is offline
    assert not any(state.registry.may_act_for(2, u) for u in users)
    assert np.isin(users, state.edges.user).all()
