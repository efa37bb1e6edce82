"""Warehouse rows -> numpy arrays for the model (no torch here).

Curated partitions (``item_index``, ``user_states``, ``transitions``) are read with pyarrow.
Sequences are stored oldest first and come out *left-padded* to a fixed length L: the most
recent interaction is always in the last column, padding (0) fills the front. The next state of
a transition is derived here (state shifted left, logged action appended), never stored twice.

Training streams transitions in record batches through a shuffle buffer, so a partition larger
than memory can be trained on; evaluation loads the (small) validation split whole.

n-step returns are assembled here too, before shuffling, from consecutive rows of one user: row
t + 1 continues row t when its state is exactly row t's next state (the partition is written in
user and time order). A chain stops at the end of an episode and at a read-chunk boundary, where
the row bootstraps after fewer steps, which is still a valid (shorter) return.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dql_model.config import parse_active_window
from dql_model.contract import schema

TRANSITION_COLUMNS = [
    schema.ITEM_SEQ,
    schema.EVENT_SEQ,
    schema.ACTION,
    schema.EVENT_TYPE,
    schema.REWARD,
    schema.DONE,
    schema.SPLIT,
]
ITEM_INDEX_COLUMNS = [schema.ITEM_ID, schema.ITEM_IDX, schema.CATEGORY_ID, schema.PRICE, schema.AVAILABLE]
USER_STATE_COLUMNS = [schema.USER_ID, schema.ITEM_SEQ, schema.EVENT_SEQ]
EXCLUDE_RULES = ("purchased", "interacted", "none")
"""What scoring (and the evaluation) never recommends to a user: ``score.exclude`` once resolved."""
EXCLUDE_STATE_COLUMN = {"purchased": schema.PURCHASED, "interacted": schema.INTERACTED}
"""user_states column each rule masks (``none``: nothing)."""
EXCLUDE_HISTORY_COLUMN = {"purchased": schema.HISTORY_PURCHASED, "interacted": schema.HISTORY_ITEMS}
"""transitions column (validation rows) each rule masks."""
CART_CODE = schema.EVENT_CODE[schema.ADD_TO_CART]
PURCHASE_CODE = schema.EVENT_CODE[schema.PURCHASE]


def night_protocol(cfg, run_date: str) -> dict:
    """The protocol the night's ETL job chose (validation split, exclusion rule, event types), from
    its run summary; {} for a summary written before it recorded one, or none at all."""
    from dql_model.warehouse.storage import read_json

    return read_json(cfg.layout.etl_summary(run_date)).get("protocol") or {}


def exclude_rule(score_cfg, protocol: dict | None) -> str:
    """``score.exclude`` (a ScoreConfig's), with auto resolved as the night's ETL job chose it
    (``night_protocol``); without a recorded choice (older runs) purchases are masked, as every run
    did then."""
    if score_cfg.exclude != "auto":
        return score_cfg.exclude
    return (protocol or {}).get("exclude", "purchased")


# --------------------------------------------------------------------------------------------
# Arrays


@dataclass
class TransitionBatch:
    """Transitions as arrays; sequences are [B, L] int64, left-padded with 0."""

    state_items: np.ndarray
    """[B, L] item_idx of the state, oldest first, left-padded."""
    state_events: np.ndarray
    """[B, L] event codes (schema.EVENT_CODE) aligned with state_items."""
    action: np.ndarray
    """[B] int64 item_idx the user interacted with next (the logged action)."""
    event_code: np.ndarray
    """[B] int64 event code of the action."""
    reward: np.ndarray
    """[B] float32 reward of the action."""
    done: np.ndarray
    """[B] bool, the episode (session or history) ends within the row's n_steps actions."""
    next_items: np.ndarray
    """[B, L] state to bootstrap from, n_steps actions later (one step: state shifted, action appended)."""
    next_events: np.ndarray
    """[B, L] event codes of next_items."""
    later_rewards: np.ndarray
    """[B, n - 1] float32 rewards of the next n - 1 actions of the episode; 0 beyond n_steps."""
    n_steps: np.ndarray
    """[B] int64 actions between the state and next_items, 1..n."""

    def __len__(self) -> int:
        return len(self.action)

    @property
    def max_len(self) -> int:
        return self.state_items.shape[1]

    def take(self, index: np.ndarray | slice) -> TransitionBatch:
        """Rows selected by an index array or a slice."""
        return TransitionBatch(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @classmethod
    def from_state(
        cls,
        state_items: np.ndarray,
        state_events: np.ndarray,
        action: np.ndarray,
        event_code: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
    ) -> TransitionBatch:
        """One-step transitions: the next state is derived from the state and the action."""
        next_items, next_events = next_state(state_items, state_events, action, event_code)
        return cls(
            state_items=state_items,
            state_events=state_events,
            action=action,
            event_code=event_code,
            reward=reward,
            done=done,
            next_items=next_items,
            next_events=next_events,
            later_rewards=np.zeros((len(action), 0), dtype=np.float32),
            n_steps=np.ones(len(action), dtype=np.int64),
        )

    def as_dict(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class ItemFeatures:
    """Per item_idx features of the catalogue; row 0 is padding."""

    item_ids: np.ndarray
    """[n_items + 1] object: item_idx -> item_id (None at 0 and at unused indices)."""
    category: np.ndarray
    """[n_items + 1] int64 category index, 1..n_categories; 0 = padding or unknown category."""
    price_bucket: np.ndarray
    """[n_items + 1] int64 log-price bucket, 1..price_buckets; 0 = padding or unknown price."""
    available: np.ndarray
    """[n_items + 1] bool, the item may be recommended (False at 0, unused indices, null)."""
    category_ids: list[str]
    """category index - 1 -> category_id, in order of first appearance by item_idx."""

    @property
    def n_items(self) -> int:
        return len(self.item_ids) - 1

    @property
    def n_categories(self) -> int:
        return len(self.category_ids)


@dataclass
class UserStates:
    """Current state of every user, as scoring needs it."""

    user_id: pa.Array
    """[U] user ids (strings)."""
    state_items: np.ndarray
    """[U, L] int64 item_idx, left-padded."""
    state_events: np.ndarray
    """[U, L] int64 event codes, left-padded."""
    excluded_indptr: np.ndarray
    """[U + 1] int64 offsets into excluded_items (CSR rows)."""
    excluded_items: np.ndarray
    """[nnz] int64 item_idx never to recommend (the ``score.exclude`` rule); user u's are
    [indptr[u]:indptr[u+1]]."""

    def __len__(self) -> int:
        return len(self.user_id)

    def slice(self, start: int, stop: int) -> UserStates:
        lo, hi = self.excluded_indptr[start], self.excluded_indptr[min(stop, len(self))]
        return UserStates(
            user_id=self.user_id[start:stop],
            state_items=self.state_items[start:stop],
            state_events=self.state_events[start:stop],
            excluded_indptr=self.excluded_indptr[start : stop + 1] - lo,
            excluded_items=self.excluded_items[lo:hi],
        )


@dataclass
class Exclusions:
    """Items masked per row of a TransitionBatch (CSR), what scoring would not have recommended."""

    indptr: np.ndarray
    """[B + 1] int64 offsets into items."""
    items: np.ndarray
    """[nnz] int64 item_idx masked; row r's are items[indptr[r]:indptr[r + 1]]."""

    def __len__(self) -> int:
        return len(self.indptr) - 1

    @classmethod
    def none(cls, n_rows: int) -> Exclusions:
        return cls(np.zeros(n_rows + 1, dtype=np.int64), np.zeros(0, dtype=np.int64))

    def take(self, index: np.ndarray) -> Exclusions:
        """The rows ``index``, in that order (as ``TransitionBatch.take``)."""
        starts, counts = self.indptr[index], np.diff(self.indptr)[index]
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        within = np.arange(indptr[-1]) - np.repeat(indptr[:-1], counts)
        return Exclusions(indptr, self.items[np.repeat(starts, counts) + within])

    def pairs(self, rows: slice) -> tuple[np.ndarray, np.ndarray]:
        """(row within the slice, item_idx) of the masked items of rows ``rows``."""
        start, stop, _ = rows.indices(len(self))
        lo, hi = self.indptr[start], self.indptr[stop]
        counts = np.diff(self.indptr[start : stop + 1])
        return np.repeat(np.arange(stop - start), counts), self.items[lo:hi]


# --------------------------------------------------------------------------------------------
# Sequence helpers


def _combined(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One contiguous array (a table's column may have any number of chunks, zero included)."""
    if isinstance(column, pa.ChunkedArray):
        return column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    return column


def pad_left(lists: pa.Array | pa.ChunkedArray, max_len: int) -> np.ndarray:
    """list<int> column -> [N, max_len] int64, most recent last, front padded with 0.

    Lists longer than max_len keep their last max_len values; null lists count as empty.
    """
    lists = _combined(lists)
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    values = pc.fill_null(lists.flatten(), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    out = np.zeros((len(lengths), max_len), dtype=np.int64)
    if values.size == 0:
        return out
    row = np.repeat(np.arange(len(lengths)), lengths)
    position = np.arange(values.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    column = max_len - lengths[row] + position
    keep = column >= 0
    out[row[keep], column[keep]] = values[keep]
    return out


def next_state(
    state_items: np.ndarray, state_events: np.ndarray, action: np.ndarray, event_code: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """State after the action: drop the first column, append (action, event_code) at the end.

    On a left-padded state this grows a short state by one and slides a full one.
    """
    next_items = np.concatenate([state_items[:, 1:], action[:, None]], axis=1)
    next_events = np.concatenate([state_events[:, 1:], event_code[:, None]], axis=1)
    return next_items, next_events


def _continues(batch: TransitionBatch) -> np.ndarray:
    """[B] bool: row i + 1 follows row i in one episode (its state is row i's next state)."""
    continues = np.zeros(len(batch), dtype=bool)
    continues[:-1] = (
        ~batch.done[:-1]
        & (batch.next_items[:-1] == batch.state_items[1:]).all(axis=1)
        & (batch.next_events[:-1] == batch.state_events[1:]).all(axis=1)
    )
    return continues


def credit_purchases_to_carts(batch: TransitionBatch) -> TransitionBatch:
    """Move each purchase's reward onto the latest add-to-cart of the same item in its episode.

    A shopper decides to buy when they put the item in the cart; most purchases are logged later,
    at checkout, as an event of their own, and a recommendation shown then cannot change them.
    Left on the checkout event, the reward teaches the Q-network that "recommend what is in the
    cart" pays. Credited to the add-to-cart, it reaches the view that led there through the
    n-step return. A purchase with no add-to-cart before it in the episode keeps its reward.
    """
    codes = batch.event_code
    candidates = np.flatnonzero((codes == CART_CODE) | (codes == PURCHASE_CODE))
    if candidates.size == 0 or not (codes[candidates] == PURCHASE_CODE).any():
        return batch
    episode = np.concatenate([[0], np.cumsum(~_continues(batch)[:-1])])
    reward = batch.reward.copy()
    open_carts: dict[tuple[int, int], int] = {}
    for row in candidates.tolist():
        key = (int(episode[row]), int(batch.action[row]))
        if codes[row] == CART_CODE:
            open_carts[key] = row
        elif (cart := open_carts.pop(key, None)) is not None:
            reward[cart] += reward[row]
            reward[row] = 0.0
    return replace(batch, reward=reward)


def with_n_step(batch: TransitionBatch, n: int) -> TransitionBatch:
    """One-step transitions in user and time order -> n-step transitions (see the module docstring).

    Row i gathers the rewards of rows i, i + 1, ... while each next row continues the previous
    one (its state is the previous next state) and no episode has ended, up to n rows; it then
    bootstraps from the next state of the last row it reached.
    """
    if n < 1:
        raise ValueError(f"train.n_step={n}: need at least one step")
    if n == 1 or len(batch) == 0:
        return batch
    rows = len(batch)
    continues = _continues(batch)
    later = np.zeros((rows, n - 1), dtype=np.float32)
    last = np.arange(rows)
    alive = np.ones(rows, dtype=bool)
    for step in range(n - 1):
        alive &= continues[last]
        last = np.where(alive, last + 1, last)
        later[alive, step] = batch.reward[last[alive]]
    return TransitionBatch(
        state_items=batch.state_items,
        state_events=batch.state_events,
        action=batch.action,
        event_code=batch.event_code,
        reward=batch.reward,
        done=batch.done[last],
        next_items=batch.next_items[last],
        next_events=batch.next_events[last],
        later_rewards=later,
        n_steps=last - np.arange(rows) + 1,
    )


def left_align(state_items: np.ndarray, state_events: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Move the non-padding entries of each row to the end, keeping their order."""
    order = np.argsort(state_items != 0, axis=1, kind="stable")
    return np.take_along_axis(state_items, order, 1), np.take_along_axis(state_events, order, 1)


def event_codes(event_type: pa.Array, where: str) -> np.ndarray:
    """event_type strings -> int64 codes; unknown or null types are an error naming ``where``."""
    codes = pc.index_in(event_type, value_set=pa.array(schema.EVENT_TYPES))
    bad = codes.null_count
    if bad:
        raise ValueError(
            f"{where}: {bad} row(s) break rule '{schema.RULE_BAD_EVENT_TYPE}': "
            f"event_type must be one of {list(schema.EVENT_TYPES)}"
        )
    return codes.to_numpy(zero_copy_only=False).astype(np.int64) + 1


def log_price_bucket(price: np.ndarray, n_buckets: int) -> np.ndarray:
    """One bucket per doubling of (1 + price): 1..n_buckets; NaN or negative price -> 0.

    Fixed edges (not quantiles of tonight's catalogue) keep an item's bucket stable across nights,
    which the warm start relies on.
    """
    price = np.asarray(price, dtype=np.float64)
    ok = np.isfinite(price) & (price >= 0)
    octave = np.floor(np.log2(1.0 + np.where(ok, price, 0.0)))
    return np.where(ok, 1 + np.clip(octave, 0, n_buckets - 1), 0).astype(np.int64)


# --------------------------------------------------------------------------------------------
# Reading partitions


def parquet_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The Parquet files of one partition folder, sorted; hidden and _-prefixed names skipped."""
    folder = Path(folder)
    files = sorted(p for p in folder.glob("*.parquet") if not p.name.startswith((".", "_")))
    if not files:
        raise FileNotFoundError(
            f"partition {folder} has no Parquet files; did the upstream task run for this date?"
        )
    return files


def existing_parquet_files(folder: str | os.PathLike[str]) -> list[Path]:
    """``parquet_files`` of a partition that may be missing or empty: then none."""
    try:
        return parquet_files(folder)
    except FileNotFoundError:
        return []


def _check_columns(file: Path, names: list[str], required: list[str]) -> None:
    missing = [c for c in required if c not in names]
    if missing:
        raise ValueError(f"{file}: missing column(s) {missing}; expected the schema {required}")


def _decode_transitions(rb: pa.RecordBatch | pa.Table, max_len: int, where: str) -> dict[str, np.ndarray]:
    """A record batch of transition rows -> state arrays (next state not yet derived)."""
    item_lists, event_lists = rb.column(schema.ITEM_SEQ), rb.column(schema.EVENT_SEQ)
    item_len = pc.fill_null(pc.list_value_length(item_lists), 0)
    event_len = pc.fill_null(pc.list_value_length(event_lists), 0)
    mismatched = len(item_len) - pc.sum(pc.equal(item_len, event_len)).as_py() if len(item_len) else 0
    if mismatched:
        raise ValueError(f"{where}: {mismatched} row(s) have item_seq and event_seq of different lengths")
    action = rb.column(schema.ACTION)
    if action.null_count:
        raise ValueError(f"{where}: {action.null_count} row(s) with a null action")
    return {
        "state_items": pad_left(item_lists, max_len),
        "state_events": pad_left(event_lists, max_len),
        "action": action.to_numpy(zero_copy_only=False).astype(np.int64),
        "event_code": event_codes(rb.column(schema.EVENT_TYPE), where),
        "reward": pc.fill_null(rb.column(schema.REWARD), 0.0)
        .to_numpy(zero_copy_only=False)
        .astype(np.float32),
        "done": pc.fill_null(rb.column(schema.DONE), False).to_numpy(zero_copy_only=False).astype(bool),
    }


def _read_split(
    folder: str | os.PathLike[str],
    *,
    max_len: int,
    split: str | tuple[str, ...] | None,
    read_rows: int,
    rng: np.random.Generator | None,
) -> Iterator[dict[str, np.ndarray]]:
    """Decoded chunks of one split, or of several (a tuple; None: all rows); with ``rng``, in shuffled
    file/row-group order."""
    opened = {}
    units = []
    for file in parquet_files(folder):
        opened[file] = pf = pq.ParquetFile(file)
        _check_columns(file, pf.schema_arrow.names, TRANSITION_COLUMNS)
        units.extend((file, rg) for rg in range(pf.metadata.num_row_groups))
    if rng is not None:
        units = [units[i] for i in rng.permutation(len(units))]
    for file, row_group in units:
        batches = opened[file].iter_batches(
            batch_size=read_rows, row_groups=[row_group], columns=TRANSITION_COLUMNS
        )
        for rb in batches:
            if isinstance(split, str):
                rb = rb.filter(pc.equal(rb.column(schema.SPLIT), split))
            elif split is not None:
                rb = rb.filter(pc.is_in(rb.column(schema.SPLIT), pa.array(split)))
            if rb.num_rows:
                yield _decode_transitions(rb, max_len, f"{file} (row group {row_group})")


def _concat(chunks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(chunks) == 1:
        return chunks[0]
    return {key: np.concatenate([c[key] for c in chunks]) for key in chunks[0]}


def _batch(chunk: dict[str, np.ndarray], index: np.ndarray | slice) -> TransitionBatch:
    return TransitionBatch(**{key: value[index] for key, value in chunk.items()})


def _transitions(chunk: dict[str, np.ndarray], n_step: int, credit_carts: bool) -> dict[str, np.ndarray]:
    """A decoded chunk (in file order) -> every TransitionBatch field, with n-step returns (and
    purchase rewards credited to their add-to-carts when ``credit_carts``)."""
    batch = TransitionBatch.from_state(**chunk)
    if credit_carts:
        batch = credit_purchases_to_carts(batch)
    return with_n_step(batch, n_step).as_dict()


def iter_transition_batches(
    folder: str | os.PathLike[str],
    *,
    max_len: int,
    batch_size: int,
    split: str | tuple[str, ...] = schema.TRAIN,
    shuffle: bool = True,
    seed: int = 0,
    buffer_rows: int = 65_536,
    read_rows: int = 8_192,
    n_step: int = 1,
    credit_carts: bool = False,
) -> Iterator[TransitionBatch]:
    """Stream one split of a transitions partition as batches, never holding the whole table.

    With ``shuffle``, files and row groups are visited in a seeded random order and rows are
    mixed in a buffer of ``buffer_rows``; the same seed gives the same batches. The last batch
    may be smaller than ``batch_size``. ``n_step`` > 1 gives n-step returns (module docstring);
    ``credit_carts`` moves purchase rewards to their add-to-carts (credit_purchases_to_carts).
    """
    rng = np.random.default_rng(seed) if shuffle else None
    pending: list[dict[str, np.ndarray]] = []
    n_pending = 0

    def drain(final: bool) -> Iterator[TransitionBatch]:
        nonlocal pending, n_pending
        merged = _concat(pending)
        order = rng.permutation(n_pending) if rng is not None else np.arange(n_pending)
        n_out = n_pending if final else (n_pending // batch_size) * batch_size
        for start in range(0, n_out, batch_size):
            yield _batch(merged, order[start : min(start + batch_size, n_out)])
        rest = order[n_out:]
        pending = [{key: value[rest] for key, value in merged.items()}] if len(rest) else []
        n_pending = len(rest)

    for chunk in _read_split(folder, max_len=max_len, split=split, read_rows=read_rows, rng=rng):
        pending.append(_transitions(chunk, n_step, credit_carts))
        n_pending += len(chunk["action"])
        if n_pending >= max(buffer_rows, batch_size):
            yield from drain(final=False)
    if n_pending:
        yield from drain(final=True)


def load_transitions(
    folder: str | os.PathLike[str],
    *,
    max_len: int,
    split: str | None,
    n_step: int = 1,
    credit_carts: bool = False,
) -> TransitionBatch:
    """One split (None: every row) of a transitions partition as arrays, in file order.

    For evaluation-sized data; training streams with iter_transition_batches instead.
    """
    chunks = [
        _transitions(chunk, n_step, credit_carts)
        for chunk in _read_split(folder, max_len=max_len, split=split, read_rows=65_536, rng=None)
    ]
    if not chunks:
        empty = np.zeros((0, max_len), dtype=np.int64)
        none = np.zeros(0, dtype=np.int64)
        return with_n_step(
            TransitionBatch.from_state(empty, empty, none, none, none.astype(np.float32), none.astype(bool)),
            n_step,
        )
    return TransitionBatch(**_concat(chunks))


def count_transitions(folder: str | os.PathLike[str], *, split: str) -> int:
    """Rows of one split, reading only the split column."""
    total = 0
    for file in parquet_files(folder):
        column = pq.read_table(file, columns=[schema.SPLIT]).column(schema.SPLIT)
        total += pc.sum(pc.equal(column, split)).as_py() or 0
    return total


def action_counts(
    folder: str | os.PathLike[str], *, n_items: int, split: str | tuple[str, ...] = schema.TRAIN
) -> np.ndarray:
    """How often each item_idx is the logged action in one split (or several, in one read): float64 [n_items + 1].

    The popularity baseline (train) and the scoring fallback (train and validation) rank by these
    counts. Actions beyond n_items (items the caller does not know) are ignored.
    """
    splits = pa.array([split] if isinstance(split, str) else list(split), pa.string())
    counts = np.zeros(n_items + 1, dtype=np.float64)
    for file in parquet_files(folder):
        pf = pq.ParquetFile(file)
        for rb in pf.iter_batches(batch_size=65_536, columns=[schema.ACTION, schema.SPLIT]):
            action = rb.column(schema.ACTION).filter(pc.is_in(rb.column(schema.SPLIT), value_set=splits))
            action = _known(pc.drop_null(action).to_numpy(zero_copy_only=False), n_items)
            counts += np.bincount(action, minlength=n_items + 1)
    return counts


def item_usage(
    folder: str | os.PathLike[str], *, n_items: int, split: str = schema.TRAIN
) -> tuple[np.ndarray, np.ndarray]:
    """One pass over one split: ([n_items + 1] int64 logged actions per item_idx, as
    ``action_counts``; [n_items + 1] bool, the item_idx occurs as a logged action or in a state).

    Reads the action and state columns only. Indices beyond n_items are ignored.
    """
    counts = np.zeros(n_items + 1, dtype=np.int64)
    seen = np.zeros(n_items + 1, dtype=bool)
    for file in parquet_files(folder):
        pf = pq.ParquetFile(file)
        for rb in pf.iter_batches(batch_size=65_536, columns=[schema.ACTION, schema.ITEM_SEQ, schema.SPLIT]):
            rb = rb.filter(pc.equal(rb.column(schema.SPLIT), split))
            action = _known(pc.drop_null(rb.column(schema.ACTION)).to_numpy(zero_copy_only=False), n_items)
            counts += np.bincount(action, minlength=n_items + 1)
            seen[action] = True
            in_states = pc.drop_null(pc.list_flatten(rb.column(schema.ITEM_SEQ)))
            seen[_known(in_states.to_numpy(zero_copy_only=False), n_items)] = True
    seen[0] = False
    return counts, seen


def items_in_split(folder: str | os.PathLike[str], *, n_items: int, split: str = schema.TRAIN) -> np.ndarray:
    """[n_items + 1] bool: the item_idx occurs in one split, as a logged action or in a state."""
    return item_usage(folder, n_items=n_items, split=split)[1]


def new_items(val: TransitionBatch, seen_in_training: np.ndarray) -> np.ndarray:
    """Ascending item_idx the validation rows show (as a target or in a state) and training never
    does (``items_in_split``): items no model fitted on the training split has any history of."""
    n_items = len(seen_in_training) - 1
    in_val = np.zeros(n_items + 1, dtype=bool)
    in_val[_known(val.action, n_items)] = True
    in_val[_known(val.state_items.ravel(), n_items)] = True
    return np.flatnonzero(in_val & ~np.asarray(seen_in_training, dtype=bool))


def _known(item_idx: np.ndarray, n_items: int) -> np.ndarray:
    """The entries of ``item_idx`` in 1..n_items (padding and indices beyond the catalogue dropped)."""
    item_idx = np.asarray(item_idx, dtype=np.int64)
    return item_idx[(item_idx > 0) & (item_idx <= n_items)]


def load_item_features(folder: str | os.PathLike[str], *, price_buckets: int) -> ItemFeatures:
    """The item_index partition as per-item_idx arrays (row 0 is padding): see item_features_from_table."""
    tables = []
    for file in parquet_files(folder):
        _check_columns(file, pq.ParquetFile(file).schema_arrow.names, ITEM_INDEX_COLUMNS)
        tables.append(pq.read_table(file, columns=ITEM_INDEX_COLUMNS))
    return item_features_from_table(pa.concat_tables(tables), price_buckets=price_buckets, where=f"item_index {folder}")


def item_features_from_table(table: pa.Table, *, price_buckets: int, where: str) -> ItemFeatures:
    """item_index rows (``ITEM_INDEX_COLUMNS``, any order) as per-item_idx arrays; errors name ``where``.

    Category indices follow the first appearance of a category by item_idx; as the index is
    append-only, existing categories keep their index when new ones appear. A null
    ``available`` counts as unavailable: never recommend what cannot be confirmed in stock.
    """
    table = table.sort_by(schema.ITEM_IDX)
    idx = table.column(schema.ITEM_IDX)
    if idx.null_count or (len(idx) and pc.min(idx).as_py() < 1):
        raise ValueError(f"{where}: item_idx must be non-null and >= 1 (0 is padding)")
    idx = idx.to_numpy().astype(np.int64)
    if len(idx) and np.any(idx[1:] == idx[:-1]):
        dup = np.unique(idx[1:][idx[1:] == idx[:-1]])
        raise ValueError(f"{where}: duplicate item_idx {dup[:10].tolist()} ({len(dup)} in all)")
    n_items = int(idx.max()) if len(idx) else 0

    item_ids = np.full(n_items + 1, None, dtype=object)
    item_ids[idx] = table.column(schema.ITEM_ID).to_numpy(zero_copy_only=False)

    category_col = table.column(schema.CATEGORY_ID).cast(pa.string())
    category_ids = [c for c in pc.unique(pc.drop_null(category_col)).to_pylist()]  # first appearance order
    category_index = pc.index_in(category_col, value_set=pa.array(category_ids, pa.string()))
    category = np.zeros(n_items + 1, dtype=np.int64)
    category[idx] = pc.fill_null(category_index, -1).to_numpy(zero_copy_only=False).astype(np.int64) + 1

    price = pc.fill_null(table.column(schema.PRICE).cast(pa.float64()), np.nan).to_numpy(zero_copy_only=False)
    price_bucket = np.zeros(n_items + 1, dtype=np.int64)
    price_bucket[idx] = log_price_bucket(price, price_buckets)

    available = np.zeros(n_items + 1, dtype=bool)
    available[idx] = pc.fill_null(table.column(schema.AVAILABLE), False).to_numpy(zero_copy_only=False)
    return ItemFeatures(
        item_ids=item_ids,
        category=category,
        price_bucket=price_bucket,
        available=available,
        category_ids=category_ids,
    )


def check_exclude_rule(exclude: str) -> None:
    """Refuse a name that is not one of ``EXCLUDE_RULES``."""
    if exclude not in EXCLUDE_RULES:
        raise ValueError(f"exclusion rule {exclude!r} is not one of {list(EXCLUDE_RULES)}")


def user_state_columns(exclude: str) -> list[str]:
    """The user_states columns scoring reads under an exclusion rule (``EXCLUDE_RULES``)."""
    check_exclude_rule(exclude)
    column = EXCLUDE_STATE_COLUMN.get(exclude)
    return USER_STATE_COLUMNS + ([column] if column else [])


def _csr(lists: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, values) of a list column; a null list is an empty row."""
    lists = _combined(lists)
    counts = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    values = pc.list_flatten(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), values


def decode_user_states(table: pa.Table | pa.RecordBatch, max_len: int, *, exclude: str = "purchased") -> UserStates:
    """user_states rows (``user_state_columns(exclude)``) as arrays: a partition, a file's batch, a Spark batch."""
    column = EXCLUDE_STATE_COLUMN.get(exclude)
    if column is None:
        indptr, items = np.zeros(table.num_rows + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)
    else:
        indptr, items = _csr(table.column(column))
    return UserStates(
        user_id=_combined(table.column(schema.USER_ID)).cast(pa.string()),
        state_items=pad_left(table.column(schema.ITEM_SEQ), max_len),
        state_events=pad_left(table.column(schema.EVENT_SEQ), max_len),
        excluded_indptr=indptr,
        excluded_items=items,
    )


def iter_user_states(
    folder: str | os.PathLike[str], *, max_len: int, exclude: str = "purchased", batch_rows: int = 262_144
) -> Iterator[UserStates]:
    """The user_states partition in chunks of at most ``batch_rows`` users, in file order."""
    columns = user_state_columns(exclude)
    for file in parquet_files(folder):
        pf = pq.ParquetFile(file)
        _check_columns(file, pf.schema_arrow.names, columns)
        for rb in pf.iter_batches(batch_size=batch_rows, columns=columns):
            yield decode_user_states(rb, max_len, exclude=exclude)


AUTO_ACTIVE_DAYS = 30
"""``score.active_window: auto`` on a shop's log: users seen in the last 30 days get a list."""


def ratings_panel(protocol: dict | None) -> bool:
    """Whether the night's events are a ratings panel (ratings and no purchases, as the ETL job's auto
    mask decides: MovieLens) rather than a shop's log. A long shop log validates leave-last-out too
    (its last days hold too few events for a time split), so the split alone cannot tell; a protocol
    without event-type counts (older runs) falls back to it."""
    protocol = protocol or {}
    types = protocol.get("event_types")
    if types:
        return consumption_log(types)
    return protocol.get("validation") == "leave_last_out"


def consumption_log(event_types: dict[str, int]) -> bool:
    """Ratings and no purchases (event type -> count): a ratings panel, whose every interacted item is
    masked (the ETL job's ``score.exclude: auto``) and whose every user is scored (``active_since``)."""
    return event_types.get(schema.RATING, 0) > 0 and event_types.get(schema.PURCHASE, 0) == 0


def active_since(score_cfg, protocol: dict | None, run_date: str) -> datetime | None:
    """The earliest last event of a user scored on ``run_date`` (``score.active_window``; auto resolved
    with the night's protocol, as ``exclude_rule``): midnight UTC starting the N-th day back, the run
    date counted as the first; None: every user."""
    days = parse_active_window(score_cfg.active_window)
    if days == "auto":
        days = None if ratings_panel(protocol) else AUTO_ACTIVE_DAYS
    if days is None:
        return None
    day = date.fromisoformat(str(run_date)[:10]) - timedelta(days=days - 1)
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def load_user_states(
    folder: str | os.PathLike[str], *, max_len: int, exclude: str = "purchased", since: datetime | None = None
) -> UserStates:
    """The user_states partition: left-padded states and the CSR lists of excluded items; with ``since``,
    only the users whose last event is at or after it (``active_since``)."""
    columns = user_state_columns(exclude)
    tables = []
    for file in parquet_files(folder):
        _check_columns(file, pq.ParquetFile(file).schema_arrow.names, columns)
        table = pq.read_table(file, columns=[*columns, schema.LAST_EVENT_TIME] if since else columns)
        if since is not None:
            last = table.column(schema.LAST_EVENT_TIME)
            keep = pc.fill_null(pc.greater_equal(last, pa.scalar(since, last.type)), False)
            table = table.filter(keep).select(columns)
        tables.append(table)
    return decode_user_states(pa.concat_tables(tables), max_len, exclude=exclude)


def load_exclusions(
    folder: str | os.PathLike[str], *, exclude: str, split: str = schema.VALIDATION, read_rows: int = 65_536
) -> Exclusions:
    """The items the rule masks for each row of one split, rows in ``load_transitions`` order.

    From the ``history_items`` / ``history_purchased`` columns the ETL job writes on validation
    rows (the user's whole history before the event). Partitions written before those columns
    existed mask nothing.
    """
    check_exclude_rule(exclude)
    column = EXCLUDE_HISTORY_COLUMN.get(exclude)
    indptrs, values, n_values = [np.zeros(1, dtype=np.int64)], [], 0
    for file in parquet_files(folder):
        pf = pq.ParquetFile(file)
        has_column = column is not None and column in pf.schema_arrow.names
        columns = [schema.SPLIT, column] if has_column else [schema.SPLIT]
        for row_group in range(pf.metadata.num_row_groups):
            for rb in pf.iter_batches(batch_size=read_rows, row_groups=[row_group], columns=columns):
                rb = rb.filter(pc.equal(rb.column(schema.SPLIT), split))
                if not rb.num_rows:
                    continue
                if has_column:
                    indptr, items = _csr(rb.column(column))
                else:
                    indptr, items = np.zeros(rb.num_rows + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)
                indptrs.append(indptr[1:] + n_values)
                values.append(items)
                n_values += len(items)
    items = np.concatenate(values) if values else np.zeros(0, dtype=np.int64)
    return Exclusions(np.concatenate(indptrs).astype(np.int64), items.astype(np.int64))
