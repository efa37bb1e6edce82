"""Which day a run processes: a calendar date, or ``latest`` (the last loaded events partition).

A run date needs its raw ``events`` partition. One that is not loaded is bad input, never retried:
the message names the last day that is loaded, so a typo or a run one day too early is plain.
Local warehouses are listed here; the Spark job lists any filesystem with the same rule.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

from dql_model.config import Config
from dql_model.contract import schema
from dql_model.errors import MissingInput

LATEST = "latest"
"""The run date that means the last loaded events partition."""


def loaded_event_dates(cfg: Config) -> list[dt.date]:
    """Days with an ``event_date=YYYY-MM-DD`` folder in the local events table, oldest first."""
    root = Path(cfg.layout.table(schema.EVENTS))
    prefix = f"{schema.EVENT_DATE}="
    days = []
    for folder in root.glob(f"{prefix}*") if root.is_dir() else ():
        try:
            days.append(dt.date.fromisoformat(folder.name[len(prefix) :]))
        except ValueError:
            continue  # not a day's partition (a hidden staging folder): never a run date
    return sorted(days)


def resolve_run_date(cfg: Config, value: str, *, require_loaded: bool = False) -> str:
    """``value`` as YYYY-MM-DD: a calendar date as given, or ``latest`` -> the last loaded day.

    A date that is not a calendar day raises ``errors.BadDate``; ``latest`` with nothing loaded, or
    with ``require_loaded`` a date whose events partition is not loaded, raises ``MissingInput``.
    Both are bad input (not retried).
    """
    if str(value).strip().lower() != LATEST:
        day = schema.iso_date(value)
        if require_loaded:
            loaded = loaded_event_dates(cfg)
            if dt.date.fromisoformat(day) not in loaded:
                raise MissingInput(missing_run_date_message(cfg.layout.table(schema.EVENTS), day, loaded))
        return day
    days = loaded_event_dates(cfg)
    if not days:
        raise MissingInput(
            f"run_date 'latest': the events table {cfg.layout.table(schema.EVENTS)} has no event_date "
            "partitions; load events first (`dqlrec import` or `dqlrec generate`)"
        )
    return days[-1].isoformat()


def missing_run_date_message(root: str, run_date: dt.date | str, loaded: Sequence[dt.date]) -> str:
    """Why a run date cannot run: its events partition is not loaded; names the last loaded day."""
    if not loaded:
        return (
            f"no events partition for run date {run_date} under {root}: the table has no event_date "
            "partitions. Load events first (`dqlrec import` or `dqlrec generate`)."
        )
    last = max(loaded)
    hint = (
        f"the last loaded day is {last}: run that date (or run_date 'latest')"
        if str(run_date) > last.isoformat()
        else f"loaded days run from {min(loaded)} to {last}; load {run_date} and rerun it"
    )
    return f"no events partition event_date={run_date} under {root}; {hint}."
