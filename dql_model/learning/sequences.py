"""Sequence batches: each user's events of a transitions split as one sequence, cut into windows.

With ``train.batching: sequences`` the Q-network is trained the way the strong sequential
recommenders train (GRU4Rec, SASRec): one encoder pass over a user's sequence gives the state
after every event, and the losses of every position (TD target, conservative term, next-item
cross-entropy) come from that one pass. A transitions row holds a copy of its state; a window
holds the state of every one of its positions at once.

A user's sequence is the state of their first transition (the history before the training
window, up to etl.max_len events: context, not trained on) followed by the action of every
transition, in order. Sequences longer than ``seq_len`` are cut from the end into windows of
``seq_len`` events that overlap by one event: the first event of a window (other than the
user's first window) is context only, so every action is trained on exactly once, and always
with at least one event of context unless it is the user's very first event.

    windows = load_windows(transitions_dir, max_len=20, seq_len=50, split="train")
    for batch in windows.batches(batch_size=256, seed=1):
        ...  # SequenceBatch: items/events [S, T] right-padded, loss/reward/done per position
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dql_model.contract import schema
from dql_model.warehouse import data


@dataclass
class SequenceBatch:
    """Windows of user sequences, right-padded (position 0 is a window's earliest event).

    Position t of a row is trained on (``loss``) when it is an action with its state, the
    events before it in the window, known; its reward and done are that transition's.
    """

    items: np.ndarray
    """[S, T] item_idx, 0 after the window's end."""
    events: np.ndarray
    """[S, T] event codes."""
    loss: np.ndarray
    """[S, T] bool: the position is an action trained on."""
    reward: np.ndarray
    """[S, T] float32 reward of the action at each position trained on (0 elsewhere)."""
    done: np.ndarray
    """[S, T] bool: the episode ends with the action at the position (only where trained on)."""

    def __len__(self) -> int:
        """Transitions in the batch: the positions trained on."""
        return int(self.loss.sum())

    @property
    def n_windows(self) -> int:
        return self.items.shape[0]

    def take(self, index: np.ndarray) -> SequenceBatch:
        """The windows at ``index``, cut to the longest of them."""
        width = max(int((self.items[index] != 0).sum(1).max(initial=1)), 1)
        return SequenceBatch(
            **{
                name: getattr(self, name)[index, :width]
                for name in ("items", "events", "loss", "reward", "done")
            }
        )

    def batches(self, batch_size: int, *, seed: int | None = 0) -> Iterator[SequenceBatch]:
        """Batches of ``batch_size`` windows in a seeded random order (None: in order)."""
        order = (
            np.arange(self.n_windows)
            if seed is None
            else np.random.default_rng(seed).permutation(self.n_windows)
        )
        for start in range(0, self.n_windows, batch_size):
            yield self.take(np.sort(order[start : start + batch_size]))


def load_windows(
    folder: str | os.PathLike[str],
    *,
    max_len: int,
    seq_len: int,
    split: str | tuple[str, ...] = schema.TRAIN,
    credit_carts: bool = False,
) -> SequenceBatch:
    """Every window of the split's user sequences (module docstring), in user order.

    Rows are grouped by user_id in their file order, which the ETL writes in time order (the
    order n-step returns rely on too); ``credit_carts`` moves purchase rewards onto their
    add-to-carts first (data.credit_purchases_to_carts).
    """
    if seq_len < 2:
        raise ValueError(f"train.seq_len={seq_len} must be at least 2")
    files = data.parquet_files(folder)
    columns = data.TRANSITION_COLUMNS + [schema.USER_ID]
    splits = pa.array([split] if isinstance(split, str) else list(split))
    tables = []
    for file in files:
        pf = pq.ParquetFile(file)
        data._check_columns(file, pf.schema_arrow.names, columns)
        table = pf.read(columns=columns)
        tables.append(table.filter(pc.is_in(table.column(schema.SPLIT), splits)))
    table = pa.concat_tables(tables) if tables else None
    if table is None or table.num_rows == 0:
        return _empty(seq_len)
    # A stable sort by user keeps each user's rows in file (time) order.
    table = table.take(pc.sort_indices(table, [(schema.USER_ID, "ascending")]))
    where = f"{folder} ({split})"
    decoded = data._decode_transitions(table, max_len, where)
    rows = data.TransitionBatch.from_state(**decoded)
    if credit_carts:
        rows = data.credit_purchases_to_carts(rows)
    users = table.column(schema.USER_ID).to_numpy(zero_copy_only=False)
    return _windows(rows, users, seq_len)


def _empty(seq_len: int) -> SequenceBatch:
    shape = (0, seq_len)
    return SequenceBatch(
        np.zeros(shape, np.int64), np.zeros(shape, np.int64), np.zeros(shape, bool),
        np.zeros(shape, np.float32), np.zeros(shape, bool),
    )  # fmt: skip


def _windows(rows: data.TransitionBatch, users: np.ndarray, seq_len: int) -> SequenceBatch:
    """Windows from one-step transitions grouped by user (``users`` per row, equal ones adjacent)."""
    n_rows = len(rows)
    first_row = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    rows_per_user = np.diff(np.r_[first_row, n_rows])
    # Each user's prefix: the (left-padded) state of their first transition.
    prefix_items = rows.state_items[first_row]
    prefix_len = (prefix_items != 0).sum(1)
    tokens_per_user = prefix_len + rows_per_user
    user_start = np.r_[0, np.cumsum(tokens_per_user)[:-1]]

    n_tokens = int(tokens_per_user.sum())
    items = np.zeros(n_tokens, np.int64)
    events = np.zeros(n_tokens, np.int64)
    is_action = np.zeros(n_tokens, bool)
    reward = np.zeros(n_tokens, np.float32)
    done = np.zeros(n_tokens, bool)
    # Prefix tokens: the trailing prefix_len entries of each first state, in order.
    width = prefix_items.shape[1]
    user_of_prefix = np.repeat(np.arange(len(first_row)), prefix_len)
    offset = np.arange(len(user_of_prefix)) - np.repeat(np.r_[0, np.cumsum(prefix_len)[:-1]], prefix_len)
    column = width - np.repeat(prefix_len, prefix_len) + offset
    prefix_at = user_start[user_of_prefix] + offset
    items[prefix_at] = prefix_items[user_of_prefix, column]
    events[prefix_at] = rows.state_events[first_row][user_of_prefix, column]
    # Action tokens follow the prefix.
    user_of_row = np.repeat(np.arange(len(first_row)), rows_per_user)
    action_at = (
        user_start[user_of_row] + prefix_len[user_of_row] + (np.arange(n_rows) - first_row[user_of_row])
    )
    items[action_at] = rows.action
    events[action_at] = rows.event_code
    is_action[action_at] = True
    reward[action_at] = rows.reward
    done[action_at] = rows.done

    # Windows from the end of each sequence, stride seq_len - 1 (one event of overlap).
    stride = seq_len - 1
    n_windows = 1 + np.maximum(0, -(-(tokens_per_user - seq_len) // stride))
    user_of_window = np.repeat(np.arange(len(first_row)), n_windows)
    k = np.arange(len(user_of_window)) - np.repeat(np.r_[0, np.cumsum(n_windows)[:-1]], n_windows)
    end = tokens_per_user[user_of_window] - k * stride
    start = np.maximum(0, end - seq_len)
    positions = np.arange(seq_len)
    index = user_start[user_of_window, None] + start[:, None] + positions[None, :]
    valid = positions[None, :] < (end - start)[:, None]
    index = np.where(valid, index, 0)

    def gather(values, fill):
        return np.where(valid, values[index], fill)

    loss = gather(is_action, False) & ((positions[None, :] > 0) | (start[:, None] == 0))
    keep = loss.any(axis=1)
    windows = SequenceBatch(
        items=gather(items, 0)[keep],
        events=gather(events, 0)[keep],
        loss=loss[keep],
        reward=np.where(loss, gather(reward, 0.0), 0.0).astype(np.float32)[keep],
        done=(loss & gather(done, False))[keep],
    )
    if len(windows) != n_rows:  # every action is trained on exactly once
        raise AssertionError(f"{len(windows)} positions trained on from {n_rows} transitions")
    return windows
