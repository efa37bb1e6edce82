"""The Spark ETL (jobs.build_training_data) on local[2], stage by stage, next to a DuckDB reference.

For each size (default 1M and 10M events; ``DQLREC_BENCH_ETL_SIZES=200k,1M`` or
``python -m benchmarks.bench_etl 200k``; ``--quick`` or ``DQLREC_BENCH_QUICK=1``: 20k, a smoke run) it:

1. simulates the shop (``ShopSimulator``) over 28 days, then dirties the log the way trackers do:
   duplicates re-delivered 1-2 days later, late events within and beyond ``lookback_days``,
   missing user ids and unknown items; writes the raw partitions (cached under var/bench/etl-data/,
   reused while the generation settings are unchanged);
2. with a training window of the last 14 days and the time split (ETL_SETTINGS, what the reference
   implements), runs the nightly job for D-14 (full, first night) and D-1 (incremental catch-up) as setup,
   then the night D incrementally and, in a second warehouse with the same previous item index,
   as a full rebuild; each stage is timed, with the driver JVM's peak RSS (/proc VmHWM, reset
   before each stage; in local mode the JVM does all the work);
3. runs an independent DuckDB implementation of the same transformations (cleaning rules,
   duplicates, lookback, sessions, append-only item index, user states, transitions) as a full
   rebuild of night D, stage by stage, with this process's peak RSS;
4. checks that the item index, user states and transitions of the three builds are identical
   (and the full rebuild's quarantine equals the reference's), and fails if they are not.

``rows in`` is what a stage consumes: raw rows read (clean), accepted events ingested (item
index, user states) or accepted events read for the transitions and their states.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.common import BENCH_DIR, Timer, print_table, quick_mode, write_json

SIZES_ENV = "DQLREC_BENCH_ETL_SIZES"
DEFAULT_SIZES = ("1M", "10M")
N_DAYS = 28
SESSIONS_PER_USER_DAY = 0.35  # the simulator's default: many users, a few sessions each
EVENTS_PER_SESSION = 8.2  # measured on the simulator with mean_session_events=8
GENERATION_VERSION = 1  # bump when the generation or dirtying below changes
DATA_DIR = BENCH_DIR / "etl-data"
TRAIN_DAYS = 14
ETL_SETTINGS = {"train_window": f"{TRAIN_DAYS}d", "validation": "time"}
"""What the DuckDB reference implements: a window of the last TRAIN_DAYS days and the time split of
etl.val_days (the config's defaults, the whole history and an automatic protocol, are other benchmarks)."""
QUICK_SIZE = "20k"


def parse_size(text: str) -> int:
    text = text.strip().lower().replace("_", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def label(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1_000}k" if n % 1_000 == 0 else str(n)


# --- data ----------------------------------------------------------------------------------------


def generation_settings(n_target: int) -> dict[str, Any]:
    n_users = max(50, math.ceil(n_target / (N_DAYS * SESSIONS_PER_USER_DAY * EVENTS_PER_SESSION)))
    return {
        "version": GENERATION_VERSION,
        "simulator": {
            "n_users": n_users,
            "n_items": 1000,
            "n_days": N_DAYS,
            "end_date": "2026-11-27",
            "sessions_per_user_day": SESSIONS_PER_USER_DAY,
            "seed": 11,
        },
        "dirt": {
            "redelivered": 0.002,
            "late": 0.003,
            "too_late": 0.0005,
            "null_user": 0.0005,
            "unknown_item": 0.0005,
        },
    }


def prepare_data(n_target: int) -> tuple[Path, dict[str, Any]]:
    """The raw warehouse of this size (generated once per settings); returns (root, facts)."""
    settings = generation_settings(n_target)
    root = DATA_DIR / label(n_target)
    stamp = root / "settings.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("settings") == settings:
        return root, json.loads(stamp.read_text())["facts"]
    shutil.rmtree(root, ignore_errors=True)
    facts = _generate(root / "warehouse", settings)
    stamp.write_text(json.dumps({"settings": settings, "facts": facts}, indent=2))
    return root, facts


def _generate(warehouse: Path, settings: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from dql_model.config import SimulatorConfig
    from dql_model.contract import schema
    from dql_model.simulation.simulator import ShopSimulator
    from dql_model.warehouse import storage

    simulator = ShopSimulator(SimulatorConfig(**settings["simulator"]))
    with Timer() as t:
        events = simulator.generate_events()
    print(f"  simulated {events.num_rows:,} events in {t.seconds:.0f}s", flush=True)
    rng = np.random.default_rng(settings["simulator"]["seed"])
    dirt = settings["dirt"]
    n = events.num_rows
    day = events.column(schema.EVENT_DATE).cast(pa.int32()).to_numpy()
    arrival = day.copy()
    last_day = int(day.max())

    def pick(share: float) -> np.ndarray:
        return rng.random(n) < share

    late, too_late = pick(dirt["late"]), pick(dirt["too_late"])
    arrival[late] += rng.integers(1, 4, late.sum())  # within lookback_days=3
    arrival[too_late] += 5
    user = events.column(schema.USER_ID).to_numpy(zero_copy_only=False).copy()
    user[pick(dirt["null_user"])] = None
    item = events.column(schema.ITEM_ID).to_numpy(zero_copy_only=False).copy()
    item[pick(dirt["unknown_item"])] = "unknown-item"
    columns = events.drop_columns([schema.EVENT_DATE]).set_column(
        1, schema.USER_ID, pa.array(user, pa.string())
    )
    columns = columns.set_column(2, schema.ITEM_ID, pa.array(item, pa.string()))
    copies = np.flatnonzero(pick(dirt["redelivered"]))
    table = pa.concat_tables([columns, columns.take(copies)])
    arrival = np.concatenate([arrival, day[copies] + rng.integers(1, 3, copies.size)])
    keep = arrival <= last_day  # what arrives after the last day is not in this warehouse yet
    table, arrival = table.filter(pa.array(keep)), arrival[keep]

    storage.write_partition(simulator.items_table(), warehouse / "raw" / schema.ITEMS)
    order = np.argsort(arrival, kind="stable")
    table, arrival = table.take(order), arrival[order]
    bounds = np.searchsorted(arrival, np.arange(int(day.min()), last_day + 2))
    for i, d in enumerate(range(int(day.min()), last_day + 1)):
        part = table.slice(bounds[i], bounds[i + 1] - bounds[i])
        name = f"{schema.EVENT_DATE}={dt.date(1970, 1, 1) + dt.timedelta(days=d)}"
        storage.write_partition(part, warehouse / "raw" / schema.EVENTS / name)
    return {
        "events": table.num_rows,
        "users": pc.count_distinct(events.column(schema.USER_ID)).as_py(),
        "items": simulator.cfg.n_items,
        "days": last_day - int(day.min()) + 1,
        "run_date": str(simulator.last_date),
    }


def first_partition(warehouse: Path) -> dt.date:
    """The first day of raw events loaded (the job bounds its training window by it)."""
    days = [p.name.partition("=")[2] for p in (warehouse / "raw" / "events").glob("event_date=*")]
    return dt.date.fromisoformat(min(days))


# --- memory --------------------------------------------------------------------------------------


def _reset_peak(pid: int) -> None:
    with contextlib.suppress(OSError):  # Linux >= 4.0; elsewhere the peak is since process start
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextlib.contextmanager
def measured(pid: int, into: dict[str, dict[str, float]], name: str) -> Iterator[None]:
    """Record the seconds and the peak RSS of ``pid`` of the block under ``into[name]``."""
    _reset_peak(pid)
    with Timer() as t:
        yield
    into[name] = {"seconds": t.seconds, "peak_rss_mib": peak_rss_mib(pid)}


# --- Spark ---------------------------------------------------------------------------------------


def spark_session():
    """local[2] (``DQLREC_BENCH_ETL_MASTER``), driver memory ``DQLREC_BENCH_ETL_DRIVER_MEMORY`` (6g);
    the other settings, the JVM flags included, as the job gets them from the config."""
    from jobs.spark_session import get_spark

    # Progress bars would bury the stage lines in the log.
    os.environ.setdefault("PYSPARK_SUBMIT_ARGS", "--conf spark.ui.showConsoleProgress=false pyspark-shell")
    cfg = _config(Path(".")).replace(
        spark={
            "master": os.environ.get("DQLREC_BENCH_ETL_MASTER", "local[2]"),
            "driver_memory": os.environ.get("DQLREC_BENCH_ETL_DRIVER_MEMORY", "6g"),
        }
    )
    spark = get_spark(cfg.spark, "dqlrec-bench-etl")
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def _config(warehouse: Path):
    from dql_model.config import load_config

    return load_config().replace(warehouse={"root": str(warehouse)}, etl=ETL_SETTINGS)


def run_spark_night(spark, warehouse: Path, run_date: dt.date, *, incremental: bool) -> dict[str, Any]:
    from jobs.build_training_data import run

    cfg = _config(warehouse).replace(etl={"incremental": incremental})
    jvm_pid = int(spark._jvm.java.lang.ProcessHandle.current().pid())
    stages: dict[str, dict[str, float]] = {}
    with measured(jvm_pid, stages, "night"):
        summary = run(spark, cfg, run_date, on_stage=lambda name: measured(jvm_pid, stages, name))
    return {"summary": summary, "stages": stages}


# --- DuckDB reference ----------------------------------------------------------------------------


class Reference:
    """The same transformations in DuckDB SQL, written from the jobs' documented rules (a full rebuild)."""

    def __init__(self, warehouse: Path, run_date: dt.date, previous_index: Path | None) -> None:
        import duckdb

        self.etl = _config(warehouse).etl
        self.warehouse = warehouse
        self.run_date = run_date
        self.previous_index = previous_index
        self.db = duckdb.connect()
        self.db.execute("SET threads = 2; SET TimeZone = 'UTC'; SET preserve_insertion_order = false")

    def sql(self, query: str) -> None:
        self.db.execute(query)

    def run(self) -> dict[str, dict[str, float]]:
        stages: dict[str, dict[str, float]] = {}
        with measured(os.getpid(), stages, "night"):
            for name in ("clean", "item_index", "user_states", "transitions"):
                with measured(os.getpid(), stages, name):
                    getattr(self, name)()
        return stages

    def clean(self) -> None:
        etl, d = self.etl, self.run_date
        raw = self.warehouse / "raw"
        index_ids = (
            f"UNION SELECT item_id FROM read_parquet('{self.previous_index}/*.parquet')"
            if self.previous_index
            else ""
        )
        self.sql(f"""
            CREATE TABLE known AS
            SELECT DISTINCT item_id FROM read_parquet('{raw}/items/*.parquet') WHERE item_id IS NOT NULL
            {index_ids}
        """)
        self.sql(f"""
            CREATE TABLE checked AS
            SELECT e.event_time::TIMESTAMP AS event_time, e.user_id, e.item_id, e.event_type, e.value,
                   e.session_id, e.event_date::DATE AS event_date,
                   CASE
                     WHEN e.user_id IS NULL OR trim(e.user_id) = '' OR e.item_id IS NULL
                          OR trim(e.item_id) = '' OR e.event_time IS NULL THEN 'null_id'
                     WHEN e.event_type IS NULL
                          OR e.event_type NOT IN ('view', 'add_to_cart', 'purchase', 'rating') THEN 'bad_event_type'
                     WHEN k.item_id IS NULL THEN 'unknown_item'
                     WHEN e.event_type = 'rating' AND NOT coalesce(e.value BETWEEN 1 AND 5, false) THEN 'bad_value'
                     WHEN e.event_time::TIMESTAMP >= DATE '{d}' + 1
                          OR e.event_time::TIMESTAMP >= e.event_date::DATE + 1
                          OR e.event_time::TIMESTAMP < e.event_date::DATE - {etl.lookback_days}
                          THEN 'event_time_out_of_range'
                   END AS rule
            FROM read_parquet('{raw}/events/*/*.parquet', hive_partitioning = true) e
            LEFT JOIN known k USING (item_id)
            WHERE e.event_date::DATE <= DATE '{d}'
        """)
        self.sql("""
            CREATE TABLE labelled AS
            SELECT * EXCLUDE (rule),
                   CASE WHEN rule IS NULL AND row_number() OVER (
                            PARTITION BY event_time, user_id, item_id, event_type, value, session_id, rule
                            ORDER BY event_date) > 1
                        THEN 'duplicate' ELSE rule END AS rule
            FROM checked
        """)
        self.sql("""
            CREATE TABLE quarantine AS
            SELECT event_time, user_id, item_id, event_type, value, session_id, rule,
                   'event_date=' || event_date::VARCHAR AS source_partition
            FROM labelled WHERE rule IS NOT NULL
        """)
        # Sessions: a null session_id starts a session after a gap, after a tracked event, or first.
        self.sql(f"""
            CREATE TABLE accepted AS
            WITH coded AS (
                SELECT *, CASE event_type WHEN 'view' THEN 1 WHEN 'add_to_cart' THEN 2
                                          WHEN 'purchase' THEN 3 WHEN 'rating' THEN 4 END AS code
                FROM labelled WHERE rule IS NULL
            ), marked AS (
                SELECT *, session_id IS NULL AND (
                           lag(event_time) OVER w IS NULL
                           OR (epoch_us(event_time) - epoch_us(lag(event_time) OVER w)) / 1e6
                              > {etl.session_gap_minutes * 60}
                           OR lag(session_id) OVER w IS NOT NULL) AS starts
                FROM coded
                WINDOW w AS (PARTITION BY user_id
                             ORDER BY event_time, code, item_id, value NULLS FIRST, session_id NULLS FIRST)
            )
            SELECT event_time, user_id, item_id, event_type, value, code, event_date,
                   coalesce(session_id, 'inferred:' || user_id || ':' || epoch_us(
                       last_value(CASE WHEN starts THEN event_time END IGNORE NULLS) OVER (
                           PARTITION BY user_id
                           ORDER BY event_time, code, item_id, value NULLS FIRST, session_id NULLS FIRST
                           ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW))::VARCHAR) AS session_id
            FROM marked
        """)

    def item_index(self) -> None:
        d = self.run_date
        previous = (
            f"SELECT * FROM read_parquet('{self.previous_index}/*.parquet')"
            if self.previous_index
            else "SELECT NULL::VARCHAR item_id, NULL::INT item_idx, NULL::VARCHAR category_id, "
            "NULL::DOUBLE price, NULL::BOOLEAN available, NULL::DATE first_seen WHERE false"
        )
        self.sql(f"CREATE TABLE previous_index AS {previous}")
        self.sql(f"""
            CREATE TABLE item_index AS
            WITH catalogue AS (
                SELECT item_id, category_id, price, available FROM (
                    SELECT *, row_number() OVER (PARTITION BY item_id ORDER BY available DESC NULLS LAST,
                                                 price DESC NULLS LAST, category_id ASC NULLS LAST) AS r
                    FROM read_parquet('{self.warehouse}/raw/items/*.parquet') WHERE item_id IS NOT NULL)
                WHERE r = 1
            ), first_event AS (
                SELECT item_id, min(event_time) AS first_time FROM accepted GROUP BY item_id
            ), new_items AS (
                SELECT c.item_id, coalesce(f.first_time, (DATE '{d}' + 1)::TIMESTAMP) AS first_time
                FROM (SELECT item_id FROM catalogue UNION SELECT item_id FROM first_event) c
                LEFT JOIN first_event f USING (item_id)
                WHERE c.item_id NOT IN (SELECT item_id FROM previous_index)
            ), ids AS (
                SELECT item_id, item_idx, first_seen FROM previous_index
                UNION ALL
                SELECT item_id,
                       ((SELECT coalesce(max(item_idx), 0) FROM previous_index)
                        + row_number() OVER (ORDER BY first_time, item_id))::INT,
                       least(first_time::DATE, DATE '{d}')
                FROM new_items
            )
            SELECT i.item_id, i.item_idx,
                   CASE WHEN c.item_id IS NOT NULL THEN c.category_id ELSE p.category_id END AS category_id,
                   CASE WHEN c.item_id IS NOT NULL THEN c.price ELSE p.price END AS price,
                   coalesce(c.available, false) AS available,
                   i.first_seen
            FROM ids i LEFT JOIN catalogue c USING (item_id) LEFT JOIN previous_index p USING (item_id)
        """)

    def user_states(self) -> None:
        max_len = self.etl.max_len
        self.sql("""
            CREATE TABLE ordered AS
            SELECT a.user_id, a.event_time, a.event_type, a.code, a.session_id, a.value, i.item_idx,
                   row_number() OVER w AS pos,
                   coalesce((epoch_us(a.event_time) - epoch_us(lag(a.event_time) OVER w)) / 1e6, 0.0) AS gap,
                   count(*) OVER (PARTITION BY a.user_id) AS n
            FROM accepted a JOIN item_index i USING (item_id)
            WINDOW w AS (PARTITION BY a.user_id
                         ORDER BY a.event_time, a.code, a.item_id, a.value NULLS FIRST, a.session_id NULLS FIRST)
        """)
        self.sql(f"""
            CREATE TABLE user_states AS
            SELECT user_id,
                   list(item_idx ORDER BY pos) FILTER (WHERE pos > n - {max_len}) AS item_seq,
                   list(code ORDER BY pos) FILTER (WHERE pos > n - {max_len}) AS event_seq,
                   list(gap ORDER BY pos) FILTER (WHERE pos > n - {max_len}) AS gap_seq,
                   coalesce(list_sort(list_distinct(list(item_idx) FILTER (WHERE event_type = 'purchase'))),
                            []::INT[]) AS purchased,
                   max(event_time) AS last_event_time,
                   count(*) AS n_events
            FROM ordered GROUP BY user_id
        """)

    def transitions(self) -> None:
        etl, d = self.etl, self.run_date
        from dql_model.config import train_window_start

        window_start = train_window_start(etl.train_window, d, first_partition(self.warehouse))
        val_start = d - dt.timedelta(days=etl.val_days - 1)
        scale = float(etl.reward_rating_scale)
        self.sql(f"""
            CREATE TABLE transitions AS
            WITH framed AS (
                SELECT *,
                       list(item_idx) OVER prev AS item_seq,
                       list(code) OVER prev AS event_seq,
                       lead(event_time) OVER w IS NULL
                         OR lead(session_id) OVER w IS DISTINCT FROM session_id AS done
                FROM ordered
                WINDOW w AS (PARTITION BY user_id ORDER BY pos),
                       prev AS (PARTITION BY user_id ORDER BY pos
                                ROWS BETWEEN {etl.max_len} PRECEDING AND 1 PRECEDING)
            )
            SELECT user_id, event_time,
                   coalesce(item_seq, []::INT[]) AS item_seq, coalesce(event_seq, []::INT[]) AS event_seq,
                   item_idx AS action, event_type,
                   CASE event_type
                     WHEN 'view' THEN {float(etl.reward_view)}::DOUBLE
                     WHEN 'add_to_cart' THEN {float(etl.reward_add_to_cart)}::DOUBLE
                     WHEN 'purchase' THEN {float(etl.reward_purchase)}::DOUBLE
                     WHEN 'rating' THEN greatest(-1.0::DOUBLE, least(1.0::DOUBLE,
                          coalesce({scale}::DOUBLE * (value - 3.0::DOUBLE) / 2.0::DOUBLE, 0.0::DOUBLE)))
                     ELSE 0.0::DOUBLE END AS reward,
                   done,
                   CASE WHEN event_time >= DATE '{val_start}' THEN 'validation' ELSE 'train' END AS split
            FROM framed
            WHERE event_time >= DATE '{window_start}' AND event_time < DATE '{d}' + 1
        """)

    def rows_in(self, read_from: str | None, ingested_from: str | None, transitions_from: str | None) -> dict:
        """Rows each stage of a Spark run with these partition bounds consumed (from the reference's tables)."""

        def count(table: str, where: str, first: str | None) -> int:
            bound = f"event_date >= DATE '{first}'" if first else "true"
            return self.db.execute(f"SELECT count(*) FROM {table} WHERE {where} AND {bound}").fetchone()[0]

        ingested = count("labelled", "rule IS NULL", ingested_from)
        return {
            "clean": count("labelled", "true", read_from),
            "item_index": ingested,
            "user_states": ingested,
            "transitions": count("labelled", "rule IS NULL", transitions_from),
        }


# --- comparison ----------------------------------------------------------------------------------

_COLUMNS = {
    "item_index": "item_id, item_idx, category_id, price, available, first_seen",
    "user_states": "user_id, item_seq, event_seq, gap_seq, purchased, last_event_time::TIMESTAMP, n_events",
    "transitions": "user_id, event_time::TIMESTAMP, item_seq, event_seq, action, event_type, reward, done, split",
    "quarantine": "event_time::TIMESTAMP, user_id, item_id, event_type, value, session_id, rule, source_partition",
}


def compare(ref: Reference, table: str, folder: Path) -> dict[str, int]:
    """Row counts of a Spark partition and the reference table, and the rows in one but not the
    other (multiset differences both ways: 0 means identical)."""
    cols = _COLUMNS[table]
    spark_rows = f"(SELECT {cols} FROM read_parquet('{folder}/*.parquet'))"
    ref_rows = f"(SELECT {cols} FROM {table})"

    def scalar(query: str) -> int:
        return ref.db.execute(query).fetchone()[0]

    return {
        "spark_rows": scalar(f"SELECT count(*) FROM {spark_rows}"),
        "reference_rows": scalar(f"SELECT count(*) FROM {ref_rows}"),
        "differences": scalar(f"SELECT count(*) FROM ({spark_rows} EXCEPT ALL {ref_rows})")
        + scalar(f"SELECT count(*) FROM ({ref_rows} EXCEPT ALL {spark_rows})"),
    }


# --- the benchmark -------------------------------------------------------------------------------


def bench_size(spark, n_target: int, *, quick: bool = False) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Night D at this size; ``quick``: its full rebuild as a first night against the reference, nothing else."""
    print(f"\n[bench_etl] {label(n_target)} events: preparing data", flush=True)
    root, facts = prepare_data(n_target)
    run_date = dt.date.fromisoformat(facts["run_date"])
    etl = _config(root).etl
    from dql_model.config import train_window_start

    window_start = train_window_start(etl.train_window, run_date, first_partition(root / "warehouse"))
    seed_night = window_start - dt.timedelta(days=1)  # its states seed night D's transitions
    incremental_wh, full_wh = root / "warehouse", root / "full-rebuild"
    shutil.rmtree(incremental_wh / "curated", ignore_errors=True)
    shutil.rmtree(full_wh, ignore_errors=True)

    # About 600k rows per shuffle partition, at least 8 (the config's default).
    spark.conf.set("spark.sql.shuffle.partitions", str(max(8, round(facts["events"] / 625_000))))
    timings: dict[str, Any] = {}
    nights = [] if quick else [seed_night, run_date - dt.timedelta(days=1), run_date]
    for night in nights:
        print(f"[bench_etl] spark: night {night}", flush=True)
        timings[str(night)] = run_spark_night(spark, incremental_wh, night, incremental=True)
    previous_index = None
    if not quick:
        previous_index = incremental_wh / "curated" / "item_index" / f"run_date={run_date - dt.timedelta(days=1)}"
        shutil.copytree(previous_index, full_wh / "curated" / "item_index" / previous_index.name)
    full_wh.mkdir(parents=True, exist_ok=True)
    (full_wh / "raw").symlink_to((incremental_wh / "raw").resolve(), target_is_directory=True)
    print(f"[bench_etl] spark: night {run_date}, full rebuild", flush=True)
    full = run_spark_night(spark, full_wh, run_date, incremental=False)

    print("[bench_etl] duckdb reference: full rebuild", flush=True)
    ref = Reference(incremental_wh, run_date, previous_index)
    ref_stages = ref.run()

    builds = {"full": (full_wh, full)} if quick else {
        "incremental": (incremental_wh, timings[str(run_date)]), "full": (full_wh, full)
    }  # fmt: skip
    checks = {}
    for name, (warehouse, _) in builds.items():
        for table in ("item_index", "user_states", "transitions"):
            checks[f"{name}/{table}"] = compare(
                ref, table, warehouse / "curated" / table / f"run_date={run_date}"
            )
    checks["full/quarantine"] = compare(
        ref, "quarantine", full_wh / "curated" / "quarantine" / f"run_date={run_date}"
    )

    rows = []
    n_raw = facts["events"]
    for name, (_, run) in builds.items():
        implementation = "spark incremental" if name == "incremental" else "spark full rebuild"
        summary = run["summary"]
        seed = summary["transitions_seed_states"]
        transitions_from = str(dt.date.fromisoformat(seed) + dt.timedelta(days=1)) if seed else None
        rows_in = ref.rows_in(
            summary["partitions"]["read_from"], summary["partitions"]["ingested_from"], transitions_from
        )
        rows_in["night"] = rows_in["clean"]
        rows += _rows(n_target, implementation, run["stages"], rows_in)
    rows_in = ref.rows_in(None, None, None)
    rows_in["night"] = rows_in["clean"]
    rows += _rows(n_target, "duckdb reference", ref_stages, rows_in)
    setup = {
        night: {"mode": t["summary"]["mode"], "seconds": t["stages"]["night"]["seconds"]}
        for night, t in timings.items()
        if night != str(run_date)
    }
    result = {
        "size": label(n_target),
        "raw_events": n_raw,
        "facts": facts,
        "setup_nights": setup,
        "checks": checks,
    }
    for night, t in setup.items():
        print(f"[bench_etl] setup night {night} ({t['mode']}): {t['seconds']:.1f}s", flush=True)
    return rows, result


def _rows(n_target, implementation, stages, rows_in) -> list[dict[str, Any]]:
    out = []
    for stage in ("clean", "item_index", "user_states", "transitions", "night"):
        seconds = stages[stage]["seconds"]
        out.append(
            {
                "size": label(n_target),
                "implementation": implementation,
                "stage": stage,
                "rows_in": rows_in[stage],
                "seconds": seconds,
                "rows_per_s": rows_in[stage] / seconds if seconds > 0 else float("nan"),
                "peak_rss_mib": stages[stage]["peak_rss_mib"],
            }
        )
    return out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    quick = quick_mode(argv)  # one small size: a smoke run
    default = QUICK_SIZE if quick else os.environ.get(SIZES_ENV, ",".join(DEFAULT_SIZES))
    chosen = [a for a in argv if a[:1].isdigit()] or default.split(",")
    sizes = [parse_size(s) for s in chosen if s.strip()]
    spark = spark_session()
    try:
        rows, results = [], []
        for n in sizes:
            size_rows, result = bench_size(spark, n, quick=quick)
            rows += size_rows
            results.append(result)
    finally:
        spark.stop()
    print_table(
        "ETL: jobs.build_training_data on local[2] vs a DuckDB reference (2 threads), night D",
        ["size", "implementation", "stage", "rows in", "seconds", "rows/s", "peak RSS MiB"],
        [
            [
                r["size"],
                r["implementation"],
                r["stage"],
                r["rows_in"],
                r["seconds"],
                r["rows_per_s"],
                r["peak_rss_mib"],
            ]
            for r in rows
        ],
    )
    print_table(
        "ETL: Spark's night D against the DuckDB reference (differences: rows in one and not the other)",
        ["size", "spark build", "table", "spark rows", "reference rows", "differences"],
        [
            [r["size"], *name.split("/"), c["spark_rows"], c["reference_rows"], c["differences"]]
            for r in results
            for name, c in r["checks"].items()
        ],
    )
    write_json("etl", {"rows": rows, "sizes": results})
    bad = {
        f"{r['size']} {name}": c
        for r in results
        for name, c in r["checks"].items()
        if c["differences"] or c["spark_rows"] != c["reference_rows"]
    }
    if bad:
        raise SystemExit(f"Spark and the DuckDB reference disagree: {bad}")


if __name__ == "__main__":
    main()
