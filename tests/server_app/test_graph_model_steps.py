"""`server-epoch-steps`: a server epoch takes at most that many steps; past that size the batch
grows instead (and the learning rate with its square root), so an epoch's cost stays linear in
the graph (docs/scaling.md)."""

import numpy as np
import pytest
import torch

from common.config import load_config
from common.graph import build_graph
from server_app.graph_model import ServerGraphModel, ServerHyper

HP = ServerHyper(epochs=1.0, batch_size=16, lr=0.01, reg=0.0, cl_weight=0.0, cl_temperature=1.0,
                 num_layers=2, epoch_steps=4)


@pytest.mark.parametrize("pairs, batch", [(10, 16), (64, 16), (65, 17), (1000, 250)])
def test_the_batch_grows_only_past_batch_size_times_epoch_steps(pairs, batch):
    assert HP.batch_size_for(pairs) == batch


def test_no_bound_keeps_the_batch_and_the_lr():
    free = ServerHyper(1.0, 16, 0.01, 0.0, 0.0, 1.0, 2, epoch_steps=0)
    assert free.batch_size_for(10_000) == 16 and free.lr_for(16) == 0.01


def test_the_lr_follows_the_square_root_of_the_batch_growth():
    assert HP.lr_for(16) == pytest.approx(0.01)
    assert HP.lr_for(64) == pytest.approx(0.02)   # 4x the batch: 2x the lr
    assert ServerHyper(1.0, 16, 0.01, 0.0, 0.0, 1.0, 2, 4, "none").lr_for(64) == 0.01
    with pytest.raises(ValueError, match="lr_scaling must be 'sqrt' or 'none'"):
        ServerHyper(1.0, 16, 0.01, 0.0, 0.0, 1.0, 2, 4, "linear").lr_for(64)


def _adam_steps(model: ServerGraphModel) -> int:
    return int(model.optimizer.state[model.user_weight]["step"])


def _model_and_pairs(num_pairs: int, hp: ServerHyper):
    rng = np.random.default_rng(0)
    pairs = np.unique(rng.integers(0, [60, 80], size=(num_pairs * 2, 2)), axis=0)[:num_pairs]
    graph = build_graph(torch.from_numpy(pairs[:, 0]), torch.from_numpy(pairs[:, 1]), 60, 80)
    return ServerGraphModel(60, 80, 8, hp, seed=1), graph, torch.from_numpy(pairs)


@pytest.mark.parametrize("epochs, steps", [(1.0, 4), (3.0, 12)])
def test_an_epoch_over_a_large_graph_takes_epoch_steps_steps(epochs, steps):
    model, graph, pairs = _model_and_pairs(1000, HP)
    model.train(graph, pairs, None, epochs=epochs)
    assert _adam_steps(model) == steps
    assert model.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * (250 / 16) ** 0.5)


def test_a_small_graph_keeps_its_batches_and_lr():
    model, graph, pairs = _model_and_pairs(40, HP)
    model.train(graph, pairs, None)
    assert _adam_steps(model) == 3   # ceil(40 / 16)
    assert model.optimizer.param_groups[0]["lr"] == pytest.approx(0.01)


def test_explicit_steps_keep_the_configured_batch_and_lr():
    """Unlearning asks for exact steps of `server-batch-size`: the bound does not apply."""
    model, graph, pairs = _model_and_pairs(1000, HP)
    model.train(graph, pairs, None, steps=6)
    assert _adam_steps(model) == 6
    assert model.optimizer.param_groups[0]["lr"] == pytest.approx(0.01)


def test_the_run_config_carries_the_bound():
    assert load_config({}).server_epoch_steps == 128
    with pytest.raises(ValueError, match="server-epoch-steps|server_epoch_steps"):
        load_config({"server-epoch-steps": -1})
