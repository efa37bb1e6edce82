"""dql_model.warehouse.storage: the partition swap readers never see half of, its recovery, and clear schema errors."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dql_model.contract.layout import swap_area
from dql_model.errors import InputError
from dql_model.warehouse import storage


def table(values: list[int]) -> pa.Table:
    return pa.table({"v": pa.array(values, pa.int64())})


def read(final: Path) -> list[int]:
    return storage.read_partition(final).column("v").to_pylist()


def test_staging_lies_outside_the_table_folder_on_the_same_filesystem(tmp_path):
    final = tmp_path / "output" / "recommendations" / "run_date=2026-11-27"
    staged = storage.staging_path(final)
    assert staged.parent == tmp_path / "output" / "_swap" / "recommendations"
    assert not staged.is_relative_to(final.parent)  # no glob of the table reaches it
    assert swap_area(str(final.parent)) == str(staged.parent)


def test_a_rewrite_exchanges_the_folder_and_leaves_nothing_behind(tmp_path):
    final = tmp_path / "t" / "run_date=2026-11-27"
    storage.write_partition(table([1, 2]), final)
    inode = os.stat(final).st_ino
    storage.write_partition(table([3]), final)
    assert read(final) == [3]
    assert os.stat(final).st_ino != inode  # the folder itself was exchanged, not its files rewritten
    assert sorted(p.name for p in final.parent.iterdir()) == ["run_date=2026-11-27"]
    assert list(Path(swap_area(str(final.parent))).iterdir()) == []


def test_recovery_puts_back_a_partition_retired_by_a_swap_that_died_between_two_renames(tmp_path):
    final = tmp_path / "t" / "run_date=2026-11-27"
    storage.write_partition(table([1]), final)
    area = Path(swap_area(str(final.parent)))
    os.rename(final, area / f"{final.name}.retired-0badc0de")  # the fallback swap's first rename
    (area / f"{final.name}.staging-0badc0de").mkdir()  # and its staging folder
    (final.parent / f".{final.name}.staging-1").mkdir()  # what older versions left beside it

    done = storage.recover(final)

    assert read(final) == [1]
    assert len(done) == 3 and any("put back" in line for line in done)
    assert list(area.iterdir()) == [] and sorted(p.name for p in final.parent.iterdir()) == [final.name]


def test_recovery_removes_what_an_exchange_moved_out_and_keeps_the_new_partition(tmp_path):
    final = tmp_path / "t" / "run_date=2026-11-27"
    storage.write_partition(table([1]), final)
    old = storage.staging_path(final)
    old.mkdir()
    (old / "part-00000.parquet").write_bytes(b"the previous partition, moved out")
    storage.recover(final)
    assert read(final) == [1] and not old.exists()


def test_without_an_exchange_the_swap_falls_back_to_two_renames(tmp_path, monkeypatch, caplog):
    final = tmp_path / "t" / "run_date=2026-11-27"
    storage.write_partition(table([1]), final)
    monkeypatch.setattr(storage, "exchange", lambda a, b: False)
    storage.write_partition(table([2]), final)
    assert read(final) == [2]
    assert "cannot exchange folders" in caplog.text
    assert list(Path(swap_area(str(final.parent))).iterdir()) == []


def test_files_mixing_column_types_name_the_column_the_types_and_the_files(tmp_path):
    folder = tmp_path / "event_date=2026-11-27"
    folder.mkdir()
    pq.write_table(pa.table({"user_id": ["u1"], "item_id": ["i1"]}), folder / "part-00000.parquet")
    pq.write_table(pa.table({"user_id": pa.array([7], pa.int64()), "item_id": ["i2"]}), folder / "part-00001.parquet")
    with pytest.raises(InputError) as caught:
        storage.read_partition(folder)
    message = str(caught.value)
    assert f"partition {folder} mixes column types" in message
    assert "column user_id: string in part-00000.parquet; int64 in part-00001.parquet" in message
    assert "item_id" not in message.split("column user_id")[0]  # only the mixed column is named
    assert "schema at index" not in message.lower()


# --- a partition written piece by piece -----------------------------------------------------------


def parts(final: Path) -> list[list[int]]:
    return [pq.read_table(f).column("v").to_pylist() for f in sorted(final.glob("part-*.parquet"))]


def test_a_streamed_partition_cuts_its_files_as_write_partition_cuts_one_table(tmp_path):
    pieces = [table([1, 2, 3]), table([]), table([4]), table([5, 6, 7, 8, 9])]
    closed = []
    streamed, whole = tmp_path / "streamed" / "d=1", tmp_path / "whole" / "d=1"
    storage.write_partition_stream(
        iter(pieces), streamed, schema=pieces[0].schema, rows_per_file=4, on_part=lambda f, n: closed.append((f.name, n))
    )
    storage.write_partition(pa.concat_tables(pieces), whole, rows_per_file=4)
    assert parts(streamed) == parts(whole) == [[1, 2, 3, 4], [5, 6, 7, 8], [9]]
    assert closed == [("part-00000.parquet", 4), ("part-00001.parquet", 4), ("part-00002.parquet", 1)]
    assert (streamed / "_SUCCESS").exists()

    storage.write_partition_stream(iter([]), streamed, schema=pieces[0].schema, rows_per_file=4)  # no rows tonight
    assert parts(streamed) == [[]] and storage.read_partition(streamed).schema == pieces[0].schema


def test_a_stream_that_fails_midway_leaves_the_previous_partition_whole(tmp_path):
    final = tmp_path / "t" / "run_date=2026-11-27"
    storage.write_partition(table([7, 8]), final)

    def pieces():
        yield table([1, 2, 3])
        raise RuntimeError("the scorer died")

    with pytest.raises(RuntimeError, match="the scorer died"):
        storage.write_partition_stream(pieces(), final, schema=table([]).schema, rows_per_file=2)
    assert read(final) == [7, 8]
    assert not Path(swap_area(str(final.parent))).exists() or list(Path(swap_area(str(final.parent))).iterdir()) == []
    with pytest.raises(ValueError, match="not the partition's"):
        storage.write_partition_stream(iter([pa.table({"w": [1]})]), final, schema=table([]).schema)
    assert read(final) == [7, 8]
