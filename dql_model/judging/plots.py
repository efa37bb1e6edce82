"""PNG figures of a run, for report.md: learning curves, metrics by event type, simulated return.

Each function takes the figures as plain dicts (what evaluation.json holds), writes one PNG and
returns its path; ``write_plots`` draws every figure it has data for. matplotlib runs on the
non-interactive Agg backend, so no display is needed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.patches import Patch  # noqa: E402

from dql_model.contract.schema import ADD_TO_CART, PURCHASE, VIEW, metric_name  # noqa: E402

LEARNING_CURVES = "learning_curves.png"
METRICS_BY_EVENT = "metrics_by_event.png"
SIMULATED_RETURN = "simulated_return.png"
LOOP_RETURN = "loop_return.png"
RUN_TREND = "run_trend.png"
CURVE_METRICS = (
    ("loss/total", "training loss"),
    (metric_name("ndcg", 10), "validation NDCG@10"),
    (metric_name("ndcg", 10, PURCHASE), "validation purchase NDCG@10"),
)
EVENT_METRICS = (
    (metric_name("ndcg", 10), "all"),
    (metric_name("ndcg", 10, VIEW), "view"),
    (metric_name("ndcg", 10, ADD_TO_CART), "add to cart"),
    (metric_name("ndcg", 10, PURCHASE), "purchase"),
)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def learning_curves(histories: Mapping[str, list[dict[str, float]]], path: str | os.PathLike[str]) -> Path:
    """One panel per CURVE_METRICS entry, one line per model, x = epoch."""
    fig, axes = plt.subplots(1, len(CURVE_METRICS), figsize=(4.2 * len(CURVE_METRICS), 3.4))
    for ax, (key, title) in zip(axes, CURVE_METRICS, strict=True):
        for name, history in histories.items():
            points = [(row["epoch"], row[key]) for row in history if _finite(row.get(key))]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=name)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend()
    return _save(fig, path)


def metrics_by_event(metrics: Mapping[str, Mapping[str, float]], path: str | os.PathLike[str]) -> Path:
    """Grouped bars: NDCG@10 over all events and per event type, one bar per model."""
    fig, ax = plt.subplots(figsize=(8, 3.8))
    names = list(metrics)
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        values = [metrics[name].get(key, float("nan")) for key, _ in EVENT_METRICS]
        positions = [group + (i - (len(names) - 1) / 2) * width for group in range(len(EVENT_METRICS))]
        ax.bar(positions, values, width, label=name)
    ax.set_xticks(range(len(EVENT_METRICS)), [label for _, label in EVENT_METRICS])
    ax.set_ylabel("NDCG@10 (validation)")
    ax.set_title("Next-event ranking by event type")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def simulated_return(simulation: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Mean return per simulated shopper with its 95 % confidence interval over seeds."""
    policies = simulation["policies"]
    names = list(policies)
    means = [policies[n]["return"]["mean"] for n in names]
    errors = [policies[n]["return"]["ci95"] if _finite(policies[n]["return"]["ci95"]) else 0.0 for n in names]
    settings = simulation.get("settings", {})
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    ax.bar(names, means, yerr=errors, capsize=6, color="tab:blue", alpha=0.8)
    ax.set_ylabel("return per shopper")
    ax.set_title(
        f"Simulated return ({settings.get('refresh', 'step')} lists), {settings.get('steps')} steps, "
        f"slate {settings.get('slate')}, "
        f"95 % CI over {settings.get('seeds')} seeds",
        fontsize="medium",
    )
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def loop_return(summary: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """The shop loop (``shop_loop.summarise``): per-day return per shopper of each policy (left), and
    each policy's paired difference to the reference policy (right), with 95 % intervals over seeds."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))

    colours = {name: f"C{i}" for i, name in enumerate(summary["policies"])}  # one colour a policy, both panels

    def band(ax, points, label, colour):
        days = range(1, len(points) + 1)
        mean = [p["mean"] for p in points]
        half = [p["ci95"] if _finite(p["ci95"]) else 0.0 for p in points]
        ax.plot(days, mean, marker="o", label=label, color=colour)
        ax.fill_between(days, [m - h for m, h in zip(mean, half, strict=True)],
                        [m + h for m, h in zip(mean, half, strict=True)], alpha=0.15, color=colour)  # fmt: skip

    for name, entry in summary["policies"].items():
        band(left, entry["return"], name, colours[name])
    for name, paired in summary["paired"].items():
        band(right, paired["per_day"], f"{name} - {summary['reference']}", colours[name])
    right.axhline(0.0, color="grey", linewidth=0.8)
    seeds = len(summary["settings"]["seeds"])
    left.set(xlabel="day of the loop", ylabel="return per shopper", title=f"Daily return ({seeds} seeds)")
    right.set(xlabel="day of the loop", ylabel="difference in return per shopper", title="Paired by seed, 95% interval")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    return _save(fig, path)


def run_trend(trend: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """The nights side by side (history.trend's figures), x = run date: the gate metric of the challenger
    and the champion (a triangle where the gate promoted), rows published, training seconds; a red
    band over every panel marks a degraded night."""
    dates = list(trend["run_date"])
    x = list(range(len(dates)))
    panels = (
        (("challenger", "champion"), f"gate metric {trend['metric']}"),
        (("rows",), "rows published"),
        (("training_s",), "training seconds"),
    )
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6.0, 0.35 * len(dates) + 3), 7.5), sharex=True)
    for ax, (names, title) in zip(axes, panels, strict=True):
        for name in names:
            points = [(i, v) for i, v in zip(x, trend[name], strict=True) if _finite(v)]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=name)
        for i, degraded in zip(x, trend["degraded"], strict=True):
            if degraded:
                ax.axvspan(i - 0.5, i + 0.5, color="tab:red", alpha=0.15, linewidth=0)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    promoted = [(i, v) for i, v, up in zip(x, trend["challenger"], trend["promoted"], strict=True) if up and _finite(v)]
    if promoted:
        axes[0].plot(*zip(*promoted, strict=True), linestyle="", marker="^", markersize=8, color="tab:green", label="promoted")
    handles, _ = axes[0].get_legend_handles_labels()
    if any(trend["degraded"]):
        handles.append(Patch(color="tab:red", alpha=0.15, label="degraded"))
    axes[0].legend(handles=handles, fontsize=7)
    axes[-1].set_xticks(x, dates, rotation=60, ha="right", fontsize=7)
    return _save(fig, path)


def write_plots(evaluation: Mapping[str, Any], folder: str | os.PathLike[str]) -> list[str]:
    """Every figure ``evaluation`` has data for, written into ``folder``; returns the file names."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    histories = {k: v for k, v in (evaluation.get("learning_curves") or {}).items() if v}
    if histories:
        written.append(learning_curves(histories, folder / LEARNING_CURVES).name)
    if evaluation.get("metrics"):
        written.append(metrics_by_event(evaluation["metrics"], folder / METRICS_BY_EVENT).name)
    if (evaluation.get("simulation") or {}).get("policies"):
        written.append(simulated_return(evaluation["simulation"], folder / SIMULATED_RETURN).name)
    return written


def _save(fig, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
