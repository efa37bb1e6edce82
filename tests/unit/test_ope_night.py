"""Off-policy estimates of the nightly candidates: impressions check, reward attribution, target
propensities, and the gate on ``ope/dr`` against a planted log whose candidates' values are known."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from dql_model.config import Config, ConfigError
from dql_model.contract import schema
from dql_model.judging import candidates, gate, ope_night, report
from dql_model.learning import registry
from dql_model.warehouse import data, storage
from dql_model.warehouse.rewards import RewardRule
from tests.factories import user_states_table
from tests.unit.test_gate import RUN_DATE, night_cfg, register  # noqa: F401  (night_cfg is a fixture)

UTC = dt.UTC
T0 = dt.datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
NIGHT_BEFORE = "2026-11-26"


def impressions_table(rows: list[dict]) -> pa.Table:
    """Impression rows; shown_time defaults to T0, model_version to v1."""
    columns = {name: [] for name in schema.arrow_schema(schema.IMPRESSIONS).names}
    for row in rows:
        full = {schema.SHOWN_TIME: T0, schema.MODEL_VERSION: "v1", **row}
        for name in columns:
            columns[name].append(full.get(name))
    return pa.table(columns, schema=schema.arrow_schema(schema.IMPRESSIONS))


def events_table(rows: list[tuple]) -> pa.Table:
    """(event_time, user_id, item_id, event_type) rows."""
    time, user, item, kind = (list(c) for c in zip(*rows, strict=True))
    return pa.table(
        {
            schema.EVENT_TIME: time,
            schema.USER_ID: user,
            schema.ITEM_ID: item,
            schema.EVENT_TYPE: kind,
            schema.VALUE: [None] * len(time),
            schema.SESSION_ID: ["s"] * len(time),
        },
        schema=schema.arrow_schema(schema.EVENTS),
    )


def test_rewards_run_from_the_slot_to_the_users_next_request_and_at_most_24_hours():
    hour = dt.timedelta(hours=1)
    impressions = impressions_table(
        [
            # u1 sees a request at 10:00 and the next at 12:00; u2 one request at 10:00 and none after.
            {
                schema.REQUEST_ID: "r1",
                schema.USER_ID: "u1",
                schema.ITEM_ID: "a",
                schema.POSITION: 1,
                schema.PROPENSITY: 1.0,
            },
            {
                schema.REQUEST_ID: "r1",
                schema.USER_ID: "u1",
                schema.ITEM_ID: "b",
                schema.POSITION: 2,
                schema.PROPENSITY: 1.0,
            },
            {
                schema.REQUEST_ID: "r2",
                schema.USER_ID: "u1",
                schema.ITEM_ID: "a",
                schema.POSITION: 1,
                schema.PROPENSITY: 1.0,
                schema.SHOWN_TIME: T0 + 2 * hour,
            },
            {
                schema.REQUEST_ID: "r3",
                schema.USER_ID: "u2",
                schema.ITEM_ID: "c",
                schema.POSITION: 1,
                schema.PROPENSITY: 1.0,
            },
        ]
    ).to_pandas()
    events = events_table(
        [
            (T0 + hour, "u1", "a", schema.PURCHASE),  # r1's a (before u1's next request)
            (T0 + 2 * hour, "u1", "a", schema.ADD_TO_CART),  # at r2's shown_time: r2's, no longer r1's
            (T0 - hour, "u1", "b", schema.PURCHASE),  # before b was shown: nobody's
            (
                T0 + 3 * hour,
                "u1",
                "b",
                schema.ADD_TO_CART,
            ),  # b was not shown again, but u1 came back at 12:00
            (T0 + 10 * hour, "u2", "c", schema.ADD_TO_CART),  # within 24 h of r3
            (T0 + 25 * hour, "u2", "c", schema.PURCHASE),  # past the 24 h horizon
            (T0 + hour, "u2", "a", schema.PURCHASE),  # an item u2 was never shown
        ]
    ).to_pandas()
    cfg = Config()
    events[schema.REWARD] = RewardRule.from_config(cfg).numpy(events[schema.EVENT_TYPE], events[schema.VALUE])

    rewards = ope_night.attribute_rewards(impressions, events)

    np.testing.assert_allclose(rewards, [1.0, 0.0, 0.3, 0.3])


def test_reward_attribution_matches_a_slot_by_slot_reading_on_random_logs():
    rng = np.random.default_rng(5)
    t0 = pd.Timestamp("2026-11-27", tz="UTC")
    request_user = rng.integers(0, 6, size=40)
    request_time = t0 + pd.to_timedelta(rng.integers(0, 3 * 86_400, size=40), unit="s")
    rows = [
        (f"r{r}", f"u{request_user[r]}", f"i{rng.integers(0, 5)}", position, request_time[r])
        for r in range(40)
        for position in (1, 2)
    ]
    impressions = pd.DataFrame(
        rows, columns=[schema.REQUEST_ID, schema.USER_ID, schema.ITEM_ID, schema.POSITION, schema.SHOWN_TIME]
    )
    events = pd.DataFrame(
        {
            schema.USER_ID: [f"u{u}" for u in rng.integers(0, 6, size=400)],
            schema.ITEM_ID: [f"i{i}" for i in rng.integers(0, 5, size=400)],
            schema.EVENT_TIME: t0 + pd.to_timedelta(rng.integers(0, 4 * 86_400, size=400), unit="s"),
            schema.REWARD: rng.random(400),
        }
    )
    expected = []
    for _, slot in impressions.iterrows():
        later = [
            t
            for u, t in zip(request_user, request_time, strict=True)
            if f"u{u}" == slot[schema.USER_ID] and t > slot[schema.SHOWN_TIME]
        ]
        end = min([slot[schema.SHOWN_TIME] + pd.Timedelta(hours=24), *later])
        mine = events[
            (events[schema.USER_ID] == slot[schema.USER_ID])
            & (events[schema.ITEM_ID] == slot[schema.ITEM_ID])
        ]
        inside = (mine[schema.EVENT_TIME] >= slot[schema.SHOWN_TIME]) & (mine[schema.EVENT_TIME] < end)
        expected.append(mine[inside][schema.REWARD].sum())
    np.testing.assert_allclose(ope_night.attribute_rewards(impressions, events), expected)
    assert np.count_nonzero(expected) > 10  # the random log credits something


def test_event_rewards_follow_the_etl():
    cfg = Config().replace(etl={"reward_purchase": 2.0, "reward_rating_scale": 1.0})
    kinds = np.array(
        [schema.VIEW, schema.ADD_TO_CART, schema.PURCHASE, schema.RATING, schema.RATING, schema.RATING]
    )
    values = np.array([np.nan, np.nan, np.nan, 5.0, 0.5, np.nan])
    np.testing.assert_allclose(RewardRule.from_config(cfg).numpy(kinds, values), [0.0, 0.3, 2.0, 1.0, -1.0, 0.0])


def test_bad_impression_rows_are_counted_per_partition_column_and_rule(tiny_config):
    good = {
        schema.REQUEST_ID: "r1",
        schema.USER_ID: "u1",
        schema.ITEM_ID: "a",
        schema.POSITION: 1,
        schema.PROPENSITY: 0.5,
    }
    rows = [
        good,
        {**good, schema.POSITION: 2, schema.USER_ID: None},
        {**good, schema.POSITION: 0},
        {**good, schema.POSITION: 3, schema.PROPENSITY: 1.5},
        {**good, schema.POSITION: 4, schema.PROPENSITY: 0.0},
        {**good, schema.ITEM_ID: "b"},  # a second item at r1's position 1
    ]
    folder = tiny_config.layout.partition(schema.IMPRESSIONS, RUN_DATE)
    storage.write_partition(impressions_table(rows), folder)
    lines = []

    log = ope_night.load_impressions(tiny_config, RUN_DATE, 3, progress=lines.append)

    assert (log.days, log.input_rows, log.accepted_rows) == ([RUN_DATE], 6, 1)
    rejected = {(e["column"], e["rule"]): e["rows"] for e in log.rejected}
    assert rejected == {
        (schema.USER_ID, schema.RULE_NULL_ID): 1,
        (schema.POSITION, schema.RULE_BAD_POSITION): 1,
        (schema.PROPENSITY, schema.RULE_BAD_PROPENSITY): 2,
        ("request_id, position", schema.RULE_DUPLICATE): 1,
    }
    assert any(
        folder in line and "bad_propensity on column propensity" in line and "2 rows" in line
        for line in lines
    )
    assert log.input_rows == log.accepted_rows + sum(rejected.values())
    quarantine = storage.read_partition(tiny_config.layout.partition(schema.IMPRESSIONS_QUARANTINE, RUN_DATE))
    assert quarantine.num_rows == 5 and set(quarantine.column(schema.SOURCE_PARTITION).to_pylist()) == {
        folder
    }
    assert sorted(quarantine.column(schema.RULE).to_pylist()) == sorted(
        [
            schema.RULE_NULL_ID,
            schema.RULE_BAD_POSITION,
            schema.RULE_BAD_PROPENSITY,
            schema.RULE_BAD_PROPENSITY,
            schema.RULE_DUPLICATE,
        ]
    )
    ope_night.load_impressions(tiny_config, RUN_DATE, 3, progress=lines.append)  # a rerun replaces it
    assert (
        storage.read_partition(tiny_config.layout.partition(schema.IMPRESSIONS_QUARANTINE, RUN_DATE)).num_rows
        == 5
    )
    empty = ope_night.load_impressions(tiny_config, "2026-11-20", 2, progress=lines.append)
    assert (empty.days, empty.accepted_rows, empty.input_rows) == ([], 0, 0)


def test_target_propensities_are_one_where_the_list_puts_the_logged_item_at_the_logged_position():
    rows = pd.DataFrame(
        {
            schema.SHOWN_DATE: ["d1", "d1", "d1", "d2"],
            schema.USER_ID: ["u1", "u1", "u2", "u1"],
            schema.POSITION: [1, 2, 1, 1],
            schema.ITEM_ID: ["a", "b", "a", "a"],
        }
    )
    asked = []

    def lists(day, users):
        asked.append((day, sorted(users.to_pylist())))
        ranked = {"d1": {"u1": ["a", "c"], "u2": ["b"]}, "d2": {"u1": ["b", "a"]}}[day]
        pairs = [
            (u, r, i) for u, items in ranked.items() if u in users.to_pylist() for r, i in enumerate(items, 1)
        ]
        return pa.table(
            {
                schema.USER_ID: [p[0] for p in pairs],
                schema.RANK: pa.array([p[1] for p in pairs], pa.int32()),
                schema.ITEM_ID: [p[2] for p in pairs],
            }
        )

    target = ope_night.target_propensities(rows, {"x": lists})["x"]

    np.testing.assert_array_equal(target.p_new, [1.0, 0.0, 0.0, 0.0])
    assert target.item_id.tolist() == ["a", "c", "b", "b"]
    assert asked == [("d1", ["u1", "u2"]), ("d2", ["u1"])]


def test_the_reward_model_is_position_mean_times_a_smoothed_item_multiplier():
    model = ope_night.PositionRewardModel.fit(
        np.array([1, 1, 2, 2]), np.array(["a", "b", "a", "b"]), np.array([1.0, 0.0, 0.5, 0.0]), smoothing=2.0
    )
    np.testing.assert_allclose(model.theta, [0.5, 0.25])
    # a: earned 1.5, expected 0.75 -> raw 2, rho = (2 * 2 + 2) / 4 = 1.5; b: raw 0 -> rho = 2 / 4.
    np.testing.assert_allclose(model.rho, [1.5, 0.5])
    np.testing.assert_allclose(
        model.predict(np.array([1, 2, 1, 3]), np.array(["a", "b", "new", None], object)),
        [0.75, 0.125, 0.5, 0.0],
    )


def test_config_accepts_the_ope_names_and_rejects_others():
    for name in schema.OPE_METRICS:
        assert Config().replace(eval={"gate_metric": name}).eval.gate_metric == name
    with pytest.raises(ConfigError, match=r"ope/ipw.*accepted: ope/ips, ope/snips, ope/dr"):
        Config().replace(eval={"gate_metric": "ope/ipw"})
    with pytest.raises(ConfigError, match="ope_days"):
        Config().replace(eval={"ope_days": -1})
    with pytest.raises(ConfigError, match="is not a validation metric"):
        Config().replace(eval={"early_stop_metric": "ope/dr"})


# --- the gate on a planted log ----------------------------------------------------------------------

USERS = [f"u{i}" for i in range(40)]
REQUESTS_PER_USER = 4
TOP = 2


def plant(cfg, champion: str, challenger: str, *, rewarded: str) -> None:
    """Night D - 1's states, and a day D log that shows, at each slot, the champion's or the
    challenger's item with probability 1/2 each (1 where they agree); ``rewarded``'s items are bought
    within minutes, the other's never. The rewarded policy's true value is TOP per request; the
    other's is the number of slots where the two agree."""
    rng = np.random.default_rng(3)
    states = [{"user_id": u, "item_seq": rng.integers(1, 31, size=5).tolist()} for u in USERS]
    storage.write_partition(user_states_table(states), cfg.layout.partition(schema.USER_STATES, NIGHT_BEFORE))
    items = data.load_item_features(
        cfg.layout.partition(schema.ITEM_INDEX, RUN_DATE), price_buckets=cfg.model.price_buckets
    )
    inputs = candidates.NightInputs(
        cfg, data.exclude_rule(cfg.score, data.night_protocol(cfg, RUN_DATE)), RUN_DATE
    )
    lists = {}
    for name, version in (("champion", champion), ("challenger", challenger)):
        model, _ = registry.load_model(f"{cfg.registry.root}/{version}")
        table = candidates.model_lists(model, version, inputs, items, top_k=TOP)(RUN_DATE, pa.array(USERS))
        lists[name] = {
            (u, r): i
            for u, r, i in zip(
                *(table[c].to_pylist() for c in (schema.USER_ID, schema.RANK, schema.ITEM_ID)), strict=True
            )
        }
    impressions, events = [], []
    for n, user in enumerate(USERS):
        for j in range(REQUESTS_PER_USER):
            shown = T0 + dt.timedelta(hours=j, minutes=n)
            for rank in range(1, TOP + 1):
                options = {lists["champion"][user, rank], lists["challenger"][user, rank]}
                pick = sorted(options)[rng.integers(len(options))]
                impressions.append(
                    {
                        schema.REQUEST_ID: f"{user}-{j}",
                        schema.USER_ID: user,
                        schema.ITEM_ID: pick,
                        schema.POSITION: rank,
                        schema.PROPENSITY: 1.0 / len(options),
                        schema.SHOWN_TIME: shown,
                    }
                )
                if pick == lists[rewarded][user, rank]:
                    events.append((shown + dt.timedelta(minutes=5), user, pick, schema.PURCHASE))
    storage.write_partition(
        impressions_table(impressions), cfg.layout.partition(schema.IMPRESSIONS, RUN_DATE)
    )
    storage.write_partition(events_table(events), cfg.layout.partition(schema.EVENTS, RUN_DATE))


@pytest.mark.parametrize("rewarded", ["champion", "challenger"])
def test_the_gate_on_ope_dr_follows_the_planted_values(night_cfg, rewarded):  # noqa: F811
    cfg = night_cfg.replace(eval={"gate_metric": "ope/dr"})
    champion = register(cfg, trained=True, run_date="2026-11-26")
    registry.set_champion(cfg.registry.root, champion)
    challenger = register(cfg, trained=False, run_date=RUN_DATE)
    plant(cfg, champion, challenger, rewarded=rewarded)

    night = gate.evaluate_night(cfg, RUN_DATE, challenger, progress=lambda _: None)

    found = night.ope["candidates"]
    assert set(found) == {"challenger", "champion", "popularity"}
    assert found[rewarded]["dr"]["value"] == pytest.approx(TOP, rel=0.15)
    assert found[rewarded]["ips"]["low"] <= TOP <= found[rewarded]["ips"]["high"]
    assert night.ope[ope_night.LOGGING]["requests"] == len(USERS) * REQUESTS_PER_USER
    assert (night.gate_metric, night.decided_by) == ("ope/dr", "ope/dr")
    assert night.promoted == (rewarded == "challenger")
    saved = json.loads(json.dumps(night.to_json()))
    assert saved["ope"]["candidates"][rewarded]["support"]["supported_share"] > 0
    text = report.render_markdown({"run_date": RUN_DATE, "evaluation": saved})
    assert "## Off-policy estimates" in text and "Gate decided by `ope/dr`" in text
    assert "| champion |" in text and "| popularity |" in text


def test_without_impressions_an_ope_gate_falls_back_to_ndcg_and_says_so(night_cfg):  # noqa: F811
    cfg = night_cfg.replace(eval={"gate_metric": "ope/snips"})
    challenger = register(cfg, trained=True, run_date=RUN_DATE)

    night = gate.evaluate_night(cfg, RUN_DATE, challenger, progress=lambda _: None)

    ndcg = schema.metric_name("ndcg", 10)
    assert night.promoted and (night.gate_metric, night.decided_by) == (ndcg, ndcg)
    assert "ope/snips is not usable tonight (the night has no impressions to estimate from)" in night.reason
    assert "ope" not in night.to_json()
    text = report.render_markdown({"run_date": RUN_DATE, "evaluation": night.to_json()})
    assert "Off-policy estimates" not in text
