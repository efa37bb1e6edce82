"""Spark scoring job: the run date's user states -> staged recommendations, the model broadcast to executors.

Run by the DAG with spark-submit when ``score.engine`` is ``spark``, or by hand::

    spark-submit jobs/score_recommendations.py --run-date 2026-11-27 --model-version 20261127-ab12cd34
    python -m jobs.score_recommendations --run-date 2026-11-27 --model-version 20261127-ab12cd34

``dql_model.scoring.engines.score_with_spark`` runs it the same way for the CLI and the tests.

The driver loads the model from the registry (safetensors) and tonight's catalogue (item_index, and
the transitions' action counts for the popularity fallback), and broadcasts them as one
``ScoringPayload``: weights as safetensors bytes, the rest plain arrays. Executors rebuild a ``Ranker``
once per payload and score with ``mapInPandas``: the same core, and the same user batches
(crc32(user_id) buckets sorted by user_id), as the torch engine, so the rows are identical.
The result replaces the staged recommendations partition atomically, then the ``ScoringSummary`` is
written for the validate task, with the mask counts the executors tallied by the torch engine's own
``Ranker.count_masks`` (``count_masks``: one more pass over the states, summed on the driver).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from pyspark import Broadcast
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from dql_model.config import Config, load_config
from dql_model.contract import schema, steps
from dql_model.learning import registry
from dql_model.scoring.engines import ScoringSummary
from dql_model.scoring.masks import MaskCounts
from dql_model.scoring.payload import ScoringPayload
from dql_model.scoring.policy import Policy
from dql_model.scoring.ranking import Catalogue, Ranker, batch_count, user_keys
from dql_model.warehouse import data, locks
from jobs.common import exit_status, failures_named, run_date_arg
from jobs.spark_session import get_spark, read_text, write_partition_atomic, write_text_atomic

JOB = steps.SCORING_JOB
BATCH = "_batch"
"""Scratch column: the user's scoring batch (crc32(user_id) mod the batch count)."""


def score_recommendations(user_states: DataFrame, *, payload: Broadcast, batch_size: int) -> DataFrame:
    """Recommendations for every row of ``user_states``, per ``schema.SPARK_DDL[RECOMMENDATIONS]``.

    ``payload`` is a broadcast ``ScoringPayload``. Users go to ``batch_count(n_users, batch_size)``
    buckets by crc32(user_id), exactly as ``dql_model.scoring.ranking.canonical_batches`` cuts them; each
    bucket is scored as one batch, its users sorted by user_id. Counts the users (one Spark job).
    """
    n_batches = batch_count(user_states.count(), batch_size)
    key = F.crc32(F.coalesce(F.col(schema.USER_ID), F.lit("")).cast("binary"))
    batched = (
        user_states.select(*data.user_state_columns(payload.value.policy.exclude))
        .withColumn(BATCH, F.pmod(key, F.lit(n_batches)))
        .repartition(BATCH)
        .sortWithinPartitions(BATCH, F.coalesce(F.col(schema.USER_ID), F.lit("")))
    )
    return batched.mapInPandas(partial(_score_partition, payload=payload), schema=schema.SPARK_DDL[schema.RECOMMENDATIONS])


def count_masks(user_states: DataFrame, *, payload: Broadcast) -> MaskCounts:
    """What the masks take from the users of ``user_states`` (``Ranker.count_masks`` per Arrow batch on the
    executors, summed here): the counts are additive over users, so any batching gives the torch engine's."""
    exclude = payload.value.policy.exclude
    tallies = (
        user_states.select(*data.user_state_columns(exclude))
        .mapInPandas(partial(_count_partition, payload=payload), schema="counter STRING, n LONG")
        .groupBy("counter")
        .agg(F.sum("n").alias("n"))
        .collect()
    )
    return MaskCounts.from_flat({row["counter"]: row["n"] for row in tallies}, exclude)


_RANKERS: dict[str, Ranker] = {}
"""The executor's Ranker of the current payload, built once per Python worker."""


def _ranker(value: ScoringPayload) -> Ranker:
    if value.token not in _RANKERS:
        _RANKERS.clear()
        _RANKERS[value.token] = value.ranker("cpu")
    return _RANKERS[value.token]


def _count_partition(frames: Iterator[pd.DataFrame], *, payload: Broadcast) -> Iterator[pd.DataFrame]:
    value: ScoringPayload = payload.value
    ranker = _ranker(value)
    for frame in frames:
        if frame.empty:
            continue
        states = data.decode_user_states(pa.Table.from_pandas(frame, preserve_index=False), value.max_len, exclude=value.policy.exclude)
        flat = ranker.count_masks(states).flat()
        yield pd.DataFrame({"counter": list(flat), "n": list(flat.values())})


def _score_partition(frames: Iterator[pd.DataFrame], *, payload: Broadcast) -> Iterator[pd.DataFrame]:
    torch.set_num_threads(1)  # one thread per task, as the torch engine scores each batch (engines.one_thread_per_batch)
    value: ScoringPayload = payload.value
    ranker = _ranker(value)
    for batch in _whole_batches(frames):
        columns = data.user_state_columns(value.policy.exclude)
        table = pa.Table.from_pandas(batch[columns], preserve_index=False)
        states = data.decode_user_states(table, value.max_len, exclude=value.policy.exclude)
        yield ranker.score_batch(states, user_keys(states.user_id)).to_pandas()


def _whole_batches(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """Arrow cuts a partition into frames of any size; regroup them into whole scoring batches."""
    carry: pd.DataFrame | None = None
    for frame in frames:
        if carry is not None:
            frame = pd.concat([carry, frame], ignore_index=True)
        if frame.empty:
            continue
        last = frame[BATCH].iloc[-1]
        done, carry = frame[frame[BATCH] != last], frame[frame[BATCH] == last]
        for _, group in done.groupby(BATCH, sort=False):
            yield group
    if carry is not None and not carry.empty:
        yield carry


def action_counts(transitions: DataFrame, *, n_items: int) -> np.ndarray:
    """How often each item_idx is the logged action in the window (train and validation): [n_items + 1]."""
    counts = (
        transitions.where(F.col(schema.SPLIT).isin(schema.TRAIN, schema.VALIDATION))
        .where(F.col(schema.ACTION).between(1, n_items))
        .groupBy(schema.ACTION)
        .count()
        .toArrow()
    )
    out = np.zeros(n_items + 1, dtype=np.float64)
    out[counts.column(schema.ACTION).to_numpy().astype(np.int64)] = counts.column("count").to_numpy()
    return out


# --- the job around it ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=JOB, description=__doc__.splitlines()[0])
    parser.add_argument("--run-date", required=True, type=run_date_arg, help="run date, YYYY-MM-DD (UTC)")
    parser.add_argument("--model-version", required=True, help="registry version to score with")
    parser.add_argument("--top-k", type=int, default=0, help="recommendations per user (0: score.top_k)")
    parser.add_argument("--config", default=None, help="YAML config (default: $DQLREC_CONFIG, then defaults)")
    args = parser.parse_args(argv)
    args.run_date = args.run_date.isoformat()
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    cfg = load_config(args.config)
    if args.top_k:
        cfg = cfg.replace(score={"top_k": args.top_k})
    owns_session = SparkSession.getActiveSession() is None
    spark = get_spark(cfg.spark, f"dqlrec-{JOB}")
    try:
        with locks.hold(cfg, args.run_date, JOB), failures_named(JOB, args.run_date):  # one writer at a time
            summary = run(spark, cfg, args.run_date, args.model_version)
    finally:
        if owns_session:
            spark.stop()
    print(json.dumps(summary.to_dict(), indent=2, sort_keys=True), flush=True)
    return 0


def run(
    spark: SparkSession, cfg: Config, run_date: str, model_version: str, *, generated_at: datetime | None = None
) -> ScoringSummary:
    """Score the run date's users, replace the staged partition, write the summary; returns it."""
    layout = cfg.layout
    model, meta = registry.load_model(Path(cfg.registry.root) / model_version)
    summary_text = read_text(spark, layout.etl_summary(run_date))
    protocol = json.loads(summary_text).get("protocol") if summary_text else None
    policy = Policy.from_config(cfg.score, run_date, protocol=protocol)
    item_index = layout.partition(schema.ITEM_INDEX, run_date)
    items = data.item_features_from_table(
        spark.read.parquet(item_index).select(*data.ITEM_INDEX_COLUMNS).toArrow(),
        price_buckets=cfg.model.price_buckets,
        where=f"item_index {item_index}",
    )
    transitions = spark.read.parquet(layout.partition(schema.TRANSITIONS, run_date))
    payload = ScoringPayload.build(
        model,
        Catalogue.from_features(items, action_counts(transitions, n_items=items.n_items)),
        policy,
        model_version=model_version,
        generated_at=generated_at or datetime.now(UTC),
        max_len=cfg.etl.max_len,
        source=registry.model_source(meta),
    )
    print(f"[{JOB} {run_date}] scoring with {model_version} on {spark.sparkContext.master}", flush=True)
    broadcast = spark.sparkContext.broadcast(payload)
    path = layout.staged(schema.RECOMMENDATIONS, run_date)
    try:
        states = spark.read.parquet(layout.partition(schema.USER_STATES, run_date))
        since = data.active_since(cfg.score, protocol, run_date)
        if since is not None:  # the torch engine's rule (data.load_user_states), so both score the same users
            states = states.where(F.col(schema.LAST_EVENT_TIME) >= F.lit(since))
        recommendations = score_recommendations(states, payload=broadcast, batch_size=cfg.score.batch_size)
        # Timestamps as UTC microseconds, as pyarrow and the contract have them (not INT96).
        spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        write_partition_atomic(recommendations, path)
        counts = count_masks(states, payload=broadcast)
    finally:
        broadcast.destroy()
    written = spark.read.parquet(path)
    sources = {row[schema.SOURCE]: row["count"] for row in written.groupBy(schema.SOURCE).count().collect()}
    summary = ScoringSummary(
        run_date=run_date,
        path=path,
        rows=sum(sources.values()),
        users=written.select(schema.USER_ID).distinct().count(),
        model_version=model_version,
        top_k=cfg.score.top_k,
        engine="spark",
        sources={name: int(sources.get(name, 0)) for name in schema.SOURCES},
        masked=counts.masked,
        short_lists=counts.short_lists,
    )
    text = json.dumps(summary.to_dict(), indent=2, sort_keys=True)
    write_text_atomic(spark, layout.scoring_summary(run_date), text)
    print(f"[{JOB} {run_date}] {summary.rows} rows for {summary.users} users: {summary.sources}", flush=True)
    print(f"[{JOB} {run_date}] {summary.masks_line()}", flush=True)
    return summary


if __name__ == "__main__":
    sys.exit(exit_status(main))
