"""Loader tests: padding, next-state derivation, streaming and the small tables.

The input partitions are written by the builders of tests/factories.py.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dql_model.contract import schema
from dql_model.warehouse import data, storage
from tests.factories import (
    INT_LIST,
    REWARDS,
    item_index_table,
    transitions_table,
    user_states_table,
    write_parquet,
)


def test_pad_left_keeps_the_most_recent_items_at_the_end():
    lists = pa.array([[3, 5], [], None, [1, 2, 3, 4, 5, 6], [9, 8, 7, 6]], INT_LIST)
    expected = np.array(
        [
            [0, 0, 3, 5],
            [0, 0, 0, 0],
            [0, 0, 0, 0],
            [3, 4, 5, 6],
            [9, 8, 7, 6],
        ]
    )
    np.testing.assert_array_equal(data.pad_left(lists, 4), expected)
    # A sliced array (non-zero offset) must not read its neighbours' values.
    np.testing.assert_array_equal(data.pad_left(lists.slice(3, 2), 4), expected[3:])


def test_loader_derives_the_next_state_by_shifting_and_appending(tmp_path):
    view, cart, buy = (schema.EVENT_CODE[t] for t in (schema.VIEW, schema.ADD_TO_CART, schema.PURCHASE))
    rows = [
        {"item_seq": [3, 5], "event_seq": [view, cart], "action": 7, "event_type": schema.PURCHASE},
        {"item_seq": [1, 2, 3, 4], "event_seq": [view] * 4, "action": 9, "event_type": schema.ADD_TO_CART},
        {"item_seq": [], "event_seq": [], "action": 6, "event_type": schema.VIEW, "done": True},
        {"item_seq": [1, 2, 3, 4, 5, 6], "event_seq": [view] * 5 + [buy], "action": 2},
    ]
    folder = write_parquet(tmp_path / "t", transitions_table(rows))
    got = data.load_transitions(folder, max_len=4, split=schema.TRAIN)

    np.testing.assert_array_equal(got.state_items, [[0, 0, 3, 5], [1, 2, 3, 4], [0, 0, 0, 0], [3, 4, 5, 6]])
    np.testing.assert_array_equal(
        got.state_events, [[0, 0, view, cart], [view] * 4, [0] * 4, [view, view, view, buy]]
    )
    np.testing.assert_array_equal(got.next_items, [[0, 3, 5, 7], [2, 3, 4, 9], [0, 0, 0, 6], [4, 5, 6, 2]])
    np.testing.assert_array_equal(
        got.next_events,
        [[0, view, cart, buy], [view, view, view, cart], [0, 0, 0, view], [view, view, buy, view]],
    )
    np.testing.assert_array_equal(got.action, [7, 9, 6, 2])
    np.testing.assert_array_equal(got.event_code, [buy, cart, view, view])
    np.testing.assert_allclose(got.reward, [1.0, 0.3, 0.0, 0.0])
    np.testing.assert_array_equal(got.done, [False, False, True, False])
    assert got.state_items.dtype == np.int64 and got.reward.dtype == np.float32 and got.done.dtype == bool


def test_n_step_returns_follow_one_user_until_the_episode_ends(tmp_path):
    view, cart, buy = (schema.EVENT_CODE[t] for t in (schema.VIEW, schema.ADD_TO_CART, schema.PURCHASE))
    # user a: 3 -> 5 (cart) -> 5 (purchase, episode ends) -> 8 (new session); user b: 4 -> 6.
    rows = [
        {"user_id": "a", "item_seq": [1], "action": 3, "reward": 0.0},
        {"user_id": "a", "item_seq": [1, 3], "action": 5, "event_type": schema.ADD_TO_CART, "reward": 0.3},
        {
            "user_id": "a",
            "item_seq": [1, 3, 5],
            "event_seq": [view, view, cart],
            "action": 5,
            "event_type": schema.PURCHASE,
            "reward": 1.0,
            "done": True,
        },
        {"user_id": "a", "item_seq": [3, 5, 5], "event_seq": [view, cart, buy], "action": 8, "reward": 0.0},
        {"user_id": "b", "item_seq": [], "action": 4, "reward": 0.5},
        {"user_id": "b", "item_seq": [4], "action": 6, "reward": 0.25},
    ]
    folder = write_parquet(tmp_path / "t", transitions_table(rows))
    one = data.load_transitions(folder, max_len=3, split=schema.TRAIN)
    got = data.load_transitions(folder, max_len=3, split=schema.TRAIN, n_step=3)

    # Row 0 reaches rows 1 and 2 (3 steps); row 1 stops at the episode's end in row 2; row 3 is
    # a's last row, so it bootstraps after one step; b's rows do not reach back into a's.
    np.testing.assert_array_equal(got.n_steps, [3, 2, 1, 1, 2, 1])
    np.testing.assert_allclose(
        got.later_rewards, [[0.3, 1.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.25, 0.0], [0.0, 0.0]]
    )
    np.testing.assert_array_equal(got.done, [True, True, True, False, False, False])
    np.testing.assert_array_equal(got.next_items[0], one.next_items[2])
    np.testing.assert_array_equal(got.next_events[0], [view, cart, buy])
    np.testing.assert_array_equal(got.next_items[4], one.next_items[5])
    # the one-step fields are untouched
    np.testing.assert_array_equal(got.reward, one.reward)
    np.testing.assert_array_equal(got.state_items, one.state_items)
    assert one.later_rewards.shape == (6, 0) and (one.n_steps == 1).all()

    streamed = list(data.iter_transition_batches(folder, max_len=3, batch_size=4, shuffle=False, n_step=3))
    np.testing.assert_array_equal(np.concatenate([b.n_steps for b in streamed]), got.n_steps)
    with pytest.raises(ValueError, match="n_step=0"):
        data.load_transitions(folder, max_len=3, split=schema.TRAIN, n_step=0)


def test_purchase_rewards_move_to_the_add_to_cart_of_the_same_item_in_the_session(tmp_path):
    view, cart, buy = (schema.EVENT_CODE[t] for t in (schema.VIEW, schema.ADD_TO_CART, schema.PURCHASE))
    # user a, one session: view 3, cart 3, view 5, cart 5, view 7, checkout: buy 3, buy 9 (never
    # carted); then a new session: buy 5 (its cart was in the previous session).
    # user b: cart 4, then buy 4 (b's own cart, not a's).
    a_events = [(3, view), (3, cart), (5, view), (5, cart), (7, view), (3, buy), (9, buy), (5, buy)]
    rows, seq, codes = [], [], []
    for i, (item, code) in enumerate(a_events):
        event_type = schema.EVENT_TYPES[code - 1]
        rows.append(
            {
                "user_id": "a",
                "item_seq": list(seq),
                "event_seq": list(codes),
                "action": item,
                "event_type": event_type,
                "reward": REWARDS[event_type] + (0.25 if item == 3 and code == buy else 0.0),
                "done": i == 6,  # the first session ends with the purchase of 9
            }
        )
        seq, codes = [*seq, item][-4:], [*codes, code][-4:]
    rows += [
        {"user_id": "b", "item_seq": [], "action": 4, "event_type": schema.ADD_TO_CART},
        {"user_id": "b", "item_seq": [4], "event_seq": [cart], "action": 4, "event_type": schema.PURCHASE},
    ]
    folder = write_parquet(tmp_path / "t", transitions_table(rows))
    plain = data.load_transitions(folder, max_len=4, split=schema.TRAIN)
    got = data.load_transitions(folder, max_len=4, split=schema.TRAIN, credit_carts=True)

    c, p = REWARDS[schema.ADD_TO_CART], REWARDS[schema.PURCHASE]
    np.testing.assert_allclose(plain.reward, [0, c, 0, c, 0, p + 0.25, p, p, c, p])
    # 3's purchase (with its extra value) moves to 3's add-to-cart; 9 had no cart and keeps its
    # reward; 5 was carted in another session, so its purchase keeps it too; b's moves to b's cart.
    np.testing.assert_allclose(got.reward, [0, c + p + 0.25, 0, c, 0, 0, p, p, c + p, 0])
    assert got.reward.sum() == pytest.approx(plain.reward.sum())
    # the n-step return of the view of 3 now sees the purchase one step later
    three = data.load_transitions(folder, max_len=4, split=schema.TRAIN, n_step=2, credit_carts=True)
    np.testing.assert_allclose(three.later_rewards[0], [c + p + 0.25])
    streamed = data.iter_transition_batches(
        folder, max_len=4, batch_size=16, shuffle=False, n_step=2, credit_carts=True
    )
    np.testing.assert_allclose(next(streamed).reward, got.reward)


def _train_rows(n: int) -> list[dict]:
    return [
        {"item_seq": [i % 7 + 1], "action": i + 1, "split": schema.VALIDATION if i % 4 == 0 else schema.TRAIN}
        for i in range(n)
    ]


def test_stream_yields_every_train_row_once_in_a_seeded_order(tmp_path):
    folder = write_parquet(tmp_path / "t", transitions_table(_train_rows(200)), files=3, row_group_size=16)
    train_actions = sorted(i + 1 for i in range(200) if i % 4 != 0)

    def stream(seed, **kw):
        kw = {"max_len": 3, "batch_size": 32, "seed": seed, "buffer_rows": 40, "read_rows": 10} | kw
        return list(data.iter_transition_batches(folder, **kw))

    batches = stream(seed=1)
    assert [len(b) for b in batches[:-1]] == [32] * (len(batches) - 1)
    seen = np.concatenate([b.action for b in batches])
    assert sorted(seen.tolist()) == train_actions
    # state and action stay paired through the shuffle
    for b in batches:
        np.testing.assert_array_equal(b.state_items[:, -1], (b.action - 1) % 7 + 1)
        np.testing.assert_array_equal(b.next_items[:, -1], b.action)

    again = np.concatenate([b.action for b in stream(seed=1)])
    other = np.concatenate([b.action for b in stream(seed=2)])
    np.testing.assert_array_equal(seen, again)
    assert not np.array_equal(seen, other)
    in_order = np.concatenate([b.action for b in stream(seed=0, shuffle=False)])
    np.testing.assert_array_equal(in_order, train_actions)
    assert data.count_transitions(folder, split=schema.TRAIN) == len(train_actions)


def test_validation_split_and_action_counts(tmp_path):
    folder = write_parquet(tmp_path / "t", transitions_table(_train_rows(20)), files=2)
    val = data.load_transitions(folder, max_len=2, split=schema.VALIDATION)
    np.testing.assert_array_equal(val.action, [1, 5, 9, 13, 17])
    everything = data.load_transitions(folder, max_len=2, split=None)
    np.testing.assert_array_equal(everything.action, np.arange(1, 21))
    rows = [{"item_seq": [], "action": a} for a in [2, 2, 3, 9]] + [
        {"item_seq": [], "action": 1, "split": schema.VALIDATION}
    ]
    counts = data.action_counts(write_parquet(tmp_path / "c", transitions_table(rows)), n_items=4)
    np.testing.assert_array_equal(counts, [0, 0, 2, 1, 0])  # 9 is beyond n_items, 1 is validation


def test_bad_event_type_is_an_error_naming_the_file(tmp_path):
    folder = write_parquet(tmp_path / "t", transitions_table([{"item_seq": [1], "action": 2}]))
    table = pq.read_table(folder / "part-00000.parquet")
    table = table.set_column(
        table.schema.get_field_index(schema.EVENT_TYPE), schema.EVENT_TYPE, pa.array(["click"])
    )
    pq.write_table(table, folder / "part-00000.parquet")
    with pytest.raises(ValueError, match=r"part-00000\.parquet.*bad_event_type"):
        data.load_transitions(folder, max_len=2, split=schema.TRAIN)


def test_missing_partition_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="run_date=2026-11-27"):
        data.load_transitions(tmp_path / "run_date=2026-11-27", max_len=2, split=schema.TRAIN)


def test_item_features_categories_prices_availability(tmp_path):
    table = item_index_table(
        5,
        categories=["shoes", "hats", None, "shoes", "bags"],
        prices=[0.0, 1.0, 6.5, None, 1e9],
        available=[True, None, False, True, True],
    )
    # rows out of order and one idx left unused: the loader must place them by item_idx
    table = table.set_column(1, schema.ITEM_IDX, pa.array([1, 2, 3, 4, 6], pa.int32())).take([4, 2, 0, 3, 1])
    items = data.load_item_features(write_parquet(tmp_path / "i", table), price_buckets=4)

    assert items.n_items == 6 and items.n_categories == 3
    assert items.category_ids == ["shoes", "hats", "bags"]  # first appearance by item_idx
    np.testing.assert_array_equal(items.category, [0, 1, 2, 0, 1, 0, 3])
    # 1 + floor(log2(1 + price)), clipped to 4; unknown price -> 0
    np.testing.assert_array_equal(items.price_bucket, [0, 1, 2, 3, 0, 0, 4])
    np.testing.assert_array_equal(items.available, [False, True, False, False, True, False, True])
    assert items.item_ids.tolist() == [None, "i1", "i2", "i3", "i4", None, "i5"]


def test_item_index_duplicates_are_an_error(tmp_path):
    table = item_index_table(3).set_column(1, schema.ITEM_IDX, pa.array([1, 2, 2], pa.int32()))
    with pytest.raises(ValueError, match=r"duplicate item_idx \[2\]"):
        data.load_item_features(write_parquet(tmp_path / "i", table), price_buckets=4)


def test_user_states_pad_and_purchases(tmp_path):
    rows = [
        {"user_id": "a", "item_seq": [1, 2, 3], "purchased": [2]},
        {"user_id": "b", "item_seq": [], "purchased": []},
        {"user_id": "c", "item_seq": [4], "purchased": [4, 1]},
    ]
    folder = write_parquet(tmp_path / "u", user_states_table(rows), files=2)
    states = data.load_user_states(folder, max_len=2)
    assert states.user_id.to_pylist() == ["a", "b", "c"]
    np.testing.assert_array_equal(states.state_items, [[2, 3], [0, 0], [0, 4]])
    np.testing.assert_array_equal(states.excluded_indptr, [0, 1, 1, 3])
    np.testing.assert_array_equal(states.excluded_items, [2, 4, 1])
    tail = states.slice(1, 3)
    np.testing.assert_array_equal(tail.excluded_indptr, [0, 0, 2])
    np.testing.assert_array_equal(tail.excluded_items, [4, 1])
    chunks = list(data.iter_user_states(folder, max_len=2, batch_rows=1))
    assert [c.user_id.to_pylist() for c in chunks] == [["a"], ["b"], ["c"]]


def test_left_align_closes_holes():
    items = np.array([[0, 5, 0, 6], [7, 0, 0, 0]])
    events = np.array([[0, 1, 0, 2], [3, 0, 0, 0]])
    got_items, got_events = data.left_align(items, events)
    np.testing.assert_array_equal(got_items, [[0, 0, 5, 6], [0, 0, 0, 7]])
    np.testing.assert_array_equal(got_events, [[0, 0, 1, 2], [0, 0, 0, 3]])


def test_user_states_are_read_with_the_exclusion_rule(tmp_path):
    rows = [
        {"user_id": "a", "item_seq": [3], "purchased": [2], "interacted": [1, 2, 3]},
        {"user_id": "b", "item_seq": [4], "purchased": [], "interacted": [4]},
    ]
    folder = write_parquet(tmp_path / "u", user_states_table(rows))
    interacted = data.load_user_states(folder, max_len=2, exclude="interacted")
    np.testing.assert_array_equal(interacted.excluded_indptr, [0, 3, 4])
    np.testing.assert_array_equal(interacted.excluded_items, [1, 2, 3, 4])
    nothing = data.load_user_states(folder, max_len=2, exclude="none")
    np.testing.assert_array_equal(nothing.excluded_indptr, [0, 0, 0])
    assert data.user_state_columns("none") == data.USER_STATE_COLUMNS
    with pytest.raises(ValueError, match="exclusion rule 'seen' is not one of"):
        data.load_user_states(folder, max_len=2, exclude="seen")


def test_exclusions_follow_the_validation_rows_in_load_order(tmp_path):
    rows = [
        {"item_seq": [1], "action": 2, "split": schema.TRAIN},
        {"item_seq": [1, 2], "action": 3, "split": schema.VALIDATION, "history_items": [1, 2], "history_purchased": [2]},
        {"item_seq": [4], "action": 5, "split": schema.TRAIN},
        {"item_seq": [], "action": 4, "split": schema.VALIDATION},  # no history before it: null lists
        {"item_seq": [5], "action": 1, "split": schema.VALIDATION, "history_items": [5, 4], "history_purchased": []},
    ]
    folder = write_parquet(tmp_path / "t", transitions_table(rows), files=2, row_group_size=1)
    val = data.load_transitions(folder, max_len=2, split=schema.VALIDATION)
    np.testing.assert_array_equal(val.action, [3, 4, 1])
    interacted = data.load_exclusions(folder, exclude="interacted")
    np.testing.assert_array_equal(interacted.indptr, [0, 2, 2, 4])
    np.testing.assert_array_equal(interacted.items, [1, 2, 5, 4])
    rows_, items = interacted.pairs(slice(1, 3))
    np.testing.assert_array_equal(rows_, [1, 1])
    np.testing.assert_array_equal(items, [5, 4])
    purchased = data.load_exclusions(folder, exclude="purchased")
    np.testing.assert_array_equal(purchased.indptr, [0, 1, 1, 1])
    assert len(data.load_exclusions(folder, exclude="none")) == 3
    # Partitions written before the history columns existed mask nothing.
    old = write_parquet(tmp_path / "old", transitions_table(rows).drop_columns([schema.HISTORY_ITEMS]))
    assert data.load_exclusions(old, exclude="interacted").items.size == 0
    both = data.load_transitions(folder, max_len=2, split=(schema.TRAIN, schema.VALIDATION))
    assert len(both) == 5


def test_new_items_are_those_validation_shows_and_training_never_does(tmp_path):
    val_row = {"split": schema.VALIDATION}
    rows = [
        {"item_seq": [1, 2], "action": 3},
        {"item_seq": [4, 9], "action": 2},  # 9 is beyond the catalogue
        {"item_seq": [3, 5], "action": 6, **val_row},  # 5 only in a validation state
        {"item_seq": [], "action": 1, **val_row},
        {"item_seq": [6], "action": 6, **val_row},
    ]
    folder = write_parquet(tmp_path / "t", transitions_table(rows), files=2)
    seen = data.items_in_split(folder, n_items=7, split=schema.TRAIN)
    np.testing.assert_array_equal(np.flatnonzero(seen), [1, 2, 3, 4])  # actions and states
    in_validation = data.items_in_split(folder, n_items=7, split=schema.VALIDATION)
    np.testing.assert_array_equal(np.flatnonzero(in_validation), [1, 3, 5, 6])

    val = data.load_transitions(folder, max_len=2, split=schema.VALIDATION)
    np.testing.assert_array_equal(data.new_items(val, seen), [5, 6])  # 7 is in neither split


def test_scoring_reads_only_the_users_active_in_the_window(tmp_path):
    """score.active_window: the run date counts as the first day; a user last seen the day before the
    window opens is left out, one seen at its first midnight is in; all keeps everyone; auto is 30 days
    on a time split and everyone under leave-last-out (a ratings panel)."""
    from dql_model.config import ConfigError, ScoreConfig
    from tests.factories import user_states_table

    folder = tmp_path / "user_states"
    at = lambda *day: dt.datetime(*day, tzinfo=dt.UTC)  # noqa: E731
    rows = [
        {"user_id": "old", "item_seq": [1], "last_event_time": at(2026, 10, 28, 23, 59)},
        {"user_id": "edge", "item_seq": [2], "last_event_time": at(2026, 10, 29)},
        {"user_id": "today", "item_seq": [3], "last_event_time": at(2026, 11, 27, 8)},
    ]
    storage.write_partition(user_states_table(rows), str(folder))
    since = data.active_since(ScoreConfig(active_window="30d"), {}, "2026-11-27")
    assert since == at(2026, 10, 29) == data.active_since(ScoreConfig(), {"validation": "time"}, "2026-11-27")
    assert data.active_since(ScoreConfig(active_window="all"), {"validation": "time"}, "2026-11-27") is None
    assert data.active_since(ScoreConfig(), {"validation": "leave_last_out"}, "2026-11-27") is None  # older runs
    panel = {"view": 0, "add_to_cart": 0, "purchase": 0, "rating": 99_057}  # MovieLens: everyone
    shop = {"view": 2_664_091, "add_to_cart": 69_248, "purchase": 22_487, "rating": 0}  # RetailRocket's months
    assert data.active_since(ScoreConfig(), {"validation": "leave_last_out", "event_types": panel}, "2026-11-27") is None
    # A long shop log validates leave-last-out (its last days are too thin for a time split): still 30 days.
    assert data.active_since(ScoreConfig(), {"validation": "leave_last_out", "event_types": shop}, "2026-11-27") == since
    with pytest.raises(ConfigError, match="score.active_window='30 days'"):
        ScoreConfig(active_window="30 days")
    kept = data.load_user_states(folder, max_len=4, since=since)
    assert kept.user_id.to_pylist() == ["edge", "today"]
    np.testing.assert_array_equal(kept.state_items[:, -1], [2, 3])
    assert len(data.load_user_states(folder, max_len=4)) == 3
