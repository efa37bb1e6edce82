"""Any CSV or Parquet event log, through a column mapping, into the events (and items) tables.

``--map user_id=visitor,item_id=sku,event_time=ts,event_type=kind,value=amount,session_id=sid``
names the file's column for each contract column (unmapped contract names are looked up as
they are). ``user_id``, ``item_id`` and ``event_time`` are required; ``event_type`` too unless
``--event-type`` gives one type for every row; ``value`` and ``session_id`` are optional. The
events file may also carry ``category_id`` and ``price``: each item then gets the values of
its latest event.

- Event types: ``--event-map click=view,buy=purchase`` renames values; a value already named
  as in the contract passes as it is; any other is quarantined (``bad_event_type``).
- Time: a Parquet timestamp column is used as it is (a naive one is UTC). Otherwise
  ``--time-unit s|ms|us|ns`` reads integers since 1970, ``--time-format`` reads strftime text
  (UTC unless it has ``%z``), and by default ISO 8601 text is read (no zone: UTC). Integer
  columns require ``--time-unit``.
- ``value`` must be a number when present; a ``rating`` needs one in ``schema.RATING_BOUNDS``, [0.5, 5] (``bad_value``).
- ``--items FILE`` (CSV or Parquet) with ``--items-map item_id=sku,category_id=cat,price=p,
  available=in_stock``: the catalogue. ``available`` accepts true/false, 1/0, yes/no.

PATH is a file or a folder; a folder's ``*.csv``, ``*.csv.gz``, ``*.tsv`` and ``*.parquet`` files
are read in name order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dql_model.contract import schema
from dql_model.errors import MissingInput
from dql_model.importers import core
from dql_model.importers.warehouse import ImportRun

REQUIRED = (schema.USER_ID, schema.ITEM_ID, schema.EVENT_TIME)
OPTIONAL = (schema.EVENT_TYPE, schema.VALUE, schema.SESSION_ID, schema.CATEGORY_ID, schema.PRICE)
ITEM_FIELDS = (schema.ITEM_ID, schema.CATEGORY_ID, schema.PRICE, schema.AVAILABLE)
SUFFIXES = (".csv", ".csv.gz", ".tsv", ".parquet")
TRUE, FALSE = ("true", "1", "yes", "t", "y"), ("false", "0", "no", "f", "n")
_TIME = "_micros"


@dataclass(frozen=True)
class Options:
    """How to read a generic event log (the flags of `dqlrec import --format events`)."""

    mapping: dict[str, str] = field(default_factory=dict)
    """Contract column -> the file's column (``--map``)."""
    event_map: dict[str, str] = field(default_factory=dict)
    """The file's event type value -> a contract event type (``--event-map``)."""
    event_type: str | None = None
    """One event type for every row, for files without one (``--event-type``)."""
    time_unit: str | None = None
    """Epoch unit of integer timestamps: s, ms, us or ns (``--time-unit``)."""
    time_format: str | None = None
    """strftime format of text timestamps (``--time-format``); default ISO 8601."""
    delimiter: str = ","
    """CSV field delimiter (``--delimiter``; a .tsv file is tab separated)."""
    column_names: tuple[str, ...] | None = None
    """Column names of a CSV file without a header line (``--columns``)."""
    items_mapping: dict[str, str] = field(default_factory=dict)
    """Contract items column -> the items file's column (``--items-map``)."""

    def __post_init__(self) -> None:
        unknown = set(self.mapping) - set(REQUIRED) - set(OPTIONAL)
        if unknown:
            raise core.UnusableInput(
                f"--map: unknown target(s) {sorted(unknown)}; known: {[*REQUIRED, *OPTIONAL]}"
            )
        unknown = set(self.items_mapping) - set(ITEM_FIELDS)
        if unknown:
            raise core.UnusableInput(
                f"--items-map: unknown target(s) {sorted(unknown)}; known: {list(ITEM_FIELDS)}"
            )
        targets = {self.event_type, *self.event_map.values()} - {None}
        if targets - set(schema.EVENT_TYPES):
            raise core.UnusableInput(
                f"event type(s) {sorted(targets - set(schema.EVENT_TYPES))} (--event-type/--event-map) are not "
                f"contract event types {list(schema.EVENT_TYPES)}"
            )
        if self.time_unit and self.time_format:
            raise core.UnusableInput("give --time-unit or --time-format, not both")
        if self.time_unit and self.time_unit not in core.US_PER_UNIT:
            raise core.UnusableInput(f"--time-unit {self.time_unit!r}: use one of {list(core.US_PER_UNIT)}")

    def source(self, target: str) -> str:
        return self.mapping.get(target, target)


def input_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise MissingInput(f"event file or folder {path} does not exist")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(SUFFIXES))
    if not files:
        raise MissingInput(f"no {', '.join(SUFFIXES)} files in {path}")
    return files


def run(
    run: ImportRun,
    path: Path,
    options: Options,
    *,
    items: Path | None = None,
    block_size: int = core.DEFAULT_BLOCK_SIZE,
) -> dict:
    attributes: list[pa.Table] = []
    for file in input_files(path):
        chunks, columns = _chunks(file, options, options.mapping, block_size)
        needed = {options.source(t): f"{t} (--map {t}=COLUMN)" for t in REQUIRED}
        if options.event_type is None:
            needed[options.source(schema.EVENT_TYPE)] = (
                f"{schema.EVENT_TYPE} (--map event_type=COLUMN, or --event-type)"
            )
        core.require_columns(file, columns, needed)
        for target in (schema.VALUE, schema.SESSION_ID, schema.CATEGORY_ID, schema.PRICE):
            if target in options.mapping:
                core.require_columns(file, columns, {options.mapping[target]: f"{target} (--map)"})
        run.read(
            file,
            schema.EVENTS,
            chunks,
            partial(convert_events, options=options, columns=columns, attributes=attributes),
        )
    catalogue = item_attributes(attributes)
    if items is not None:
        catalogue = _read_items(run, items, options, block_size, catalogue)
    return run.finish(catalogue)


def _chunks(
    file: Path, options: Options, mapping: dict[str, str], block_size: int
) -> tuple[Iterator[core.Chunk], list[str]]:
    """Chunks of a CSV or Parquet file, and its column names."""
    if file.suffix == ".parquet":
        core.require_file(file, "input file")
        columns = pq.ParquetFile(file).schema_arrow.names
        wanted = [
            c
            for c in columns
            if c in set(mapping.values()) | set(REQUIRED) | set(OPTIONAL) | set(ITEM_FIELDS)
        ]
        return core.read_parquet_chunks(file, columns=wanted), columns
    delimiter = "\t" if file.suffix == ".tsv" else options.delimiter
    if options.column_names:
        columns = list(options.column_names)
    else:
        core.require_file(file, "input file")
        columns = core.csv_header(file, delimiter=delimiter)
    chunks = core.read_csv_chunks(
        file, column_names=options.column_names, delimiter=delimiter, block_size=block_size
    )
    return chunks, columns


def event_micros(column: pa.Array, options: Options, file: Path, name: str) -> tuple[pa.Array, pa.Array]:
    """(UTC microseconds, raw text) of a time column of any type."""
    if pa.types.is_timestamp(column.type):
        return core.timestamp_micros(column), core.as_strings(column)
    if pa.types.is_integer(column.type) and not options.time_unit:
        raise core.UnusableInput(
            f"{file}: column {name!r} (event_time) holds integers: give --time-unit s|ms|us|ns"
        )
    text = core.as_strings(column)
    if options.time_unit:
        return core.epoch_micros(text, options.time_unit), text
    if options.time_format:
        return core.format_micros(text, options.time_format), text
    return core.iso_micros(text), text


def convert_events(
    chunk: core.Chunk, options: Options, columns: list[str], attributes: list[pa.Table]
) -> tuple[pa.Table, core.Verdicts]:
    t = chunk.table

    def text(target: str) -> pa.Array:
        return core.as_strings(t.column(options.source(target)))

    user, item = text(schema.USER_ID), text(schema.ITEM_ID)
    time_column = t.column(options.source(schema.EVENT_TIME)).combine_chunks()
    micros, time_text = event_micros(time_column, options, chunk.source, options.source(schema.EVENT_TIME))
    if options.event_type is not None:
        raw_kind, kind = pa.repeat(pa.scalar(options.event_type), t.num_rows), options.event_type
    else:
        raw_kind = text(schema.EVENT_TYPE)
        renames = {**{k: k for k in schema.EVENT_TYPES}, **options.event_map}
        kind = core.map_values(raw_kind, renames)
    verdicts = core.Verdicts(chunk)
    verdicts.check(schema.RULE_NULL_ID, options.source(schema.USER_ID), core.blank(user), user)
    verdicts.check(schema.RULE_NULL_ID, options.source(schema.ITEM_ID), core.blank(item), item)
    verdicts.check(
        schema.RULE_BAD_TIMESTAMP, options.source(schema.EVENT_TIME), pc.is_null(micros), time_text
    )
    if isinstance(kind, pa.Array):
        verdicts.check(
            schema.RULE_BAD_EVENT_TYPE, options.source(schema.EVENT_TYPE), pc.is_null(kind), raw_kind
        )
    value = _number(t, options, schema.VALUE, columns, verdicts)
    is_rating = (
        pc.fill_null(pc.equal(kind, schema.RATING), False)
        if isinstance(kind, pa.Array)
        else kind == schema.RATING
    )
    if is_rating is not False:
        low, high = schema.RATING_BOUNDS
        rating = value if value is not None else pa.nulls(t.num_rows, pa.float64())
        out = pc.invert(
            pc.fill_null(pc.and_(pc.greater_equal(rating, low), pc.less_equal(rating, high)), False)
        )
        raw = (
            text(schema.VALUE)
            if options.source(schema.VALUE) in columns
            else pa.repeat(pa.scalar(""), t.num_rows)
        )
        bad = pc.and_(is_rating, out) if isinstance(is_rating, pa.Array) else out
        verdicts.check(schema.RULE_BAD_VALUE, options.source(schema.VALUE), bad, raw)
    price = _number(t, options, schema.PRICE, columns, verdicts)
    session = text(schema.SESSION_ID) if options.source(schema.SESSION_ID) in columns else None
    if session is not None:
        session = pc.if_else(pc.equal(session, ""), pa.scalar(None, pa.string()), session)
    _keep_attributes(t, options, columns, verdicts, item, micros, price, attributes)
    events = core.accepted_events(
        verdicts, user_id=user, item_id=item, micros=micros, event_type=kind, value=value, session_id=session
    )
    return events, verdicts


def _number(
    t: pa.Table, options: Options, target: str, columns: list[str], verdicts: core.Verdicts
) -> pa.Array | None:
    """A numeric column (null when empty); a value that is not a number breaks bad_value."""
    name = options.source(target)
    if name not in columns:
        return None
    column = t.column(name).combine_chunks()
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        return pc.cast(column, pa.float64())
    raw = core.as_strings(column)
    number = core.parse_floats(raw)
    verdicts.check(schema.RULE_BAD_VALUE, name, pc.and_(pc.is_null(number), pc.not_equal(raw, "")), raw)
    return number


def _keep_attributes(t, options, columns, verdicts, item, micros, price, attributes: list[pa.Table]) -> None:
    """Category and price carried by the events: the latest per item, reduced chunk by chunk."""
    category_name = options.source(schema.CATEGORY_ID)
    if category_name not in columns and price is None:
        return
    n = t.num_rows
    category = (
        core.as_strings(t.column(category_name)) if category_name in columns else pa.nulls(n, pa.string())
    )
    category = pc.if_else(pc.equal(category, ""), pa.scalar(None, pa.string()), category)
    table = pa.table(
        {
            schema.ITEM_ID: item,
            _TIME: micros,
            schema.CATEGORY_ID: category,
            schema.PRICE: price if price is not None else pa.nulls(n, pa.float64()),
        }
    ).filter(pa.array(verdicts.accepted))
    attributes.append(core.latest(table, [schema.ITEM_ID], _TIME))


def item_attributes(attributes: list[pa.Table]) -> pa.Table | None:
    if not attributes:
        return None
    latest = core.latest(pa.concat_tables(attributes), [schema.ITEM_ID], _TIME)
    return pa.table(
        {
            schema.ITEM_ID: latest.column(schema.ITEM_ID),
            schema.CATEGORY_ID: latest.column(schema.CATEGORY_ID),
            schema.PRICE: latest.column(schema.PRICE),
            schema.AVAILABLE: pa.nulls(latest.num_rows, pa.bool_()),
        },
        schema=schema.arrow_schema(schema.ITEMS),
    )


def _read_items(
    run: ImportRun, path: Path, options: Options, block_size: int, from_events: pa.Table | None
) -> pa.Table:
    """The --items catalogue; where it says nothing, the values carried by the events."""
    mapping = options.items_mapping
    item_options = Options(delimiter=options.delimiter)
    chunks, columns = _chunks(path, item_options, mapping, block_size)
    source = {t: mapping.get(t, t) for t in ITEM_FIELDS}
    core.require_columns(path, columns, {source[schema.ITEM_ID]: "item_id (--items-map item_id=COLUMN)"})
    for target in (schema.CATEGORY_ID, schema.PRICE, schema.AVAILABLE):
        if target in mapping:
            core.require_columns(path, columns, {mapping[target]: f"{target} (--items-map)"})
    parts: list[pa.Table] = []

    def convert(chunk: core.Chunk) -> tuple[pa.Table, core.Verdicts]:
        t, n = chunk.table, chunk.table.num_rows
        item = core.as_strings(t.column(source[schema.ITEM_ID]))
        verdicts = core.Verdicts(chunk)
        verdicts.check(schema.RULE_NULL_ID, source[schema.ITEM_ID], core.blank(item), item)
        category = (
            core.as_strings(t.column(source[schema.CATEGORY_ID]))
            if source[schema.CATEGORY_ID] in columns
            else None
        )
        if category is not None:
            category = pc.if_else(pc.equal(category, ""), pa.scalar(None, pa.string()), category)
        price = None
        if source[schema.PRICE] in columns:
            raw_price = core.as_strings(t.column(source[schema.PRICE]))
            price = core.parse_floats(raw_price)
            verdicts.check(
                schema.RULE_BAD_VALUE,
                source[schema.PRICE],
                pc.and_(pc.is_null(price), pc.not_equal(raw_price, "")),
                raw_price,
            )
        available = None
        if source[schema.AVAILABLE] in columns:
            raw = pc.utf8_lower(core.as_strings(t.column(source[schema.AVAILABLE])))
            available = pc.if_else(
                pc.is_in(raw, value_set=pa.array(TRUE)),
                True,
                pc.if_else(pc.is_in(raw, value_set=pa.array(FALSE)), False, pa.scalar(None, pa.bool_())),
            )
            verdicts.check(
                schema.RULE_BAD_VALUE,
                source[schema.AVAILABLE],
                pc.and_(pc.is_null(available), pc.not_equal(raw, "")),
                raw,
            )
        table = pa.table(
            {
                schema.ITEM_ID: item,
                schema.CATEGORY_ID: category if category is not None else pa.nulls(n, pa.string()),
                schema.PRICE: price if price is not None else pa.nulls(n, pa.float64()),
                schema.AVAILABLE: available if available is not None else pa.nulls(n, pa.bool_()),
            },
            schema=schema.arrow_schema(schema.ITEMS),
        )
        return table.filter(pa.array(verdicts.accepted)), verdicts

    run.read(path, schema.ITEMS, chunks, convert, sink=parts.append)
    catalogue = pa.concat_tables(parts) if parts else schema.arrow_schema(schema.ITEMS).empty_table()
    if from_events is None:
        return catalogue
    # Catalogue values first, then the events' where the catalogue has none.
    frame = catalogue.to_pandas().drop_duplicates(schema.ITEM_ID, keep="last").set_index(schema.ITEM_ID)
    events = from_events.to_pandas().set_index(schema.ITEM_ID)
    merged = frame.combine_first(events).reset_index()
    return pa.Table.from_pandas(
        merged[list(ITEM_FIELDS)], schema=schema.arrow_schema(schema.ITEMS), preserve_index=False
    )
