"""`dqlrec import` of RetailRocket-shaped files next to pyarrow reading the same files.

``python -m benchmarks.bench_import [--scale 1.0]`` (or ``DQLREC_BENCH_IMPORT_SCALE``; ``--quick`` or
``DQLREC_BENCH_QUICK=1``: scale 0.002, a few seconds): the four files of RetailRocket's layout
(``events.csv``, both ``item_properties_part*.csv``, ``category_tree.csv``) at ``scale`` times its size
(benchmarks/retailrocket_shape.py: 1.41M visitors, 2.76M events, 235k items with events, 417k items in
20.3M property rows at 1.0), cached under var/bench/import-rr/. Each reader runs in its own child
process, timed from start to exit with its own peak RSS (``os.wait4``):

- ``dqlrec import --format retailrocket`` into a fresh warehouse (events, items, category check);
- pyarrow ``read_csv`` of every file (multi-threaded, types inferred): the files into memory;
- pyarrow ``open_csv`` of every file streamed single-threaded, every column a string: the reading
  the importer does, without checks or writes.

The table gives each one's seconds, rows/s, MB/s, peak RSS and its time as a multiple of pyarrow's
``read_csv``; the import's counts are checked against what the generator drew (events, rows
without a visitor, property rows, days). Writes var/bench/import.json.

``python -m benchmarks.bench_import --rows 1M`` (or ``DQLREC_BENCH_IMPORT_ROWS``) runs the older
events-only comparison instead, with DuckDB, and writes var/bench/import_events.json:

1. generates ``events.csv`` in RetailRocket's layout (ms timestamps spread over 138 days in
   random order, as in the real file, so every chunk spans every day; 96.7% views, 2.5% carts,
   0.8% transactions; one row in 10,000 without a visitor, to be quarantined), cached under
   var/bench/import-data/ while the row count and the generation are unchanged;
2. runs each reader in its own child process, timed from start to exit, with the child's peak
   RSS from ``os.wait4`` (Linux starts a child's peak from its parent's RSS at fork, so this
   process imports nothing heavy and generates the file in a child too):
   - ``dqlrec import --format retailrocket`` into a fresh warehouse (events only: no item files);
   - pyarrow ``read_csv`` (multi-threaded, types inferred): the file into memory, nothing else;
   - pyarrow ``open_csv`` streamed single-threaded with every column a string: the reading the
     importer does (single-threaded so pyarrow reports line numbers), without checks or writes;
   - DuckDB: the same mapping and the same day partitions written with ``COPY ... PARTITION_BY``
     (no line numbers, no quarantine: the floor for a columnar engine doing the job);
3. checks the import's balance (rows = accepted + quarantined, the quarantined count equal to
   the rows generated without a visitor) and prints rows/s, MB/s and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks import retailrocket_shape
from benchmarks.common import BENCH_DIR, print_table, quick_mode, write_json

ROWS_ENV = "DQLREC_BENCH_IMPORT_ROWS"
SCALE_ENV = "DQLREC_BENCH_IMPORT_SCALE"
DEFAULT_SCALE = 1.0
QUICK_SCALE, QUICK_PROPERTY_ROWS = 0.002, 5.0
RR_VERSION = 1  # bump when retailrocket_shape's files change
RR_DIR = BENCH_DIR / "import-rr"
GENERATION_VERSION = 1  # bump when the generated file changes
DATA_DIR = BENCH_DIR / "import-data"
START_MS = 1_430_622_000_000  # 2015-05-03, RetailRocket's first day
DAYS = 138
N_VISITORS, N_ITEMS = 1_400_000, 235_000
BLOCK_ROWS = 1_000_000
NO_VISITOR_EVERY = 10_000
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def parse_rows(text: str) -> int:
    text = text.strip().lower().replace("_", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


# --- data ----------------------------------------------------------------------------------------


def generate(path: Path, rows: int, seed: int = 10) -> None:
    """Write ``rows`` RetailRocket-format events to ``path``, block by block (never all in memory)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    names = ["timestamp", "visitorid", "event", "itemid", "transactionid"]
    schema = pa.schema([(n, pa.string()) for n in names])
    written, next_transaction = 0, 1
    with pacsv.CSVWriter(partial, schema, write_options=pacsv.WriteOptions(quoting_style="none")) as out:
        while written < rows:
            n = min(BLOCK_ROWS, rows - written)
            stamp = START_MS + rng.integers(0, DAYS * 86_400_000, n)
            visitor = rng.integers(0, N_VISITORS, n).astype(str).astype(object)
            first = NO_VISITOR_EVERY - written % NO_VISITOR_EVERY - 1
            visitor[first::NO_VISITOR_EVERY] = ""
            kind = rng.choice(
                np.array(["view", "addtocart", "transaction"], dtype=object), n, p=[0.967, 0.025, 0.008]
            )
            item = np.minimum(rng.zipf(1.3, n), N_ITEMS) + rng.integers(0, 3, n) * N_ITEMS
            bought = kind == "transaction"
            transaction = np.full(n, None, dtype=object)
            transaction[bought] = np.arange(next_transaction, next_transaction + bought.sum()).astype(str)
            next_transaction += int(bought.sum())
            table = pa.table(
                [
                    pc.cast(pa.array(stamp), pa.string()),
                    pa.array(visitor, pa.string()),
                    pa.array(kind, pa.string()),
                    pc.cast(pa.array(item), pa.string()),
                    pa.array(transaction, pa.string()),
                ],
                schema=schema,
            )
            out.write_table(table)
            written += n
    os.replace(partial, path)


def dataset(rows: int) -> Path:
    folder = DATA_DIR / f"rows-{rows}-v{GENERATION_VERSION}"
    path = folder / "events.csv"
    if not path.is_file():
        shutil.rmtree(DATA_DIR, ignore_errors=True)  # one generated file at a time: they are large
        started = time.perf_counter()
        # In a child: this process stays small, and a child's peak RSS starts from its parent's at fork.
        argv = [sys.executable, "-m", "benchmarks.bench_import", "--child", "generate", str(path), str(rows)]
        env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
        subprocess.run(argv, check=True, cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL)
        print(
            f"generated {path} ({path.stat().st_size / 2**20:,.0f} MiB) in {time.perf_counter() - started:.0f}s"
        )
    return path


# --- children ------------------------------------------------------------------------------------


def child(kind: str, path: str, out: str) -> dict:
    """What runs inside a measured child process; returns the rows it read."""
    if kind == "generate":
        generate(Path(path), int(out))
        return {"rows": int(out)}
    if kind == "generate-rr":
        scale, rows_per_item = (float(v) for v in out.split(","))
        return retailrocket_shape.write(Path(path), scale, property_rows_per_item=rows_per_item)
    if kind == "pyarrow-read":
        import pyarrow.csv as pacsv

        return {"rows": sum(pacsv.read_csv(p).num_rows for p in _csv_files(Path(path)))}
    if kind == "pyarrow-stream-all":
        import pyarrow as pa
        import pyarrow.csv as pacsv

        rows = 0
        for file in _csv_files(Path(path)):
            names = pacsv.read_csv(file, read_options=pacsv.ReadOptions(block_size=1 << 16)).column_names
            reader = pacsv.open_csv(
                file,
                read_options=pacsv.ReadOptions(block_size=32 << 20, use_threads=False),
                convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names}),
            )
            rows += sum(batch.num_rows for batch in reader)
        return {"rows": rows}
    if kind == "pyarrow-stream":
        import pyarrow as pa
        import pyarrow.csv as pacsv

        names = ["timestamp", "visitorid", "event", "itemid", "transactionid"]
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=32 << 20, use_threads=False),
            convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names}),
        )
        return {"rows": sum(batch.num_rows for batch in reader)}
    if kind == "duckdb":
        import duckdb

        con = duckdb.connect()
        con.execute(f"SET temp_directory = '{out}/.tmp'")
        con.execute(
            f"""
            COPY (
              SELECT to_timestamp(timestamp / 1000.0) AS event_time, visitorid::VARCHAR AS user_id,
                     itemid::VARCHAR AS item_id,
                     CASE event WHEN 'view' THEN 'view' WHEN 'addtocart' THEN 'add_to_cart'
                                WHEN 'transaction' THEN 'purchase' END AS event_type,
                     NULL::DOUBLE AS value, NULL::VARCHAR AS session_id,
                     CAST(to_timestamp(timestamp / 1000.0) AT TIME ZONE 'UTC' AS DATE) AS event_date
              FROM read_csv('{path}', header = true,
                            columns = {{'timestamp': 'BIGINT', 'visitorid': 'VARCHAR', 'event': 'VARCHAR',
                                        'itemid': 'VARCHAR', 'transactionid': 'VARCHAR'}})
              WHERE visitorid IS NOT NULL AND visitorid <> ''
            ) TO '{out}/events' (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (event_date))
            """
        )
        return {
            "rows": con.execute(f"SELECT count(*) FROM read_parquet('{out}/events/*/*.parquet')").fetchone()[
                0
            ]
        }
    raise ValueError(f"unknown child {kind!r}")


def _csv_files(path: Path) -> list[Path]:
    """A CSV file, or the data set's files in a folder."""
    return sorted(path.glob("*.csv")) if path.is_dir() else [path]


def run_child(argv: list[str], env: dict[str, str], scratch: Path) -> dict:
    """Run ``argv`` as a child: its wall time, its own peak RSS (os.wait4) and its JSON on stdout."""
    out_path, err_path = scratch / "child.out", scratch / "child.err"
    started = time.perf_counter()
    with out_path.open("w") as out, err_path.open("w") as err:
        process = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=PROJECT_ROOT)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(
            f"{' '.join(argv[:6])} failed (exit {process.returncode}):\n{err_path.read_text()[-3000:]}"
        )
    return {
        "seconds": seconds,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "output": json.loads(out_path.read_text()),
    }


# --- main ----------------------------------------------------------------------------------------



def _figures(reader: str, rows: int, measured: dict, *, rows_read: int, size_mb: float) -> dict[str, object]:
    """One reader's row of the table: its rows, seconds, throughput and the child's peak memory."""
    seconds = measured["seconds"]
    return {
        "reader": reader,
        "rows": rows,
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows_read / seconds),
        "mb_per_s": round(size_mb / seconds, 1),
        "peak_rss_mib": round(measured["peak_rss_mib"], 1),
    }

def main(argv: Sequence[str] = ()) -> None:
    """`python -m benchmarks` calls this without arguments: the full run (quick with DQLREC_BENCH_QUICK=1)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, help=f"RetailRocket sizes times this (default {DEFAULT_SCALE})")
    parser.add_argument(
        "--property-rows-per-item", type=float, default=retailrocket_shape.PROPERTY_ROWS_PER_ITEM,
        help="rows of the property files per item (RetailRocket: 48.6)",
    )  # fmt: skip
    parser.add_argument("--rows", default=os.environ.get(ROWS_ENV), help="events-only run: rows (10M, 1M, 200k)")
    parser.add_argument("--quick", action="store_true", help=f"scale {QUICK_SCALE}: a smoke run of seconds")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "PATH", "OUT"), help=argparse.SUPPRESS)
    options = parser.parse_args(list(argv))
    if options.child:
        print(json.dumps(child(*options.child)))
        return
    if options.rows and not options.quick:
        bench_events_only(parse_rows(options.rows))
        return
    quick = options.quick or quick_mode()
    scale = options.scale or (QUICK_SCALE if quick else float(os.environ.get(SCALE_ENV, DEFAULT_SCALE)))
    bench_retailrocket(scale, QUICK_PROPERTY_ROWS if quick else options.property_rows_per_item)


def rr_dataset(scale: float, rows_per_item: float) -> tuple[Path, dict]:
    """The RetailRocket-shaped files of this scale (generated in a child once), and what was drawn."""
    folder = RR_DIR / f"scale-{scale:g}-rows-{rows_per_item:g}-v{RR_VERSION}"
    shape_file = folder / "shape.json"
    if not shape_file.is_file():
        shutil.rmtree(RR_DIR, ignore_errors=True)  # one data set at a time: up to 0.8 GB
        started = time.perf_counter()
        argv = [sys.executable, "-m", "benchmarks.bench_import", "--child", "generate-rr", str(folder),
                f"{scale},{rows_per_item}"]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
        subprocess.run(argv, check=True, cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL)
        size = sum(p.stat().st_size for p in folder.glob("*.csv"))
        print(f"generated {folder} ({size / 2**20:,.0f} MiB) in {time.perf_counter() - started:.0f}s")
    return folder, json.loads(shape_file.read_text())


def bench_retailrocket(scale: float, rows_per_item: float) -> dict:
    folder, shape = rr_dataset(scale, rows_per_item)
    size_mb = sum(shape["files"].values()) / 1e6
    total_rows = shape["events"] + shape["property_rows"] + shape["categories"]
    scratch = BENCH_DIR / "import-run"
    python = sys.executable
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "DQLREC_WAREHOUSE__ROOT": str(scratch / "warehouse")}
    child_argv = [python, "-m", "benchmarks.bench_import", "--child"]
    runs = {
        "dqlrec import": [python, "-m", "dql_model.cli", "import", "--format", "retailrocket", str(folder), "--json"],
        "pyarrow read_csv (threads, inferred types)": [*child_argv, "pyarrow-read", str(folder), "-"],
        "pyarrow open_csv (1 thread, strings)": [*child_argv, "pyarrow-stream-all", str(folder), "-"],
    }
    results, summary = [], {}
    for name, argv_ in runs.items():
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        print(f"running {name} on {folder.name} ...", flush=True)
        measured = run_child(argv_, env, scratch)
        output = measured["output"]
        if name == "dqlrec import":
            summary = output
            rows = sum(f["rows"] for f in output["files"]) + shape["categories"]
        else:
            rows = output["rows"]
        results.append(_figures(name, rows, measured, rows_read=total_rows, size_mb=size_mb))
    shutil.rmtree(scratch, ignore_errors=True)
    _check_import(summary, shape)
    floor = results[1]["seconds"]
    for r in results:
        r["x_pyarrow_read"] = round(r["seconds"] / floor, 2)
    print_table(
        f"dqlrec import: RetailRocket layout at scale {scale:g} ({shape['events']:,} events, "
        f"{shape['property_rows']:,} property rows of {shape['property_items']:,} items, {size_mb:,.0f} MB), "
        "each reader in its own process",
        ["reader", "rows", "seconds", "rows/s", "MB/s", "peak RSS MiB", "x pyarrow read_csv"],
        [
            [r["reader"], r["rows"], r["seconds"], r["rows_per_s"], r["mb_per_s"], r["peak_rss_mib"], r["x_pyarrow_read"]]
            for r in results
        ],
    )
    figures = {
        "layout": "retailrocket",
        "scale": scale,
        "shape": shape,
        "file_mb": round(size_mb, 1),
        "results": results,
        "import": {
            "seconds_in_process": summary["seconds"],
            "days": len(summary["dates"]),
            "items_written": summary["items"]["written"],
            "warnings": summary["warnings"],
        },
    }
    write_json("import", figures)
    return figures


def _check_import(summary: dict, shape: dict) -> None:
    """The import read every row and accounted for it as the generator drew it."""
    files = {Path(f["file"]).name: f for f in summary["files"]}
    properties = sum(f["rows"] for name, f in files.items() if name.startswith("item_properties"))
    found = {
        "events": summary["input"],
        "quarantined": summary["quarantined"],
        "property_rows": properties,
        "days": len(summary["dates"]),
    }
    expected = {
        "events": shape["events"],
        "quarantined": shape["rows_without_visitor"],
        "property_rows": shape["property_rows"],
        "days": shape["event_days"],
    }
    if found != expected or summary["input"] != summary["accepted"] + summary["quarantined"]:
        raise SystemExit(f"import counts {found} != generated {expected} (or the balance is off)")


def bench_events_only(rows: int) -> None:
    path = dataset(rows)
    size_mb = path.stat().st_size / 1e6
    scratch = BENCH_DIR / "import-run"
    python = sys.executable
    env = {
        **os.environ,
        "PYTHONPATH": str(PROJECT_ROOT),
        "DQLREC_WAREHOUSE__ROOT": str(scratch / "warehouse"),
    }
    results = []
    runs = [
        (
            "dqlrec import",
            [python, "-m", "dql_model.cli", "import", "--format", "retailrocket", str(path), "--json"],
        ),
        ("pyarrow read_csv (threads, inferred types)", None),
        ("pyarrow open_csv (1 thread, strings)", None),
        ("duckdb COPY to day partitions", None),
    ]
    kinds = {runs[1][0]: "pyarrow-read", runs[2][0]: "pyarrow-stream", runs[3][0]: "duckdb"}
    for name, argv_ in runs:
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        if argv_ is None:
            argv_ = [python, "-m", "benchmarks.bench_import", "--child", kinds[name], str(path), str(scratch)]
        print(f"running {name} on {rows:,} rows ...", flush=True)
        measured = run_child(argv_, env, scratch)
        output = measured["output"]
        read = output["input"] if name == "dqlrec import" else output["rows"]
        results.append(_figures(name, read, measured, rows_read=rows, size_mb=size_mb))
        if name == "dqlrec import":
            expected_bad = len(range(NO_VISITOR_EVERY - 1, rows, NO_VISITOR_EVERY))
            balance = (output["input"], output["accepted"] + output["quarantined"], output["quarantined"])
            if balance != (rows, rows, expected_bad):
                raise SystemExit(f"import balance {balance} != ({rows}, {rows}, {expected_bad})")
            results[-1]["days"] = len(output["dates"])
    shutil.rmtree(scratch, ignore_errors=True)
    print_table(
        f"dqlrec import: RetailRocket events.csv, {rows:,} rows, {size_mb:,.0f} MB, each reader in its own process",
        ["reader", "rows", "seconds", "rows/s", "MB/s", "peak RSS MiB"],
        [
            [r["reader"], r["rows"], r["seconds"], r["rows_per_s"], r["mb_per_s"], r["peak_rss_mib"]]
            for r in results
        ],
    )
    write_json("import_events", {"rows": rows, "file_mb": round(size_mb, 1), "results": results})


if __name__ == "__main__":
    main(sys.argv[1:])
