"""Human-readable views of a run: the comparison table, the Markdown report, the closing summary."""

from __future__ import annotations

from typing import Any

# Columns of the comparison table: (metric name, header).
TABLE_COLUMNS = (
    ("eval/ndcg@10", "NDCG@10"),
    ("eval/hr@10", "HR@10"),
    ("eval/mrr@10", "MRR@10"),
    ("eval/purchase/ndcg@10", "purchase NDCG@10"),
    ("eval/add_to_cart/ndcg@10", "cart NDCG@10"),
    ("eval/view/ndcg@10", "view NDCG@10"),
    ("eval/coverage@10", "coverage@10"),
)


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "-"


def comparison_rows(metrics: dict[str, dict[str, float]]) -> list[list[str]]:
    """One row per model (in the order evaluated), one column per TABLE_COLUMNS entry."""
    return [[name] + [_cell(values.get(key)) for key, _ in TABLE_COLUMNS] for name, values in metrics.items()]


def comparison_table(metrics: dict[str, dict[str, float]], *, markdown: bool = False) -> str:
    header = ["model"] + [title for _, title in TABLE_COLUMNS]
    rows = comparison_rows(metrics)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*row) for row in [header, *rows])


def render_markdown(summary: dict[str, Any]) -> str:
    published = summary.get("published", {})
    evaluation = summary.get("evaluation", {})
    etl = summary.get("etl", {})
    lines = [
        f"# dqlrec run {summary['run_date']}",
        "",
        "## Outputs",
        f"- warehouse partition: `{published.get('warehouse_path')}`",
        f"- export: `{published.get('export_uri')}` ({published.get('files')} file(s), manifest and `_SUCCESS`)",
        f"- {published.get('users')} users x top {published.get('top_k')} = {published.get('rows')} rows, "
        f"model `{published.get('model_version')}`",
        "",
        "## Training data",
    ]
    for key in ("input_events", "accepted", "duplicates", "items", "new_items", "users"):
        if key in etl:
            lines.append(f"- {key.replace('_', ' ')}: {etl[key]}")
    if "quarantined" in etl:
        lines.append(f"- quarantined by rule: {etl['quarantined']}")
    for key in ("transitions_train", "transitions_validation"):
        if key in etl:
            lines.append(f"- {key.replace('_', ' ')}: {etl[key]}")
    lines += ["", "## Offline evaluation (validation window, full-catalogue ranking)", ""]
    if evaluation.get("metrics"):
        lines.append(comparison_table(evaluation["metrics"], markdown=True))
        lines += [
            "",
            f"Validation events: {evaluation.get('validation_events')}. Gate on `{evaluation.get('gate_metric')}`: "
            f"{'promoted' if evaluation.get('promoted') else 'kept the champion'} ({evaluation.get('reason')}). "
            f"Scoring model: `{evaluation.get('scoring_version')}`.",
        ]
    else:
        lines.append("No evaluation this run.")
    lines += ["", f"Config hash `{summary.get('config_hash')}`, written {summary.get('written_at')}.", ""]
    return "\n".join(lines)


def render_summary(summary: dict[str, Any]) -> str:
    """The short closing summary `make run` prints."""
    published = summary["published"]
    evaluation = summary.get("evaluation", {})
    lines = [
        "",
        f"dqlrec run {summary['run_date']}: done",
        f"  users scored   {published['users']} (top {published['top_k']}, {published['rows']} rows)",
        f"  model version  {published['model_version']}"
        + (f"  ({'promoted' if evaluation.get('promoted') else 'champion kept'}: {evaluation.get('reason')})" if evaluation else ""),
    ]
    if evaluation.get("metrics"):
        lines += ["", "  offline metrics, validation window:"]
        lines += ["    " + line for line in comparison_table(evaluation["metrics"]).splitlines()]
    lines += [
        "",
        f"  warehouse      {published['warehouse_path']}",
        f"  export         {published['export_uri']}",
        f"  report         {summary.get('report_dir', '')}",
        "",
    ]
    return "\n".join(lines)
