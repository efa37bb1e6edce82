"""Nightly Spark job: raw events -> item_index, user_states, transitions and quarantine partitions.

Run by the DAG with spark-submit, or by hand::

    spark-submit jobs/build_training_data.py --run-date 2026-11-27 [--config dqlrec.yaml] [--full-rebuild [true|false]]
    python -m jobs.build_training_data --run-date 2026-11-27

Incremental by default (``etl.incremental``), so a night's cost follows its own events:

- It ingests the raw ``events`` partitions after the latest earlier ``user_states`` partition
  (normally just the run date's): their rows are counted, cleaned and quarantined tonight,
  and their accepted events update yesterday's states (``jobs.user_states.update_user_states``).
- Transitions need each event's previous L interactions: the states as of the day before the
  training window seed them (``config.seed_states_night``; retention keeps them), so only the
  window's partitions are read, plus ``lookback_days`` before them, where the kept copy of a
  re-delivered duplicate can be.

It falls back to a full rebuild from every partition up to the run date (same tables, more
work) on the first night, with ``--full-rebuild`` or ``etl.incremental: false``, and when the
earlier states were built with another ``max_len`` or ``lookback_days``. A raw partition
loaded after its night ran is seen by a full rebuild only: rerun the later nights with
``--full-rebuild`` once. In both modes the quarantine partition and the counts describe the
partitions ingested by the run (all of them in a full rebuild).

Writes the run date's partition of each curated table atomically (a rerun replaces them whole),
then a JSON summary under ``curated/_runs/run_date=.../``. A full build also writes the user_states
of earlier nights that logged impressions were served from and that are missing
(``nights_missing_for_ope``: a history loaded with its impressions, such as the demo shop's). Fails, before writing anything, if
ingested rows != accepted + quarantined.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from dql_model.config import Config, load_config, seed_states_night, train_window_start
from dql_model.contract import schema
from dql_model.contract.layout import ETL_JOB
from dql_model.errors import InputError, MissingInput
from dql_model.warehouse import data, locks
from dql_model.warehouse.run_dates import missing_run_date_message
from jobs.clean_events import PARTITION_DATE_COL, RULE_ORDER, label_events, split_labelled
from jobs.common import day_end_utc, day_start_utc, exit_status, failures_named, run_date_arg
from jobs.item_index import build_item_index
from jobs.sessions import sessionize
from jobs.spark_session import (
    get_spark,
    list_partitions,
    read_text,
    write_partition_atomic,
    write_text_atomic,
)
from jobs.transitions import LEAVE_LAST_OUT, TIME, build_transitions
from jobs.user_states import build_user_states, update_user_states

JOB = ETL_JOB
INCREMENTAL, FULL = "incremental", "full"
STAGES = ("clean", "item_index", "user_states", "transitions")
"""The stages a run times (``on_stage``); each ends with its table written."""
_STATE_SETTINGS = ("max_len", "lookback_days")
"""EtlConfig fields a previous state must have been built with to be updated incrementally."""
STATES_FORMAT = 2
"""2: user_states carry ``interacted``; states of an older format are rebuilt, never updated."""
AUTO_TIME_SHARE = 0.05
"""etl.validation auto: the time split when its days hold at least this share of the window's events."""

StageHook = Callable[[str], AbstractContextManager[Any]]


class RowCountMismatch(RuntimeError):
    """Input rows != accepted + quarantined: a row was lost or duplicated by the cleaning."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=JOB, description=__doc__.splitlines()[0])
    parser.add_argument("--run-date", required=True, type=run_date_arg, help="run date, YYYY-MM-DD (UTC)")
    parser.add_argument(
        "--config", default=None, help="YAML config (default: $DQLREC_CONFIG, then built-in defaults)"
    )
    parser.add_argument(
        "--full-rebuild",
        nargs="?",
        const=True,
        default=False,
        type=_switch,
        metavar="true|false",
        help="rebuild states and transitions from every raw partition (overrides etl.incremental); "
        "the DAG passes its full_rebuild param as a value",
    )
    return parser.parse_args(argv)


def _switch(text: str) -> bool:
    """``--full-rebuild [true|false]``: the DAG renders its boolean param as True or False."""
    value = text.strip().lower()
    if value not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value == "true"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    cfg = load_config(args.config)
    if args.full_rebuild:
        cfg = cfg.replace(etl={"incremental": False})
    owns_session = SparkSession.getActiveSession() is None
    spark = get_spark(cfg.spark, f"dqlrec-{JOB}")
    try:
        with locks.hold(cfg, args.run_date, JOB), failures_named(JOB, args.run_date):  # one writer at a time
            run(spark, cfg, args.run_date)
    finally:
        if owns_session:
            spark.stop()
    return 0


def log(run_date: dt.date, message: str) -> None:
    print(f"[{JOB} {run_date}] {message}", flush=True)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Which partitions a run reads and ingests, and which earlier states it builds on."""

    mode: str
    """INCREMENTAL or FULL."""
    reason: str
    """Why this mode, for the log and the summary."""
    previous_states: dt.date | None = None
    """The user_states partition updated tonight (incremental only)."""
    seed_states: dt.date | None = None
    """The user_states partition that seeds the transitions' states (None: whole history read)."""

    def ingest_from(self) -> dt.date | None:
        """First events partition ingested (None: every one)."""
        return None if self.previous_states is None else self.previous_states + dt.timedelta(days=1)

    def transitions_from(self) -> dt.date | None:
        """First events partition whose events make transitions or their states (None: every one)."""
        return None if self.seed_states is None else self.seed_states + dt.timedelta(days=1)

    def read_from(self, lookback_days: int) -> dt.date | None:
        """First events partition read: lookback_days before the earliest one used (duplicate context)."""
        first = self.transitions_from()
        return None if first is None else first - dt.timedelta(days=lookback_days)


def plan_run(spark: SparkSession, cfg: Config, run_date: dt.date, window_start: dt.date) -> Plan:
    """Incremental when an earlier user_states partition, built with tonight's settings, exists."""
    if not cfg.etl.incremental:
        return Plan(FULL, "etl.incremental is false")
    root = cfg.layout.table(schema.USER_STATES)
    earlier = sorted((d for d in _partition_dates(spark, root) if d < run_date), reverse=True)
    if not earlier:
        return Plan(FULL, "no user_states partition before the run date (first night)")
    settings = _state_settings(cfg)

    def usable(day: dt.date) -> bool:
        return _built_with(spark, cfg, day) == settings

    previous = next((d for d in earlier if usable(d)), None)
    if previous is None:
        return Plan(FULL, f"no user_states partition before the run date has a run summary with {settings}")
    seed = seed_states_night(earlier, window_start, usable)
    return Plan(INCREMENTAL, f"updating the user_states of {previous}", previous, seed)


def _built_with(spark: SparkSession, cfg: Config, day: dt.date) -> dict[str, Any] | None:
    text = read_text(spark, cfg.layout.etl_summary(str(day)))
    if text is None:
        return None
    etl = json.loads(text).get("etl") or {}
    return {name: etl.get(name) for name in (*_STATE_SETTINGS, "states_format")}


def _state_settings(cfg: Config) -> dict[str, Any]:
    """What tonight's states are built with: earlier states built otherwise are not updated."""
    return {**{name: getattr(cfg.etl, name) for name in _STATE_SETTINGS}, "states_format": STATES_FORMAT}


@contextlib.contextmanager
def _logged_stage(run_date: dt.date, name: str, hook: StageHook | None) -> Iterator[None]:
    started = time.perf_counter()
    with hook(name) if hook is not None else contextlib.nullcontext():
        yield
    log(run_date, f"stage {name}: {time.perf_counter() - started:.1f}s")


def run(
    spark: SparkSession, cfg: Config, run_date: dt.date, *, on_stage: StageHook | None = None
) -> dict[str, Any]:
    """Build and write the run date's curated partitions; returns the summary written.

    ``on_stage(name)``, if given, is a context manager entered around each of ``STAGES``
    (benchmarks measure time and memory with it).
    """
    layout, etl = cfg.layout, cfg.etl
    partitions = events_partitions(spark, layout.table(schema.EVENTS), run_date)
    window_start = train_window_start(etl.train_window, run_date, min(partitions))
    val_start = run_date - dt.timedelta(days=etl.val_days - 1)
    plan = plan_run(spark, cfg, run_date, window_start)
    log(
        run_date,
        f"master {spark.sparkContext.master}; warehouse {layout.root}; "
        f"training window {window_start}..{run_date} (etl.train_window {etl.train_window}); "
        f"{plan.mode}: {plan.reason}",
    )
    outputs = {table: layout.partition(table, str(run_date)) for table in _CURATED}
    stage = lambda name: _logged_stage(run_date, name, on_stage)  # noqa: E731

    events = read_events(
        spark,
        layout.table(schema.EVENTS),
        run_date,
        first_date=plan.read_from(etl.lookback_days),
        partitions=partitions,
    )
    items = read_table(spark, layout.table(schema.ITEMS), schema.ITEMS)
    previous_index, previous_date = read_previous_index(spark, cfg, run_date)
    log(run_date, f"previous item_index: {previous_date or 'none (first night)'}")

    known_items = items.select(schema.ITEM_ID)
    if previous_index is not None:  # an item that left the catalogue keeps its events valid
        known_items = known_items.unionByName(previous_index.select(schema.ITEM_ID))
    # Labelled once and kept: the counts, the quarantine, the index, the states and the
    # transitions all read it.
    labelled = label_events(
        events, items=known_items, run_date=run_date, lookback_days=etl.lookback_days
    ).persist()
    ingest_from = plan.ingest_from()
    if ingest_from is not None:  # earlier partitions are only context for duplicates and states
        events = events.where(F.col(schema.EVENT_DATE) >= F.lit(ingest_from))
    ingested, quarantine = split_labelled(_from_partition(labelled, ingest_from))
    try:
        with stage("clean"):
            counts = check_row_counts(run_date, events, ingested, quarantine)
            write(run_date, quarantine, outputs, schema.QUARANTINE)
        with stage("item_index"):
            item_index = build_item_index(
                items, previous_index=previous_index, events=ingested, run_date=run_date
            )
            write(run_date, item_index, outputs, schema.ITEM_INDEX)
        # Later steps read the index back: they use exactly what was written, with a short lineage.
        item_index = read_table(spark, outputs[schema.ITEM_INDEX], schema.ITEM_INDEX)
        with stage("user_states"):
            write(
                run_date,
                _user_states(spark, cfg, plan, ingested, item_index, run_date),
                outputs,
                schema.USER_STATES,
            )
            ope_nights = nights_missing_for_ope(spark, cfg, run_date) if plan.previous_states is None else []
            for night in ope_nights:  # a full build has every event: the states as of an earlier night too
                folder = layout.partition(schema.USER_STATES, str(night))
                log(run_date, f"writing user_states of night {night} for the off-policy estimates -> {folder}")
                states = build_user_states(ingested, item_index=item_index, max_len=etl.max_len, as_of=night)
                write_partition_atomic(states, folder)
        with stage("transitions"):
            seed_states = None if plan.seed_states is None else read_states(spark, cfg, plan.seed_states)
            events_since_seed = split_labelled(_from_partition(labelled, plan.transitions_from()))[0]
            protocol = choose_protocol(cfg, events_since_seed, window_start, val_start, run_date)
            log(run_date, f"protocol: {json.dumps(protocol, sort_keys=True)}")
            transitions = build_transitions(
                sessionize(events_since_seed, gap_minutes=etl.session_gap_minutes),
                item_index=item_index,
                max_len=etl.max_len,
                rewards=cfg.rewards(),
                rating_scale=etl.reward_rating_scale,
                value_weighted=etl.reward_value_weighted,
                window_start=window_start,
                val_start=val_start,
                window_end=run_date,
                validation=protocol["validation"],
                seed_states=seed_states,
            )
            write(run_date, transitions, outputs, schema.TRANSITIONS)
    finally:
        labelled.unpersist()

    counts.update(count_outputs(spark, outputs, previous_index))
    summary = {
        "job": JOB,
        "run_date": str(run_date),
        "config_hash": cfg.hash(),
        "mode": plan.mode,
        "mode_reason": plan.reason,
        "previous_item_index": previous_date,
        "previous_user_states": _iso(plan.previous_states),
        "ope_user_states": [str(night) for night in ope_nights],
        "transitions_seed_states": _iso(plan.seed_states),
        "partitions": {
            "read_from": _iso(plan.read_from(etl.lookback_days)),
            "ingested_from": _iso(ingest_from),
            "through": str(run_date),
        },
        "etl": {
            **_state_settings(cfg),
            **{name: getattr(etl, name) for name in ("session_gap_minutes", "train_window", "validation")},
        },
        "window": {
            "start": str(window_start),
            "validation_start": str(val_start) if protocol["validation"] == TIME else None,
            "end": str(run_date),
        },
        "protocol": protocol,
        "outputs": outputs,
        "counts": counts,
    }
    path = cfg.layout.etl_summary(str(run_date))
    write_text_atomic(spark, path, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    log(run_date, f"done: {json.dumps(counts, sort_keys=True)}; summary {path}")
    return summary


def _user_states(
    spark: SparkSession,
    cfg: Config,
    plan: Plan,
    ingested: DataFrame,
    item_index: DataFrame,
    run_date: dt.date,
) -> DataFrame:
    """Tonight's states: the previous ones updated with the ingested events, or built from them all."""
    if plan.previous_states is None:
        return build_user_states(ingested, item_index=item_index, max_len=cfg.etl.max_len, as_of=run_date)
    return update_user_states(
        read_states(spark, cfg, plan.previous_states),
        ingested,
        item_index=item_index,
        max_len=cfg.etl.max_len,
        as_of=run_date,
    )


def nights_missing_for_ope(spark: SparkSession, cfg: Config, run_date: dt.date) -> list[dt.date]:
    """Nights before the run date whose user_states the off-policy estimates need and lack, oldest first.

    Impressions shown on day D were served from the lists of night D - 1, and the estimates rank each
    candidate's lists for D from that night's states (``dql_model.judging.ope_night``). A warehouse whose
    history already logs impressions (the demo shop's logging policy, an imported log) has no such
    nights on its first run: without them every shown day of the ``eval.ope_days`` window is skipped.
    Only nights with raw events on or before them are listed (a state needs a history).
    """
    shown = set()
    for value in list_partitions(spark, cfg.layout.table(schema.IMPRESSIONS), schema.SHOWN_DATE):
        with contextlib.suppress(ValueError):  # not a shown date's folder: never read
            shown.add(dt.date.fromisoformat(value))
    have = set(_partition_dates(spark, cfg.layout.table(schema.USER_STATES)))
    first_events = min(events_partitions(spark, cfg.layout.table(schema.EVENTS), run_date))
    days = (run_date - dt.timedelta(days=n) for n in range(cfg.eval.ope_days))
    nights = {day - dt.timedelta(days=1) for day in days if day in shown}
    return sorted(night for night in nights if night not in have and night >= first_events)


_CURATED = (schema.QUARANTINE, schema.ITEM_INDEX, schema.USER_STATES, schema.TRANSITIONS)


def _iso(day: dt.date | None) -> str | None:
    return None if day is None else str(day)


def _from_partition(labelled: DataFrame, first: dt.date | None) -> DataFrame:
    """Rows of a ``label_events`` frame from the partitions ``first`` and later (all if None)."""
    if first is None:
        return labelled
    return labelled.where(F.col(PARTITION_DATE_COL) >= F.lit(first))


def read_table(spark: SparkSession, path: str, table: str) -> DataFrame:
    return spark.read.schema(schema.SPARK_DDL[table]).parquet(path)


def read_states(spark: SparkSession, cfg: Config, run_date: dt.date) -> DataFrame:
    return read_table(spark, cfg.layout.partition(schema.USER_STATES, str(run_date)), schema.USER_STATES)


def _partition_dates(spark: SparkSession, root: str) -> list[dt.date]:
    """Dates of the run_date=YYYY-MM-DD partitions under ``root`` (other folders are ignored)."""
    days = []
    for value in list_partitions(spark, root, schema.RUN_DATE):
        try:
            days.append(dt.date.fromisoformat(value))
        except ValueError:
            continue  # not a run's partition: never a candidate
    return days


def events_partitions(spark: SparkSession, root: str, run_date: dt.date) -> dict[dt.date, str]:
    """The ``event_date`` partition folders under ``root`` up to the run date, by day.

    Fails (bad input, not retried) when the run date has no partition, naming the last loaded day.
    """
    folders = {}
    for value, folder in list_partitions(spark, root, schema.EVENT_DATE).items():
        try:
            day = dt.date.fromisoformat(value)
        except ValueError:
            raise InputError(
                f"events partition folder {folder} is not event_date=YYYY-MM-DD; move it out of {root}"
            ) from None
        folders[day] = folder
    if run_date not in folders:
        raise MissingInput(missing_run_date_message(root, run_date, sorted(folders)))
    return {day: folder for day, folder in folders.items() if day <= run_date}


def read_events(
    spark: SparkSession,
    root: str,
    run_date: dt.date,
    *,
    first_date: dt.date | None = None,
    partitions: dict[dt.date, str] | None = None,
) -> DataFrame:
    """Raw events of the ``event_date`` partitions from ``first_date`` (default: the first) to the
    run date, with ``event_date``; ``partitions`` is ``events_partitions`` when the caller has it."""
    partitions = events_partitions(spark, root, run_date) if partitions is None else partitions
    folders = {day: folder for day, folder in partitions.items() if first_date is None or day >= first_date}
    log(run_date, f"reading {len(folders)} events partition(s) {min(folders)}..{max(folders)} from {root}")
    ddl = f"{schema.SPARK_DDL[schema.EVENTS]}, {schema.EVENT_DATE} DATE"
    return spark.read.schema(ddl).option("basePath", root).parquet(*[folders[d] for d in sorted(folders)])


def read_previous_index(
    spark: SparkSession, cfg: Config, run_date: dt.date
) -> tuple[DataFrame | None, str | None]:
    """The latest item_index partition strictly before the run date, and its date, or (None, None)."""
    table_root = cfg.layout.table(schema.ITEM_INDEX)
    earlier = [d for d in _partition_dates(spark, table_root) if d < run_date]
    if not earlier:
        return None, None
    latest = str(max(earlier))
    return read_table(spark, cfg.layout.partition(schema.ITEM_INDEX, latest), schema.ITEM_INDEX), latest


def choose_protocol(
    cfg: Config, events: DataFrame, window_start: dt.date, val_start: dt.date, run_date: dt.date
) -> dict[str, Any]:
    """How tonight holds out validation and what scoring masks, from the config and the window's events.

    ``etl.validation`` auto takes the time split when its days hold at least ``AUTO_TIME_SHARE`` of
    the window's events (and the window is longer than them), else leave-last-out. ``score.exclude``
    auto masks every interacted item when the window has ratings and no purchases (consumption
    data: a rated movie is seen), else the purchased ones. ``event_types`` counts the window's
    accepted events by type, zeros included: what the metrics and the report can speak of.
    """
    in_window = events.where(
        (F.col(schema.EVENT_TIME) >= F.lit(day_start_utc(window_start)))
        & (F.col(schema.EVENT_TIME) < F.lit(day_end_utc(run_date)))
    )
    late = F.col(schema.EVENT_TIME) >= F.lit(day_start_utc(val_start))
    rows = in_window.groupBy(schema.EVENT_TYPE).agg(
        F.count(F.lit(1)).alias("n"), F.count(F.when(late, 1)).alias("late")
    ).collect()
    event_types = dict.fromkeys(schema.EVENT_TYPES, 0)
    event_types.update({row[schema.EVENT_TYPE]: row["n"] for row in rows})
    total, in_time_split = sum(row["n"] for row in rows), sum(row["late"] for row in rows)
    share = in_time_split / total if total else 0.0
    validation, why = cfg.etl.validation, "etl.validation"
    if validation == "auto":
        time_fits = share >= AUTO_TIME_SHARE and val_start > window_start
        validation = TIME if time_fits else LEAVE_LAST_OUT
        why = (
            f"auto: the last {cfg.etl.val_days} day(s) hold {share:.1%} of the window's events "
            f"({'>=' if time_fits else '<'} {AUTO_TIME_SHARE:.0%}"
            f"{'' if val_start > window_start else ', and the window is not longer than them'})"
        )
    exclude, exclude_why = cfg.score.exclude, "score.exclude"
    if exclude == "auto":
        consumption = data.consumption_log(event_types)
        exclude = "interacted" if consumption else "purchased"
        exclude_why = "auto: " + ("ratings and no purchases" if consumption else "a shop's events")
    return {
        "validation": validation,
        "validation_reason": why,
        "exclude": exclude,
        "exclude_reason": exclude_why,
        "event_types": event_types,
    }


def check_row_counts(
    run_date: dt.date, events: DataFrame, accepted: DataFrame, quarantine: DataFrame
) -> dict[str, Any]:
    """Counts of the cleaning step; raises RowCountMismatch unless input = accepted + quarantined."""
    n_input = events.count()
    n_accepted = accepted.count()
    by_rule_and_partition = quarantine.groupBy(schema.RULE, schema.SOURCE_PARTITION).count().collect()
    by_rule = dict.fromkeys(RULE_ORDER, 0)
    in_rule_order = sorted(
        by_rule_and_partition,
        key=lambda r: (RULE_ORDER.index(r[schema.RULE]), r[schema.SOURCE_PARTITION] or ""),
    )
    for row in in_rule_order:
        by_rule[row[schema.RULE]] = by_rule.get(row[schema.RULE], 0) + row["count"]
        log(
            run_date,
            f"quarantined {row['count']} row(s) of {row[schema.SOURCE_PARTITION]}: rule {row[schema.RULE]}",
        )
    n_quarantined = sum(by_rule.values())
    log(run_date, f"input {n_input} events: accepted {n_accepted}, quarantined {n_quarantined}")
    if n_input != n_accepted + n_quarantined:
        raise RowCountMismatch(
            f"input rows {n_input} != accepted {n_accepted} + quarantined {n_quarantined} for run date {run_date}; "
            "nothing was written. This is a bug in jobs.clean_events: report it with the run date."
        )
    return {
        "input_events": n_input,
        "accepted": n_accepted,
        "quarantined": by_rule,
        "quarantined_total": n_quarantined,
        "duplicates": by_rule[schema.RULE_DUPLICATE],
    }


def write(run_date: dt.date, df: DataFrame, outputs: dict[str, str], table: str) -> None:
    log(run_date, f"writing {table} -> {outputs[table]}")
    write_partition_atomic(df, outputs[table])


def count_outputs(
    spark: SparkSession, outputs: dict[str, str], previous_index: DataFrame | None
) -> dict[str, int]:
    """Counts read back from the written partitions, so the summary describes what is on disk."""
    index = read_table(spark, outputs[schema.ITEM_INDEX], schema.ITEM_INDEX)
    previous_max = 0
    if previous_index is not None:
        previous_max = previous_index.agg(F.max(schema.ITEM_IDX)).first()[0] or 0
    index_counts = index.agg(
        F.count(F.lit(1)).alias("items"),
        F.count(F.when(F.col(schema.ITEM_IDX) > previous_max, 1)).alias("new_items"),
    ).first()
    splits = dict.fromkeys((schema.TRAIN, schema.VALIDATION), 0)
    transitions = read_table(spark, outputs[schema.TRANSITIONS], schema.TRANSITIONS)
    splits.update(
        {row[schema.SPLIT]: row["count"] for row in transitions.groupBy(schema.SPLIT).count().collect()}
    )
    return {
        "items": index_counts["items"],
        "new_items": index_counts["new_items"],
        "users": read_table(spark, outputs[schema.USER_STATES], schema.USER_STATES).count(),
        "transitions_train": splits[schema.TRAIN],
        "transitions_validation": splits[schema.VALIDATION],
    }


if __name__ == "__main__":
    sys.exit(exit_status(main))
