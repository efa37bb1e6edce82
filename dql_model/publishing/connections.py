"""Where publishing's credentials come from: an Airflow connection inside an Airflow task, the environment elsewhere.

``publish.aws_conn_id`` and ``publish.sql_conn_id`` name Airflow connections. Inside an Airflow task they
are read through ``airflow.sdk.BaseHook.get_connection``, so whatever the deployment configured answers:
the metadata database, a secrets backend (Vault, AWS Secrets Manager, ...), or ``AIRFLOW_CONN_<ID>``
variables. The lock holds neither the Amazon nor the Postgres provider, so the connection fields are
mapped here, following those providers' conventions:

- AWS (``conn_type`` aws): login = access key id, password = secret access key; extra ``aws_session_token``,
  ``region_name``, ``profile_name``, ``endpoint_url`` (or ``service_config.s3.endpoint_url``). No login:
  boto3's own chain (instance role, ...) with the connection's region and endpoint.
- SQL (``conn_type`` postgres or redshift): host, port, schema = database, login, password; extra entries
  are libpq parameters (``sslmode``, ...).

Outside a task (the ``dqlrec`` CLI) the ids are not read: boto3's default chain and ``publish.sql_url``
with PGPASSWORD apply, as before. A secret is only ever handed to boto3 or libpq: never stored on an
object of this module, logged or put in an error (errors name the connection id).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dql_model.config import sql_dialect

if TYPE_CHECKING:
    from dql_model.config import PublishConfig

log = logging.getLogger(__name__)

SQL_CONN_TYPES = ("postgres", "postgresql", "redshift")
_AWS_EXTRA = ("aws_session_token", "region_name", "profile_name", "endpoint_url", "service_config")
"""Extra keys of an aws connection that are honoured; others (role_arn, assume_role_*, ...) are refused."""
_IGNORED_AWS_EXTRA = ("config_kwargs", "verify")


class AirflowConnectionError(RuntimeError):
    """An Airflow connection publishing needs is missing or unusable; the message names its id."""


@dataclass(frozen=True)
class Endpoints:
    """How this process reaches S3 and the SQL sink: Airflow connection ids, or "" for the environment."""

    aws_conn_id: str = ""
    """Airflow connection for S3; "": boto3's default chain (environment, profile, instance role)."""
    sql_conn_id: str = ""
    """Airflow connection for the SQL sink; "": publish.sql_url with PGPASSWORD or ~/.pgpass."""

    def s3_client(self) -> Any:
        """An S3 client from the connection, or None: the caller's default-chain client."""
        return s3_client(self.aws_conn_id) if self.aws_conn_id else None

    def sql_is_redshift(self, url: str) -> bool:
        """The SQL sink is Redshift: a ``redshift://`` URL, or a connection of conn_type redshift."""
        if self.sql_conn_id:
            return airflow_connection(self.sql_conn_id).conn_type == "redshift"
        return sql_dialect(url) == "redshift"


def for_publish(publish: PublishConfig, *, in_airflow: bool | None = None) -> Endpoints:
    """The endpoints of a publish: the configured connection ids inside an Airflow task, the environment outside.

    ``in_airflow`` None asks whether this process is running an Airflow task now.
    """
    ids = {"aws_conn_id": publish.aws_conn_id, "sql_conn_id": publish.sql_conn_id}
    if not any(ids.values()):
        return Endpoints()
    if in_airflow is None:
        in_airflow = in_airflow_task()
    if in_airflow:
        return Endpoints(**ids)
    named = ", ".join(f"publish.{key}={value!r}" for key, value in ids.items() if value)
    log.info("%s: read inside an Airflow task only; this run uses the environment's credentials", named)
    return Endpoints()


def in_airflow_task() -> bool:
    """Whether this process is executing an Airflow task (the Task SDK has a current context)."""
    if "airflow.sdk" not in sys.modules:  # a task's process has imported the SDK; the CLI never does
        return False
    from airflow.sdk import get_current_context

    try:
        get_current_context()
    except RuntimeError:
        return False
    return True


def airflow_connection(conn_id: str) -> Any:
    """The Airflow connection ``conn_id`` from the deployment's backends; AirflowConnectionError naming it if missing."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowException

    try:
        return BaseHook.get_connection(conn_id)
    except AirflowException as exc:
        raise AirflowConnectionError(
            f"Airflow connection {conn_id!r} cannot be read ({type(exc).__name__}): define it (Admin > "
            f"Connections, the secrets backend, or AIRFLOW_CONN_{conn_id.upper()}) or clear the publish setting "
            "that names it"
        ) from None


def s3_client(aws_conn_id: str) -> Any:
    """An S3 client built from the aws connection ``aws_conn_id``; boto3's standard retries on."""
    import boto3
    from botocore.config import Config as BotoConfig

    conn = airflow_connection(aws_conn_id)
    extra = conn.extra_dejson
    unknown = sorted(set(extra) - set(_AWS_EXTRA) - set(_IGNORED_AWS_EXTRA))
    if unknown:
        raise AirflowConnectionError(
            f"Airflow connection {aws_conn_id!r}: extra {unknown} is not supported here (without the Amazon "
            f"provider only {list(_AWS_EXTRA)} are read); give keys or rely on the worker's role"
        )
    if bool(conn.login) != bool(conn.password):
        raise AirflowConnectionError(
            f"Airflow connection {aws_conn_id!r} has {'a login but no password' if conn.login else 'a password but no login'}: "
            "set both (access key id and secret) or neither (the worker's own AWS chain)"
        )
    session = boto3.session.Session(
        aws_access_key_id=conn.login or None,
        aws_secret_access_key=conn.password or None,
        aws_session_token=extra.get("aws_session_token"),
        region_name=extra.get("region_name"),
        profile_name=extra.get("profile_name"),
    )
    endpoint = extra.get("endpoint_url") or extra.get("service_config", {}).get("s3", {}).get("endpoint_url")
    log.info("S3 through Airflow connection %r%s", aws_conn_id, f" at {endpoint}" if endpoint else "")
    config = BotoConfig(retries={"mode": "standard", "max_attempts": 5})
    return session.client("s3", endpoint_url=endpoint, config=config)


def sql_connect(sql_conn_id: str, *, connect_timeout: int) -> Any:
    """A psycopg connection (autocommit off) from the connection ``sql_conn_id``; the password goes to libpq only."""
    import psycopg

    conn = airflow_connection(sql_conn_id)
    if conn.conn_type not in SQL_CONN_TYPES:
        raise AirflowConnectionError(
            f"Airflow connection {sql_conn_id!r} is of type {conn.conn_type!r}; the SQL sink needs one of {SQL_CONN_TYPES}"
        )
    where = describe(conn)
    params = {key: str(value) for key, value in conn.extra_dejson.items()}
    params.update(
        host=conn.host or "localhost",
        port=conn.port or (5439 if conn.conn_type == "redshift" else 5432),
        dbname=conn.schema or None,
        user=conn.login or None,
        password=conn.password or None,
        connect_timeout=connect_timeout,
    )
    try:
        return psycopg.connect(autocommit=False, **{k: v for k, v in params.items() if v is not None})
    except psycopg.Error as exc:
        reason = str(exc).strip()
        if conn.password:
            reason = reason.replace(conn.password, "***")
        raise AirflowConnectionError(
            f"cannot connect to the SQL sink {where} (Airflow connection {sql_conn_id!r}): {reason}; check the "
            "connection's host, login and password"
        ) from None


def describe(conn: Any) -> str:
    """``user@host:port/db`` of a SQL connection, for logs and errors: no password."""
    user = f"{conn.login}@" if conn.login else ""
    port = f":{conn.port}" if conn.port else ""
    return f"{user}{conn.host or 'localhost'}{port}/{conn.schema or ''}"
