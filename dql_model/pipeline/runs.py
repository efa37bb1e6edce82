"""`dqlrec runs`: the history of the nights, one line each, from the report folders.

Owns the table ``dqlrec runs`` prints. What a night's record is, and how the records are read back from
the report folders, is dql_model.judging.history (the nightly report draws their trend from it too).
"""

from __future__ import annotations

from typing import Any


def _number(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def render(records: list[dict[str, Any]]) -> str:
    """The records as a table, one night a line; degraded nights and their reasons below it."""
    if not records:
        return "no night has written a report yet"
    metric = records[-1]["gate_metric"]
    header = (
        f"{'run date':<10}  {'model version':<20} {'gate':<14} {'challenger':>10} {'champion':>10} "
        f"{'rows':>9} {'users':>8} {'training':>8} {'duration':>8}  notes"
    )
    lines = [f"gate metric: {metric}", header]
    for r in records:
        notes = []
        if not r["finished"]:
            notes.append("did not finish (no summary.json)")
        if r["degraded"]:
            notes.append("DEGRADED")
        duration = "-" if r["duration_s"] is None else f"{r['duration_s'] / 60:.1f} min"
        training = "-" if r.get("training_s") is None else f"{r['training_s']:.0f} s"
        line = (
            f"{r['run_date']:<10}  {r['model_version'] or '-':<20} {r['decision']:<14} {_number(r['challenger']):>10} "
            f"{_number(r['champion']):>10} {_number(r['rows']):>9} {_number(r['users']):>8} {training:>8} {duration:>8}  "
            + ", ".join(notes)
        )
        lines.append(line.rstrip())
    degraded = [r for r in records if r["degraded"]]
    lines += [f"{r['run_date']}: {r['degraded_reason']}" for r in degraded]
    lines.append(f"{len(records)} nights, {len(degraded)} degraded")
    return "\n".join(lines)
