"""Reading native files for `dqlrec import`: chunks with line numbers, row rules, counts, progress.

Owns how an input file becomes checked chunks; where they go is ``importers.warehouse``'s concern.

- CSV files are streamed with ``pyarrow.csv.open_csv`` in blocks of ``block_size`` bytes, every
  column read as a string (so a bad value can be quarantined as it was written). Reading is
  single-threaded on purpose: only then does pyarrow report the line number of a row with the
  wrong number of fields, which keeps every row's line number exact. Blank lines are kept as
  rows (of empty strings), so they are counted and quarantined rather than skipped unseen.
- Parquet files are streamed in record batches; their "line" is the 1-based row number.
- Every check is vectorised; the first rule a row fails is the one it is quarantined under,
  with the offending column, the raw value and the whole record.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import io
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from dql_model.contract import schema
from dql_model.errors import EmptyInput, InputError, MissingInput

DEFAULT_BLOCK_SIZE = 32 << 20
"""Bytes of CSV parsed per chunk (about 700k RetailRocket rows)."""
DEFAULT_PROGRESS_EVERY = 1_000_000
"""Rows between two progress lines of one file."""
US_PER_UNIT = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": None}
"""Microseconds per epoch unit (nanoseconds are divided, not multiplied)."""
FIRST_TIME = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
END_TIME = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
"""Accepted event times: [FIRST_TIME, END_TIME). A timestamp read in the wrong unit lands outside."""
_FIRST_US = 0
_END_US = int((END_TIME - FIRST_TIME).total_seconds()) * 1_000_000
US_PER_DAY = 86_400_000_000


class UnusableInput(InputError, ValueError):
    """An input file that cannot be imported at all: wrong columns, unknown layout, every row refused."""


@dataclass
class Chunk:
    """A block of one input file: raw columns, the line of each row, and rows with the wrong field count."""

    source: Path
    table: pa.Table
    """The columns as read (strings for CSV, native types for Parquet)."""
    lines: np.ndarray
    """Line number of each row of ``table`` (CSV, header = line 1) or its 1-based row number (Parquet)."""
    malformed: list[tuple[int, str]] = field(default_factory=list)
    """(line, text) of rows that had the wrong number of fields (not in ``table``)."""
    delimiter: str = ","

    @property
    def rows(self) -> int:
        return self.table.num_rows + len(self.malformed)


# --- reading -----------------------------------------------------------------------------------


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is a non-empty file; a clear error naming ``what`` otherwise."""
    if not path.is_file():
        raise MissingInput(f"{what} {path} does not exist")
    if path.stat().st_size == 0:
        raise EmptyInput(f"{what} {path} is empty (0 bytes)")
    return path


def csv_header(path: Path, *, delimiter: str = ",", encoding: str = "utf8") -> list[str]:
    """The column names on the first line of a CSV file (plain or compressed)."""
    require_file(path, "input file")
    with pa.input_stream(str(path), compression="detect") as stream:
        head = stream.read(1 << 20).decode(encoding, errors="replace")
    first = head.splitlines()[0] if head else ""
    names = next(csv.reader(io.StringIO(first), delimiter=delimiter), [])
    names = [n.strip().lstrip("\ufeff") for n in names]
    if not any(names):
        raise EmptyInput(f"{path} has no header line")
    return names


def require_columns(path: Path, present: Sequence[str], needed: dict[str, str]) -> None:
    """Each needed column (name -> what it is for) is in ``present``; else name the file and column."""
    missing = {name: why for name, why in needed.items() if name not in present}
    if missing:
        described = ", ".join(f"{name!r} ({why})" for name, why in missing.items())
        raise UnusableInput(
            f"{path}: missing required column(s) {described}; the file has columns {list(present)}"
        )


def read_csv_chunks(
    path: Path,
    *,
    column_names: Sequence[str] | None = None,
    delimiter: str = ",",
    encoding: str = "utf8",
    quote_char: str | bool = '"',
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> Iterator[Chunk]:
    """Stream a CSV file in chunks of string columns with exact line numbers.

    ``column_names`` names the fields of a file without a header; when None, the first line is
    the header. Raises ``EmptyInput`` when the file has no data row.
    """
    require_file(path, "input file")
    header_lines = 0 if column_names is not None else 1
    names = (
        list(column_names)
        if column_names is not None
        else csv_header(path, delimiter=delimiter, encoding=encoding)
    )
    malformed: list[tuple[int, str]] = []

    def on_invalid(row) -> str:
        malformed.append((row.number if row.number is not None else -1, row.text))
        return "skip"

    reader = pacsv.open_csv(
        str(path),
        read_options=pacsv.ReadOptions(
            block_size=block_size,
            use_threads=False,
            column_names=names,
            skip_rows=header_lines,
            encoding=encoding,
        ),
        parse_options=pacsv.ParseOptions(
            delimiter=delimiter,
            quote_char=quote_char,
            invalid_row_handler=on_invalid,
            ignore_empty_lines=False,
        ),
        convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names}),
    )
    first_line = header_lines + 1
    seen, reported, rows = 0, 0, 0
    bad_lines = np.array([], np.int64)
    try:
        for batch in reader:
            # Line of valid row j: first_line + j + (malformed lines before it). A malformed line l
            # with m malformed lines before it sits after valid row number l - first_line - m.
            new_lines = np.array([line for line, _ in malformed[len(bad_lines) :]], np.int64)
            bad_lines = np.sort(np.concatenate([bad_lines, new_lines]))
            after = bad_lines - first_line - np.arange(len(bad_lines))
            index = np.arange(seen, seen + batch.num_rows, dtype=np.int64)
            lines = index + first_line + np.searchsorted(after, index, side="right")
            new_bad = malformed[reported:]
            reported = len(malformed)
            seen += batch.num_rows
            rows += batch.num_rows + len(new_bad)
            yield Chunk(path, pa.Table.from_batches([batch]), lines, list(new_bad), delimiter)
    except pa.ArrowInvalid as error:
        raise UnusableInput(
            f"{path}: cannot be read as CSV after line {first_line + seen}: {error}"
        ) from None
    if len(malformed) > reported:
        empty = pa.table({n: pa.array([], pa.string()) for n in names})
        rows += len(malformed) - reported
        yield Chunk(path, empty, np.array([], np.int64), list(malformed[reported:]), delimiter)
    if rows == 0:
        raise EmptyInput(f"{path} has no data rows")


def read_parquet_chunks(
    path: Path, *, columns: Sequence[str], batch_size: int = 1_000_000
) -> Iterator[Chunk]:
    """Stream the given columns of a Parquet file in record batches; lines are 1-based row numbers."""
    require_file(path, "input file")
    try:
        file = pq.ParquetFile(path)
    except pa.ArrowInvalid as error:
        raise UnusableInput(f"{path}: not a readable Parquet file: {error}") from None
    if file.metadata.num_rows == 0:
        raise EmptyInput(f"{path} has no rows")
    seen = 0
    for batch in file.iter_batches(batch_size=batch_size, columns=list(columns)):
        lines = np.arange(seen + 1, seen + batch.num_rows + 1, dtype=np.int64)
        seen += batch.num_rows
        yield Chunk(path, pa.Table.from_batches([batch]), lines)


# --- parsing -----------------------------------------------------------------------------------


def as_strings(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """A column as trimmed strings, empty where it is null."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
        column = pc.cast(column, pa.string())
    return pc.fill_null(pc.utf8_trim_whitespace(column), "")


def blank(strings: pa.Array) -> np.ndarray:
    """True where a trimmed string column is empty."""
    return np.asarray(pc.equal(pc.utf8_length(strings), 0))


def _micros_in_range(micros: pa.Array) -> pa.Array:
    """``micros`` with values outside [FIRST_TIME, END_TIME) set to null."""
    inside = pc.and_(pc.greater_equal(micros, _FIRST_US), pc.less(micros, _END_US))
    return pc.if_else(inside, micros, pa.scalar(None, pa.int64()))


def _parse_ints(strings: pa.Array) -> pa.Array:
    """Integers of a trimmed string column, null where a value is not an integer."""
    try:
        return pc.cast(strings, pa.int64())
    except pa.ArrowInvalid:
        valid = pc.match_substring_regex(strings, r"^-?[0-9]{1,18}$")
        return pc.if_else(
            valid, pc.cast(pc.if_else(valid, strings, "0"), pa.int64()), pa.scalar(None, pa.int64())
        )


def parse_floats(strings: pa.Array) -> pa.Array:
    """Floats of a trimmed string column, null where a value is empty or not a finite number."""
    try:
        values = pc.cast(
            pc.if_else(pc.equal(strings, ""), pa.scalar(None, pa.string()), strings), pa.float64()
        )
    except pa.ArrowInvalid:
        valid = pc.match_substring_regex(strings, r"^[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$")
        values = pc.if_else(
            valid, pc.cast(pc.if_else(valid, strings, "0"), pa.float64()), pa.scalar(None, pa.float64())
        )
    return pc.if_else(pc.is_finite(values), values, pa.scalar(None, pa.float64()))


def epoch_micros(strings: pa.Array, unit: str) -> pa.Array:
    """Integer epoch timestamps in ``unit`` (s, ms, us, ns) as UTC microseconds; null if bad or out of range."""
    if unit not in US_PER_UNIT:
        raise UnusableInput(f"unknown time unit {unit!r}; use one of {sorted(US_PER_UNIT)}")
    values = _parse_ints(strings)
    factor = US_PER_UNIT[unit]
    if factor is None:
        micros = pc.divide(values, 1_000)  # ns -> us, truncating; the range check below keeps values >= 0
    else:
        limit = _END_US // factor + 1  # multiply only what cannot overflow
        values = pc.if_else(pc.less(pc.abs(values), limit), values, pa.scalar(None, pa.int64()))
        micros = pc.multiply(values, factor)
    return _micros_in_range(micros)


_ZONE = r"(Z|[+-][0-9]{2}(:?[0-9]{2})?)"
_TIME_OF_DAY = r"[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,9})?)?"
_ISO = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(" + _TIME_OF_DAY + ")?" + _ZONE + "?$"
_ZONED = _TIME_OF_DAY + _ZONE + "$"
"""A zone after a time of day: the "-29" of a date alone ("2016-02-29") is its day, not a zone."""


def iso_micros(strings: pa.Array) -> pa.Array:
    """ISO 8601 timestamps (``2014-04-07T10:51:09.277Z``; no zone means UTC) as UTC microseconds."""
    valid = pc.match_substring_regex(strings, _ISO)
    zoned = pc.match_substring_regex(strings, _ZONED)
    try:
        micros = _iso_cast(strings, valid, zoned)
    except pa.ArrowInvalid:  # a value of the right shape that is no calendar time (month 13, 25 h)
        micros = _iso_cast_each(strings, pc.and_(valid, _calendar_ok(strings, valid)), zoned)
    return _micros_in_range(micros)


def _iso_cast(strings: pa.Array, valid: pa.Array, zoned: pa.Array) -> pa.Array:
    """UTC microseconds of the ``valid`` strings (null elsewhere); raises if one of them is no time."""
    with_zone = pc.cast(
        pc.if_else(pc.and_(valid, zoned), strings, "1970-01-01T00:00:00Z"), pa.timestamp("ns", "UTC")
    )
    naive_text = pc.if_else(pc.and_(valid, pc.invert(zoned)), strings, "1970-01-01 00:00:00")
    # "YYYY-MM-DD" alone: Arrow wants a time of day for a timestamp.
    naive_text = pc.if_else(
        pc.equal(pc.utf8_length(naive_text), 10),
        pc.binary_join_element_wise(naive_text, " 00:00:00", ""),
        naive_text,
    )
    naive = pc.cast(pc.cast(naive_text, pa.timestamp("ns")), pa.timestamp("ns", "UTC"))
    parsed = pc.if_else(zoned, with_zone, naive)
    micros = pc.cast(pc.cast(parsed, pa.timestamp("us", "UTC"), safe=False), pa.int64())
    return pc.if_else(valid, micros, pa.scalar(None, pa.int64()))


def _iso_cast_each(strings: pa.Array, valid: pa.Array, zoned: pa.Array) -> pa.Array:
    """``_iso_cast`` with a value Arrow still refuses set to null: halves are cast until the bad one is alone,
    so a few bad values cost a few casts of shrinking slices, never a Python call per row."""
    try:
        return _iso_cast(strings, valid, zoned)
    except pa.ArrowInvalid:
        if len(strings) == 1:
            return pa.nulls(1, pa.int64())
        half = len(strings) // 2
        return pa.concat_arrays(
            [
                _iso_cast_each(strings.slice(0, half), valid.slice(0, half), zoned.slice(0, half)),
                _iso_cast_each(strings.slice(half), valid.slice(half), zoned.slice(half)),
            ]
        )


_CALENDAR = (
    r"^(?P<year>[0-9]{4})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})"
    r"(?:[T ](?P<hour>[0-9]{2}):(?P<minute>[0-9]{2})(?::(?P<second>[0-9]{2}))?)?"
)


def _calendar_ok(strings: pa.Array, valid: pa.Array) -> pa.Array:
    """False where an ISO-shaped string names no calendar time (month 13, February 30, hour 24, ...)."""
    text = pc.if_else(valid, strings, "2000-01-01")
    fields = pc.extract_regex(text, _CALENDAR)

    def number(name: str) -> np.ndarray:
        digits = pc.struct_field(fields, name)
        return np.asarray(pc.cast(pc.if_else(pc.equal(digits, ""), "0", digits), pa.int64()))

    year, month, day = number("year"), number("month"), number("day")
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    month_ok = (month >= 1) & (month <= 12)
    days = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])[np.where(month_ok, month, 0)]
    days = days + (leap & (month == 2))
    ok = month_ok & (day >= 1) & (day <= days)
    ok &= (number("hour") < 24) & (number("minute") < 60) & (number("second") < 60)
    return pa.array(ok)


def format_micros(strings: pa.Array, time_format: str) -> pa.Array:
    """Timestamps written as ``time_format`` (strftime codes; UTC unless it has %z) as UTC microseconds."""
    parsed = pc.strptime(strings, format=time_format, unit="us", error_is_null=True)
    return _micros_in_range(pc.cast(parsed, pa.int64()))


def timestamp_micros(column: pa.Array) -> pa.Array:
    """A native timestamp column (Parquet) as UTC microseconds; a naive one is taken as UTC."""
    as_us = pc.cast(column, pa.timestamp("us", column.type.tz), safe=False)
    return _micros_in_range(pc.cast(as_us, pa.int64()))


def any_of(masks: Sequence[pa.Array]) -> pa.Array:
    """Element-wise OR of boolean arrays."""
    return functools.reduce(pc.or_, masks)


def map_values(strings: pa.Array, mapping: dict[str, str]) -> pa.Array:
    """Each value replaced by ``mapping[value]``; null where the value is not a key."""
    keys = list(mapping)
    index = pc.index_in(strings, value_set=pa.array(keys, pa.string()))
    return pa.array([mapping[k] for k in keys], pa.string()).take(index)


def latest(table: pa.Table, keys: Sequence[str], time_column: str) -> pa.Table:
    """One row per ``keys``: the one with the latest ``time_column`` (ties: the larger other values)."""
    if not table.num_rows:
        return table
    others = [c for c in table.column_names if c not in keys and c != time_column]
    ordered = table.sort_by(
        [(k, "ascending") for k in keys] + [(time_column, "descending")] + [(c, "descending") for c in others]
    )
    same_as_previous = np.ones(ordered.num_rows, dtype=bool)
    same_as_previous[0] = False
    for key in keys:
        column = ordered.column(key).combine_chunks()
        same_as_previous[1:] &= np.asarray(
            pc.equal(column.slice(1), column.slice(0, len(column) - 1)).fill_null(False)
        )
    return ordered.filter(pa.array(~same_as_previous))


def accepted_events(
    verdicts: Verdicts, *, user_id, item_id, micros, event_type, value=None, session_id=None
) -> pa.Table:
    """The accepted rows as the events contract (``schema.arrow_schema(EVENTS)``); a str is a constant column."""
    n = len(verdicts.accepted)

    def column(data, type_):
        if data is None:
            return pa.nulls(n, type_)
        if isinstance(data, str):
            return pa.repeat(pa.scalar(data, type_), n)
        return pc.cast(data, type_)

    contract = schema.arrow_schema(schema.EVENTS)
    table = pa.table(
        [
            pc.cast(column(micros, pa.int64()), contract.field(schema.EVENT_TIME).type),
            column(user_id, pa.string()),
            column(item_id, pa.string()),
            column(event_type, pa.string()),
            column(value, pa.float64()),
            column(session_id, pa.string()),
        ],
        schema=contract,
    )
    return table.filter(pa.array(verdicts.accepted))


# --- rules -------------------------------------------------------------------------------------


class Verdicts:
    """The first rule each row of a chunk breaks, in the order the checks are made (as jobs/clean_events)."""

    ACCEPTED, IGNORED = -1, -2

    def __init__(self, chunk: Chunk) -> None:
        self.chunk = chunk
        self.failed = np.full(chunk.table.num_rows, self.ACCEPTED, dtype=np.int16)
        self.checks: list[tuple[str, str, pa.Array]] = []

    def ignore(self, mask) -> None:
        """Rows read on purpose but not used (neither accepted nor refused); call before the checks."""
        self.failed[(self.failed == self.ACCEPTED) & np.asarray(mask)] = self.IGNORED

    def check(self, rule: str, column: str, bad, raw: pa.Array) -> None:
        """Rows where ``bad`` is true (or null) break ``rule`` on ``column``, whose raw values are ``raw``."""
        mask = (
            np.asarray(pc.fill_null(bad, True))
            if isinstance(bad, pa.Array | pa.ChunkedArray)
            else np.asarray(bad)
        )
        self.failed[(self.failed == self.ACCEPTED) & mask] = len(self.checks)
        self.checks.append((rule, column, raw))

    @property
    def accepted(self) -> np.ndarray:
        return self.failed == self.ACCEPTED

    @property
    def ignored(self) -> int:
        return int((self.failed == self.IGNORED).sum())

    def quarantine(self) -> pa.Table:
        """The refused rows (rule, column, raw value, whole record, line), malformed rows included."""
        contract = schema.arrow_schema(schema.IMPORT_QUARANTINE)
        bad = np.flatnonzero(self.failed >= 0)
        parts = []
        if len(bad):
            table = self.chunk.table
            raw_columns = [as_strings(table.column(n).take(bad)) for n in table.column_names]
            record = pc.binary_join_element_wise(*raw_columns, self.chunk.delimiter)
            which = pa.array(self.failed[bad])
            parts.append(
                pa.table(
                    [
                        pa.array(self.chunk.lines[bad]),
                        pa.array([c[0] for c in self.checks], pa.string()).take(which),
                        pa.array([c[1] for c in self.checks], pa.string()).take(which),
                        _raw_values(self.checks, self.failed[bad], bad),
                        record,
                    ],
                    schema=contract,
                )
            )
        if self.chunk.malformed:
            expected = self.chunk.table.num_columns
            n = len(self.chunk.malformed)
            # The rows come from pyarrow's per-row callback (a Python list already): no loop is added here.
            lines, texts = zip(*self.chunk.malformed, strict=True)
            parts.append(
                pa.table(
                    [
                        pa.array(lines, pa.int64()),
                        pa.repeat(pa.scalar(schema.RULE_MALFORMED_ROW), n),
                        pa.nulls(n, pa.string()),
                        pa.repeat(pa.scalar(f"expected {expected} fields"), n),
                        pa.array(texts, pa.string()),
                    ],
                    schema=contract,
                )
            )
        return pa.concat_tables(parts).sort_by(schema.LINE) if parts else contract.empty_table()

    def rule_counts(self) -> Counter:
        counts = Counter()
        for index, n in zip(*np.unique(self.failed[self.failed >= 0], return_counts=True), strict=True):
            counts[self.checks[index][0]] += int(n)
        if self.chunk.malformed:
            counts[schema.RULE_MALFORMED_ROW] += len(self.chunk.malformed)
        return counts


def _raw_values(checks, which: np.ndarray, bad: np.ndarray) -> pa.Array:
    """Raw value of the failed column of each refused row: taken check by check, then put back in row order."""
    positions, values = [], []
    for w in np.unique(which):  # one take per check that failed, whatever the number of rows
        at = np.flatnonzero(which == w)
        positions.append(at)
        values.append(pc.cast(as_strings(checks[w][2].take(pa.array(bad[at]))), pa.string()))
    order = np.empty(len(bad), np.int64)
    order[np.concatenate(positions)] = np.arange(len(bad))
    return pa.concat_arrays(values).take(pa.array(order))


# --- counts and progress -----------------------------------------------------------------------


@dataclass
class FileCounts:
    """What one input file gave: rows read = accepted + ignored + quarantined."""

    file: str
    role: str
    """``events`` (rows become events) or ``items`` (rows feed the items table)."""
    rows: int = 0
    accepted: int = 0
    ignored: int = 0
    """Rows read on purpose but not used (item properties other than category and availability)."""
    quarantined: int = 0
    rules: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict:
        return {
            "file": self.file,
            "role": self.role,
            "rows": self.rows,
            "accepted": self.accepted,
            "ignored": self.ignored,
            "quarantined": self.quarantined,
            "rules": dict(sorted(self.rules.items())),
        }


class Progress:
    """Progress lines on stderr: every ``every`` rows of a file, and once per file."""

    def __init__(self, every: int = DEFAULT_PROGRESS_EVERY, stream=None) -> None:
        self.every = max(1, every)
        self.stream = stream if stream is not None else sys.stderr
        self._started: dict[str, float] = {}
        self._next: dict[str, int] = {}

    def say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def start(self, counts: FileCounts) -> None:
        self._started[counts.file] = time.perf_counter()
        self._next[counts.file] = self.every
        self.say(f"reading {counts.file} ({counts.role})")

    def update(self, counts: FileCounts, *, done: bool = False) -> None:
        if not done and counts.rows < self._next[counts.file]:
            return
        while self._next[counts.file] <= counts.rows:
            self._next[counts.file] += self.every
        seconds = max(time.perf_counter() - self._started[counts.file], 1e-9)
        head = f"{'done' if done else '...'} {Path(counts.file).name}: {counts.rows:,} rows"
        self.say(
            f"{head} ({counts.accepted:,} accepted, {counts.ignored:,} ignored, {counts.quarantined:,} quarantined), "
            f"{counts.rows / seconds:,.0f} rows/s"
        )


Converter = Callable[[Chunk], tuple[pa.Table, Verdicts]]
"""Turns a chunk into the accepted rows (a table) and the verdicts of all its rows."""
