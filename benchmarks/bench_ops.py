"""Cost of the platform's housekeeping: the raw gate's drift check and a year of retention.

- drift: ``quality.input_drift`` on 8 nights of synthetic events (5M users, 500k items, the usual
  event mix) at a RetailRocket-like night (100k events) and a mid-size shop's night (1.1M events:
  100M events in 90 days);
- retention: a year of nights in every layer (one small file per folder, 365 registry versions, the
  last one champion) in a scratch warehouse under var/bench/ops, then ``dqlrec prune``'s plan and
  its removal with the default retention config, then the plan of the next week.

    python -m benchmarks.bench_ops          (--quick or DQLREC_BENCH_QUICK=1: 10k events, 30 nights)

Prints the machine with the figures and writes var/bench/ops.json.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from benchmarks.common import BENCH_DIR, machine, quick_mode, write_json
from dql_model.config import Config, QualityConfig
from dql_model.contract import schema
from dql_model.warehouse import quality

SCRATCH = BENCH_DIR / "ops"
NIGHTS = 365
DRIFT_SIZES = (100_000, 1_100_000)
START = dt.date(2026, 1, 1)


def _events(rng: np.random.Generator, n: int) -> pa.Table:
    def ids(prefix: str, high: int) -> pa.Array:
        return pc.binary_join_element_wise(prefix, pa.array(rng.integers(0, high, n)).cast(pa.string()), "")

    kinds = rng.choice([schema.VIEW, schema.ADD_TO_CART, schema.PURCHASE], n, p=[0.8, 0.15, 0.05])
    return pa.table({schema.USER_ID: ids("u", 5_000_000), schema.ITEM_ID: ids("i", 500_000), schema.EVENT_TYPE: kinds})


def bench_drift() -> list[dict[str, object]]:
    rng = np.random.default_rng(0)
    records = []
    print("drift check (quality.input_drift), 7 trailing nights + the run date, one process")
    print(f"{'events/night':>12} {'seconds':>8} {'M rows/s':>9}  levels")
    for n in DRIFT_SIZES:
        nights = [_events(rng, n) for _ in range(8)]
        started = time.perf_counter()
        figures = quality.input_drift(nights[-1], nights[:-1], QualityConfig())
        took = time.perf_counter() - started
        print(f"{n:>12,} {took:>8.2f} {8 * n / took / 1e6:>9.2f}  {', '.join(f'{f.name} {f.level}' for f in figures)}")
        records.append({"events_per_night": n, "seconds": took})
    return records


def _write_night(cfg: Config, run_date: str, table: pa.Table, previous: str | None) -> str:
    from dql_model.contract.layout import LAYER

    lay = cfg.layout
    folders = [Path(lay.partition(t, run_date)) for t in (schema.EVENTS, *[t for t, layer in LAYER.items() if layer == "curated"])]
    folders += [Path(lay.partition(schema.RECOMMENDATIONS, run_date)), Path(cfg.publish.export_uri) / f"run_date={run_date}",
                Path(lay.baseline_models(run_date)) / "supervised"]  # fmt: skip
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, folder / "part-00000.parquet")
    for path in (Path(lay.etl_summary(run_date)), Path(lay.report(run_date)) / "summary.json"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"run_date": run_date}))
    version = f"{run_date.replace('-', '')}-{abs(hash(run_date)) % 16**8:08x}"
    folder = Path(cfg.registry.root) / version
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"w" * 65536)
    (folder / "data_window.json").write_text(json.dumps({"run_date": run_date, "warm_start_from": previous}))
    return version


def bench_retention() -> dict[str, object]:
    from dql_model.learning import registry
    from dql_model.pipeline import prune
    from dql_model.warehouse import retention

    shutil.rmtree(SCRATCH, ignore_errors=True)
    cfg = Config().replace(
        warehouse={"root": str(SCRATCH / "warehouse")}, registry={"root": str(SCRATCH / "models")},
        publish={"export_uri": str(SCRATCH / "export")},
    )  # fmt: skip
    table = pa.table({schema.USER_ID: [f"u{i}" for i in range(200)], schema.SCORE: np.linspace(0, 1, 200)})
    previous = None
    started = time.perf_counter()
    for n in range(NIGHTS):
        previous = _write_night(cfg, (START + dt.timedelta(days=n)).isoformat(), table, previous)
    registry.set_champion(cfg.registry.root, previous, why="bench")
    before = retention.folder_bytes(SCRATCH)
    print(f"\nretention: {NIGHTS} nights written in {time.perf_counter() - started:.1f} s, {before / 1e6:.1f} MB "
          "(default retention config)")  # fmt: skip
    started = time.perf_counter()
    plan = prune.plan(cfg)
    planned = time.perf_counter() - started
    started = time.perf_counter()
    done = prune.prune(cfg, dry_run=False)
    applied = time.perf_counter() - started
    print(f"plan (dry run): {len(plan.removals):,} folders, {plan.bytes / 1e6:.1f} MB, {planned:.2f} s")
    print(f"prune:          {len(done['removed']):,} folders removed, {done['bytes'] / 1e6:.1f} MB freed, {applied:.2f} s; "
          f"{retention.folder_bytes(SCRATCH) / 1e6:.1f} MB left")  # fmt: skip
    by_layer: dict[str, int] = {}
    for removal in plan.removals:
        by_layer[removal.layer] = by_layer.get(removal.layer, 0) + 1
    print("removed per layer: " + ", ".join(f"{layer} {n}" for layer, n in sorted(by_layer.items())))
    shutil.rmtree(SCRATCH, ignore_errors=True)
    return {"nights": NIGHTS, "planned": len(plan.removals), "plan_s": planned, "removed": len(done["removed"]),
            "prune_s": applied, "bytes_freed": done["bytes"], "by_layer": by_layer}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    global NIGHTS, DRIFT_SIZES
    if quick_mode(argv or ()):
        NIGHTS, DRIFT_SIZES = 30, (10_000,)
    m = machine()
    print(f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Python {m['python']}")
    write_json("ops", {"quick": quick_mode(argv or ()), "drift": bench_drift(), "retention": bench_retention()})


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
