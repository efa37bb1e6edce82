"""Run dates: a calendar day or `latest`, and a missing day named with the last loaded one."""

from __future__ import annotations

from pathlib import Path

import pytest

from dql_model import cli
from dql_model.errors import BadDate, MissingInput
from dql_model.warehouse import run_dates


def load_days(cfg, *days: str) -> None:
    for day in days:
        Path(cfg.layout.partition("events", day)).mkdir(parents=True)
    Path(cfg.layout.table("events"), ".event_date=2026-11-30.staging-1").mkdir()  # never a run date


def test_latest_is_the_last_loaded_day_and_a_day_is_checked_only_when_asked(tiny_config):
    with pytest.raises(MissingInput, match="run_date 'latest': the events table .* has no event_date partitions"):
        run_dates.resolve_run_date(tiny_config, "latest")
    load_days(tiny_config, "2026-11-02", "2026-11-20", "2026-11-19")

    assert run_dates.loaded_event_dates(tiny_config)[-1].isoformat() == "2026-11-20"
    assert run_dates.resolve_run_date(tiny_config, "latest") == "2026-11-20"
    assert run_dates.resolve_run_date(tiny_config, " LATEST ") == "2026-11-20"
    assert run_dates.resolve_run_date(tiny_config, "2026-11-25") == "2026-11-25"  # checked later, by the gate
    with pytest.raises(MissingInput, match="event_date=2026-11-21 .*; the last loaded day is 2026-11-20: run that date"):
        run_dates.resolve_run_date(tiny_config, "2026-11-21", require_loaded=True)
    with pytest.raises(MissingInput, match="loaded days run from 2026-11-02 to 2026-11-20; load 2026-11-10"):
        run_dates.resolve_run_date(tiny_config, "2026-11-10", require_loaded=True)
    with pytest.raises(BadDate):
        run_dates.resolve_run_date(tiny_config, "2026-13-45")


def test_the_run_date_command_prints_the_day_or_fails_in_one_line(tiny_config, tmp_path, monkeypatch, capsys):
    import yaml

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config.to_dict()))
    load_days(tiny_config, "2026-11-19", "2026-11-20")
    assert cli.main(["--config", str(config), "run-date"]) == 0
    assert capsys.readouterr().out.strip() == "2026-11-20"
    assert cli.main(["--config", str(config), "run-date", "2026-11-19"]) == 0
    assert capsys.readouterr().out.strip() == "2026-11-19"
    assert cli.main(["--config", str(config), "run-date", "2026-11-21"]) != 0
    assert "the last loaded day is 2026-11-20" in capsys.readouterr().err
