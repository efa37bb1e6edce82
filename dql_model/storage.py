"""Local files written all-or-nothing: Parquet partitions and small JSON documents.

A partition is written to a hidden staging folder beside its final place, then swapped in with
renames, so a reader sees the old partition or the new one, never a half-written one, and a
crash mid-write leaves the previous partition intact.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from dql_model.layout import hidden_sibling

PART_TEMPLATE = "part-{:05d}.parquet"


def staging_path(final: str | os.PathLike[str]) -> Path:
    """Hidden sibling of ``final`` (Spark, Hive and pyarrow skip names starting with '_' or '.')."""
    final = Path(final)
    return final.parent / hidden_sibling(final.name, "staging")


def swap_in(staged: str | os.PathLike[str], final: str | os.PathLike[str]) -> None:
    """Replace ``final`` by ``staged``; the old folder is removed only after the new one is in place."""
    staged, final = Path(staged), Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    retired = final.parent / hidden_sibling(final.name, "retired")
    if final.exists():
        os.replace(final, retired)
    os.replace(staged, final)
    shutil.rmtree(retired, ignore_errors=True)


def write_partition(table: pa.Table, final: str | os.PathLike[str], *, rows_per_file: int = 1_000_000) -> list[Path]:
    """Write ``table`` as the whole content of the folder ``final``, atomically; returns the files."""
    staged = staging_path(final)
    staged.mkdir(parents=True)
    try:
        n_files = max(1, -(-table.num_rows // rows_per_file))
        for i in range(n_files):
            chunk = table.slice(i * rows_per_file, rows_per_file)
            pq.write_table(chunk, staged / PART_TEMPLATE.format(i), compression="zstd")
        (staged / "_SUCCESS").touch()
        swap_in(staged, final)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return sorted(Path(final).glob("part-*.parquet"))


def read_partition(folder: str | os.PathLike[str], columns: list[str] | None = None) -> pa.Table:
    """Read every Parquet file of one partition folder; a clear error if it is missing."""
    folder = Path(folder)
    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"partition {folder} has no Parquet files; did the upstream task run for this date?")
    return pa.concat_tables([pq.read_table(f, columns=columns) for f in files])


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A JSON file written by write_json_atomic as a dict; {} when there is none (not written yet)."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else {}


def write_json_atomic(path: str | os.PathLike[str], payload: Any) -> Path:
    """Write ``payload`` as JSON (sorted keys, indented) so readers see the old or the new file, never half.

    The one JSON writer of the package: run summaries, evaluation.json, registry metadata.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / hidden_sibling(path.name, "tmp")
    try:
        temporary.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path
