"""jobs.score_recommendations: the Spark engine gives exactly the rows of the torch engine.

Exactly means bit for bit, scores included: both engines cut users into the same batches (a matrix
product's rounding depends on its batch), so the comparison is ``Table.equals``, not a tolerance.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dql_model.config import ModelConfig
from dql_model.contract import schema, steps
from dql_model.learning import registry
from dql_model.learning.networks import QNetwork
from dql_model.ops import spark_jobs
from dql_model.pipeline import tasks
from dql_model.scoring import engines, masks
from dql_model.scoring.payload import ScoringPayload
from dql_model.scoring.policy import Policy
from dql_model.scoring.ranking import Catalogue
from dql_model.warehouse import data, storage
from jobs import score_recommendations as job

pytestmark = pytest.mark.spark

RUN_DATE = "2026-11-27"
AT = dt.datetime(2026, 11, 27, 5, 0, tzinfo=dt.UTC)
N_ITEMS, N_CATEGORIES, MAX_LEN = 60, 4, 6


def model(n_items: int = N_ITEMS) -> QNetwork:
    torch.manual_seed(3)
    net = QNetwork(n_items, N_CATEGORIES, ModelConfig(embed_dim=16, hidden_dim=16, price_buckets=4))
    net.set_item_features(np.arange(n_items + 1) % (N_CATEGORIES + 1), np.arange(n_items + 1) % 5)
    return net.eval()


def state_rows(n_users: int = 150) -> list[dict]:
    """Users with long and short states, purchases, items new since training, no state, odd ids."""
    rng = np.random.default_rng(11)
    rows = []
    for u in range(n_users):
        length = int(rng.integers(0, MAX_LEN + 3))
        items = rng.integers(1, N_ITEMS + 6, size=length).tolist()  # ids above N_ITEMS: new items
        rows.append(
            {
                schema.USER_ID: f"user-{u:04d}" if u % 17 else f"ü{u}",
                schema.ITEM_SEQ: items,
                schema.EVENT_SEQ: rng.integers(1, 5, size=length).tolist(),
                schema.PURCHASED: sorted(set(rng.integers(1, N_ITEMS + 6, size=int(rng.integers(0, 4))).tolist())),
            }
        )
    rows.append({schema.USER_ID: "only-new-items", schema.ITEM_SEQ: [N_ITEMS + 2], schema.EVENT_SEQ: [1], schema.PURCHASED: []})
    return rows


STATE_TYPE = pa.schema(
    [
        (schema.USER_ID, pa.string()),
        (schema.ITEM_SEQ, pa.list_(pa.int32())),
        (schema.EVENT_SEQ, pa.list_(pa.int32())),
        (schema.PURCHASED, pa.list_(pa.int32())),
    ]
)


def item_index_table(n_items: int = N_ITEMS + 5) -> pa.Table:
    """Tonight's index: 5 items newer than the model, some unavailable, one without category."""
    return pa.table(
        {
            schema.ITEM_ID: [f"i{i}" for i in range(1, n_items + 1)],
            schema.ITEM_IDX: pa.array(range(1, n_items + 1), pa.int32()),
            schema.CATEGORY_ID: [None if i == 7 else f"c{i % N_CATEGORIES}" for i in range(1, n_items + 1)],
            schema.PRICE: [float(i) for i in range(1, n_items + 1)],
            schema.AVAILABLE: [i % 9 != 0 for i in range(1, n_items + 1)],
            schema.FIRST_SEEN: [dt.date(2026, 11, 1)] * n_items,
        }
    )


def popularity(n_items: int = N_ITEMS + 5) -> np.ndarray:
    return (np.arange(n_items + 1) * 7 % 13).astype(np.float64)  # many ties: index order decides


def sorted_rows(table: pa.Table) -> pa.Table:
    return table.sort_by([(schema.USER_ID, "ascending"), (schema.RANK, "ascending")])


@pytest.fixture
def small_arrow_batches(spark):
    """Arrow frames far smaller than a scoring batch, so the job must regroup them."""
    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    before = spark.conf.get(key)
    spark.conf.set(key, "7")
    yield
    spark.conf.set(key, before)


@pytest.mark.parametrize(
    "policy",
    [
        Policy(top_k=5, seed=1),
        Policy(top_k=N_ITEMS - 3, seed=1),
        Policy(top_k=5, explore_slots=2, explore_epsilon=0.2, temperature=0.5, seed=99),
        Policy(top_k=4, exclude="none", seed=1),
    ],
    ids=["greedy", "short-lists", "exploring", "unmasked"],
)
def test_spark_rows_equal_single_node_rows(spark, small_arrow_batches, policy):
    net, rows, index = model(), state_rows(), item_index_table()
    states_table = pa.Table.from_pylist(rows, schema=STATE_TYPE)
    # The job's driver decodes the collected item_index rows as the torch engine's loader does.
    items = data.item_features_from_table(index.select(data.ITEM_INDEX_COLUMNS), price_buckets=4, where="item_index")
    catalogue = Catalogue.from_features(items, popularity())

    expected, expected_counts = engines.rank_users(
        net,
        *_torch_inputs(states_table, index, exclude=policy.exclude),
        policy,
        batch_size=16,
        popularity=popularity(),
        model_version="v9",
        generated_at=AT,
    )
    payload = ScoringPayload.build(net, catalogue, policy, model_version="v9", generated_at=AT, max_len=MAX_LEN)
    user_states = spark.createDataFrame(rows, schema="user_id STRING, item_seq ARRAY<INT>, event_seq ARRAY<INT>, purchased ARRAY<INT>")
    broadcast = spark.sparkContext.broadcast(payload)
    try:
        got = job.score_recommendations(user_states.repartition(3), payload=broadcast, batch_size=16).toArrow()
        counts = job.count_masks(user_states.repartition(3), payload=broadcast)
    finally:
        broadcast.destroy()

    # Both engines count the same masks; the short lists are the users with fewer than top_k rows.
    assert counts == expected_counts
    assert counts.masked[masks.UNAVAILABLE] > 0 and counts.masked[masks.NEW_SINCE_TRAINING] > 0
    assert (masks.EXCLUDE_REASONS["purchased"] in counts.masked) == (policy.exclude == "purchased")
    per_user = pa.table({"n": np.ones(got.num_rows)}).append_column("u", got.column(schema.USER_ID))
    rows_per_user = per_user.group_by("u").aggregate([("n", "sum")]).column("n_sum").to_numpy()
    assert sum(counts.short_lists.values()) == int((rows_per_user < policy.top_k).sum())
    if policy.top_k > N_ITEMS // 2:  # more slots than most users have candidates: short lists from both
        assert counts.short_lists["model"] > 0 and counts.short_lists["fallback"] > 0

    assert got.schema.names == expected.schema.names
    got = got.cast(expected.schema)
    assert sorted_rows(got).equals(sorted_rows(expected))
    sources = set(expected.column(schema.SOURCE).to_pylist())
    assert schema.SOURCE_FALLBACK in sources
    assert (schema.SOURCE_EXPLORE in sources) == policy.explores


def _torch_inputs(states: pa.Table, index: pa.Table, *, exclude: str = "purchased") -> tuple[data.UserStates, data.ItemFeatures]:
    """The torch engine's view of the same tables, through the loaders it uses in production."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        pq.write_table(states, Path(folder) / "states.parquet")
        pq.write_table(index, Path(folder) / "index.parquet")
        Path(folder, "states").mkdir()
        Path(folder, "index").mkdir()
        Path(folder, "states.parquet").rename(Path(folder, "states", "part-0.parquet"))
        Path(folder, "index.parquet").rename(Path(folder, "index", "part-0.parquet"))
        return (
            data.load_user_states(Path(folder, "states"), max_len=MAX_LEN, exclude=exclude),
            data.load_item_features(Path(folder, "index"), price_buckets=4),
        )


def test_the_spark_engine_launches_the_job_with_arguments_it_accepts():
    command = spark_jobs.job_command(
        steps.SCORING_JOB, RUN_DATE, ["--model-version", "20261127-ab12cd34"], config_file="/tmp/.config.json"
    )
    assert command[1:3] == ["-m", f"jobs.{job.JOB}"]
    args = job.parse_args(command[3:])
    assert (args.config, args.run_date, args.model_version) == ("/tmp/.config.json", RUN_DATE, "20261127-ab12cd34")


def test_batches_regroup_across_arrow_frames():
    import pandas as pd

    frames = [
        pd.DataFrame({job.BATCH: [0, 0, 1]}),
        pd.DataFrame({job.BATCH: [1, 1]}),
        pd.DataFrame({job.BATCH: []}),
        pd.DataFrame({job.BATCH: [1, 4, 4, 6]}),
    ]
    assert [g[job.BATCH].tolist() for g in job._whole_batches(iter(frames))] == [[0, 0], [1, 1, 1, 1], [4, 4], [6]]


# --- the job against a warehouse, next to the torch task ----------------------------------------------


def write_warehouse(cfg) -> str:
    """Tonight's curated partitions as the ETL job writes them, and a registered model."""
    rows = state_rows(80)
    states = pa.Table.from_pylist(rows, schema=STATE_TYPE)
    n = states.num_rows
    states = states.append_column(schema.GAP_SEQ, pa.array([[0.0] * len(r[schema.ITEM_SEQ]) for r in rows], pa.list_(pa.float64())))
    # Every fifth user was last seen two months ago: outside score.active_window (auto: 30 days), neither engine scores them.
    last_seen = [AT - dt.timedelta(days=60) if i % 5 == 0 else AT for i in range(n)]
    states = states.append_column(schema.LAST_EVENT_TIME, pa.array(last_seen, pa.timestamp("us", tz="UTC")))
    states = states.append_column(schema.N_EVENTS, pa.array([len(r[schema.ITEM_SEQ]) for r in rows], pa.int64()))
    index = item_index_table()
    actions = np.arange(1, N_ITEMS + 6).repeat((np.arange(1, N_ITEMS + 6) * 5) % 7)
    transitions = pa.table(
        {
            schema.USER_ID: ["u"] * len(actions),
            schema.EVENT_TIME: pa.array([AT] * len(actions), pa.timestamp("us", tz="UTC")),
            schema.ITEM_SEQ: pa.array([[1]] * len(actions), pa.list_(pa.int32())),
            schema.EVENT_SEQ: pa.array([[1]] * len(actions), pa.list_(pa.int32())),
            schema.ACTION: pa.array(actions, pa.int32()),
            schema.EVENT_TYPE: [schema.VIEW] * len(actions),
            schema.REWARD: [0.0] * len(actions),
            schema.DONE: [False] * len(actions),
            schema.SPLIT: [schema.TRAIN if a % 3 else schema.VALIDATION for a in actions],
        }
    )
    for name, table in ((schema.USER_STATES, states), (schema.ITEM_INDEX, index), (schema.TRANSITIONS, transitions)):
        folder = Path(cfg.layout.partition(name, RUN_DATE))
        folder.mkdir(parents=True)
        pq.write_table(table, folder / "part-00000.parquet")
    net = model()
    return registry.save_model(
        net, cfg, registry_root=cfg.registry.root, metrics={}, data_window={"run_date": RUN_DATE}
    )


def without_time(table: pa.Table) -> pa.Table:
    return sorted_rows(table.drop_columns([schema.GENERATED_AT]))


@pytest.mark.slow
def test_job_on_a_warehouse_matches_the_torch_task_and_passes_validation(spark, tiny_config):
    cfg = tiny_config.replace(
        score={"top_k": 4, "batch_size": 8, "explore_slots": 1},
        model={"embed_dim": 16, "hidden_dim": 16, "price_buckets": 4},
        etl={"max_len": MAX_LEN},
    )
    version = write_warehouse(cfg)
    staged = Path(cfg.layout.staged(schema.RECOMMENDATIONS, RUN_DATE))

    by_torch = engines.score_with_torch(cfg, RUN_DATE, version)
    torch_rows = storage.read_partition(staged)
    by_spark = job.run(spark, cfg, RUN_DATE, version)
    spark_rows = storage.read_partition(staged)

    assert spark_rows.schema == schema.arrow_schema(schema.RECOMMENDATIONS)  # UTC microseconds, not INT96
    assert without_time(spark_rows).equals(without_time(torch_rows))
    active = [r[schema.USER_ID] for i, r in enumerate(state_rows(80)) if i % 5]
    assert sorted(set(torch_rows.column(schema.USER_ID).to_pylist())) == sorted(active)
    same = ("rows", "users", "sources", "top_k", "path", "model_version", "masked", "short_lists")
    assert {k: by_spark.to_dict()[k] for k in same} == {k: by_torch.to_dict()[k] for k in same}
    assert by_torch.masked["unavailable"] > 0 and by_torch.masked["already_purchased"] > 0
    assert by_spark.sources[schema.SOURCE_EXPLORE] == by_spark.users - by_spark.sources[schema.SOURCE_FALLBACK] // 4
    assert engines.ScoringSummary.read(cfg.layout.scoring_summary(RUN_DATE)) == by_spark  # as the Spark engine reads it
    assert json.loads(Path(cfg.layout.scoring_summary(RUN_DATE)).read_text())["engine"] == "spark"

    # The DAG's validate task reads the Spark job's summary (no XCom from spark-submit).
    validated = tasks.validate_recommendations(RUN_DATE, None, cfg=cfg)
    assert (validated["model_version"], validated["top_k"], validated["checked_rows"]) == (version, 4, by_spark.rows)
    assert validated["success"]
