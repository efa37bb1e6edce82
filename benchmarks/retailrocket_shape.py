"""Synthetic files in RetailRocket's layout and shape, at any scale (owns: the shape of a real shop's log).

RetailRocket (Kaggle "Retailrocket recommender system dataset") at scale 1.0: 1.41M visitors,
2.76M events over 139 days, 235k items with events, 417k items in the two property files, about
49 property rows per item (20.3M rows), 1,669 categories. This module writes files with exactly
its columns and those sizes times ``scale``:

- ``events.csv``: ``timestamp`` (ms), ``visitorid``, ``event`` (96.7% view, 2.5% addtocart,
  0.8% transaction), ``itemid``, ``transactionid`` (on transactions only). Events per visitor
  follow a Zipf law of exponent 2.5 (three visitors in four have one event, a long tail has
  thousands); item popularity a Zipf law over the items with events, every one of them at least
  once; 5% of the items with events have no property rows (they reach the catalogue only through
  the events). Rows in random time order, as in the real file; one row in ``NO_VISITOR_EVERY``
  has no visitor (the import quarantines it).
- ``item_properties_part1.csv`` / ``part2``: ``timestamp``, ``itemid``, ``property``, ``value``:
  weekly snapshots (Sundays 03:00 UTC) of ``categoryid``, ``available`` (0/1) and numbered
  properties with hashed-looking values (``n5640.000``); the rows split between the files as
  the real ones are (54% / 46%).
- ``category_tree.csv``: ``categoryid``, ``parentid`` (roots have an empty parent).

Everything is drawn with numpy from one seed and written with pyarrow block by block, so the
largest scale needs memory for the events (not the property rows) and the same seed gives the
same files. ``shape.json`` beside them records what was drawn (the counts a benchmark checks
the import against). ``python -m benchmarks.retailrocket_shape FOLDER --scale 0.1`` writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

VISITORS, EVENTS = 1_407_580, 2_756_101
ITEMS_WITH_EVENTS, PROPERTY_ITEMS = 235_061, 417_053
PROPERTY_ROWS_PER_ITEM = 48.6
"""20,275,902 property rows over 417,053 items in the real files."""
CATEGORIES = 1_669
ITEM_ID_SPACE = 466_867
"""Item ids are integers below this (as in the real files), not 0..n-1."""
START_MS = 1_430_611_200_000
"""2015-05-03 00:00 UTC (a Sunday), the first day of the real log."""
SNAPSHOT_MS = START_MS + 7 * 86_400_000 + 3 * 3_600_000
"""The first property snapshot: the next Sunday, 03:00 UTC."""
DAYS = 139
EVENT_SHARES = {"view": 0.9667, "addtocart": 0.0252, "transaction": 0.0081}
VISITOR_ZIPF = 2.5
"""P(k events) ~ k^-2.5: mean 1.95 events per visitor, 75% with one."""
ITEM_ZIPF = 0.9
"""Item of popularity rank k drawn with weight k^-0.9."""
ITEMS_WITHOUT_PROPERTIES = 0.05
NO_VISITOR_EVERY = 10_000
PART1_SHARE = 0.54
WEEK_MS = 7 * 86_400_000
ROOT_EVERY = 67
"""One root category per this many (RetailRocket: 25 roots of 1,669)."""
EVENT_COLUMNS = ("timestamp", "visitorid", "event", "itemid", "transactionid")
PROPERTY_COLUMNS = ("timestamp", "itemid", "property", "value")
FILES = ("events.csv", "item_properties_part1.csv", "item_properties_part2.csv", "category_tree.csv")
_ITEMS_PER_BLOCK = 50_000


def sizes(scale: float) -> dict[str, int]:
    """The counts of a log ``scale`` times RetailRocket's (at least a handful of each)."""
    if scale <= 0:
        raise ValueError(f"--scale must be positive, got {scale}")
    events = max(200, round(EVENTS * scale))
    return {
        "visitors": max(100, min(round(VISITORS * scale), events)),
        "events": events,
        "items_with_events": max(50, min(round(ITEMS_WITH_EVENTS * scale), events)),
        "property_items": max(60, round(PROPERTY_ITEMS * scale)),
        "categories": max(20, min(CATEGORIES, round(CATEGORIES * scale**0.5))),
    }


def write(folder: Path, scale: float, *, seed: int = 7, property_rows_per_item: float = PROPERTY_ROWS_PER_ITEM) -> dict:
    """Write the four files into ``folder`` (replacing them); returns what ``shape.json`` records."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = sizes(scale)
    folder.mkdir(parents=True, exist_ok=True)
    # Items with events: most among the catalogue's, some only in the events.
    outside = round(n["items_with_events"] * ITEMS_WITHOUT_PROPERTIES)
    ids = rng.choice(max(ITEM_ID_SPACE, 2 * (n["property_items"] + outside)), n["property_items"] + outside, replace=False)
    property_items = ids[: n["property_items"]]
    event_items = np.concatenate(
        [
            rng.choice(property_items, n["items_with_events"] - outside, replace=False),
            ids[n["property_items"] : n["property_items"] + outside],
        ]
    )
    rng.shuffle(event_items)  # position = popularity rank
    categories = rng.choice(np.arange(1, 2 * CATEGORIES), n["categories"], replace=False)
    events = _write_events(folder / FILES[0], rng, n, event_items)
    rows = _write_properties(folder, rng, property_items, categories, property_rows_per_item)
    _write_tree(folder / FILES[3], rng, categories)
    shape = {
        "scale": scale,
        "seed": seed,
        **n,
        **events,
        "property_rows": rows,
        "items_only_in_events": outside,
        "files": {name: (folder / name).stat().st_size for name in FILES},
    }
    (folder / "shape.json").write_text(json.dumps(shape, indent=2) + "\n")
    return shape


def _events_per_visitor(rng, visitors: int, events: int):
    """Zipf counts (each >= 1) adjusted to sum to ``events``: extra events go to the already active."""
    import numpy as np

    counts = np.minimum(rng.zipf(VISITOR_ZIPF, visitors), events).astype(np.int64)
    missing = events - int(counts.sum())
    if missing > 0:
        counts += np.bincount(rng.choice(visitors, missing, p=counts / counts.sum()), minlength=visitors)
    while missing < 0:  # take events back from visitors with more than one, never below one
        spare = np.repeat(np.arange(visitors), counts - 1)
        take = rng.choice(len(spare), min(-missing, len(spare)), replace=False)
        counts -= np.bincount(spare[take], minlength=visitors)
        missing = events - int(counts.sum())
    return counts


def _write_events(path: Path, rng, n: dict[str, int], event_items) -> dict:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    total = n["events"]
    visitor_ids = rng.permutation(n["visitors"])
    visitor = np.repeat(visitor_ids, _events_per_visitor(rng, n["visitors"], total))
    rank = np.arange(1, len(event_items) + 1, dtype=np.float64)
    weights = rank**-ITEM_ZIPF
    item = event_items[rng.choice(len(event_items), total, p=weights / weights.sum())]
    item[rng.choice(total, len(event_items), replace=False)] = event_items  # every item at least once
    order = rng.permutation(total)  # the real file is in no particular order
    visitor = visitor[order]
    stamp = START_MS + rng.integers(0, DAYS * 86_400_000, total)
    kinds = np.array(list(EVENT_SHARES), dtype=object)
    kind_index = rng.choice(len(kinds), total, p=np.array(list(EVENT_SHARES.values())) / sum(EVENT_SHARES.values()))
    bought = kind_index == 2
    transaction = pa.array(np.cumsum(bought)).cast(pa.string())
    no_visitor = np.zeros(total, bool)
    no_visitor[NO_VISITOR_EVERY - 1 :: NO_VISITOR_EVERY] = True
    visitor_text = pc.if_else(pa.array(no_visitor), "", pa.array(visitor).cast(pa.string()))
    table = pa.table(
        {
            "timestamp": pa.array(stamp).cast(pa.string()),
            "visitorid": visitor_text,
            "event": pa.array(kinds).cast(pa.string()).take(pa.array(kind_index)),
            "itemid": pa.array(item).cast(pa.string()),
            "transactionid": pc.if_else(pa.array(bought), transaction, pa.scalar(None, pa.string())),
        }
    )
    _write_csv(path, [table])
    counted = np.bincount(kind_index, minlength=3)
    return {
        "event_types": {name: int(c) for name, c in zip(EVENT_SHARES, counted, strict=True)},
        "rows_without_visitor": int(no_visitor.sum()),
        "visitors_with_one_event": int((np.bincount(visitor) == 1).sum()),
        "event_days": len(np.unique((stamp - START_MS) // 86_400_000)),
    }


def _write_properties(folder: Path, rng, items, categories, rows_per_item: float) -> int:
    """Weekly snapshots per item, block by block; returns the rows written."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    weeks = DAYS // 7 + 1
    budget = round(len(items) * rows_per_item)
    boundary = round(budget * PART1_SHARE)
    parts = [folder / FILES[1], folder / FILES[2]]
    writers = [_CsvFile(path, PROPERTY_COLUMNS) for path in parts]
    written = 0
    try:
        for start in range(0, len(items), _ITEMS_PER_BLOCK):
            block = items[start : start + _ITEMS_PER_BLOCK]
            share = round(budget * (start + len(block)) / len(items)) - written
            m = len(block)
            # Per item: 1-3 category rows, 1-6 availability rows, the rest numbered properties.
            per_item = rng.multinomial(share, np.full(m, 1 / m)) if m else np.zeros(0, np.int64)
            item = np.repeat(block, per_item)
            week = rng.integers(0, weeks, len(item))
            stamp = SNAPSHOT_MS + week * WEEK_MS
            draw = rng.random(len(item))
            prop_kind = np.where(draw < 0.04, 0, np.where(draw < 0.11, 1, 2))  # categoryid, available, other
            number = rng.integers(1, 1_100, len(item))
            prop = pc.if_else(
                pa.array(prop_kind == 0),
                "categoryid",
                pc.if_else(pa.array(prop_kind == 1), "available", pa.array(number).cast(pa.string())),
            )
            category = pa.array(categories[rng.integers(0, len(categories), len(item))]).cast(pa.string())
            available = pa.array(rng.integers(0, 2, len(item))).cast(pa.string())
            other = pc.binary_join_element_wise("n", pa.array(rng.integers(0, 100_000, len(item))).cast(pa.string()), ".000", "")
            value = pc.if_else(pa.array(prop_kind == 0), category, pc.if_else(pa.array(prop_kind == 1), available, other))
            order = rng.permutation(len(item))
            table = pa.table(
                {
                    "timestamp": pa.array(stamp).cast(pa.string()),
                    "itemid": pa.array(item).cast(pa.string()),
                    "property": prop,
                    "value": value,
                }
            ).take(pa.array(order))
            first = max(0, min(len(item), boundary - written))
            writers[0].write(table.slice(0, first))
            writers[1].write(table.slice(first))
            written += len(item)
    finally:
        for writer in writers:
            writer.close()
    return written


def _write_tree(path: Path, rng, categories) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    roots = max(1, len(categories) // ROOT_EVERY)
    parent = categories[rng.integers(0, roots, len(categories))]
    is_root = np.zeros(len(categories), bool)
    is_root[:roots] = True
    table = pa.table(
        {
            "categoryid": pa.array(categories).cast(pa.string()),
            "parentid": pc.if_else(pa.array(is_root), pa.scalar(None, pa.string()), pa.array(parent).cast(pa.string())),
        }
    )
    _write_csv(path, [table])


class _CsvFile:
    """A CSV file written batch by batch under a temporary name, renamed into place on close."""

    def __init__(self, path: Path, columns: tuple[str, ...]) -> None:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        self.path, self.partial = path, path.with_name(path.name + ".partial")
        self.schema = pa.schema([(c, pa.string()) for c in columns])
        self.file = self.partial.open("wb")
        self.file.write((",".join(columns) + "\n").encode())  # unquoted, as the real files' header
        options = pacsv.WriteOptions(include_header=False, quoting_style="none")
        self.writer = pacsv.CSVWriter(self.file, self.schema, write_options=options)

    def write(self, table) -> None:
        if table.num_rows:
            self.writer.write_table(table.cast(self.schema))

    def close(self) -> None:
        self.writer.close()
        self.file.close()
        os.replace(self.partial, self.path)


def _write_csv(path: Path, tables) -> None:
    out = _CsvFile(path, tuple(tables[0].column_names))
    try:
        for table in tables:
            out.write(table)
    finally:
        out.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write RetailRocket-shaped files (events, item properties, categories).")
    parser.add_argument("folder", type=Path, help="where the four files and shape.json go")
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = RetailRocket's size (default)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--property-rows-per-item", type=float, default=PROPERTY_ROWS_PER_ITEM, help="rows of the property files per item"
    )
    args = parser.parse_args(argv)
    shape = write(args.folder, args.scale, seed=args.seed, property_rows_per_item=args.property_rows_per_item)
    print(json.dumps(shape, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
