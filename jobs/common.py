"""Small helpers shared by the jobs: dates, UTC day bounds, event codes and the event order.

Every time computation here is independent of ``spark.sql.session.timeZone``: day bounds are
built as UTC instants and dates are taken from epoch seconds, so a job gives the same rows
whatever the session's time zone (the jobs still set it to UTC for readable output).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import re
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from dql_model.contract import schema

SECONDS_PER_DAY = 86_400
EVENT_CODE_COL = "_event_code"
"""Scratch column with schema.EVENT_CODE of the event type (dropped before a job returns)."""


_DATA_FILE = re.compile(r"(?:file|hdfs|s3a?|gs|abfss?):/[^\s,;'\"()\[\]]+")
"""A file or folder URI in a Spark error (the file a read failed on)."""


class SparkJobFailed(RuntimeError):
    """A Spark job's step failed inside Spark; the message names the files the error names."""


def describe_failure(error: BaseException) -> str:
    """One line for a failure inside Spark: its first exception line and the files it names."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    cause = next((line for line in lines if "Exception:" in line or "Error:" in line), lines[0] if lines else "")
    cause = cause.lstrip(": ")[:400]
    files = list(dict.fromkeys(_DATA_FILE.findall(str(error))))[:3]
    where = f"; file(s): {', '.join(files)}" if files else "; the error names no file"
    return f"{type(error).__name__}: {cause}{where}"


@contextlib.contextmanager
def failures_named(job: str, run_date: dt.date | str) -> Iterator[None]:
    """Turn an error raised inside Spark into one line naming the job, the run date and the files,
    printed last (after the full traceback, kept for debugging). Our own errors (bad input, a
    lost row) already say what happened and pass through as they are."""
    from dql_model.errors import InputError

    try:
        yield
    except (InputError, SparkJobFailed):
        raise
    except Exception as error:
        if type(error).__module__.split(".")[0] not in ("py4j", "pyspark"):
            raise
        traceback.print_exc()
        message = f"[{job} {run_date}] failed: {describe_failure(error)}"
        print(message, file=sys.stderr, flush=True)
        raise SparkJobFailed(message) from None


def exit_status(main: Callable[[], int]) -> int:
    """A job's exit status under spark-submit: ``main()``'s, or errors.EXIT_BAD_INPUT when it raised bad input.

    spark-submit exits with its Python application's status, so the DAG's Spark task can tell bad input
    (fail at once: a retry reads the same input) from a job that died (retried). The traceback stays in
    the log for debugging; the error's own message is the last line, where the task's error quotes it.
    """
    from dql_model.errors import EXIT_BAD_INPUT, InputError

    try:
        return main()
    except InputError as error:
        traceback.print_exc()
        print(f"bad input: {error}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT


def as_date(value: dt.date | str) -> dt.date:
    """A ``date`` from a date or a ``YYYY-MM-DD`` string read by ``schema.iso_date`` (its error otherwise).

    A datetime is refused: ambiguous.
    """
    if isinstance(value, dt.datetime):
        raise TypeError(f"expected a date or 'YYYY-MM-DD', got the datetime {value!r}")
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(schema.iso_date(value))


def run_date_arg(text: str) -> dt.date:
    """The argparse ``type`` of every job's ``--run-date``: a calendar day, else schema.iso_date's message."""
    try:
        return as_date(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def day_start_utc(day: dt.date | str) -> dt.datetime:
    """00:00 UTC of ``day`` as an aware datetime (Spark turns it into the right instant)."""
    d = as_date(day)
    return dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC)


def day_end_utc(day: dt.date | str) -> dt.datetime:
    """Exclusive end of ``day``: 00:00 UTC of the next day."""
    return day_start_utc(as_date(day) + dt.timedelta(days=1))


def utc_date(ts: Column) -> Column:
    """The UTC calendar date of a timestamp column, whatever the session time zone."""
    return F.date_from_unix_date(F.floor(F.unix_seconds(ts) / SECONDS_PER_DAY).cast("int"))


def event_code(event_type: Column) -> Column:
    """schema.EVENT_CODE of an event type column; null for an unknown type."""
    code = F.lit(None).cast("int")
    for name, value in schema.EVENT_CODE.items():
        code = F.when(event_type == name, F.lit(value)).otherwise(code)
    return code


def event_order() -> list[Column]:
    """Total order of a user's events: time, event code, item, then value and session as tie-breaks.

    Needs the ``EVENT_CODE_COL`` scratch column. Exact duplicates are removed by the cleaning job,
    so rows that tie on every key are identical and their order cannot change any output.
    """
    return [
        F.col(schema.EVENT_TIME).asc(),
        F.col(EVENT_CODE_COL).asc(),
        F.col(schema.ITEM_ID).asc(),
        F.col(schema.VALUE).asc_nulls_first(),
        F.col(schema.SESSION_ID).asc_nulls_first(),
    ]


def seconds_between(later: Column, earlier: Column) -> Column:
    """Seconds from ``earlier`` to ``later`` as a double (microsecond precision)."""
    return (F.unix_micros(later) - F.unix_micros(earlier)) / F.lit(1_000_000.0)


def to_contract(df: DataFrame, table: str, *, extra: Sequence[str] = ()) -> DataFrame:
    """``df`` with exactly the columns of ``schema.SPARK_DDL[table]``, in order, cast to their types.

    ``extra`` columns (e.g. a partition column a caller still needs) follow, as they are.
    """
    from pyspark.sql.types import StructType

    contract = StructType.fromDDL(schema.SPARK_DDL[table])
    missing = [name for name in [f.name for f in contract.fields] + list(extra) if name not in df.columns]
    if missing:
        raise ValueError(f"{table}: the frame lacks contract column(s) {missing}; it has {df.columns}")
    return df.select(
        *[F.col(f.name).cast(f.dataType).alias(f.name) for f in contract.fields], *[F.col(c) for c in extra]
    )


def with_item_idx_and_code(events: DataFrame, item_index: DataFrame) -> DataFrame:
    """Events with ``item_idx`` and the event-code scratch column.

    An inner join: the index is built from the same accepted events, so it covers every one.
    """
    ids = item_index.select(schema.ITEM_ID, schema.ITEM_IDX)
    return events.join(ids, on=schema.ITEM_ID, how="inner").withColumn(
        EVENT_CODE_COL, event_code(F.col(schema.EVENT_TYPE))
    )
