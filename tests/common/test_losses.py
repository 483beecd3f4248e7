"""Tests for common.losses against values computed by hand with math."""

import math

import pytest
import torch

from common.losses import bpr_loss, info_nce, l2_penalty


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_bpr_loss_hand_computed():
    pos, neg = torch.tensor([2.0, 0.5]), torch.tensor([1.0, 1.5])
    # -1/2 [log σ(2-1) + log σ(0.5-1.5)]
    expected = -0.5 * (_log_sigmoid(1.0) + _log_sigmoid(-1.0))
    assert bpr_loss(pos, neg).item() == pytest.approx(expected, rel=1e-6)


def test_bpr_loss_is_stable_for_large_margins():
    loss = bpr_loss(torch.tensor([0.0, 200.0]), torch.tensor([200.0, 0.0]))
    assert loss.item() == pytest.approx(100.0, rel=1e-6)   # (200 + ~0) / 2


def test_bpr_loss_empty_is_zero():
    pos = torch.zeros(0, requires_grad=True)
    loss = bpr_loss(pos, torch.zeros(0))
    loss.backward()
    assert loss.item() == 0.0


ANCHOR = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
POSITIVE = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
# cosines: a0·p0 = 1, a0·p1 = 1/√2, a1·p0 = 0, a1·p1 = 1/√2


def _row_loss(positive_logit: float, all_logits: list[float]) -> float:
    return -(positive_logit - math.log(sum(math.exp(x) for x in all_logits)))


def test_info_nce_two_by_two():
    tau, r = 0.5, 1 / math.sqrt(2)
    expected = 0.5 * (_row_loss(1 / tau, [1 / tau, r / tau]) + _row_loss(r / tau, [0.0, r / tau]))
    assert info_nce(ANCHOR, POSITIVE, None, tau).item() == pytest.approx(expected, rel=1e-6)


def test_info_nce_with_extra_negatives():
    tau, r = 0.5, 1 / math.sqrt(2)
    negatives = torch.tensor([[-2.0, 0.0], [0.0, 3.0]])
    # cosines: a0·n0 = -1, a0·n1 = 0, a1·n0 = 0, a1·n1 = 1
    expected = 0.5 * (_row_loss(1 / tau, [1 / tau, r / tau, -1 / tau, 0.0])
                      + _row_loss(r / tau, [0.0, r / tau, 0.0, 1 / tau]))
    assert info_nce(ANCHOR, POSITIVE, negatives, tau).item() == pytest.approx(expected, rel=1e-6)
    empty_negatives = torch.zeros(0, 2)
    assert info_nce(ANCHOR, POSITIVE, empty_negatives, tau).item() == pytest.approx(
        info_nce(ANCHOR, POSITIVE, None, tau).item())


def test_info_nce_uses_cosine_similarity():
    scaled = info_nce(3.0 * ANCHOR, 0.1 * POSITIVE, None, 0.5)
    assert scaled.item() == pytest.approx(info_nce(ANCHOR, POSITIVE, None, 0.5).item(), rel=1e-6)


def test_info_nce_temperature_sharpens():
    torch.manual_seed(0)
    anchor = torch.randn(8, 16)
    positive = anchor + 0.05 * torch.randn(8, 16)      # positives are clearly the most similar
    losses = [info_nce(anchor, positive, torch.randn(32, 16), tau).item()
              for tau in (1.0, 0.5, 0.1)]
    assert losses[0] > losses[1] > losses[2]
    tiny = info_nce(anchor, positive, None, 1e-4)      # huge logits stay finite
    assert torch.isfinite(tiny)


def test_info_nce_empty_batch_is_zero_and_differentiable():
    anchor = torch.zeros(0, 4, requires_grad=True)
    loss = info_nce(anchor, torch.zeros(0, 4), torch.randn(3, 4), 0.2)
    loss.backward()
    assert loss.shape == () and loss.item() == 0.0


def test_info_nce_validates_inputs():
    with pytest.raises(ValueError):
        info_nce(ANCHOR, POSITIVE, None, 0.0)
    with pytest.raises(ValueError):
        info_nce(ANCHOR, POSITIVE[:1], None, 0.5)


def test_l2_penalty_hand_computed():
    first = torch.tensor([[1.0, 2.0], [3.0, 4.0]])      # Σ x² = 30, B = 2
    second = torch.ones(2, 2)                            # Σ x² = 4
    assert l2_penalty(first, second).item() == pytest.approx(34 / (2 * 2))
    assert l2_penalty(torch.zeros(0, 3)).item() == 0.0
