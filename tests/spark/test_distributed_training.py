"""train.distributed_workers=2 on a Spark local-cluster: the same model quality as one process, disjoint
shards of every batch, and nothing left running afterwards.

The two ranks run on the cluster's two executors (TorchDistributor with local_mode off, gloo on CPU),
driven from a separate driver process, as the nightly training task would drive them.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import textwrap
import time
import uuid

import numpy as np
import psutil
import pytest
import torch

from dql_model.contract import schema
from dql_model.learning import distributed, sequences, train
from dql_model.ops.services import spark_home
from tests.conftest import PROJECT_ROOT
from tests.factories import LOCAL_CLUSTER, make_shop

pytestmark = [pytest.mark.spark, pytest.mark.slow]

MAX_LEN = 8
WORKERS = 2
MARKER = "DQLREC_DISTRIBUTED_TEST_RUN"
"""Environment variable every process of the cluster run inherits: found on none once it is over."""

CLUSTER_DRIVER = textwrap.dedent(
    """
    import json, sys, time
    from dql_model.config import from_dict
    from dql_model.learning import train
    from tests.factories import local_cluster_session

    config_file, transitions, item_index, out = sys.argv[1:]
    spark = local_cluster_session("dqlrec-distributed-training-test")
    with open(config_file) as f:
        cfg = from_dict(json.load(f))
    started = time.perf_counter()
    result = train.train_model(cfg, transitions_dir=transitions, item_index_dir=item_index)
    seconds = time.perf_counter() - started
    spark.stop()
    summary = {
        "seconds": seconds,
        "best_metrics": result.best_metrics,
        "n_transitions": result.n_transitions,
        "workers": result.distributed["workers"],
        "shards": result.distributed["shards"],
        "rendezvous": result.distributed["rendezvous"],
        "train_seconds": result.distributed["train_seconds"],
        "training": result.model.training,
    }
    with open(out, "w") as f:
        json.dump(summary, f)
    """
)


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    return make_shop(tmp_path_factory.mktemp("shop"), n_items=30, n_users=40, steps=12, max_len=MAX_LEN)


def config(tiny_config, **train_overrides):
    return tiny_config.replace(
        etl={"max_len": MAX_LEN},
        model={"embed_dim": 16, "hidden_dim": 16, "dropout": 0.0},
        train={"epochs": 6, "seq_batch_size": 4, "lr": 1e-2, "device": "cpu"} | train_overrides,
    )


def first_epoch_rows(cfg, transitions) -> tuple[int, int]:
    """(windows, multiset fingerprint) of the first epoch's batches that one process would train on,
    less those with fewer windows than ranks (no rank gets a row of them)."""
    windows = sequences.load_windows(
        transitions,
        max_len=MAX_LEN,
        seq_len=cfg.train.seq_len,
        split=schema.TRAIN,
        credit_carts=cfg.train.purchase_credit == "cart",
    )
    rows = fingerprint = 0
    for batch in windows.batches(cfg.train.seq_batch_size, seed=cfg.train.seed * 1_000 + 1):
        if batch.n_windows >= WORKERS:
            rows += batch.n_windows
            fingerprint += int(distributed.row_fingerprints(batch).sum(dtype=np.uint64))
    return rows, fingerprint % (1 << 64)


def marked_processes(marker_value: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(MARKER) == marker_value:
                found.append(process)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def test_two_workers_on_a_cluster_train_as_well_as_one_process(tiny_config, shop, tmp_path):
    transitions, item_index = shop
    cfg = config(tiny_config)
    torch.set_num_threads(1)
    started = time.perf_counter()
    one = train.train_model(cfg, transitions_dir=str(transitions), item_index_dir=str(item_index), progress=lambda _: None)
    one_seconds = time.perf_counter() - started

    config_file, out = tmp_path / "config.json", tmp_path / "result.json"
    config_file.write_text(json.dumps(config(tiny_config, distributed_workers=WORKERS).to_dict()))
    run_id = uuid.uuid4().hex
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), MARKER: run_id, "OMP_NUM_THREADS": "1"}
    env.setdefault("SPARK_HOME", str(spark_home()))
    done = subprocess.run(
        [sys.executable, "-c", CLUSTER_DRIVER, str(config_file), str(transitions), str(item_index), str(out)],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert f"master {LOCAL_CLUSTER}, executors 2" in done.stdout
    assert f"{WORKERS} processes on the executors of {LOCAL_CLUSTER}" in done.stdout
    two = json.loads(out.read_text())
    print(
        f"\none process: {one_seconds:.1f}s, eval/ndcg@10={one.best_value:.4f}; "
        f"{WORKERS} workers on local-cluster: {two['seconds']:.1f}s ({two['train_seconds']:.1f}s training on rank 0), "
        f"eval/ndcg@10={two['best_metrics']['eval/ndcg@10']:.4f}"
    )

    # Quality: the difference is within the 95 % interval of a difference of the two validation means.
    ndcg = "eval/ndcg@10"
    tolerance = math.hypot(one.best_metrics[f"{ndcg}/ci95"], two["best_metrics"][f"{ndcg}/ci95"])
    assert 0 < tolerance < 0.5
    assert abs(two["best_metrics"][ndcg] - one.best_value) <= tolerance
    assert two["workers"] == WORKERS and not two["training"]
    assert two["n_transitions"] == one.n_transitions  # both ranks together trained every transition

    # Disjoint shards: the two ranks' rows of the first epoch add up, as multisets, to the epoch's rows.
    shards = sorted(two["shards"], key=lambda shard: shard["rank"])
    assert [shard["rank"] for shard in shards] == [0, 1]
    rows, fingerprint = first_epoch_rows(cfg, transitions)
    assert all(shard["first_epoch_rows"] > 0 for shard in shards)
    assert sum(shard["first_epoch_rows"] for shard in shards) == rows
    assert sum(shard["first_epoch_fingerprint"] for shard in shards) % (1 << 64) == fingerprint
    assert shards[0]["first_epoch_fingerprint"] != shards[1]["first_epoch_fingerprint"]
    assert shards[0]["pid"] != shards[1]["pid"]

    # Nothing left behind: the ranks, their launchers and every process of the run are gone, the port freed.
    for shard in shards:
        assert not psutil.pid_exists(shard["pid"]) and not psutil.pid_exists(shard["parent_pid"])
    assert marked_processes(run_id) == []
    host, port = two["rendezvous"].rsplit(":", 1)
    with socket.socket() as probe:
        probe.settimeout(2)
        assert probe.connect_ex((host, int(port))) != 0


def test_rank_0_decides_budget_and_early_stop_for_every_rank(spark, tiny_config, shop):
    """On a local[...] master the ranks run on this host (TorchDistributor's local_mode). The budget and
    the early stop are decided on rank 0's clock and validation: a rank deciding alone would hang the
    other in its next all-reduce, and the run would not end."""
    transitions, item_index = shop
    cfg = config(tiny_config, epochs=40, distributed_workers=WORKERS)
    runs = {}
    for name, overrides in {"budget": {"max_minutes": 1e-6}, "patience": {"patience": 1, "lr": 0.05}}.items():
        lines: list[str] = []
        runs[name] = train.train_model(
            cfg.replace(train=overrides),
            transitions_dir=str(transitions),
            item_index_dir=str(item_index),
            progress=lines.append,
        )
        assert f"{WORKERS} processes on this host" in lines[0]

    budget, patience = runs["budget"], runs["patience"]
    # The budget is spent at the first step: cut at step 1 of the 10 (40 windows / 4) one process takes.
    assert budget.stopped_by == train.STOP_BUDGET and len(budget.history) == 1
    assert budget.history[0]["time/epoch_share"] == pytest.approx(1 / 10)
    assert patience.stopped_by == train.STOP_CONVERGED
    assert len(patience.history) == patience.best_epoch + 1 < 40
    for run in runs.values():
        assert not any(psutil.pid_exists(shard["pid"]) for shard in run.distributed["shards"])
