"""The quality benchmark's bookkeeping around the product's path: which ratings it holds out, how the
published lists come back onto the split's items, and what it says about the night's training."""

import numpy as np
import pyarrow as pa
import pytest

from benchmarks import bench_quality as bq
from benchmarks.peers import movielens
from dql_model.config import Config
from dql_model.contract import schema
from dql_model.warehouse import storage


@pytest.fixture
def ratings():
    # User 7 rates movies 10 and 9 in the same second: by number 9 < 10, by text "10" < "9".
    return movielens.Ratings(
        user_id=np.array([7, 7, 7, 7, 3, 3, 3]),
        movie_id=np.array([5, 10, 9, 2, 5, 2, 9]),
        rating=np.array([4, 3, 5, 1, 2, 3, 4]),
        timestamp=np.array([100, 200, 200, 300, 50, 60, 70]),
    )


def test_the_held_out_rows_are_each_users_last_rating(ratings):
    split = movielens.leave_one_out(ratings)
    rows = movielens.held_out_test_rows(ratings, split)
    assert rows.tolist() == [False, False, False, True, False, False, True]  # (7, movie 2) and (3, movie 9)


def test_the_split_orders_ratings_of_one_second_as_the_product_does(ratings):
    split = movielens.leave_one_out(ratings)
    # User 7's kept ratings end with movies 10 and 9 in the same second: the product orders item ids as
    # text ("10" < "9"), so both its last event and the split's validation item are movie 9.
    assert split.movie_ids[split.validation_targets()].tolist() == [2, 9]
    assert bq.validation_item_agreement(split) == 1.0


def test_published_lists_come_back_as_the_splits_items_by_rank(ratings, tmp_path):
    split = movielens.leave_one_out(ratings)
    cfg = Config().replace(warehouse={"root": str(tmp_path / "warehouse")})
    rows = [("3", 1, "10"), ("3", 2, "2"), ("3", 11, "5"), ("7", 2, "9")]  # rank 11 is beyond the top 10
    table = pa.table(
        {
            schema.USER_ID: [r[0] for r in rows],
            schema.RANK: pa.array([r[1] for r in rows], pa.int32()),
            schema.ITEM_ID: [r[2] for r in rows],
        }
    )
    storage.write_partition(table, cfg.layout.partition(schema.RECOMMENDATIONS, "1998-04-22"))
    lists, counts = bq.published_lists(cfg, "1998-04-22", split)
    idx = {int(m): i for i, m in enumerate(split.movie_ids) if i}
    assert lists.shape == (2, bq.K)
    assert lists[0, :2].tolist() == [idx[10], idx[2]] and not lists[0, 2:].any()  # user 3 (ids ascend)
    assert lists[1, :2].tolist() == [0, idx[9]]  # user 7 has no rank 1: an empty slot, never a hit
    assert counts == {"users_served": 2, "empty_slots": 2 * bq.K - 3}

    storage.write_partition(
        table.set_column(2, schema.ITEM_ID, pa.array(["10", "2", "5", "999"])),
        cfg.layout.partition(schema.RECOMMENDATIONS, "1998-04-23"),
    )
    with pytest.raises(ValueError, match=r"1 items that MovieLens-100K does not have .*'999'"):
        bq.published_lists(cfg, "1998-04-23", split)


@pytest.mark.parametrize(
    ("history", "expected"),
    [
        ([0.10, 0.12, 0.11, 0.11], "early stopping"),  # patience 2 after the best epoch 2
        ([0.10, 0.12, 0.13, 0.14, 0.15], "epoch cap"),
        ([0.10, 0.12, 0.11], "time budget"),  # one epoch short of the patience: the budget ended it
    ],
)
def test_what_stopped_the_nights_training(history, expected, monkeypatch):
    from dql_model.learning import registry

    metric = schema.metric_name("ndcg", 10)
    rows = [
        {"epoch": float(n), metric: v, "throughput/transitions_per_s": 100.0}
        for n, v in enumerate(history, 1)
    ]
    monkeypatch.setattr(registry, "version_metrics", lambda root, version: {"history": rows})
    cfg = Config().replace(train={"epochs": 5, "patience": 2})
    trained = {"trained": True, "version": "v1", "seconds": 12.5, "device": "cpu", "transitions": 9}
    record = bq.training_record(cfg, "1998-04-22", trained)
    assert record["stopped_by"] == expected
    assert (record["epochs_run"], record["best_epoch"]) == (len(history), int(np.argmax(history)) + 1)
    assert record["train_seconds"] == 12.5


def test_the_nights_config_holds_its_paths_and_the_variants_settings_only(tmp_path):
    import yaml

    settings = bq.merged(bq.VARIANTS["dqlrec (defaults, train.mode supervised)"][1], {"train": {"epochs": 1}})
    config = yaml.safe_load(bq.write_night_config(tmp_path, settings).read_text())
    assert config == {
        "warehouse": {"root": str(tmp_path / "warehouse")},
        "registry": {"root": str(tmp_path / "models")},
        "publish": {"export_uri": str(tmp_path / "export")},
        "train": {"mode": "supervised", "epochs": 1},
    }
    assert bq.VARIANTS["dqlrec (defaults)"][1] == {}  # nothing set but the import format
