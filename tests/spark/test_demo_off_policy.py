"""The demo's first night shows off-policy estimates: the generated history logs impressions from the
logging policy, the first (full) ETL writes the states of the nights they were served from, and the
evaluation estimates every candidate on them."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import pytest

from dql_model.contract import schema
from dql_model.judging import ope_night
from dql_model.simulation import simulator
from dql_model.warehouse import storage
from jobs.build_training_data import run as build_training_data
from tests.conftest import make_tiny_config
from tests.reliability.night import run_steps

pytestmark = [pytest.mark.spark, pytest.mark.slow]


@pytest.fixture(scope="module")
def first_night(spark, tmp_path_factory):
    cfg = make_tiny_config(tmp_path_factory.mktemp("demo-ope")).replace(
        eval={"baseline_trials": 0, "sim_users": 0}, train={"epochs": 1}
    )
    simulator.write_shop(cfg, progress=lambda _: None)
    run_date = cfg.simulator.end_date
    etl = build_training_data(spark, cfg, dt.date.fromisoformat(run_date))
    run_steps(cfg, run_date, last="evaluate_and_gate")
    evaluation = json.loads(Path(cfg.layout.report(run_date), "evaluation.json").read_text())
    return cfg, etl, evaluation


def test_the_first_etl_writes_the_states_the_logged_days_were_served_from(first_night):
    cfg, etl, _ = first_night
    shown = sorted(p.name.split("=")[1] for p in Path(cfg.layout.table(schema.IMPRESSIONS)).iterdir())
    assert len(shown) == cfg.simulator.n_days - 1  # logged_days 7, clamped to the 6-day window's last 5
    nights = [str(dt.date.fromisoformat(day) - dt.timedelta(days=1)) for day in shown]
    assert etl["mode"] == "full" and etl["ope_user_states"] == nights
    for night in nights:
        states = storage.read_partition(cfg.layout.partition(schema.USER_STATES, night)).to_pandas()
        # As of the night: no event after it, and the users with events by then.
        assert (states[schema.LAST_EVENT_TIME].dt.date.astype(str) <= night).all()
        assert 0 < len(states) <= cfg.simulator.n_users


def test_the_first_night_estimates_every_candidate_from_the_logged_impressions(first_night):
    cfg, _, evaluation = first_night
    ope = evaluation["ope"]
    assert ope["skipped_days"] == [] and ope["rejected"] == []
    assert ope["rows_used"] == ope["accepted_rows"] == ope["input_rows"] > 0
    assert len(ope["days"]) == cfg.simulator.n_days - 1
    assert ope[ope_night.LOGGING]["requests"] > 0 and ope[ope_night.LOGGING]["value"] >= 0
    assert "popularity" in ope["candidates"] and len(ope["candidates"]) >= 2  # the challenger too
    for name, found in ope["candidates"].items():
        for estimator in schema.OPE_ESTIMATORS:
            assert math.isfinite(found[estimator]["value"]), (name, estimator)
        assert found["ess"] > 0, name
    # The logging policy's exploited slots are the popular list: a popularity candidate matches many of them.
    assert ope["candidates"]["popularity"]["support"]["matched_share"] > 0


def test_the_estimates_are_shown_by_dqlrec_evaluate_and_in_the_closing_summary(first_night, tmp_path, capsys):
    from dql_model import cli
    from dql_model.judging import report

    cfg, _, evaluation = first_night
    config = tmp_path / "config.json"
    config.write_text(json.dumps(cfg.to_dict()))
    assert cli.main(["--config", str(config), "evaluate", "--run-date", cfg.simulator.end_date]) == 0
    printed = capsys.readouterr().out
    assert "off-policy estimates (impressions):" in printed and "popularity" in printed
    assert "Logging policy (on-policy):" in printed
    published = {"users": 1, "top_k": 5, "rows": 5, "model_version": "v", "warehouse_path": "w", "export_uri": "e"}
    closing = report.render_summary(
        {"run_date": cfg.simulator.end_date, "published": published, "evaluation": evaluation}
    )
    header = f"off-policy estimates, reward per request on {cfg.simulator.n_days - 1} days of impressions"
    assert header in closing
    block = closing[closing.index(header) :].splitlines()  # the offline table above has a popularity row too
    popularity = next(line for line in block if line.strip().startswith("popularity"))
    ips = evaluation["ope"]["candidates"]["popularity"]["ips"]["value"]
    assert f"{ips:.4f}" in popularity
