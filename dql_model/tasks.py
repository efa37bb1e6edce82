"""The nightly DAG's Python tasks, as plain functions of the run date.

Each task reads its inputs from the warehouse and registry, writes only the run date's outputs, and
returns a small JSON-able dict (paths, counts, versions) for XCom. The DAG, the CLI and the tests call
these same functions, so a task can be rerun or debugged without Airflow.
"""

from __future__ import annotations

import json
import logging
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dql_model import schema, storage
from dql_model.config import Config, load_config

log = logging.getLogger("dqlrec")

STAGING = "staging"


def _say(message: str, *args: Any) -> None:
    """Progress line in the task log and on stdout (the CLI and `make run` show it)."""
    text = message % args if args else message
    log.info(text)
    print(f"[dqlrec] {text}", flush=True)


def run_config(*, top_k: int = 0, force_cpu: bool = False, **_ignored: Any) -> Config:
    """The configuration with the manual-trigger params applied on top."""
    cfg = load_config()
    overrides: dict[str, dict[str, Any]] = {}
    if top_k:
        overrides["score"] = {"top_k": int(top_k)}
    if force_cpu:
        overrides["train"] = {"device": "cpu"}
    return cfg.replace(**overrides) if overrides else cfg


def etl_summary_path(cfg: Config, run_date: str) -> Path:
    return Path(cfg.warehouse.path("curated", "_runs", f"{schema.RUN_DATE}={run_date}", "build_training_data.json"))


def staged_recommendations_path(cfg: Config, run_date: str) -> Path:
    return Path(cfg.warehouse.path(STAGING, schema.RECOMMENDATIONS, f"{schema.RUN_DATE}={run_date}"))


def scoring_summary_path(cfg: Config, run_date: str) -> Path:
    """Counts of the staged recommendations, written by either scoring engine for the validate task."""
    return Path(cfg.warehouse.path(STAGING, "_runs", f"{schema.RUN_DATE}={run_date}", "score_users.json"))


def report_dir(cfg: Config, run_date: str) -> Path:
    return Path(cfg.warehouse.path("reports", f"{schema.RUN_DATE}={run_date}"))


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
    tmp.replace(path)


# --- 1. raw events ------------------------------------------------------------------------------


def validate_raw_events(run_date: str, cfg: Config | None = None) -> dict[str, Any]:
    """Great Expectations over the run date's raw events partition; fails the run on a broken contract."""
    from dql_model import quality

    cfg = cfg or load_config()
    partition = f"{schema.EVENT_DATE}={run_date}"
    folder = cfg.warehouse.path("raw", schema.EVENTS, partition)
    try:
        events = storage.read_partition(folder).to_pandas()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"raw events partition {folder} is missing: no events were loaded for {run_date}. "
            "Load the day's events (or `dqlrec generate` for the demo) and rerun the date."
        ) from None
    items = storage.read_partition(cfg.warehouse.path("raw", schema.ITEMS), columns=[schema.ITEM_ID])
    report = quality.validate_raw_events(
        events,
        partition=partition,
        known_item_ids=set(items.column(schema.ITEM_ID).to_pylist()),
        max_bad_fraction=cfg.quality.max_bad_fraction,
    )
    report.raise_for_failures()
    _say("raw events %s: %d rows pass the contract", partition, len(events))
    return report.summary()


# --- 2. training data ---------------------------------------------------------------------------


def validate_training_data(run_date: str, cfg: Config | None = None) -> dict[str, Any]:
    """Checks the Spark job's accounting (input = accepted + quarantined) and that there is data to learn."""
    cfg = cfg or load_config()
    path = etl_summary_path(cfg, run_date)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: build_training_data did not finish for {run_date}")
    summary = json.loads(path.read_text())["counts"]
    quarantined = sum(summary["quarantined"].values())
    if summary["input_events"] != summary["accepted"] + quarantined:
        raise ValueError(
            f"{path}: input events {summary['input_events']} != accepted {summary['accepted']} "
            f"+ quarantined {quarantined}; rows were lost between raw and curated tables"
        )
    for key in ("transitions_train", "transitions_validation", "users", "items"):
        if summary.get(key, 0) <= 0:
            raise ValueError(f"{path}: {key} is {summary.get(key)}; nothing to train, evaluate or score")
    _say(
        "training data %s: %d accepted events, %d quarantined %s, %d train / %d validation transitions",
        run_date,
        summary["accepted"],
        quarantined,
        summary["quarantined"],
        summary["transitions_train"],
        summary["transitions_validation"],
    )
    return {k: summary[k] for k in ("accepted", "transitions_train", "transitions_validation", "users", "items")}


# --- 3. training --------------------------------------------------------------------------------


def train_model(
    run_date: str,
    *,
    skip_training: bool = False,
    model_version: str = "",
    cfg: Config | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Trains a challenger on the run's transitions and registers it (the gate decides on promotion)."""
    from dql_model import registry
    from dql_model.train import train_model as fit

    cfg = cfg or run_config(**options)
    if skip_training or model_version:
        reason = f"pinned model {model_version}" if model_version else "skip_training is set"
        _say("training skipped: %s", reason)
        return {"trained": False, "reason": reason}

    warm_start = None
    incumbent = registry.incumbent_for(cfg.registry.root, run_date)
    if incumbent:
        warm_start, _ = registry.load_model(Path(cfg.registry.root) / incumbent)
    result = fit(
        cfg,
        transitions_dir=cfg.warehouse.partition(schema.TRANSITIONS, run_date),
        item_index_dir=cfg.warehouse.partition(schema.ITEM_INDEX, run_date),
        warm_start=warm_start,
        progress=_say,
    )
    version = registry.save_model(
        result.model,
        cfg,
        registry_root=cfg.registry.root,
        metrics={"history": result.history, "best": result.best_metrics},
        data_window={
            "run_date": run_date,
            "train_days": cfg.etl.train_days,
            "val_days": cfg.etl.val_days,
            "transitions": result.n_transitions,
            "warm_start_from": incumbent,
        },
        version_prefix=run_date.replace("-", ""),
    )
    _say("trained challenger %s on %s in %.0f s", version, result.device, result.seconds)
    return {
        "trained": True,
        "version": version,
        "device": str(result.device),
        "seconds": round(result.seconds, 1),
        "transitions": result.n_transitions,
    }


# --- 4. evaluation and gate ---------------------------------------------------------------------


def evaluate_and_gate(
    run_date: str,
    training: dict[str, Any],
    *,
    model_version: str = "",
    cfg: Config | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Ranks the validation window with the challenger, the champion and the baselines (supervised,
    co-occurrence, popularity, fitted here); promotes or keeps; simulates the policies' value."""
    from dql_model import baselines, evaluate, plots, policy_eval, registry
    from dql_model.data import load_item_features, load_transitions

    cfg = cfg or run_config(**options)
    root = Path(cfg.registry.root)
    if model_version:
        if not (root / model_version).is_dir():
            raise FileNotFoundError(f"pinned model version {model_version} is not in the registry {root}")
        _say("scoring with pinned model %s; gate not applied", model_version)
        return {"scoring_version": model_version, "promoted": False, "reason": "pinned by the trigger"}

    transitions_dir = cfg.warehouse.partition(schema.TRANSITIONS, run_date)
    item_index_dir = cfg.warehouse.partition(schema.ITEM_INDEX, run_date)
    items = load_item_features(item_index_dir, price_buckets=cfg.model.price_buckets)
    val = load_transitions(transitions_dir, max_len=cfg.etl.max_len, split=schema.VALIDATION)

    scorers = {}
    challenger = training.get("version") if training.get("trained") else None
    # Without a challenger the current champion scores; with one, it faces the incumbent.
    champion = registry.incumbent_for(root, run_date) if challenger else registry.champion_version(root)
    for name, version in (("challenger", challenger), ("champion", champion)):
        if version and not (name == "champion" and version == challenger):
            model, _ = registry.load_model(root / version)
            scorers[name] = evaluate.QNetworkScorer(model, n_items=items.n_items)
    fitted = baselines.fit_baselines(
        cfg, transitions_dir=transitions_dir, item_index_dir=item_index_dir, items=items, val=val, progress=_say
    )
    scorers.update(fitted.scorers)
    results = evaluate.evaluate_models(scorers, val)
    for name, metrics in results.items():
        _say(
            "%-10s ndcg@10 %.4f  hr@10 %.4f  purchase ndcg@10 %.4f",
            name,
            metrics["eval/ndcg@10"],
            metrics["eval/hr@10"],
            metrics["eval/purchase/ndcg@10"],
        )

    if challenger is None and champion is None:
        raise RuntimeError(
            f"no model to score with for {run_date}: training did not produce a challenger "
            f"({training.get('reason', 'train_model failed')}) and the registry {root} has no champion"
        )
    if challenger is None:
        promoted, reason = False, f"no challenger ({training.get('reason', 'train_model failed')})"
    else:
        promoted, reason = registry.gate(
            results.get("champion"),
            results["challenger"],
            metric=cfg.registry.gate_metric,
            tolerance=cfg.registry.gate_tolerance,
        )
        # Point the champion explicitly either way: on a rerun it may still name this date's model.
        registry.set_champion(root, challenger if promoted else champion)
    scoring_version = registry.champion_version(root)
    _say("gate: %s (%s); scoring with %s", "promoted" if promoted else "kept champion", reason, scoring_version)
    evaluation = {
        "run_date": run_date,
        "validation_events": int(len(val.action)),
        "metrics": results,
        "champion_before": champion,
        "challenger": challenger,
        "promoted": promoted,
        "reason": reason,
        "scoring_version": scoring_version,
        "gate_metric": cfg.registry.gate_metric,
        "baselines": fitted.details,
        "learning_curves": {
            **({"challenger": registry.version_metrics(root, challenger).get("history", [])} if challenger else {}),
            **fitted.histories,
        },
    }
    if cfg.train.sim_users > 0:
        # The DQN in the simulation is the one in the table: tonight's challenger, else the champion.
        dqn = "challenger" if "challenger" in scorers else "champion"
        policies = {dqn: scorers[dqn], **fitted.scorers}
        # The first protocol is the headline (plots, summary); the others are reported beside it.
        headline, *others = policy_eval.sim_refresh_modes(cfg)
        evaluation["simulation"] = policy_eval.simulate_policies(
            policies, cfg, items, refresh=headline, progress=_say
        )
        evaluation["simulation_more"] = [
            policy_eval.simulate_policies(policies, cfg, items, refresh=mode, progress=_say) for mode in others
        ]
    try:
        evaluation["plots"] = plots.write_plots(evaluation, report_dir(cfg, run_date))
    except Exception as error:  # a figure must not hold back tonight's recommendations
        _say("warning: plots not written: %r", error)
    _write_json(report_dir(cfg, run_date) / "evaluation.json", evaluation)
    return {"scoring_version": scoring_version, "promoted": promoted, "reason": reason}


# --- 5. scoring ---------------------------------------------------------------------------------


def score_users(run_date: str, gate: dict[str, Any], *, cfg: Config | None = None, **options: Any) -> dict[str, Any]:
    """Top-K for every user, written to a staging partition that readers never see.

    ``score.engine`` picks the engine: torch (batched matrix products here) or spark (the Spark job,
    in this process; the DAG submits it with spark-submit instead). Both give the same rows.
    """
    cfg = cfg or run_config(**options)
    version = gate["scoring_version"]
    if cfg.score.engine == "spark":
        from jobs.score_recommendations import run as run_spark_job
        from jobs.spark_session import get_spark

        scored = run_spark_job(get_spark(cfg.spark, "dqlrec-score-recommendations"), cfg, run_date, version)
    else:
        scored = _score_with_torch(cfg, run_date, version)
    _say(
        "scored %d users with %s on %s (top %d): %s",
        scored["users"],
        version,
        scored["engine"],
        scored["top_k"],
        ", ".join(f"{n} {source} rows" for source, n in scored["sources"].items()),
    )
    return scored


def _score_with_torch(cfg: Config, run_date: str, version: str) -> dict[str, Any]:
    import pyarrow.compute as pc

    from dql_model import registry
    from dql_model.data import action_counts, load_item_features, load_user_states
    from dql_model.score import Policy
    from dql_model.score import score_users as score
    from dql_model.train import resolve_device

    policy = Policy.from_config(cfg.score, run_date)
    device = resolve_device(cfg.train.device)
    model, _ = registry.load_model(Path(cfg.registry.root) / version, device=str(device))
    items = load_item_features(cfg.warehouse.partition(schema.ITEM_INDEX, run_date), price_buckets=cfg.model.price_buckets)
    states = load_user_states(cfg.warehouse.partition(schema.USER_STATES, run_date), max_len=cfg.etl.max_len)
    transitions = cfg.warehouse.partition(schema.TRANSITIONS, run_date)
    popularity = sum(action_counts(transitions, n_items=items.n_items, split=s) for s in (schema.TRAIN, schema.VALIDATION))

    table = score(
        model,
        states,
        items,
        top_k=policy.top_k,
        batch_size=cfg.score.batch_size,
        popularity=popularity,
        model_version=version,
        generated_at=datetime.now(UTC),
        mask_purchased=policy.mask_purchased,
        device=str(device),
        explore_slots=policy.explore_slots,
        explore_epsilon=policy.explore_epsilon,
        explore_temperature=policy.temperature,
        seed=policy.seed,
    )
    path = staged_recommendations_path(cfg, run_date)
    storage.write_partition(table, path, rows_per_file=cfg.publish.rows_per_file)
    counts = dict(zip(*(c.to_pylist() for c in pc.value_counts(table.column(schema.SOURCE)).flatten()), strict=True))
    scored = {
        "run_date": run_date,
        "path": str(path),
        "rows": table.num_rows,
        "users": pc.count_distinct(table.column(schema.USER_ID)).as_py(),
        "model_version": version,
        "top_k": policy.top_k,
        "engine": f"torch ({device})",
        "sources": {name: int(counts.get(name, 0)) for name in schema.SOURCES},
    }
    _write_json(scoring_summary_path(cfg, run_date), scored)
    return scored


# --- 6. recommendations check -------------------------------------------------------------------


def validate_recommendations(
    run_date: str, scored: dict[str, Any] | None, *, cfg: Config | None = None, **options: Any
) -> dict[str, Any]:
    """Great Expectations over the staged recommendations; nothing is published if they fail.

    ``scored`` is score_users' result; None reads the summary the scoring engine wrote (the DAG's
    Spark path has no XCom to pass).
    """
    from dql_model import quality

    cfg = cfg or run_config(**options)
    if scored is None:
        summary = scoring_summary_path(cfg, run_date)
        if not summary.is_file():
            raise FileNotFoundError(f"{summary} is missing: scoring did not finish for {run_date}; rerun score_users")
        scored = json.loads(summary.read_text())
    table = storage.read_partition(staged_recommendations_path(cfg, run_date))
    report = quality.validate_recommendations(table.to_pandas(), top_k=scored["top_k"], run_date=run_date)
    report.raise_for_failures()
    _say("recommendations %s: %d rows pass the contract", run_date, table.num_rows)
    return {**scored, **report.summary()}


# --- 7. publishing ------------------------------------------------------------------------------


def publish_recommendations(run_date: str, validated: dict[str, Any], *, cfg: Config | None = None) -> dict[str, Any]:
    """Swaps the warehouse partition in atomically, replaces the date in the SQL sink (if configured)
    in one transaction, then exports with manifest and _SUCCESS last.

    Each step replaces the run date whole and the staged partition is removed only after the last
    one, so after a failure anywhere a rerun of this task completes the publish; other dates are
    never touched.
    """
    from dql_model import publish

    cfg = cfg or load_config()
    staged = staged_recommendations_path(cfg, run_date)
    table = storage.read_partition(staged)
    warehouse_path = publish.publish_warehouse(table, cfg, run_date)
    sql_rows = None
    if cfg.publish.sql_url:
        from dql_model import sinks

        sql_rows = sinks.replace_run_date(
            table, url=cfg.publish.sql_url, run_date=run_date, table_name=cfg.publish.sql_table
        )
    manifest = publish.export(
        table,
        uri=cfg.publish.export_uri,
        run_date=run_date,
        model_version=validated["model_version"],
        config_hash=cfg.hash(),
        rows_per_file=cfg.publish.rows_per_file,
        attempts=cfg.publish.s3_attempts,
        backoff_s=cfg.publish.s3_backoff_s,
    )
    shutil.rmtree(staged, ignore_errors=True)
    export_uri = publish.partition_uri(cfg.publish.export_uri, run_date)
    sql_note = f" and {sql_rows} rows to SQL table {cfg.publish.sql_table}" if cfg.publish.sql_url else ""
    _say("published %d rows to %s and %s%s", table.num_rows, warehouse_path, export_uri, sql_note)
    return {
        "run_date": run_date,
        "warehouse_path": str(warehouse_path),
        "export_uri": export_uri,
        "rows": table.num_rows,
        "users": manifest.user_count,
        "files": len(manifest.files),
        "sql_table": cfg.publish.sql_table if cfg.publish.sql_url else None,
        "sql_rows": sql_rows,
        "model_version": validated["model_version"],
        "top_k": validated["top_k"],
    }


# --- 8. report ----------------------------------------------------------------------------------


def write_report(run_date: str, published: dict[str, Any], *, cfg: Config | None = None) -> dict[str, Any]:
    """summary.json and report.md for the run, next to evaluation.json."""
    from dql_model import report

    cfg = cfg or load_config()
    folder = report_dir(cfg, run_date)
    evaluation_path = folder / "evaluation.json"
    evaluation = json.loads(evaluation_path.read_text()) if evaluation_path.is_file() else {}
    etl_path = etl_summary_path(cfg, run_date)
    etl = json.loads(etl_path.read_text())["counts"] if etl_path.is_file() else {}
    summary = {
        "run_date": run_date,
        "published": published,
        "evaluation": evaluation,
        "etl": etl,
        "config_hash": cfg.hash(),
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    _write_json(folder / "summary.json", summary)
    (folder / "report.md").write_text(report.render_markdown(summary))
    _say("report written to %s", folder)
    return {"report_dir": str(folder)}
