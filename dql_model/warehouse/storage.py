"""Local files written all-or-nothing: Parquet partitions and small JSON documents.

The swap protocol of a partition folder ``<table>/<column>=<value>``:

1. recover: leftovers of an earlier writer of this partition that died are cleaned up (logged);
2. assemble the new partition in the table's swap area (``layout.swap_area``: a sibling of the
   table folder, so no reader's glob reaches it) as ``<column>=<value>.staging-<id>``;
3. swap it in: with no partition in place, one rename; otherwise one ``renameat2(RENAME_EXCHANGE)``,
   which exchanges the two folders atomically (Linux; ext4, xfs, btrfs, tmpfs, ...);
4. remove what the exchange moved out (the previous partition, now under the staging name).

Invariant: at every instant a reader of the table (DuckDB ``read_parquet('<table>/*/*.parquet',
hive_partitioning = true)``, pandas/pyarrow datasets, Spark) sees the partition whole, either the
previous one or the new one: never a partial, missing or doubled date. A SIGKILL at any step leaves
the previous partition in place (before 3) or the new one (after 3), and at worst a folder in the
swap area, which no reader sees and the next writer removes.

Limits. Where the filesystem cannot exchange (macOS, some network filesystems) the swap falls back
to two renames, the old folder first moved to the swap area as ``.retired-<id>``: a reader between
the two renames sees the date missing, and a writer killed there leaves it missing until the next
writer of that partition puts the retired folder back (step 1). A warning says when this happens.
Recovery assumes one writer per partition at a time, which the run-date lock (dql_model.warehouse.locks)
gives the pipeline. Object stores have no rename at all: the S3 export's commit point is its
manifest and ``_SUCCESS`` (dql_model.publishing.publish).
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from dql_model import faults
from dql_model.contract.layout import hidden_sibling, swap_area
from dql_model.errors import InputError

log = logging.getLogger(__name__)

PART_TEMPLATE = "part-{:05d}.parquet"
STAGING, RETIRED = "staging", "retired"
"""Tags of the folders in a swap area: a partition being assembled, one moved out of the table."""
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_CANNOT_EXCHANGE = {errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV}


class MixedSchemaError(InputError, ValueError):
    """The files of one partition disagree on a column's type (bad input: rewrite the partition)."""


def staging_path(final: str | os.PathLike[str]) -> Path:
    """A fresh folder name in the swap area of ``final``'s table: ``<name>.staging-<id>``."""
    final = Path(final)
    return Path(swap_area(str(final.parent))) / f"{final.name}.{STAGING}-{uuid.uuid4().hex[:8]}"


def recover(final: str | os.PathLike[str]) -> list[str]:
    """Clean up after a writer of the partition ``final`` that died; returns what was done, logged.

    Folders of this partition in the swap area are removed, except a retired one while ``final`` is
    missing (a fallback swap died between its renames): that one is put back. Hidden siblings that
    older versions left inside the table folder (``.<name>.staging-*``, ``.<name>.retired-*``) are
    treated the same way.
    """
    final = Path(final)
    area = Path(swap_area(str(final.parent)))
    found = sorted(area.glob(f"{final.name}.*")) if area.is_dir() else []
    found += sorted(final.parent.glob(f".{final.name}.*")) if final.parent.is_dir() else []
    done = []
    for leftover in found:
        if f".{RETIRED}-" in leftover.name and not final.exists():
            os.rename(leftover, final)
            done.append(f"put back {leftover} as {final} (a swap died between its two renames)")
        else:
            _remove(leftover)
            done.append(f"removed {leftover} (left by a writer that died)")
    for line in done:
        log.warning("recovered partition %s: %s", final, line)
    return done


def recover_table(table_root: str | os.PathLike[str]) -> list[str]:
    """``recover`` every partition of the table at ``table_root`` that has folders in its swap area.

    For a writer that may have died while staging partitions it no longer names (a killed import
    of other days): the partition of each leftover is read back from its name, as staging_path wrote it.
    """
    area = Path(swap_area(str(table_root)))
    names = set()
    for leftover in area.iterdir() if area.is_dir() else ():
        for tag in (STAGING, RETIRED):
            name, found, _ = leftover.name.rpartition(f".{tag}-")
            if found:
                names.add(name)
    return [line for name in sorted(names) for line in recover(Path(table_root) / name)]


def swap_in(staged: str | os.PathLike[str], final: str | os.PathLike[str]) -> None:
    """Replace the folder ``final`` by ``staged`` (in the swap area) as the module docstring says."""
    staged, final = Path(staged), Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    faults.point("swap:staged")
    if not final.exists():
        os.rename(staged, final)
        faults.point("swap:exchanged")
        return
    if exchange(staged, final):
        faults.point("swap:exchanged")
        shutil.rmtree(staged)  # the previous partition, moved out by the exchange
        return
    log.warning("%s cannot exchange folders: swapping %s with two renames (a reader may miss it between them)",
                final.parent, final)
    retired = staged.parent / f"{final.name}.{RETIRED}-{uuid.uuid4().hex[:8]}"
    os.rename(final, retired)
    faults.point("swap:retired")
    os.rename(staged, final)
    faults.point("swap:exchanged")
    shutil.rmtree(retired, ignore_errors=True)


def exchange(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where that is not supported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _CANNOT_EXCHANGE:
        return False
    raise OSError(code, f"cannot exchange {a} and {b}: {os.strerror(code)}")


def write_partition(table: pa.Table, final: str | os.PathLike[str], *, rows_per_file: int = 1_000_000) -> list[Path]:
    """Write ``table`` as the whole content of the folder ``final``, atomically; returns the files."""
    return write_folder(final, lambda staged: _write_parts(table, staged, rows_per_file))


def write_folder(final: str | os.PathLike[str], fill) -> list[Path]:
    """Recover, assemble a folder with ``fill(staged_folder)``, add ``_SUCCESS``, swap it in as ``final``."""
    recover(final)
    staged = staging_path(final)
    staged.mkdir(parents=True)
    try:
        fill(staged)
        (staged / "_SUCCESS").touch()
        swap_in(staged, final)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return sorted(Path(final).glob("part-*.parquet"))


def _write_parts(table: pa.Table, folder: Path, rows_per_file: int) -> None:
    n_files = max(1, -(-table.num_rows // rows_per_file))
    for i in range(n_files):
        pq.write_table(table.slice(i * rows_per_file, rows_per_file), folder / PART_TEMPLATE.format(i), compression="zstd")


def write_partition_stream(
    tables: Iterable[pa.Table],
    final: str | os.PathLike[str],
    *,
    schema: pa.Schema,
    rows_per_file: int = 1_000_000,
    on_part: Callable[[Path, int], None] | None = None,
) -> list[Path]:
    """``write_partition`` for a table that arrives in pieces: each piece is written when it comes.

    Part files hold ``rows_per_file`` rows each (the last fewer; one empty file when no rows come), as
    ``write_partition`` cuts one table, so the same rows in the same order give files of the same rows
    (row groups follow the pieces). Only the piece at hand is in memory. ``on_part(path, rows)`` is called when a part file is closed. A
    failure or a kill before the last piece leaves the previous partition in place (``write_folder``).
    """
    if rows_per_file < 1:
        raise ValueError(f"rows_per_file must be at least 1, got {rows_per_file}")
    return write_folder(final, lambda staged: _stream_parts(tables, staged, schema, rows_per_file, on_part))


def _stream_parts(tables, folder: Path, schema: pa.Schema, rows_per_file: int, on_part) -> None:
    writer, path, in_part, parts = None, None, 0, 0

    def close() -> None:
        writer.close()
        if on_part is not None:
            on_part(path, in_part)

    for table in tables:
        if not table.schema.equals(schema):
            raise ValueError(f"a piece of partition {folder.name} has schema {table.schema}, not the partition's {schema}")
        offset = 0
        while offset < table.num_rows:
            if writer is None:
                path = folder / PART_TEMPLATE.format(parts)
                writer, in_part, parts = pq.ParquetWriter(path, schema, compression="zstd"), 0, parts + 1
            piece = table.slice(offset, rows_per_file - in_part)
            writer.write_table(piece)
            offset, in_part = offset + piece.num_rows, in_part + piece.num_rows
            if in_part == rows_per_file:
                close()
                writer = None
    if writer is not None:
        close()
    elif parts == 0:  # no rows at all: one empty file carries the schema, as write_partition writes
        pq.write_table(schema.empty_table(), folder / PART_TEMPLATE.format(0), compression="zstd")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def read_partition(folder: str | os.PathLike[str], columns: list[str] | None = None) -> pa.Table:
    """Read every Parquet file of one partition folder; a clear error if it is missing.

    Files that disagree on a column's type raise MixedSchemaError naming the column, the types and
    the files (pyarrow would only dump both schemas).
    """
    folder = Path(folder)
    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"partition {folder} has no Parquet files; did the upstream task run for this date?")
    tables = [pq.read_table(f, columns=columns) for f in files]
    _check_same_types(folder, files, tables)
    return pa.concat_tables(tables)


def _check_same_types(folder: Path, files: list[Path], tables: list[pa.Table]) -> None:
    seen: dict[str, dict[str, list[str]]] = {}
    for file, table in zip(files, tables, strict=True):
        for column in table.schema:
            seen.setdefault(column.name, {}).setdefault(str(column.type), []).append(file.name)
    for by_type in seen.values():
        present = {name for names in by_type.values() for name in names}
        lacking = [f.name for f in files if f.name not in present]
        if lacking:
            by_type["no such column"] = lacking
    mixed = {name: by_type for name, by_type in seen.items() if len(by_type) > 1}
    if mixed:
        lines = [
            f"column {name}: " + "; ".join(f"{typ} in {', '.join(names)}" for typ, names in by_type.items())
            for name, by_type in mixed.items()
        ]
        raise MixedSchemaError(
            f"partition {folder} mixes column types across its files: " + " | ".join(lines)
            + ". Rewrite the partition's files with one type per column (the data contract's) and rerun the date."
        )


DATED = re.compile(r"^[a-z_]+=(\d{4}-\d{2}-\d{2})$")
"""A dated folder: a partition ``event_date=D`` / ``run_date=D``, a report or an export date."""


def dated_folders(parent: str | os.PathLike[str]) -> dict[str, Path]:
    """Date -> folder of the dated folders directly below ``parent`` (hidden names skipped)."""
    parent = Path(parent)
    if not parent.is_dir():
        return {}
    found = {}
    for child in parent.iterdir():
        match = DATED.match(child.name)
        if match and child.is_dir():
            found[match.group(1)] = child
    return found


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A JSON file written by write_json_atomic as a dict; {} when there is none (not written yet)."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else {}


def write_json_atomic(path: str | os.PathLike[str], payload: Any) -> Path:
    """Write ``payload`` as JSON (sorted keys, indented) so readers see the old or the new file, never half.

    The one JSON writer of the package: run summaries, evaluation.json, registry metadata.
    """
    return write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` through a hidden temporary file and a rename: readers see the old file or the new."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / hidden_sibling(path.name, "tmp")
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path
