"""The task adapters' typed run options: what a manual trigger may change, and nothing else."""

from __future__ import annotations

import pytest

from dql_model.config import Config, ConfigError
from dql_model.pipeline.tasks import RunOptions


def test_params_become_typed_options_and_apply_on_top_of_the_config():
    options = RunOptions.from_params({"run_date": "2026-11-27", "top_k": 7, "force_cpu": True, "model_version": ""})
    assert options == RunOptions(top_k=7, force_cpu=True)
    cfg = options.apply(Config())
    assert (cfg.score.top_k, cfg.train.device) == (7, "cpu")
    assert RunOptions().apply(Config()) == Config()  # a scheduled run changes nothing


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"topk": 5}, r"unknown run option\(s\) \['topk'\]; the options are \['force_cpu', 'full_rebuild', 'model_version'"),
        ({"top_k": "5"}, "run option top_k='5': expected int"),
        ({"top_k": True}, "run option top_k=True: expected int"),
        ({"skip_training": "yes"}, "run option skip_training='yes': expected bool"),
    ],
)
def test_a_misspelt_or_mistyped_option_is_refused(params, message):
    with pytest.raises(ConfigError, match=message):
        RunOptions.from_params(params)


def test_a_pinned_model_version_must_be_a_registry_folder(tiny_config):
    from dql_model.pipeline import tasks

    with pytest.raises(ConfigError, match="run option model_version: '../../etc' is not a model version name"):
        tasks.evaluate_and_gate("2026-11-27", {}, options=RunOptions(model_version="../../etc"), cfg=tiny_config)
    with pytest.raises(FileNotFoundError, match="pinned model version 20261127-cafe1234 is not in the registry"):
        tasks.evaluate_and_gate("2026-11-27", {}, options=RunOptions(model_version="20261127-cafe1234"), cfg=tiny_config)


def test_full_rebuild_is_a_run_option_that_only_the_etl_job_takes():
    from jobs.build_training_data import parse_args

    options = RunOptions.from_params({"run_date": "2026-11-27", "full_rebuild": True})
    assert options == RunOptions(full_rebuild=True)
    assert options.job_args("score_recommendations") == []
    assert parse_args(["--run-date", "2026-11-27", *options.job_args("build_training_data")]).full_rebuild is True
    assert parse_args(["--run-date", "2026-11-27", *RunOptions().job_args("build_training_data")]).full_rebuild is False
    assert parse_args(["--run-date", "2026-11-27", "--full-rebuild"]).full_rebuild is True  # by hand, as before
    with pytest.raises(SystemExit):
        parse_args(["--run-date", "2026-11-27", "--full-rebuild", "sometimes"])


def test_the_training_step_splits_its_budget_between_the_challenger_and_the_baseline(tiny_config, monkeypatch):
    """train.max_minutes bounds the whole step: half for the challenger, half over the baseline's trials."""
    from dql_model.pipeline import tasks

    budgets = {}

    def challenger(cfg, run_date, progress):
        budgets["challenger"] = cfg.train.max_minutes
        return {"version": "v1", "device": "cpu", "seconds": 0.0, "epochs": 3, "best_epoch": 2, "stopped_by": "time budget"}

    def baseline(cfg, run_date, progress):
        budgets["baseline trial"] = cfg.train.max_minutes
        return "supervised-x"

    monkeypatch.setattr("dql_model.learning.train.train_challenger", challenger)
    monkeypatch.setattr("dql_model.learning.supervised_baseline.train_and_save", baseline)
    cfg = tiny_config.replace(train={"max_minutes": 40}, eval={"baseline_trials": 4})
    assert tasks.train_model("2026-11-27", cfg=cfg)["baseline"] == "supervised-x"
    assert budgets == {"challenger": 20.0, "baseline trial": 5.0}
    unlimited = tasks.training_budgets(cfg.replace(train={"max_minutes": 0}))
    assert [c.train.max_minutes for c in unlimited] == [0.0, 0.0]
