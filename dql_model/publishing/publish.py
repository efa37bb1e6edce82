"""Deliver a run's recommendations: the warehouse partition and the export marketing reads.

Export layout, below a local folder or ``s3://bucket/prefix``::

    <uri>/run_date=YYYY-MM-DD/part-00000.parquet ...
    <uri>/run_date=YYYY-MM-DD/recommendations.jsonl   with publish.export_jsonl: one JSON object per user
    <uri>/run_date=YYYY-MM-DD/_manifest.json   counts, per-file sizes and sha256, model version, config hash
    <uri>/run_date=YYYY-MM-DD/_SUCCESS         written last: the date is complete

Readers must wait for ``_SUCCESS`` and may check files against the manifest (``read_export`` and
``read_export_jsonl`` do). The JSON Lines file (``dql_model.publishing.jsonl``) is written, listed and
replaced with the parts, by the same protocol below.

Re-publishing a date replaces it cleanly. In a local folder (and in the warehouse table) the new
partition is assembled in the swap area beside the export folder (``<uri>/../_swap/<name>/``, never
below ``<uri>``, so ``read_parquet('<uri>/*/*.parquet', hive_partitioning = true)`` cannot see it) and
exchanged with the old one in one atomic rename (storage.swap_in, whose docstring states the invariant
and its limits): at every instant readers see the previous complete date or the new complete date.
A writer killed anywhere leaves at worst a folder in the swap area; the next publish removes it and
logs it (``recovered`` in publish_run's result). S3 has no rename, so there the order of writes is
the protocol, and the manifest with ``_SUCCESS`` is the commit point:

1. delete the old ``_SUCCESS`` (then the old manifest): from here on the date reads as not ready;
2. upload the new parts and the JSON Lines file (managed transfer, multipart for large files);
3. delete every object under the date's prefix that the new manifest does not list;
4. write ``_manifest.json``, then ``_SUCCESS``.

Every S3 call of these steps is retried with exponential backoff when the error is transient
(connection lost, timeout, throttling, 5xx); each step is idempotent, so a retry is safe. An error
that a retry cannot fix (access denied, no such bucket) fails at once.

A failure after step 1 leaves the date without ``_SUCCESS`` (and, before step 4, without a
manifest): readers that gate on ``_SUCCESS`` skip it, ``read_export`` refuses it with
IncompleteExportError, and rerunning the publish for that date completes it. A failure in step 1
itself leaves the previous export as it was. Otherwise the previous S3 export is not kept: its
parts are overwritten in place by the new ones, so the date is "not ready" until the rerun.
Other dates are never touched: every key written or deleted lies below the date's own folder.

S3 access uses boto3's standard configuration (environment, shared config, instance role;
``AWS_ENDPOINT_URL_S3`` for an S3-compatible endpoint), or inside an Airflow task the connection
``publish.aws_conn_id`` (dql_model.publishing.connections). Nothing here stores or logs credentials.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dql_model import faults
from dql_model.contract import schema
from dql_model.warehouse import storage

if TYPE_CHECKING:
    from dql_model.config import Config

log = logging.getLogger(__name__)

MANIFEST_NAME = "_manifest.json"
SUCCESS_NAME = "_SUCCESS"
MANIFEST_VERSION = 1
MiB = 1024 * 1024
MULTIPART_THRESHOLD = 16 * MiB
"""Files at least this large are uploaded in parts, in parallel."""
MULTIPART_CHUNKSIZE = 16 * MiB
"""Size of one part of a multipart upload (S3's minimum is 5 MiB)."""
_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}
_TRANSIENT_CODES = {
    "RequestTimeout",
    "RequestTimeoutException",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "InternalError",
    "ServiceUnavailable",
    "RequestLimitExceeded",
}
_sleep = time.sleep  # the tests record the backoff instead of waiting it out
T = TypeVar("T")


class ExportError(RuntimeError):
    """An export cannot be written or read as it should."""


class IncompleteExportError(ExportError):
    """The date has no complete export (no _SUCCESS, no manifest, or a listed file is missing)."""


class CorruptExportError(ExportError):
    """A file of the export differs from what its manifest says."""


# --- locations ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Location:
    """A local folder (``bucket`` None) or an S3 prefix; the one place that parses export URIs."""

    bucket: str | None
    """S3 bucket; None for a local folder."""
    path: str
    """Key prefix without leading or trailing '/' (S3), or the folder (local)."""

    @property
    def is_s3(self) -> bool:
        return self.bucket is not None

    def child(self, name: str) -> Location:
        if self.bucket is None:
            return Location(None, str(Path(self.path) / name))
        return Location(self.bucket, f"{self.path}/{name}" if self.path else name)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.path}" if self.bucket is not None else self.path


def parse_uri(uri: str) -> Location:
    """``s3://bucket/prefix`` -> S3 location; ``file:///path`` or a plain path -> local folder."""
    uri = str(uri)
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return Location(None, uri)
    if scheme == "file":
        return Location(None, rest)
    if scheme != "s3":
        raise ValueError(f"unsupported export URI {uri!r}: use a local folder or s3://bucket/prefix")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ValueError(f"export URI {uri!r} names no bucket: use s3://bucket/prefix")
    return Location(bucket, prefix.strip("/"))


def partition_uri(uri: str, run_date: str | date) -> str:
    """URI of one date's export: ``<uri>/run_date=YYYY-MM-DD``."""
    return str(_export_folder(uri, schema.iso_date(run_date)))


def parts_prefix(uri: str, run_date: str | date) -> str:
    """The prefix every Parquet part of one date's export starts with, and nothing else there (not the
    manifest, not _SUCCESS): what a Redshift COPY reads."""
    return f"{partition_uri(uri, run_date)}/{storage.PART_TEMPLATE.split('{', 1)[0]}"


# --- manifest -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestFile:
    """One Parquet file of an export."""

    name: str
    rows: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """What one date's export holds; written before ``_SUCCESS``."""

    run_date: str
    row_count: int
    user_count: int
    files: tuple[ManifestFile, ...]
    model_version: str
    config_hash: str
    generated_at: str
    """When the export was written (ISO 8601, UTC)."""
    manifest_version: int = MANIFEST_VERSION
    jsonl: ManifestFile | None = None
    """The JSON Lines file (``publish.export_jsonl``; its rows are lines, one per user); None when off."""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, *, where: str) -> Manifest:
        try:
            data = json.loads(text)
            files = tuple(ManifestFile(**f) for f in data.pop("files"))
            jsonl = data.pop("jsonl", None)
            return cls(files=files, jsonl=ManifestFile(**jsonl) if jsonl else None, **data)
        except (ValueError, TypeError, KeyError) as exc:
            raise CorruptExportError(
                f"{where} is not a valid export manifest ({exc}); rerun the publish"
            ) from None


# --- publishing ---------------------------------------------------------------------------------


def publish_run(
    cfg: Config, run_date: str, *, model_version: str, in_airflow: bool | None = None
) -> dict[str, Any]:
    """Publish a run date's staged recommendations to every sink; returns counts and places.

    The warehouse partition is swapped in, the date is replaced in the SQL sink (if configured) in
    one transaction, then the export is written with manifest and _SUCCESS last; a Redshift sink
    loads after the export, by COPY from it. Each step replaces the date whole and the staged
    partition is removed only after the last one, so after a failure anywhere a rerun completes the
    publish; other dates are never touched.

    ``in_airflow``: whether publish.aws_conn_id / sql_conn_id are read (connections.for_publish);
    None asks whether an Airflow task is running.
    """
    staged = cfg.layout.staged(schema.RECOMMENDATIONS, run_date)
    endpoints, s3_copy = _sinks_of(cfg, run_date, in_airflow=in_airflow)
    s3_client = endpoints.s3_client() if parse_uri(cfg.publish.export_uri).is_s3 else None
    if not Path(staged).is_dir():
        done = _already_published(cfg, run_date, model_version, s3_client)
        if done is not None:  # killed after its last write: a retry of the task finds the work done
            log.info("%s was published with %s already; nothing staged to publish again", run_date, model_version)
            return done
    recovered = storage.recover(cfg.layout.partition(schema.RECOMMENDATIONS, run_date))
    if not parse_uri(cfg.publish.export_uri).is_s3:
        recovered += storage.recover(partition_uri(cfg.publish.export_uri, run_date))
    table = storage.read_partition(staged)
    warehouse_path = publish_warehouse(table, cfg, run_date)
    faults.point("publish:warehouse_swapped")
    sql_rows = None
    if _has_sql_sink(cfg) and s3_copy is None:
        sql_rows = _replace_sql_rows(table, cfg, run_date, endpoints, None)
    manifest = export(
        table,
        uri=cfg.publish.export_uri,
        run_date=run_date,
        model_version=model_version,
        config_hash=cfg.hash(),
        rows_per_file=cfg.publish.rows_per_file,
        attempts=cfg.publish.s3_attempts,
        backoff_s=cfg.publish.s3_backoff_s,
        s3_client=s3_client,
        jsonl=cfg.publish.export_jsonl,
    )
    if s3_copy is not None:  # Redshift reads the night from the export just written
        sql_rows = _replace_sql_rows(table, cfg, run_date, endpoints, s3_copy)
    faults.point("publish:exported")
    shutil.rmtree(staged, ignore_errors=True)
    return {
        "run_date": run_date,
        "warehouse_path": str(warehouse_path),
        "export_uri": partition_uri(cfg.publish.export_uri, run_date),
        "rows": table.num_rows,
        "users": manifest.user_count,
        "files": len(manifest.files),
        "jsonl_lines": manifest.jsonl.rows if manifest.jsonl else None,
        "sql_table": cfg.publish.sql_table if _has_sql_sink(cfg) else None,
        "sql_rows": sql_rows,
        "model_version": model_version,
        "recovered": recovered,
    }


def _already_published(cfg: Config, run_date: str, model_version: str, s3_client: Any) -> dict[str, Any] | None:
    """publish_run's result when the date's warehouse partition and complete export hold this model's rows."""
    warehouse_path = cfg.layout.partition(schema.RECOMMENDATIONS, run_date)
    try:
        manifest = read_manifest(cfg.publish.export_uri, run_date, s3_client=s3_client)
        rows = storage.read_partition(warehouse_path, columns=[schema.MODEL_VERSION])
    except (ExportError, FileNotFoundError):
        return None
    versions = set(rows.column(schema.MODEL_VERSION).unique().to_pylist())
    if manifest.model_version != model_version or versions != {model_version} or manifest.row_count != rows.num_rows:
        return None
    if (manifest.jsonl is not None) != cfg.publish.export_jsonl:  # switched on or off since: publish again
        return None
    return {
        "run_date": run_date,
        "warehouse_path": warehouse_path,
        "export_uri": partition_uri(cfg.publish.export_uri, run_date),
        "rows": manifest.row_count,
        "users": manifest.user_count,
        "files": len(manifest.files),
        "jsonl_lines": manifest.jsonl.rows if manifest.jsonl else None,
        "sql_table": cfg.publish.sql_table if _has_sql_sink(cfg) else None,
        # Every step, the SQL one included, precedes the removal of the staged partition.
        "sql_rows": manifest.row_count if _has_sql_sink(cfg) else None,
        "model_version": model_version,
        "recovered": [],
    }


def _has_sql_sink(cfg: Config) -> bool:
    return bool(cfg.publish.sql_url or cfg.publish.sql_conn_id)


def _sinks_of(cfg: Config, run_date: str, *, in_airflow: bool | None) -> tuple[Any, Any]:
    """The endpoints of this publish, and the S3 COPY a Redshift sink loads by (None otherwise).

    Checked before anything is written: a Redshift sink needs an s3:// export and publish.redshift_iam_role.
    """
    from dql_model.publishing import connections, sinks

    endpoints = connections.for_publish(cfg.publish, in_airflow=in_airflow)
    if not _has_sql_sink(cfg):
        return endpoints, None
    if not cfg.publish.sql_url and not endpoints.sql_conn_id:
        raise sinks.SinkError(
            f"publish.sql_conn_id={cfg.publish.sql_conn_id!r} is read inside an Airflow task only and "
            "publish.sql_url is empty: set publish.sql_url to publish from the command line"
        )
    try:
        redshift = endpoints.sql_is_redshift(cfg.publish.sql_url)
    except connections.AirflowConnectionError as exc:
        raise sinks.SinkError(str(exc)) from None
    if not redshift:
        return endpoints, None
    export_at = parse_uri(cfg.publish.export_uri)
    if not export_at.is_s3 or not cfg.publish.redshift_iam_role:
        raise sinks.SinkError(
            f"the SQL sink is Redshift, which loads the night by COPY from the S3 export: it needs an s3:// "
            f"publish.export_uri (got {str(export_at)!r}) and publish.redshift_iam_role (an IAM role ARN the "
            f"cluster may assume to read it; got {cfg.publish.redshift_iam_role!r})"
        )
    return endpoints, sinks.S3Copy(parts_prefix(cfg.publish.export_uri, run_date), cfg.publish.redshift_iam_role)


def _replace_sql_rows(table: pa.Table, cfg: Config, run_date: str, endpoints: Any, s3_copy: Any) -> int:
    from dql_model.publishing import sinks

    return sinks.replace_run_date(
        table,
        url=cfg.publish.sql_url,
        run_date=run_date,
        table_name=cfg.publish.sql_table,
        sql_conn_id=endpoints.sql_conn_id,
        s3_copy=s3_copy,
    )


def publish_warehouse(table: pa.Table, cfg: Config, run_date: str | date) -> str:
    """Swap in the run date's partition of the warehouse table ``recommendations``; returns its folder."""
    path = cfg.layout.partition(schema.RECOMMENDATIONS, schema.iso_date(run_date))
    storage.write_partition(schema.conform(table, schema.RECOMMENDATIONS), path, rows_per_file=cfg.publish.rows_per_file)
    log.info("warehouse partition %s: %d rows", path, table.num_rows)
    return path


def export(
    table: pa.Table,
    *,
    uri: str,
    run_date: str | date,
    model_version: str,
    config_hash: str,
    rows_per_file: int,
    generated_at: datetime | None = None,
    attempts: int = 4,
    backoff_s: float = 1.0,
    s3_client: Any = None,
    jsonl: bool = False,
) -> Manifest:
    """Write one date's export below ``uri`` (local folder or s3://bucket/prefix); returns its manifest.

    ``jsonl``: also the JSON Lines file (``dql_model.publishing.jsonl``), in the manifest as ``jsonl``.

    On S3 each call is tried up to ``attempts`` times, waiting ``backoff_s``, then twice that, ...
    between tries of a transient error. ``s3_client``: the client to write with (an Airflow
    connection's, dql_model.publishing.connections); None: one from boto3's standard settings.
    """
    run_date = schema.iso_date(run_date)
    if rows_per_file < 1:
        raise ValueError(f"rows_per_file must be at least 1, got {rows_per_file}")
    if attempts < 1 or backoff_s < 0:
        raise ValueError(f"need attempts >= 1 and backoff_s >= 0, got {attempts} and {backoff_s}")
    table = schema.conform(table, schema.RECOMMENDATIONS)
    target = _export_folder(uri, run_date)
    stamp = (generated_at or datetime.now(UTC)).astimezone(UTC).isoformat()

    def manifest_for(folder: Path) -> Manifest:
        files = _write_parts(table, folder, rows_per_file)
        listed = _write_jsonl(table, folder, run_date) if jsonl else None
        users = pc.count_distinct(table.column(schema.USER_ID)).as_py()
        return Manifest(run_date, table.num_rows, users, tuple(files), model_version, config_hash, stamp, jsonl=listed)

    if target.is_s3:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        with tempfile.TemporaryDirectory(prefix="dqlrec-export-") as tmp:
            manifest = manifest_for(Path(tmp))
            try:
                client = s3_client if s3_client is not None else _s3_client()
                _upload(Path(tmp), manifest, target, Retry(attempts, backoff_s), client)
            except (ClientError, BotoCoreError, Boto3Error) as exc:
                raise ExportError(
                    f"export to {target} failed: {exc}. The date has no {SUCCESS_NAME} until a rerun of the "
                    "publish completes it; check the bucket, its permissions and the AWS settings."
                ) from exc
    else:
        written: list[Manifest] = []

        def fill(staged: Path) -> None:  # storage.write_folder adds _SUCCESS after the manifest
            written.append(manifest_for(staged))
            (staged / MANIFEST_NAME).write_text(written[0].to_json())

        storage.write_folder(target.path, fill)
        manifest = written[0]
    log.info(
        "exported %d rows for %d users in %d file(s) to %s",
        manifest.row_count,
        manifest.user_count,
        len(manifest.files),
        target,
    )
    return manifest


def _write_parts(table: pa.Table, folder: Path, rows_per_file: int) -> list[ManifestFile]:
    """Parquet files of at most ``rows_per_file`` rows (one file for an empty table), with checksums."""
    files = []
    n_files = max(1, -(-table.num_rows // rows_per_file))
    for i in range(n_files):
        chunk = table.slice(i * rows_per_file, rows_per_file)
        path = folder / storage.PART_TEMPLATE.format(i)
        pq.write_table(chunk, path, compression="zstd")
        files.append(ManifestFile(path.name, chunk.num_rows, path.stat().st_size, _sha256_file(path)))
    return files


def _write_jsonl(table: pa.Table, folder: Path, run_date: str) -> ManifestFile:
    from dql_model.publishing import jsonl

    path = folder / jsonl.JSONL_NAME
    lines = jsonl.write_jsonl(table, path, run_date=run_date)
    return ManifestFile(path.name, lines, path.stat().st_size, _sha256_file(path))


@dataclass(frozen=True)
class Retry:
    """Call a function until it succeeds, at most ``attempts`` times, with exponential backoff.

    Only transient errors are retried (``is_transient``); the last error is raised as it came.
    """

    attempts: int = 4
    backoff_s: float = 1.0

    def __call__(self, what: str, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        for attempt in range(1, self.attempts + 1):
            try:
                return call(*args, **kwargs)
            except Exception as exc:
                if attempt == self.attempts or not is_transient(exc):
                    raise
                delay = self.backoff_s * 2 ** (attempt - 1)
                log.warning("%s failed (%s); try %d of %d in %.1f s", what, exc, attempt + 1, self.attempts, delay)
                _sleep(delay)
        raise AssertionError("unreachable")  # the loop returns or raises


def is_transient(exc: BaseException) -> bool:
    """A connection, timeout, throttling or server-side error: trying again may succeed."""
    from boto3.exceptions import S3UploadFailedError
    from botocore import exceptions as bce

    if isinstance(exc, S3UploadFailedError):  # boto3 wraps the ClientError of a managed upload
        cause = exc.__cause__ or exc.__context__
        return cause is None or is_transient(cause)
    if isinstance(exc, bce.ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return exc.response.get("Error", {}).get("Code") in _TRANSIENT_CODES or status >= 500 or status == 429
    transient = (
        bce.ConnectionError,
        bce.HTTPClientError,
        bce.IncompleteReadError,
        bce.FlexibleChecksumError,
        ConnectionError,
        TimeoutError,
    )
    return isinstance(exc, transient)


def _upload(folder: Path, manifest: Manifest, target: Location, retry: Retry, client: Any) -> None:
    """The S3 protocol of the module docstring: withdraw, upload, prune, manifest, _SUCCESS."""
    bucket = target.bucket
    key = target.child

    for name in (SUCCESS_NAME, MANIFEST_NAME):
        retry(f"deleting {key(name)}", client.delete_object, Bucket=bucket, Key=key(name).path)
    config = _transfer_config()
    uploads = [*manifest.files, *([manifest.jsonl] if manifest.jsonl else [])]
    for n, file in enumerate(uploads, start=1):
        where = key(file.name)
        retry(f"uploading {where}", client.upload_file, str(folder / file.name), bucket, where.path, Config=config)
        log.info("uploaded %s (%.1f MiB, %d/%d) to %s", file.name, file.bytes / MiB, n, len(uploads), target)

    faults.point("export:parts_uploaded")
    keep = {key(f.name).path for f in uploads}
    listed = retry(f"listing {target}", _list_keys, client, bucket, target.path + "/")
    stale = [k for k in listed if k not in keep]
    for start in range(0, len(stale), 1000):  # DeleteObjects takes at most 1000 keys
        batch = stale[start : start + 1000]
        response = retry(
            f"deleting stale objects of {target}",
            client.delete_objects,
            Bucket=bucket,
            Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
        )
        if response.get("Errors"):
            first = response["Errors"][0]
            raise ExportError(
                f"could not delete stale object s3://{bucket}/{first.get('Key')} of the previous export "
                f"({first.get('Code')}: {first.get('Message')}); check delete permissions and rerun the publish"
            )
    if stale:
        log.info("removed %d stale object(s) of the previous export from %s", len(stale), target)

    retry(
        f"writing {key(MANIFEST_NAME)}",
        client.put_object,
        Bucket=bucket,
        Key=key(MANIFEST_NAME).path,
        Body=manifest.to_json().encode(),
        ContentType="application/json",
    )
    retry(f"writing {key(SUCCESS_NAME)}", client.put_object, Bucket=bucket, Key=key(SUCCESS_NAME).path, Body=b"")


# --- reading back -------------------------------------------------------------------------------


def read_export(uri: str, run_date: str | date, *, s3_client: Any = None) -> pa.Table:
    """Read one date's export after checking ``_SUCCESS`` and every file against the manifest."""
    manifest = read_manifest(uri, run_date, s3_client=s3_client)
    target = _export_folder(uri, manifest.run_date)
    read = _reader(target, s3_client)
    rerun = f"rerun the publish for {manifest.run_date}"

    tables = []
    for file in manifest.files:
        where = target.child(file.name)
        part = pq.read_table(pa.BufferReader(_checked(read, target, file, rerun)))
        if part.num_rows != file.rows:
            raise CorruptExportError(f"{where}: {part.num_rows} rows, manifest says {file.rows}; {rerun}")
        tables.append(part)
    table = pa.concat_tables(tables) if tables else schema.arrow_schema(schema.RECOMMENDATIONS).empty_table()
    if table.num_rows != manifest.row_count:
        raise CorruptExportError(
            f"{target}: {table.num_rows} rows, manifest says {manifest.row_count}; {rerun}"
        )
    return table


def read_export_jsonl(uri: str, run_date: str | date, *, s3_client: Any = None) -> bytes:
    """The JSON Lines file of one date's complete export, checked against the manifest (size, sha256,
    one line per user); IncompleteExportError when the export has none (publish.export_jsonl was off)."""
    manifest = read_manifest(uri, run_date, s3_client=s3_client)
    target = _export_folder(uri, manifest.run_date)
    rerun = f"rerun the publish for {manifest.run_date}"
    if manifest.jsonl is None:
        raise IncompleteExportError(f"{target} has no JSON Lines file: publish.export_jsonl was off; set it and {rerun}")
    data = _checked(_reader(target, s3_client), target, manifest.jsonl, rerun)
    lines = data.count(b"\n")
    if lines != manifest.jsonl.rows:
        raise CorruptExportError(
            f"{target.child(manifest.jsonl.name)}: {lines} lines, manifest says {manifest.jsonl.rows}; {rerun}"
        )
    return data


def _checked(read: Callable[[str], bytes | None], target: Location, file: ManifestFile, rerun: str) -> bytes:
    """The bytes of a file the manifest lists, refused when missing or not as listed (size, sha256)."""
    where = target.child(file.name)
    data = read(file.name)
    if data is None:
        raise IncompleteExportError(f"{where} is listed in the manifest but missing; {rerun}")
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != file.bytes or digest != file.sha256:
        raise CorruptExportError(
            f"{where}: {len(data)} bytes with sha256 {digest[:12]}..., manifest says {file.bytes} bytes "
            f"with sha256 {file.sha256[:12]}...; the file was changed after publishing; {rerun}"
        )
    return data


def read_manifest(uri: str, run_date: str | date, *, s3_client: Any = None) -> Manifest:
    """The manifest of one date's complete export (``_SUCCESS`` present, manifest for that date).

    The data files are not read: ``read_export`` checks them against it. ``s3_client`` as in ``export``.
    """
    run_date = schema.iso_date(run_date)
    target = _export_folder(uri, run_date)
    read = _reader(target, s3_client)
    rerun = f"rerun the publish for {run_date}"

    if read(SUCCESS_NAME) is None:
        raise IncompleteExportError(
            f"{target} has no {SUCCESS_NAME}: the export for {run_date} is missing or was interrupted; {rerun}"
        )
    text = read(MANIFEST_NAME)
    if text is None:
        raise IncompleteExportError(f"{target} has {SUCCESS_NAME} but no {MANIFEST_NAME}; {rerun}")
    manifest = Manifest.from_json(text, where=str(target.child(MANIFEST_NAME)))
    if manifest.run_date != run_date:
        raise CorruptExportError(
            f"{target.child(MANIFEST_NAME)} is for run_date {manifest.run_date}; {rerun}"
        )
    return manifest


def _export_folder(uri: str, run_date: str) -> Location:
    return parse_uri(uri).child(f"{schema.RUN_DATE}={run_date}")


def _reader(target: Location, s3_client: Any = None) -> Callable[[str], bytes | None]:
    """read(name) -> the bytes of the file ``name`` in ``target``, or None if it does not exist."""
    return _s3_reader(target, s3_client) if target.is_s3 else _local_reader(target)


def _local_reader(target: Location):
    def read(name: str) -> bytes | None:
        path = Path(target.path) / name
        return path.read_bytes() if path.is_file() else None

    return read


def _s3_reader(target: Location, s3_client: Any = None):
    from botocore.exceptions import ClientError

    client = s3_client if s3_client is not None else _s3_client()
    config = _transfer_config()

    def read(name: str) -> bytes | None:
        buffer = io.BytesIO()
        try:
            client.download_fileobj(target.bucket, target.child(name).path, buffer, Config=config)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING_CODES:
                return None
            raise
        return buffer.getvalue()

    return read


# --- helpers ------------------------------------------------------------------------------------


def _s3_client() -> Any:
    """An S3 client from boto3's standard settings (AWS_ENDPOINT_URL_S3, profiles, roles); retries on."""
    import boto3
    from botocore.config import Config as BotoConfig

    return boto3.client("s3", config=BotoConfig(retries={"mode": "standard", "max_attempts": 5}))


def _transfer_config() -> Any:
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_CHUNKSIZE)


def _list_keys(client: Any, bucket: str, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MiB), b""):
            digest.update(block)
    return digest.hexdigest()
