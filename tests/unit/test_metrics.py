"""Ranking metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dql_model.evaluation import metrics

INF = np.inf


def test_rank_breaks_ties_by_item_index_and_ignores_padding():
    # items 1..4 score 0.1, 0.9, 0.5, 0.5; the padding column is high to prove it is skipped
    scores = np.array([[99.0, 0.1, 0.9, 0.5, 0.5]] * 4)
    ranks = metrics.rank_of_targets(scores, np.array([2, 3, 4, 1]))
    np.testing.assert_array_equal(ranks, [1, 2, 3, 4])


def test_rank_from_top_k_lists():
    topk = np.array([[5, 3, 9], [5, 3, 9]])
    np.testing.assert_array_equal(metrics.rank_of_targets(topk, np.array([3, 7])), [2, 4])


def test_rank_rejects_padding_target():
    with pytest.raises(ValueError, match="0 is padding"):
        metrics.rank_of_targets(np.zeros((1, 3)), np.array([0]))


def test_hit_rate_ndcg_mrr_by_hand():
    ranks = np.array([1, 2, 4, 11])
    assert metrics.hit_rate_at_k(ranks, 3) == 0.5
    assert metrics.hit_rate_at_k(ranks, 10) == 0.75
    assert metrics.ndcg_at_k(ranks, 3) == pytest.approx((1 + 1 / math.log2(3)) / 4)
    assert metrics.ndcg_at_k(ranks, 10) == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(5)) / 4)
    assert metrics.mrr_at_k(ranks, 3) == pytest.approx((1 + 0.5) / 4)
    assert metrics.mrr_at_k(ranks, 20) == pytest.approx((1 + 0.5 + 0.25 + 1 / 11) / 4)
    names = metrics.ranking_metrics(ranks, (3,), "eval/purchase/")
    assert names == {
        "eval/purchase/hr@3": 0.5,
        "eval/purchase/ndcg@3": pytest.approx((1 + 1 / math.log2(3)) / 4),
        "eval/purchase/mrr@3": 0.375,
    }


def test_top_k_is_exact_under_ties():
    scores = np.array([[-INF, 1.0, 3.0, 3.0, 2.0, 3.0], [-INF, 0.0, 0.0, 0.0, 0.0, 5.0]])
    index, values = metrics.top_k(scores, 2)
    np.testing.assert_array_equal(index, [[2, 3], [5, 1]])
    np.testing.assert_array_equal(values, [[3.0, 3.0], [5.0, 0.0]])
    index, _ = metrics.top_k(scores, 4)
    np.testing.assert_array_equal(index, [[2, 3, 5, 4], [5, 1, 2, 3]])


def test_top_k_agrees_with_a_full_stable_sort():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=(50, 40)).astype(np.float32)  # many ties
    index, _ = metrics.top_k(scores, 7)
    np.testing.assert_array_equal(index, np.argsort(-scores, axis=1, kind="stable")[:, :7])
    # and ranks from scores agree with positions in the full order
    targets = rng.integers(1, 40, size=50)
    full = np.argsort(-scores[:, 1:], axis=1, kind="stable") + 1
    expected = np.array([np.flatnonzero(row == t)[0] + 1 for row, t in zip(full, targets, strict=True)])
    np.testing.assert_array_equal(metrics.rank_of_targets(scores, targets), expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_top_k_and_ranks_on_a_large_catalogue_agree_with_a_full_stable_sort(dtype):
    """Rows wider than TORCH_TOPK_COLUMNS take the k-th score from torch: the same lists, ties included."""
    rng = np.random.default_rng(1)
    columns = metrics.TORCH_TOPK_COLUMNS + 904
    scores = rng.integers(0, 40, size=(12, columns)).astype(dtype)  # about 125 items share each score
    scores[3, :] = 7.0  # a row of one score: every item tied with the k-th
    scores[4, 50:] = -INF  # fewer finite items than the list
    index, values = metrics.top_k(scores, 20)
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :20]
    np.testing.assert_array_equal(index, expected)
    np.testing.assert_array_equal(values, np.take_along_axis(scores, expected, axis=1))
    targets = rng.integers(1, columns, size=12)
    full = np.argsort(-scores[:, 1:], axis=1, kind="stable") + 1
    expected_ranks = np.array([np.flatnonzero(row == t)[0] + 1 for row, t in zip(full, targets, strict=True)])
    finite = np.isfinite(scores[np.arange(12), targets])
    ranks = metrics.rank_of_targets(scores, targets)
    np.testing.assert_array_equal(ranks[finite], expected_ranks[finite])
    assert (ranks[~finite] == metrics.NEVER_LISTED).all()


def test_every_ranking_metric_kind_has_one_formula():
    from dql_model.contract import schema

    assert tuple(metrics.RANKING_FUNCTIONS) == schema.RANKING_METRICS
    got = metrics.ranking_metrics(np.array([1, 3, 20]), (10,), "eval/")
    assert list(got) == [schema.metric_name(kind, 10) for kind in schema.RANKING_METRICS]
    assert got["eval/mrr@10"] == pytest.approx((1 + 1 / 3) / 3)
