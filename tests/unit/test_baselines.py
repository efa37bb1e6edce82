"""Baselines: co-occurrence counts and scores by hand, their tuning, the supervised search."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dql_model.contract import schema
from dql_model.evaluation import metrics
from dql_model.evaluation.evaluate import evaluate_scorer
from dql_model.judging import baselines
from dql_model.judging.baselines import CooccurrenceCounts, CooccurrenceScorer, SparseRows
from dql_model.learning import supervised_baseline
from dql_model.warehouse import data
from tests.factories import make_shop

torch.set_num_threads(1)
VIEW = schema.EVENT_CODE[schema.VIEW]


def batch(states: list[list[int]], actions: list[int], max_len: int = 3) -> data.TransitionBatch:
    items = np.zeros((len(states), max_len), dtype=np.int64)
    for row, state in enumerate(states):
        if state:
            items[row, -len(state) :] = state
    n = len(actions)
    return data.TransitionBatch.from_state(
        items, (items > 0) * VIEW, np.array(actions), np.full(n, VIEW), np.zeros(n, np.float32), np.zeros(n, bool)
    )


def test_sparse_rows_add_rows_like_a_dense_matrix():
    dense = np.array([[0, 0, 0], [1.0, 0, 2.0], [0, 3.0, 0]])
    rows, cols = np.nonzero(dense)
    matrix = SparseRows.from_pairs(rows * 3 + cols, dense[rows, cols], n_rows=3, n_cols=3)
    out = np.zeros((4, 3))
    matrix.add_rows_to(out, np.array([2, 0, 1, 2]), 0.5)
    np.testing.assert_allclose(out, 0.5 * dense[[2, 0, 1, 2]])


def test_cooccurrence_counts_and_scores_by_hand():
    # Item 1 is followed by 2 twice and by 1 (a repeat) once; 3 then 1 is followed by 4.
    counts = CooccurrenceCounts.from_batches(
        [batch([[1], [1], [1]], [2, 2, 1]), batch([[3, 1], []], [4, 3])], n_items=5, max_window=2
    )
    np.testing.assert_array_equal(counts.popularity, [0, 1, 2, 1, 1, 0])
    scorer = CooccurrenceScorer(counts, window=2, decay=0.5)
    scores = scorer.scores(np.array([[0, 3, 1], [0, 0, 0], [0, 0, 9]]), np.zeros((3, 3), np.int64))
    prior = baselines.POPULARITY_TIE_BREAK * counts.popularity / 2
    # P_1(. | 1) = {1: 1/4, 2: 2/4, 4: 1/4}; P_2(. | 3) = {4: 1}, weighted by 0.5
    expected = prior + np.array([0, 0.25, 0.5, 0, 0.25 + 0.5 * 1.0, 0])
    np.testing.assert_allclose(scores[0, 1:], expected[1:])
    assert np.isneginf(scores[:, 0]).all()
    # no state, or an item the counts never saw: popularity order only
    np.testing.assert_allclose(scores[1, 1:], prior[1:])
    np.testing.assert_allclose(scores[2, 1:], prior[1:])
    with pytest.raises(ValueError, match="window 3 is outside 1..2"):
        CooccurrenceScorer(counts, window=3, decay=1.0)


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    return make_shop(tmp_path_factory.mktemp("shop"), n_items=30, n_users=40, steps=12, max_len=8)


def test_cooccurrence_learns_the_successor_rule_and_is_tuned_on_validation(shop):
    transitions, _ = shop
    counts = CooccurrenceCounts.from_transitions(transitions, n_items=30, max_len=8)
    val = data.load_transitions(transitions, max_len=8, split=schema.VALIDATION)
    best, trials = baselines.tune_cooccurrence(counts, val)
    assert [t["window"] for t in trials] == [g["window"] for g in baselines.COOCCURRENCE_GRID]
    assert best.window == max(trials, key=lambda t: t["value"])["window"]
    # users follow successor(last item) 90 % of the time: the last item alone predicts well
    assert evaluate_scorer(CooccurrenceScorer(counts, window=1, decay=1.0), val)["eval/hr@10"] > 0.8


def test_supervised_search_keeps_the_best_trial(tiny_config, shop):
    transitions, item_index = shop
    cfg = tiny_config.replace(
        etl={"max_len": 8},
        model={"embed_dim": 16, "hidden_dim": 16, "dropout": 0.0},
        train={"batch_size": 32, "device": "cpu"}, eval={"baseline_epochs": 2},
    )
    grid = ({"train": {"lr": 1e-9}, "model": {}}, {"train": {"lr": 1e-2}, "model": {}})
    lines = []
    search = supervised_baseline.search_supervised(
        cfg,
        transitions_dir=str(transitions),
        item_index_dir=str(item_index),
        trials=2,
        grid=grid,
        progress=lines.append,
    )
    assert [t["overrides"] for t in search.trials] == list(grid)
    assert search.overrides == grid[1]  # a learning rate of 1e-9 learns nothing
    assert search.trials[1]["value"] > search.trials[0]["value"]
    assert len(search.history) == 2 and "loss/td" not in search.history[0]
    assert any(line.startswith("supervised trial 2/2: epoch 2/2") for line in lines)
    assert search.model.cfg.embed_dim == 16 and not search.model.training
    assert supervised_baseline.search_supervised(cfg, transitions_dir="unused", item_index_dir="unused", trials=0) is None


def test_fit_baselines_names_every_baseline(tiny_config, shop):
    transitions, item_index = shop
    cfg = tiny_config.replace(
        etl={"max_len": 8}, train={"batch_size": 64, "device": "cpu"}, eval={"baseline_trials": 1, "baseline_epochs": 1}
    )
    items = data.load_item_features(item_index, price_buckets=cfg.model.price_buckets)
    val = data.load_transitions(transitions, max_len=8, split=schema.VALIDATION)
    without = baselines.fit_baselines(
        cfg, transitions_dir=str(transitions), item_index_dir=str(item_index), items=items, val=val,
        progress=lambda _: None,
    )  # fmt: skip
    assert list(without.scorers) == ["cooccurrence", "popularity"] and without.histories == {}
    search = supervised_baseline.search_supervised(
        cfg, transitions_dir=str(transitions), item_index_dir=str(item_index), trials=1, progress=lambda _: None
    )
    meta = {
        "version": "supervised-x",
        "metrics": {"history": search.history, "picked": search.overrides, "trials": search.trials, "metric": "m"},
    }
    fitted = baselines.fit_baselines(
        cfg, transitions_dir=str(transitions), item_index_dir=str(item_index), items=items, val=val,
        supervised=(search.model, meta), progress=lambda _: None,
    )  # fmt: skip
    assert list(fitted.scorers) == ["supervised", "cooccurrence", "popularity"]
    assert set(fitted.details) == {"supervised", "cooccurrence"} and list(fitted.histories) == ["supervised"]
    assert fitted.details["supervised"]["version"] == "supervised-x"
    np.testing.assert_array_equal(
        fitted.scorers["popularity"].counts[1:], data.action_counts(transitions, n_items=30)[1:]
    )


def test_category_popularity_by_hand_with_an_unseen_item_at_its_category_mean():
    # category 1: items 1, 2 (3 and 1 training actions) and 5 (unseen); category 2: items 3 (4 actions)
    # and 4 (seen only in a state: share 0); item 6 has no category (its own group) and is unseen
    counts = np.array([0.0, 3, 1, 4, 0, 0, 0])
    category = np.array([0, 1, 1, 2, 2, 1, 0])
    seen = np.array([False, True, True, True, True, False, False])
    scorer = baselines.CategoryPopularityScorer(counts, category, seen)
    np.testing.assert_allclose(scorer.within[1:], [0.75, 0.25, 1.0, 0.0, 0.5, 1.0])  # 5: mean of 0.75, 0.25

    scores = scorer.scores(np.array([[0, 1, 3, 5], [0, 0, 0, 0]]), None)
    assert np.isneginf(scores[:, 0]).all()
    # state [1, 3, 5]: 2/3 of its events in category 1, 1/3 in category 2
    expected = [2 / 3 * 0.75, 2 / 3 * 0.25, 1 / 3, 0.0, 2 / 3 * 0.5, 0.0]
    np.testing.assert_allclose(scores[0, 1:], expected, atol=1e-8)
    # 3 and 5 tie at 1/3: the tie-break prefers 3 (its category holds half the actions, its share is 1)
    top, _ = metrics.top_k(scores[:, 1:], 6)
    np.testing.assert_array_equal(top[0] + 1, [1, 3, 5, 2, 4, 6])  # 4 and 6 at 0: item_idx decides
    # an empty state ranks by P(c) P(i | c): 3 (0.5), 1 (0.375), 5 (0.25), 2 (0.125), then 4 and 6 at 0
    np.testing.assert_array_equal(top[1] + 1, [3, 1, 5, 2, 4, 6])


def test_category_popularity_of_a_category_training_never_saw_is_uniform():
    counts = np.array([0.0, 2, 0, 0])
    seen = np.array([False, True, False, False])
    scorer = baselines.CategoryPopularityScorer(counts, np.array([0, 1, 2, 2]), seen)
    np.testing.assert_allclose(scorer.within[1:], [1.0, 0.5, 0.5])


def test_pair_counts_over_many_batches_equal_one_count_of_all_pairs():
    """Batches merge lazily (pending runs, merged when they outgrow the counted keys): same counts."""
    rng = np.random.default_rng(5)
    rows, cols = rng.integers(0, 50, 20_000), rng.integers(0, 50, 20_000)
    counter = baselines._PairCounter(50)
    counter.MERGE_AT = 1000  # merge many times along the way
    merges = 0
    for start in range(0, len(rows), 700):
        pending = counter._pending_size
        counter.add(rows[start : start + 700], cols[start : start + 700])
        merges += counter._pending_size < pending
    got = counter.matrix(50)
    assert merges > 3
    keys, counts = np.unique(rows * 50 + cols, return_counts=True)
    expected = baselines.SparseRows.from_pairs(keys, counts.astype(float), n_rows=50, n_cols=50)
    np.testing.assert_array_equal(got.indptr, expected.indptr)
    np.testing.assert_array_equal(got.indices, expected.indices)
    np.testing.assert_array_equal(got.values, expected.values)
