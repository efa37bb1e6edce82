"""The synthetic shop: deterministic, on contract, with a real funnel, and usable as an environment."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from dql_model.config import SimulatorConfig
from dql_model.contract import schema
from dql_model.simulation import simulator
from dql_model.simulation.simulator import ShopSimulator
from dql_model.warehouse import storage

# Large enough for stable shares (~8k events, ~300 purchases), small enough to build in well under a second.
SHOP = SimulatorConfig(n_users=300, n_items=200, n_categories=8, n_days=10, end_date="2026-11-27", seed=11)


@pytest.fixture(scope="module")
def shop() -> ShopSimulator:
    return ShopSimulator(SHOP)


@pytest.fixture(scope="module")
def events(shop: ShopSimulator) -> pd.DataFrame:
    return shop.generate_events().to_pandas()


def _small(**changes) -> SimulatorConfig:
    base = {"n_users": 60, "n_items": 40, "n_categories": 4, "n_days": 6, "end_date": "2026-11-27", "seed": 7}
    return SimulatorConfig(**{**base, **changes})


def test_same_seed_gives_identical_tables_and_another_seed_differs():
    first = ShopSimulator(_small()).generate_events()
    again = ShopSimulator(_small()).generate_events()
    other = ShopSimulator(_small(seed=8)).generate_events()
    assert first.num_rows > 500
    assert first.equals(again)
    assert ShopSimulator(_small()).items_table().equals(ShopSimulator(_small()).items_table())
    assert not first.equals(other)
    assert not ShopSimulator(_small()).items_table().equals(ShopSimulator(_small(seed=8)).items_table())


def test_schemas_are_the_contract(shop: ShopSimulator):
    table = shop.generate_events()
    expected = schema.arrow_schema(schema.EVENTS).append(pa.field(schema.EVENT_DATE, pa.date32()))
    assert table.schema.equals(expected)
    assert shop.items_table().schema.equals(schema.arrow_schema(schema.ITEMS))


def test_ids_have_the_documented_shapes_and_events_reference_the_catalogue(shop, events):
    items = shop.items_table().to_pandas()
    assert len(items) == SHOP.n_items and items.item_id.is_unique
    assert items.item_id.str.fullmatch(r"i\d{6}").all()
    assert items.category_id.str.fullmatch(r"c\d{2}").all()
    assert events.user_id.str.fullmatch(r"u\d{5}").all()
    assert set(events.item_id) <= set(items.item_id)
    assert events.session_id.notna().all()
    # A session belongs to one user.
    assert (events.groupby("session_id").user_id.nunique() == 1).all()


def test_catalogue_has_per_category_prices_skewed_popularity_and_a_few_unavailable(shop, events):
    items = shop.items_table().to_pandas()
    assert (items.price > 0).all()
    assert 0.0 < (~items.available).mean() < 0.1
    # Prices cluster by category: the spread of category medians explains a good part of the variance.
    log_price = np.log(items.price)
    between = log_price.groupby(items.category_id).transform("median").var()
    assert between > 0.3 * log_price.var()
    views = events[events.event_type == schema.VIEW].item_id.value_counts()
    top_5_percent = views.iloc[: len(items) // 20].sum() / views.sum()
    assert 0.15 < top_5_percent < 0.7


def test_event_mix_is_a_shop_funnel(events):
    share = events.event_type.value_counts(normalize=True)
    assert set(share.index) == set(schema.EVENT_TYPES)
    assert 0.70 < share[schema.VIEW] < 0.92
    assert 0.06 < share[schema.ADD_TO_CART] < 0.18
    assert 0.015 < share[schema.PURCHASE] < 0.06
    assert 0.0 < share[schema.RATING] < share[schema.PURCHASE]
    assert 5.0 < len(events) / events.session_id.nunique() < 12.0


def test_every_purchase_follows_an_add_to_cart_of_that_item_in_the_same_session(events):
    key = ["session_id", "item_id"]
    first_cart = (
        events[events.event_type == schema.ADD_TO_CART].groupby(key).event_time.min().rename("carted_at")
    )
    purchases = events[events.event_type == schema.PURCHASE].join(first_cart, on=key)
    assert len(purchases) > 100
    assert purchases.carted_at.notna().all()
    assert (purchases.carted_at < purchases.event_time).all()
    # Carting the same item twice in one session does not happen; abandoning a cart does.
    carts = events[events.event_type == schema.ADD_TO_CART]
    assert not carts.duplicated(key).any()
    assert len(carts) > 1.5 * len(purchases)


def test_values_are_prices_ratings_or_null(shop, events):
    price = shop.items_table().to_pandas().set_index("item_id").price
    paid = events[events.event_type.isin([schema.ADD_TO_CART, schema.PURCHASE])]
    np.testing.assert_array_equal(paid.value.to_numpy(), price.loc[paid.item_id].to_numpy())
    assert events[events.event_type == schema.VIEW].value.isna().all()
    ratings = events[events.event_type == schema.RATING].value
    assert set(ratings.unique()) <= {1.0, 2.0, 3.0, 4.0, 5.0} and ratings.nunique() >= 3


def test_ratings_follow_a_purchase_and_agree_with_taste(shop, events):
    bought = events[events.event_type == schema.PURCHASE].groupby(["user_id", "item_id"]).event_time.min()
    ratings = events[events.event_type == schema.RATING].join(
        bought.rename("bought_at"), on=["user_id", "item_id"]
    )
    assert len(ratings) > 20
    assert (ratings.bought_at < ratings.event_time).all()
    users = ratings.user_id.str[1:].astype(int).to_numpy()
    items = ratings.item_id.str[1:].astype(int).to_numpy()
    liking = shop.affinity(users)[np.arange(len(users)), items]
    assert np.corrcoef(liking, ratings.value)[0, 1] > 0.2


def test_time_runs_forward_in_sessions_and_sessions_of_a_user_do_not_overlap(events):
    by_session = events.sort_values(["session_id", "event_time"], kind="stable")
    assert by_session.groupby("session_id").event_time.is_monotonic_increasing.all()
    spans = events.groupby("session_id").agg(
        user_id=("user_id", "first"), start=("event_time", "min"), end=("event_time", "max")
    )
    spans = spans.sort_values(["user_id", "start"])
    next_start = spans.groupby("user_id").start.shift(-1)
    assert (next_start.dropna() > spans.end[next_start.notna()]).all()
    assert (spans.end - spans.start).max() < pd.Timedelta(hours=12)


def test_table_is_sorted_by_time_then_user(shop):
    table = shop.generate_events()
    frame = table.select([schema.EVENT_TIME, schema.USER_ID]).to_pandas()
    assert frame.equals(
        frame.sort_values([schema.EVENT_TIME, schema.USER_ID], kind="stable").reset_index(drop=True)
    )


def test_events_fall_inside_the_configured_days_and_event_date_is_their_utc_date(events):
    first = dt.date(2026, 11, 27) - dt.timedelta(days=SHOP.n_days - 1)
    assert str(events.event_time.dt.tz) == "UTC"
    assert events.event_date.min() == first
    assert events.event_date.max() == dt.date(2026, 11, 27)
    assert (events.event_time.dt.date == events.event_date).all()
    # Activity follows the clock: the evening is busier than the small hours.
    hours = events.event_time.dt.hour
    assert hours.between(19, 21).mean() > 2 * hours.between(2, 4).mean()


def test_bought_items_are_rarely_bought_again_soon(events):
    purchases = events[events.event_type == schema.PURCHASE].sort_values("event_time")
    previous = purchases.groupby(["user_id", "item_id"]).event_time.shift()
    again_within_a_week = (purchases.event_time - previous) < pd.Timedelta(days=7)
    assert len(purchases) > 100
    assert again_within_a_week.mean() < 0.02


def test_new_items_appear_only_after_release_and_sold_out_items_are_not_carted():
    shop = ShopSimulator(_small(new_items_per_day=2.0, n_days=8))
    m = shop.model
    assert np.isfinite(m.release_time).sum() > 5
    events = shop.generate_events().to_pandas()
    seconds = (events.event_time - events.event_time.dt.normalize().min()).dt.total_seconds().to_numpy()
    item = events.item_id.str[1:].astype(int).to_numpy()
    assert (seconds >= m.release_time[item]).all()
    assert (seconds >= m.release_time[item] + simulator._DAY_S).any()  # the new items do sell
    carted = events.event_type.isin([schema.ADD_TO_CART, schema.PURCHASE]).to_numpy()
    assert (seconds[carted] < m.sold_out_time[item[carted]]).all()


def test_write_shop_writes_items_and_one_partition_per_day(tiny_config):
    printed: list[str] = []
    assert not simulator.warehouse_has_events(tiny_config)
    counts = simulator.write_shop(tiny_config, progress=printed.append)
    assert simulator.warehouse_has_events(tiny_config)

    sim_cfg = tiny_config.simulator
    expected = ShopSimulator(sim_cfg).generate_events()
    days = [dt.date(2026, 11, 27) - dt.timedelta(days=d) for d in range(sim_cfg.n_days)][::-1]
    root = Path(tiny_config.layout.table(schema.EVENTS))
    assert sorted(p.name for p in root.iterdir()) == [f"event_date={d}" for d in days]
    total = 0
    for day in days:
        part = storage.read_partition(root / f"event_date={day}")
        assert part.schema.equals(schema.arrow_schema(schema.EVENTS))
        dates = part.column(schema.EVENT_TIME).to_pandas().dt.date
        assert (dates == day).all()
        total += part.num_rows
    assert total == expected.num_rows == counts["events"]
    items = storage.read_partition(tiny_config.layout.table(schema.ITEMS))
    assert items.equals(ShopSimulator(sim_cfg).items_table())
    assert counts == {
        "events": expected.num_rows,
        "impressions": ShopSimulator(sim_cfg).live().impressions.num_rows,
        "impression_days": min(sim_cfg.logged_days, sim_cfg.n_days - 1),
        "items": sim_cfg.n_items,
        "users": len(set(expected.column(schema.USER_ID).to_pylist())),
        "days": sim_cfg.n_days,
        "first_date": str(days[0]),
        "last_date": str(days[-1]),
    }
    assert printed and any("events" in line for line in printed)


def test_write_shop_replaces_a_previous_shop(tiny_config):
    simulator.write_shop(tiny_config, progress=lambda _: None)
    moved = tiny_config.replace(simulator={"end_date": "2026-11-29"})
    counts = simulator.write_shop(moved, progress=lambda _: None)
    root = Path(moved.layout.table(schema.EVENTS))
    names = sorted(p.name for p in root.iterdir())
    assert names[0] == f"event_date={counts['first_date']}" and names[-1] == "event_date=2026-11-29"
    assert len(names) == moved.simulator.n_days


def test_logging_policy_propensities_are_each_slots_marginal_chance():
    """Drawn for many users, each (position, item) is shown as often as its propensity says."""
    counts = np.array([5.0, 9.0, 1.0, 9.0, 0.0, 3.0, 2.0, 7.0])  # popular first: 1, 3 (tie, lower position), 7
    rng = np.random.default_rng(0)
    lists, propensity = simulator.logging_policy_lists(rng, counts, 40_000, top_k=3, epsilon=0.3)
    assert lists.shape == propensity.shape == (40_000, 3)
    explored = lists != np.array([1, 3, 7])
    assert np.allclose(propensity[~explored], 0.7) and np.allclose(propensity[explored], 0.3 / 5)
    assert not np.isin(lists[explored], [1, 3, 7]).any()
    assert all(len(set(row)) == 3 for row in lists[:2000])  # a list never shows an item twice
    # A small catalogue keeps K others to explore with: lists of half of it at most.
    small, small_p = simulator.logging_policy_lists(rng, counts[:5], 200, top_k=4, epsilon=0.5)
    assert small.shape == (200, 2) and all(len(set(row)) == 2 for row in small)
    assert set(np.round(small_p.ravel(), 12)) == {0.5, round(0.5 / 3, 12)}
    for position in range(3):
        shown = np.bincount(lists[:, position], minlength=8) / len(lists)
        expected = np.zeros(8)
        expected[[0, 2, 4, 5, 6]] = 0.3 / 5
        expected[[1, 3, 7][position]] = 0.7
        assert np.abs(shown - expected).max() < 0.01, (position, shown)


def test_the_generated_history_logs_impressions_under_the_contract(tiny_config):
    from dql_model.judging import ope_night

    cfg = tiny_config.replace(simulator={"logged_days": 3, "logging_top_k": 4, "logging_epsilon": 0.25})
    simulator.write_shop(cfg, progress=lambda _: None)
    root = Path(cfg.layout.table(schema.IMPRESSIONS))
    days = ["2026-11-25", "2026-11-26", "2026-11-27"]  # the window's last logged_days days
    assert sorted(p.name for p in root.iterdir()) == [f"shown_date={d}" for d in days]
    events = simulator.ShopSimulator(cfg.simulator).generate_events().to_pandas()
    m = cfg.simulator.n_items - 4
    for day in days:
        part = storage.read_partition(root / f"shown_date={day}")
        assert part.schema.equals(schema.arrow_schema(schema.IMPRESSIONS))
        rows = part.to_pandas()
        accepted, rejected, _ = ope_night.check_impressions(rows, partition=day)
        assert rejected == [] and len(accepted) == len(rows) > 0
        assert (rows.shown_time.dt.date.astype(str) == day).all()
        assert set(np.round(rows.propensity, 12)) <= {0.75, round(0.25 / m, 12)}
        assert (rows.propensity > 0).all() and (rows.propensity <= 1).all()
        # Every request shows one full list, positions 1..K, each item once.
        per_request = rows.groupby("request_id")
        assert (per_request.position.apply(sorted).map(tuple) == (1, 2, 3, 4)).all()
        assert (per_request.item_id.nunique() == 4).all()
        assert set(rows.model_version) == {simulator.logging_policy_name(cfg.simulator)}
        # A request is a visit: the shopper has events that day, in the session named by the request.
        that_day = events[events.event_time.dt.date.astype(str) == day]
        assert set(rows.request_id) <= set(that_day.session_id)
    regenerated = simulator.write_shop(cfg.replace(simulator={"logged_days": 0}), progress=lambda _: None)
    assert regenerated["impressions"] == 0 and not list(root.iterdir())  # a new shop drops the old log


def test_warehouse_has_events_ignores_empty_folders(tiny_config):
    (Path(tiny_config.layout.table(schema.EVENTS)) / "event_date=2026-11-27").mkdir(parents=True)
    assert not simulator.warehouse_has_events(tiny_config)


# ---------------------------------------------------------------------------------------------
# Environment


def _purchase_rate(shop: ShopSimulator, pick, steps: int = 8) -> tuple[float, float]:
    env = shop.environment(seed=5)
    users = env.reset(400)
    slate = pick(shop.affinity(users))
    results = [env.step(slate) for _ in range(steps)]
    bought = np.mean([r.event_type == schema.PURCHASE for r in results])
    from_slate = np.mean([r.from_slate for r in results])
    return float(bought), float(from_slate)


def test_recommending_liked_items_sells_more_than_recommending_disliked_ones(shop):
    liked, liked_clicks = _purchase_rate(shop, lambda a: np.argsort(-a, axis=1)[:, :10])
    disliked, disliked_clicks = _purchase_rate(shop, lambda a: np.argsort(a, axis=1)[:, :10])
    assert liked > 1.5 * disliked
    assert liked_clicks > 5 * disliked_clicks


def test_recommendations_draw_attention_to_the_slate(shop):
    env = shop.environment(seed=1)
    env.reset(300)
    organic = env.step(None)
    assert not organic.from_slate.any()
    fixed = np.tile(np.arange(5), (300, 1))
    shown = env.step(fixed)
    assert shown.from_slate.mean() > 2 * np.isin(organic.item, np.arange(5)).mean()


def test_environment_follows_the_hidden_model_of_the_logs(shop, events):
    """Organic steps in the environment have the same kind of funnel as the logs."""
    env = shop.environment(seed=2)
    env.reset(400, warmup_steps=0)
    codes = np.concatenate([env.step(None).event_code for _ in range(6)])
    purchase_per_step = np.mean(codes == schema.EVENT_CODE[schema.PURCHASE])
    logged = events.event_type.value_counts()
    logged_per_view = logged[schema.PURCHASE] / logged[schema.VIEW]
    assert 0.4 * logged_per_view < purchase_per_step < 2.5 * logged_per_view


def test_step_returns_rewards_and_history_records_the_funnel(shop):
    rewards = {schema.VIEW: 0.0, schema.ADD_TO_CART: 0.3, schema.PURCHASE: 1.0}
    env = shop.environment(seed=3, rewards=rewards)
    users = env.reset(200, warmup_steps=0)
    assert len(set(users.tolist())) == 200
    np.testing.assert_array_equal(env.users, users)
    results = [env.step(None) for _ in range(5)]
    for r in results:
        np.testing.assert_array_equal(r.reward, [rewards[e] for e in r.event_type])
    deep = results[-1].event_code > schema.EVENT_CODE[schema.VIEW]
    row = int(np.flatnonzero(deep)[0])
    items, codes = env.history(row)
    expected_codes = []
    for r in results:
        expected_codes += list(range(schema.EVENT_CODE[schema.VIEW], int(r.event_code[row]) + 1))
    np.testing.assert_array_equal(codes, expected_codes)
    assert items[-1] == results[-1].item[row]

    padded_items, padded_codes = env.histories(len(codes) + 2)
    np.testing.assert_array_equal(padded_items[row], [-1, -1, *items])
    np.testing.assert_array_equal(padded_codes[row], [0, 0, *codes])


def test_environment_is_deterministic_by_seed_and_checks_its_input(shop):
    def run(seed):
        env = shop.environment(seed=seed)
        env.reset(50)
        return np.stack([env.step(np.tile(np.arange(10), (50, 1))).item for _ in range(3)])

    np.testing.assert_array_equal(run(4), run(4))
    assert not np.array_equal(run(4), run(5))
    env = shop.environment(seed=0)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(None)
    env.reset(10)
    with pytest.raises(ValueError, match="n_users=10"):
        env.step(np.zeros((9, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="out of range"):
        env.step(np.full((10, 3), SHOP.n_items))
    with pytest.raises(ValueError, match="unknown event type"):
        shop.environment(seed=0, rewards={"click": 1.0})


def test_purchases_satiate_in_the_environment(shop):
    """A user who just bought an item rarely buys it again, however hard it is recommended."""
    env = shop.environment(seed=6)
    env.reset(400, warmup_steps=0)
    favourite = np.argsort(-shop.affinity(env.users), axis=1)[:, :1]
    bought_before = np.zeros(400, bool)
    again = 0
    for _ in range(12):
        result = env.step(favourite)
        bought_favourite = (result.event_type == schema.PURCHASE) & (result.item == favourite[:, 0])
        again += int((bought_favourite & bought_before).sum())
        bought_before |= bought_favourite
    assert bought_before.sum() > 40
    assert again <= math.ceil(0.05 * bought_before.sum())
