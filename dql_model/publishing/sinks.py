"""Optional SQL warehouse sink: the ``recommendations`` table in PostgreSQL or Redshift.

    run_date DATE, user_id, rank, item_id, score, source, propensity, model_version, generated_at

A publish replaces the run date's rows in one transaction: create the table if it is missing,
``DELETE ... WHERE run_date = %s``, load the new rows, check the row count, commit. Readers see the old
rows or the new ones, never a mix; a failure anywhere rolls back to the old rows, and a rerun of the
date replaces them cleanly. The rows are loaded

- on PostgreSQL by ``COPY ... FROM STDIN`` (streamed from the client, one record batch at a time);
- on Redshift by one ``COPY ... FROM 's3://<export>/run_date=.../part-' IAM_ROLE ... FORMAT AS PARQUET``
  from the run's S3 export (``S3Copy``; the cluster reads the parts itself, in parallel, instead of the
  client sending every row), into a temporary table whose columns are the parts' columns in their
  order (Parquet loads by position, and run_date is the folder's name, not a column), then
  ``INSERT ... SELECT`` with the run date. The role is named, never keys; the bucket must be in the
  cluster's region (a Parquet COPY takes no REGION);
- by multi-row ``INSERT`` (``method="insert"``) only when asked, or on a Redshift server reached by a
  ``postgresql://`` URL without an S3 export (slow at a real shop's size: it warns).

The connection is a libpq URL (``postgresql://user@host:5432/db?sslmode=require``; SQLAlchemy-style
``postgresql+psycopg://`` is accepted). The password comes from the environment (``PGPASSWORD``) or
``~/.pgpass``, as libpq reads them; the config refuses a URL that carries one when it loads
(``config.check_sql_url``), because it is saved with every model. Inside an Airflow task an Airflow
connection (``sql_conn_id``, dql_model.publishing.connections) replaces the URL. Logs name the server
without credentials.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import date
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa

from dql_model.contract import schema

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10
INSERT_ROWS = 1000
"""Rows per multi-row INSERT statement (method="insert")."""
LOAD_TABLE = "dqlrec_load"
"""The temporary table a Redshift COPY fills before the rows move to the target with their run date."""
_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")
COLUMNS = (
    (schema.RUN_DATE, "DATE"),
    (schema.USER_ID, "VARCHAR(256)"),
    (schema.RANK, "INTEGER"),
    (schema.ITEM_ID, "VARCHAR(256)"),
    (schema.SCORE, "DOUBLE PRECISION"),
    (schema.SOURCE, "VARCHAR(32)"),
    (schema.PROPENSITY, "DOUBLE PRECISION"),
    (schema.MODEL_VERSION, "VARCHAR(128)"),
    (schema.GENERATED_AT, "TIMESTAMPTZ"),
)
"""The table's columns: the recommendations contract plus run_date, in SQL types both databases have."""


class SinkError(RuntimeError):
    """The SQL sink cannot be reached or written; the run date's previous rows are unchanged."""


@dataclass(frozen=True)
class S3Copy:
    """Where Redshift COPYs the night from: the S3 prefix of the export's parts and the role it reads with."""

    prefix: str
    """``s3://bucket/prefix/run_date=YYYY-MM-DD/part-``: every part, not the manifest or _SUCCESS."""
    iam_role: str
    """IAM role ARN (or 'default') the cluster assumes to read the bucket (publish.redshift_iam_role)."""

    def __post_init__(self) -> None:
        if not self.prefix.startswith("s3://"):
            raise ValueError(f"a Redshift COPY reads from S3; {self.prefix!r} is not an s3:// prefix")
        if not self.iam_role:
            raise ValueError("a Redshift COPY needs an IAM role (publish.redshift_iam_role)")


def connection_url(url: str) -> str:
    """The libpq URL to connect with: ``postgresql+psycopg://`` and ``redshift://`` become ``postgresql://``.

    The scheme and the absence of a password are the config's rule (``config.check_sql_url``), checked
    when publish.sql_url loads.
    """
    return urlsplit(url)._replace(scheme="postgresql").geturl()


def redacted(url: str) -> str:
    """``host:port/db`` and the user, for logs and errors: no password, no query parameters."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    port = f":{parts.port}" if parts.port else ""
    return f"{user}{parts.hostname or 'localhost'}{port}{parts.path or '/'}"


def _identifier(table: str):
    from psycopg import sql

    if not _TABLE_NAME.match(table):
        raise ValueError(f"publish.sql_table={table!r} is not a table name (letters, digits, _; schema.table)")
    return sql.Identifier(*table.split("."))


def _connect(url: str, sql_conn_id: str = ""):
    """A connection with autocommit off: from the Airflow connection ``sql_conn_id`` if given, else from ``url``."""
    import psycopg

    if sql_conn_id:
        from dql_model.publishing import connections

        try:
            return connections.sql_connect(sql_conn_id, connect_timeout=CONNECT_TIMEOUT_S)
        except connections.AirflowConnectionError as exc:
            raise SinkError(str(exc)) from None
    try:
        return psycopg.connect(connection_url(url), connect_timeout=CONNECT_TIMEOUT_S, autocommit=False)
    except psycopg.Error as exc:
        raise SinkError(
            f"cannot connect to the SQL sink {redacted(url)}: {str(exc).strip()}; check the URL, the network "
            "and PGPASSWORD"
        ) from None


def replace_run_date(
    table: pa.Table,
    *,
    url: str = "",
    run_date: str | date,
    table_name: str = "recommendations",
    method: str = "auto",
    sql_conn_id: str = "",
    s3_copy: S3Copy | None = None,
) -> int:
    """Replace the run date's rows of ``table_name`` with ``table`` in one transaction; returns the rows.

    ``method``: auto (COPY FROM STDIN on PostgreSQL; on Redshift the COPY from ``s3_copy``, which must
    hold ``table``'s rows), copy or insert. ``sql_conn_id``: an Airflow connection instead of ``url``.
    """
    import psycopg

    run_date = date.fromisoformat(schema.iso_date(run_date))
    rows = schema.conform(table, schema.RECOMMENDATIONS)
    where = f"Airflow connection {sql_conn_id!r}" if sql_conn_id else redacted(url)
    with _connect(url, sql_conn_id) as conn:
        try:
            with conn.transaction(), conn.cursor() as cur:
                deleted, loaded = load_run_date(
                    cur, rows, run_date=run_date, table_name=table_name, method=method, s3_copy=s3_copy
                )
        except psycopg.Error as exc:
            raise SinkError(
                f"writing {table_name} for {run_date} on {where} failed and was rolled back "
                f"(the previous rows stay): {str(exc).strip()}"
            ) from exc
        except SinkError as exc:
            raise SinkError(f"{table_name} on {where}: {exc}") from None
    log.info("SQL sink %s: %s for %s replaced (%d old rows, %d new)", where, table_name, run_date, deleted, loaded)
    return loaded


def load_run_date(
    cur,
    rows: pa.Table,
    *,
    run_date: date,
    table_name: str,
    method: str = "auto",
    s3_copy: S3Copy | None = None,
) -> tuple[int, int]:
    """The statements of one replace, on ``cur`` inside the caller's transaction; returns (deleted, loaded) rows.

    ``rows`` are the contract's rows of the date (the Redshift COPY reads the same rows from ``s3_copy``:
    the count check compares the table with them). SinkError if the table does not hold exactly them
    afterwards; the caller rolls back.
    """
    if method not in ("auto", "copy", "insert"):
        raise ValueError(f"method must be auto, copy or insert, got {method!r}")
    from psycopg import sql

    target = _identifier(table_name)
    cur.execute(_create_sql(target))
    if method == "auto" and s3_copy is not None:
        _copy_from_s3(cur, s3_copy)  # before the DELETE: a failed COPY has not touched the table yet
    cur.execute(sql.SQL("DELETE FROM {} WHERE run_date = %s").format(target), (run_date,))
    deleted = cur.rowcount
    if method == "auto" and s3_copy is not None:
        cur.execute(_insert_loaded_sql(target), (run_date,))
        cur.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(LOAD_TABLE)))
    elif method == "insert" or (method == "auto" and _is_redshift(cur)):
        if method == "auto":
            log.warning(
                "%s is on Redshift: loading %d rows by INSERT statements, which is slow at a real shop's size; "
                "use a redshift:// publish.sql_url, an s3:// publish.export_uri and publish.redshift_iam_role "
                "to COPY from the export",
                table_name,
                rows.num_rows,
            )
        _insert(cur, target, rows, run_date)
    else:
        _copy(cur, target, rows, run_date)
    cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE run_date = %s").format(target), (run_date,))
    (loaded,) = cur.fetchone()
    if loaded != rows.num_rows:
        raise SinkError(
            f"{loaded} rows for {run_date} after loading {rows.num_rows}; rolled back (a concurrent writer, or "
            "an export that does not hold the night's rows?)"
        )
    return deleted, loaded


def read_run_date(
    *, url: str = "", run_date: str | date, table_name: str = "recommendations", sql_conn_id: str = ""
) -> pa.Table:
    """The run date's rows in the contract's layout (no run_date column), by user_id then rank."""
    from psycopg import sql

    names = [name for name, _ in COLUMNS if name != schema.RUN_DATE]
    query = sql.SQL("SELECT {} FROM {} WHERE run_date = %s ORDER BY user_id, {}").format(
        sql.SQL(", ").join(map(sql.Identifier, names)), _identifier(table_name), sql.Identifier(schema.RANK)
    )
    with _connect(url, sql_conn_id) as conn, conn.cursor() as cur:
        cur.execute(query, (date.fromisoformat(schema.iso_date(run_date)),))
        records = cur.fetchall()
    contract = schema.arrow_schema(schema.RECOMMENDATIONS)
    return pa.Table.from_pylist([dict(zip(names, r, strict=True)) for r in records], schema=contract)


def _create_sql(target):
    from psycopg import sql

    columns = sql.SQL(", ").join(
        sql.SQL("{} {} NOT NULL").format(sql.Identifier(name), sql.SQL(typ)) for name, typ in COLUMNS
    )
    key = sql.SQL(", ").join(map(sql.Identifier, (schema.RUN_DATE, schema.USER_ID, schema.RANK)))
    return sql.SQL("CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({}))").format(target, columns, key)


def _copy_from_s3(cur, source: S3Copy) -> None:
    """Redshift: the export's parts into a fresh temporary table, columns in the parts' order."""
    from psycopg import sql

    load = sql.Identifier(LOAD_TABLE)
    columns = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(typ)) for name, typ in COLUMNS if name != schema.RUN_DATE
    )
    cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(load))
    cur.execute(sql.SQL("CREATE TEMP TABLE {} ({})").format(load, columns))
    cur.execute(
        sql.SQL("COPY {} FROM {} IAM_ROLE {} FORMAT AS PARQUET").format(
            load, sql.Literal(source.prefix), sql.Literal(source.iam_role)
        )
    )


def _insert_loaded_sql(target):
    from psycopg import sql

    loaded = [sql.Identifier(name) for name, _ in COLUMNS if name != schema.RUN_DATE]
    return sql.SQL("INSERT INTO {} ({}) SELECT %s, {} FROM {}").format(
        target,
        sql.SQL(", ").join(sql.Identifier(name) for name, _ in COLUMNS),
        sql.SQL(", ").join(loaded),
        sql.Identifier(LOAD_TABLE),
    )


def _is_redshift(cur) -> bool:
    cur.execute("SELECT version()")
    return "redshift" in cur.fetchone()[0].lower()


def _records(rows: pa.Table, run_date: date):
    """Tuples in COLUMNS order, one record batch at a time (never the whole table as Python objects)."""
    names = [name for name, _ in COLUMNS if name != schema.RUN_DATE]
    for batch in rows.select(names).to_batches(max_chunksize=65_536):
        columns = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
        for values in zip(*columns, strict=True):
            yield (run_date, *values)


def _copy(cur, target, rows: pa.Table, run_date: date) -> None:
    from psycopg import sql

    names = sql.SQL(", ").join(sql.Identifier(name) for name, _ in COLUMNS)
    with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(target, names)) as copy:
        for record in _records(rows, run_date):
            copy.write_row(record)


def _insert(cur, target, rows: pa.Table, run_date: date) -> None:
    from psycopg import sql

    names = sql.SQL(", ").join(sql.Identifier(name) for name, _ in COLUMNS)
    one = sql.SQL("({})").format(sql.SQL(", ").join(sql.Placeholder() * len(COLUMNS)))
    pending: list[Any] = []

    def flush() -> None:
        n = len(pending) // len(COLUMNS)
        values = sql.SQL(", ").join([one] * n)
        cur.execute(sql.SQL("INSERT INTO {} ({}) VALUES {}").format(target, names, values), pending)
        pending.clear()

    for record in _records(rows, run_date):
        pending.extend(record)
        if len(pending) >= INSERT_ROWS * len(COLUMNS):
            flush()
    if pending:
        flush()
