"""A run's report: evaluation.json with its plots, summary.json, report.md and the closing summary.

Files, in ``cfg.layout.report(run_date)``: ``evaluation.json`` (``gate.NightEvaluation.to_json``
plus the plot names, written by the gate task), the PNG plots, ``summary.json`` (what was
published, the evaluation, the ETL counts) and ``report.md`` (written by the report task).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dql_model.contract.schema import (
    ADD_TO_CART,
    NEW_ITEMS,
    OPE_ESTIMATORS,
    PURCHASE,
    RATING,
    VIEW,
    metric_event_type,
    metric_name,
    metric_prefix,
)
from dql_model.judging.report_files import EVALUATION, MARKDOWN, SUMMARY, TRAINING_FAILURE, TREND_FILE
from dql_model.scoring import masks, retrieval

if TYPE_CHECKING:
    from dql_model.config import Config


def write_evaluation(
    evaluation: dict[str, Any], folder: str, *, progress: Callable[[str], object] = print
) -> dict[str, Any]:
    """The plots of a night's evaluation, then evaluation.json (which names them) in ``folder``."""
    from dql_model.judging import plots
    from dql_model.warehouse import storage

    evaluation = dict(evaluation)
    try:
        evaluation["plots"] = plots.write_plots(evaluation, folder)
    except Exception as error:  # a figure must not hold back tonight's recommendations
        progress(f"warning: plots not written: {error!r}")
    storage.write_json_atomic(Path(folder) / EVALUATION, evaluation)
    return evaluation


def record_training_failure(folder: str, error: BaseException | None) -> None:
    """Note in the run's report folder why training failed (None: clear the note, training starts)."""
    from dql_model.warehouse import storage

    path = Path(folder) / TRAINING_FAILURE
    if error is None:
        path.unlink(missing_ok=True)
    else:
        storage.write_json_atomic(path, {"error": f"{type(error).__name__}: {error}"})


def degraded_status(folder: str, *, trained: bool, deliberate: bool, error: str = "") -> dict[str, Any]:
    """``{"degraded": bool, "degraded_reason": str}`` of a night whose gate ran.

    Degraded: training was meant to run and did not produce a challenger, so the champion scores
    tonight (a challenger that loses the gate, a pinned model or skip_training are not degraded).
    The reason is the training error: ``error``, else the note train_model left, else the sign
    that it died without a word.
    """
    from dql_model.warehouse import storage

    if trained or deliberate:
        return {"degraded": False, "degraded_reason": ""}
    error = error or storage.read_json(Path(folder) / TRAINING_FAILURE).get("error", "")
    why = error or "it did not finish and recorded no error (killed, or timed out?)"
    return {"degraded": True, "degraded_reason": f"train_model failed: {why}; the champion scored instead"}


def run_status(folder: str) -> dict[str, Any]:
    """The degraded flag and reason the gate wrote into evaluation.json (not degraded if none)."""
    from dql_model.warehouse import storage

    evaluation = storage.read_json(Path(folder) / EVALUATION)
    return {key: evaluation.get(key, default) for key, default in (("degraded", False), ("degraded_reason", ""))}


def write_run_report(cfg: Config, run_date: str, published: dict[str, Any], *, written_at: datetime) -> str:
    """summary.json and report.md of a run, beside its evaluation.json; returns the folder."""
    from dql_model.warehouse import storage

    folder = cfg.layout.report(run_date)
    etl = storage.read_json(cfg.layout.etl_summary(run_date)).get("counts", {})
    scored = storage.read_json(cfg.layout.scoring_summary(run_date))
    summary = {
        "run_date": run_date,
        **run_status(folder),
        "published": published,
        "masks": {key: scored.get(key, {}) for key in ("masked", "short_lists")},
        "retrieval": scored.get("retrieval", {}),
        "evaluation": storage.read_json(Path(folder) / EVALUATION),
        "etl": etl,
        "config_hash": cfg.hash(),
        "written_at": written_at.isoformat(timespec="seconds"),
    }
    storage.write_json_atomic(Path(folder) / SUMMARY, summary)
    (Path(folder) / MARKDOWN).write_text(render_markdown(summary) + trend_section(cfg, folder))
    return folder


def trend_section(cfg: Config, folder: str, *, progress: Callable[[str], object] = print) -> str:
    """The run history over the last nights, tonight included: its figures (TREND_FILE) and their
    plot (plots.RUN_TREND) written into ``folder``; returns the report's section showing them."""
    from dql_model.judging import history, plots
    from dql_model.warehouse import storage

    figures = history.trend(history.night_history(cfg, last=history.TREND_NIGHTS))
    storage.write_json_atomic(Path(folder) / TREND_FILE, figures)
    dates = figures["run_date"]
    lines = ["## Trend over the last nights", ""]
    try:
        plots.run_trend(figures, Path(folder) / plots.RUN_TREND)
        lines += [f"![{plots.RUN_TREND}]({plots.RUN_TREND})", ""]
    except Exception as error:  # a figure must not hold back tonight's report
        progress(f"warning: trend plot not written: {error!r}")
    promoted, degraded = sum(figures["promoted"]), sum(figures["degraded"])
    lines += [
        f"{len(dates)} night(s) from {dates[0]} to {dates[-1]}: {promoted} promoted a challenger, {degraded} degraded; "
        f"figures in `{TREND_FILE}`, every night in `dqlrec runs`.",
        "",
    ]
    return "\n".join(lines)


# Columns of the comparison table: (metric name, header).
TABLE_COLUMNS = (
    (metric_name("ndcg", 10), "NDCG@10"),
    (metric_name("hr", 10), "HR@10"),
    (metric_name("mrr", 10), "MRR@10"),
    (metric_name("ndcg", 10, PURCHASE), "purchase NDCG@10"),
    (metric_name("ndcg", 10, ADD_TO_CART), "cart NDCG@10"),
    (metric_name("ndcg", 10, VIEW), "view NDCG@10"),
    (metric_name("ndcg", 10, RATING), "rating NDCG@10"),
    (metric_name("coverage", 10), "coverage@10"),
    (metric_name("purchased", 10), "bought@10"),
)
"""A column whose metric no model has (an event type the data lacks), or of an event type the published
lists cannot score (``evaluation.json["unscorable"]``), is left out of the table."""
DETAIL_EVENTS = (
    (None, "all events"),
    (VIEW, "views"),
    (ADD_TO_CART, "add-to-carts"),
    (PURCHASE, "purchases"),
    (RATING, "ratings"),
)
DETAIL_METRICS = tuple((m, k) for m in ("hr", "ndcg", "mrr") for k in (5, 10, 20))
MODEL_NOTES = {
    "challenger": "tonight's DQN",
    "champion": "the incumbent model",
    "supervised": "same network, next-item cross-entropy only",
    "cooccurrence": "item-to-item co-occurrence",
    "popularity": "most frequent items",
    "category_popularity": "popular items of the state's categories, unseen items at their category's mean",
}


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) and math.isfinite(value) else "-"


def in_table_order(named: dict[str, Any]) -> dict[str, Any]:
    """Models in MODEL_NOTES order (DQN first, then the baselines), others after them.

    evaluation.json is written with sorted keys, so the order evaluated is not kept there.
    """
    rank = {name: i for i, name in enumerate(MODEL_NOTES)}
    return dict(sorted(named.items(), key=lambda item: rank.get(item[0], len(rank))))


def table_columns(metrics: dict[str, dict[str, float]], unscorable: Collection[str] = ()) -> list[tuple[str, str]]:
    """The TABLE_COLUMNS some model has a value for (the event types the validation split holds), less
    those of the event types in ``unscorable``, whose figures cannot be non-zero."""
    return [
        (key, title)
        for key, title in TABLE_COLUMNS
        if any(key in values for values in metrics.values()) and metric_event_type(key) not in unscorable
    ]


def absent_columns_line(unscorable: dict[str, str]) -> str:
    """Why event types' columns are absent, in one line ("" when none is): ``evaluation.json["unscorable"]``."""
    if not unscorable:
        return ""
    return "Not shown: " + "; ".join(f"{event_type} — {why}" for event_type, why in unscorable.items()) + "."


def _model_rows(metrics: dict[str, dict[str, float]], columns) -> list[list[str]]:
    """One row per model (in_table_order), one cell per (metric key, title) of ``columns``."""
    ordered = in_table_order(metrics)
    return [[name] + [_cell(values.get(key)) for key, _ in columns] for name, values in ordered.items()]


def comparison_rows(metrics: dict[str, dict[str, float]], unscorable: Collection[str] = ()) -> list[list[str]]:
    """One row per model (in_table_order), one column per ``table_columns`` entry."""
    return _model_rows(metrics, table_columns(metrics, unscorable))


def comparison_table(
    metrics: dict[str, dict[str, float]], *, markdown: bool = False, unscorable: Collection[str] = ()
) -> str:
    header = ["model"] + [title for _, title in table_columns(metrics, unscorable)]
    return _table(header, comparison_rows(metrics, unscorable), markdown=markdown)


def protocol_line(evaluation: dict[str, Any]) -> str:
    """How the night was evaluated: the split, the masked items and the event types it had."""
    protocol = evaluation.get("protocol") or {}
    if not protocol:
        return ""
    counts = protocol.get("event_types") or {}
    present = ", ".join(f"{name} {n}" for name, n in counts.items() if n) or "none"
    absent = [name for name, n in counts.items() if not n]
    line = (
        f"Validation split: {protocol.get('validation')} ({protocol.get('validation_reason')}); masked: "
        f"{protocol.get('exclude')} items ({protocol.get('exclude_reason')}). Events in the training window: "
        f"{present}" + (f"; none of: {', '.join(absent)}" if absent else "") + "."
    )
    if protocol.get("validation_sample"):
        metric = evaluation.get("gate_metric") or ""
        half = ((evaluation.get("metrics") or {}).get("challenger") or {}).get(f"{metric}/ci95")
        line += (
            f" Judged on a seeded sample of {protocol['validation_sample']} of the split's "
            f"{protocol['validation_events_total']} events ({protocol.get('validation_sample_why', 'eval.max_events')})"
            + (f"; the challenger's {metric} is known to ± {half:.4f} (95 %)" if half is not None else "")
            + "."
        )
    return line


def detail_tables(metrics: dict[str, dict[str, float]], unscorable: Collection[str] = ()) -> str:
    """Markdown: HR, NDCG and MRR at 5, 10 and 20 per model, one table per event type (not those in
    ``unscorable``)."""
    parts = []
    metrics = in_table_order(metrics)
    header = ["model", *(f"{m}@{k}" for m, k in DETAIL_METRICS)]
    for event_type, title in DETAIL_EVENTS:
        key = f"{metric_prefix(event_type)}n"
        counts = {name: values.get(key) for name, values in metrics.items()}
        n = next((int(c) for c in counts.values() if isinstance(c, int | float)), 0)
        if event_type is not None and (n == 0 or event_type in unscorable):
            continue  # an event type the validation split does not have, or the lists cannot score
        rows = [
            [name] + [_cell(values.get(metric_name(m, k, event_type))) for m, k in DETAIL_METRICS]
            for name, values in metrics.items()
        ]
        parts += [f"**{title}** ({n} events)", "", _table(header, rows, markdown=True), ""]
    return "\n".join(parts)

NEW_ITEM_COLUMNS = (
    (metric_name("hr", 10, NEW_ITEMS), "HR@10"),
    (metric_name("ndcg", 10, NEW_ITEMS), "NDCG@10"),
    (metric_name("slots", 10, NEW_ITEMS), "top-10 slots"),
    (metric_name("coverage", 10, NEW_ITEMS), "new items in a top-10"),
)


def new_item_table(new_items: dict[str, dict[str, float]], *, markdown: bool = False) -> str:
    """One row per model of the new-item figures (``gate.NightEvaluation.new_items``)."""
    header = ["model"] + [title for _, title in NEW_ITEM_COLUMNS]
    return _table(header, _model_rows(new_items, NEW_ITEM_COLUMNS), markdown=markdown)


def new_item_caption(new_items: dict[str, dict[str, float]]) -> str:
    """How many new items and events the figures rest on, and what the columns mean."""
    figures = next(iter(new_items.values()), {})
    prefix = metric_prefix(NEW_ITEMS)
    items, events = int(figures.get(f"{prefix}items", 0)), int(figures.get(f"{prefix}n", 0))
    return (
        f"{items} items the training split never shows (as an action or in a state) appear in validation; "
        f"{events} validation events are on them. HR@10 and NDCG@10 over those events; top-10 slots: share "
        "of every validation row's top-10 holding a new item; new items in a top-10: share of them "
        "recommended at least once."
    )



def _interval(summary: dict[str, float] | None) -> str:
    if not summary or not _finite(summary.get("mean")):
        return "-"
    half = summary.get("ci95")
    return f"{summary['mean']:.3f} ± {half:.3f}" if _finite(half) else f"{summary['mean']:.3f}"


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def simulation_rows(simulation: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the simulated-return table (mean ± 95 % CI over seeds)."""
    reference = simulation.get("reference")
    header = ["policy", "return / shopper", "purchases", "add-to-carts", "slate clicks", f"return - {reference}"]
    rows = []
    for name, policy in in_table_order(simulation.get("policies", {})).items():
        difference = (simulation.get("vs_reference") or {}).get(name)
        rows.append(
            [
                name,
                _interval(policy.get("return")),
                _interval(policy.get("purchases")),
                _interval(policy.get("carts")),
                _interval(policy.get("slate_share")),
                _interval(difference) if name != reference else "(reference)",
            ]
        )
    return header, rows


def simulation_table(simulation: dict[str, Any], *, markdown: bool = False) -> str:
    header, rows = simulation_rows(simulation)
    return _table(header, rows, markdown=markdown)


REFRESH_TITLES = {
    "session": "lists ranked at each session start (as served)",
    "step": "lists re-ranked after every click",
}


def simulations(evaluation: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's simulations with results: the headline first, then the other refresh protocols."""
    found = [evaluation.get("simulation") or {}, *(evaluation.get("simulation_more") or [])]
    return [simulation for simulation in found if simulation.get("policies")]


def simulation_title(simulation: dict[str, Any]) -> str:
    refresh = simulation.get("settings", {}).get("refresh", "step")
    return f"simulated return per shopper, {REFRESH_TITLES.get(refresh, refresh)}"


def simulation_caption(simulation: dict[str, Any]) -> str:
    s = simulation.get("settings", {})
    return (
        f"{s.get('users')} simulated shoppers x {s.get('steps')} steps, slate of {s.get('slate')}, "
        f"rewards view 0 / add-to-cart 0.3 / purchase 1; mean ± 95 % CI over {s.get('seeds')} seeds "
        "(the difference column is paired by seed)."
    )


OPE_HEADER = ["candidate", "IPS [95 % CI]", "SNIPS [95 % CI]", "DR [95 % CI]", "ESS", "supported", "warnings"]


def ope_table(ope: dict[str, Any], *, markdown: bool = False) -> str:
    """One row per candidate of ``evaluation.json["ope"]``: the three estimates with their intervals,
    the effective sample size, the supported share of the target's mass and the warnings."""
    rows = []
    for name, found in ope.get("candidates", {}).items():
        estimates = [f"{e['value']:.4f} [{e['low']:.4f}, {e['high']:.4f}]" for e in (found[k] for k in OPE_ESTIMATORS)]
        warnings = sorted({w for k in (*OPE_ESTIMATORS, "support") for w in found[k]["warnings"]})
        shown = "; ".join(warnings) if markdown else (f"{len(warnings)}" if warnings else "")
        rows.append([name, *estimates, f"{found['ess']:.1f}", f"{found['support']['supported_share']:.0%}", shown])
    return _table(OPE_HEADER, rows, markdown=markdown)


def ope_caption(evaluation: dict[str, Any]) -> str:
    """What the estimates rest on, the logging policy's own value, rows left out, and what decided the gate."""
    ope = evaluation.get("ope") or {}
    logging = ope.get("logging") or {}
    parts = [
        f"Impressions of {', '.join(ope.get('days', [])) or 'no day'}: {ope.get('rows_used', 0)} slots used "
        f"of {ope.get('input_rows', 0)} read; expected slate reward per request, as if each candidate's "
        "greedy lists had been shown (position-based; DR with the reward model theta_k * rho_a)."
    ]
    if logging:
        parts.append(f"Logging policy (on-policy): {logging['value']:.4f} per request over {logging['requests']} requests.")
    for entry in ope.get("rejected", []):
        parts.append(f"Rejected: {entry['rows']} rows of {entry['partition']} ({entry['column']}: {entry['rule']}).")
    if ope.get("skipped_days"):
        parts.append(f"Skipped (no user_states the night before): {', '.join(ope['skipped_days'])}.")
    parts.append(gate_decision_line(evaluation))
    return " ".join(parts)


def gate_decision_line(evaluation: dict[str, Any]) -> str:
    decided = evaluation.get("decided_by")
    return f"Gate decided by `{decided}`." if decided else "The gate compared nothing tonight."


def _table(header: list[str], rows: list[list[str]], *, markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*row) for row in [header, *rows])


def masks_line(summary: dict[str, Any]) -> str:
    """What scoring masked and who got short lists (``dql_model.scoring.masks``); "" for older runs."""
    counts = summary.get("masks") or {}
    top_k = (summary.get("published") or {}).get("top_k", 0)
    return masks.describe(counts.get("masked") or {}, counts.get("short_lists") or {}, top_k)


def retrieval_line(summary: dict[str, Any]) -> str:
    """score.retrieval=ann's index and recall@K against brute force (``retrieval.describe``); "" when exact."""
    return retrieval.describe(summary.get("retrieval") or {})


def render_markdown(summary: dict[str, Any]) -> str:
    published = summary.get("published", {})
    evaluation = summary.get("evaluation", {})
    etl = summary.get("etl", {})
    lines = [f"# dqlrec run {summary['run_date']}", ""]
    if summary.get("degraded"):
        lines += [f"**Degraded run**: {summary.get('degraded_reason')}.", ""]
    lines += [
        "## Outputs",
        f"- warehouse partition: `{published.get('warehouse_path')}`",
        f"- export: `{published.get('export_uri')}` ({published.get('files')} file(s), manifest and `_SUCCESS`)",
        f"- {published.get('users')} users x top {published.get('top_k')} = {published.get('rows')} rows, "
        f"model `{published.get('model_version')}`",
        *([f"- {masks_line(summary)}"] if masks_line(summary) else []),
        *([f"- retrieval: {retrieval_line(summary)}"] if retrieval_line(summary) else []),
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
    lines += ["", "## Offline evaluation (validation split, full-catalogue ranking)", ""]
    if evaluation.get("metrics"):
        unscorable = evaluation.get("unscorable") or {}
        lines.append(comparison_table(evaluation["metrics"], markdown=True, unscorable=unscorable))
        lines += [
            "",
            *([absent_columns_line(unscorable), ""] if unscorable else []),
            f"Validation events: {evaluation.get('validation_events')}. Gate on `{evaluation.get('gate_metric')}`: "
            f"{'promoted' if evaluation.get('promoted') else 'kept the champion'} ({evaluation.get('reason')}). "
            f"Scoring model: `{evaluation.get('scoring_version')}`. "
            "bought@10: share of top-10 slots holding an item the state shows as already purchased.",
            "",
            protocol_line(evaluation),
            "",
        ]
        if evaluation.get("tuned"):  # the settings tonight's challenger trained with (dqlrec tune)
            lines += [f"Learning settings: {evaluation['tuned']}.", ""]
        if evaluation.get("shape"):  # the auto settings the data decided (dql_model.learning.shape)
            lines += [f"Challenger's {evaluation['shape']}.", ""]
        if evaluation.get("refit_reason"):  # train.refit: trained again on train + validation, scores in its place
            refit = f"`{evaluation['refit']}`, " if evaluation.get("refit") else ""
            lines += [f"Challenger's refit on train + validation: {refit}{evaluation['refit_reason']}.", ""]
        lines += [f"- **{name}**: {note}" for name, note in MODEL_NOTES.items() if name in evaluation["metrics"]]
        lines += _baseline_notes(evaluation.get("baselines") or {})
        lines += ["", "### By event type", "", detail_tables(evaluation["metrics"], unscorable)]
        if evaluation.get("new_items"):
            lines += [
                "### New items",
                "",
                new_item_table(evaluation["new_items"], markdown=True),
                "",
                new_item_caption(evaluation["new_items"]),
                "",
            ]
    else:
        lines.append("No evaluation this run.")
    if evaluation.get("ope"):
        lines += ["## Off-policy estimates", "", ope_table(evaluation["ope"], markdown=True), "", ope_caption(evaluation), ""]
    elif evaluation.get("metrics"):
        lines += [gate_decision_line(evaluation), ""]
    found = simulations(evaluation)
    if found:
        lines += ["## Simulated policy value (the synthetic shop as an environment)", ""]
    for simulation in found:
        lines += [
            f"### {simulation_title(simulation).capitalize()}",
            "",
            simulation_table(simulation, markdown=True),
            "",
            simulation_caption(simulation),
            "",
        ]
    plots = evaluation.get("plots") or []
    if plots:
        lines += ["## Plots", ""] + [f"![{name}]({name})" for name in plots] + [""]
    lines += ["", f"Config hash `{summary.get('config_hash')}`, written {summary.get('written_at')}.", ""]
    return "\n".join(lines)


def _baseline_notes(baselines: dict[str, Any]) -> list[str]:
    notes = []
    supervised = baselines.get("supervised")
    if supervised:
        tried = ", ".join(f"{_overrides(t['overrides'])} -> {t['value']:.4f}" for t in supervised.get("trials", []))
        notes.append(
            f"- supervised search (validation {supervised.get('metric')}): {tried}; "
            f"picked {_overrides(supervised['picked'])}"
        )
    cooccurrence = baselines.get("cooccurrence")
    if cooccurrence:
        picked = cooccurrence["picked"]
        notes.append(
            f"- co-occurrence: window {picked['window']}, decay {picked['decay']} "
            f"(best of {len(cooccurrence.get('trials', []))} on validation {cooccurrence.get('metric')})"
        )
    return notes


def _overrides(overrides: dict[str, Any]) -> str:
    flat = [f"{k}={v}" for section in overrides.values() for k, v in section.items()]
    return "{" + ", ".join(flat) + "}" if flat else "{defaults}"


def render_summary(summary: dict[str, Any]) -> str:
    """The short closing summary `make run` prints."""
    published = summary["published"]
    evaluation = summary.get("evaluation", {})
    done = f"done, DEGRADED: {summary.get('degraded_reason')}" if summary.get("degraded") else "done"
    lines = [
        "",
        f"dqlrec run {summary['run_date']}: {done}",
        f"  users scored   {published['users']} (top {published['top_k']}, {published['rows']} rows)",
        *([f"  masks          {masks_line(summary)}"] if masks_line(summary) else []),
        *([f"  retrieval      {retrieval_line(summary)}"] if retrieval_line(summary) else []),
        f"  model version  {published['model_version']}"
        + (f"  ({'promoted' if evaluation.get('promoted') else 'champion kept'}: {evaluation.get('reason')})" if evaluation else ""),
    ]
    if evaluation.get("metrics"):
        unscorable = evaluation.get("unscorable") or {}
        lines += ["", "  offline metrics, validation split (full catalogue, masked as published):"]
        lines += ["    " + line for line in comparison_table(evaluation["metrics"], unscorable=unscorable).splitlines()]
        if unscorable:
            lines.append("    " + absent_columns_line(unscorable))
    ope = evaluation.get("ope") or {}
    if ope.get("candidates"):
        logging = ope.get("logging") or {}
        lines += [
            "",
            f"  off-policy estimates, reward per request on {len(ope.get('days', []))} days of impressions "
            f"(logging policy {logging.get('value', float('nan')):.4f} over {logging.get('requests', 0)} requests):",
        ]
        lines += ["    " + line for line in ope_table(ope).splitlines()]
    for simulation in simulations(evaluation):
        lines += ["", f"  {simulation_title(simulation)} (mean ± 95 % CI over seeds):"]
        lines += ["    " + line for line in simulation_table(simulation).splitlines()]
    lines += [
        "",
        f"  warehouse      {published['warehouse_path']}",
        f"  export         {published['export_uri']}",
        f"  report         {summary.get('report_dir', '')}",
        "",
    ]
    return "\n".join(lines)
