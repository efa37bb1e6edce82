"""Evaluation protocol: metric names and values on a hand-checkable case."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dql_model.config import ModelConfig
from dql_model.contract import schema
from dql_model.evaluation.evaluate import (
    evaluate_models,
    evaluate_new_items,
    evaluate_scorer,
)
from dql_model.learning.networks import QNetwork
from dql_model.learning.scorer import QNetworkScorer
from dql_model.scoring.popularity import PopularityScorer
from dql_model.warehouse import data

torch.set_num_threads(1)
VIEW, CART, BUY = (schema.EVENT_CODE[t] for t in (schema.VIEW, schema.ADD_TO_CART, schema.PURCHASE))


def validation(states, actions, codes, max_len=3) -> data.TransitionBatch:
    items = np.zeros((len(states), max_len), dtype=np.int64)
    for row, state in enumerate(states):
        if state:
            items[row, -len(state) :] = state
    n = len(actions)
    return data.TransitionBatch.from_state(
        items,
        (items > 0).astype(np.int64),
        np.array(actions),
        np.array(codes),
        np.zeros(n, np.float32),
        np.zeros(n, bool),
    )


def test_popularity_metrics_by_hand():
    n_items = 12
    counts = np.array([0.0] + [13.0 - i for i in range(1, n_items + 1)])  # item i ranks i-th
    val = validation([[2], [], []], [1, 3, 12], [VIEW, BUY, CART])
    got = evaluate_scorer(PopularityScorer(counts), val, ks=(5, 10), batch_size=2)  # ranks 1, 3, 12

    assert got["eval/n"] == 3
    assert got["eval/hr@10"] == pytest.approx(2 / 3)
    assert got["eval/ndcg@10"] == pytest.approx((1 + 1 / math.log2(4)) / 3)
    assert got["eval/mrr@10"] == pytest.approx((1 + 1 / 3) / 3)
    assert got["eval/hr@5"] == pytest.approx(2 / 3)
    assert got["eval/purchase/ndcg@5"] == pytest.approx(0.5)
    assert got["eval/purchase/n"] == 1
    assert got["eval/add_to_cart/hr@10"] == 0.0
    assert got["eval/view/mrr@5"] == 1.0
    assert "eval/rating/hr@10" not in got  # no rating events
    assert got["eval/coverage@10"] == pytest.approx(10 / 12)  # everyone gets items 1..10
    assert got["eval/seen@10"] == pytest.approx(0.1 / 3)  # item 2 was in the first user's state


def test_q_network_scorer_and_shared_names():
    torch.manual_seed(0)
    model = QNetwork(12, 2, ModelConfig(embed_dim=8, hidden_dim=8, price_buckets=4))
    model.train()
    scorer = QNetworkScorer(model)
    val = validation([[1, 2], [3], []], [4, 5, 6], [VIEW, VIEW, BUY])
    scores = scorer.scores(val.state_items, val.state_events)
    assert scores.shape == (3, 13) and np.isneginf(scores[:, 0]).all()
    assert model.training  # the scorer leaves the mode as it found it
    np.testing.assert_array_equal(scores, scorer.scores(val.state_items, val.state_events))  # no dropout

    results = evaluate_models({"dqn": scorer, "popularity": PopularityScorer(np.arange(13.0))}, val)
    assert set(results) == {"dqn", "popularity"}
    assert set(results["dqn"]) == set(results["popularity"])
    assert {"eval/ndcg@10", "eval/hr@20", "eval/mrr@5", "eval/purchase/ndcg@10", "eval/view/hr@10"} <= set(
        results["dqn"]
    )


def test_the_scorer_keeps_the_item_side_only_while_the_weights_and_head_blend_stay_as_they_were():
    """Its item vectors and biases are computed once per evaluation, never kept past a change of weights."""
    torch.manual_seed(0)
    model = QNetwork(12, 2, ModelConfig(embed_dim=8, hidden_dim=8, price_buckets=4, heads="two")).eval()
    scorer = QNetworkScorer(model)
    val = validation([[1, 2], [3], []], [4, 5, 6], [VIEW, VIEW, BUY])

    def fresh() -> np.ndarray:
        with torch.inference_mode():
            return model.q_values(torch.as_tensor(val.state_items), torch.as_tensor(val.state_events)).numpy()

    first = scorer.scores(val.state_items, val.state_events)
    np.testing.assert_allclose(first, fresh(), rtol=1e-6)
    kept = scorer.item_side()[0]
    scorer.scores(val.state_items, val.state_events)
    assert scorer.item_side()[0] is kept  # the same weights: computed once

    with torch.no_grad():  # an optimiser step's in-place update
        model.item_embedding.weight.add_(0.5)
        model.item_bias.weight.add_(1.0)
    after_step = scorer.scores(val.state_items, val.state_events)
    np.testing.assert_allclose(after_step, fresh(), rtol=1e-6)
    assert not np.allclose(after_step[:, 1:], first[:, 1:])

    model.head_weight.fill_(0.25)  # the two-head blend the training's evaluation tries
    np.testing.assert_allclose(scorer.scores(val.state_items, val.state_events), fresh(), rtol=1e-6)

    model.load_state_dict(QNetwork(12, 2, model.cfg).state_dict())  # a best epoch restored
    np.testing.assert_allclose(scorer.scores(val.state_items, val.state_events), fresh(), rtol=1e-6)


def test_the_evaluation_sample_shrinks_on_a_large_catalogue_but_never_below_its_floor():
    from dql_model.evaluation.evaluate import EVAL_CELLS, MIN_EVAL_EVENTS, events_to_judge, judged_sample

    assert events_to_judge(20_000, 1_682) == 20_000  # MovieLens, the demo: every event the setting allows
    assert events_to_judge(20_000, 235_000) == EVAL_CELLS // 235_000 == 4_569
    assert events_to_judge(20_000, 10**7) == MIN_EVAL_EVENTS
    assert events_to_judge(500, 10**7) == 500 and events_to_judge(0, 10**7) == 0  # explicit settings win
    sample, why = judged_sample(50_000, 235_000, 20_000, seed=3)
    assert len(sample) == 4_569 and (np.diff(sample) > 0).all() and "235000 items" in why
    again, _ = judged_sample(50_000, 235_000, 20_000, seed=3)
    np.testing.assert_array_equal(sample, again)  # the training and the gate judge the same events
    assert judged_sample(3_000, 235_000, 20_000, seed=3) == (None, "eval.max_events, fewer on a catalogue of 235000 items")


def test_empty_validation_gives_only_the_count():
    assert evaluate_scorer(PopularityScorer(np.ones(4)), validation([], [], [])) == {"eval/n": 0.0}


def test_scorer_of_an_older_model_on_a_grown_catalogue():
    torch.manual_seed(0)
    model = QNetwork(10, 2, ModelConfig(embed_dim=8, hidden_dim=8, price_buckets=4))
    scorer = QNetworkScorer(model, n_items=12)  # two items arrived after the model was trained
    val = validation([[1, 11], [12]], [3, 12], [VIEW, VIEW])
    scores = scorer.scores(val.state_items, val.state_events)
    assert (
        scores.shape == (2, 13) and np.isneginf(scores[:, 11:]).all() and np.isfinite(scores[:, 1:11]).all()
    )
    # unknown items in a state are dropped, as in scoring: [1, 11] scores like [1]
    np.testing.assert_allclose(
        scores[0], scorer.scores(np.array([[0, 0, 1]]), np.array([[0, 0, 1]]))[0], rtol=1e-5
    )
    got = evaluate_scorer(scorer, val, ks=(10,))
    assert got["eval/hr@10"] <= 0.5  # the event on new item 12 is a miss


def test_popularity_never_recommends_the_padding_column():
    counts = np.array([7.0, 0.0, 2.0, 1.0])
    scorer = PopularityScorer(counts)
    np.testing.assert_array_equal(scorer.counts, [-np.inf, 0, 2, 1])
    assert counts[0] == 7.0  # the caller's array is not changed
    np.testing.assert_array_equal(scorer.scores(np.zeros((2, 3), np.int64), None), [scorer.counts] * 2)


def test_share_of_already_purchased_items_by_hand():
    # Popularity recommends items 1..10 to everyone (k=10 slots per row).
    counts = np.array([0.0] + [13.0 - i for i in range(1, 13)])
    items = np.array([[0, 2, 3], [0, 0, 11], [4, 5, 6]])
    events = np.array([[0, BUY, VIEW], [0, 0, BUY], [BUY, BUY, CART]])
    val = data.TransitionBatch.from_state(
        items, events, np.array([1, 2, 3]), np.array([VIEW] * 3), np.zeros(3, np.float32), np.zeros(3, bool)
    )
    got = evaluate_scorer(PopularityScorer(counts), val, ks=(10,))
    # row 0: item 2 bought (in the top 10), 3 only viewed; row 1: 11 bought but not recommended;
    # row 2: 4 and 5 bought, 6 in the cart -> shares 1/10, 0, 2/10
    assert got["eval/purchased@10"] == pytest.approx((0.1 + 0.0 + 0.2) / 3)
    assert got["eval/seen@10"] == pytest.approx((0.2 + 0.0 + 0.3) / 3)


def test_excluded_items_are_masked_before_ranking_and_a_masked_target_is_a_miss():
    from dql_model.warehouse.data import Exclusions, TransitionBatch

    class Fixed:
        def scores(self, state_items, state_events):
            # items 1..4 score 4, 3, 2, 1 for every row (column 0 is padding)
            return np.tile(np.array([-np.inf, 4.0, 3.0, 2.0, 1.0]), (len(state_items), 1))

    state = np.array([[1], [1], [2]])
    val = TransitionBatch.from_state(
        state, np.ones_like(state), np.array([2, 1, 3]), np.ones(3, dtype=np.int64), np.zeros(3, np.float32),
        np.zeros(3, dtype=bool),
    )
    plain = evaluate_scorer(Fixed(), val, ks=(1,))
    assert plain["eval/hr@1"] == pytest.approx(1 / 3)  # only row 1 (target 1) is first

    # row 0 masks item 1 (its target 2 moves to rank 1), row 1 masks its own target, row 2 masks 1 and 2
    exclude = Exclusions(indptr=np.array([0, 1, 2, 4]), items=np.array([1, 1, 1, 2]))
    masked = evaluate_scorer(Fixed(), val, ks=(1,), exclude=exclude)
    assert masked["eval/hr@1"] == pytest.approx(2 / 3)
    assert masked["eval/mrr@1"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="exclusions cover 1 rows, the validation split has 3"):
        evaluate_scorer(Fixed(), val, exclude=Exclusions.none(1))


class Planted:
    """Item i scores 14 - i (item 1 first) of 13; a state holding item 2 puts new item 11 first."""

    def scores(self, state_items, state_events):
        scores = np.tile(np.array([-np.inf] + [14.0 - i for i in range(1, 14)]), (len(state_items), 1))
        scores[(state_items == 2).any(axis=1), 11] = 100.0
        return scores


def test_new_item_figures_by_hand():
    from dql_model.warehouse.data import Exclusions

    # rows: a new target planted first; a new target at rank 12 (10 once items 1 and 2 are masked);
    # an old target with a new item in the state (nothing new recommended)
    val = validation([[2], [3], [11]], [11, 12, 1], [VIEW, BUY, VIEW])
    exclude = Exclusions(indptr=np.array([0, 0, 2, 2]), items=np.array([1, 2]))
    new = np.array([11, 12, 13])
    got = evaluate_new_items(Planted(), val, new, ks=(5, 10), batch_size=2, exclude=exclude)

    assert got["eval/new_items/items"] == 3 and got["eval/new_items/n"] == 2
    assert got["eval/new_items/hr@10"] == 1.0
    assert got["eval/new_items/hr@5"] == 0.5
    assert got["eval/new_items/ndcg@10"] == pytest.approx((1 + 1 / math.log2(11)) / 2)
    assert got["eval/new_items/mrr@10"] == pytest.approx((1 + 1 / 10) / 2)
    # top-10s: row 0 holds 11 (1 slot), row 1 holds 11 and 12 (items 3..12), row 2 none of them
    assert got["eval/new_items/slots@10"] == pytest.approx((0.1 + 0.2 + 0.0) / 3)
    assert got["eval/new_items/coverage@10"] == pytest.approx(2 / 3)  # 13 is never in a top-10

    unmasked = evaluate_new_items(Planted(), val, new, ks=(10,))
    assert unmasked["eval/new_items/hr@10"] == 0.5  # item 12 at rank 12 without the mask
    assert unmasked["eval/new_items/slots@10"] == pytest.approx(0.1 / 3)


def test_no_new_items_gives_only_the_counts():
    val = validation([[2], [3]], [11, 12], [VIEW, VIEW])
    assert evaluate_new_items(Planted(), val, np.zeros(0, np.int64)) == {
        "eval/new_items/items": 0.0,
        "eval/new_items/n": 0.0,
    }
    # new items that no event targets: recommended figures, but no hit figures
    got = evaluate_new_items(Planted(), val, np.array([13]), ks=(10,))
    assert got["eval/new_items/n"] == 0 and "eval/new_items/hr@10" not in got
    assert got["eval/new_items/slots@10"] == 0.0


def test_an_event_type_whose_every_target_is_masked_cannot_be_scored():
    from dql_model.evaluation.evaluate import masked_targets, unscorable_event_types
    from dql_model.warehouse.data import Exclusions

    rating = schema.EVENT_CODE[schema.RATING]
    # Ratings on items bought before (masked for that row); views and one purchase on unmasked items.
    val = validation([[1], [2], [3], [1]], [1, 2, 4, 5], [rating, rating, VIEW, BUY])
    exclude = Exclusions(indptr=np.array([0, 1, 3, 4, 5]), items=np.array([1, 1, 2, 3, 2]))
    assert masked_targets(val, exclude)[schema.RATING] == {"events": 2, "masked": 2}
    assert masked_targets(val, exclude)[schema.VIEW] == {"events": 1, "masked": 0}

    unscorable = unscorable_event_types(val, exclude, rule="purchased")
    assert set(unscorable) == {schema.RATING, schema.ADD_TO_CART}
    assert "every one of its 2 validation events is on an item the user had already purchased" in unscorable[schema.RATING]
    assert unscorable[schema.ADD_TO_CART] == "no add_to_cart events in the validation split"
    # The metrics agree: no scorer can hit a masked target.
    got = evaluate_scorer(PopularityScorer(np.arange(6.0)), val, ks=(10,), exclude=exclude)
    assert got["eval/rating/hr@10"] == 0.0 and got["eval/view/hr@10"] == 1.0

    # One rating on an item not masked for its row: ratings can be scored again.
    some = Exclusions(indptr=np.array([0, 1, 2, 3, 4]), items=np.array([1, 3, 2, 3]))
    assert masked_targets(val, some)[schema.RATING] == {"events": 2, "masked": 1}
    assert schema.RATING not in unscorable_event_types(val, some, rule="purchased")
    assert schema.RATING not in unscorable_event_types(val, None, rule="none")


class _Recording:
    """Popularity scores over a wide catalogue that record the rows of every call."""

    def __init__(self, n_items: int, *, says_width: bool):
        self.counts = np.arange(n_items + 1, dtype=np.float32)[::-1].copy()
        self.calls: list[int] = []
        if says_width:
            self.n_items = n_items

    def scores(self, state_items, state_events):
        self.calls.append(len(state_items))
        return np.broadcast_to(self.counts, (len(state_items), len(self.counts)))


@pytest.mark.parametrize("says_width", [True, False])
def test_every_batch_is_bounded_by_the_catalogue_the_first_one_too(monkeypatch, says_width):
    from dql_model.evaluation import evaluate

    monkeypatch.setattr(evaluate, "SCORE_CELLS", 4 * 1001)  # four rows of a 1,000-item catalogue
    scorer = _Recording(1000, says_width=says_width)
    val = validation([[1]] * 11, [5] * 11, [VIEW] * 11)
    got = evaluate_scorer(scorer, val, ks=(10,), batch_size=1024)
    # a scorer that says its n_items gets four rows from the start; one that does not, one row first
    assert scorer.calls == ([4, 4, 3] if says_width else [1, 4, 4, 2])
    assert got["eval/n"] == 11 and got["eval/hr@10"] == 1.0  # item 5 is among the ten most counted
