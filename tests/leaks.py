"""Where a secret turns up: what a run wrote, gathered by place, and the one search of it for secrets.

The secret tests (tests/unit/test_connections.py, tests/reliability/test_secrets_of_a_night.py) supply a
credential the legitimate way, run, then hand everything the run left behind to ``found_in``.
"""

from __future__ import annotations

from pathlib import Path

import boto3


def found_in(written: dict[str, bytes], *secrets: str) -> list[str]:
    """The places of ``written`` (place -> bytes) holding any of ``secrets``; [] when none leaked."""
    needles = [s.encode() for s in secrets if s]
    assert needles, "no secret to look for"
    return sorted(where for where, data in written.items() if any(n in data for n in needles))


def files_under(*roots: str | Path) -> dict[str, bytes]:
    """Every file below the roots, by path: logs, tables, registry, reports, Data Docs, exports."""
    return {str(p): p.read_bytes() for root in roots for p in sorted(Path(root).rglob("*")) if p.is_file()}


def bucket_objects(endpoint: str, bucket: str, prefix: str = "") -> dict[str, bytes]:
    """Every object of a bucket (below ``prefix``), read with a reader's own credentials."""
    client = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id="reader", aws_secret_access_key="reader", region_name="us-east-1"
    )
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
    return {key: client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


def sql_table_text(postgres, table_name: str) -> str:
    """Every row of a table of the throwaway PostgreSQL server as text."""
    import psycopg

    with psycopg.connect(postgres.url, password=postgres.password, autocommit=True) as conn:
        rows = conn.execute(f"SELECT t::text FROM {table_name} AS t").fetchall()  # noqa: S608 (a fixed test name)
    return "\n".join(r[0] for r in rows)


def logged(caplog, capfd) -> str:
    """What a run logged: records pytest captured, and what went to stdout/stderr once Airflow's SDK,
    imported to read a connection, configured logging its own way (structlog to the console)."""
    out, err = capfd.readouterr()
    return caplog.text + out + err
