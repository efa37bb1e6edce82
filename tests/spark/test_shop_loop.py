"""The shop in the loop end to end on a tiny shop: each day's shoppers see the lists the nightly
pipeline published the night before, and the next night is built from their events."""

from __future__ import annotations

import datetime as dt
import json

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import jobs.shop_loop
from dql_model.contract import schema
from dql_model.pipeline import shop_loop
from dql_model.warehouse import storage
from tests.conftest import make_tiny_config

SETTINGS = shop_loop.LoopSettings(
    days=2, seeds=(0,), policies=("dqn", "popularity"), top_k=5, explore_slots=2, truth_replicates=1
)


@pytest.fixture(scope="module")
def loop(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("loop")
    cfg = make_tiny_config(root / "base").replace(eval={"baseline_trials": 0, "sim_users": 0})
    summary = jobs.shop_loop.run(cfg, SETTINGS, root / "loop", progress=lambda _: None)
    return cfg, root / "loop", summary


def same(a, b) -> bool:
    """Equal as JSON (tuples are lists there; a one-seed interval is NaN, which equals nothing)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def twin_config(cfg, folder, policy):
    return shop_loop.twin_config(cfg, SETTINGS, policy, 0, folder / "shops" / f"{policy}-seed0")


def test_each_day_serves_the_lists_published_the_night_before(loop):
    cfg, folder, _ = loop
    tcfg = twin_config(cfg, folder, "dqn")
    layout = tcfg.layout
    first = dt.date.fromisoformat(cfg.simulator.end_date)
    for offset in (1, 2):
        day, night_before = first + dt.timedelta(days=offset), first + dt.timedelta(days=offset - 1)
        shown = pq.read_table(layout.partition(schema.IMPRESSIONS, day.isoformat()))
        published = pq.read_table(layout.partition(schema.RECOMMENDATIONS, night_before.isoformat()))
        assert shown.num_rows > 0
        versions = set(shown.column(schema.MODEL_VERSION).to_pylist())
        assert versions == set(published.column(schema.MODEL_VERSION).to_pylist())
        listed = {(r["user_id"], r["rank"], r["item_id"]): r["propensity"] for r in published.to_pylist()}
        for row in shown.slice(0, 50).to_pylist():
            assert listed[(row["user_id"], row["position"], row["item_id"])] == row["propensity"]
        explored = pc.sum(pc.less(shown.column(schema.PROPENSITY), 1.0)).as_py()
        assert explored > 0  # the exploration slots' propensities travel to the log


def test_the_next_night_learns_from_the_served_day(loop):
    cfg, folder, _ = loop
    layout = twin_config(cfg, folder, "dqn").layout
    day1 = (dt.date.fromisoformat(cfg.simulator.end_date) + dt.timedelta(days=1)).isoformat()
    events = pq.read_table(layout.partition(schema.EVENTS, day1))
    states = pq.read_table(layout.partition(schema.USER_STATES, day1))
    last = max(states.column(schema.LAST_EVENT_TIME).to_pylist())
    assert events.num_rows > 0 and last.date().isoformat() == day1
    assert storage.read_json(layout.scoring_summary(day1))["run_date"] == day1


def test_summary_has_both_policies_paired_and_the_off_policy_check(loop):
    _, folder, summary = loop
    assert set(summary["policies"]) == {"dqn", "popularity"}
    assert summary["reference"] == "dqn" and set(summary["paired"]) == {"popularity"}
    assert len(summary["policies"]["dqn"]["return"]) == 2
    assert summary["policies"]["dqn"]["mean_night_s"] > 0
    assert set(summary["ope"]) == {"greedy", "popularity"} and summary["ope"]["greedy"]["checks"] == 2
    assert same(storage.read_json(folder / shop_loop.SUMMARY_FILE), summary)


def test_a_rerun_reuses_the_finished_twins(loop):
    cfg, folder, summary = loop
    said = []
    again = jobs.shop_loop.run(cfg, SETTINGS, folder, progress=said.append)
    assert same(again, summary)
    assert sum("reusing" in line for line in said) == 2
