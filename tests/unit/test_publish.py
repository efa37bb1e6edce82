"""Publishing: the warehouse partition and the export, to a local folder and to a real S3 API (moto server)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import boto3
import botocore.exceptions
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from boto3.s3.transfer import S3Transfer

from dql_model.contract import schema
from dql_model.publishing import publish
from dql_model.publishing.publish import (
    CorruptExportError,
    ExportError,
    IncompleteExportError,
    export,
    read_export,
    read_manifest,
)
from dql_model.warehouse import storage

RUN_DATE = "2026-11-27"
GENERATED = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
PARTS = ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]


def recommendations(n_users: int, *, top_k: int = 3, version: str = "v0007", salt: str = "") -> pa.Table:
    rows = [
        {
            schema.USER_ID: f"u{u}",
            schema.RANK: rank,
            schema.ITEM_ID: f"i{(u * 7 + rank) % 50}{salt}",
            schema.SCORE: round(10.0 - rank - u / 100, 4),
            schema.SOURCE: schema.SOURCE_DQN if u % 5 else schema.SOURCE_FALLBACK,
            schema.PROPENSITY: 1.0,
            schema.MODEL_VERSION: version,
            schema.GENERATED_AT: GENERATED,
        }
        for u in range(n_users)
        for rank in range(1, top_k + 1)
    ]
    return pa.Table.from_pylist(rows, schema=schema.arrow_schema(schema.RECOMMENDATIONS))


def export_to(uri: str, table: pa.Table, *, rows_per_file: int, run_date: str = RUN_DATE) -> publish.Manifest:
    return export(
        table,
        uri=uri,
        run_date=run_date,
        model_version="v0007",
        config_hash="cafe0123",
        rows_per_file=rows_per_file,
        generated_at=GENERATED,
    )


@pytest.fixture(autouse=True)
def backoff(monkeypatch) -> list[float]:
    """The waits between S3 retries, recorded instead of slept."""
    waits: list[float] = []
    monkeypatch.setattr(publish, "_sleep", waits.append)
    return waits


@pytest.fixture
def param_bucket(s3_endpoint, request) -> str:
    """A fresh bucket for a parametrized test (s3_bucket's name would contain '[')."""
    import re

    name = "t-" + re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower())[-50:].strip("-")
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3(s3_endpoint):
    """An independent client on the loopback S3 endpoint, to look at what the code under test wrote."""
    return boto3.client("s3", endpoint_url=s3_endpoint)


def s3_names(client, bucket: str, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(obj["Key"][len(prefix) :] for page in pages for obj in page.get("Contents", []))


def s3_bytes(client, bucket: str, key: str) -> bytes:
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


# --- S3 -------------------------------------------------------------------------------------------


def test_s3_export_reads_back_with_manifest_checksums(s3, s3_bucket):
    uri = f"s3://{s3_bucket}/recs/daily"
    table = recommendations(10)  # 30 rows -> files of 12, 12 and 6 rows
    manifest = export_to(uri, table, rows_per_file=12)

    prefix = f"recs/daily/run_date={RUN_DATE}/"
    assert s3_names(s3, s3_bucket, prefix) == ["_SUCCESS", "_manifest.json", *PARTS]
    stored = json.loads(s3_bytes(s3, s3_bucket, prefix + "_manifest.json"))
    assert stored["run_date"] == RUN_DATE
    assert (stored["row_count"], stored["user_count"]) == (30, 10)
    assert (stored["model_version"], stored["config_hash"]) == ("v0007", "cafe0123")
    assert stored["generated_at"] == "2026-11-27T03:00:00+00:00"
    assert [(f["name"], f["rows"]) for f in stored["files"]] == list(zip(PARTS, [12, 12, 6], strict=True))
    for entry in stored["files"]:
        body = s3_bytes(s3, s3_bucket, prefix + entry["name"])
        assert (len(body), hashlib.sha256(body).hexdigest()) == (entry["bytes"], entry["sha256"])
    assert publish.Manifest.from_json(json.dumps(stored), where="test") == manifest

    assert read_export(uri, RUN_DATE).equals(table)
    assert publish.partition_uri(uri, RUN_DATE) == f"s3://{s3_bucket}/recs/daily/run_date={RUN_DATE}"


def test_s3_writes_success_last_and_withdraws_it_first(s3_endpoint, s3_bucket, monkeypatch):
    uri = f"s3://{s3_bucket}/recs"
    export_to(uri, recommendations(10), rows_per_file=12)

    calls: list[tuple[str, str]] = []
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.meta.events.register(
        "before-parameter-build.s3",
        lambda params, model, **_: calls.append((model.name, params.get("Key", "").rsplit("/", 1)[-1])),
    )
    monkeypatch.setattr(publish, "_s3_client", lambda: client)
    export_to(uri, recommendations(10, salt="b"), rows_per_file=12)

    assert calls[:2] == [("DeleteObject", "_SUCCESS"), ("DeleteObject", "_manifest.json")]
    assert calls[-2:] == [("PutObject", "_manifest.json"), ("PutObject", "_SUCCESS")]
    uploads = [i for i, (op, key) in enumerate(calls) if op == "PutObject" and key.startswith("part-")]
    assert len(uploads) == 3 and max(uploads) < len(calls) - 2


def test_s3_reexport_with_fewer_files_leaves_no_stale_parts(s3, s3_bucket):
    uri = f"s3://{s3_bucket}/recs"
    prefix = f"recs/run_date={RUN_DATE}/"
    export_to(uri, recommendations(10), rows_per_file=12)
    export_to(uri, recommendations(10), rows_per_file=12, run_date="2026-11-26")
    # Keys that share the date's prefix as a string, but are not inside its folder, must survive.
    s3.put_object(Bucket=s3_bucket, Key=f"recs/run_date={RUN_DATE}-backup/part-00000.parquet", Body=b"x")
    s3.put_object(Bucket=s3_bucket, Key=prefix + "nested/leftover.txt", Body=b"x")

    smaller = recommendations(4, salt="b")
    manifest = export_to(uri, smaller, rows_per_file=12)

    assert [f.name for f in manifest.files] == ["part-00000.parquet"]
    assert s3_names(s3, s3_bucket, prefix) == ["_SUCCESS", "_manifest.json", "part-00000.parquet"]
    assert read_export(uri, RUN_DATE).equals(smaller)
    assert s3_names(s3, s3_bucket, "recs/run_date=2026-11-26/") == ["_SUCCESS", "_manifest.json", *PARTS]
    assert s3_names(s3, s3_bucket, f"recs/run_date={RUN_DATE}-backup/") == ["part-00000.parquet"]


def test_failed_upload_leaves_no_success_and_a_rerun_completes(s3, s3_bucket, monkeypatch, backoff):
    uri = f"s3://{s3_bucket}/recs"
    prefix = f"recs/run_date={RUN_DATE}/"
    export_to(uri, recommendations(10), rows_per_file=12)
    new = recommendations(10, salt="b")

    real_upload = S3Transfer.upload_file
    uploaded: list[str] = []

    def upload_then_lose_the_network(self, filename, bucket, key, *args, **kwargs):
        if len(uploaded) == 1:  # the second file of this export
            raise botocore.exceptions.EndpointConnectionError(endpoint_url="http://s3.example")
        uploaded.append(key)
        return real_upload(self, filename, bucket, key, *args, **kwargs)

    monkeypatch.setattr(S3Transfer, "upload_file", upload_then_lose_the_network)
    with pytest.raises(ExportError, match="has no _SUCCESS until a rerun"):
        export_to(uri, new, rows_per_file=12)
    assert backoff == [1.0, 2.0, 4.0]  # four tries of the second file, then it gives up

    # The date is withdrawn: no _SUCCESS, no manifest, the first new part already in place.
    assert s3_names(s3, s3_bucket, prefix) == PARTS
    assert pq.read_table(pa.BufferReader(s3_bytes(s3, s3_bucket, prefix + PARTS[0]))).equals(new.slice(0, 12))
    with pytest.raises(IncompleteExportError, match=f"run_date={RUN_DATE} has no _SUCCESS"):
        read_export(uri, RUN_DATE)

    monkeypatch.undo()
    export_to(uri, new, rows_per_file=12)
    assert read_export(uri, RUN_DATE).equals(new)
    assert s3_names(s3, s3_bucket, prefix) == ["_SUCCESS", "_manifest.json", *PARTS]


def failing(operation: str, error: Exception, times: int):
    """A botocore hook that raises ``error`` on the first ``times`` calls of ``operation``."""
    calls = []

    def hook(**_):
        calls.append(operation)
        if len(calls) <= times:
            raise error

    return f"before-call.s3.{operation}", hook, calls


def client_error(code: str, status: int) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject"
    )


@pytest.mark.parametrize(
    ("operation", "error"),
    [
        ("PutObject", client_error("SlowDown", 503)),
        ("DeleteObject", botocore.exceptions.ConnectionClosedError(endpoint_url="http://s3.example")),
        ("ListObjectsV2", botocore.exceptions.ReadTimeoutError(endpoint_url="http://s3.example")),
        ("PutObject", client_error("InternalError", 500)),
    ],
)
def test_transient_errors_are_retried_with_backoff(s3_endpoint, param_bucket, monkeypatch, backoff, operation, error):
    uri = f"s3://{param_bucket}/recs"
    export_to(uri, recommendations(10), rows_per_file=12)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    event, hook, calls = failing(operation, error, times=2)
    client.meta.events.register(event, hook)
    monkeypatch.setattr(publish, "_s3_client", lambda: client)

    new = recommendations(10, salt="b")
    export_to(uri, new, rows_per_file=12)
    assert backoff == [1.0, 2.0]
    assert len(calls) > 2
    assert read_export(uri, RUN_DATE).equals(new)


def test_errors_a_retry_cannot_fix_fail_at_once(s3_endpoint, s3_bucket, monkeypatch, backoff):
    uri = f"s3://{s3_bucket}/recs"
    old = recommendations(10)
    export_to(uri, old, rows_per_file=12)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    event, hook, calls = failing("DeleteObject", client_error("AccessDenied", 403), times=99)
    client.meta.events.register(event, hook)
    monkeypatch.setattr(publish, "_s3_client", lambda: client)

    with pytest.raises(ExportError, match="AccessDenied"):
        export_to(uri, recommendations(10, salt="b"), rows_per_file=12)
    assert (backoff, calls) == ([], ["DeleteObject"])
    assert read_export(uri, RUN_DATE).equals(old)  # it failed withdrawing _SUCCESS: the old export stands


def test_transient_errors_are_told_apart():
    from boto3.exceptions import S3UploadFailedError

    assert publish.is_transient(client_error("SlowDown", 503))
    assert publish.is_transient(client_error("Whatever", 502))
    assert not publish.is_transient(client_error("NoSuchBucket", 404))
    assert publish.is_transient(botocore.exceptions.EndpointConnectionError(endpoint_url="x"))
    assert not publish.is_transient(botocore.exceptions.NoCredentialsError())
    try:
        try:
            raise client_error("RequestTimeout", 400)
        except botocore.exceptions.ClientError as exc:
            raise S3UploadFailedError(f"Failed to upload: {exc}")  # noqa: B904 (as boto3 raises it)
    except S3UploadFailedError as wrapped:
        assert publish.is_transient(wrapped)


def test_read_export_refuses_changed_or_missing_files(s3, s3_bucket):
    uri = f"s3://{s3_bucket}/recs"
    prefix = f"recs/run_date={RUN_DATE}/"
    export_to(uri, recommendations(10), rows_per_file=12)

    sink = pa.BufferOutputStream()
    pq.write_table(recommendations(4, salt="x"), sink)
    s3.put_object(Bucket=s3_bucket, Key=prefix + PARTS[1], Body=sink.getvalue().to_pybytes())
    with pytest.raises(CorruptExportError, match=f"{PARTS[1]}: .* manifest says"):
        read_export(uri, RUN_DATE)

    s3.delete_object(Bucket=s3_bucket, Key=prefix + PARTS[1])
    with pytest.raises(IncompleteExportError, match=f"{PARTS[1]} is listed in the manifest but missing"):
        read_export(uri, RUN_DATE)


def test_large_file_is_uploaded_in_parts(s3, s3_bucket, monkeypatch):
    monkeypatch.setattr(publish, "MULTIPART_THRESHOLD", 5 * publish.MiB)  # S3's smallest part size
    monkeypatch.setattr(publish, "MULTIPART_CHUNKSIZE", 5 * publish.MiB)
    n = 60_000
    noise = base64.b64encode(os.urandom(n * 96)).decode()  # incompressible ids: a file of several MiB
    big = recommendations(n // 3)
    big = big.set_column(2, schema.ITEM_ID, pa.array([noise[i * 128 : (i + 1) * 128] for i in range(n)]))
    uri = f"s3://{s3_bucket}/recs"
    manifest = export_to(uri, big, rows_per_file=n)

    (file,) = manifest.files
    assert file.bytes > publish.MULTIPART_THRESHOLD  # otherwise this test proves nothing
    head = s3.head_object(Bucket=s3_bucket, Key=f"recs/run_date={RUN_DATE}/{file.name}")
    assert (
        "-" in head["ETag"]
    )  # a multipart ETag is not the object's MD5: sha256 in the manifest is what counts
    assert read_export(uri, RUN_DATE).equals(big)


# --- local folder ---------------------------------------------------------------------------------


def test_local_export_works_the_same(tmp_path):
    root = tmp_path / "export"
    table = recommendations(10)
    manifest = export_to(str(root), table, rows_per_file=12)

    folder = root / f"run_date={RUN_DATE}"
    assert sorted(p.name for p in folder.iterdir()) == ["_SUCCESS", "_manifest.json", *PARTS]
    assert json.loads((folder / "_manifest.json").read_text()) == json.loads(manifest.to_json())
    for entry in manifest.files:
        body = (folder / entry.name).read_bytes()
        assert (len(body), hashlib.sha256(body).hexdigest()) == (entry.bytes, entry.sha256)
    assert read_export(str(root), RUN_DATE).equals(table)
    assert read_export(f"file://{root}", RUN_DATE).equals(table)

    smaller = recommendations(4, salt="b")
    export_to(str(root), smaller, rows_per_file=12)
    assert sorted(p.name for p in folder.iterdir()) == ["_SUCCESS", "_manifest.json", "part-00000.parquet"]
    assert read_export(str(root), RUN_DATE).equals(smaller)
    assert [p.name for p in root.iterdir()] == [f"run_date={RUN_DATE}"]  # no staging or retired folders left


def test_local_failure_keeps_the_previous_export(tmp_path, monkeypatch):
    root = str(tmp_path / "export")
    old = recommendations(10)
    export_to(root, old, rows_per_file=12)

    real_write = pq.write_table
    written: list[str] = []

    def write_then_fill_the_disk(table, where, *args, **kwargs):
        if written:
            raise OSError(28, "No space left on device")
        written.append(str(where))
        return real_write(table, where, *args, **kwargs)

    monkeypatch.setattr(pq, "write_table", write_then_fill_the_disk)
    with pytest.raises(OSError, match="No space left"):
        export_to(root, recommendations(10, salt="b"), rows_per_file=12)
    monkeypatch.undo()

    assert read_export(root, RUN_DATE).equals(old)
    assert [p.name for p in Path(root).iterdir()] == [f"run_date={RUN_DATE}"]


def test_read_export_of_a_missing_date_is_a_clear_error(tmp_path):
    with pytest.raises(IncompleteExportError, match="run_date=2026-11-01 has no _SUCCESS.*rerun the publish"):
        read_export(str(tmp_path), "2026-11-01")


def test_read_manifest_reads_only_a_complete_export_of_its_date(tmp_path):
    root = tmp_path / "export"
    manifest = export_to(str(root), recommendations(10), rows_per_file=12)
    assert read_manifest(str(root), RUN_DATE) == manifest
    folder = root / f"run_date={RUN_DATE}"
    (folder / PARTS[0]).unlink()
    assert read_manifest(str(root), RUN_DATE) == manifest  # the files are read_export's to check

    moved = root / "run_date=2026-11-28"
    folder.rename(moved)  # a manifest under another date's folder
    with pytest.raises(CorruptExportError, match="is for run_date 2026-11-27"):
        read_manifest(str(root), "2026-11-28")
    (moved / "_manifest.json").unlink()
    with pytest.raises(IncompleteExportError, match="has _SUCCESS but no _manifest.json"):
        read_manifest(str(root), "2026-11-28")
    (moved / "_SUCCESS").unlink()
    with pytest.raises(IncompleteExportError, match="has no _SUCCESS"):
        read_export(str(root), "2026-11-28")


# --- warehouse, contract, URIs --------------------------------------------------------------------


def test_publish_warehouse_swaps_in_the_run_date_partition(tiny_config):
    cfg = tiny_config.replace(publish={"rows_per_file": 12})
    first = recommendations(10)
    path = publish.publish_warehouse(first, cfg, RUN_DATE)

    assert path == cfg.layout.partition(schema.RECOMMENDATIONS, RUN_DATE)
    assert path.endswith(f"output/recommendations/run_date={RUN_DATE}")
    assert sorted(p.name for p in Path(path).iterdir()) == ["_SUCCESS", *PARTS]
    assert storage.read_partition(path).equals(first)

    second = recommendations(4, salt="b")
    publish.publish_warehouse(second, cfg, RUN_DATE)
    assert storage.read_partition(path).equals(second)  # replaced, no parts of the first run left


def test_tables_off_the_contract_are_refused_by_name(tmp_path):
    table = recommendations(2)
    with_date = table.append_column(schema.RUN_DATE, pa.array([RUN_DATE] * table.num_rows))
    with pytest.raises(ValueError, match=r"unexpected columns \['run_date'\]"):
        export_to(str(tmp_path), with_date, rows_per_file=10)
    text_rank = table.set_column(1, schema.RANK, pa.array(["first"] * table.num_rows))
    with pytest.raises(ValueError, match="'rank': 'string'"):
        export_to(str(tmp_path), text_rank, rows_per_file=10)
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        export_to(str(tmp_path), table, rows_per_file=10, run_date="2026-11-27T00:00")
    assert not any(tmp_path.iterdir())

    # Columns in another order and int64 ranks are fine: the export is in the contract's layout.
    shuffled = table.select(list(reversed(table.column_names)))
    shuffled = shuffled.set_column(
        shuffled.column_names.index(schema.RANK), schema.RANK, table[schema.RANK].cast(pa.int64())
    )
    export_to(str(tmp_path), shuffled, rows_per_file=10)
    assert read_export(str(tmp_path), RUN_DATE).equals(table)


@pytest.mark.parametrize(
    ("uri", "bucket", "path", "text"),
    [
        ("s3://bucket/a/b/", "bucket", "a/b", "s3://bucket/a/b"),
        ("s3://bucket", "bucket", "", "s3://bucket/"),
        ("/var/export", None, "/var/export", "/var/export"),
        ("file:///var/export", None, "/var/export", "/var/export"),
    ],
)
def test_parse_uri(uri, bucket, path, text):
    location = publish.parse_uri(uri)
    assert (location.bucket, location.path, str(location)) == (bucket, path, text)
    assert publish.partition_uri(uri, RUN_DATE).endswith(f"/run_date={RUN_DATE}")


@pytest.mark.parametrize("uri", ["gs://bucket/x", "s3:///no-bucket", "s3a://bucket/x"])
def test_parse_uri_rejects_what_it_cannot_write(uri):
    with pytest.raises(ValueError, match="s3://bucket/prefix"):
        publish.parse_uri(uri)


# --- JSON Lines (publish.export_jsonl) --------------------------------------------------------------


def check_jsonl(body: bytes, table: pa.Table, entry: publish.ManifestFile) -> None:
    """One valid JSON object per user, Personalize's shape, items and scores in rank order as the rows."""
    assert (len(body), hashlib.sha256(body).hexdigest()) == (entry.bytes, entry.sha256)
    lines = body.decode("utf-8").splitlines()
    assert len(lines) == entry.rows == len(set(table.column(schema.USER_ID).to_pylist()))
    objects = [json.loads(line) for line in lines]
    assert [o["input"]["userId"] for o in objects] == sorted(o["input"]["userId"] for o in objects)
    expected: dict[str, list[tuple[int, str, float]]] = {}
    for row in table.to_pylist():
        expected.setdefault(row[schema.USER_ID], []).append((row[schema.RANK], row[schema.ITEM_ID], row[schema.SCORE]))
    for o in objects:
        ranked = sorted(expected.pop(o["input"]["userId"]))
        assert o["output"] == {"recommendedItems": [i for _, i, _ in ranked], "scores": [s for _, _, s in ranked]}
        assert (o["model_version"], o["run_date"]) == ("v0007", RUN_DATE)
    assert expected == {}  # every user has a line


def odd_recommendations() -> pa.Table:
    """Rows out of order, ids that need JSON escapes, scores that need every digit."""
    table = recommendations(7, top_k=4)
    ids = table.column(schema.USER_ID).to_pylist()
    ids = [{"u1": 'u"1\\', "u2": "ü\n2"}.get(u, u) for u in ids]
    table = table.set_column(0, schema.USER_ID, pa.array(ids))
    scores = [s + 1 / 3 for s in table.column(schema.SCORE).to_pylist()]
    table = table.set_column(table.schema.get_field_index(schema.SCORE), schema.SCORE, pa.array(scores))
    return table.take(pa.array(list(range(table.num_rows))[::-1]))


def test_jsonl_export_has_one_object_per_user_in_rank_order_listed_in_the_manifest(tmp_path):
    root = tmp_path / "export"
    table = odd_recommendations()
    manifest = export(
        table, uri=str(root), run_date=RUN_DATE, model_version="v0007", config_hash="c", rows_per_file=10, jsonl=True
    )
    folder = root / f"run_date={RUN_DATE}"
    assert manifest.jsonl is not None and manifest.jsonl.name == "recommendations.jsonl"
    assert "recommendations.jsonl" in {p.name for p in folder.iterdir()}
    assert [f.name for f in manifest.files] == PARTS  # the parts alone: readers of part-* are unchanged
    check_jsonl((folder / "recommendations.jsonl").read_bytes(), table, manifest.jsonl)
    assert read_manifest(str(root), RUN_DATE) == manifest
    assert publish.read_export_jsonl(str(root), RUN_DATE) == (folder / "recommendations.jsonl").read_bytes()
    assert read_export(str(root), RUN_DATE).equals(table)

    # Switched off, a rerun of the date drops the file and its entry.
    export_to(str(root), table, rows_per_file=10)
    assert "recommendations.jsonl" not in {p.name for p in folder.iterdir()}
    with pytest.raises(IncompleteExportError, match="publish.export_jsonl was off"):
        publish.read_export_jsonl(str(root), RUN_DATE)


def test_jsonl_export_to_s3_is_checked_and_replaced_with_the_parts(s3, s3_bucket):
    uri = f"s3://{s3_bucket}/recs"
    table = odd_recommendations()
    manifest = export(
        table, uri=uri, run_date=RUN_DATE, model_version="v0007", config_hash="c", rows_per_file=100, jsonl=True
    )
    prefix = f"recs/run_date={RUN_DATE}/"
    assert s3_names(s3, s3_bucket, prefix) == ["_SUCCESS", "_manifest.json", "part-00000.parquet", "recommendations.jsonl"]
    stored = json.loads(s3_bytes(s3, s3_bucket, prefix + "_manifest.json"))
    assert stored["jsonl"] == {"name": "recommendations.jsonl", "rows": 7, "bytes": manifest.jsonl.bytes, "sha256": manifest.jsonl.sha256}
    check_jsonl(s3_bytes(s3, s3_bucket, prefix + "recommendations.jsonl"), table, manifest.jsonl)

    s3.put_object(Bucket=s3_bucket, Key=prefix + "recommendations.jsonl", Body=b'{"input": {}}\n')
    with pytest.raises(CorruptExportError, match="recommendations.jsonl: 14 bytes"):
        publish.read_export_jsonl(uri, RUN_DATE)
    export_to(uri, table, rows_per_file=100)  # off: the stale file goes with the rerun
    assert s3_names(s3, s3_bucket, prefix) == ["_SUCCESS", "_manifest.json", "part-00000.parquet"]


def test_publish_run_exports_jsonl_when_the_config_says_so(tiny_config):
    cfg = tiny_config.replace(publish={"export_jsonl": True})
    table = recommendations(6)
    storage.write_partition(table, cfg.layout.staged(schema.RECOMMENDATIONS, RUN_DATE))

    result = publish.publish_run(cfg, RUN_DATE, model_version="v0007", in_airflow=False)

    assert result["jsonl_lines"] == 6
    listed = read_manifest(cfg.publish.export_uri, RUN_DATE).jsonl
    check_jsonl(publish.read_export_jsonl(cfg.publish.export_uri, RUN_DATE), table, listed)
    # A retry after the last write finds the work done; with the switch turned off since, it does not.
    assert publish.publish_run(cfg, RUN_DATE, model_version="v0007", in_airflow=False)["jsonl_lines"] == 6
    assert publish._already_published(cfg.replace(publish={"export_jsonl": False}), RUN_DATE, "v0007", None) is None
