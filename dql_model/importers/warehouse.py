"""Where `dqlrec import` puts what it read: day partitions, the items table and the quarantine.

Owns the spill strategy and the per-date swap. Accepted rows of each chunk are sorted by day
(a stable sort: the input order is kept inside a day) and appended as small Arrow files to a
scratch folder per day (``Layout.import_spill``), so no more than one chunk is ever held in
memory. When every file has been read, each day's chunk files are rewritten, in the order they
were spilled, into ``part-NNNNN.parquet`` files (``ROWS_PER_FILE`` rows each) of a hidden staging
folder beside the day's partition, which is then swapped in (``storage.swap_in``): a reader sees
the old partition or the new one, never half of one, and days absent from the input are never
touched. The same input therefore gives byte-identical files on a rerun.

The items table is small (one row per item) and is merged, not replaced: items of this import
take their new values, a value the import does not know (null) keeps the one already in the
warehouse, ``available`` defaults to true (an item people interact with is on sale unless a
catalogue says otherwise), and items that only earlier imports named stay as they were. It is
swapped in before the event partitions, so no event ever names an item the catalogue lacks.

Refused rows go to ``Layout.import_quarantine(file name)``, one partition per input file,
replaced on each import of that file (empty when nothing was refused).

One import runs at a time: it holds ``Layout.import_lock`` (``dql_model.warehouse.locks``: a second
import waits, then fails naming the holder; the lock of one that died is taken over). So whatever
lies in the swap areas of the events and quarantine tables, or in the import scratch folder, when an
import starts was left by one that died (SIGKILL, a lost machine): it is removed first, by
``storage.recover_table`` (the recovery every writer of a partition runs), and listed in the summary
(``recovered``). A killed import leaves the days it had swapped in (whole, each one) and the
previous version of the others; rerunning it writes them all.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dql_model.config import WarehouseConfig
from dql_model.contract import schema
from dql_model.contract.layout import Layout
from dql_model.importers.core import US_PER_DAY, Chunk, Converter, FileCounts, Progress, UnusableInput
from dql_model.warehouse import locks, storage

log = logging.getLogger(__name__)

ROWS_PER_FILE = 1_000_000
"""Rows per Parquet file of a day partition (as storage.write_partition)."""
_EPOCH = dt.date(1970, 1, 1)
_SPILL_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")


def quarantine_name(path: Path) -> str:
    """The quarantine partition of an input file: its name, with characters outside [A-Za-z0-9._-] as '_'."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", path.name)


class ImportRun:
    """One `dqlrec import`: reads files through converters, spills, then swaps everything in at ``finish``.

    Use it as a context manager: it takes the import lock and sweeps what a dead import left;
    the scratch folder and any staged partition are removed however the import ends.
    """

    def __init__(
        self,
        layout: Layout,
        *,
        format: str,
        progress: Progress | None = None,
        lock_wait_s: float | None = None,
        lock_stale_s: float | None = None,
    ) -> None:
        defaults = WarehouseConfig()  # the same wait and staleness as the run-date locks
        self.layout = layout
        self.lock_wait_s = defaults.lock_wait_s if lock_wait_s is None else lock_wait_s
        self.lock_stale_s = defaults.lock_stale_s if lock_stale_s is None else lock_stale_s
        self.recovered: list[str] = []
        self._exit = contextlib.ExitStack()
        self.format = format
        self.progress = progress or Progress()
        self.spill = Path(layout.import_spill(uuid.uuid4().hex[:12]))
        self.files: list[FileCounts] = []
        self.dates: Counter[int] = Counter()
        self.items_written = 0
        self.items_from_input = 0
        self.warnings: list[str] = []
        self._item_ids: list[pa.Array] = []
        self._quarantine_names: dict[str, str] = {}
        self._sequence = 0
        self._started = time.perf_counter()

    def __enter__(self) -> ImportRun:
        with contextlib.ExitStack() as stack:
            stack.enter_context(
                locks.run_date_lock(
                    self.layout.import_lock(),
                    run_date="every date of the raw tables (an import)",
                    step=f"import --format {self.format}",
                    wait_s=self.lock_wait_s,
                    stale_s=self.lock_stale_s,
                )
            )
            self.recovered = self._sweep()
            self._exit = stack.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._exit:  # the lock goes last
            shutil.rmtree(self.spill, ignore_errors=True)
            try:
                self.spill.parent.rmdir()  # staging/_import
            except OSError:
                pass

    def _sweep(self) -> list[str]:
        """Remove what imports that died left (no other import runs: we hold the lock); what was done."""
        done = []
        for table in (schema.EVENTS, schema.IMPORT_QUARANTINE):
            done += storage.recover_table(self.layout.table(table))
        scratch = self.spill.parent
        for leftover in sorted(scratch.iterdir()) if scratch.is_dir() else ():
            shutil.rmtree(leftover)
            done.append(f"removed {leftover} (the scratch folder of an import that died)")
            log.warning("import: removed %s, the scratch folder of an import that died", leftover)
        return done

    # --- reading -----------------------------------------------------------------------------

    def read(
        self,
        source: Path,
        role: str,
        chunks: Iterable[Chunk],
        convert: Converter,
        sink: Callable[[pa.Table], None] | None = None,
    ) -> FileCounts:
        """Run every chunk of ``source`` through ``convert``; accepted events are spilled by day,
        accepted item rows handed to ``sink``, refused rows spilled for the file's quarantine."""
        name = quarantine_name(source)
        if name in self._quarantine_names:
            raise UnusableInput(
                f"{source} and {self._quarantine_names[name]} have the same file name; their quarantine "
                "partitions would collide: import them separately"
            )
        self._quarantine_names[name] = str(source)
        counts = FileCounts(str(source), role)
        self.progress.start(counts)
        first = True
        for chunk in chunks:
            accepted, verdicts = convert(chunk)
            rules = verdicts.rule_counts()
            refused = sum(rules.values())
            if first and chunk.rows and refused == chunk.rows:
                raise UnusableInput(_all_refused(source, chunk, verdicts, rules))
            first = first and not chunk.rows
            counts.rows += chunk.rows
            counts.accepted += accepted.num_rows
            counts.ignored += verdicts.ignored
            counts.quarantined += refused
            counts.rules.update(rules)
            if counts.rows != counts.accepted + counts.ignored + counts.quarantined:  # a converter bug
                raise AssertionError(f"{source}: rows {counts.rows} != accepted + ignored + quarantined")
            quarantine = verdicts.quarantine()
            if quarantine.num_rows:
                self._spill_table(f"quarantine/{name}", quarantine)
            if role == schema.EVENTS:
                self._add_events(accepted)
            elif sink is not None:
                sink(accepted)
            self.progress.update(counts)
        self.progress.update(counts, done=True)
        self.files.append(counts)
        return counts

    def _add_events(self, events: pa.Table) -> None:
        if not events.num_rows:
            return
        days = pc.divide(pc.cast(events.column(schema.EVENT_TIME), pa.int64()), US_PER_DAY)
        order = pc.sort_indices(days)  # stable: the input order is kept within a day
        days = np.asarray(days.take(order))
        events = events.take(order)
        starts = np.concatenate([[0], np.flatnonzero(np.diff(days)) + 1])
        ends = np.concatenate([starts[1:], [len(days)]])
        for start, end in zip(starts, ends, strict=True):
            day = int(days[start])
            self._spill_table(f"events/{day:06d}", events.slice(start, end - start))
            self.dates[day] += int(end - start)
        self._item_ids.append(pc.unique(events.column(schema.ITEM_ID)))

    def _spill_table(self, key: str, table: pa.Table) -> None:
        folder = self.spill / key
        folder.mkdir(parents=True, exist_ok=True)
        self._sequence += 1
        with pa.ipc.new_file(
            folder / f"{self._sequence:09d}.arrow", table.schema, options=_SPILL_OPTIONS
        ) as out:
            out.write_table(table)

    def _spilled(self, key: str) -> Iterable[pa.Table]:
        folder = self.spill / key
        for path in sorted(folder.glob("*.arrow")) if folder.is_dir() else ():
            with pa.memory_map(str(path)) as source:
                yield pa.ipc.open_file(source).read_all()

    # --- writing -----------------------------------------------------------------------------

    def finish(self, items: pa.Table | None) -> dict:
        """Write the items table, then swap in every day partition and quarantine partition read."""
        if not self.dates:
            raise UnusableInput(
                f"no row of {[f.file for f in self.files if f.role == schema.EVENTS]} was accepted "
                f"(quarantined by rule: {dict(self._rules())}); nothing was written"
            )
        staged: list[tuple[Path, Path]] = []
        try:
            for day in sorted(self.dates):
                final = Path(self.layout.partition(schema.EVENTS, _iso(day)))
                staged.append((self._stage(self._spilled(f"events/{day:06d}"), final, schema.EVENTS), final))
            for name in sorted(self._quarantine_names):
                final = Path(self.layout.import_quarantine(name))
                staged.append(
                    (self._stage(self._spilled(f"quarantine/{name}"), final, schema.IMPORT_QUARANTINE), final)
                )
            self._write_items(items)
            for i, (folder, final) in enumerate(staged):
                storage.swap_in(folder, final)
                staged[i] = (final, final)
        finally:
            for folder, final in staged:
                if folder != final:
                    shutil.rmtree(folder, ignore_errors=True)
        return self.summary()

    def _stage(self, tables: Iterable[pa.Table], final: Path, table_name: str) -> Path:
        """Write ``tables`` into a hidden staging folder beside ``final`` as part files; returns it."""
        contract = schema.arrow_schema(table_name)
        folder = storage.staging_path(final)
        folder.mkdir(parents=True)
        pending: list[pa.Table] = []
        pending_rows, n_files = 0, 0

        def flush(rows: int) -> None:
            nonlocal pending, pending_rows, n_files
            table = pa.concat_tables(pending) if pending else contract.empty_table()
            pq.write_table(
                table.slice(0, rows), folder / storage.PART_TEMPLATE.format(n_files), compression="zstd"
            )
            n_files += 1
            rest = table.slice(rows)
            pending, pending_rows = ([rest] if rest.num_rows else []), rest.num_rows

        for table in tables:
            pending.append(table.cast(contract))
            pending_rows += table.num_rows
            while pending_rows >= ROWS_PER_FILE:
                flush(ROWS_PER_FILE)
        if pending_rows or n_files == 0:
            flush(pending_rows)
        (folder / "_SUCCESS").touch()
        return folder

    def _write_items(self, items: pa.Table | None) -> None:
        contract = schema.arrow_schema(schema.ITEMS)
        seen = pc.unique(pa.chunked_array(self._item_ids, pa.string()).combine_chunks())
        new = items.cast(contract).to_pandas() if items is not None else contract.empty_table().to_pandas()
        new = new.drop_duplicates(schema.ITEM_ID, keep="last")
        # A hash lookup (pc.is_in), not np.setdiff1d: on string arrays numpy loops in Python, O(n * m).
        named = pc.is_in(seen, value_set=pa.array(new[schema.ITEM_ID], pa.string()))
        only = pc.filter(seen, pc.invert(named))
        only_in_events = pd.DataFrame({schema.ITEM_ID: only.take(pc.sort_indices(only)).to_pandas()})
        new = pd.concat([new, only_in_events], ignore_index=True) if len(only_in_events) else new
        self.items_from_input = len(new)
        folder = Path(self.layout.table(schema.ITEMS))
        try:
            old = storage.read_partition(folder).cast(contract).to_pandas()
        except FileNotFoundError:
            old = contract.empty_table().to_pandas()
        merged = new.merge(old, on=schema.ITEM_ID, how="outer", suffixes=("", "_old"))
        for column in (schema.CATEGORY_ID, schema.PRICE, schema.AVAILABLE):
            merged[column] = (
                merged[column].astype(object).where(merged[column].notna(), merged[f"{column}_old"])
            )
        merged[schema.AVAILABLE] = (
            merged[schema.AVAILABLE].where(merged[schema.AVAILABLE].notna(), True).astype(bool)
        )
        merged = merged[contract.names].sort_values(schema.ITEM_ID, kind="stable")
        table = pa.Table.from_pandas(merged, schema=contract, preserve_index=False)
        storage.write_partition(table, folder)
        self.items_written = table.num_rows

    # --- accounting --------------------------------------------------------------------------

    def _rules(self) -> Counter:
        total = Counter()
        for counts in self.files:
            total.update(counts.rules)
        return total

    def summary(self) -> dict:
        """Everything `dqlrec import --json` prints: per file, per rule, per date, items."""
        events = [f for f in self.files if f.role == schema.EVENTS]
        return {
            "format": self.format,
            "warehouse": self.layout.root,
            "files": [f.to_dict() for f in self.files],
            "input": sum(f.rows for f in events),
            "accepted": sum(f.accepted for f in events),
            "quarantined": sum(f.quarantined for f in events),
            "rules": dict(sorted(self._rules().items())),
            "dates": {_iso(day): n for day, n in sorted(self.dates.items())},
            "first_date": _iso(min(self.dates)) if self.dates else None,
            "last_date": _iso(max(self.dates)) if self.dates else None,
            "items": {"from_input": self.items_from_input, "written": self.items_written},
            "quarantine": {
                name: self.layout.import_quarantine(name) for name in sorted(self._quarantine_names)
            },
            "warnings": self.warnings,
            "recovered": self.recovered,
            "seconds": round(time.perf_counter() - self._started, 3),
        }


def _iso(day: int) -> str:
    return (_EPOCH + dt.timedelta(days=day)).isoformat()


def _all_refused(source: Path, chunk: Chunk, verdicts, rules: Counter) -> str:
    sample = verdicts.quarantine().slice(0, 1).to_pylist()
    example = ""
    if sample:
        row = sample[0]
        example = f"; e.g. line {row['line']}: rule {row['rule']} on column {row['column']!r}, value {row['raw_value']!r}"
    return (
        f"{source}: every one of the first {chunk.rows:,} rows breaks a rule ({dict(rules)}){example}. "
        "Nothing was written: check --format, the column mapping and the time unit or format"
    )
