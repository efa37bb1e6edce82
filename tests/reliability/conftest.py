"""The reliability suite's tiny warehouse: two nights of a small shop, no Spark, built once per module."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from dql_model.config import Config
from dql_model.contract import schema
from dql_model.warehouse import storage
from tests.factories import write_night
from tests.reliability.night import run_steps

DAY1, DAY2 = "2026-11-26", "2026-11-27"


def night_config(root: Path) -> Config:
    """Everything under ``root``: a small model trained for two epochs on CPU, with checkpoints."""
    return Config().replace(
        warehouse={"root": str(root / "warehouse"), "lock_wait_s": 5.0},
        registry={"root": str(root / "models")},
        publish={"export_uri": str(root / "export" / "recommendations"), "rows_per_file": 60},
        etl={"max_len": 8},
        model={"embed_dim": 16, "hidden_dim": 16},
        train={"epochs": 2, "batch_size": 64, "device": "cpu", "checkpoints": True},
        eval={"baseline_trials": 0, "sim_users": 0},
        score={"top_k": 5},
    )


def config_file(cfg: Config, folder: Path) -> Path:
    """The config as a file a child process loads (JSON is YAML)."""
    path = folder / "config.json"
    path.write_text(json.dumps(cfg.to_dict()))
    return path


def published(cfg: Config, run_date: str) -> pa.Table:
    """The warehouse partition of a date, rows by user and rank."""
    table = storage.read_partition(cfg.layout.partition(schema.RECOMMENDATIONS, run_date))
    return table.sort_by([(schema.USER_ID, "ascending"), (schema.RANK, "ascending")])


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Train and score on one thread, as the killed child processes do (OMP_NUM_THREADS=1 in
    tests/reliability/test_fault_injection.py): the same kernels give the same weights, so a rerun
    that resumes a killed child's checkpoint can match the night that was never killed. On shared
    cores one thread is also many times faster than an oversubscribed two."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def two_nights(tmp_path_factory) -> tuple[Path, Path]:
    """(live folder, snapshot): a warehouse where DAY1 and DAY2 ran to the end, DAY1's model being
    DAY2's incumbent, built in the live folder and copied to the snapshot."""
    base = tmp_path_factory.mktemp("two-nights")
    live, snapshot = base / "live", base / "snapshot"
    cfg = night_config(live)
    for day in (DAY1, DAY2):
        write_night(cfg.layout, day)
        run_steps(cfg, day)
    shutil.copytree(live, snapshot)
    return live, snapshot


@pytest.fixture
def night(two_nights) -> Config:
    """The two nights as they ended, restored into the live folder for this test.

    Restored in the same place rather than copied elsewhere: the saved config is part of a model
    version's name, and it holds the warehouse's paths, so only there does a rerun reproduce the
    version names as well as the rows.
    """
    return restore(two_nights)


def restore(two_nights: tuple[Path, Path]) -> Config:
    """Put the snapshot of ``two_nights`` back into its live folder; returns the live folder's config."""
    live, snapshot = two_nights
    shutil.rmtree(live)
    shutil.copytree(snapshot, live)
    return night_config(live)
