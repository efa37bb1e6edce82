"""Optional SQL warehouse sink: the ``recommendations`` table in PostgreSQL (Redshift-compatible SQL).

    run_date DATE, user_id, rank, item_id, score, source, propensity, model_version, generated_at

A publish replaces the run date's rows in one transaction: create the table if it is missing,
``DELETE ... WHERE run_date = %s``, load the new rows (``COPY ... FROM STDIN`` on PostgreSQL,
multi-row ``INSERT`` on Redshift, which has no COPY from the client), check the row count, commit.
Readers see the old rows or the new ones, never a mix; a failure anywhere rolls back to the old rows,
and a rerun of the date replaces them cleanly.

The connection is a libpq URL (``postgresql://user@host:5432/db?sslmode=require``; SQLAlchemy-style
``postgresql+psycopg://`` is accepted). The password comes from the environment (``PGPASSWORD``) or
``~/.pgpass``, as libpq reads them; the config refuses a URL that carries one when it loads
(``config.check_sql_url``), because it is saved with every model. Logs name the server without credentials.
"""

from __future__ import annotations

import logging
import re
from datetime import date
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa

from dql_model.contract import schema

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10
INSERT_ROWS = 1000
"""Rows per multi-row INSERT statement (the Redshift path)."""
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


def _connect(url: str):
    import psycopg

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
    url: str,
    run_date: str | date,
    table_name: str = "recommendations",
    method: str = "auto",
) -> int:
    """Replace the run date's rows of ``table_name`` with ``table`` in one transaction; returns the rows.

    ``method``: auto (COPY on PostgreSQL, INSERT on Redshift), copy or insert.
    """
    if method not in ("auto", "copy", "insert"):
        raise ValueError(f"method must be auto, copy or insert, got {method!r}")
    import psycopg
    from psycopg import sql

    run_date = date.fromisoformat(schema.iso_date(run_date))
    rows = schema.conform(table, schema.RECOMMENDATIONS)
    target = _identifier(table_name)
    with _connect(url) as conn:
        try:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(_create_sql(target))
                cur.execute(sql.SQL("DELETE FROM {} WHERE run_date = %s").format(target), (run_date,))
                deleted = cur.rowcount
                if method == "insert" or (method == "auto" and _is_redshift(cur)):
                    _insert(cur, target, rows, run_date)
                else:
                    _copy(cur, target, rows, run_date)
                cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE run_date = %s").format(target), (run_date,))
                (loaded,) = cur.fetchone()
                if loaded != rows.num_rows:
                    raise SinkError(
                        f"{table_name} on {redacted(url)} has {loaded} rows for {run_date} after loading "
                        f"{rows.num_rows}; rolled back (a concurrent writer?)"
                    )
        except psycopg.Error as exc:
            raise SinkError(
                f"writing {table_name} for {run_date} on {redacted(url)} failed and was rolled back "
                f"(the previous rows stay): {str(exc).strip()}"
            ) from exc
    log.info(
        "SQL sink %s: %s for %s replaced (%d old rows, %d new)", redacted(url), table_name, run_date, deleted, loaded
    )
    return loaded


def read_run_date(*, url: str, run_date: str | date, table_name: str = "recommendations") -> pa.Table:
    """The run date's rows in the contract's layout (no run_date column), by user_id then rank."""
    from psycopg import sql

    names = [name for name, _ in COLUMNS if name != schema.RUN_DATE]
    query = sql.SQL("SELECT {} FROM {} WHERE run_date = %s ORDER BY user_id, {}").format(
        sql.SQL(", ").join(map(sql.Identifier, names)), _identifier(table_name), sql.Identifier(schema.RANK)
    )
    with _connect(url) as conn, conn.cursor() as cur:
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
