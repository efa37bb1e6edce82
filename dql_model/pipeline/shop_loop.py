"""The shop in the loop: shoppers react to the lists the nightly run published, and the next night
learns from what they did.

``run_loop`` lives the synthetic shop (``simulator.LiveShop``) day by day after its generated
window. Each day every visit is shown the shopper's list from the night before; the day's events
and the impressions (one row per shown slot, with the serving policy's propensity) are written to
the warehouse as new partitions, and then the nightly pipeline runs on them, step by step as the
DAG runs them (``steps.STEPS``: the Great Expectations checks, the Spark job, training
warm-started from the champion, the gate, scoring, publishing). Its published lists are what the
next day's shoppers see. The Spark job runs as a child process per night by default, or in one
Spark session for the whole loop when ``jobs.shop_loop`` runs it (what ``dqlrec simulate`` does).

A policy is what decides the lists:
- ``dqn``, ``supervised``, ``sqn``: the nightly pipeline with that ``train.mode``;
- ``popularity``: the most-interacted available items of everything logged so far, minus what the
  shopper bought (no model; the yardstick a shop starts from).

Twin shops: every (policy, seed) pair lives its own warehouse, and the shop's seed and the date alone
seed each day's draws, so two policies meet the same shoppers with the same planned visits and only
the lists differ: differences between policies are paired by seed. A seed changes the shop itself
(simulator seed + seed) and the training seed.

Figures per day (``ServedDay.per_shopper``): return (the day's rewards under
``simulator.DEFAULT_REWARDS``, a fixed yardstick, per shopper), purchases and revenue per shopper,
and the reward per visit earned on listed items. Intervals are over seeds (Student t).

Off-policy check (``check_ope``): on each day of a learned policy, the lists it served with
exploration are the log; the same model's greedy lists and the popularity lists are candidates
whose value IPS, SNIPS and DR estimate from that log alone. Their true value on the same day is
measured by serving them on ``truth_replicates`` twin copies of the day (other draws of the same
date, the shop left where it was), so the coverage of the estimators' intervals is measured
where the truth is known.

Each finished (policy, seed) twin is saved as JSON under the loop folder, keyed by its settings:
a killed loop resumes at the twin it was in.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dql_model.config import LEARNED_MODES, Config
from dql_model.contract import schema
from dql_model.evaluation.intervals import mean_ci
from dql_model.judging.ope_night import LOGGING, Target, estimate_candidates
from dql_model.simulation.simulator import LiveShop, ServedDay, ShopSimulator, write_window
from dql_model.warehouse import storage

POLICIES = (*LEARNED_MODES, "popularity")
"""Policy names; a learned one may carry training overrides, ``dqn:cql_alpha=1`` (``parse_policy``)."""
SUMMARY_FILE = "loop.json"
FIGURES = ("return", "purchases", "revenue", "list_reward_per_visit")
"""Per-day figures of a twin (``ServedDay.per_shopper``), summarised over seeds."""

@dataclass(frozen=True)
class LoopSettings:
    """What one loop lives; part of the cache key of each twin."""

    days: int = 14
    """Days lived after the generated window, each followed by a nightly run."""
    seeds: tuple[int, ...] = (0, 1, 2)
    policies: tuple[str, ...] = ("dqn", "supervised", "popularity")
    top_k: int = 10
    """Length of the served lists."""
    explore_slots: int = 3
    """Exploration slots of the learned policies' lists (what makes their logs evaluable off-policy)."""
    explore_temperature: float = 1.0
    truth_replicates: int = 4
    """Twin days per candidate and day measuring a candidate's true value (0: no off-policy check)."""

    def __post_init__(self) -> None:
        unknown = [p for p in self.policies if parse_policy(p)[0] not in POLICIES]
        if unknown or not self.policies:
            raise ValueError(
                f"loop policies {list(self.policies)}: unknown {unknown}; choose from {list(POLICIES)}"
            )
        if self.days < 1 or not self.seeds:
            raise ValueError(
                f"loop needs at least one day and one seed, got days={self.days} seeds={self.seeds}"
            )
        if not 0 <= self.explore_slots <= self.top_k:
            raise ValueError(f"loop explore_slots must be in 0..top_k={self.top_k}, got {self.explore_slots}")


def parse_policy(spec: str) -> tuple[str, dict[str, Any]]:
    """``dqn`` -> ("dqn", {}); ``dqn:cql_alpha=1,gamma=0.9`` -> ("dqn", {"cql_alpha": 1, "gamma": 0.9}):
    a learned policy with ``train`` overrides (YAML values), so variants run side by side."""
    import yaml

    name, _, overrides = spec.partition(":")
    train = {}
    for item in filter(None, (part.strip() for part in overrides.split(","))):
        key, sep, value = item.partition("=")
        if not sep or name not in LEARNED_MODES:
            raise ValueError(
                f"loop policy {spec!r}: overrides are train fields of a learned policy, as dqn:cql_alpha=1"
            )
        train[key.strip()] = yaml.safe_load(value)
    return name, train


def _folder_name(policy: str) -> str:
    return "".join(c if c.isalnum() or c in "._" else "-" for c in policy)


def twin_config(cfg: Config, settings: LoopSettings, policy: str, seed: int, folder: Path) -> Config:
    """The config of one twin: its own warehouse, registry and export under ``folder``; the shop and
    the training seeded by ``seed``; lists of ``settings.top_k`` with exploration for learned policies."""
    name, overrides = parse_policy(policy)
    return cfg.replace(
        warehouse={"root": str(folder / "warehouse")},
        registry={"root": str(folder / "models")},
        publish={"export_uri": str(folder / "export"), "sql_url": ""},
        simulator={"seed": cfg.simulator.seed + seed},
        train={**overrides, "seed": seed, "mode": name if name in LEARNED_MODES else cfg.train.mode},
        score={
            "top_k": settings.top_k,
            "explore_slots": settings.explore_slots,
            "explore_epsilon": 0.0,
            "explore_temperature": settings.explore_temperature,
        },
    )


def twin_key(cfg: Config, settings: LoopSettings, policy: str, seed: int) -> str:
    """Hash of everything a twin's figures depend on: its config but the folders (the twin gets its
    own), the loop settings but the seed and policy lists, the policy and the seed."""
    config = cfg.to_dict()
    for section, field in (("warehouse", "root"), ("registry", "root"), ("publish", "export_uri")):
        config[section].pop(field, None)
    payload = {
        "config": config,
        "settings": {**asdict(settings), "seeds": None, "policies": None},
        "policy": policy,
        "seed": seed,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --- the nightly run on a twin's warehouse --------------------------------------------------------


JobRunner = Callable[[str, str, Path], None]
"""Runs Spark job ``jobs.<job>`` for a run date with a twin's config file: as a child process
(``child_process_jobs``, the default) or in a Spark session the caller keeps (``jobs.shop_loop``)."""


def child_process_jobs(job: str, run_date: str, config_file: Path) -> None:
    """A Spark job as ``dqlrec task`` runs it: a child process with the twin's config."""
    from dql_model.config import load_config
    from dql_model.ops import spark_jobs

    cfg = load_config(config_file)
    spark_jobs.run_job(job, run_date, config=cfg.to_dict(), scratch=cfg.layout.root)


class NightlyRun:
    """The nightly pipeline in this process, step by step as ``dqlrec task`` chains them; Spark
    steps go through ``run_job``."""

    def __init__(self, progress: Callable[[str], object], run_job: JobRunner = child_process_jobs) -> None:
        self.progress = progress
        self.run_job = run_job

    def __call__(self, cfg: Config, run_date: str, config_file: Path) -> dict[str, Any]:
        from dql_model.contract import steps
        from dql_model.pipeline import tasks

        timings: dict[str, float] = {}
        gate: dict[str, Any] = {}

        def done(step, result: dict[str, Any], seconds: float) -> None:
            timings[step.name] = round(seconds, 2)
            if step.name == "evaluate_and_gate":
                gate.update(result)

        tasks.run_steps(
            steps.STEPS,
            run_date,
            cfg=cfg,
            run_job=lambda job: self.run_job(job, run_date, config_file),
            warn=self.progress,
            step_done=done,
        )
        return {
            "timings": timings,
            "gate": {k: gate.get(k) for k in ("promoted", "scoring_version", "reason")},
        }


# --- lists ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lists:
    """What every shopper of a shop is shown: catalogue positions (-1 empty) and their propensities."""

    items: np.ndarray
    """[n_users, K] int64 catalogue positions."""
    propensity: np.ndarray
    """[n_users, K] the serving policy's marginal probability of each item at its position."""
    model_version: np.ndarray
    """[n_users] the model that ranked each list ('' for none)."""


def _index_in(values: pa.ChunkedArray | pa.Array, known, what: str) -> np.ndarray:
    """Positions of ``values`` in ``known`` (a hash lookup, no loop per row); every value must be there."""
    found = pc.index_in(values, value_set=pa.array(np.asarray(known, dtype=object), pa.string()))
    if found.null_count:
        missing = pc.filter(values, pc.is_null(found)).to_pylist()[:5]
        raise ValueError(f"{found.null_count} {what} not in the shop, e.g. {missing}")
    return found.to_numpy(zero_copy_only=False).astype(np.int64)


def _positions(shop: LiveShop, item_id: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Catalogue positions of the shop's item ids."""
    return _index_in(item_id, shop.simulator.item_ids, "item ids")


def _user_rows(shop: LiveShop, user_id: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Rows (user indices) of the shop's user ids."""
    return _index_in(user_id, shop.simulator.user_ids, "user ids")


def lists_from_table(shop: LiveShop, table: pa.Table, top_k: int) -> Lists:
    """Lists from a recommendations table (schema ``RECOMMENDATIONS``, or a candidate's user_id, rank,
    item_id: propensity 1, no model version); shoppers without rows see nothing."""
    n = shop.n_users
    items = np.full((n, top_k), -1, dtype=np.int64)
    propensity = np.ones((n, top_k))
    versions = np.full(n, "", dtype=object)
    if table.num_rows:
        rows = _user_rows(shop, table.column(schema.USER_ID))
        rank = table.column(schema.RANK).to_numpy() - 1
        keep = rank < top_k
        items[rows[keep], rank[keep]] = _positions(shop, table.column(schema.ITEM_ID))[keep]
        if schema.PROPENSITY in table.column_names:
            propensity[rows[keep], rank[keep]] = table.column(schema.PROPENSITY).to_numpy()[keep]
        if schema.MODEL_VERSION in table.column_names:
            versions[rows] = np.array(table.column(schema.MODEL_VERSION).to_pylist(), dtype=object)
    return Lists(items=items, propensity=propensity, model_version=versions)


def published_lists(cfg: Config, run_date: str, shop: LiveShop) -> Lists:
    """The lists the night of ``run_date`` published to the warehouse."""
    folder = cfg.layout.partition(schema.RECOMMENDATIONS, run_date)
    table = pq.read_table(folder, schema=schema.arrow_schema(schema.RECOMMENDATIONS))
    return lists_from_table(shop, table, cfg.score.top_k)


def night_candidates(cfg: Config, run_date: str, version: str, shop: LiveShop) -> dict[str, Lists]:
    """The candidates the off-policy check values for the day after ``run_date``, from that night's
    states, exactly as the nightly off-policy report values them (``judging.candidates``): the scoring
    version's greedy lists and the popularity policy's lists."""
    from dql_model.judging import candidates
    from dql_model.learning import registry
    from dql_model.warehouse import data

    model, meta = registry.load_model(Path(cfg.registry.root) / version, device="cpu")
    exclude = data.exclude_rule(cfg.score, data.night_protocol(cfg, run_date))
    inputs = candidates.NightInputs(cfg, exclude, run_date)
    tonight = data.load_item_features(
        cfg.layout.partition(schema.ITEM_INDEX, run_date), price_buckets=cfg.model.price_buckets
    )
    top_k = cfg.score.top_k
    sources = {
        "greedy": candidates.model_lists(
            model, version, inputs, tonight, top_k=top_k, source=registry.model_source(meta)
        ),
        candidates.POPULARITY: candidates.popularity_lists(inputs, tonight, top_k=top_k),
    }
    day, users = candidates.next_day(run_date), pa.array(list(shop.simulator.user_ids), pa.string())
    return {name: lists_from_table(shop, source(day, users), top_k) for name, source in sources.items()}


def twin_popularity_lists(shop: LiveShop, logs: Sequence[pa.Table], top_k: int) -> Lists:
    """The popularity policy (``dql_model.scoring.popularity``) served by the popularity twin, which runs
    no nightly pipeline: counts of every event in ``logs``, sold-out items left out, what each shopper
    bought in them masked."""
    from dql_model.scoring.popularity import popular_lists, popularity_order

    sim = shop.simulator
    counts = np.zeros(sim.model.n_items + 1)  # index 0 is the policy's padding: positions shift by one
    buyer, bought = [], []
    for events in logs:
        np.add.at(counts, _positions(shop, events.column(schema.ITEM_ID)) + 1, 1.0)
        sold = events.filter(pc.equal(events.column(schema.EVENT_TYPE), schema.PURCHASE))
        buyer.append(_user_rows(shop, sold.column(schema.USER_ID)))
        bought.append(_positions(shop, sold.column(schema.ITEM_ID)) + 1)
    available = np.concatenate([[False], sim.items_table().column(schema.AVAILABLE).to_numpy(zero_copy_only=False)])
    buyer, bought = np.concatenate(buyer), np.concatenate(bought)
    order = np.lexsort((bought, buyer))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(buyer, minlength=shop.n_users))])
    user, rank, item = popular_lists(popularity_order(counts, available), indptr, bought[order], top_k)
    items = np.full((shop.n_users, top_k), -1, dtype=np.int64)
    items[user, rank - 1] = item - 1
    return Lists(
        items=items, propensity=np.ones(items.shape), model_version=np.full(shop.n_users, "", dtype=object)
    )


# --- the off-policy check on a served day --------------------------------------------------------


def estimate_candidate(day: ServedDay, served: Lists, candidate: Lists, users: np.ndarray) -> dict[str, Any]:
    """IPS, SNIPS and DR of ``candidate`` from the day's log of ``served`` lists (one row per shown slot),
    as the nightly evaluation computes them (``ope_night.estimate_candidates``, its reward model).

    ``users`` [requests]: the shopper of each request (a visit). The candidate is deterministic: its
    propensity of the logged item at the logged position is 1 if it puts that item there, else 0.
    """
    req, slot = np.nonzero(served.items[users] >= 0)
    logged = served.items[users[req], slot]
    target = candidate.items[users[req], slot]
    rows = pd.DataFrame(
        {
            schema.REQUEST_ID: req,
            schema.POSITION: slot + 1,
            schema.ITEM_ID: logged.astype(str),
            schema.PROPENSITY: np.clip(served.propensity[users[req], slot], 1e-12, 1.0),
            schema.REWARD: day.slot_reward[req, slot],
        }
    )
    targets = {
        "candidate": Target(
            p_new=(target == logged).astype(np.float64),
            item_id=np.where(target >= 0, target.astype(str), None),
        )
    }
    estimates = estimate_candidates(rows, targets)
    found = estimates["candidates"]["candidate"]
    out: dict[str, Any] = {
        key: {k: found[key][k] for k in ("value", "low", "high", "ess")} for key in schema.OPE_ESTIMATORS
    }
    out["support"] = found["support"]["supported_share"]
    out["logged_value"] = estimates[LOGGING]["value"]
    return out


def check_ope(
    shop: LiveShop, day: ServedDay, served: Lists, candidates: dict[str, Lists], replicates: int
) -> dict[str, Any]:
    """Off-policy estimates of each candidate from ``day`` (served by ``served``), against its truth:
    the mean listed reward per visit over ``replicates`` twin days serving the candidate (the shop
    is left as it was)."""
    out = {}
    for name, lists in candidates.items():
        estimate = estimate_candidate(day, served, lists, day.request_user)
        truth = mean_ci(
            [
                shop.serve(lists.items, replicate=r, advance=False).per_shopper()["list_reward_per_visit"]
                for r in range(1, replicates + 1)
            ]
        )
        for key in schema.OPE_ESTIMATORS:
            estimate[key]["covers"] = bool(estimate[key]["low"] <= truth["mean"] <= estimate[key]["high"])
        out[name] = {**estimate, "truth": truth["mean"], "truth_ci95": truth["ci95"]}
    return out


# --- one twin, the loop, the summary ------------------------------------------------------------


def _write_day(cfg: Config, day: ServedDay) -> None:
    storage.write_partition(day.events, cfg.layout.partition(schema.EVENTS, day.date.isoformat()))
    storage.write_partition(day.impressions, cfg.layout.partition(schema.IMPRESSIONS, day.date.isoformat()))


def run_twin(
    cfg: Config,
    settings: LoopSettings,
    policy: str,
    seed: int,
    folder: Path,
    night: NightlyRun,
    progress: Callable[[str], object] = print,
) -> dict[str, Any]:
    """One policy on one seed's shop for ``settings.days`` days; returns its per-day figures."""
    import shutil

    if folder.exists():  # a twin killed midway starts over: its warehouse mixes nights
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    tcfg = twin_config(cfg, settings, policy, seed, folder)
    config_file = folder / "config.json"
    config_file.write_text(json.dumps(tcfg.to_dict(), default=str))
    shop = ShopSimulator(tcfg.simulator).live()
    write_window(tcfg, shop.simulator, shop.history, progress=lambda _: None)
    logs = [shop.history]
    learned = parse_policy(policy)[0] in LEARNED_MODES
    days, nights = [], []

    def plan(run_date: str) -> tuple[Lists, dict[str, Lists]]:
        if not learned:
            return twin_popularity_lists(shop, logs, settings.top_k), {}
        nights.append({"run_date": run_date, **night(tcfg, run_date, config_file)})
        served = published_lists(tcfg, run_date, shop)
        candidates = {}
        if settings.truth_replicates and settings.explore_slots:
            version = nights[-1]["gate"]["scoring_version"]
            candidates = night_candidates(tcfg, run_date, version, shop)
        return served, candidates

    started = time.perf_counter()
    served, candidates = plan(shop.date.isoformat())
    for d in range(settings.days):
        day = shop.serve(served.items, propensity=served.propensity, model_version=served.model_version)
        checked = check_ope(shop, day, served, candidates, settings.truth_replicates) if candidates else {}
        _write_day(tcfg, day)
        logs.append(day.events)
        figures = day.per_shopper()
        days.append({"date": day.date.isoformat(), **figures, "ope": checked})
        progress(
            f"{policy} seed {seed} day {d + 1}/{settings.days} ({day.date}): return {figures['return']:.4f}, "
            f"purchases {figures['purchases']:.4f}, revenue {figures['revenue']:.3f} per shopper "
            f"({time.perf_counter() - started:.0f}s)"
        )
        if d + 1 < settings.days:
            served, candidates = plan(day.date.isoformat())
    return {
        "policy": policy,
        "seed": seed,
        "days": days,
        "nights": nights,
        "seconds": round(time.perf_counter() - started, 1),
    }


def run_loop(
    cfg: Config,
    settings: LoopSettings,
    folder: str | Path,
    *,
    run_job: JobRunner = child_process_jobs,
    progress: Callable[[str], object] = print,
) -> dict[str, Any]:
    """Every policy on every seed's twin shop; writes and returns the summary (``summarise``)."""
    folder = Path(folder)
    night = NightlyRun(progress, run_job)
    twins = []
    for seed in settings.seeds:
        for policy in settings.policies:
            key = twin_key(cfg, settings, policy, seed)
            cached = folder / "twins" / f"{_folder_name(policy)}-seed{seed}-{key}.json"
            if cached.exists():
                twins.append(storage.read_json(cached))
                progress(f"{policy} seed {seed}: reusing {cached}")
                continue
            twin = run_twin(
                cfg,
                settings,
                policy,
                seed,
                folder / "shops" / f"{_folder_name(policy)}-seed{seed}",
                night,
                progress,
            )
            storage.write_json_atomic(cached, twin)
            twins.append(storage.read_json(cached))  # as a rerun will read it: the same summary either way
    summary = summarise(twins, settings)
    storage.write_json_atomic(folder / SUMMARY_FILE, summary)
    return summary


def summarise(twins: Sequence[dict[str, Any]], settings: LoopSettings) -> dict[str, Any]:
    """Per policy and day: each figure's mean and 95 % interval over seeds; the cumulative return;
    the paired difference of each policy to the reference (supervised when it ran, else the first
    policy) per day and cumulated; and the off-policy coverage over every (seed, day)."""
    by = {(t["policy"], t["seed"]): t for t in twins}
    policies = [p for p in settings.policies if any(k[0] == p for k in by)]
    seeds = sorted({t["seed"] for t in twins})
    out: dict[str, Any] = {"settings": asdict(settings), "policies": {}, "paired": {}, "ope": {}}

    def series(policy: str, figure: str) -> np.ndarray:  # [seeds, days]
        return np.array([[d[figure] for d in by[(policy, s)]["days"]] for s in seeds if (policy, s) in by])

    for policy in policies:
        entry = {}
        for figure in FIGURES:
            values = series(policy, figure)
            entry[figure] = [mean_ci(values[:, d]) for d in range(values.shape[1])]
        entry["cumulative_return"] = mean_ci(series(policy, "return").sum(axis=1))
        entry["mean_night_s"] = float(
            np.mean(
                [sum(n["timings"].values()) for s in seeds for n in by.get((policy, s), {}).get("nights", [])]
                or [0.0]
            )
        )
        out["policies"][policy] = entry
    reference = "supervised" if "supervised" in policies else policies[0]
    out["reference"] = reference
    base = series(reference, "return")
    for policy in policies:
        if policy == reference:
            continue
        diff = series(policy, "return") - base
        out["paired"][policy] = {
            "per_day": [mean_ci(diff[:, d]) for d in range(diff.shape[1])],
            "cumulative": mean_ci(diff.sum(axis=1)),
            "last_7_days": mean_ci(diff[:, -7:].mean(axis=1)),
        }
    checks = [d["ope"] for t in twins for d in t["days"] if d.get("ope")]
    for candidate in sorted({c for check in checks for c in check}):
        rows = [check[candidate] for check in checks if candidate in check]
        out["ope"][candidate] = {
            "checks": len(rows),
            "truth": float(np.mean([r["truth"] for r in rows])),
            "support": float(np.mean([r["support"] for r in rows])),
            **{
                key: {
                    "coverage": float(np.mean([r[key]["covers"] for r in rows])),
                    "mean_width": float(np.mean([r[key]["high"] - r[key]["low"] for r in rows])),
                    "mean_error": float(np.mean([r[key]["value"] - r["truth"] for r in rows])),
                    "mean_ess": float(np.mean([r[key]["ess"] for r in rows])),
                }
                for key in schema.OPE_ESTIMATORS
            },
        }
    return out


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as the tables ``dqlrec simulate`` prints."""
    lines = []
    policies = summary["policies"]
    n_days = len(next(iter(policies.values()))["return"]) if policies else 0
    names = list(policies)
    lines.append("per-day return per shopper (mean +- 95% interval over seeds)")
    lines.append("| day | " + " | ".join(names) + " |")
    lines.append("|---|" + "---|" * len(names))
    for d in range(n_days):
        cells = [
            f"{policies[p]['return'][d]['mean']:.4f} +- {policies[p]['return'][d]['ci95']:.4f}" for p in names
        ]
        lines.append(f"| {d + 1} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("| policy | cumulative return | purchases/shopper/day | revenue/shopper/day | night s |")
    lines.append("|---|---|---|---|---|")
    for p in names:
        e = policies[p]
        c = e["cumulative_return"]
        purchases = np.mean([x["mean"] for x in e["purchases"]])
        revenue = np.mean([x["mean"] for x in e["revenue"]])
        lines.append(
            f"| {p} | {c['mean']:.3f} +- {c['ci95']:.3f} | {purchases:.4f} | {revenue:.3f} | {e['mean_night_s']:.0f} |"
        )
    for p, paired in summary["paired"].items():
        c, last = paired["cumulative"], paired["last_7_days"]
        lines.append(
            f"{p} - {summary['reference']}: cumulative return {c['mean']:+.4f} +- {c['ci95']:.4f}, "
            f"daily over the last 7 days {last['mean']:+.4f} +- {last['ci95']:.4f} (paired over {c['n']} seeds)"
        )
    if summary["ope"]:
        lines.append("")
        lines.append(
            "off-policy estimates vs the true value (listed reward per visit), over every (seed, day)"
        )
        lines.append(
            "| candidate | checks | truth | support | IPS coverage / width | SNIPS coverage / width | DR coverage / width |"
        )
        lines.append("|---|---|---|---|---|---|---|")
        for name, o in summary["ope"].items():
            cells = [f"{o[k]['coverage']:.0%} / {o[k]['mean_width']:.4f}" for k in schema.OPE_ESTIMATORS]
            lines.append(
                f"| {name} | {o['checks']} | {o['truth']:.4f} | {o['support']:.2f} | "
                + " | ".join(cells)
                + " |"
            )
    return "\n".join(lines)
