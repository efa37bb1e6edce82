"""The conservative weight's trade-off on the demo shop: next-event NDCG against simulated return.

For every training seed, the supervised mode and the DQN at each ``train.cql_alpha`` of ALPHAS
(and SQN at the default weight) are trained on one night's transitions of ``make run``'s warehouse,
ranked on its validation split (items masked as the published lists mask them), and sent to the
synthetic shop's simulated shoppers with both list protocols (``policy_eval``: lists ranked when a
session starts, and re-ranked after every click). Everything else is the run's default config.

Differences to the supervised mode are paired twice: by training seed (the same seed trains both)
and by simulation seed (the same shoppers meet both). Two intervals are printed for DQN - supervised:
over training seeds (each seed's mean over the simulation seeds; Student t with seeds - 1 degrees
of freedom, the honest one for "another training run would also win") and over all training x
simulation pairs (tighter; it treats the shoppers as the only noise).

Three rules pick a default alpha from logged data only, never from the simulator: the gate's rule
(best mean validation NDCG@10 over seeds), the purchase rule (best mean validation purchase
NDCG@10) and the accuracy rule (the smallest alpha within NDCG_TOLERANCE of the supervised mode's
NDCG@10). The table shows what each choice costs and earns in the simulated shop.

Each (mode, alpha, seed) cell is cached under ``var/bench/tradeoff/`` by its config, the
partition's files and the simulation settings, so a rerun only trains what changed and two
processes can share the work (``--seeds 0`` in one, ``--seeds 1`` in the other).

    make run   # once: the warehouse this benchmark reads
    python -m benchmarks.bench_tradeoff [--seeds 0,1,2] [--alphas 0,0.5,1,2,4,8] [--threads 1]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import BENCH_DIR, machine, print_table, quick_mode, skipped, write_json
from dql_model import config as config_module
from dql_model.config import Config
from dql_model.contract import schema
from dql_model.evaluation import evaluate
from dql_model.evaluation.intervals import mean_ci
from dql_model.judging import policy_eval
from dql_model.learning import train
from dql_model.learning.scorer import QNetworkScorer
from dql_model.warehouse import data, storage

ALPHAS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
SEEDS = (0, 1, 2)
NDCG = schema.metric_name("ndcg", 10)
PURCHASE_NDCG = schema.metric_name("ndcg", 10, schema.PURCHASE)
CACHE = BENCH_DIR / "tradeoff"
NDCG_TOLERANCE = 0.01
"""How far below the supervised mode's validation NDCG@10 the accuracy rule lets the DQN fall."""


def latest_run_date(cfg: Config) -> str | None:
    """The newest run date with a transitions partition, None when the warehouse has none."""
    folder = Path(cfg.layout.table(schema.TRANSITIONS))
    column = cfg.layout.partition_column(schema.TRANSITIONS)
    dates = sorted(p.name.split("=", 1)[1] for p in folder.glob(f"{column}=*") if any(p.glob("*.parquet")))
    return dates[-1] if dates else None


@dataclass(frozen=True)
class Night:
    """The night every cell trains on, with what ranking and simulating it need, read once."""

    run_date: str
    transitions_dir: str
    item_index_dir: str
    fingerprint: str
    """Names, sizes and modification times of the transitions files: a rebuilt night is a new key."""
    exclude: str
    refreshes: tuple[str, ...]
    items: data.ItemFeatures
    val: data.TransitionBatch
    masks: data.Exclusions

    @classmethod
    def load(cls, cfg: Config, run_date: str) -> Night:
        transitions_dir = cfg.layout.partition(schema.TRANSITIONS, run_date)
        item_index_dir = cfg.layout.partition(schema.ITEM_INDEX, run_date)
        files = data.parquet_files(transitions_dir)
        blob = json.dumps([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files])
        exclude = data.exclude_rule(cfg.score, data.night_protocol(cfg, run_date))
        return cls(
            run_date=run_date,
            transitions_dir=transitions_dir,
            item_index_dir=item_index_dir,
            fingerprint=hashlib.sha256(blob.encode()).hexdigest()[:16],
            exclude=exclude,
            refreshes=tuple(cfg.eval.sim_refresh),
            items=data.load_item_features(item_index_dir, price_buckets=cfg.model.price_buckets),
            val=data.load_transitions(transitions_dir, max_len=cfg.etl.max_len, split=schema.VALIDATION),
            masks=data.load_exclusions(transitions_dir, exclude=exclude),
        )


def cell_config(base: Config, mode: str, alpha: float | None, seed: int) -> Config:
    train_over: dict[str, Any] = {"mode": mode, "seed": seed, "checkpoints": False}
    if alpha is not None:
        train_over["cql_alpha"] = alpha
    return base.replace(train=train_over)


def run_cell(cfg: Config, night: Night) -> dict[str, Any]:
    """Train one model, rank validation, simulate it under every protocol."""
    t = cfg.train
    label = f"{t.mode}{f' alpha={t.cql_alpha:g}' if t.mode == 'dqn' else ''} seed={t.seed}"
    result = train.train_model(
        cfg,
        transitions_dir=night.transitions_dir,
        item_index_dir=night.item_index_dir,
        exclude=night.exclude,
        progress=lambda line: print(f"  [{label}] {line}", flush=True),
    )
    scorer = QNetworkScorer(result.model, n_items=night.items.n_items)
    metrics = evaluate.evaluate_scorer(scorer, night.val, exclude=night.masks)
    simulated = {}
    for refresh in night.refreshes:
        sim = policy_eval.simulate_policies(
            {label: scorer}, cfg, night.items, refresh=refresh, progress=lambda _: None
        )
        simulated[refresh] = sim["policies"][label]["per_seed"]
    print(
        f"  [{label}] NDCG@10 {metrics[NDCG]:.4f}  purchase NDCG@10 {metrics.get(PURCHASE_NDCG, math.nan):.4f}  "
        + "  ".join(f"return/{r} {_mean(v):.3f}" for r, v in simulated.items())
        + f"  ({result.seconds:.0f} s training)",
        flush=True,
    )
    return {
        "mode": t.mode,
        "alpha": t.cql_alpha,
        "seed": t.seed,
        "ndcg@10": metrics[NDCG],
        "purchase_ndcg@10": metrics.get(PURCHASE_NDCG, math.nan),
        "head_weight": result.best_metrics.get("eval/head_weight"),
        "best_epoch": result.best_epoch,
        "train_seconds": round(result.seconds, 1),
        "returns": simulated,
    }


def cached_cell(cfg: Config, night: Night) -> dict[str, Any]:
    """run_cell, or its result from an earlier run of the same config on the same night."""
    key = {
        "config": cfg.hash(),
        "run_date": night.run_date,
        "partition": night.fingerprint,
        "exclude": night.exclude,
        "refresh": night.refreshes,
    }
    path = CACHE / f"{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]}.json"
    cell = storage.read_json(path)
    if not cell:
        cell = run_cell(cfg, night)
        storage.write_json_atomic(path, cell)  # a killed run leaves no half-written cell behind
    return cell


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def summarise(cells: list[dict[str, Any]], refreshes: tuple[str, ...]) -> list[dict[str, Any]]:
    """One row per (mode, alpha): means over seeds and the paired differences to supervised."""
    supervised = {c["seed"]: c for c in cells if c["mode"] == "supervised"}
    groups: dict[tuple[str, float | None], list[dict[str, Any]]] = {}
    for c in cells:  # the weight tells only DQN rows apart
        groups.setdefault((c["mode"], c["alpha"] if c["mode"] == "dqn" else None), []).append(c)
    rows = []
    for (mode, alpha), group in groups.items():
        row: dict[str, Any] = {
            "mode": mode,
            "alpha": alpha,
            "seeds": sorted(c["seed"] for c in group),
            "ndcg@10": mean_ci([c["ndcg@10"] for c in group]),
            "purchase_ndcg@10": mean_ci([c["purchase_ndcg@10"] for c in group]),
            "train_seconds": _mean([c["train_seconds"] for c in group]),
        }
        for refresh in refreshes:
            row[f"return/{refresh}"] = mean_ci([_mean(c["returns"][refresh]) for c in group])
            if mode == "supervised":
                continue
            paired = [c for c in group if c["seed"] in supervised]
            per_seed = [
                _mean(c["returns"][refresh]) - _mean(supervised[c["seed"]]["returns"][refresh])
                for c in paired
            ]
            pooled = [
                a - b
                for c in paired
                for a, b in zip(c["returns"][refresh], supervised[c["seed"]]["returns"][refresh], strict=True)
            ]
            row[f"vs_supervised/{refresh}"] = mean_ci(per_seed)
            row[f"vs_supervised_pooled/{refresh}"] = mean_ci(pooled)
        rows.append(row)
    order = {"supervised": 0, "dqn": 1, "sqn": 2}
    return sorted(rows, key=lambda r: (order.get(r["mode"], 3), r["alpha"] or 0.0))


def pick(rows: list[dict[str, Any]], metric: str) -> float:
    """The DQN alpha with the best mean validation ``metric`` over seeds (ties: the larger alpha)."""
    dqn = [r for r in rows if r["mode"] == "dqn"]
    return max(dqn, key=lambda r: (r[metric]["mean"], r["alpha"]))["alpha"]


def pick_within(rows: list[dict[str, Any]], tolerance: float = NDCG_TOLERANCE) -> float | None:
    """The smallest DQN alpha (the most weight on the TD term, which carries the long-term value)
    whose mean validation NDCG@10 is within ``tolerance`` (relative) of the supervised mode's;
    None when no alpha is."""
    supervised = next((r for r in rows if r["mode"] == "supervised"), None)
    if supervised is None:
        return None
    floor = (1 - tolerance) * supervised["ndcg@10"]["mean"]
    within = [r["alpha"] for r in rows if r["mode"] == "dqn" and r["ndcg@10"]["mean"] >= floor]
    return min(within) if within else None


def _ci(stat: dict[str, float] | None, digits: int = 3) -> str:
    if not stat:
        return "-"
    if stat["n"] < 2 or not math.isfinite(stat["ci95"]):
        return f"{stat['mean']:+.{digits}f}"
    return f"{stat['mean']:+.{digits}f} ± {stat['ci95']:.{digits}f}"


def plot(rows: list[dict[str, Any]], refreshes: tuple[str, ...], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(refreshes), figsize=(6 * len(refreshes), 4.5), squeeze=False)
    dqn = [r for r in rows if r["mode"] == "dqn"]
    others = [r for r in rows if r["mode"] != "dqn"]
    for ax, refresh in zip(axes[0], refreshes, strict=True):

        def point(row, refresh=refresh):
            return row["ndcg@10"], row[f"return/{refresh}"]

        xs, ys = zip(*(point(r) for r in dqn), strict=True) if dqn else ((), ())
        ax.errorbar(
            [x["mean"] for x in xs],
            [y["mean"] for y in ys],
            xerr=[x["ci95"] for x in xs],
            yerr=[y["ci95"] for y in ys],
            fmt="o-",
            capsize=4,
            label="DQN by cql_alpha",
        )
        for number, (row, x, y) in enumerate(zip(dqn, xs, ys, strict=True)):
            offset = (6, 6) if number % 2 == 0 else (6, -12)
            ax.annotate(
                f"α={row['alpha']:g}",
                (x["mean"], y["mean"]),
                textcoords="offset points",
                xytext=offset,
                fontsize=9,
            )
        for row, marker in zip(others, "s^vD", strict=False):
            x, y = point(row)
            ax.errorbar(
                x["mean"], y["mean"], xerr=x["ci95"], yerr=y["ci95"], fmt=marker, capsize=4, label=row["mode"]
            )
        ax.legend(loc="upper right", fontsize=9)
        ax.set_xlabel("validation NDCG@10")
        ax.set_ylabel(f"simulated return per shopper ({refresh} lists)")
        ax.grid(alpha=0.3)
    fig.suptitle(
        "Conservative weight: next-event NDCG vs simulated return (mean ± 95% CI over training seeds)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] = ()) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_tradeoff", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--config", help="YAML config of the run (default: the built-in defaults, as make run)"
    )
    parser.add_argument("--run-date", help="night to train on (default: the newest transitions partition)")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="training seeds, comma-separated")
    parser.add_argument(
        "--alphas", default=",".join(f"{a:g}" for a in ALPHAS), help="DQN conservative weights"
    )
    parser.add_argument("--no-sqn", action="store_true", help="leave SQN out")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads (train.threads; 0: all allowed CPUs)"
    )
    parser.add_argument("--quick", action="store_true", help=f"{' '.join(QUICK_ARGS)}, one epoch, few shoppers")
    quick = quick_mode(argv)
    args = parser.parse_args([*QUICK_ARGS, *argv] if quick else list(argv))

    base = config_module.load_config(args.config)
    base = base.replace(train={"device": "cpu", "threads": args.threads})
    if quick:
        base = base.replace(**QUICK_SETTINGS)
    run_date = args.run_date or latest_run_date(base)
    if run_date is None:  # under `make bench` the benchmarks after this one still run
        skipped("tradeoff", f"no transitions partition under {base.warehouse.root}; `make run` builds one")
        return
    night = Night.load(base, run_date)
    refreshes = night.refreshes
    seeds = [int(s) for s in args.seeds.split(",") if s]
    alphas = [float(a) for a in args.alphas.split(",") if a]
    plan = [("supervised", None)] + [("dqn", a) for a in alphas] + ([] if args.no_sqn else [("sqn", None)])
    print(
        f"trade-off on {night.transitions_dir} ({run_date}), masking {night.exclude} items: {len(plan)} models x "
        f"{len(seeds)} seeds, {base.eval.sim_seeds} simulation seeds x {base.eval.sim_users} shoppers per protocol",
        flush=True,
    )
    started = time.perf_counter()
    cells = []
    for seed in seeds:
        for mode, alpha in plan:
            cfg = cell_config(base, mode, alpha, seed)
            cells.append(cached_cell(cfg, night))
    rows = summarise(cells, refreshes)
    gate_alpha, purchase_alpha = pick(rows, "ndcg@10"), pick(rows, "purchase_ndcg@10")
    within_alpha = pick_within(rows)
    header = ["model", "NDCG@10", "purchase NDCG@10"]
    for refresh in refreshes:
        header += [
            f"return ({refresh})",
            f"− supervised, over seeds ({refresh})",
            f"− supervised, pooled ({refresh})",
        ]
    header.append("train s")
    table = []
    for r in rows:
        name = f"DQN α={r['alpha']:g}" if r["mode"] == "dqn" else r["mode"]
        if r["mode"] == "dqn":
            name += "".join(
                mark
                for mark, a in (("*", gate_alpha), ("†", purchase_alpha), ("‡", within_alpha))
                if r["alpha"] == a
            )
        line = [name, f"{r['ndcg@10']['mean']:.4f}", f"{r['purchase_ndcg@10']['mean']:.4f}"]
        for refresh in refreshes:
            line += [
                f"{r[f'return/{refresh}']['mean']:.3f}",
                _ci(r.get(f"vs_supervised/{refresh}")),
                _ci(r.get(f"vs_supervised_pooled/{refresh}")),
            ]
        line.append(round(r["train_seconds"]))
        table.append(line)
    print_table(f"cql_alpha trade-off on the demo shop, seeds {seeds}, {run_date}", header, table)
    print(
        f"* gate rule (best mean validation NDCG@10): alpha {gate_alpha:g}; default is {Config().train.cql_alpha:g}"
    )
    print(f"† purchase rule (best mean validation purchase NDCG@10): alpha {purchase_alpha:g}")
    print(
        f"‡ accuracy rule (smallest alpha with validation NDCG@10 within {NDCG_TOLERANCE:.0%} of supervised): "
        + ("none" if within_alpha is None else f"alpha {within_alpha:g}")
    )
    figure = plot(rows, refreshes, BENCH_DIR / "tradeoff.png")
    path = write_json(
        "tradeoff",
        {
            "run_date": run_date,
            "seeds": seeds,
            "alphas": alphas,
            "rules": {
                "gate (validation NDCG@10)": gate_alpha,
                "purchase (validation purchase NDCG@10)": purchase_alpha,
            },
            "rows": rows,
            "cells": cells,
            "plot": str(figure),
            "seconds": round(time.perf_counter() - started, 1),
        },
    )
    print(f"figures: {path}, plot: {figure} ({machine()['cores']} cores)")


QUICK_ARGS = ["--seeds", "0", "--alphas", "1", "--no-sqn"]
QUICK_SETTINGS = {"train": {"epochs": 1}, "eval": {"sim_users": 20, "sim_seeds": 1}}
"""Quick mode (a smoke run): the supervised mode and one DQN, one epoch, a few simulated shoppers."""


if __name__ == "__main__":
    main(sys.argv[1:])
