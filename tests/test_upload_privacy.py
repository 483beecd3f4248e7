"""Upload privacy (issue 11): the server's attacks on train uploads find private interactions
of an undefended run and are at chance under the defences; the DP noise matches its budget;
the defences' pieces do what they claim, and the server still accepts honest defended replies.

Runs are real (the ServerApp strategy and the ClientApp handlers exchanging serialised
messages in one process, harness/session.py), one user per node, tiny (ML-100K, 40 users).
"""

import math

import numpy as np
import pytest
import torch

from client_app.local_training import GlobalView, LocalHyper, train_local
from common.config import load_config
from common.datasets import default_data_root
from common.protocol import TrainReply
from common.sharing import shared_pairs
from common.upload_privacy import (UploadPrivacy, coarse_count, composed_epsilon, gaussian_sigma,
                                   noised_rows, prepare_upload, pseudo_pairs)
from harness.session import new_session
from harness.upload_attacks import UPLOAD_ATTACKS, auc, best_f1, capture, evaluate, negatives_replay
from server_app.validation import TrainBounds, check_train

USERS = 40


def _attacked(tmp_path, **defence) -> list[dict]:
    """Attack every round-2 upload of a 40-user cross-user run at rho 0.5."""
    if not (default_data_root() / "ml-100k" / "u.data").exists():
        pytest.skip("ML-100K not available")
    config = {"max-users": USERS, "num-rounds": 2, "eval-every": 0, "sharing-ratio": 0.5,
              "fraction-train": 1.0, "state-dir": str(tmp_path / "state"),
              "out-dir": str(tmp_path / "out"), "upload-mode": "rows",
              # the classical leak: rows trained by BPR on the fused score (under ego fusion at
              # ego-weight 1 the item rows get no BPR gradient, only the L2 shrink of touched rows)
              "fusion": "weighted", **defence}
    cfg = load_config(config)
    session = new_session(cfg, USERS, tmp_path)
    uploads = []
    session.strategy.tap = capture(session.strategy, lambda node, rnd: rnd == 2, uploads)
    records = session.run_rounds(2)
    assert all(r.phases["train"].rejected == [] for r in records)   # defended replies are accepted
    ds = cfg.load_data()
    shared = {tuple(p) for p in shared_pairs(ds.train, 0.5, "fixed", cfg.seed)}
    private = np.array([p for p in ds.train.tolist() if tuple(p) not in shared])
    assert len(uploads) == USERS
    return [evaluate(u, private, cfg.local_epochs, negatives=negatives_replay(u, cfg, USERS))
            for u in uploads]


def _mean(evaluations, attack, metric):
    return float(np.nanmean([e[attack][metric] for e in evaluations]))


def test_the_attacks_find_private_items_of_an_undefended_run(tmp_path):
    found = _attacked(tmp_path)
    random_f1 = np.mean([e["random_f1"] for e in found])
    assert _mean(found, "direction", "auc") > 0.95
    assert _mean(found, "direction", "f1") > random_f1 + 0.5
    assert _mean(found, "rows", "recall") == 1.0        # every private positive is uploaded
    assert all(e["replayed"] for e in found)             # the public seed gives the negatives away
    assert _mean(found, "replay", "precision") == 1.0
    assert all(e["size_exact"] for e in found)            # num-examples: the history size


@pytest.mark.parametrize("defence", [{"upload-mode": "auto"},
                                     {"dp-epsilon": 1.0, "upload-rows": "all",
                                      "upload-counts": "coarse"},
                                     {"secure-aggregation": True, "upload-counts": "coarse"}],
                         ids=["default", "dp-all", "secagg"])
def test_the_attacks_are_at_chance_under_a_defence(tmp_path, defence):
    found = _attacked(tmp_path, **defence)
    random_f1 = np.mean([e["random_f1"] for e in found])
    assert np.mean([e["size_exact"] for e in found]) < 0.25   # exact only where n is a power of 2
    for attack in UPLOAD_ATTACKS:
        assert _mean(found, attack, "auc") <= 0.55, attack
        assert _mean(found, attack, "f1") <= random_f1 + 0.05, attack


def test_the_default_withholds_rows_when_the_run_shares_and_not_for_fedavg():
    assert load_config({}).upload_privacy.mode == "none"
    assert load_config({"sharing-ratio": 0.0}).upload_privacy.mode == "rows"
    assert load_config({"sharing-ratio": 0.0, "upload-mode": "none"}).upload_privacy.mode == "none"
    assert not load_config({}).upload_privacy.fresh_entropy       # withheld: reproducible
    assert load_config({"upload-mode": "rows", "upload-padding": 1.0}).upload_privacy.fresh_entropy


# ------------------------------------------------------------------ DP accounting
def _gaussian_delta(epsilon: float, sigma: float, sensitivity: float) -> float:
    """The Gaussian mechanism's exact delta at ``epsilon`` (Balle & Wang 2018, Thm. 8)."""
    phi = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    a, b = sensitivity / (2 * sigma), epsilon * sigma / sensitivity
    return phi(a - b) - math.exp(epsilon) * phi(-a - b)


@pytest.mark.parametrize("epsilon,delta,clip", [(1.0, 1e-5, 0.1), (10.0, 1e-5, 0.1), (4.0, 1e-6, 2.0)])
def test_the_noise_scale_meets_the_stated_budget(epsilon, delta, clip):
    sigma = gaussian_sigma(epsilon, delta, clip)
    assert _gaussian_delta(epsilon, sigma, 2 * clip) <= delta     # exact privacy profile
    assert _gaussian_delta(epsilon, 0.7 * sigma, 2 * clip) > delta  # and not far above the need
    assert composed_epsilon(1, sigma, clip, delta) == pytest.approx(epsilon)
    assert composed_epsilon(4, sigma, clip, delta) > 2 * epsilon   # rounds compose


def test_uploads_are_clipped_and_noised_at_that_scale():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(500, 16)).astype(np.float32)
    privacy = UploadPrivacy(dp_epsilon=2.0, dp_clip=0.1)
    index = np.arange(0, 500, 2)
    same, noisy = noised_rows(table, index, table[index], privacy, rng)
    noise = noisy - table[same]
    assert noise.std() == pytest.approx(privacy.noise_sigma, rel=0.02)
    change = rng.normal(size=(len(index), 16))                    # far beyond the clip
    unit = change / np.linalg.norm(change)
    along = [((noised_rows(table, index, table[index] + change, privacy, rng)[1] - table[index])
              * unit).sum() for _ in range(2000)]
    assert np.mean(along) == pytest.approx(0.1, abs=4 * privacy.noise_sigma / math.sqrt(2000))


def test_all_rows_and_coarse_counts_hide_which_rows_moved_and_how_often():
    table = np.zeros((10, 2), np.float32)
    index, values = np.array([2, 5]), np.ones((2, 2), np.float32)
    got = prepare_upload(table, index, values, np.array([3.0, 1.0], np.float32), 13, 1000,
                         UploadPrivacy(rows="all", counts="coarse"), np.random.default_rng(0))
    rows, vals, counts, examples = got
    assert rows.tolist() == list(range(10)) and examples == 16
    assert np.allclose(vals[[2, 5]], 1) and np.allclose(np.delete(vals, [2, 5], 0), 0)
    assert np.allclose(counts, counts[0]) and counts.sum() == pytest.approx(2 * examples)
    assert [coarse_count(n, 100) for n in (0, 1, 2, 3, 64, 65, 99)] == [0, 1, 2, 4, 64, 100, 100]


def test_withheld_uploads_carry_no_rows_and_a_coarse_count():
    index, values, counts, examples = prepare_upload(np.zeros((4, 2), np.float32), np.array([1]),
                                              np.ones((1, 2), np.float32), np.ones(1, np.float32),
                                              5, 100, UploadPrivacy(mode="none"),
                                              np.random.default_rng(0))
    assert len(index) == len(values) == len(counts) == 0 and examples == 8


def test_pseudo_positives_are_new_items_and_train_only_item_rows():
    rng = np.random.default_rng(1)
    pairs = np.array([[0, 1], [0, 2], [1, 3], [1, 4], [1, 5]])
    pseudo = pseudo_pairs(pairs, 2, 30, 2.0, rng)
    assert np.bincount(pseudo[:, 0]).tolist() == [4, 6]
    assert not {tuple(p) for p in pseudo.tolist()} & {tuple(p) for p in pairs.tolist()}
    user = torch.randn(2, 8)
    view = GlobalView(torch.randn(30, 8), None, torch.zeros(2, 8), torch.zeros(2, dtype=torch.bool),
                      None)
    hp = LocalHyper(2, 0.05, 4, 0.0, 0.0, 1.0, "sum")
    only_pseudo = train_local(user, torch.zeros((0, 2), dtype=torch.long), view, hp, 0,
                              pseudo=torch.from_numpy(pseudo))
    assert torch.equal(only_pseudo.user_emb, user)                   # no gradient to the user
    moved = only_pseudo.index[np.abs(only_pseudo.values - view.item_emb[only_pseudo.index].numpy()).sum(1) > 0]
    assert set(pseudo[:, 1]) <= set(moved.tolist())                   # their rows are trained


def test_the_server_accepts_a_noised_reply_within_its_bound():
    privacy = UploadPrivacy(dp_epsilon=1.0, dp_clip=0.1, rows="all", counts="coarse")
    bounds = TrainBounds(1, 0.01, 1024, 0.0, privacy.dp_clip, privacy.noise_sigma)
    rng = np.random.default_rng(0)
    table = rng.normal(size=(300, 64)).astype(np.float32)
    index, values, counts, examples = prepare_upload(table, np.array([3, 7]), table[[3, 7]] + 0.01,
                                                     np.ones(2, np.float32), 40, 10 ** 6, privacy, rng)
    reply = TrainReply(index, values, counts, 0.5, examples, False, num_users=1)
    assert len(check_train(reply, table, bounds, 10, 1).index) == 300
    plain = TrainBounds(1, 0.01, 1024)                               # without DP: refused
    with pytest.raises(Exception, match="row change"):
        check_train(reply, table, plain, 10, 1)


def test_rows_are_refused_when_the_config_withholds_them():
    table = np.zeros((50, 4), np.float32)
    reply = TrainReply(np.array([1, 2]), np.full((2, 4), 0.01, np.float32), np.ones(2, np.float32),
                       0.5, 8, False, num_users=1)
    assert len(check_train(reply, table, TrainBounds(1, 0.01, 1024), 10, 1).index) == 2
    with pytest.raises(Exception, match="withholds"):
        check_train(reply, table, TrainBounds(1, 0.01, 1024, rows_allowed=False), 10, 1)


def test_metrics_of_the_attack_scoring():
    labels = np.array([True, False, True, False, False])
    assert auc(np.array([0.9, 0.1, 0.8, 0.3, 0.2]), labels) == 1.0
    assert auc(np.ones(5), labels) == 0.5
    assert best_f1(np.array([0.9, 0.1, 0.8, 0.3, 0.2]), labels)[0] == 1.0
    assert best_f1(np.ones(5), labels)[0] == pytest.approx(2 * 0.4 / 1.4)


@pytest.mark.parametrize("mode,sent", [("none", False), ("rows", True)])
def test_the_unchanging_item_table_is_not_sent_when_uploads_are_withheld(tmp_path, mode, sent):
    """Under withheld uploads the FedAvg table is its seeded start for the whole run: model
    messages leave it out (a third of their bytes) and nodes rebuild it bit for bit."""
    if not (default_data_root() / "ml-100k" / "u.data").exists():
        pytest.skip("ML-100K not available")
    from common.upload_privacy import initial_item_table
    cfg = load_config({"max-users": 20, "sharing-ratio": 0.5, "fraction-train": 1.0,
                       "eval-every": 0, "upload-mode": mode, "state-dir": str(tmp_path / "s"),
                       "out-dir": str(tmp_path / "o")})
    session = new_session(cfg, 20, tmp_path)
    records = session.run_rounds(2)
    assert all(not r.phases["train"].rejected for r in records)
    message = session.strategy.configure_train([1], 3)[0]
    assert ("items" in message.content.array_records) is sent
    if not sent:
        state = session.state
        assert np.array_equal(initial_item_table(cfg.seed, *state.item_emb.shape), state.item_emb)
