"""`dqlrec`: the command line of the pipeline.

    dqlrec generate [--if-empty]      write the demo shop's raw tables into the warehouse
    dqlrec import --format F PATH     load a data set's native files into the raw tables (dql_model.importers)
    dqlrec task NAME --run-date D     run one nightly task (and those it needs) without Airflow
    dqlrec backfill --from D1 --to D2 run every night of a range in date order; resumable (dql_model.pipeline.backfill)
    dqlrec summary --run-date D       print the closing summary of a run
    dqlrec evaluate [--run-date D]    print the model comparison of a run
    dqlrec simulate [--days N] [--policy P,...] [--seeds S]   the shop in the loop (dql_model.pipeline.shop_loop)
    dqlrec explain USER [--run-date D]   why a user got their published list (dql_model.judging.explain)
    dqlrec config [KEY]               print the resolved configuration (or one value)
    dqlrec demo-date                  print the demo's run date (the simulator's last day)
    dqlrec run-date [D|latest]        print a run date as YYYY-MM-DD; fails when its events are not loaded
    dqlrec first-failure LOG          print the first task failure of an Airflow log (make run's last word)
    dqlrec services start|stop|status the local production-like services (make airflow, make airflow-stop)
    dqlrec models list|show V|promote V|rollback|history [--json]   the model registry and its promotion log
    dqlrec prune [--dry-run] [--json] remove what retention no longer keeps (dql_model.warehouse.retention)
    dqlrec runs [--last N] [--json]   the nights' history from the reports (dql_model.pipeline.runs)
    dqlrec tune [--run-date D|latest] [--trials N] [--minutes M] [--json]   search the learning settings on a
                                      night's validation split (dql_model.pipeline.tuning)

Every command whose output a script reads takes --json (one JSON document on stdout); --config goes before
or after the command; exit status 0 done, 1 failed, 2 bad input or usage (README's command line table).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import yaml

from dql_model import importers
from dql_model.config import Config, ConfigError, UnknownVariableWarning, load_config
from dql_model.contract import schema, steps
from dql_model.errors import EXIT_BAD_INPUT, InputError
from dql_model.ops import spark_jobs
from dql_model.warehouse import run_dates


def _cmd_generate(args: argparse.Namespace) -> int:
    from dql_model.simulation import simulator

    cfg = load_config(args.config)
    if args.if_empty and simulator.warehouse_has_events(cfg):
        if args.json:
            _print_json({"warehouse": cfg.warehouse.root, "generated": False})
        else:
            print(f"warehouse {cfg.warehouse.root} already has events; not generating (use `dqlrec generate` to replace)")
        return 0
    # With --json, stdout is the JSON alone: progress goes to stderr.
    counts = simulator.write_shop(cfg, progress=(lambda line: print(line, file=sys.stderr)) if args.json else print)
    if args.json:
        _print_json({"warehouse": cfg.warehouse.root, "generated": True, **counts})
        return 0
    print(
        f"demo shop written to {cfg.warehouse.root}: {counts['events']} events, {counts['users']} users, "
        f"{counts['items']} items, {counts['first_date']} .. {counts['last_date']}"
    )
    return 0


def _cmd_task(args: argparse.Namespace) -> int:
    """Runs NAME and the steps whose results it needs, in order, passing results on as the DAG's XCom."""
    from dql_model.pipeline import tasks

    cfg = load_config(args.config)
    run_date = run_dates.resolve_run_date(cfg, args.run_date)
    options = _run_options(args)
    result = tasks.run_steps(
        steps.chain_to(args.name),
        run_date,
        cfg=cfg,
        options=options,
        run_job=job_runner(cfg, options, run_date),
        warn=lambda message: print(f"dqlrec: {message}", file=sys.stderr),
    )
    print(json.dumps(result, indent=2, default=str))
    return 0


def _cmd_backfill(args: argparse.Namespace) -> int:
    """Every night of the range through the step runner of `dqlrec task`, oldest first; complete nights skipped."""
    from dql_model.pipeline import backfill, tasks

    cfg = load_config(args.config)
    first, last = (run_dates.resolve_run_date(cfg, value) for value in (args.first, args.last))

    def run_night(run_date: str, options: tasks.RunOptions) -> None:
        tasks.run_steps(
            steps.STEPS, run_date, cfg=cfg, options=options, run_job=job_runner(cfg, options, run_date),
            warn=lambda message: print(f"dqlrec: {message}", file=sys.stderr),
        )  # fmt: skip

    try:
        done = backfill.run_backfill(
            first, last, cfg=cfg, run_night=run_night, options=_run_options(args), rerun=args.rerun,
            progress=lambda message: print(f"[dqlrec] {message}", flush=True),
        )  # fmt: skip
    except backfill.BackfillStopped as stopped:
        print(f"dqlrec: error: {stopped}", file=sys.stderr)
        return 1
    if args.json:
        _print_json(done)
    return 0


def _run_options(args: argparse.Namespace):
    """The trigger options of `dqlrec task` (and `backfill`) flags: dql_model.pipeline.tasks.RunOptions."""
    from dql_model.pipeline import tasks

    return tasks.RunOptions(
        top_k=args.top_k, skip_training=args.skip_training, model_version=args.model_version,
        force_cpu=args.force_cpu, full_rebuild=args.full_rebuild,
    )  # fmt: skip


def job_runner(cfg: Config, options, run_date: str):
    """What runs a Spark step of the night ``run_date`` outside Airflow (``tasks.run_steps``' run_job): its job
    as a child process, with the options it takes."""
    config = options.apply(cfg).to_dict()
    return lambda job: spark_jobs.run_job(job, run_date, options.job_args(job), config=config, scratch=cfg.layout.root)


def _load_report(cfg: Config, run_date: str | None, filename: str) -> dict:
    reports = Path(cfg.layout.reports())
    if run_date is None:
        runs = sorted(p.name for p in reports.glob(f"{schema.RUN_DATE}=*") if (p / filename).is_file())
        if not runs:
            raise FileNotFoundError(f"no run has written {filename} under {reports} yet; run `make run` first")
        run_date = runs[-1].split("=", 1)[1]
    path = reports / f"{schema.RUN_DATE}={run_date}" / filename
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the run for {run_date} did not finish")
    return json.loads(path.read_text())


def _cmd_summary(args: argparse.Namespace) -> int:
    from dql_model.judging import report

    cfg = load_config(args.config)
    summary = _load_report(cfg, args.run_date, report.SUMMARY)
    summary["report_dir"] = cfg.layout.report(summary["run_date"])
    if args.json:
        _print_json(summary)
    else:
        print(report.render_summary(summary))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from dql_model.judging import report

    cfg = load_config(args.config)
    evaluation = _load_report(cfg, args.run_date, report.EVALUATION)
    if args.json:
        # The comparison's figures; the per-epoch learning curves stay in evaluation.json.
        figures = {k: v for k, v in evaluation.items() if k != "learning_curves"}
        _print_json(figures)
    else:
        print(f"run {evaluation['run_date']}, {evaluation['validation_events']} validation events")
        if report.protocol_line(evaluation):
            print(report.protocol_line(evaluation))
        unscorable = evaluation.get("unscorable") or {}
        print(report.comparison_table(evaluation["metrics"], unscorable=unscorable))
        if unscorable:
            print(report.absent_columns_line(unscorable))
        print(f"gate: {'promoted' if evaluation['promoted'] else 'kept champion'} ({evaluation['reason']})")
        if evaluation.get("new_items"):
            print("\nnew items:")
            print(report.new_item_table(evaluation["new_items"]))
            print(report.new_item_caption(evaluation["new_items"]))
        if evaluation.get("ope"):
            print("off-policy estimates (impressions):")
            print(report.ope_table(evaluation["ope"]))
            print(report.ope_caption(evaluation))
        for simulation in report.simulations(evaluation):
            print(f"\n{report.simulation_title(simulation)}:")
            print(report.simulation_table(simulation))
            print(report.simulation_caption(simulation))
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from dql_model.judging import explain

    cfg = load_config(args.config)
    run_date = schema.iso_date(args.run_date) if args.run_date else explain.latest_published(cfg)
    explained = explain.explain(cfg, args.user, run_date)
    if args.json:
        _print_json(explained)
    else:
        print(explain.render(explained))
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    cfg = load_config(args.config).to_dict()
    shown = cfg
    if args.key:
        section, _, name = args.key.partition(".")
        try:
            shown = cfg[section][name] if name else cfg[section]
        except KeyError:
            raise ConfigError(f"unknown config key {args.key!r}") from None
    if args.json:
        _print_json(shown)
    elif isinstance(shown, dict):
        print(yaml.safe_dump(shown, sort_keys=False).rstrip())
    else:
        print(shown)
    return 0


def _cmd_first_failure(args: argparse.Namespace) -> int:
    from dql_model.ops import airflow_log

    with open(args.log, errors="replace") as lines:
        failure = airflow_log.first_task_failure(lines)
    if args.json:
        _print_json(None if failure is None else {"task": failure.task, "error": failure.error})
    elif failure is not None:
        print(failure.render())
    return 1 if failure is None else 0


def _cmd_demo_date(args: argparse.Namespace) -> int:
    _print_value(args, "run_date", load_config(args.config).simulator.end_date)
    return 0


def _print_value(args: argparse.Namespace, name: str, value) -> None:
    """One value: as it is, or as ``{"name": value}`` with --json."""
    if args.json:
        _print_json({name: value})
    else:
        print(value)


def _cmd_simulate(args: argparse.Namespace) -> int:
    """The shop in the loop (``jobs/shop_loop.py``, one Spark session for every night) in a child process."""
    cfg = load_config(args.config)
    folder = Path(args.out or Path(cfg.layout.root).parent / "loop")
    loop_args = [
        "--days", str(args.days), "--policy", args.policy, "--seeds", str(args.seeds), "--top-k", str(args.top_k),
        "--explore-slots", str(args.explore_slots), "--truth-replicates", str(args.truth_replicates),
        "--out", str(folder.resolve()),
    ]  # fmt: skip
    spark_jobs.run_job("shop_loop", cfg.simulator.end_date, loop_args, config=cfg.to_dict(), scratch=cfg.layout.root)
    return 0


def _cmd_services(args: argparse.Namespace) -> int:
    from dql_model.ops import services

    return services.main(args.args)


def _registry_root(args: argparse.Namespace) -> Path:
    return Path(load_config(args.config).registry.root)


def _print_json(payload) -> None:
    print(json.dumps(payload, indent=2, sort_keys=True, default=str))


LISTED_METRIC = schema.metric_name("ndcg", 10)
"""The validation metric `dqlrec models list` shows per version."""


def _cmd_models_list(args: argparse.Namespace) -> int:
    from dql_model.learning import registry

    root = _registry_root(args)
    versions = [registry.describe_version(root, v) for v in registry.list_versions(root)]
    if args.json:
        _print_json(versions)
        return 0
    if not versions:
        print(f"the registry {root} has no versions yet")
        return 0
    print(f"  {'version':<20} {'run date':<10} {'transitions':>11} {LISTED_METRIC:>13}  registered")
    for v in versions:
        window, metric = v["data_window"], v["metrics"].get(LISTED_METRIC)
        print(
            f"{'*' if v['champion'] else ' '} {v['version']:<20} {window.get('run_date', '?'):<10} "
            f"{window.get('transitions', '?'):>11} {'n/a' if metric is None else f'{metric:.4f}':>13}  "
            f"{v['lineage'].get('registered_at', 'unknown')}"
        )
    print(f"{len(versions)} versions in {root}; * marks the champion")
    return 0


def _cmd_models_show(args: argparse.Namespace) -> int:
    from dql_model.learning import registry

    shown = registry.describe_version(_registry_root(args), args.version)
    if args.json:
        _print_json(shown)
        return 0
    window, lineage = shown["data_window"], shown["lineage"]
    data = lineage.get("data", {})
    print(f"model version {shown['version']}{' (champion)' if shown['champion'] else ''}")
    print(
        f"data: run date {window.get('run_date', '?')}, train window {window.get('train_window', '?')} "
        f"from {data.get('train_window_start', 'unknown')}, {window.get('transitions', '?')} transitions, "
        f"warm-started from {window.get('warm_start_from') or 'nothing'}"
        + (f", refit of {shown['refit_of']}" if shown["refit_of"] else "")
    )
    if data.get("counts"):
        print("counts: " + ", ".join(f"{key} {value}" for key, value in data["counts"].items()))
    print(f"metrics (best of {shown['epochs']} epochs):" if shown["metrics"] else "metrics: none recorded")
    for name, value in sorted(shown["metrics"].items()):
        print(f"  {name:<32} {value:.4f}" if isinstance(value, float) else f"  {name:<32} {value}")
    if lineage:
        print("lineage:")
        print(f"  code commit              {lineage.get('code_commit')}")
        print(f"  requirements.txt sha256  {lineage.get('requirements_sha256')}")
        print(f"  config hash              {lineage.get('config_hash')}")
        print(f"  registered               {lineage.get('registered_at')} by {lineage.get('registered_by')}")
    else:
        print("lineage: not recorded (saved before lineage was recorded)")
    return 0


def _changed(args: argparse.Namespace, entry: dict | None, version: str, root: Path) -> int:
    """Print a promote's or a rollback's outcome (the log line, or that nothing changed)."""
    if args.json:
        _print_json(entry or {"version": version, "changed": False})
    elif entry is None:
        print(f"{version} is already the champion; nothing changed")
    else:
        print(f"champion: {entry['version']} (was {entry['previous'] or 'none'}); logged in {root}/promotions.jsonl")
    return 0


def _cmd_models_promote(args: argparse.Namespace) -> int:
    from dql_model.learning import registry

    root = _registry_root(args)
    registry.require_version(root, args.version)
    entry = registry.set_champion(root, args.version, why=f"manual: {args.reason}", action="promote")
    return _changed(args, entry, args.version, root)


def _cmd_models_rollback(args: argparse.Namespace) -> int:
    from dql_model.learning import registry

    root = _registry_root(args)
    entry = registry.rollback(root, why=f"manual: {args.reason}")
    return _changed(args, entry, entry["version"], root)


def _cmd_models_history(args: argparse.Namespace) -> int:
    from dql_model.learning import registry

    root = _registry_root(args)
    entries = registry.promotion_log(root)
    if args.json:
        _print_json(entries)
        return 0
    if not entries:
        print(f"the registry {root} has no promotion log yet (no champion change recorded)")
    for e in entries:
        print(f"{e.get('at')}  {e.get('action', '?'):<8} {e['version']} (was {e.get('previous') or 'none'}) "
              f"by {e.get('who')}: {e.get('why')}")
    return 0


def _add_models_parser(sub) -> None:
    models = sub.add_parser(
        "models", help="the model registry: versions, the champion and its promotion log (dql_model.learning.registry)"
    )
    commands = models.add_subparsers(dest="models_command", required=True)
    for name, func, text in (
        ("list", _cmd_models_list, "every registered version, oldest first; * marks the champion"),
        ("show", _cmd_models_show, "one version's metrics, data window and lineage (code, requirements, config)"),
        ("promote", _cmd_models_promote, "make a version the champion (logged as manual, with your reason)"),
        ("rollback", _cmd_models_rollback, "make the champion before the current one the champion again"),
        ("history", _cmd_models_history, "the promotion log: every change of the champion, oldest first"),
    ):
        p = commands.add_parser(name, help=text, description=text)
        if name in ("show", "promote"):
            p.add_argument("version", help="a version name, as `dqlrec models list` prints it")
        if name in ("promote", "rollback"):
            p.add_argument("--reason", required=True, help="why, for the promotion log (recorded as 'manual: REASON')")
        p.add_argument("--json", action="store_true", help="print JSON instead of text")
        p.set_defaults(func=func)


# --- dqlrec prune: retention (dql_model.warehouse.retention, dql_model.pipeline.prune) ---------------


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _cmd_prune(args: argparse.Namespace) -> int:
    """Lists (--dry-run) or removes what cfg.retention no longer keeps: the same list either way."""
    from dql_model.pipeline import prune

    done = prune.prune(load_config(args.config), dry_run=args.dry_run, progress=lambda m: print(m, file=sys.stderr))
    if args.json:
        _print_json(done)
        return 0
    rows = done["removals"] if args.dry_run else done["removed"]
    for row in rows:
        print(f"{_bytes(row['bytes']):>10}  {row['layer']:<26} {row['path']}  ({row['reason']})")
    for note in done["notes"]:
        print(f"note: {note}")
    skipped = f"; {len(done['skipped'])} skipped (see above)" if done.get("skipped") else ""
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {len(rows)} folders, {_bytes(done['bytes'])}{skipped}")
    return 0


def _add_prune_parser(sub) -> None:
    p = sub.add_parser(
        "prune", help="remove the nights, versions and checkpoints retention no longer keeps (config: retention)",
        description="Removes what the retention section of the config no longer keeps: old partitions of each "
        "warehouse layer, reports, local export dates, baselines, registry versions, stale checkpoints. Never the "
        "champion, a pinned version, one the promotion log names within retention.promotion_days, or a folder of "
        "a run date whose lock is held. --dry-run lists exactly what a prune removes.",
    )  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="list what would go and the bytes freed; remove nothing")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_cmd_prune)


# --- dqlrec tune: the hyper-parameter search (dql_model.pipeline.tuning) ---------------------------------


def _cmd_tune(args: argparse.Namespace) -> int:
    from dql_model.ops.threads import set_torch_threads
    from dql_model.pipeline import tuning

    cfg = load_config(args.config)
    set_torch_threads(cfg.train.threads)
    progress = (lambda line: print(f"[dqlrec] {line}", file=sys.stderr, flush=True)) if args.json else None
    tuned = tuning.tune(
        cfg, args.run_date, trials=args.trials, minutes=args.minutes, **({"progress": progress} if progress else {})
    )
    if args.json:
        _print_json(tuned)
    return 0


def _add_tune_parser(sub) -> None:
    p = sub.add_parser(
        "tune", help="search the learning settings on a night's validation split; write the tuned settings file",
        description="Trains trials of the search space (dql_model.pipeline.tuning.suggest) on the night's transitions "
        "and keeps the best validation eval.early_stop_metric. The study lives in <warehouse>/tuning/studies.db: "
        "rerun the same command after a kill and it resumes. When the study holds --trials completed trials, the "
        "best becomes <warehouse>/tuning/tuned.yaml, which the nightly run reads (tune.use_tuned).",
    )  # fmt: skip
    p.add_argument("--run-date", default=run_dates.LATEST, type=_run_date, help="the night, YYYY-MM-DD or latest (default)")
    p.add_argument("--trials", type=int, default=0, help="completed trials in all (default: tune.trials)")
    p.add_argument("--minutes", type=float, default=0.0, help="time budget, shared equally by the trials (default: tune.minutes)")
    p.add_argument("--json", action="store_true", help="print the tuned settings file as one JSON object")
    p.set_defaults(func=_cmd_tune)


# --- dqlrec runs: the nights' history (dql_model.pipeline.runs) ------------------------------------


def _cmd_runs(args: argparse.Namespace) -> int:
    from dql_model.judging import history
    from dql_model.pipeline import runs

    records = history.night_history(load_config(args.config), last=args.last)
    if args.json:
        _print_json(records)
    else:
        print(runs.render(records))
    return 0


def _add_runs_parser(sub) -> None:
    p = sub.add_parser(
        "runs", help="the nights' history: model version, gate decision, metrics, rows published, degraded",
        description="One line per night with a report folder, oldest first: the model that scored, the gate's "
        "decision, the gate metric of challenger and champion, rows and users published, the duration when "
        "recorded, and whether the night was degraded (the champion scored after a failed training).",
    )  # fmt: skip
    p.add_argument("--last", type=int, default=0, help="only the newest N nights (default: every night)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_cmd_runs)


def _run_date(text: str) -> str:
    """A calendar date, or ``latest`` (resolved against the warehouse once the config is loaded)."""
    if text.strip().lower() == run_dates.LATEST:
        return run_dates.LATEST
    try:
        return schema.iso_date(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _cmd_run_date(args: argparse.Namespace) -> int:
    _print_value(args, "run_date", run_dates.resolve_run_date(load_config(args.config), args.value, require_loaded=True))
    return 0


def _add_run_option_flags(p: argparse.ArgumentParser) -> None:
    """The flags of RunOptions (the DAG's trigger params), shared by `task` and `backfill`."""
    p.add_argument("--top-k", type=int, default=0, help="recommendations per user (0: score.top_k)")
    p.add_argument("--force-cpu", action="store_true", help="train and score on CPU")
    p.add_argument("--skip-training", action="store_true", help="score with the champion, no challenger")
    p.add_argument("--model-version", default="", help="score with this registry version")
    p.add_argument(
        "--full-rebuild", action="store_true",
        help="build_training_data rebuilds states and transitions from every raw partition (etl.incremental off)",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dqlrec",
        description="Nightly deep Q-learning recommendations.",
        epilog="Exit status: 0 done, 1 failed (a Spark job, a stopped backfill, no failure found by first-failure, "
        "an unexpected error), 2 bad input or usage (a refused argument, config value, date or missing input).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--config", help=CONFIG_HELP)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="write the demo shop's raw tables into the warehouse")
    p.add_argument("--if-empty", action="store_true", help="do nothing when the warehouse already has events")
    p.add_argument("--json", action="store_true", help="print what was written (counts, days) as one JSON object")
    p.set_defaults(func=_cmd_generate)

    importers.add_parser(sub)

    p = sub.add_parser("task", help="run one nightly task (and the tasks whose results it needs) without Airflow")
    p.add_argument("name", choices=steps.STEP_NAMES)
    p.add_argument("--run-date", required=True, type=_run_date, help="YYYY-MM-DD (UTC)")
    _add_run_option_flags(p)
    p.set_defaults(func=_cmd_task)

    p = sub.add_parser(
        "backfill",
        help="run every night of a date range in order through the nightly steps; complete nights are skipped",
        description="Runs the nights FROM .. TO (both included) oldest first, each through every nightly step "
        "in the DAG's order (the step runner of `dqlrec task`). A night whose published output is "
        "complete is skipped unless --rerun; the first failed night stops the backfill, and the same command "
        "resumes it. --full-rebuild applies to the first night that runs; the nights after it build on it.",
    )
    p.add_argument("--from", dest="first", required=True, type=_run_date, help="first night, YYYY-MM-DD")
    p.add_argument("--to", dest="last", required=True, type=_run_date, help="last night, YYYY-MM-DD or latest")
    p.add_argument("--rerun", action="store_true", help="run complete nights again too")
    p.add_argument("--json", action="store_true", help="end with the nights run and skipped as JSON")
    _add_run_option_flags(p)
    p.set_defaults(func=_cmd_backfill)

    p = sub.add_parser("summary", help="print the closing summary of a run")
    p.add_argument("--run-date", help="default: the latest run")
    p.add_argument("--json", action="store_true", help="print the run's summary.json as one JSON object")
    p.set_defaults(func=_cmd_summary)

    p = sub.add_parser("evaluate", help="print the model comparison of a run")
    p.add_argument("--run-date", help="default: the latest run")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "explain",
        help="why a user got their published list: state, masked items, each slot's source and reason, model",
    )
    p.add_argument("user", help="a user_id as the shop's events have it")
    p.add_argument("--run-date", help="YYYY-MM-DD (default: the last published night)")
    p.add_argument("--json", action="store_true", help="print the explanation as one JSON object")
    p.set_defaults(func=_cmd_explain)

    p = sub.add_parser("config", help="print the resolved configuration")
    p.add_argument("key", nargs="?", help="section or section.field")
    p.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser("first-failure", help="print the first task failure of an Airflow log (exit 1: none)")
    p.add_argument("log", help="the output of `airflow dags test`, e.g. var/airflow-run.log")
    p.add_argument("--json", action="store_true", help='print {"task", "error"} (null: no failure)')
    p.set_defaults(func=_cmd_first_failure)

    p = sub.add_parser("demo-date", help="print the demo's run date")
    p.add_argument("--json", action="store_true", help='print {"run_date": ...}')
    p.set_defaults(func=_cmd_demo_date)

    p = sub.add_parser("run-date", help="print a run date as YYYY-MM-DD ('latest': the last loaded day); fails if not loaded")
    p.add_argument("value", nargs="?", default=run_dates.LATEST, help="YYYY-MM-DD or latest (default)")
    p.add_argument("--json", action="store_true", help='print {"run_date": ...}')
    p.set_defaults(func=_cmd_run_date)

    p = sub.add_parser("simulate", help="run the shop in the loop: policies on twin shops, a nightly run per day")
    p.add_argument("--days", type=int, default=14, help="days lived after the generated window (default 14)")
    p.add_argument(
        "--policy",
        default="dqn,supervised,popularity",
        help="comma-separated policies of dqn, supervised, sqn, popularity (default dqn,supervised,popularity)",
    )
    p.add_argument("--seeds", type=int, default=3, help="twin shops per policy (default 3)")
    p.add_argument("--top-k", type=int, default=10, help="length of the served lists (default 10)")
    p.add_argument("--explore-slots", type=int, default=3, help="exploration slots of learned policies' lists (default 3)")
    p.add_argument(
        "--truth-replicates", type=int, default=4, help="twin days measuring each off-policy candidate's true value (0: no check)"
    )
    p.add_argument("--out", help="loop folder (default: var/loop next to the warehouse)")
    p.set_defaults(func=_cmd_simulate)

    _add_models_parser(sub)
    _add_prune_parser(sub)
    _add_runs_parser(sub)
    _add_tune_parser(sub)

    p = sub.add_parser("services", help="start, stop or show the local services of `make airflow` (dql_model.ops.services)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="start | stop | status [--home DIR]")
    p.set_defaults(func=_cmd_services)
    _config_after_the_command(sub)
    return parser


CONFIG_HELP = "YAML config file (default: $DQLREC_CONFIG, else built-in defaults); before or after the command"


def _config_after_the_command(sub) -> None:
    """--config on every (sub)command too, so `dqlrec evaluate --config my.yaml` works like `dqlrec --config
    my.yaml evaluate`; SUPPRESS keeps a subcommand that was not given it from resetting the top-level value."""
    for parser in sub.choices.values():
        if not any("--config" in action.option_strings for action in parser._actions):
            parser.add_argument("--config", default=argparse.SUPPRESS, help=CONFIG_HELP)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                _config_after_the_command(action)


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("dqlrec")
    except metadata.PackageNotFoundError:  # run from a checkout that is not installed
        import dql_model

        return dql_model.__version__


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning for the user (an unknown DQLREC_* variable) as one line; others as Python shows them."""
    if issubclass(category, UnknownVariableWarning):
        print(f"dqlrec: warning: {message}", file=sys.stderr)
    else:
        _PYTHON_SHOW_WARNING(message, category, filename, lineno, file, line)


_PYTHON_SHOW_WARNING = warnings.showwarning


EXIT_OK, EXIT_FAILED = 0, 1
"""The exit statuses (README's command line table); bad input exits errors.EXIT_BAD_INPUT (2)."""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    shown, warnings.showwarning = warnings.showwarning, _show_warning
    try:
        return args.func(args)
    except (InputError, FileNotFoundError) as exc:  # bad input: one line, no traceback
        print(f"dqlrec: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except spark_jobs.JobFailed as exc:  # its message ends with the job's last lines
        print(f"dqlrec: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":
    sys.exit(main())
