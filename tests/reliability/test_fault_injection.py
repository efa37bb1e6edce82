"""SIGKILL at every step boundary of training, scoring and publishing: readers keep seeing a complete
output, nothing they read is left over, and a rerun completes with identical recommendations.

Each case copies a warehouse where two nights ran to the end (``two_nights``), runs the steps of the
second night again in a child process armed with ``DQLREC_FAULT_AT`` (dql_model.faults), and checks
that the child really died at that point (exit by SIGKILL). Then the readers marketing uses read the
warehouse table and the export as a whole: DuckDB ``read_parquet('<table>/*/*.parquet',
hive_partitioning = true)`` and a pyarrow dataset (what ``pandas.read_parquet`` reads). Each date
must read exactly as one complete publish wrote it: the previous one, or, once the kill came after
the atomic exchange, the new one. Only partitions are visible in the table folders, and only data
files and markers inside them. The rerun (in this process) must then complete, leave no swap area
folder, staged partition or lock behind, and publish the same recommendations.

Publishing cases run only the publish step (no torch, no Great Expectations in the child): they
stage a different table first, so that "old" and "new" can be told apart.

The rarer points have cases of their own: ``swap:retired``, reached only where the file system cannot
exchange two folders (the child is told to behave so), and ``export:parts_uploaded`` inside an export
to S3 (moto's server), killed in a publish and in a whole night. Their reruns must leave the same
files and objects as a clean run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import boto3
import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from dql_model import faults
from dql_model.config import Config
from dql_model.contract import schema
from dql_model.contract.layout import swap_area
from dql_model.publishing import publish
from dql_model.publishing.publish import read_export
from dql_model.warehouse import locks, storage
from tests.reliability.conftest import DAY1, DAY2, config_file, published, restore
from tests.reliability.night import NO_EXCHANGE_ENV, run_steps

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ORDER = [(schema.USER_ID, "ascending"), (schema.RANK, "ascending")]
SAME_RUN = [c for c in schema.arrow_schema(schema.RECOMMENDATIONS).names if c != schema.GENERATED_AT]
"""What a rerun must reproduce: every column but the time the rows were written."""
VISIBLE_IN_PARTITION = {"_SUCCESS", "_manifest.json"}

NIGHT_POINTS = [
    "train_model:start",
    "train:epoch_done",  # the first epoch's checkpoint written
    "registry:version_staged",  # the new version's files written, not yet renamed into the registry
    "train_model:end",
    "evaluate_and_gate:end",  # champion pointer moved, evaluation.json written
    "score:part_written",  # the first part of tonight's recommendations streamed to the swap area
    "swap:staged",  # the first swap of the night: the staged (unpublished) recommendations
    "score_users:end",
]
"""Kill points before publishing: the published output must stay the previous night's, untouched."""
# (kill point, the warehouse's DAY2 after the kill, the export's DAY2 after the kill)
PUBLISH_POINTS = [
    ("publish_recommendations:start", "old", "old"),
    ("swap:staged", "old", "old"),  # the warehouse partition assembled in the swap area
    ("swap:exchanged", "new", "old"),  # exchanged in; the previous one not yet removed
    ("publish:warehouse_swapped", "new", "old"),
    ("swap:staged#2", "new", "old"),  # the export assembled, manifest and _SUCCESS included
    ("swap:exchanged#2", "new", "new"),
    ("publish:exported", "new", "new"),  # before the staged partition is removed
    ("publish_recommendations:end", "new", "new"),
]


def kill_at(
    cfg, point: str, tmp_path: Path, first: str, last: str, upstream: dict | None = None, env: dict | None = None
) -> None:
    """Run the steps first..last in a child process armed to SIGKILL itself at ``point``; check it died there.

    ``env``: more variables for the child (night.NO_EXCHANGE_ENV)."""
    env = {
        **os.environ,
        **(env or {}),
        faults.FAULT_ENV: point,
        "PYTHONPATH": str(PROJECT_ROOT),
        "OMP_NUM_THREADS": "1",  # the parent trains on one thread too (conftest.one_torch_thread)
    }
    env.pop(locks.TOKEN_ENV, None)
    command = [sys.executable, "-m", "tests.reliability.night", str(config_file(cfg, tmp_path)), DAY2, first, last]
    if upstream is not None:
        command.append(json.dumps(upstream))
    with subprocess.Popen(command, env=env, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as child:
        out, err = child.communicate(timeout=300)
    assert child.returncode == -signal.SIGKILL, f"not killed at {point}:\n{out[-3000:]}\n{err[-3000:]}"
    assert f"fault injection: killing pid {child.pid} at {point.partition('#')[0]}" in err


def duckdb_dates(root: str) -> dict[str, pa.Table]:
    """Every date of a table as DuckDB reads the whole table with hive partitioning."""
    query = f"SELECT * FROM read_parquet('{root}/*/*.parquet', hive_partitioning = true)"
    return _by_date(duckdb.sql(query).arrow().read_all())


def pyarrow_dates(root: str) -> dict[str, pa.Table]:
    """Every date of a table as a pyarrow (pandas) dataset read of its folder finds it."""
    return _by_date(pq.read_table(root))


def _by_date(table: pa.Table) -> dict[str, pa.Table]:
    dates = pc.cast(table.column(schema.RUN_DATE), pa.string())
    out = {}
    for day in sorted(set(dates.to_pylist())):
        rows = table.filter(pc.equal(dates, day)).select(schema.arrow_schema(schema.RECOMMENDATIONS).names)
        out[day] = rows.cast(schema.arrow_schema(schema.RECOMMENDATIONS)).sort_by(ORDER)
    return out


def assert_readers_see(cfg, expected: dict[str, dict[str, pa.Table]]) -> None:
    """Both readers, over the warehouse table and the export, see exactly ``expected[where][date]``."""
    roots = {"warehouse": cfg.layout.table(schema.RECOMMENDATIONS), "export": cfg.publish.export_uri}
    for where, root in roots.items():
        for reader in (duckdb_dates, pyarrow_dates):
            seen = reader(root)
            assert sorted(seen) == sorted(expected[where]), f"{reader.__name__} of the {where} sees dates {sorted(seen)}"
            for day, table in expected[where].items():
                assert seen[day].equals(table), f"{reader.__name__} of the {where} {day} is not one complete publish"
        assert_only_partitions_visible(root)


def assert_only_partitions_visible(root: str) -> None:
    entries = sorted(p.name for p in Path(root).iterdir())
    assert entries == [f"{schema.RUN_DATE}={DAY1}", f"{schema.RUN_DATE}={DAY2}"], f"{root} holds {entries}"
    for partition in Path(root).iterdir():
        names = {p.name for p in partition.iterdir()}
        strays = {n for n in names if not n.endswith(".parquet")} - VISIBLE_IN_PARTITION
        assert not strays, f"{partition} holds {sorted(strays)}"


def assert_nothing_left(cfg) -> None:
    for root in (cfg.layout.table(schema.RECOMMENDATIONS), cfg.publish.export_uri):
        area = Path(swap_area(root))
        assert not area.exists() or list(area.iterdir()) == [], f"{area} holds {list(area.iterdir())}"
    assert not Path(cfg.layout.staged(schema.RECOMMENDATIONS, DAY2)).exists()
    assert not Path(cfg.layout.run_date_lock(DAY2)).exists()


def export_of(cfg, day: str) -> pa.Table:
    return read_export(cfg.publish.export_uri, day).sort_by(ORDER)


@pytest.mark.parametrize("point", NIGHT_POINTS)
def test_a_night_killed_in_training_or_scoring_keeps_the_output_and_reruns_to_the_same(night, tmp_path, point):
    before = {day: published(night, day) for day in (DAY1, DAY2)}
    exported = {day: export_of(night, day) for day in (DAY1, DAY2)}

    kill_at(night, point, tmp_path, "train_model", "write_report")

    assert_readers_see(night, {"warehouse": before, "export": exported})
    run_steps(night, DAY2)  # the rerun: takes over the dead child's lock, resumes, completes
    rerun = published(night, DAY2)
    assert rerun.select(SAME_RUN).equals(before[DAY2].select(SAME_RUN))
    assert export_of(night, DAY2).equals(rerun)
    assert published(night, DAY1).equals(before[DAY1])
    assert_readers_see(night, {"warehouse": {DAY1: before[DAY1], DAY2: rerun}, "export": {DAY1: exported[DAY1], DAY2: rerun}})
    assert_nothing_left(night)


@pytest.mark.parametrize(("point", "warehouse_after", "export_after"), PUBLISH_POINTS)
def test_a_publish_killed_at_any_step_shows_the_old_or_the_new_date_whole(
    night, tmp_path, point, warehouse_after, export_after
):
    old = {day: published(night, day) for day in (DAY1, DAY2)}
    assert export_of(night, DAY2).equals(old[DAY2])
    new = old[DAY2].filter(pc.less_equal(old[DAY2].column(schema.RANK), 4))  # tonight's rescoring: top 4
    storage.write_partition(new, night.layout.staged(schema.RECOMMENDATIONS, DAY2))
    validated = {"model_version": new.column(schema.MODEL_VERSION)[0].as_py(), "top_k": 4}

    kill_at(night, point, tmp_path, "publish_recommendations", "publish_recommendations", validated)

    states = {"old": old[DAY2], "new": new}
    assert_readers_see(
        night,
        {"warehouse": {DAY1: old[DAY1], DAY2: states[warehouse_after]}, "export": {DAY1: old[DAY1], DAY2: states[export_after]}},
    )
    if export_after == "new":
        assert export_of(night, DAY2).equals(new)  # manifest and checksums agree with what readers see

    result = run_steps(night, DAY2, "publish_recommendations", "publish_recommendations", validated)
    assert published(night, DAY2).equals(new) and export_of(night, DAY2).equals(new)
    assert_readers_see(night, {"warehouse": {DAY1: old[DAY1], DAY2: new}, "export": {DAY1: old[DAY1], DAY2: new}})
    assert_nothing_left(night)
    # A child killed inside a swap left a folder in the swap area: the rerun names what it removed.
    assert bool(result["recovered"]) == point.startswith("swap:")


# --- the rarer kill points: the two-rename swap and the S3 export -------------------------------


def export_day(cfg, day: str, table: pa.Table, uri: str | None = None) -> publish.Manifest:
    """Export ``table`` as ``day``'s export below ``uri`` (default the config's) as a publish of ``cfg`` would."""
    return publish.export(
        table,
        uri=uri or cfg.publish.export_uri,
        run_date=day,
        model_version=table.column(schema.MODEL_VERSION)[0].as_py(),
        config_hash=cfg.hash(),
        rows_per_file=cfg.publish.rows_per_file,
    )


def s3_objects(uri: str, day: str) -> dict[str, bytes]:
    """Every object below one date's export folder on S3, by name, with its bytes."""
    folder = publish.parse_uri(publish.partition_uri(uri, day))
    client = boto3.client("s3")
    listed = client.list_objects_v2(Bucket=folder.bucket, Prefix=folder.path + "/").get("Contents", [])
    return {
        obj["Key"].rsplit("/", 1)[1]: client.get_object(Bucket=folder.bucket, Key=obj["Key"])["Body"].read()
        for obj in listed
    }


def same_export(manifest: publish.Manifest, clean: publish.Manifest) -> bool:
    """The same files (names, rows, bytes, sha256), counts, model and config: all but the time of writing."""
    return dataclasses.replace(manifest, generated_at="") == dataclasses.replace(clean, generated_at="")


def stage_top4(cfg) -> tuple[dict[str, pa.Table], pa.Table, dict]:
    """(both dates as published, tonight's rescoring staged for DAY2, the validation result publishing needs)."""
    old = {day: published(cfg, day) for day in (DAY1, DAY2)}
    new = old[DAY2].filter(pc.less_equal(old[DAY2].column(schema.RANK), 4))
    storage.write_partition(new, cfg.layout.staged(schema.RECOMMENDATIONS, DAY2))
    return old, new, {"model_version": new.column(schema.MODEL_VERSION)[0].as_py(), "top_k": 4}


@pytest.mark.parametrize("point", ["swap:retired", "swap:retired#2"])
def test_a_publish_killed_between_the_two_renames_of_a_fallback_swap_puts_the_partition_back(night, tmp_path, point):
    """On a file system without an atomic exchange the swap retires the old folder, then renames the
    new one in: killed between the two, the date is missing from that table (the documented gap of
    the fallback), every other date is untouched, and the rerun puts it back and publishes the same
    files a clean publish writes."""
    old, new, validated = stage_top4(night)
    clean = export_day(night, DAY2, new, uri=str(tmp_path / "clean"))
    in_warehouse = point == "swap:retired"  # the first swap of the publish; #2 is the export's

    kill_at(night, point, tmp_path, "publish_recommendations", "publish_recommendations", validated, {NO_EXCHANGE_ENV: "1"})

    warehouse_root, export_root = night.layout.table(schema.RECOMMENDATIONS), night.publish.export_uri
    for reader in (duckdb_dates, pyarrow_dates):
        assert reader(warehouse_root) == ({DAY1: old[DAY1]} if in_warehouse else {DAY1: old[DAY1], DAY2: new})
        assert reader(export_root) == ({DAY1: old[DAY1], DAY2: old[DAY2]} if in_warehouse else {DAY1: old[DAY1]})
    retired_in = warehouse_root if in_warehouse else export_root
    left = sorted(p.name.split(".")[1][:7] for p in Path(swap_area(retired_in)).iterdir())
    assert left == ["retired", "staging"], left  # the old date moved out, the new one not yet in

    result = run_steps(night, DAY2, "publish_recommendations", "publish_recommendations", validated)

    assert any(line.startswith("put back") for line in result["recovered"]), result["recovered"]
    assert published(night, DAY2).equals(new) and export_of(night, DAY2).equals(new)
    assert same_export(publish.read_manifest(export_root, DAY2), clean)
    assert_readers_see(night, {"warehouse": {DAY1: old[DAY1], DAY2: new}, "export": {DAY1: old[DAY1], DAY2: new}})
    assert_nothing_left(night)


def test_a_publish_killed_after_its_s3_parts_uploaded_reruns_to_the_clean_export(night, tmp_path, s3_bucket):
    """Killed between the upload of the parts and the pruning of the previous export's extra parts:
    the date reads as not ready (no _SUCCESS, no manifest), the day before is byte for byte as it was,
    and the rerun leaves exactly the objects a clean export of the same rows writes."""
    cfg = night.replace(publish={"export_uri": f"s3://{s3_bucket}/marketing/recs", "rows_per_file": 10})
    for day in (DAY1, DAY2):
        export_day(cfg, day, published(cfg, day))
    day_before = s3_objects(cfg.publish.export_uri, DAY1)
    old, new, validated = stage_top4(cfg)
    clean_uri = f"s3://{s3_bucket}/clean/recs"
    clean = export_day(cfg, DAY2, new, uri=clean_uri)
    stale = set(s3_objects(cfg.publish.export_uri, DAY2)) - set(s3_objects(clean_uri, DAY2))
    assert stale, "the previous export must hold parts the new one does not, or the pruning goes untested"

    kill_at(cfg, "export:parts_uploaded", tmp_path, "publish_recommendations", "publish_recommendations", validated)

    assert s3_objects(cfg.publish.export_uri, DAY1) == day_before
    assert export_of(cfg, DAY1).equals(old[DAY1])
    assert published(cfg, DAY1).equals(old[DAY1]) and published(cfg, DAY2).equals(new)  # swapped before the export
    left = set(s3_objects(cfg.publish.export_uri, DAY2))
    assert stale <= left and not left & {"_SUCCESS", "_manifest.json"}, sorted(left)
    with pytest.raises(publish.IncompleteExportError, match="_SUCCESS"):
        export_of(cfg, DAY2)

    run_steps(cfg, DAY2, "publish_recommendations", "publish_recommendations", validated)

    rerun, clean_objects = s3_objects(cfg.publish.export_uri, DAY2), s3_objects(clean_uri, DAY2)
    assert sorted(rerun) == sorted(clean_objects)
    assert {n: b for n, b in rerun.items() if n.startswith("part-")} == {
        n: b for n, b in clean_objects.items() if n.startswith("part-")
    }
    assert same_export(publish.read_manifest(cfg.publish.export_uri, DAY2), clean)
    assert export_of(cfg, DAY2).equals(new) and published(cfg, DAY2).equals(new)
    assert s3_objects(cfg.publish.export_uri, DAY1) == day_before
    assert not Path(cfg.layout.staged(schema.RECOMMENDATIONS, DAY2)).exists()
    assert not Path(cfg.layout.run_date_lock(DAY2)).exists()


def test_a_night_killed_during_its_s3_export_reruns_to_the_clean_nights_output(two_nights, tmp_path, s3_bucket):
    """The whole night (training to report) with its export on S3, killed inside the export; the
    rerun of the night must deliver what the same night run without a kill delivered."""

    def night_before() -> Config:
        """DAY2 about to be rerun, both dates' exports delivered to S3 as they were published."""
        cfg = restore(two_nights).replace(publish={"export_uri": f"s3://{s3_bucket}/marketing/recs"})
        for day in (DAY1, DAY2):
            export_day(cfg, day, published(cfg, day))
        return cfg

    cfg = night_before()
    run_steps(cfg, DAY2)
    clean = (published(cfg, DAY2), export_of(cfg, DAY2), publish.read_manifest(cfg.publish.export_uri, DAY2))
    cfg = night_before()
    before = {day: published(cfg, day) for day in (DAY1, DAY2)}
    day_before = s3_objects(cfg.publish.export_uri, DAY1)

    kill_at(cfg, "export:parts_uploaded", tmp_path, "train_model", "write_report")

    assert published(cfg, DAY1).equals(before[DAY1])
    assert s3_objects(cfg.publish.export_uri, DAY1) == day_before
    with pytest.raises(publish.IncompleteExportError, match="_SUCCESS"):
        export_of(cfg, DAY2)

    run_steps(cfg, DAY2)

    warehouse, exported, manifest = published(cfg, DAY2), export_of(cfg, DAY2), publish.read_manifest(cfg.publish.export_uri, DAY2)
    assert warehouse.select(SAME_RUN).equals(clean[0].select(SAME_RUN))
    assert exported.equals(warehouse) and exported.select(SAME_RUN).equals(clean[1].select(SAME_RUN))
    names = [(f.name, f.rows) for f in manifest.files]
    assert names == [(f.name, f.rows) for f in clean[2].files]
    assert (manifest.row_count, manifest.user_count, manifest.model_version, manifest.config_hash) == (
        clean[2].row_count, clean[2].user_count, clean[2].model_version, clean[2].config_hash
    )
    assert sorted(s3_objects(cfg.publish.export_uri, DAY2)) == sorted([n for n, _ in names] + ["_SUCCESS", "_manifest.json"])
    assert published(cfg, DAY1).equals(before[DAY1]) and s3_objects(cfg.publish.export_uri, DAY1) == day_before
    assert not Path(cfg.layout.run_date_lock(DAY2)).exists()
