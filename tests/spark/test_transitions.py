"""jobs.transitions: state = previous events (from full history, truncated), rewards, done, split."""

from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql.types import StructType
from pyspark.testing import assertDataFrameEqual, assertSchemaEqual

from dql_model.contract import schema
from jobs.transitions import build_transitions
from jobs.user_states import build_user_states

pytestmark = pytest.mark.spark

VIEW, CART, BUY, RATE = (schema.EVENT_CODE[t] for t in schema.EVENT_TYPES)
REWARDS = {schema.VIEW: 0.0, schema.ADD_TO_CART: 0.3, schema.PURCHASE: 1.0}
TRANSITIONS = schema.SPARK_DDL[schema.TRANSITIONS]


def at(day: int, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2026, 11, day, hour, minute, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def item_index(spark):
    return spark.createDataFrame(
        [
            ("i1", 1, "a", 10.0, True, None),
            ("i2", 2, "a", 20.0, True, None),
            ("i3", 3, "b", 30.0, True, None),
        ],
        schema.SPARK_DDL[schema.ITEM_INDEX],
    )


@pytest.fixture(scope="module")
def events(spark):
    return spark.createDataFrame(
        [
            (at(19, 9), "u1", "i1", "view", None, "s0"),  # before the window: only in later states
            (at(20, 9), "u1", "i2", "add_to_cart", None, "s1"),
            (at(20, 9, 10), "u1", "i3", "purchase", 30.0, "s1"),  # last of its session
            (at(21, 10), "u1", "i1", "rating", 5.0, "s2"),  # 1.5 * (5 - 3) / 2 = 1.5, clipped to 1
            (at(21, 10, 5), "u1", "i2", "view", None, "s2"),  # last of the user's history
            (at(20, 12), "u2", "i2", "rating", 2.0, "s9"),  # a user with a single event
            (at(21, 8), "u3", "i3", "rating", None, "s7"),  # a rating without a value
            (at(21, 9), "u3", "i1", "view", None, None),  # no session id: a new session
            (at(22, 0), "u4", "i1", "view", None, "s5"),  # after the window end
        ],
        schema.SPARK_DDL[schema.EVENTS],
    )


def build(events, item_index, **overrides):
    params = dict(
        item_index=item_index,
        max_len=2,
        rewards=REWARDS,
        rating_scale=1.5,
        value_weighted=False,
        window_start="2026-11-20",
        val_start="2026-11-21",
        window_end="2026-11-21",
    )
    return build_transitions(events, **(params | overrides))


def test_states_rewards_done_and_split(spark, events, item_index):
    transitions = build(events, item_index)

    assertSchemaEqual(transitions.schema, StructType.fromDDL(TRANSITIONS))
    expected = spark.createDataFrame(
        [
            ("u1", at(20, 9), [1], [VIEW], 2, "add_to_cart", 0.3, False, "train", None, None),
            ("u1", at(20, 9, 10), [1, 2], [VIEW, CART], 3, "purchase", 1.0, True, "train", None, None),
            # Validation rows carry the whole history before them (i1 is older than the state).
            ("u1", at(21, 10), [2, 3], [CART, BUY], 1, "rating", 1.0, False, "validation", [1, 2, 3], [3]),
            ("u1", at(21, 10, 5), [3, 1], [BUY, RATE], 2, "view", 0.0, True, "validation", [1, 2, 3], [3]),
            ("u2", at(20, 12), [], [], 2, "rating", -0.75, True, "train", None, None),
            ("u3", at(21, 8), [], [], 3, "rating", 0.0, True, "validation", [], []),  # nothing before
            ("u3", at(21, 9), [3], [RATE], 1, "view", 0.0, True, "validation", [3], []),
        ],
        TRANSITIONS,
    )
    assertDataFrameEqual(transitions, expected)


def test_leave_last_out_holds_out_each_users_last_event_with_a_state(spark, events, item_index):
    transitions = build(events, item_index, validation="leave_last_out", val_start=None)

    rows = transitions.orderBy(schema.USER_ID, schema.EVENT_TIME).collect()
    assert [(r[schema.USER_ID], r[schema.ACTION], r[schema.SPLIT], r[schema.HISTORY_ITEMS]) for r in rows] == [
        ("u1", 2, "train", None),
        ("u1", 3, "train", None),
        ("u1", 1, "train", None),
        ("u1", 2, "validation", [1, 2, 3]),  # 21-10:05, the last event of the window
        ("u2", 2, "train", None),  # a single event has no state to predict from
        ("u3", 3, "train", None),
        ("u3", 1, "validation", [3]),
    ]
    with pytest.raises(ValueError, match="validation must be one of"):
        build(events, item_index, validation="random")


def test_value_weighted_purchases(spark, events, item_index):
    transitions = build(events, item_index, value_weighted=True, max_len=5)

    # Mean catalogue price is 20, so buying i3 (30.0) earns 1.0 * 30 / 20.
    expected = spark.createDataFrame(
        [
            ("u1", at(20, 9), 0.3),
            ("u1", at(20, 9, 10), 1.5),
            ("u1", at(21, 10), 1.0),
            ("u1", at(21, 10, 5), 0.0),
            ("u2", at(20, 12), -0.75),
            ("u3", at(21, 8), 0.0),
            ("u3", at(21, 9), 0.0),
        ],
        "user_id STRING, event_time TIMESTAMP, reward DOUBLE",
    )
    assertDataFrameEqual(transitions.select(schema.USER_ID, schema.EVENT_TIME, schema.REWARD), expected)
    longest = transitions.where(f"{schema.EVENT_TIME} = '2026-11-21 10:05:00'").select(
        schema.ITEM_SEQ, schema.EVENT_SEQ
    )
    assert longest.collect() == [([1, 2, 3, 1], [VIEW, CART, BUY, RATE])]


def test_missing_reward_is_an_error(events, item_index):
    with pytest.raises(ValueError, match="add_to_cart"):
        build(events, item_index, rewards={schema.VIEW: 0.0, schema.PURCHASE: 1.0})


def test_the_reward_rule_gives_the_same_rewards_in_spark_and_numpy(spark):
    """One rule, two evaluators: the Spark job's column and the numpy restatement the off-policy night uses."""
    import numpy as np
    from pyspark.sql import functions as F

    from dql_model.warehouse.rewards import RewardRule

    rule = RewardRule(fixed={schema.VIEW: 0.1, schema.ADD_TO_CART: 0.3, schema.PURCHASE: 2.0}, rating_scale=1.5)
    rows = [
        ("view", None, 1.0),
        ("add_to_cart", None, 1.0),
        ("purchase", None, 2.5),  # weighted purchase
        ("rating", 5.0, 1.0),  # clipped at 1
        ("rating", 3.5, 1.0),
        ("rating", 1.0, 1.0),  # clipped at -1
        ("rating", None, 1.0),  # missing rating: 0
        ("wishlist", None, 1.0),  # unknown type: 0
        ("purchase", None, 0.5),  # a duplicate type with another weight
    ]
    frame = spark.createDataFrame(rows, "event_type string, value double, weight double")
    spark_rewards = [r[0] for r in frame.select(rule.spark_column(F.col("weight"))).collect()]
    kinds, values, weights = (np.array([r[i] for r in rows], dtype=object if i == 0 else float) for i in range(3))
    numpy_rewards = rule.numpy(kinds, np.where(values == None, np.nan, values).astype(float), weights)  # noqa: E711
    np.testing.assert_allclose(spark_rewards, numpy_rewards)
    np.testing.assert_allclose(numpy_rewards, [0.1, 0.3, 5.0, 1.0, 0.375, -1.0, 0.0, 0.0, 1.0])


def test_seed_states_stand_in_for_the_history_before_the_window(spark, events, item_index):
    ddl = schema.SPARK_DDL[schema.EVENTS]
    late = (at(18, 8), "u3", "i2", "view", None, "s6")  # arrived after the seed's night, sorts before it
    history = events.where(f"{schema.EVENT_TIME} < '2026-11-20'").unionByName(
        spark.createDataFrame([(at(18, 9), "u3", "i3", "add_to_cart", None, "s6")], ddl)
    )
    since_seed = events.where(f"{schema.EVENT_TIME} >= '2026-11-20'").unionByName(
        spark.createDataFrame([late], ddl)
    )
    seed = build_user_states(history, item_index=item_index, max_len=2, as_of="2026-11-19")

    seeded = build(since_seed, item_index, seed_states=seed)

    expected = spark.createDataFrame(
        [
            ("u1", at(20, 9), [1], [VIEW], 2, "add_to_cart", 0.3, False, "train", None, None),
            ("u1", at(20, 9, 10), [1, 2], [VIEW, CART], 3, "purchase", 1.0, True, "train", None, None),
            # The seed's interacted and purchased lists stand for the history before the window.
            ("u1", at(21, 10), [2, 3], [CART, BUY], 1, "rating", 1.0, False, "validation", [1, 2, 3], [3]),
            ("u1", at(21, 10, 5), [3, 1], [BUY, RATE], 2, "view", 0.0, True, "validation", [1, 2, 3], [3]),
            ("u2", at(20, 12), [], [], 2, "rating", -0.75, True, "train", None, None),
            ("u3", at(21, 8), [2, 3], [VIEW, CART], 3, "rating", 0.0, True, "validation", [2, 3], []),
            ("u3", at(21, 9), [3, 3], [CART, RATE], 1, "view", 0.0, True, "validation", [2, 3], []),
        ],
        TRANSITIONS,
    )
    assertDataFrameEqual(seeded, expected)
    assertDataFrameEqual(build(history.unionByName(since_seed), item_index), expected)
