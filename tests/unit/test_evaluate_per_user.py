"""The per-user view of dql_model.evaluation.evaluate against hand-computed cases: ranks 1, 3 and absent, masks, ties, coverage, pairs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dql_model.evaluation import evaluate
from dql_model.evaluation.intervals import MeanInterval

HR, NDCG, MRR, SEEN = "eval/hr@3", "eval/ndcg@3", "eval/mrr@3", "eval/seen@3"


def scores_of(rows: list[list[float]]) -> np.ndarray:
    """A score matrix with the padding column 0 in front of the given item scores."""
    return np.array([[99.0, *row] for row in rows])  # padding scores highest: must never count


def test_ranks_one_three_and_absent_hand_computed():
    # 5 items; targets: item 2 (best score), item 4 (third), item 1 (fourth: beyond k = 3)
    scores = scores_of([[0.1, 0.9, 0.3, 0.2, 0.0], [0.5, 0.9, 0.0, 0.4, 0.7], [0.2, 0.9, 0.8, 0.1, 0.5]])
    result = evaluate.evaluate_scores(scores, np.array([2, 4, 1]), history_mask=None, k=3)

    assert result.lists.tolist() == [[2, 3, 4], [2, 5, 1], [2, 3, 5]]
    np.testing.assert_allclose(result.per_user[HR], [1.0, 0.0, 0.0])
    scores[1, 4] = 0.6  # item 4 now third for user 1: 0.9 (2), 0.7 (5), 0.6 (4)
    result = evaluate.evaluate_scores(scores, np.array([2, 4, 1]), history_mask=None, k=3)
    np.testing.assert_allclose(result.per_user[HR], [1.0, 1.0, 0.0])
    np.testing.assert_allclose(result.per_user[NDCG], [1.0, 0.5, 0.0])  # 1 / log2(3 + 1) = 0.5
    np.testing.assert_allclose(result.per_user[MRR], [1.0, 1 / 3, 0.0])
    summary = result.summary()
    assert summary[HR].mean == pytest.approx(2 / 3)
    assert summary[NDCG].mean == pytest.approx(0.5)
    assert summary[MRR].mean == pytest.approx(4 / 9)


def test_a_masked_item_that_would_rank_first_leaves_the_list():
    scores = scores_of([[0.9, 0.8, 0.1, 0.0]])
    history = np.zeros((1, 5), dtype=bool)
    history[0, 1] = True  # item 1, the best score, was already consumed

    unmasked = evaluate.evaluate_scores(scores, np.array([2]), history_mask=None, k=3)
    masked = evaluate.evaluate_scores(scores, np.array([2]), history_mask=history, k=3)

    assert unmasked.lists.tolist() == [[1, 2, 3]]
    assert unmasked.per_user[NDCG][0] == pytest.approx(1 / math.log2(3))
    assert masked.lists.tolist() == [[2, 3, 4]]
    assert masked.per_user[NDCG][0] == 1.0
    assert masked.per_user[MRR][0] == 1.0
    # the seen share reads the mask: one of three slots of the unmasked list was already seen
    seen_when_scored_unmasked = evaluate.evaluate_lists(
        unmasked.lists, [2], n_items=4, history_mask=history, k=3
    )
    assert seen_when_scored_unmasked.per_user[SEEN][0] == pytest.approx(1 / 3)
    assert masked.per_user[SEEN][0] == 0.0


def test_a_target_already_in_the_history_is_a_miss():
    history = np.zeros((1, 4), dtype=bool)
    history[0, 3] = True
    result = evaluate.evaluate_scores(
        scores_of([[0.1, 0.2, 0.9]]), np.array([3]), history_mask=history, k=3
    )
    assert result.lists.tolist() == [[2, 1, 0]]  # item 3 masked; fewer candidates than k: empty slot
    assert result.per_user[HR][0] == 0.0


def test_ties_go_to_the_lower_item_idx_whatever_the_target():
    scores = scores_of([[0.1, 0.5, 0.2, 0.5], [0.1, 0.5, 0.2, 0.5]])  # items 2 and 4 tie at the top
    result = evaluate.evaluate_scores(scores, np.array([4, 2]), history_mask=None, k=3)
    assert result.lists.tolist() == [[2, 4, 3], [2, 4, 3]]
    np.testing.assert_allclose(result.per_user[MRR], [0.5, 1.0])
    np.testing.assert_allclose(result.per_user[NDCG], [1 / math.log2(3), 1.0])


def test_coverage_counts_distinct_items_over_the_catalogue_and_ignores_empty_slots():
    lists = np.array([[1, 2, 0], [2, 3, 0]])
    result = evaluate.evaluate_lists(lists, [1, 5], n_items=6, k=3)
    assert result.coverage == pytest.approx(3 / 6)
    assert result.as_dict()["eval/coverage@3"] == pytest.approx(0.5)
    np.testing.assert_allclose(result.per_user[HR], [1.0, 0.0])


def test_several_targets_per_user_average_within_the_user():
    lists = np.array([[1, 2, 3], [4, 5, 6]])
    targets = np.array([[1, 3], [6, 0]])  # user 0: ranks 1 and 3; user 1: one target at rank 3
    result = evaluate.evaluate_lists(lists, targets, n_items=6, k=3)
    np.testing.assert_allclose(result.per_user[NDCG], [(1.0 + 0.5) / 2, 0.5])
    np.testing.assert_allclose(result.per_user[HR], [1.0, 1.0])


def test_per_rank_values_are_the_terms_metrics_py_averages():
    np.testing.assert_allclose(evaluate.per_rank_values("ndcg", 3), [1.0, 1 / math.log2(3), 0.5, 0.0])
    np.testing.assert_allclose(evaluate.per_rank_values("mrr", 3), [1.0, 0.5, 1 / 3, 0.0])
    np.testing.assert_allclose(evaluate.per_rank_values("hr", 3), [1.0, 1.0, 1.0, 0.0])


def test_interval_is_student_t_over_users():
    estimate = MeanInterval.of(np.array([1.0, 0.0, 1.0, 1.0]))
    half = 3.182 * math.sqrt(0.25) / 2  # sd (ddof 1) of [1, 0, 1, 1] is 0.5; t at 3 degrees of freedom
    assert estimate.mean == 0.75
    assert (estimate.low, estimate.high) == pytest.approx((0.75 - half, 0.75 + half))


def test_paired_difference_uses_per_user_differences():
    lists_a = np.array([[1, 2, 3]] * 4)
    lists_b = np.array([[4, 5, 6]] * 4)
    a = evaluate.evaluate_lists(lists_a, np.array([1, 9, 2, 3]), n_items=9, k=3)
    b = evaluate.evaluate_lists(lists_b, np.array([4, 9, 2, 6]), n_items=9, k=3)
    # per-user hr: a = [1, 0, 1, 1], b = [1, 0, 0, 1] -> differences [0, 0, 1, 0]
    difference = evaluate.paired_difference(a, b)[HR]
    half = 3.182 * 0.5 / 2  # sd (ddof 1) of [0, 0, 1, 0] is 0.5; t at 3 degrees of freedom
    assert difference.mean == pytest.approx(0.25)
    assert (difference.low, difference.high) == pytest.approx((0.25 - half, 0.25 + half))


def test_paired_difference_refuses_different_users():
    a = evaluate.evaluate_lists(np.array([[1, 2, 3]]), [1], n_items=3, users=np.array(["u1"]), k=3)
    b = evaluate.evaluate_lists(np.array([[1, 2, 3]]), [1], n_items=3, users=np.array(["u2"]), k=3)
    with pytest.raises(ValueError, match="same users"):
        evaluate.paired_difference(a, b)


def test_bad_shapes_name_the_problem():
    with pytest.raises(ValueError, match="top-K lists"):
        evaluate.evaluate_lists(np.array([[1, 2]]), [1], n_items=3, k=3)
    with pytest.raises(ValueError, match="outside 0..3"):
        evaluate.evaluate_lists(np.array([[1, 2, 7]]), [1], n_items=3, k=3)
    with pytest.raises(ValueError, match="history mask"):
        evaluate.evaluate_scores(
            scores_of([[0.1, 0.2, 0.3]]), [1], history_mask=np.zeros((1, 2), bool), k=3
        )
