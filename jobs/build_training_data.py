"""Nightly Spark job: raw events -> item_index, user_states, transitions and quarantine partitions.

Run by the DAG with spark-submit, or by hand::

    spark-submit jobs/build_training_data.py --run-date 2026-11-27 [--config dqlrec.yaml]
    python -m jobs.build_training_data --run-date 2026-11-27

Reads every raw ``events`` partition up to the run date (user states need the full history),
the ``items`` snapshot and the latest ``item_index`` partition before the run date. Writes the
run date's partition of each curated table atomically (a rerun replaces them whole), then a
JSON summary under ``curated/_runs/run_date=.../``. Fails, before writing anything, if input
rows != accepted + quarantined.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Sequence
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from dql_model import schema
from dql_model.config import Config, load_config
from jobs.clean_events import RULE_ORDER, clean_events
from jobs.common import as_date
from jobs.item_index import build_item_index
from jobs.sessions import sessionize
from jobs.spark_session import get_spark, list_partitions, write_partition_atomic, write_text_atomic
from jobs.transitions import build_transitions
from jobs.user_states import build_user_states

JOB = "build_training_data"


class RowCountMismatch(RuntimeError):
    """Input rows != accepted + quarantined: a row was lost or duplicated by the cleaning."""


def _run_date(text: str) -> dt.date:
    try:
        return as_date(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {text!r}") from None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=JOB, description=__doc__.splitlines()[0])
    parser.add_argument("--run-date", required=True, type=_run_date, help="run date, YYYY-MM-DD (UTC)")
    parser.add_argument(
        "--config", default=None, help="YAML config (default: $DQLREC_CONFIG, then built-in defaults)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    cfg = load_config(args.config)
    owns_session = SparkSession.getActiveSession() is None
    spark = get_spark(cfg.spark, f"dqlrec-{JOB}")
    try:
        run(spark, cfg, args.run_date)
    finally:
        if owns_session:
            spark.stop()
    return 0


def log(run_date: dt.date, message: str) -> None:
    print(f"[{JOB} {run_date}] {message}", flush=True)


def run(spark: SparkSession, cfg: Config, run_date: dt.date) -> dict[str, Any]:
    """Build and write the run date's curated partitions; returns the summary written."""
    warehouse, etl = cfg.warehouse, cfg.etl
    window_start = run_date - dt.timedelta(days=etl.train_days - 1)
    val_start = run_date - dt.timedelta(days=etl.val_days - 1)
    log(
        run_date,
        f"master {spark.sparkContext.master}; warehouse {warehouse.root}; "
        f"training window {window_start}..{run_date}, validation from {val_start}",
    )

    events = read_events(spark, warehouse.path(schema.TABLE_LAYER[schema.EVENTS], schema.EVENTS), run_date)
    items = read_table(spark, warehouse.path(schema.TABLE_LAYER[schema.ITEMS], schema.ITEMS), schema.ITEMS)
    previous_index, previous_date = read_previous_index(spark, cfg, run_date)
    log(run_date, f"previous item_index: {previous_date or 'none (first night)'}")

    accepted, quarantine = clean_events(events, items=items, run_date=run_date, lookback_days=None)
    accepted = sessionize(accepted, gap_minutes=etl.session_gap_minutes).persist()
    quarantine = quarantine.persist()
    try:
        counts = check_row_counts(run_date, events, accepted, quarantine)
        outputs = {table: warehouse.partition(table, str(run_date)) for table in _CURATED}

        write(run_date, quarantine, outputs, schema.QUARANTINE)
        item_index = build_item_index(
            items, previous_index=previous_index, events=accepted, run_date=run_date
        )
        write(run_date, item_index, outputs, schema.ITEM_INDEX)
        # Later steps read the index back: they use exactly what was written, with a short lineage.
        item_index = read_table(spark, outputs[schema.ITEM_INDEX], schema.ITEM_INDEX)
        states = build_user_states(accepted, item_index=item_index, max_len=etl.max_len, as_of=run_date)
        write(run_date, states, outputs, schema.USER_STATES)
        transitions = build_transitions(
            accepted,
            item_index=item_index,
            max_len=etl.max_len,
            rewards=cfg.rewards(),
            rating_scale=etl.reward_rating_scale,
            value_weighted=etl.reward_value_weighted,
            window_start=window_start,
            val_start=val_start,
            window_end=run_date,
        )
        write(run_date, transitions, outputs, schema.TRANSITIONS)
    finally:
        accepted.unpersist()
        quarantine.unpersist()

    counts.update(count_outputs(spark, outputs, previous_index))
    summary = {
        "job": JOB,
        "run_date": str(run_date),
        "config_hash": cfg.hash(),
        "previous_item_index": previous_date,
        "window": {"start": str(window_start), "validation_start": str(val_start), "end": str(run_date)},
        "outputs": outputs,
        "counts": counts,
    }
    summary_path = warehouse.path("curated", "_runs", f"{schema.RUN_DATE}={run_date}", f"{JOB}.json")
    write_text_atomic(spark, summary_path, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    log(run_date, f"done: {json.dumps(counts, sort_keys=True)}; summary {summary_path}")
    return summary


_CURATED = (schema.QUARANTINE, schema.ITEM_INDEX, schema.USER_STATES, schema.TRANSITIONS)


def read_table(spark: SparkSession, path: str, table: str) -> DataFrame:
    return spark.read.schema(schema.SPARK_DDL[table]).parquet(path)


def read_events(spark: SparkSession, root: str, run_date: dt.date) -> DataFrame:
    """Raw events of every ``event_date`` partition up to the run date, with ``event_date``."""
    folders = {}
    for value, folder in list_partitions(spark, root, schema.EVENT_DATE).items():
        try:
            day = dt.date.fromisoformat(value)
        except ValueError:
            raise ValueError(
                f"events partition folder {folder} is not event_date=YYYY-MM-DD; move it out of {root}"
            ) from None
        if day <= run_date:
            folders[day] = folder
    if not folders:
        raise FileNotFoundError(
            f"no events partitions event_date<={run_date} under {root}; load the raw events for the run date first"
        )
    log(run_date, f"reading {len(folders)} events partition(s) {min(folders)}..{max(folders)} from {root}")
    ddl = f"{schema.SPARK_DDL[schema.EVENTS]}, {schema.EVENT_DATE} DATE"
    return spark.read.schema(ddl).option("basePath", root).parquet(*[folders[d] for d in sorted(folders)])


def read_previous_index(
    spark: SparkSession, cfg: Config, run_date: dt.date
) -> tuple[DataFrame | None, str | None]:
    """The latest item_index partition strictly before the run date, and its date, or (None, None)."""
    table_root = cfg.warehouse.path(schema.TABLE_LAYER[schema.ITEM_INDEX], schema.ITEM_INDEX)
    earlier = {}
    for value, folder in list_partitions(spark, table_root, schema.RUN_DATE).items():
        try:
            day = dt.date.fromisoformat(value)
        except ValueError:
            continue  # not a run's partition: never a candidate
        if day < run_date:
            earlier[day] = folder
    if not earlier:
        return None, None
    latest = max(earlier)
    return read_table(spark, earlier[latest], schema.ITEM_INDEX), str(latest)


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
    sys.exit(main())
