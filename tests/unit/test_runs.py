"""The nights' history (dql_model.judging.history) read back from a few fake report folders: `dqlrec runs`
(dql_model.pipeline.runs) and the report's trend over the last nights."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import yaml

from dql_model import cli
from dql_model.config import Config
from dql_model.judging import history, plots, report
from dql_model.warehouse import storage

METRIC = "eval/ndcg@10"


def write_night(cfg: Config, run_date: str, *, promoted: bool, challenger: float | None, champion: float,
                degraded: str = "", finished: bool = True, rows: int = 30, training_s: float | None = None) -> None:  # fmt: skip
    """A night's report folder as the gate and the report step leave it."""
    folder = Path(cfg.layout.report(run_date))
    version = f"{run_date.replace('-', '')}-abcd1234"
    metrics = {"champion": {METRIC: champion}, "popularity": {METRIC: 0.05}}
    if challenger is not None:
        metrics["challenger"] = {METRIC: challenger}
    evaluation = {
        "run_date": run_date, "metrics": metrics, "promoted": promoted, "gate_metric": METRIC,
        "reason": "challenger better" if promoted else "challenger worse by more than the tolerance",
        "scoring_version": version if promoted else "20261101-00000000",
        "degraded": bool(degraded), "degraded_reason": degraded, history.TRAINING_SECONDS: training_s,
    }  # fmt: skip
    storage.write_json_atomic(folder / report.EVALUATION, evaluation)
    if finished:
        published = {"run_date": run_date, "rows": rows, "users": rows // 5, "top_k": 5,
                     "model_version": evaluation["scoring_version"], "warehouse_path": "w", "export_uri": "e"}  # fmt: skip
        report.write_run_report(cfg, run_date, published, written_at=datetime(2026, 11, 28, tzinfo=UTC))


def nights(tmp_path: Path) -> Config:
    cfg = Config().replace(warehouse={"root": str(tmp_path / "warehouse")})
    write_night(cfg, "2026-11-24", promoted=True, challenger=0.21, champion=0.20, training_s=41.5)
    write_night(cfg, "2026-11-25", promoted=False, challenger=0.15, champion=0.21, rows=25, training_s=38.0)
    write_night(cfg, "2026-11-26", promoted=False, challenger=None, champion=0.21,
                degraded="train_model failed: RuntimeError: CUDA out of memory; the champion scored instead")  # fmt: skip
    write_night(cfg, "2026-11-27", promoted=True, challenger=0.22, champion=0.21, finished=False)
    return cfg


def test_the_history_lists_each_night_with_its_decision_metrics_rows_and_degraded_flag(tmp_path):
    records = history.night_history(nights(tmp_path))
    assert [r["run_date"] for r in records] == ["2026-11-24", "2026-11-25", "2026-11-26", "2026-11-27"]
    first, kept, degraded, unfinished = records
    assert (first["decision"], first["model_version"], first["challenger"], first["champion"]) == (
        "promoted", "20261124-abcd1234", 0.21, 0.20
    )  # fmt: skip
    assert (kept["decision"], kept["model_version"], kept["rows"], kept["users"]) == (
        "kept champion", "20261101-00000000", 25, 5
    )  # fmt: skip
    assert [r["training_s"] for r in records] == [41.5, 38.0, None, None]
    assert degraded["degraded"] and degraded["challenger"] is None and "CUDA out of memory" in degraded["degraded_reason"]
    assert not first["degraded"] and first["finished"] and first["duration_s"] is None
    assert not unfinished["finished"] and unfinished["rows"] is None
    assert [r["run_date"] for r in history.night_history(nights(tmp_path / "again"), last=2)] == ["2026-11-26", "2026-11-27"]


def test_the_runs_command_prints_a_table_or_json(tmp_path, capsys):
    cfg = nights(tmp_path)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))

    assert cli.main(["--config", str(path), "runs", "--last", "3"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"gate metric: {METRIC}"
    assert lines[2].startswith("2026-11-25  20261101-00000000    kept champion")
    assert "DEGRADED" in lines[3] and "did not finish" in lines[4]
    assert "2026-11-26: train_model failed: RuntimeError: CUDA out of memory" in out
    assert lines[-1] == "3 nights, 1 degraded"

    assert cli.main(["--config", str(path), "runs", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [r["decision"] for r in printed] == ["promoted", "kept champion", "kept champion", "promoted"]


def test_no_reports_yet_is_said_plainly(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(Config().replace(warehouse={"root": str(tmp_path / "w")}).to_dict()))
    assert cli.main(["--config", str(path), "runs"]) == 0
    assert capsys.readouterr().out.strip() == "no night has written a report yet"


def test_each_report_draws_the_trend_of_the_nights_so_far_one_point_per_night_in_order(tmp_path):
    cfg = nights(tmp_path)  # 2026-11-27 did not finish: the newest report is 2026-11-26's
    folder = Path(cfg.layout.report("2026-11-26"))

    figures = json.loads((folder / report.TREND_FILE).read_text())
    assert figures == {
        "metric": METRIC,
        "run_date": ["2026-11-24", "2026-11-25", "2026-11-26"],
        "challenger": [0.21, 0.15, None],
        "champion": [0.20, 0.21, 0.21],
        "rows": [30, 25, 30],
        "training_s": [41.5, 38.0, None],
        "promoted": [True, False, False],
        "degraded": [False, False, True],
    }
    first = json.loads((Path(cfg.layout.report("2026-11-24")) / report.TREND_FILE).read_text())
    assert first["run_date"] == ["2026-11-24"]  # each night's report shows the nights up to it
    plot = folder / plots.RUN_TREND
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    markdown = (folder / report.MARKDOWN).read_text()
    assert f"![{plots.RUN_TREND}]({plots.RUN_TREND})" in markdown
    assert "3 night(s) from 2026-11-24 to 2026-11-26: 1 promoted a challenger, 1 degraded" in markdown


def test_the_trend_shows_only_the_last_nights(tmp_path, monkeypatch):
    monkeypatch.setattr(history, "TREND_NIGHTS", 2)
    cfg = nights(tmp_path)
    figures = json.loads((Path(cfg.layout.report("2026-11-26")) / report.TREND_FILE).read_text())
    assert figures["run_date"] == ["2026-11-25", "2026-11-26"] and figures["rows"] == [25, 30]
