"""The history of the nights: one record per night, read back from the report folders.

Owns one concept: what a night's record is, read back from ``<reports>/run_date=D/`` (``evaluation.json``
written by the gate, ``summary.json`` by the report step): the date, the model that scored, the gate's
decision and reason, the gate metric of the challenger and the champion, the rows and users published,
the training step's seconds, the duration when the summary records one, and whether the night was
degraded (training failed, the champion scored). A night with an evaluation and no summary did not
finish (``finished`` False). Only the two small JSON files of each listed night are read; how many
nights there are is bounded by ``retention.report_nights``.

``dqlrec runs`` (dql_model.pipeline.runs) lists these records; the nightly report (report.py) draws
their trend over the last nights (``trend`` gives the figures, plots.run_trend draws them).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from dql_model.contract import schema
from dql_model.judging.report_files import EVALUATION, SUMMARY
from dql_model.warehouse import storage

if TYPE_CHECKING:
    from dql_model.config import Config

DURATION_KEYS = ("duration_s", "seconds")
"""Where a summary may record the night's wall time (none of today's writers does: shown as '-')."""
TRAINING_SECONDS = "training_s"
"""The key of evaluation.json holding the training step's seconds (tasks.evaluate_and_gate writes it)."""
TREND_NIGHTS = 30
"""How many nights, tonight included, the report's trend shows."""
TREND_SERIES = ("challenger", "champion", "rows", "training_s", "promoted", "degraded")
"""The figures of ``trend``, one list each, a value per night (None where the night has none)."""


def night_record(folder: str | Path) -> dict[str, Any]:
    """One night's record from its report folder (see the module docstring)."""
    folder = Path(folder)
    evaluation = storage.read_json(folder / EVALUATION)
    summary = storage.read_json(folder / SUMMARY)
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
        "training_s": evaluation.get(TRAINING_SECONDS),
        "duration_s": duration,
        "degraded": bool(summary.get("degraded", evaluation.get("degraded", False))),
        "degraded_reason": summary.get("degraded_reason") or evaluation.get("degraded_reason") or "",
    }


def night_history(cfg: Config, *, last: int = 0) -> list[dict[str, Any]]:
    """The records of the nights with a report folder, oldest first; ``last`` > 0: only the newest that many."""
    reports = Path(cfg.layout.reports())
    folders = [
        p for _, p in sorted(storage.dated_folders(reports).items())
        if (p / EVALUATION).is_file() or (p / SUMMARY).is_file()
    ]  # fmt: skip
    if last > 0:
        folders = folders[-last:]
    return [night_record(folder) for folder in folders]


def trend(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of the trend plot: the gate metric's name, the dates in order, and per TREND_SERIES
    one value per night (the challenger's and champion's gate metric, rows published, training seconds,
    whether the gate promoted, whether the night was degraded)."""
    series = {name: [r["decision"] == "promoted" if name == "promoted" else r[name] for r in records] for name in TREND_SERIES}
    metric = records[-1]["gate_metric"] if records else schema.metric_name("ndcg", 10)
    return {"metric": metric, "run_date": [r["run_date"] for r in records], **series}
