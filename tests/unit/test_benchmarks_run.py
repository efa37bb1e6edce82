"""Every benchmark still runs: `python -m benchmarks --quick` in one child process, each one's JSON checked.

A benchmark is a script nobody runs every day; when the code under it changes (a config field renamed,
a function moved) it breaks silently until someone needs its figures. Here each one runs its quick mode
(tiny sizes; figures not to quote) and must leave its JSON record with the keys its full run writes.
Only what cannot run here may be skipped, and only with the reason in its record: MovieLens-100K
(downloaded by the full run, never by the quick one; without it bench_quality skips, with it its quick run
is a whole night and leaves out the RecBole peers it finds no cached run of), and the warehouse of
`make run` that bench_tradeoff reads.
"""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import benchmarks

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RECORDS = {
    "bench_etl": ("etl", {"rows", "sizes"}),
    "bench_import": ("import", {"layout", "scale", "shape", "file_mb", "results", "import"}),
    "bench_loop": ("loop", {"scale", "settings", "policies", "paired"}),
    "bench_ops": ("ops", {"drift", "retention"}),
    "bench_quality": ("quality-quick", {"systems", "reproduction_of_recbole"}),
    "bench_scale": ("scale", {"quick", "scales", "steps", "growth"}),
    "bench_scoring": ("bench_scoring", {"square_matmul", "cases", "repeats", "memory"}),
    "bench_threads": ("threads", {"usable_cpus", "window_s", "results", "check"}),
    "bench_tradeoff": ("tradeoff", {"run_date", "seeds", "alphas", "rules", "rows", "cells"}),
    "bench_training": ("training", {"batch_size", "max_len", "model", "results", "peak_rss_mib"}),
}
"""Benchmark module -> (its JSON record's name, keys its record must have)."""
MAY_SKIP = {"quality-quick": ("MovieLens-100K",), "tradeoff": ("no transitions partition",)}
"""Records that may say ``skipped``, and what the reason must mention."""


def test_every_benchmark_module_is_checked_here():
    modules = {m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_")}
    assert modules == set(RECORDS), "add the new benchmark's record and keys to RECORDS"


def test_every_benchmark_runs_its_quick_mode(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DQLREC_BENCH_DIR": str(tmp_path / "bench"),
        "OMP_NUM_THREADS": "1",
    }
    # From an empty folder: what a benchmark writes beside it lands there, and the default warehouse
    # (var/warehouse) is absent, so bench_tradeoff has no night to read.
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    for module, (name, keys) in RECORDS.items():
        path = tmp_path / "bench" / f"{name}.json"
        assert path.is_file(), f"{module} wrote no {path.name}:\n{done.stdout[-3000:]}"
        record = json.loads(path.read_text())
        assert {"benchmark", "at", "machine"} <= set(record)
        if "skipped" in record:
            assert any(why in record["skipped"] for why in MAY_SKIP.get(name, ())), f"{module}: {record['skipped']}"
            continue
        assert keys <= set(record), f"{module}: {sorted(keys - set(record))} missing from {path.name}"
    assert "x pyarrow read_csv" in done.stdout  # bench_import's table, beside pyarrow's own read
