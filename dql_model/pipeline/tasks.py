"""The nightly DAG's Python tasks: thin adapters between the orchestrator and the domain modules.

Each task reads its inputs, calls one domain function, and returns a small JSON-able dict (paths,
counts, versions) for XCom. Every task has the signature ``name(run_date, [upstream result], *,
options, cfg)``: the upstream result is there when ``pipeline.step(name).needs`` names one. The DAG, the CLI and the tests call these same functions, so a task can
be rerun or debugged without Airflow. ``dql_model.contract.steps`` holds their order; ``RunOptions`` the
manual-trigger options; ``cfg`` (default: ``load_config()``) the rest.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dql_model import faults
from dql_model.config import Config, ConfigError, load_config
from dql_model.contract import schema
from dql_model.contract.layout import ETL_JOB
from dql_model.errors import MissingInput
from dql_model.warehouse import locks, storage

log = logging.getLogger("dqlrec")


def say(message: str) -> None:
    """Progress line in the task log and on stdout (the CLI and `make run` show it)."""
    log.info(message)
    print(f"[dqlrec] {message}", flush=True)


def warn(message: str) -> None:
    """Like ``say``, for something that fails nothing but must be seen."""
    log.warning(message)
    print(f"[dqlrec] warning: {message}", flush=True)


FULL_REBUILD_ARG = "--full-rebuild"
"""build_training_data's flag for RunOptions.full_rebuild, followed by true or false."""


@dataclass(frozen=True)
class RunOptions:
    """What a manual trigger may change (the DAG's params, ``dqlrec task`` flags)."""

    top_k: int = 0
    """Recommendations per user; 0: score.top_k."""
    skip_training: bool = False
    """Score with the current champion without training a challenger."""
    model_version: str = ""
    """Score with this registry version (implies skip_training); empty: the champion."""
    force_cpu: bool = False
    """Train and score on CPU even when a GPU is present."""
    full_rebuild: bool = False
    """Rebuild user states and transitions from every raw partition (build_training_data --full-rebuild)."""

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> RunOptions:
        """From a DAG run's params (``run_date`` is passed on its own); an unknown key is an error."""
        known = {f.name: f.type for f in dataclasses.fields(cls)}
        given = {key: value for key, value in params.items() if key != "run_date"}
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ConfigError(f"unknown run option(s) {unknown}; the options are {sorted(known)}")
        kinds = {"int": int, "bool": bool, "str": str}
        for key, value in given.items():
            if not isinstance(value, kinds[known[key]]) or (known[key] == "int" and isinstance(value, bool)):
                raise ConfigError(f"run option {key}={value!r}: expected {known[key]}")
        return cls(**given)

    def job_args(self, job: str) -> list[str]:
        """The options a step's Spark job takes on its command line (the DAG renders the same from its params)."""
        if job == ETL_JOB:
            return [FULL_REBUILD_ARG, str(self.full_rebuild).lower()]
        return []

    def apply(self, cfg: Config) -> Config:
        """The configuration with these options on top."""
        overrides: dict[str, dict[str, Any]] = {}
        if self.top_k:
            overrides["score"] = {"top_k": self.top_k}
        if self.force_cpu:
            overrides["train"] = {"device": "cpu"}
        return cfg.replace(**overrides) if overrides else cfg


DEFAULTS = RunOptions()
"""A scheduled run's options: nothing changed."""


def _config(cfg: Config | None, options: RunOptions) -> Config:
    return options.apply(cfg or load_config())


def _torch_config(cfg: Config | None, options: RunOptions) -> Config:
    """The config of a task that runs torch, with torch's threads set from it (dql_model.ops.threads)."""
    from dql_model.ops.threads import set_torch_threads

    cfg = _config(cfg, options)
    set_torch_threads(cfg.train.threads)
    return cfg


def _holds_run_date_lock(task):
    """Run the task under its run date's lock (dql_model.warehouse.locks), between two kill points (dql_model.faults).

    A second run of the same date waits for this one, or fails naming it; the lock is released
    however the task ends.
    """

    @functools.wraps(task)
    def locked(run_date: str, *upstream: Any, options: RunOptions = DEFAULTS, cfg: Config | None = None):
        cfg = _config(cfg, options)
        with locks.hold(cfg, run_date, task.__name__):
            faults.point(f"{task.__name__}:start")
            result = task(run_date, *upstream, options=options, cfg=cfg)
            faults.point(f"{task.__name__}:end")
        return result

    return locked


def _read_json(path: str, missing: str) -> dict[str, Any]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} is missing: {missing}")
    return json.loads(Path(path).read_text())


@_holds_run_date_lock
def validate_raw_events(run_date: str, *, options: RunOptions = DEFAULTS, cfg: Config | None = None) -> dict[str, Any]:
    """Great Expectations over the run date's raw events partition; fails the run on a broken contract."""
    from dql_model.warehouse import quality

    cfg = _config(cfg, options)
    report = quality.check_raw_partition(cfg, run_date)
    for warning in report.warnings:
        warn(f"raw events {report.partition}: {warning}")
    say(f"raw events {report.partition}: {report.row_count} rows pass the contract")
    return report.summary()


@_holds_run_date_lock
def validate_training_data(run_date: str, *, options: RunOptions = DEFAULTS, cfg: Config | None = None) -> dict[str, Any]:
    """The ETL job's accounting (input = accepted + quarantined) and that there is data to learn from."""
    from dql_model.warehouse import quality

    cfg = _config(cfg, options)
    path = cfg.layout.etl_summary(run_date)
    counts = _read_json(path, f"build_training_data did not finish for {run_date}")["counts"]
    checked = quality.check_training_counts(counts, where=path)
    say(
        f"training data {run_date}: {counts['accepted']} accepted events, "
        f"{sum(counts['quarantined'].values())} quarantined {counts['quarantined']}, "
        f"{counts['transitions_train']} train / {counts['transitions_validation']} validation transitions"
    )
    return checked


@_holds_run_date_lock
def train_model(run_date: str, *, options: RunOptions = DEFAULTS, cfg: Config | None = None) -> dict[str, Any]:
    """Trains a challenger on the run's transitions and registers it (the gate decides on promotion), and
    the supervised baseline it will be judged against (saved beside, never a champion)."""
    from dql_model.judging import report
    from dql_model.learning import supervised_baseline
    from dql_model.learning.train import train_challenger

    cfg = _torch_config(cfg, options)
    if options.skip_training or options.model_version:
        reason = f"pinned model {options.model_version}" if options.model_version else "skip_training is set"
        say(f"training skipped: {reason}")
        return {"trained": False, "reason": reason}
    folder = cfg.layout.report(run_date)
    report.record_training_failure(folder, None)
    tuned = tuned_line(cfg)
    if tuned:
        say(tuned)
    challenger_cfg, baseline_cfg = training_budgets(cfg)
    try:
        trained = train_challenger(challenger_cfg, run_date, progress=say)
    except Exception as error:  # noted for the gate, which then lets the champion score (degraded)
        report.record_training_failure(folder, error)
        raise
    say(
        f"trained challenger {trained['version']} on {trained['device']} in {trained['seconds']:.0f} s: "
        f"{trained['epochs']} epochs, best {trained['best_epoch']}, stopped by {trained['stopped_by']}"
    )
    # The baseline it is judged against trains here too, on the same data and budget: the gate only judges.
    baseline = supervised_baseline.train_and_save(baseline_cfg, run_date, progress=say)
    return {"trained": True, **trained, "baseline": baseline, **({"tuned": tuned} if tuned else {})}


def tuned_line(cfg: Config) -> str:
    """Which tuned settings (``dqlrec tune``) this config runs with and when they were tuned; empty without a
    tuned file (or with tune.use_tuned off). The train_model task logs it; the report repeats it."""
    from dql_model.config import tuned_settings

    tuned = tuned_settings(cfg)
    return tuned.describe(cfg) if tuned else ""


def training_budgets(cfg: Config) -> tuple[Config, Config]:
    """(the challenger's config, each supervised trial's config): ``train.max_minutes`` is the training
    step's budget, half for the challenger and half for the baseline's ``eval.baseline_trials`` trials."""
    if cfg.train.max_minutes <= 0:
        return cfg, cfg
    half = cfg.train.max_minutes / 2
    per_trial = half / max(1, cfg.eval.baseline_trials)
    return cfg.replace(train={"max_minutes": half}), cfg.replace(train={"max_minutes": per_trial})


@_holds_run_date_lock
def evaluate_and_gate(
    run_date: str, training: dict[str, Any], *, options: RunOptions = DEFAULTS, cfg: Config | None = None
) -> dict[str, Any]:
    """Challenger vs champion vs baselines on validation; promotes or keeps; writes evaluation.json."""
    from dql_model.judging import gate, history, report
    from dql_model.learning import registry

    cfg = _torch_config(cfg, options)
    if options.model_version:
        try:
            registry.check_version_name(options.model_version)
        except ValueError as error:
            raise ConfigError(f"run option model_version: {error}") from None
        if not (Path(cfg.registry.root) / options.model_version).is_dir():
            raise MissingInput(f"pinned model version {options.model_version} is not in the registry {cfg.registry.root}")
        say(f"scoring with pinned model {options.model_version}; gate not applied")
        return {"scoring_version": options.model_version, "promoted": False, "reason": "pinned by the trigger"}
    challenger = training.get("version") if training.get("trained") else None
    folder = cfg.layout.report(run_date)
    status = report.degraded_status(
        folder, trained=bool(challenger), deliberate=options.skip_training, error=training.get("error", "")
    )
    if status["degraded"]:
        warn(f"run {run_date} is degraded: {status['degraded_reason']}")
    night = gate.evaluate_night(
        cfg,
        run_date,
        challenger,
        no_challenger_reason=training.get("reason") or status["degraded_reason"] or "train_model failed",
        supervised_baseline=training.get("baseline"),
        progress=say,
    )
    trained_with = ("tuned", "shape", "refit", "refit_reason")  # the settings tonight trained with, its refit
    settings = {key: training[key] for key in trained_with if training.get(key)}
    # the run history's trend shows the night's training time: the challenger's and its refit's
    seconds = training.get("seconds")
    trained_s = {history.TRAINING_SECONDS: None if seconds is None else round(seconds + training.get("refit_seconds", 0.0), 1)}
    report.write_evaluation({**night.to_json(), **status, **settings, **trained_s}, folder, progress=say)
    return {**night.decision(), **status}


@_holds_run_date_lock
def score_users(
    run_date: str, gate: dict[str, Any], *, options: RunOptions = DEFAULTS, cfg: Config | None = None
) -> dict[str, Any]:
    """Top-K for every user with ``score.engine`` (torch here, or the Spark job), staged unseen by readers."""
    from dql_model.scoring import engines

    scored = engines.score(_torch_config(cfg, options), run_date, gate["scoring_version"])
    sources = ", ".join(f"{n} {source} rows" for source, n in scored.sources.items())
    say(f"scored {scored.users} users with {scored.model_version} on {scored.engine} (top {scored.top_k}): {sources}")
    if scored.masks_line():
        say(scored.masks_line())
    status = {key: gate.get(key, default) for key, default in (("degraded", False), ("degraded_reason", ""))}
    return {**scored.to_dict(), **status}


@_holds_run_date_lock
def validate_recommendations(
    run_date: str, scored: dict[str, Any] | None, *, options: RunOptions = DEFAULTS, cfg: Config | None = None
) -> dict[str, Any]:
    """Great Expectations over the staged recommendations; nothing is published if they fail.

    ``scored`` is score_users' result; None reads the summary the scoring engine wrote (the DAG's
    Spark path has no XCom to pass).
    """
    from dql_model.warehouse import quality

    cfg = _config(cfg, options)
    if scored is None:
        scored = _read_json(
            cfg.layout.scoring_summary(run_date), f"scoring did not finish for {run_date}; rerun score_users"
        )
    table = storage.read_partition(cfg.layout.staged(schema.RECOMMENDATIONS, run_date))
    report = quality.validate_recommendations_by_share(
        table, top_k=scored["top_k"], run_date=run_date, docs_dir=cfg.layout.data_docs()
    )
    report.raise_for_failures()
    say(f"recommendations {run_date}: {table.num_rows} rows pass the contract")
    return {**scored, **report.summary()}


@_holds_run_date_lock
def publish_recommendations(
    run_date: str, validated: dict[str, Any], *, options: RunOptions = DEFAULTS, cfg: Config | None = None
) -> dict[str, Any]:
    """Warehouse partition, optional SQL table, then the export with manifest and _SUCCESS last."""
    from dql_model.judging import report
    from dql_model.publishing import publish

    published = publish.publish_run(cfg, run_date, model_version=validated["model_version"])
    # The torch path passes the gate's verdict on; the Spark path has no XCom: evaluation.json has it.
    status = report.run_status(cfg.layout.report(run_date))
    published.update({key: validated.get(key, value) for key, value in status.items()})
    sql_note = f" and {published['sql_rows']} rows to SQL table {published['sql_table']}" if published["sql_table"] else ""
    say(f"published {published['rows']} rows to {published['warehouse_path']} and {published['export_uri']}{sql_note}")
    if published["degraded"]:
        warn(f"published a degraded run: {published['degraded_reason']}")
    return {**published, "top_k": validated["top_k"]}


ASSET_EXTRA = ("run_date", "rows", "users", "export_uri", "model_version", "degraded", "degraded_reason")
"""What the published asset event tells downstream DAGs (publish_recommendations' result, these keys)."""


def asset_extra(published: dict[str, Any]) -> dict[str, Any]:
    """The extra of the asset event a publish emits: which date, where, which model, degraded or not."""
    return {key: published[key] for key in ASSET_EXTRA}


@_holds_run_date_lock
def write_report(
    run_date: str, published: dict[str, Any], *, options: RunOptions = DEFAULTS, cfg: Config | None = None
) -> dict[str, Any]:
    """summary.json and report.md for the run, next to evaluation.json."""
    from dql_model.judging import report

    cfg = _config(cfg, options)
    folder = report.write_run_report(cfg, run_date, published, written_at=datetime.now(UTC))
    say(f"report written to {folder}")
    return {"report_dir": folder}


def run_steps(
    steps: Sequence[Any],
    run_date: str,
    *,
    cfg: Config,
    options: RunOptions = DEFAULTS,
    run_job: Callable[[str], object],
    warn: Callable[[str], object],
    step_done: Callable[[Any, dict[str, Any], float], object] | None = None,
) -> dict[str, Any]:
    """Run ``pipeline`` steps in order outside Airflow, each task taking the result of the one before
    as the DAG's XCom; a Spark step goes to ``run_job(job)``. Returns the last step's result.

    As the DAG's gate runs after a failed training (trigger rule all_done), a failed ``train_model``
    that is not the last step lets the champion score: ``warn`` says so and the chain goes on.
    ``step_done(step, result, seconds)`` is told after each step.
    """
    from dql_model.errors import InputError

    result: dict[str, Any] = {}
    for index, step in enumerate(steps):
        started = time.perf_counter()
        if step.job:
            run_job(step.job)
            result = {"job": step.job, "run_date": run_date}
        else:
            upstream = (result,) if step.needs else ()
            try:
                result = globals()[step.name](run_date, *upstream, options=options, cfg=cfg)
            except Exception as error:
                if step.name != "train_model" or index == len(steps) - 1 or isinstance(error, InputError):
                    raise
                warn(f"train_model failed ({error}); the champion scores (degraded run)")
                result = {"trained": False, "error": f"{type(error).__name__}: {error}"}
        if step_done is not None:
            step_done(step, result, time.perf_counter() - started)
    return result
