"""`dqlrec runs`: the history of the nights, one line each, from the report folders.

Owns one concept: what a night's record is, read back from ``<reports>/run_date=D/`` (``evaluation.json``
written by the gate, ``summary.json`` by the report step): the date, the model that scored, the gate's
decision and reason, the gate metric of the challenger and the champion, the rows and users published,
the duration when the summary records one, and whether the night was degraded (training failed, the
champion scored). A night with an evaluation and no summary did not finish (``finished`` False). Only
the two small JSON files of each listed night are read; how many nights there are is bounded by
``retention.report_nights``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dql_model.config import Config
from dql_model.contract import schema
from dql_model.judging import report
from dql_model.warehouse import storage

DURATION_KEYS = ("duration_s", "seconds")
"""Where a summary may record the night's wall time (none of today's writers does: shown as '-')."""


def night_record(folder: str | Path) -> dict[str, Any]:
    """One night's record from its report folder (see the module docstring)."""
    folder = Path(folder)
    evaluation = storage.read_json(folder / report.EVALUATION)
    summary = storage.read_json(folder / report.SUMMARY)
    published = summary.get("published") or {}
    metric = evaluation.get("gate_metric") or schema.metric_name("ndcg", 10)
    metrics = evaluation.get("metrics") or {}
    duration = next((summary[k] for k in DURATION_KEYS if isinstance(summary.get(k), int | float)), None)
    if "promoted" in evaluation:
        decision = "promoted" if evaluation["promoted"] else "kept champion"
    else:
        decision = "not gated"
    return {
        "run_date": summary.get("run_date") or evaluation.get("run_date") or folder.name.partition("=")[2],
        "finished": bool(summary),
        "model_version": published.get("model_version") or evaluation.get("scoring_version"),
        "decision": decision,
        "reason": evaluation.get("reason", ""),
        "gate_metric": metric,
        "challenger": (metrics.get("challenger") or {}).get(metric),
        "champion": (metrics.get("champion") or {}).get(metric),
        "rows": published.get("rows"),
        "users": published.get("users"),
        "duration_s": duration,
        "degraded": bool(summary.get("degraded", evaluation.get("degraded", False))),
        "degraded_reason": summary.get("degraded_reason") or evaluation.get("degraded_reason") or "",
    }


def night_history(cfg: Config, *, last: int = 0) -> list[dict[str, Any]]:
    """The records of the nights with a report folder, oldest first; ``last`` > 0: only the newest that many."""
    reports = Path(cfg.layout.reports())
    folders = [
        p for _, p in sorted(storage.dated_folders(reports).items())
        if (p / report.EVALUATION).is_file() or (p / report.SUMMARY).is_file()
    ]  # fmt: skip
    if last > 0:
        folders = folders[-last:]
    return [night_record(folder) for folder in folders]


def _number(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def render(records: list[dict[str, Any]]) -> str:
    """The records as a table, one night a line; degraded nights and their reasons below it."""
    if not records:
        return "no night has written a report yet"
    metric = records[-1]["gate_metric"]
    header = (
        f"{'run date':<10}  {'model version':<20} {'gate':<14} {'challenger':>10} {'champion':>10} "
        f"{'rows':>9} {'users':>8} {'duration':>8}  notes"
    )
    lines = [f"gate metric: {metric}", header]
    for r in records:
        notes = []
        if not r["finished"]:
            notes.append("did not finish (no summary.json)")
        if r["degraded"]:
            notes.append("DEGRADED")
        duration = "-" if r["duration_s"] is None else f"{r['duration_s'] / 60:.1f} min"
        line = (
            f"{r['run_date']:<10}  {r['model_version'] or '-':<20} {r['decision']:<14} {_number(r['challenger']):>10} "
            f"{_number(r['champion']):>10} {_number(r['rows']):>9} {_number(r['users']):>8} {duration:>8}  "
            + ", ".join(notes)
        )
        lines.append(line.rstrip())
    degraded = [r for r in records if r["degraded"]]
    lines += [f"{r['run_date']}: {r['degraded_reason']}" for r in degraded]
    lines.append(f"{len(records)} nights, {len(degraded)} degraded")
    return "\n".join(lines)
