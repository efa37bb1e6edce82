"""Builders of small test inputs, shared by the test modules (plain functions, not fixtures).

They write curated partitions the way the Spark jobs do: Parquet with the schema of
``schema.SPARK_DDL``, part files plus ``_SUCCESS``. ``make_shop`` builds a tiny learnable shop
(users follow a hidden successor rule) that a small Q-network must learn in a few epochs.

Fixtures live in tests/conftest.py; this module holds only what a test calls to build data.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dql_model.contract import schema

INT_LIST = pa.list_(pa.int32())
TRANSITIONS_SCHEMA = pa.schema(
    [
        (schema.USER_ID, pa.string()),
        (schema.EVENT_TIME, pa.timestamp("us", tz="UTC")),
        (schema.ITEM_SEQ, INT_LIST),
        (schema.EVENT_SEQ, INT_LIST),
        (schema.ACTION, pa.int32()),
        (schema.EVENT_TYPE, pa.string()),
        (schema.REWARD, pa.float64()),
        (schema.DONE, pa.bool_()),
        (schema.SPLIT, pa.string()),
        (schema.HISTORY_ITEMS, INT_LIST),
        (schema.HISTORY_PURCHASED, INT_LIST),
    ]
)
ITEM_INDEX_SCHEMA = pa.schema(
    [
        (schema.ITEM_ID, pa.string()),
        (schema.ITEM_IDX, pa.int32()),
        (schema.CATEGORY_ID, pa.string()),
        (schema.PRICE, pa.float64()),
        (schema.AVAILABLE, pa.bool_()),
        (schema.FIRST_SEEN, pa.date32()),
    ]
)
USER_STATES_SCHEMA = pa.schema(
    [
        (schema.USER_ID, pa.string()),
        (schema.ITEM_SEQ, INT_LIST),
        (schema.EVENT_SEQ, INT_LIST),
        (schema.GAP_SEQ, pa.list_(pa.float64())),
        (schema.PURCHASED, INT_LIST),
        (schema.INTERACTED, INT_LIST),
        (schema.LAST_EVENT_TIME, pa.timestamp("us", tz="UTC")),
        (schema.N_EVENTS, pa.int64()),
    ]
)
REWARDS = {schema.VIEW: 0.0, schema.ADD_TO_CART: 0.3, schema.PURCHASE: 1.0, schema.RATING: 0.5}


def write_parquet(
    folder: Path, table: pa.Table, *, files: int = 1, row_group_size: int | None = None
) -> Path:
    """Write ``table`` as ``files`` part files (plus _SUCCESS) under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    per_file = -(-table.num_rows // files) if table.num_rows else 0
    for i in range(files):
        chunk = table.slice(i * per_file, per_file) if per_file else table
        pq.write_table(chunk, folder / f"part-{i:05d}.parquet", row_group_size=row_group_size)
    (folder / "_SUCCESS").touch()
    return folder


def transitions_table(rows: list[dict]) -> pa.Table:
    """Rows with item_seq, event_seq (codes), action, event_type and optional reward/done/split and the
    validation rows' history_items / history_purchased (null when not given)."""
    columns = {name: [] for name in TRANSITIONS_SCHEMA.names}
    for i, row in enumerate(rows):
        columns[schema.USER_ID].append(row.get("user_id", f"u{i}"))
        columns[schema.EVENT_TIME].append(row.get("event_time", i * 1_000_000))
        columns[schema.ITEM_SEQ].append(row["item_seq"])
        columns[schema.EVENT_SEQ].append(
            row.get("event_seq", [schema.EVENT_CODE[schema.VIEW]] * len(row["item_seq"]))
        )
        columns[schema.ACTION].append(row["action"])
        columns[schema.EVENT_TYPE].append(row.get("event_type", schema.VIEW))
        columns[schema.REWARD].append(row.get("reward", REWARDS[row.get("event_type", schema.VIEW)]))
        columns[schema.DONE].append(row.get("done", False))
        columns[schema.SPLIT].append(row.get("split", schema.TRAIN))
        columns[schema.HISTORY_ITEMS].append(row.get("history_items"))
        columns[schema.HISTORY_PURCHASED].append(row.get("history_purchased"))
    return pa.table(columns, schema=TRANSITIONS_SCHEMA)


def item_index_table(
    n_items: int,
    *,
    categories: list[str | None] | None = None,
    prices: list[float | None] | None = None,
    available: list[bool | None] | None = None,
) -> pa.Table:
    """Items i1..iN with item_idx 1..N."""
    return pa.table(
        {
            schema.ITEM_ID: [f"i{i}" for i in range(1, n_items + 1)],
            schema.ITEM_IDX: list(range(1, n_items + 1)),
            schema.CATEGORY_ID: categories or [f"c{i % 3}" for i in range(1, n_items + 1)],
            schema.PRICE: prices or [float(2 ** (i % 6)) for i in range(1, n_items + 1)],
            schema.AVAILABLE: available or [True] * n_items,
            schema.FIRST_SEEN: pa.array([0] * n_items, pa.date32()),
        },
        schema=ITEM_INDEX_SCHEMA,
    )


RECENT = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
"""Default last event of a factory user: within score.active_window (30 days on a time split) of every run date the tests use."""


def user_states_table(rows: list[dict]) -> pa.Table:
    """Rows with user_id, item_seq and optional event_seq / purchased / interacted (default: the state's items)."""
    columns = {name: [] for name in USER_STATES_SCHEMA.names}
    for row in rows:
        items = row["item_seq"]
        columns[schema.USER_ID].append(row["user_id"])
        columns[schema.ITEM_SEQ].append(items)
        columns[schema.EVENT_SEQ].append(row.get("event_seq", [schema.EVENT_CODE[schema.VIEW]] * len(items)))
        columns[schema.GAP_SEQ].append([0.0] * len(items))
        columns[schema.PURCHASED].append(row.get("purchased", []))
        columns[schema.INTERACTED].append(row.get("interacted", sorted(set(items))))
        columns[schema.LAST_EVENT_TIME].append(row.get("last_event_time", RECENT))
        columns[schema.N_EVENTS].append(len(items))
    return pa.table(columns, schema=USER_STATES_SCHEMA)


def successor(item: int, n_items: int) -> int:
    """The synthetic shop's hidden rule: what a user looks at after ``item`` (a permutation)."""
    return (item * 7 + 3) % n_items + 1


def make_shop(
    root: Path,
    *,
    n_items: int = 30,
    n_users: int = 40,
    steps: int = 12,
    max_len: int = 8,
    val_steps: int = 2,
    noise: float = 0.1,
    seed: int = 0,
) -> tuple[Path, Path]:
    """A tiny learnable shop: users follow ``successor`` with some noise.

    Returns (transitions_dir, item_index_dir); the last ``val_steps`` transitions of every user
    are the validation split. About every fifth event is a purchase, every third an add-to-cart.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(n_users):
        items = [int(rng.integers(1, n_items + 1))]
        events = [schema.EVENT_CODE[schema.VIEW]]
        for step in range(steps):
            nxt = successor(items[-1], n_items) if rng.random() > noise else int(rng.integers(1, n_items + 1))
            cycle = user + step
            event_type = (
                schema.PURCHASE if cycle % 5 == 4 else schema.ADD_TO_CART if cycle % 3 == 2 else schema.VIEW
            )
            rows.append(
                {
                    "user_id": f"u{user}",
                    "item_seq": items[-max_len:],
                    "event_seq": events[-max_len:],
                    "action": nxt,
                    "event_type": event_type,
                    "done": step == steps - 1,
                    "split": schema.VALIDATION if step >= steps - val_steps else schema.TRAIN,
                }
            )
            items.append(nxt)
            events.append(schema.EVENT_CODE[event_type])
    transitions = write_parquet(root / "transitions", transitions_table(rows), files=2, row_group_size=64)
    item_index = write_parquet(root / "item_index", item_index_table(n_items))
    return transitions, item_index


def write_night(layout, run_date: str, *, n_items: int = 30, n_users: int = 40, max_len: int = 8) -> None:
    """The curated partitions one night reads (transitions, item_index, user_states) for ``run_date``.

    ``layout`` is a ``dql_model.contract.layout.Layout``; the shop is ``make_shop``'s, and each user's state
    follows the same hidden rule, so a trained model scores it well. No Spark needed.
    """
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="dqlrec-shop-") as tmp:
        transitions, item_index = make_shop(Path(tmp), n_items=n_items, n_users=n_users, max_len=max_len)
        for table, folder in ((schema.TRANSITIONS, transitions), (schema.ITEM_INDEX, item_index)):
            shutil.copytree(folder, layout.partition(table, run_date), dirs_exist_ok=True)
    states = []
    for user in range(n_users):
        items = [user % n_items + 1]
        while len(items) < max_len:
            items.append(successor(items[-1], n_items))
        states.append({"user_id": f"u{user}", "item_seq": items, "purchased": items[:1] if user % 4 == 0 else []})
    write_parquet(Path(layout.partition(schema.USER_STATES, run_date)), user_states_table(states))


# --------------------------------------------------------------------------------------------
# Logs in other systems' native formats (what `dqlrec import` reads), written by a hidden rule


def foreign_log(
    *, n_users: int = 40, n_items: int = 30, events: int = 12, span_days: int = 6, repeats: bool = True, seed: int = 0
) -> list[tuple[int, int, int]]:
    """(unix seconds, user, item) rows: each user walks the ``successor`` rule with some noise,
    spread over ``span_days`` days ending 2026-11-27; without ``repeats`` no user meets an item twice
    (a ratings log)."""
    rng = np.random.default_rng(seed)
    end = 1_795_824_000  # 2026-11-28 00:00 UTC
    rows = []
    for user in range(1, n_users + 1):
        times = np.sort(rng.uniform(end - span_days * 86_400, end - 60, size=events)).astype(int)
        item, seen = int(rng.integers(1, n_items + 1)), set()
        for t in times:
            if not repeats:
                tries = 0
                while item in seen and tries < n_items:
                    item, tries = successor(item, n_items), tries + 1
                seen.add(item)
            rows.append((int(t), user, item))
            item = successor(item, n_items) if rng.random() > 0.15 else int(rng.integers(1, n_items + 1))
    return rows


def write_retailrocket(folder: Path, rows: list[tuple[int, int, int]], *, n_items: int = 30) -> Path:
    """events.csv (ms, visitorid, view/addtocart/transaction, itemid, transactionid) and item properties."""
    folder.mkdir(parents=True, exist_ok=True)
    kinds = ("view", "view", "addtocart", "view", "transaction")
    lines = ["timestamp,visitorid,event,itemid,transactionid"]
    for n, (t, user, item) in enumerate(rows):
        kind = kinds[n % len(kinds)]
        lines.append(f"{t * 1000},{user},{kind},{100 + item},{9000 + n if kind == 'transaction' else ''}")
    (folder / "events.csv").write_text("\n".join(lines) + "\n")
    first = min(t for t, _, _ in rows) * 1000
    props = ["timestamp,itemid,property,value"]
    for item in range(1, n_items + 1):
        props += [f"{first},{100 + item},categoryid,{item % 4}", f"{first},{100 + item},available,1"]
    (folder / "item_properties_part1.csv").write_text("\n".join(props) + "\n")
    return folder


def write_movielens_100k(folder: Path, rows: list[tuple[int, int, int]]) -> Path:
    """u.data (user, item, rating, seconds; tab separated): ratings only."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"{user}\t{item}\t{1 + (user + item) % 5}\t{t}" for t, user, item in rows]
    (folder / "u.data").write_text("\n".join(lines) + "\n")
    return folder


def write_views_csv(path: Path, rows: list[tuple[int, int, int]]) -> Path:
    """A shop's own click log: ts (ms), visitor, sku; every row a view."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["ts,visitor,sku"] + [f"{t * 1000},v{user},sku-{item}" for t, user, item in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


LOCAL_CLUSTER = "local-cluster[2,1,1024]"
"""Two executors of one core and 1 GiB: separate JVMs and Python workers, as on a real cluster."""


def local_cluster_session(app_name: str, **conf: str):
    """A SparkSession on LOCAL_CLUSTER once both executors have registered (for a driver run in a child
    process: the tests' own session is local[1]); prints ``master ..., executors N``."""
    import time

    from pyspark.sql import SparkSession

    from dql_model.contract.steps import FAST_JVM_OPTIONS

    builder = (
        SparkSession.builder.master(LOCAL_CLUSTER)
        .appName(app_name)
        .config("spark.executor.memory", "512m")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.extraJavaOptions", FAST_JVM_OPTIONS)
        .config("spark.executor.extraJavaOptions", FAST_JVM_OPTIONS)
    )
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    status = spark.sparkContext._jsc.sc().getExecutorMemoryStatus
    deadline = time.monotonic() + 120
    while status().size() < 3 and time.monotonic() < deadline:  # the driver and two executors
        time.sleep(0.5)
    print(f"master {spark.sparkContext.master}, executors {status().size() - 1}", flush=True)
    return spark


def item_features(n_items: int, unavailable=()):
    """A catalogue of ``n_items`` items "i1".."iN" in one category and price bucket, ``unavailable`` out of stock."""
    from dql_model.warehouse import data

    available = np.ones(n_items + 1, dtype=bool)
    available[0] = False
    available[list(unavailable)] = False
    return data.ItemFeatures(
        item_ids=np.array([None] + [f"i{i}" for i in range(1, n_items + 1)], dtype=object),
        category=np.zeros(n_items + 1, dtype=np.int64),
        price_bucket=np.zeros(n_items + 1, dtype=np.int64),
        available=available,
        category_ids=[],
    )
