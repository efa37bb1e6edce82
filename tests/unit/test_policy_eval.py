"""Simulated policy value: confidence intervals by hand, the item mapping, masks, and a policy
that follows the shoppers' hidden tastes beating one that works against them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dql_model.config import Config, ConfigError
from dql_model.contract import schema
from dql_model.evaluation.intervals import mean_ci, t_quantile
from dql_model.judging import policy_eval
from dql_model.judging.policy_eval import CatalogueMap, recommend
from dql_model.simulation.simulator import ShopSimulator
from dql_model.warehouse import data

VIEW, CART, BUY = (schema.EVENT_CODE[t] for t in (schema.VIEW, schema.ADD_TO_CART, schema.PURCHASE))


def test_mean_and_confidence_interval_by_hand():
    got = mean_ci([1.0, 2.0, 3.0])
    assert got["mean"] == 2.0 and got["sd"] == 1.0 and got["n"] == 3
    assert got["ci95"] == pytest.approx(4.303 / math.sqrt(3))
    assert got["low"] == pytest.approx(2.0 - got["ci95"]) and got["high"] == pytest.approx(2.0 + got["ci95"])
    assert math.isnan(mean_ci([5.0])["ci95"])
    assert t_quantile(60) == 1.96


def features(item_ids: list[str | None], available: list[bool] | None = None) -> data.ItemFeatures:
    n = len(item_ids)
    return data.ItemFeatures(
        item_ids=np.array([None, *item_ids], dtype=object),
        category=np.zeros(n + 1, np.int64),
        price_bucket=np.zeros(n + 1, np.int64),
        available=np.array([False, *(available or [True] * n)]),
        category_ids=[],
    )


def test_catalogue_map_goes_through_item_ids():
    # The item index numbers the shop's items in another order and lacks "c"; it also has "z".
    catalogue = CatalogueMap.build(np.array(["a", "b", "c", "d"], dtype=object), features(["d", "a", "z", "b"]))
    np.testing.assert_array_equal(catalogue.idx_to_env, [-1, 3, 0, -1, 1])
    np.testing.assert_array_equal(catalogue.env_to_idx, [2, 4, 0, 1])
    history = np.array([[-1, 0, 3, 2], [1, 1, 2, 0]])  # shop positions, -1 = padding
    codes = np.array([[0, VIEW, CART, VIEW], [VIEW, CART, VIEW, BUY]], dtype=np.int8)
    items, events = catalogue.states(history, codes)
    # "c" (position 2) is unknown to the model: dropped, and the rest moves right
    np.testing.assert_array_equal(items, [[0, 0, 2, 1], [0, 4, 4, 2]])
    np.testing.assert_array_equal(events, [[0, 0, VIEW, CART], [0, VIEW, CART, BUY]])


class FixedScores:
    def __init__(self, scores):
        self.fixed = np.asarray(scores, dtype=np.float64)

    def scores(self, state_items, state_events):
        return np.tile(self.fixed, (len(state_items), 1))


def test_recommend_applies_the_scoring_masks():
    scorer = FixedScores([-np.inf, 5.0, 4.0, 3.0, 2.0, 1.0])
    allowed = np.array([False, True, False, True, True, True])  # item 2 is unavailable
    state_items = np.array([[0, 1, 3], [0, 0, 0]])
    state_events = np.array([[0, BUY, VIEW], [0, 0, 0]])
    got = recommend(scorer, state_items, state_events, allowed=allowed, slate=3)
    np.testing.assert_array_equal(got, [[3, 4, 5], [1, 3, 4]])  # user 0 bought item 1
    kept = recommend(scorer, state_items, state_events, allowed=allowed, slate=3, exclude="none")
    np.testing.assert_array_equal(kept[0], [1, 3, 4])
    short = recommend(scorer, state_items, state_events, allowed=allowed, slate=5)
    np.testing.assert_array_equal(short[0], [3, 4, 5, -1, -1])  # fewer items left than slots


class Neighbours:
    """Scores items by (dis)similarity of their hidden taste vector to the latest state item."""

    def __init__(self, shop: ShopSimulator, catalogue: CatalogueMap, sign: float):
        vectors = shop.model.item_vector
        known = catalogue.idx_to_env >= 0
        self.by_idx = np.zeros((len(catalogue.idx_to_env), vectors.shape[1]), np.float32)
        self.by_idx[known] = vectors[catalogue.idx_to_env[known]]
        self.sign = sign

    def scores(self, state_items, state_events):
        latest = self.by_idx[state_items[:, -1]]
        out = self.sign * latest @ self.by_idx.T
        out[:, 0] = -np.inf
        return out


def test_a_policy_that_follows_tastes_earns_more_than_one_against_them():
    cfg = Config().replace(
        simulator={"n_users": 300, "n_items": 120, "n_categories": 6, "n_days": 3},
        eval={"sim_users": 150, "sim_steps": 6, "sim_seeds": 3, "sim_slate": 5},
    )
    shop = ShopSimulator(cfg.simulator)
    rng = np.random.default_rng(0)
    order = rng.permutation(cfg.simulator.n_items)  # item_idx k is shop item order[k - 1]
    items = features(list(shop.item_ids[order]))
    catalogue = CatalogueMap.build(shop.item_ids, items)
    np.testing.assert_array_equal(catalogue.idx_to_env[1:], order)
    policies = {"similar": Neighbours(shop, catalogue, 1.0), "opposite": Neighbours(shop, catalogue, -1.0)}
    lines = []
    # re-ranked after every click, so that a policy of the latest item acts at every step
    got = policy_eval.simulate_policies(policies, cfg, items, refresh="step", progress=lines.append)

    assert got["settings"] | {"rewards": None} == {
        "users": 150, "steps": 6, "seeds": 3, "slate": 5, "refresh": "step", "rewards": None
    }  # fmt: skip
    similar, opposite = got["policies"]["similar"], got["policies"]["opposite"]
    assert len(similar["per_seed"]) == 3 and similar["return"]["n"] == 3
    assert similar["return"]["mean"] > opposite["return"]["mean"]
    assert similar["slate_share"]["mean"] > 2 * opposite["slate_share"]["mean"]
    assert got["reference"] == "similar"
    difference = got["vs_reference"]["opposite"]
    assert difference["mean"] == pytest.approx(opposite["return"]["mean"] - similar["return"]["mean"])
    assert difference["high"] < 0  # paired by seed, the gap is clear of zero
    assert len(lines) == 2 and lines[0].startswith("simulated similar (lists ranked per step): return")
    # same seeds, same result
    again = policy_eval.simulate_policies(
        {"similar": policies["similar"]}, cfg, items, refresh="step", progress=lambda _: None
    )
    assert again["policies"]["similar"]["per_seed"] == similar["per_seed"]


class CountingScorer:
    """Uniform scores; remembers how many states it was asked to rank."""

    def __init__(self, n_items: int):
        self.n_items, self.ranked = n_items, 0

    def scores(self, state_items, state_events):
        self.ranked += len(state_items)
        return np.zeros((len(state_items), self.n_items + 1))


def test_session_lists_are_ranked_at_session_starts_and_step_lists_every_step():
    cfg = Config().replace(
        simulator={"n_users": 200, "n_items": 80, "n_categories": 4, "n_days": 2, "mean_session_events": 3.0},
        eval={"sim_users": 60, "sim_steps": 12, "sim_seeds": 2, "sim_slate": 4},
    )
    shop = ShopSimulator(cfg.simulator)
    items = features(list(shop.item_ids))
    counts = {}
    for refresh in ("session", "step"):
        scorer = CountingScorer(cfg.simulator.n_items)
        got = policy_eval.simulate_policies({"p": scorer}, cfg, items, refresh=refresh, progress=lambda _: None)
        assert got["settings"]["refresh"] == refresh
        counts[refresh] = got["policies"]["p"]["lists"]["mean"]
        assert scorer.ranked == counts[refresh] * 60 * 2  # lists per shopper, over shoppers and seeds
    assert counts["step"] == 12
    # one list when the evaluation starts, then one per new session (sessions of ~3 events)
    assert 1 < counts["session"] < 12


def test_unknown_refresh_modes_are_refused():
    assert Config().eval.sim_refresh == policy_eval.REFRESH_MODES == ("session", "step")
    with pytest.raises(ConfigError, match=r"eval.sim_refresh='hourly' is not one of \['session', 'step'\]"):
        Config().replace(eval={"sim_refresh": "session,hourly"})
    cfg = Config().replace(simulator={"n_users": 20, "n_items": 10, "n_categories": 2, "n_days": 1})
    items = features(list(ShopSimulator(cfg.simulator).item_ids))
    with pytest.raises(ValueError, match="not one of"):  # a caller in code, past the config
        policy_eval.simulate_policies({"p": CountingScorer(10)}, cfg, items, refresh="hourly", progress=lambda _: None)
