"""SparkSession for the jobs' main()s, and all-or-nothing writes through Hadoop's FileSystem.

Paths go through Hadoop's FileSystem (``spark._jvm``), so the same code works on local folders
and on HDFS. Partitions follow the swap protocol of ``dql_model.warehouse.storage`` (assembled in the table's
swap area, exchanged in atomically on a local disk). Renames are atomic on HDFS too, but there the
swap takes two of them; object stores (s3a) emulate them by copying, so there the swap is only as
safe as the store allows.
"""

from __future__ import annotations

import os
import uuid

from pyspark.sql import DataFrame, SparkSession

from dql_model.config import SparkConfig
from dql_model.contract.layout import hidden_sibling, swap_area
from dql_model.ops import spark_session
from dql_model.warehouse import storage


def get_spark(cfg: SparkConfig, app_name: str) -> SparkSession:
    """The active session if there is one (tests, notebooks), else a new one configured from ``cfg``
    (``dql_model.ops.spark_session``: UTC, and spark-submit's master and memory win under it)."""
    return spark_session.session(cfg, app_name)[0]


def _fs(spark: SparkSession, path: str):
    """(Hadoop FileSystem, Hadoop Path) of ``path``."""
    hadoop_path = spark._jvm.org.apache.hadoop.fs.Path(path)
    return hadoop_path.getFileSystem(spark._jsc.hadoopConfiguration()), hadoop_path


def _sibling(spark: SparkSession, final, tag: str):
    """A hidden sibling of ``final`` (readers skip names starting with '.' or '_')."""
    return spark._jvm.org.apache.hadoop.fs.Path(final.getParent(), hidden_sibling(final.getName(), tag))


def _in_swap_area(spark: SparkSession, final, tag: str):
    """A fresh ``<name>.<tag>-<id>`` in the swap area of ``final``'s table (layout.swap_area)."""
    area = spark._jvm.org.apache.hadoop.fs.Path(swap_area(final.getParent().toString()))
    return spark._jvm.org.apache.hadoop.fs.Path(area, f"{final.getName()}.{tag}-{uuid.uuid4().hex[:8]}")


def write_partition_atomic(df: DataFrame, final_path: str) -> None:
    """Write ``df`` as Parquet to become the whole content of the folder ``final_path``.

    The protocol of ``dql_model.warehouse.storage`` (its docstring states the invariant): leftovers of a dead
    writer are recovered first; the data goes to the table's swap area (a sibling of the table
    folder, unseen by readers); a complete write is swapped in by one atomic exchange on a local
    disk, or by two renames elsewhere (HDFS: the old folder is moved to the swap area first and put
    back by the next writer if this one dies in between; s3a emulates renames by copying). A rerun
    replaces the partition whole, never appends to it.
    """
    spark = df.sparkSession
    fs, final = _fs(spark, final_path)
    _recover_leftovers(spark, fs, final)
    staging = _in_swap_area(spark, final, storage.STAGING)
    try:
        df.write.mode("errorifexists").parquet(staging.toString())
        _swap_in(spark, fs, staging, final)
    finally:
        if fs.exists(staging):
            fs.delete(staging, True)


def _recover_leftovers(spark: SparkSession, fs, final) -> list[str]:
    """Clean up after a writer of this partition that died (one writer per run date: dql_model.warehouse.locks).

    A dead writer may leave a staging folder (deleted here) or, if it died between its two
    renames, the previous partition moved aside as "retired" and none in place: that one is put
    back, so the partition is never lost. Looks in the swap area and, for folders that older
    versions left, beside the partition; every action is printed.
    """
    area = spark._jvm.org.apache.hadoop.fs.Path(swap_area(final.getParent().toString()))
    candidates = []
    for folder, prefix in ((area, f"{final.getName()}."), (final.getParent(), f".{final.getName()}.")):
        if fs.exists(folder):
            candidates += [s.getPath() for s in fs.listStatus(folder) if s.getPath().getName().startswith(prefix)]
    done = []
    for path in sorted(candidates, key=lambda p: p.getName()):
        if f".{storage.RETIRED}-" in path.getName() and not fs.exists(final):
            fs.rename(path, final)
            done.append(f"put back {path} as {final} (a swap died between its two renames)")
        else:
            fs.delete(path, True)
            done.append(f"removed {path} (left by a writer that died)")
    for line in done:
        print(f"[spark_session] recovered partition {final}: {line}", flush=True)
    return done


def _swap_in(spark: SparkSession, fs, staging, final) -> None:
    fs.mkdirs(final.getParent())
    if not fs.exists(final):
        if not fs.rename(staging, final):
            raise OSError(f"could not rename {staging} to {final}; nothing was changed")
        return
    if fs.getScheme() == "file" and storage.exchange(staging.toUri().getPath(), final.toUri().getPath()):
        fs.delete(staging, True)  # the previous partition, moved out by the exchange
        return
    retired = _in_swap_area(spark, final, storage.RETIRED)
    if not fs.rename(final, retired):
        raise OSError(f"could not move the old partition {final} aside to {retired}; nothing was changed")
    if not fs.rename(staging, final):
        fs.rename(retired, final)
        raise OSError(f"could not rename {staging} to {final}; the previous partition was put back")
    fs.delete(retired, True)


def _swap_in_file(spark: SparkSession, fs, staging, final) -> None:
    """Replace a small file (a summary) on a non-local filesystem: old aside, new in, old deleted."""
    retired = _sibling(spark, final, storage.RETIRED)
    had_old = fs.exists(final)
    if had_old and not fs.rename(final, retired):
        raise OSError(f"could not move {final} aside to {retired}; nothing was changed")
    if not fs.rename(staging, final):
        if had_old:
            fs.rename(retired, final)
        raise OSError(f"could not rename {staging} to {final}; the previous file was put back")
    if had_old:
        fs.delete(retired, True)


def write_text_atomic(spark: SparkSession, path: str, text: str) -> None:
    """Write a small text file (a run summary) so readers see the old or the new content."""
    fs, final = _fs(spark, path)
    if fs.getScheme() == "file":
        local = final.toUri().getPath()
        os.makedirs(os.path.dirname(local), exist_ok=True)
        tmp = os.path.join(os.path.dirname(local), hidden_sibling(os.path.basename(local), "tmp"))
        with open(tmp, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, local)
        return
    staging = _sibling(spark, final, "staging")
    stream = fs.create(staging, True)
    try:
        stream.write(bytearray(text.encode("utf-8")))
    finally:
        stream.close()
    _swap_in_file(spark, fs, staging, final)


def list_partitions(spark: SparkSession, table_root: str, column: str) -> dict[str, str]:
    """``{value: folder}`` of the Hive-style ``column=value`` folders under ``table_root`` ({} if none)."""
    fs, root = _fs(spark, table_root)
    if not fs.exists(root):
        return {}
    prefix = f"{column}="
    found = {}
    for status in fs.listStatus(root):
        name = status.getPath().getName()
        if status.isDirectory() and name.startswith(prefix):
            found[name[len(prefix) :]] = status.getPath().toString()
    return found


def read_text(spark: SparkSession, path: str) -> str | None:
    """The content of a small text file (a run summary), or None if there is none."""
    fs, hadoop_path = _fs(spark, path)
    if not fs.exists(hadoop_path):
        return None
    if fs.getScheme() == "file":
        with open(hadoop_path.toUri().getPath(), encoding="utf-8") as text:
            return text.read()
    return "".join(content for _, content in spark.sparkContext.wholeTextFiles(path).collect())
