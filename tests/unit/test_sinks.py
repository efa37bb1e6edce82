"""The SQL warehouse sink against a real, throwaway PostgreSQL server started from the machine's binaries.

The server (the ``postgres`` and ``pg_url`` fixtures of tests/conftest.py) runs on a free loopback
port with password authentication (scram-sha-256): the sink gets the password from PGPASSWORD only,
as in production. It is started once for this module (initdb + pg_ctl, about a second) and stopped
and deleted after.
"""

from __future__ import annotations

import os
from datetime import UTC, date, datetime

import pyarrow as pa
import pytest

from dql_model.contract import schema
from dql_model.publishing import sinks
from dql_model.publishing.sinks import SinkError, read_run_date, replace_run_date

RUN_DATE = "2026-11-27"
GENERATED = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)


def sql(url: str, query: str, params=()):
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else None


# --- data -----------------------------------------------------------------------------------------------


def recommendations(n_users: int, *, top_k: int = 3, salt: str = "") -> pa.Table:
    rows = [
        {
            schema.USER_ID: f"u{u}",
            schema.RANK: rank,
            schema.ITEM_ID: f"i{(u * 7 + rank) % 50}{salt}",
            schema.SCORE: 10.0 - rank - u / 100,
            schema.SOURCE: schema.SOURCE_DQN if u % 5 else schema.SOURCE_FALLBACK,
            schema.PROPENSITY: 1.0 if u % 3 else 0.125,
            schema.MODEL_VERSION: "v0007",
            schema.GENERATED_AT: GENERATED,
        }
        for u in range(n_users)
        for rank in range(1, top_k + 1)
    ]
    return pa.Table.from_pylist(rows, schema=schema.arrow_schema(schema.RECOMMENDATIONS))


def ordered(table: pa.Table) -> pa.Table:
    return table.sort_by([(schema.USER_ID, "ascending"), (schema.RANK, "ascending")])


# --- tests ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["copy", "insert"])
def test_replaces_the_run_date_in_one_transaction_and_keeps_other_dates(pg_url, method):
    table_name = f"recs_{method}"
    previous_day = recommendations(4, salt="y")
    first, second = recommendations(10), recommendations(6, salt="b")

    assert replace_run_date(previous_day, url=pg_url, run_date="2026-11-26", table_name=table_name, method=method) == 12
    assert replace_run_date(first, url=pg_url, run_date=RUN_DATE, table_name=table_name, method=method) == 30
    assert read_run_date(url=pg_url, run_date=RUN_DATE, table_name=table_name).equals(ordered(first))

    # Re-publishing the date replaces it whole; the day before is untouched.
    assert replace_run_date(second, url=pg_url, run_date=RUN_DATE, table_name=table_name, method=method) == 18
    assert read_run_date(url=pg_url, run_date=RUN_DATE, table_name=table_name).equals(ordered(second))
    assert read_run_date(url=pg_url, run_date="2026-11-26", table_name=table_name).equals(ordered(previous_day))
    counts = sql(pg_url, f"SELECT run_date, count(*) FROM {table_name} GROUP BY run_date ORDER BY run_date")
    assert counts == [(date(2026, 11, 26), 12), (date(2026, 11, 27), 18)]


def test_table_has_the_contract_columns_and_key(pg_url):
    replace_run_date(recommendations(2), url=pg_url, run_date=RUN_DATE, table_name="recs_schema")
    columns = sql(
        pg_url,
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_name = 'recs_schema' ORDER BY ordinal_position",
    )
    assert [c[0] for c in columns] == [name for name, _ in sinks.COLUMNS]
    assert {c[2] for c in columns} == {"NO"}
    assert dict((c[0], c[1]) for c in columns)[schema.GENERATED_AT] == "timestamp with time zone"
    key = sql(
        pg_url,
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'recs_schema'::regclass AND i.indisprimary",
    )
    assert sorted(k[0] for k in key) == sorted([schema.RUN_DATE, schema.USER_ID, schema.RANK])


def test_a_failure_mid_load_rolls_back_to_the_previous_rows(pg_url, monkeypatch):
    old = recommendations(10)
    replace_run_date(old, url=pg_url, run_date=RUN_DATE, table_name="recs_crash")

    real_records = sinks._records

    def records_then_crash(rows, run_date):
        for n, record in enumerate(real_records(rows, run_date)):
            if n == 7:
                raise ConnectionResetError("the network went away mid-load")
            yield record

    with monkeypatch.context() as patched, pytest.raises(ConnectionResetError):
        patched.setattr(sinks, "_records", records_then_crash)
        replace_run_date(recommendations(10, salt="b"), url=pg_url, run_date=RUN_DATE, table_name="recs_crash")
    assert read_run_date(url=pg_url, run_date=RUN_DATE, table_name="recs_crash").equals(ordered(old))

    # A database error (a duplicate key here) rolls back as well, and names the server without secrets.
    doubled = pa.concat_tables([recommendations(2, salt="c")] * 2)
    with pytest.raises(SinkError, match="rolled back.*previous rows stay") as error:
        replace_run_date(doubled, url=pg_url, run_date=RUN_DATE, table_name="recs_crash")
    assert os.environ["PGPASSWORD"] not in str(error.value)
    assert read_run_date(url=pg_url, run_date=RUN_DATE, table_name="recs_crash").equals(ordered(old))

    # The rerun completes.
    new = recommendations(10, salt="b")
    replace_run_date(new, url=pg_url, run_date=RUN_DATE, table_name="recs_crash")
    assert read_run_date(url=pg_url, run_date=RUN_DATE, table_name="recs_crash").equals(ordered(new))


def test_wrong_password_is_a_clear_error_without_the_password(postgres, monkeypatch):
    monkeypatch.setenv("PGPASSWORD", "not-the-password")
    with pytest.raises(SinkError, match=r"cannot connect to the SQL sink dqlrec@127\.0\.0\.1:\d+/postgres"):
        replace_run_date(recommendations(1), url=postgres.url, run_date=RUN_DATE)


def test_url_forms():
    assert sinks.connection_url("postgresql+psycopg://u@h:5439/db?sslmode=require") == (
        "postgresql://u@h:5439/db?sslmode=require"
    )
    assert sinks.connection_url("redshift://u@cluster.example:5439/dev").startswith("postgresql://")
    assert sinks.redacted("postgresql://u@h:5439/db?sslmode=require") == "u@h:5439/db"


@pytest.mark.parametrize("name", ["recs; DROP TABLE x", "1abc", "a.b.c", "recs-2"])
def test_table_names_are_checked(name):
    with pytest.raises(ValueError, match="is not a table name"):
        sinks._identifier(name)
