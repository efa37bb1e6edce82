"""`dqlrec backfill`: nights in date order, complete nights skipped, the first failure stops it, resumable."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from dql_model import cli
from dql_model.contract import schema
from dql_model.errors import BadDate
from dql_model.judging import report
from dql_model.pipeline import backfill
from dql_model.pipeline.tasks import RunOptions
from dql_model.publishing import publish
from dql_model.warehouse import storage

NIGHTS = ["2026-11-25", "2026-11-26", "2026-11-27"]


class Nights:
    """A recording night runner: what ran, in which order, with which options; a failing date raises."""

    def __init__(self, complete=(), failing=()):
        self.complete = set(complete)
        self.failing = set(failing)
        self.ran: list[tuple[str, bool]] = []

    def __call__(self, run_date: str, options: RunOptions) -> None:
        self.ran.append((run_date, options.full_rebuild))
        if run_date in self.failing:
            raise RuntimeError(f"Spark job build_training_data failed for run date {run_date}")
        self.complete.add(run_date)

    def is_complete(self, cfg, run_date: str) -> str | None:
        return "published 3 rows" if run_date in self.complete else None


def backfill_with(nights: Nights, cfg, lines: list[str], **kwargs) -> dict:
    return backfill.run_backfill(
        NIGHTS[0], NIGHTS[-1], cfg=cfg, run_night=nights, is_complete=nights.is_complete, progress=lines.append,
        **kwargs,
    )  # fmt: skip


def test_nights_run_oldest_first_and_complete_ones_are_skipped(tiny_config):
    nights, lines = Nights(complete={"2026-11-26"}), []
    done = backfill_with(nights, tiny_config, lines, options=RunOptions(full_rebuild=True))
    # the full rebuild goes to the first night that runs; the next one builds on it incrementally
    assert nights.ran == [("2026-11-25", True), ("2026-11-27", False)]
    assert done == {"ran": ["2026-11-25", "2026-11-27"], "skipped": ["2026-11-26"]}
    assert [line.split(":")[0] for line in lines[:3]] == [f"backfill [{n}/3] {d}" for n, d in enumerate(NIGHTS, 1)]
    assert "skipped, already published 3 rows" in lines[1] and "done in" in lines[2]
    assert lines[3].startswith("backfill 2026-11-25 .. 2026-11-27: 2 nights run, 1 already complete")


def test_the_first_failed_night_stops_the_backfill_and_the_same_command_resumes_it(tiny_config):
    nights, lines = Nights(failing={"2026-11-26"}), []
    with pytest.raises(backfill.BackfillStopped) as stopped:
        backfill_with(nights, tiny_config, lines)
    assert [d for d, _ in nights.ran] == ["2026-11-25", "2026-11-26"]  # 2026-11-27 never started
    message = str(stopped.value)
    assert message.startswith("backfill stopped at 2026-11-26 (night 2 of 3): RuntimeError: Spark job")
    assert "dqlrec backfill --from 2026-11-26 --to 2026-11-27" in message
    assert stopped.value.failed == "2026-11-26" and stopped.value.done == ["2026-11-25"]
    assert lines[-1].startswith("backfill [2/3] 2026-11-26: failed after")

    nights.failing.clear()
    nights.ran.clear()
    done = backfill_with(nights, tiny_config, [])
    assert done == {"ran": ["2026-11-26", "2026-11-27"], "skipped": ["2026-11-25"]}

    nights.ran.clear()
    assert backfill_with(nights, tiny_config, [], rerun=True)["ran"] == NIGHTS  # --rerun: every night again


def test_an_empty_or_impossible_range_is_refused(tiny_config):
    with pytest.raises(BadDate, match="backfill range 2026-11-27 .. 2026-11-25 is empty"):
        backfill.run_backfill("2026-11-27", "2026-11-25", cfg=tiny_config, run_night=Nights())
    with pytest.raises(BadDate):
        backfill.night_dates("2026-11-25", "2026-02-30")
    assert backfill.night_dates("2024-02-28", "2024-03-01") == ["2024-02-28", "2024-02-29", "2024-03-01"]


def published_night(cfg, run_date: str, *, users: int = 4) -> pa.Table:
    """A night's published output as the publish and report steps leave it."""
    rows = [
        {
            schema.USER_ID: f"u{u}", schema.RANK: 1, schema.ITEM_ID: "i1", schema.SCORE: 1.0,
            schema.SOURCE: schema.SOURCE_DQN, schema.PROPENSITY: 1.0, schema.MODEL_VERSION: "v1",
            schema.GENERATED_AT: datetime(2026, 11, 28, tzinfo=UTC),
        }
        for u in range(users)
    ]  # fmt: skip
    table = pa.Table.from_pylist(rows, schema=schema.arrow_schema(schema.RECOMMENDATIONS))
    storage.write_partition(table, cfg.layout.partition(schema.RECOMMENDATIONS, run_date))
    publish.export(
        table, uri=cfg.publish.export_uri, run_date=run_date, model_version="v1", config_hash="c", rows_per_file=10
    )
    return table


def test_a_night_is_complete_when_its_export_warehouse_partition_and_report_agree(tiny_config):
    run_date = "2026-11-27"
    assert backfill.completed(tiny_config, run_date) is None  # nothing yet
    published_night(tiny_config, run_date)
    assert backfill.completed(tiny_config, run_date) is None  # published, but the report step did not finish
    summary = Path(tiny_config.layout.report(run_date)) / report.SUMMARY
    storage.write_json_atomic(summary, {"run_date": run_date, "degraded": False})
    assert backfill.completed(tiny_config, run_date) == "published 4 rows for 4 users with v1"

    table = storage.read_partition(tiny_config.layout.partition(schema.RECOMMENDATIONS, run_date))
    storage.write_partition(table.slice(0, 2), tiny_config.layout.partition(schema.RECOMMENDATIONS, run_date))
    assert backfill.completed(tiny_config, run_date) is None  # the warehouse disagrees with the manifest

    published_night(tiny_config, run_date)
    (Path(tiny_config.publish.export_uri) / f"{schema.RUN_DATE}={run_date}" / publish.SUCCESS_NAME).unlink()
    assert backfill.completed(tiny_config, run_date) is None  # an interrupted export


def test_backfill_command_refuses_a_reversed_range_and_has_help(capsys, tiny_config, tmp_path):
    config_file = tmp_path / "my.yaml"
    config_file.write_text(yaml.safe_dump(tiny_config.to_dict()))
    code = cli.main(["--config", str(config_file), "backfill", "--from", "2026-11-27", "--to", "2026-11-26"])
    assert code == 2 and "backfill range 2026-11-27 .. 2026-11-26 is empty" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        cli.main(["backfill", "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and all(flag in out for flag in ("--from", "--to", "--rerun", "--full-rebuild"))


@pytest.mark.slow
def test_two_real_nights_then_a_rerun_of_the_command_skips_both(capsys, tiny_config, tmp_path):
    """The tiny shop's last two nights through every step (Spark job, training, gate, publish, report)."""
    config_file = tmp_path / "my.yaml"
    config_file.write_text(yaml.safe_dump(tiny_config.to_dict()))
    argv = ["--config", str(config_file), "backfill", "--from", "2026-11-26", "--to", "2026-11-27", "--json"]
    assert cli.main(["--config", str(config_file), "generate"]) == 0
    capsys.readouterr()

    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.rindex("{") :]) == {"ran": ["2026-11-26", "2026-11-27"], "skipped": []}
    assert "[dqlrec] backfill [1/2] 2026-11-26: done in" in out and "[dqlrec] backfill [2/2] 2026-11-27: done in" in out
    for run_date in ("2026-11-26", "2026-11-27"):
        assert backfill.completed(tiny_config, run_date), run_date
        assert publish.read_export(tiny_config.publish.export_uri, run_date).num_rows > 0

    assert cli.main(argv) == 0  # the same command again: nothing left to run
    out = capsys.readouterr().out
    assert json.loads(out[out.rindex("{") :]) == {"ran": [], "skipped": ["2026-11-26", "2026-11-27"]}
    assert out.count("skipped, already published") == 2
