"""RetailRocket (Kaggle "Retailrocket recommender system dataset") into the events and items tables.

Files: ``events.csv`` (timestamp in ms, visitorid, event, itemid, transactionid), optional
``item_properties_part*.csv`` (timestamp, itemid, property, value) and ``category_tree.csv``.

- ``view`` -> view, ``addtocart`` -> add_to_cart, ``transaction`` -> purchase; anything else is
  quarantined (``bad_event_type``). ``user_id`` is the visitor id; ``value`` and ``session_id``
  are null (the file has no amounts; sessions are inferred downstream); ``transactionid`` is not kept.
- Items: ``categoryid`` and ``available`` are property snapshots taken over time. The items table
  is one catalogue, not a history, so it holds each item's latest value at or before the end
  (UTC) of the last event day; later snapshots are ignored (counted as ``ignored``), as are all
  other properties (their values are hashed). ``price`` stays null.
- ``category_tree.csv``, when present, is only checked: categories of items that it does not
  list are reported as a warning.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from dql_model.contract import schema
from dql_model.errors import MissingInput
from dql_model.importers import core
from dql_model.importers.warehouse import ImportRun

EVENTS_FILE = "events.csv"
PROPERTIES_GLOB = "item_properties_part*.csv*"
CATEGORY_TREE = "category_tree.csv"
EVENT_TYPES = {"view": schema.VIEW, "addtocart": schema.ADD_TO_CART, "transaction": schema.PURCHASE}
EVENT_COLUMNS = {
    "timestamp": "event time in ms since 1970",
    "visitorid": "user id",
    "event": "view, addtocart or transaction",
    "itemid": "item id",
}
PROPERTY_COLUMNS = {
    "timestamp": "snapshot time in ms",
    "itemid": "item id",
    "property": "property name",
    "value": "property value",
}
CATEGORY, AVAILABLE = "categoryid", "available"
_TIME = "_micros"


def locate(path: Path, items: Path | None) -> tuple[Path, list[Path], Path | None]:
    """events.csv, the item property files and the category tree, from a folder or the events file."""
    events = path / EVENTS_FILE if path.is_dir() else path
    if not events.is_file():
        raise MissingInput(
            f"RetailRocket events file {events} does not exist (expected {EVENTS_FILE} in {path})"
        )
    where = items if items is not None else events.parent
    properties = sorted(where.glob(PROPERTIES_GLOB)) if where.is_dir() else [where]
    if items is not None and not properties:
        raise MissingInput(f"no {PROPERTIES_GLOB} in {items}")
    tree = events.parent / CATEGORY_TREE
    return events, properties, tree if tree.is_file() else None


def run(
    run: ImportRun, path: Path, *, items: Path | None = None, block_size: int = core.DEFAULT_BLOCK_SIZE
) -> dict:
    events, properties, tree = locate(path, items)
    core.require_columns(events, core.csv_header(events), EVENT_COLUMNS)
    run.read(events, schema.EVENTS, core.read_csv_chunks(events, block_size=block_size), convert_events)
    cutoff = (max(run.dates) + 1) * core.US_PER_DAY if run.dates else 0
    snapshots: list[pa.Table] = []
    for file in properties:
        core.require_columns(file, core.csv_header(file), PROPERTY_COLUMNS)
        run.read(
            file,
            schema.ITEMS,
            core.read_csv_chunks(file, block_size=block_size),
            lambda chunk: convert_properties(chunk, cutoff),
            sink=lambda table: snapshots.append(core.latest(table, [schema.ITEM_ID, "property"], _TIME)),
        )
    catalogue = items_table(snapshots)
    if tree is not None:
        check_tree(run, tree, catalogue)
    return run.finish(catalogue)


def convert_events(chunk: core.Chunk) -> tuple[pa.Table, core.Verdicts]:
    t = chunk.table
    time, user, item, event = (
        core.as_strings(t.column(c)) for c in ("timestamp", "visitorid", "itemid", "event")
    )
    micros = core.epoch_micros(time, "ms")
    kind = core.map_values(event, EVENT_TYPES)
    verdicts = core.Verdicts(chunk)
    verdicts.check(schema.RULE_NULL_ID, "visitorid", core.blank(user), user)
    verdicts.check(schema.RULE_NULL_ID, "itemid", core.blank(item), item)
    verdicts.check(schema.RULE_BAD_TIMESTAMP, "timestamp", pc.is_null(micros), time)
    verdicts.check(schema.RULE_BAD_EVENT_TYPE, "event", pc.is_null(kind), event)
    return core.accepted_events(
        verdicts, user_id=user, item_id=item, micros=micros, event_type=kind
    ), verdicts


def convert_properties(chunk: core.Chunk, cutoff_us: int) -> tuple[pa.Table, core.Verdicts]:
    """Rows of categoryid/available at or before the cutoff; other properties and later ones are ignored."""
    t = chunk.table
    time, item, prop, value = (
        core.as_strings(t.column(c)) for c in ("timestamp", "itemid", "property", "value")
    )
    micros = core.epoch_micros(time, "ms")
    used = pc.is_in(prop, value_set=pa.array([CATEGORY, AVAILABLE]))
    too_late = pc.fill_null(pc.greater_equal(micros, cutoff_us), False)
    verdicts = core.Verdicts(chunk)
    verdicts.ignore(pc.or_(pc.invert(used), too_late))
    verdicts.check(schema.RULE_NULL_ID, "itemid", core.blank(item), item)
    verdicts.check(schema.RULE_BAD_TIMESTAMP, "timestamp", pc.is_null(micros), time)
    bad_available = pc.and_(
        pc.equal(prop, AVAILABLE), pc.invert(pc.is_in(value, value_set=pa.array(["0", "1"])))
    )
    verdicts.check(schema.RULE_BAD_VALUE, "value", pc.or_(bad_available, core.blank(value)), value)
    table = pa.table({schema.ITEM_ID: item, "property": prop, _TIME: micros, "value": value})
    return table.filter(pa.array(verdicts.accepted)), verdicts


def items_table(snapshots: list[pa.Table]) -> pa.Table:
    """item_id, category_id, price (null), available (null when no snapshot says) from the latest snapshots."""
    contract = schema.arrow_schema(schema.ITEMS)
    if not snapshots:
        return contract.empty_table()
    latest = core.latest(pa.concat_tables(snapshots), [schema.ITEM_ID, "property"], _TIME).to_pandas()
    wide = latest.pivot(index=schema.ITEM_ID, columns="property", values="value")
    wide = wide.reindex(columns=[CATEGORY, AVAILABLE]).reset_index()
    available = wide[AVAILABLE].map({"1": True, "0": False})
    return pa.table(
        {
            schema.ITEM_ID: pa.array(wide[schema.ITEM_ID], pa.string()),
            schema.CATEGORY_ID: pa.array(wide[CATEGORY].where(wide[CATEGORY].notna(), None), pa.string()),
            schema.PRICE: pa.nulls(len(wide), pa.float64()),
            schema.AVAILABLE: pa.array(available.where(available.notna(), None), pa.bool_()),
        },
        schema=contract,
    )


def check_tree(run: ImportRun, tree: Path, catalogue: pa.Table) -> None:
    """Warn about item categories that category_tree.csv does not list."""
    table = pacsv.read_csv(
        tree, convert_options=pacsv.ConvertOptions(column_types={"categoryid": pa.string()})
    )
    core.require_columns(
        tree, table.column_names, {"categoryid": "category id", "parentid": "parent category id"}
    )
    known = pc.utf8_trim_whitespace(table.column("categoryid"))
    categories = pc.unique(catalogue.column(schema.CATEGORY_ID).drop_null())
    unknown = pc.filter(categories, pc.invert(pc.is_in(categories, value_set=known)))
    if len(unknown):
        run.warnings.append(
            f"{len(unknown)} item categories are not in {tree} (e.g. {unknown.slice(0, 3).to_pylist()}); "
            "they are kept as they are"
        )
