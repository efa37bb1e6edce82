"""YOOCHOOSE (RecSys Challenge 2015) clicks and buys into the events and items tables.

Files (no header, comma separated): ``yoochoose-clicks.dat`` (session id, ISO timestamp, item id,
category) and, optional, ``yoochoose-buys.dat`` (session id, ISO timestamp, item id, price,
quantity). ``yoochoose-test.dat`` (clicks of the test sessions) is not read.

- The data set has sessions but no users: ``user_id`` is the session id, and so is ``session_id``.
- Clicks are views; buys are purchases with ``value`` = price x quantity. About half the buys
  have price and quantity 0 (the amount was not recorded): their ``value`` is null, they stay
  purchases. A price or quantity that is not a number, or is negative, is quarantined (``bad_value``).
- Items: ``category_id`` is the category of the item's latest click (``0``, "no category", is
  null; ``S``, special offer, and brand numbers are kept as written); ``price`` is the latest
  positive price the item was bought at.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from dql_model.contract import schema
from dql_model.errors import MissingInput
from dql_model.importers import core
from dql_model.importers.warehouse import ImportRun

CLICKS_FILE = "yoochoose-clicks.dat"
BUYS_FILE = "yoochoose-buys.dat"
CLICK_COLUMNS = ("session_id", "timestamp", "item_id", "category")
BUY_COLUMNS = ("session_id", "timestamp", "item_id", "price", "quantity")
NO_CATEGORY = "0"
_TIME = "_micros"


def locate(path: Path) -> tuple[Path, Path | None]:
    """The clicks file (the folder's, or ``path`` itself) and the buys file beside it, if any."""
    clicks = path / CLICKS_FILE if path.is_dir() else path
    if not clicks.is_file():
        raise MissingInput(
            f"YOOCHOOSE clicks file {clicks} does not exist (expected {CLICKS_FILE} in {path})"
        )
    buys = clicks.parent / BUYS_FILE
    return clicks, buys if buys.is_file() else None


def run(run: ImportRun, path: Path, *, block_size: int = core.DEFAULT_BLOCK_SIZE) -> dict:
    clicks, buys = locate(path)
    categories: list[pa.Table] = []
    prices: list[pa.Table] = []
    chunks = core.read_csv_chunks(clicks, column_names=CLICK_COLUMNS, block_size=block_size)
    run.read(clicks, schema.EVENTS, chunks, lambda chunk: convert_clicks(chunk, categories))
    if buys is not None:
        chunks = core.read_csv_chunks(buys, column_names=BUY_COLUMNS, block_size=block_size)
        run.read(buys, schema.EVENTS, chunks, lambda chunk: convert_buys(chunk, prices))
    return run.finish(items_table(categories, prices))


def _checked(chunk: core.Chunk) -> tuple[core.Verdicts, pa.Array, pa.Array, pa.Array, pa.Array]:
    t = chunk.table
    session, time, item = (core.as_strings(t.column(c)) for c in ("session_id", "timestamp", "item_id"))
    micros = core.iso_micros(time)
    verdicts = core.Verdicts(chunk)
    verdicts.check(schema.RULE_NULL_ID, "session_id", core.blank(session), session)
    verdicts.check(schema.RULE_NULL_ID, "item_id", core.blank(item), item)
    verdicts.check(schema.RULE_BAD_TIMESTAMP, "timestamp", pc.is_null(micros), time)
    return verdicts, session, item, micros, time


def convert_clicks(chunk: core.Chunk, categories: list[pa.Table]) -> tuple[pa.Table, core.Verdicts]:
    verdicts, session, item, micros, _ = _checked(chunk)
    category = core.as_strings(chunk.table.column("category"))
    keep = pa.array(verdicts.accepted)
    known = pc.and_(keep, pc.invert(pc.or_(pc.equal(category, NO_CATEGORY), pc.equal(category, ""))))
    seen = pa.table({schema.ITEM_ID: item, _TIME: micros, schema.CATEGORY_ID: category}).filter(known)
    categories.append(core.latest(seen, [schema.ITEM_ID], _TIME))
    events = core.accepted_events(
        verdicts, user_id=session, item_id=item, micros=micros, event_type=schema.VIEW, session_id=session
    )
    return events, verdicts


def convert_buys(chunk: core.Chunk, prices: list[pa.Table]) -> tuple[pa.Table, core.Verdicts]:
    verdicts, session, item, micros, _ = _checked(chunk)
    price_text, quantity_text = (core.as_strings(chunk.table.column(c)) for c in ("price", "quantity"))
    price, quantity = core.parse_floats(price_text), core.parse_floats(quantity_text)
    verdicts.check(schema.RULE_BAD_VALUE, "price", pc.invert(pc.greater_equal(price, 0)), price_text)
    verdicts.check(schema.RULE_BAD_VALUE, "quantity", pc.invert(pc.greater_equal(quantity, 0)), quantity_text)
    recorded = pc.and_(pc.greater(price, 0), pc.greater(quantity, 0))
    value = pc.if_else(recorded, pc.multiply(price, quantity), pa.scalar(None, pa.float64()))
    priced = pc.and_(pa.array(verdicts.accepted), pc.fill_null(pc.greater(price, 0), False))
    seen = pa.table({schema.ITEM_ID: item, _TIME: micros, schema.PRICE: price}).filter(priced)
    prices.append(core.latest(seen, [schema.ITEM_ID], _TIME))
    events = core.accepted_events(
        verdicts, user_id=session, item_id=item, micros=micros, event_type=schema.PURCHASE, value=value,
        session_id=session,
    )  # fmt: skip
    return events, verdicts


def items_table(categories: list[pa.Table], prices: list[pa.Table]) -> pa.Table:
    """One row per item with a known category or price; the others come from the events (all null)."""
    contract = schema.arrow_schema(schema.ITEMS)
    frames = []
    for parts, column in ((categories, schema.CATEGORY_ID), (prices, schema.PRICE)):
        if parts:
            table = core.latest(pa.concat_tables(parts), [schema.ITEM_ID], _TIME)
            frames.append(table.select([schema.ITEM_ID, column]).to_pandas().set_index(schema.ITEM_ID))
    if not frames:
        return contract.empty_table()
    wide = frames[0].join(frames[1], how="outer") if len(frames) > 1 else frames[0]
    wide = wide.reindex(columns=[schema.CATEGORY_ID, schema.PRICE]).reset_index()
    return pa.table(
        {
            schema.ITEM_ID: pa.array(wide[schema.ITEM_ID], pa.string()),
            schema.CATEGORY_ID: pa.array(
                wide[schema.CATEGORY_ID].where(wide[schema.CATEGORY_ID].notna(), None), pa.string()
            ),
            schema.PRICE: pa.array(wide[schema.PRICE], pa.float64()),
            schema.AVAILABLE: pa.nulls(len(wide), pa.bool_()),
        },
        schema=contract,
    )
