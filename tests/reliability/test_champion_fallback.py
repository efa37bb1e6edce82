"""When training fails the champion scores, and the run says it is degraded everywhere a reader looks:
the gate's result, the scoring result, evaluation.json, the published result, the asset event's extra,
summary.json, report.md and the closing summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dql_model import cli
from dql_model.contract import schema
from dql_model.judging import report
from dql_model.learning import registry
from dql_model.pipeline import tasks
from tests.reliability.conftest import DAY2, config_file, published
from tests.reliability.night import run_steps

INJECTED = "CUDA error: out of memory (injected)"


@pytest.fixture
def training_fails(monkeypatch):
    import dql_model.learning.train

    def fail(cfg, run_date, *, progress=print):
        raise RuntimeError(INJECTED)

    monkeypatch.setattr(dql_model.learning.train, "train_challenger", fail)


def served(night) -> tuple[str, str]:
    """(the champion, the version that scores for it: its refit on train + validation, train.refit auto)."""
    champion = registry.champion_version(night.registry.root)
    return champion, registry.refit_of(night.registry.root, champion) or champion


def test_training_raises_the_champion_scores_and_the_run_is_degraded_everywhere(night, training_fails):
    champion, scoring = served(night)
    with pytest.raises(RuntimeError, match="out of memory"):
        tasks.train_model(DAY2, cfg=night)
    # As the DAG runs it: the gate's trigger rule is all_done, and a failed task leaves no XCom.
    gate = tasks.evaluate_and_gate(DAY2, {}, cfg=night)
    assert gate["scoring_version"] == champion and gate["promoted"] is False
    assert gate["degraded"] is True
    assert gate["degraded_reason"] == (
        f"train_model failed: RuntimeError: {INJECTED}; the champion scored instead"
    )
    scored = tasks.score_users(DAY2, gate, cfg=night)
    assert (scored["model_version"], scored["degraded"]) == (scoring, True)
    validated = tasks.validate_recommendations(DAY2, scored, cfg=night)
    done = tasks.publish_recommendations(DAY2, validated, cfg=night)
    extra = tasks.asset_extra(done)
    assert extra["degraded"] is True and INJECTED in extra["degraded_reason"] and extra["model_version"] == scoring
    tasks.write_report(DAY2, done, cfg=night)

    folder = Path(night.layout.report(DAY2))
    evaluation = json.loads((folder / report.EVALUATION).read_text())
    summary = json.loads((folder / report.SUMMARY).read_text())
    assert evaluation["degraded"] is summary["degraded"] is summary["published"]["degraded"] is True
    assert INJECTED in evaluation["reason"]  # the gate's own reason names the failure too
    assert f"**Degraded run**: train_model failed: RuntimeError: {INJECTED}" in (folder / report.MARKDOWN).read_text()
    assert f"done, DEGRADED: train_model failed: RuntimeError: {INJECTED}" in report.render_summary(summary)
    assert set(published(night, DAY2).column(schema.MODEL_VERSION).unique().to_pylist()) == {scoring}


def test_the_cli_lets_the_champion_score_after_a_failed_training(night, training_fails, tmp_path, capsys):
    _, scoring = served(night)
    code = cli.main(["--config", str(config_file(night, tmp_path)), "task", "write_report", "--run-date", DAY2])
    assert code == 0
    assert "train_model failed" in capsys.readouterr().err
    summary = json.loads((Path(night.layout.report(DAY2)) / report.SUMMARY).read_text())
    assert summary["degraded"] is True and INJECTED in summary["degraded_reason"]
    assert summary["published"]["model_version"] == scoring


def test_a_healthy_night_and_a_deliberate_skip_are_not_degraded(night):
    run_steps(night, DAY2)
    summary = json.loads((Path(night.layout.report(DAY2)) / report.SUMMARY).read_text())
    assert summary["degraded"] is False and summary["degraded_reason"] == ""
    # train.refit auto: the tiny night ends at its epoch cap with time to spare, so its refit publishes
    challenger, refit = served(night)
    assert refit != challenger and summary["published"]["model_version"] == refit
    said = (Path(night.layout.report(DAY2)) / report.MARKDOWN).read_text()
    assert f"Challenger's refit on train + validation: `{refit}`, " in said and "s of the time budget left)." in said
    assert tasks.asset_extra(summary["published"])["degraded"] is False
    skipped = tasks.evaluate_and_gate(DAY2, tasks.train_model(DAY2, options=tasks.RunOptions(skip_training=True), cfg=night),
                                      options=tasks.RunOptions(skip_training=True), cfg=night)  # fmt: skip
    assert skipped["degraded"] is False
