"""The live shop (simulator.LiveShop) and the loop's pieces that need no Spark (dql_model.pipeline.shop_loop)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from dql_model.config import Config, SimulatorConfig
from dql_model.contract import schema
from dql_model.pipeline import shop_loop
from dql_model.simulation.simulator import DEFAULT_REWARDS, ShopSimulator

SHOP = SimulatorConfig(n_users=200, n_items=60, n_categories=4, n_days=5, end_date="2026-11-27", seed=3)


@pytest.fixture
def shop():
    return ShopSimulator(SHOP).live()


def lists_for(shop, items: list[int]) -> np.ndarray:
    return np.tile(np.array(items, dtype=np.int64), (shop.n_users, 1))


def test_the_live_shop_history_is_the_generated_window():
    simulator = ShopSimulator(SHOP)
    assert simulator.live().history.equals(simulator.generate_events())


def test_a_served_day_logs_the_next_date_with_unique_visits_and_shown_slots(shop):
    day = shop.serve(lists_for(shop, [0, 1, 2, 3]), model_version="m1")
    assert day.date.isoformat() == "2026-11-28" and shop.date == day.date
    times = day.events.column(schema.EVENT_TIME).to_pylist()
    assert {t.date().isoformat() for t in times} == {"2026-11-28"}
    imp = day.impressions
    assert imp.schema == schema.arrow_schema(schema.IMPRESSIONS)
    assert imp.num_rows == 4 * day.visits and day.visits == len(day.request_user) > 0
    pairs = set(
        zip(imp.column(schema.REQUEST_ID).to_pylist(), imp.column(schema.POSITION).to_pylist(), strict=True)
    )
    assert len(pairs) == imp.num_rows
    assert set(imp.column(schema.POSITION).to_pylist()) == {1, 2, 3, 4}
    assert set(imp.column(schema.MODEL_VERSION).to_pylist()) == {"m1"}
    # A visit's request id is its session id: every request has events in that session.
    sessions = set(day.events.column(schema.SESSION_ID).to_pylist())
    assert set(imp.column(schema.REQUEST_ID).to_pylist()) <= sessions


def test_slot_rewards_add_up_to_the_visits_rewards_on_listed_items(shop):
    listed = [5, 6, 7]
    day = shop.serve(lists_for(shop, listed))
    events = day.events.to_pylist()
    reward = sum(DEFAULT_REWARDS.get(e["event_type"], 0.0) for e in events if int(e["item_id"][1:]) in listed)
    assert day.slot_reward.shape == (day.visits, 3)
    assert day.slot_reward.sum() == pytest.approx(reward)
    total = sum(DEFAULT_REWARDS.get(e["event_type"], 0.0) for e in events)
    assert day.reward == pytest.approx(total)
    assert day.purchases == sum(e["event_type"] == schema.PURCHASE for e in events)


def test_twin_shops_meet_the_same_visits_and_diverge_only_through_the_lists():
    a, b = ShopSimulator(SHOP).live(), ShopSimulator(SHOP).live()
    same_a, same_b = a.serve(lists_for(a, [0, 1])), b.serve(lists_for(b, [0, 1]))
    assert same_a.events.equals(same_b.events)
    other = b.serve(lists_for(b, [10, 11]))
    mine = a.serve(lists_for(a, [0, 1]))
    assert mine.visits == other.visits  # the same planned visits on the same date
    assert not mine.events.equals(other.events)


def test_a_twin_day_leaves_the_shop_where_it_was(shop):
    lists = lists_for(shop, [0, 1, 2])
    first = shop.serve(lists, advance=False)
    again = shop.serve(lists, advance=False)
    assert first.events.equals(again.events) and shop.date.isoformat() == "2026-11-27"
    lived = shop.serve(lists)
    assert lived.events.equals(first.events)
    other_draw = shop.serve(lists, replicate=1, advance=False)  # another draw of the next date
    assert other_draw.date.isoformat() == "2026-11-29"
    assert not other_draw.events.equals(shop.serve(lists, replicate=2, advance=False).events)


def test_lists_on_screen_draw_shoppers_to_them(shop):
    popular = shop_loop.twin_popularity_lists(shop, [shop.history], 5)
    shown = shop.serve(popular.items, advance=False)
    blank = shop.serve(np.full((shop.n_users, 5), -1, dtype=np.int64), advance=False)
    assert shown.slot_reward.sum() > 0 and blank.slot_reward.sum() == 0
    assert shown.per_shopper()["list_reward_per_visit"] > 0


def test_serve_rejects_lists_of_the_wrong_shape(shop):
    with pytest.raises(ValueError, match="n_users=200"):
        shop.serve(np.zeros((3, 2), dtype=np.int64))


def test_twin_popularity_lists_skip_what_the_shopper_bought_and_sold_out_items(shop):
    popular = shop_loop.twin_popularity_lists(shop, [shop.history], 8)
    available = ShopSimulator(SHOP).items_table().column(schema.AVAILABLE).to_pylist()
    bought = {}
    for e in shop.history.to_pylist():
        if e["event_type"] == schema.PURCHASE:
            bought.setdefault(int(e["user_id"][1:]), set()).add(int(e["item_id"][1:]))
    for user in range(shop.n_users):
        row = [i for i in popular.items[user].tolist() if i >= 0]
        assert len(row) == len(set(row)) == 8
        assert not set(row) & bought.get(user, set())
        assert all(available[i] for i in row)


def test_lists_from_a_recommendations_table_keep_rank_propensity_and_version(shop):
    table = pa.table(
        {
            schema.USER_ID: ["u00003", "u00003", "u00007"],
            schema.RANK: pa.array([1, 2, 1], pa.int32()),
            schema.ITEM_ID: ["i000009", "i000004", "i000001"],
            schema.PROPENSITY: [1.0, 0.25, 1.0],
            schema.MODEL_VERSION: ["v1", "v1", "v1"],
        }
    )
    lists = shop_loop.lists_from_table(shop, table, 3)
    assert lists.items[3].tolist() == [9, 4, -1] and lists.items[7].tolist() == [1, -1, -1]
    assert lists.propensity[3, 1] == 0.25 and lists.model_version[3] == "v1" and lists.model_version[0] == ""
    assert (lists.items[0] == -1).all()


def test_off_policy_estimates_of_the_logging_policy_itself_cover_its_value(shop):
    """Log uniformly random slates of 3 from 12 items; the candidate is one fixed slate. IPS with the
    exact propensity 1/12 per position (marginal of a uniform shuffle) is unbiased for it."""
    rng = np.random.default_rng(0)
    pool = np.arange(12)
    items = np.stack([rng.permutation(pool)[:3] for _ in range(shop.n_users)])
    served = shop_loop.Lists(
        items=items,
        propensity=np.full(items.shape, 1 / 12),
        model_version=np.full(shop.n_users, "", dtype=object),
    )
    day = shop.serve(items, propensity=served.propensity, advance=False)
    candidate = shop_loop.Lists(
        items=lists_for(shop, [0, 1, 2]),
        propensity=np.ones((shop.n_users, 3)),
        model_version=served.model_version,
    )
    out = shop_loop.estimate_candidate(day, served, candidate, day.request_user)
    for key in schema.OPE_ESTIMATORS:
        assert out[key]["low"] <= out[key]["value"] <= out[key]["high"]
    assert out["support"] == pytest.approx(1.0, abs=0.35)
    assert out["logged_value"] == pytest.approx(day.slot_reward.sum(axis=1).mean())


def twin(policy: str, seed: int, returns: list[float]) -> dict:
    days = [
        {
            "date": f"d{i}",
            "return": r,
            "purchases": r / 2,
            "revenue": r * 10,
            "list_reward_per_visit": r,
            "ope": {},
        }
        for i, r in enumerate(returns)
    ]
    return {"policy": policy, "seed": seed, "days": days, "nights": [{"timings": {"a": 2.0, "b": 1.0}}]}


def test_summary_pairs_each_policy_with_the_reference_by_seed():
    settings = shop_loop.LoopSettings(days=2, seeds=(0, 1, 2), policies=("dqn", "supervised"))
    twins = [
        twin("dqn", 0, [1.0, 2.0]), twin("dqn", 1, [2.0, 2.0]), twin("dqn", 2, [3.0, 5.0]),
        twin("supervised", 0, [0.5, 1.5]), twin("supervised", 1, [1.5, 1.5]), twin("supervised", 2, [2.5, 4.5]),
    ]  # fmt: skip
    summary = shop_loop.summarise(twins, settings)
    assert summary["reference"] == "supervised"
    paired = summary["paired"]["dqn"]
    # Every seed's difference is exactly +0.5 a day: the paired interval has no width.
    assert paired["per_day"][0]["mean"] == pytest.approx(0.5) and paired["per_day"][0][
        "ci95"
    ] == pytest.approx(0.0)
    assert paired["cumulative"]["mean"] == pytest.approx(1.0) and paired["cumulative"]["n"] == 3
    cumulative = summary["policies"]["dqn"]["cumulative_return"]
    assert cumulative["mean"] == pytest.approx((3 + 4 + 8) / 3)
    assert summary["policies"]["dqn"]["return"][1]["mean"] == pytest.approx(3.0)
    assert summary["policies"]["dqn"]["mean_night_s"] == pytest.approx(3.0)
    assert "dqn - supervised" in shop_loop.format_summary(summary)


def test_summary_counts_how_often_each_interval_covers_the_truth():
    settings = shop_loop.LoopSettings(days=2, seeds=(0,), policies=("dqn",))
    t = twin("dqn", 0, [1.0, 1.0])
    check = {"truth": 0.5, "support": 1.0}
    t["days"][0]["ope"] = {
        "greedy": {
            **check,
            **{
                k: {"value": 0.5, "low": 0.4, "high": 0.6, "ess": 10.0, "covers": True}
                for k in schema.OPE_ESTIMATORS
            },
        }
    }
    t["days"][1]["ope"] = {
        "greedy": {
            **check,
            **{
                k: {"value": 0.9, "low": 0.8, "high": 1.0, "ess": 20.0, "covers": False}
                for k in schema.OPE_ESTIMATORS
            },
        }
    }
    summary = shop_loop.summarise([t], settings)
    ips = summary["ope"]["greedy"]["ips"]
    assert summary["ope"]["greedy"]["checks"] == 2
    assert (
        ips["coverage"] == 0.5
        and ips["mean_width"] == pytest.approx(0.2)
        and ips["mean_error"] == pytest.approx(0.2)
    )


def test_loop_settings_reject_unknown_policies():
    with pytest.raises(ValueError, match="unknown"):
        shop_loop.LoopSettings(policies=("dqn", "oracle"))


def test_a_learned_policy_may_carry_training_overrides(tmp_path):
    assert shop_loop.parse_policy("dqn") == ("dqn", {})
    assert shop_loop.parse_policy("dqn:cql_alpha=1,gamma=0.9") == ("dqn", {"cql_alpha": 1, "gamma": 0.9})
    settings = shop_loop.LoopSettings(policies=("dqn", "dqn:cql_alpha=1"))
    base = Config()
    variant = shop_loop.twin_config(base, settings, "dqn:cql_alpha=1", 2, tmp_path)
    assert (variant.train.cql_alpha, variant.train.mode, variant.train.seed) == (1.0, "dqn", 2)
    assert variant.simulator.seed == base.simulator.seed + 2
    assert shop_loop.twin_key(base, settings, "dqn", 0) != shop_loop.twin_key(base, settings, "dqn:cql_alpha=1", 0)
    with pytest.raises(ValueError, match="learned policy"):
        shop_loop.parse_policy("popularity:cql_alpha=1")
