"""The trade-off benchmark's arithmetic: differences paired by training and simulation seed, and the
rules that pick a default conservative weight from validation figures only."""

import pytest

from benchmarks import bench_tradeoff as bt

REFRESHES = ("session", "step")


def cell(mode, alpha, seed, ndcg, purchase, session, step):
    return {
        "mode": mode,
        "alpha": alpha,
        "seed": seed,
        "ndcg@10": ndcg,
        "purchase_ndcg@10": purchase,
        "train_seconds": 10.0,
        "returns": {"session": session, "step": step},
    }


@pytest.fixture
def rows():
    cells = [
        cell("supervised", 2.0, 0, 0.200, 0.60, [1.0, 2.0], [1.0, 1.0]),
        cell("supervised", 2.0, 1, 0.210, 0.62, [1.5, 1.5], [2.0, 2.0]),
        cell("dqn", 0.5, 0, 0.150, 0.40, [1.4, 2.6], [1.2, 1.2]),
        cell("dqn", 0.5, 1, 0.160, 0.42, [1.9, 2.3], [2.1, 2.3]),
        cell("dqn", 2.0, 0, 0.203, 0.63, [1.0, 2.0], [1.0, 1.2]),
        cell("dqn", 2.0, 1, 0.205, 0.61, [1.5, 1.7], [2.0, 2.0]),
        cell("dqn", 4.0, 0, 0.199, 0.65, [1.0, 2.0], [1.0, 1.0]),
        cell("dqn", 4.0, 1, 0.200, 0.65, [1.5, 1.5], [2.0, 2.0]),
    ]
    return bt.summarise(cells, REFRESHES)


def by_alpha(rows, alpha):
    return next(r for r in rows if r["mode"] == "dqn" and r["alpha"] == alpha)


def test_rows_are_supervised_first_then_dqn_by_alpha(rows):
    assert [(r["mode"], r["alpha"]) for r in rows] == [
        ("supervised", None),
        ("dqn", 0.5),
        ("dqn", 2.0),
        ("dqn", 4.0),
    ]
    assert rows[0]["seeds"] == [0, 1]
    assert rows[0]["ndcg@10"]["mean"] == pytest.approx(0.205)
    assert "vs_supervised/session" not in rows[0]


def test_differences_are_paired_by_training_seed_and_by_simulation_seed(rows):
    low = by_alpha(rows, 0.5)
    # Seed 0: mean(1.4, 2.6) - mean(1.0, 2.0) = 0.5; seed 1: mean(1.9, 2.3) - 1.5 = 0.6.
    assert low["vs_supervised/session"]["mean"] == pytest.approx(0.55)
    assert low["vs_supervised/session"]["n"] == 2
    # Pairs (0.4, 0.6, 0.4, 0.8): the same mean, but four values and so another spread.
    pooled = low["vs_supervised_pooled/session"]
    assert pooled["n"] == 4
    assert pooled["mean"] == pytest.approx(0.55)
    assert pooled["sd"] == pytest.approx(0.19148542, rel=1e-6)
    assert low["vs_supervised/step"]["mean"] == pytest.approx((0.2 + 0.2) / 2)
    assert low["return/session"]["mean"] == pytest.approx((2.0 + 2.1) / 2)


def test_rules_read_validation_figures_only(rows):
    assert bt.pick(rows, "ndcg@10") == 2.0
    assert bt.pick(rows, "purchase_ndcg@10") == 4.0
    # Supervised mean 0.205: the floor is 0.20295; alpha 4 (0.1995) falls below it, alpha 2 (0.204) does not.
    assert bt.pick_within(rows) == 2.0
    assert bt.pick_within(rows, tolerance=0.3) == 0.5
    assert bt.pick_within(rows, tolerance=0.0) is None


def test_the_accuracy_rule_needs_the_supervised_mode(rows):
    assert bt.pick_within([r for r in rows if r["mode"] != "supervised"]) is None
