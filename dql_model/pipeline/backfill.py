"""Backfill: the nights of a date range, oldest first, each through the step runner of `dqlrec task`.

Owns one concept: which nights of a range still need to run, in which order, and where a stopped
backfill resumes. A night is the whole step order (``dql_model.contract.steps.STEPS``), run by the
caller's ``run_night``; each step holds its run date's lock (``dql_model.warehouse.locks``), so a
backfill and a scheduled run of the same date never write it at once.

Resumable: a night whose published output is complete (``completed``: the export's ``_SUCCESS`` and
manifest, the warehouse partition with the manifest's row count, the run's ``summary.json``) is
skipped unless ``rerun``. So the same command, run again after a failure, goes on from the first
night that did not finish. Nights run in date order because each builds on the one before (the item
index, incremental user states, the champion that warm-starts training); the first failed night
stops the backfill (``BackfillStopped``), since the nights after it would build on a missing one.

A full rebuild (``RunOptions.full_rebuild``) is applied to the first night that runs only: the
nights after it update its states incrementally, which gives the same tables
(``jobs/user_states.py``) for a fraction of the work.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dql_model.config import Config
from dql_model.contract import schema
from dql_model.errors import BadDate
from dql_model.pipeline.tasks import DEFAULTS, RunOptions
from dql_model.warehouse import storage

RunNight = Callable[[str, RunOptions], Any]
"""Runs every step of one night for a run date with these options; raises when a step fails."""


class BackfillStopped(RuntimeError):
    """A night of the backfill failed; the message names it, its error, and how to resume."""

    def __init__(self, message: str, *, failed: str, done: list[str]):
        super().__init__(message)
        self.failed = failed
        self.done = done


def night_dates(first: str, last: str) -> list[str]:
    """Every day from ``first`` to ``last`` (both included), oldest first."""
    start, end = dt.date.fromisoformat(schema.iso_date(first)), dt.date.fromisoformat(schema.iso_date(last))
    if start > end:
        raise BadDate(f"backfill range {first} .. {last} is empty: --from must not be after --to")
    return [(start + dt.timedelta(days=n)).isoformat() for n in range((end - start).days + 1)]


def completed(cfg: Config, run_date: str) -> str | None:
    """What the night published, when its output is complete (see the module docstring); else None.

    Reads only the export's manifest, the Parquet footers of the warehouse partition and the run's
    summary: the check costs the same whatever the shop's size.
    """
    import pyarrow.parquet as pq

    from dql_model.judging import report
    from dql_model.publishing import publish

    try:
        manifest = publish.read_manifest(cfg.publish.export_uri, run_date)
    except (publish.ExportError, FileNotFoundError, ValueError):
        return None
    files = sorted(Path(cfg.layout.partition(schema.RECOMMENDATIONS, run_date)).glob("*.parquet"))
    rows = sum(pq.read_metadata(file).num_rows for file in files)
    summary = storage.read_json(Path(cfg.layout.report(run_date)) / report.SUMMARY)
    if not files or rows != manifest.row_count or summary.get("run_date") != run_date:
        return None
    degraded = " (degraded: the champion scored)" if summary.get("degraded") else ""
    return f"published {rows} rows for {manifest.user_count} users with {manifest.model_version}{degraded}"


def run_backfill(
    first: str,
    last: str,
    *,
    cfg: Config,
    run_night: RunNight,
    options: RunOptions = DEFAULTS,
    rerun: bool = False,
    is_complete: Callable[[Config, str], str | None] = completed,
    progress: Callable[[str], object] = print,
) -> dict[str, list[str]]:
    """Run the nights ``first`` .. ``last`` in date order (see the module docstring); returns the
    dates run and skipped. Raises BackfillStopped at the first night that fails."""
    dates = night_dates(first, last)
    ran: list[str] = []
    skipped: list[str] = []
    seconds = 0.0
    for number, run_date in enumerate(dates, start=1):
        where = f"backfill [{number}/{len(dates)}] {run_date}"
        done = None if rerun else is_complete(cfg, run_date)
        if done:
            skipped.append(run_date)
            progress(f"{where}: skipped, already {done} (--rerun runs it again)")
            continue
        night_options = options if not ran else dataclasses.replace(options, full_rebuild=False)
        started = time.perf_counter()
        try:
            run_night(run_date, night_options)
        except Exception as error:
            progress(f"{where}: failed after {time.perf_counter() - started:.0f} s")
            raise BackfillStopped(
                f"backfill stopped at {run_date} (night {number} of {len(dates)}): {type(error).__name__}: {error}\n"
                f"{len(ran)} nights ran and {len(skipped)} were already complete before it; the nights after it "
                f"did not run. Fix the cause, then resume with `dqlrec backfill --from {run_date} --to {last}` and "
                "the same options (or rerun the same command: complete nights are skipped).",
                failed=run_date,
                done=ran + skipped,
            ) from error
        took = time.perf_counter() - started
        seconds += took
        ran.append(run_date)
        left = len(dates) - number
        eta = f"; {left} nights left, at most ~{seconds / len(ran) * left / 60:.0f} min" if left else ""
        outcome = is_complete(cfg, run_date) or "its output is not complete (see the steps' lines above)"
        progress(f"{where}: done in {took:.0f} s, {outcome}{eta}")
    progress(
        f"backfill {first} .. {last}: {len(ran)} nights run, {len(skipped)} already complete, in {seconds / 60:.1f} min"
    )
    return {"ran": ran, "skipped": skipped}
