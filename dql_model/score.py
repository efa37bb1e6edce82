"""Top-K recommendations per user: batched Q(s, ·) = f(s) · g(·)ᵀ + b(·), masked, ranked.

One scoring core (``Scorer``) serves both engines: ``score_users`` runs it in one process (the torch
engine) and ``jobs/score_recommendations.py`` runs it on Spark executors with the model broadcast
(the spark engine). A matrix product's rounding depends on the batch it runs in, so both cut the
users into the same batches: users whose crc32(user_id) falls in the same bucket, sorted by user_id
(``canonical_batches``). Same batches, same arithmetic, identical rows.

- Masks: the padding column, items the user already purchased (optional), items that are not
  available tonight, and items the model does not know (new since it was trained; they reach users
  through the fallback until the next training). Masked items get a bias of -inf, so masking costs
  nothing in the matrix product.
- Fallback: a user whose state has no item the model knows gets popular available items: first the
  popular items of the category of their most recent interaction that has a category (a brand-new
  item still has one), then popular items overall; without such an interaction, popular items
  overall. Same masks; source ``fallback_popular``; score = the item's popularity.
- Exploration (off by default): the last ``explore_slots`` ranks, and every other rank with
  probability ``explore_epsilon``, are drawn from softmax(Q / temperature) over the eligible items not
  chosen yet, instead of taken greedily (source ``explore``). ``propensity`` is the probability that
  the slot's policy chose the item given the items above it: 1.0 for a purely greedy slot. Draws are
  a hash of (seed, user_id, item_idx or slot), the seed derived from the run date, so a rerun and both
  engines draw the same items; sampling without replacement uses the Gumbel-top-k trick (one pass).
- Ties are broken by item_idx ascending, so the output is a deterministic function of its inputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from dql_model import data, schema
from dql_model.config import ModelConfig, ScoreConfig
from dql_model.networks import QNetwork

SCORES_PER_CHUNK = 1 << 25
"""Q-values held at once (128 MiB of float32): users per matrix product = this // catalogue size."""
EXPLORE_CHUNK_SHARE = 8
"""Exploring holds a few more [users, items] arrays (random keys), so its chunks are this much smaller."""
ENGINES = ("torch", "spark")
_SOURCE = {name: code for code, name in enumerate(schema.SOURCES)}
_ITEM_STREAM, _SLOT_STREAM = 0x51ED2701, 0x2C1B3C6D
"""Tags that make the item draws and the slot coins of a user independent random streams."""


class NaNScoresError(ValueError):
    """Scores contain NaN: there is no meaningful ranking."""


# --- policy and catalogue -------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """How the K slots of a user are filled: greedy by Q, with optional exploration slots."""

    top_k: int
    """Recommendations per user."""
    mask_purchased: bool = True
    """Never recommend what the user already bought."""
    explore_slots: int = 0
    """The last this-many ranks are always drawn from the softmax."""
    explore_epsilon: float = 0.0
    """Every other rank is drawn from the softmax with this probability."""
    temperature: float = 1.0
    """Temperature of the softmax over Q-values."""
    seed: int = 0
    """Seed of the draws (``run_date_seed`` of the run date in the pipeline)."""

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError(f"score.top_k must be at least 1, got {self.top_k}")
        if not 0 <= self.explore_slots <= self.top_k:
            raise ValueError(f"score.explore_slots must be between 0 and top_k={self.top_k}, got {self.explore_slots}")
        if not 0.0 <= self.explore_epsilon <= 1.0:
            raise ValueError(f"score.explore_epsilon must be between 0 and 1, got {self.explore_epsilon}")
        if not (self.temperature > 0 and np.isfinite(self.temperature)):
            raise ValueError(f"score.explore_temperature must be a positive number, got {self.temperature}")

    @property
    def explores(self) -> bool:
        return self.explore_slots > 0 or self.explore_epsilon > 0

    def slot_epsilon(self) -> np.ndarray:
        """[top_k] probability that each rank is drawn from the softmax rather than taken greedily."""
        eps = np.full(self.top_k, self.explore_epsilon, dtype=np.float64)
        eps[self.top_k - self.explore_slots :] = 1.0
        return eps

    @classmethod
    def from_config(cls, cfg: ScoreConfig, run_date: str, *, top_k: int | None = None) -> Policy:
        """The pipeline's policy for a run date: the config, seeded by the date."""
        if cfg.engine not in ENGINES:
            raise ValueError(f"score.engine={cfg.engine!r} is not one of {ENGINES}")
        return cls(
            top_k=top_k or cfg.top_k,
            mask_purchased=cfg.mask_purchased,
            explore_slots=cfg.explore_slots,
            explore_epsilon=cfg.explore_epsilon,
            temperature=cfg.explore_temperature,
            seed=run_date_seed(run_date),
        )


def run_date_seed(run_date: str) -> int:
    """The exploration seed of a run date: a rerun of the date draws the same items."""
    return zlib.crc32(f"dqlrec-explore:{run_date}".encode())


@dataclass
class Catalogue:
    """Tonight's items as scoring needs them, indexed by item_idx (row 0 is padding)."""

    item_ids: pa.Array
    """[n_items + 1] string item_id per item_idx (null at 0 and unused indices)."""
    available: np.ndarray
    """[n_items + 1] bool, the item may be recommended."""
    category: np.ndarray
    """[n_items + 1] int64 category code, 0 = none; only equality matters (fallback groups)."""
    popularity: np.ndarray
    """[n_items + 1] float64 fallback score per item (e.g. action counts)."""
    _ranked: dict[int, np.ndarray] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        n = len(self.item_ids)
        if not (len(self.available) == len(self.category) == len(self.popularity) == n):
            raise ValueError("catalogue arrays must all have n_items + 1 rows")
        self.available = np.asarray(self.available, dtype=bool).copy()
        self.available[0] = False

    @property
    def n_items(self) -> int:
        return len(self.item_ids) - 1

    @classmethod
    def from_features(cls, items: data.ItemFeatures, popularity: np.ndarray) -> Catalogue:
        return cls(
            item_ids=pa.array(items.item_ids, pa.string()),
            available=items.available,
            category=np.asarray(items.category, dtype=np.int64),
            popularity=_fit(popularity, items.n_items + 1),
        )

    @classmethod
    def from_item_index(cls, table: pa.Table, popularity: np.ndarray) -> Catalogue:
        """From item_index rows (item_id, item_idx, category_id, available), e.g. collected from Spark."""
        idx = table.column(schema.ITEM_IDX).to_numpy().astype(np.int64)
        n_items = int(idx.max()) if len(idx) else 0
        ids = np.full(n_items + 1, None, dtype=object)
        ids[idx] = table.column(schema.ITEM_ID).to_numpy(zero_copy_only=False)
        categories = table.column(schema.CATEGORY_ID).cast(pa.string())
        codes = pc.index_in(categories, value_set=pc.unique(pc.drop_null(categories)))
        category = np.zeros(n_items + 1, dtype=np.int64)
        category[idx] = pc.fill_null(codes, -1).to_numpy(zero_copy_only=False).astype(np.int64) + 1
        available = np.zeros(n_items + 1, dtype=bool)
        available[idx] = pc.fill_null(table.column(schema.AVAILABLE), False).to_numpy(zero_copy_only=False)
        return cls(pa.array(ids, pa.string()), available, category, _fit(popularity, n_items + 1))

    def ranked(self, category: int = 0) -> np.ndarray:
        """Available item_idx by popularity desc, then item_idx asc; a category's own items first."""
        if category not in self._ranked:
            if category == 0:
                order = np.lexsort((np.arange(len(self.popularity)), -self.popularity))
                self._ranked[0] = order[self.available[order]]
            else:
                ranked = self.ranked(0)
                own = self.category[ranked] == category
                self._ranked[category] = np.concatenate([ranked[own], ranked[~own]])
        return self._ranked[category]


def _fit(values: np.ndarray, n: int) -> np.ndarray:
    """``values`` as float64 of length n: cut, or padded with zeros."""
    out = np.zeros(n, dtype=np.float64)
    given = np.asarray(values, dtype=np.float64)[:n]
    out[: len(given)] = given
    return out


# --- batches both engines share --------------------------------------------------------------------


def batch_count(n_users: int, batch_size: int) -> int:
    """Number of user buckets: about ``batch_size`` users each."""
    if batch_size < 1:
        raise ValueError(f"score.batch_size must be at least 1, got {batch_size}")
    return max(1, -(-n_users // batch_size))


def user_keys(user_id: pa.Array) -> np.ndarray:
    """crc32 of each user_id's UTF-8 bytes (null as ''): Spark's ``crc32(cast(user_id as binary))``."""
    ids = pc.fill_null(user_id, "").to_pylist()
    return np.fromiter((zlib.crc32(u.encode()) for u in ids), dtype=np.int64, count=len(ids))


def canonical_batches(user_id: pa.Array, keys: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row positions per batch: bucket crc32 % batch_count, users sorted by user_id (UTF-8 bytes) within."""
    n = len(user_id)
    if n == 0:
        return []
    bucket = keys % batch_count(n, batch_size)
    by_id = pc.sort_indices(pc.fill_null(user_id, "")).to_numpy()
    id_rank = np.empty(n, dtype=np.int64)
    id_rank[by_id] = np.arange(n)
    order = np.lexsort((id_rank, bucket))
    cuts = np.flatnonzero(np.diff(bucket[order])) + 1
    return np.split(order, cuts)


def take_states(states: data.UserStates, index: np.ndarray) -> data.UserStates:
    """The rows ``index`` of ``states``, in that order (purchases gathered from the CSR lists)."""
    starts = states.purchased_indptr[index]
    counts = states.purchased_indptr[index + 1] - starts
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    within = np.arange(indptr[-1]) - np.repeat(indptr[:-1], counts)
    return data.UserStates(
        user_id=states.user_id.take(pa.array(index, pa.int64())),
        state_items=states.state_items[index],
        state_events=states.state_events[index],
        purchased_indptr=indptr,
        purchased_items=states.purchased_items[np.repeat(starts, counts) + within],
    )


def states_from_arrow(table: pa.Table, max_len: int) -> data.UserStates:
    """user_states rows (user_id, item_seq, event_seq, purchased) as arrays, e.g. one Spark batch."""
    purchased = table.column(schema.PURCHASED).combine_chunks()
    counts = pc.fill_null(pc.list_value_length(purchased), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    return data.UserStates(
        user_id=table.column(schema.USER_ID).combine_chunks().cast(pa.string()),
        state_items=data.pad_left(table.column(schema.ITEM_SEQ), max_len),
        state_events=data.pad_left(table.column(schema.EVENT_SEQ), max_len),
        purchased_indptr=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        purchased_items=pc.fill_null(purchased.flatten(), 0).to_numpy(zero_copy_only=False).astype(np.int64),
    )


# --- ranking ----------------------------------------------------------------------------------------


def top_k_deterministic(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, values) of the k best columns per row, ordered by score desc then index asc.

    torch.topk does not define which of several tied items it returns. One topk of k + 1 tells
    whether the k-th and (k+1)-th values tie; only those rows (rare with real scores, common
    with -inf masks on tiny catalogues) take the exact path over the whole row. NaN ranks above
    everything in torch.topk, so a NaN anywhere shows in the first column: NaNScoresError.
    """
    n_rows, n_cols = scores.shape
    k = min(k, n_cols)
    if k == n_cols:
        # stable sort of the columns in index order: ties stay by index ascending
        values, index = torch.sort(scores, dim=1, descending=True, stable=True)
        if n_rows and torch.isnan(values[:, 0]).any():
            raise NaNScoresError("scores contain NaN")
        return index, values
    top = torch.topk(scores, k + 1, dim=1)
    if n_rows and torch.isnan(top.values[:, 0]).any():
        raise NaNScoresError("scores contain NaN")
    index, values = top.indices[:, :k], top.values[:, :k]
    tied = (top.values[:, k - 1] == top.values[:, k]).nonzero()[:, 0]
    if len(tied):
        index, values = index.clone(), values.clone()
        index[tied], values[tied] = _top_k_with_boundary_ties(scores[tied], k)
    # order the k by value desc, index asc: sort by index, then a stable sort by value
    index, by_index = torch.sort(index, dim=1)
    values = values.gather(1, by_index)
    values, by_value = torch.sort(values, dim=1, descending=True, stable=True)
    return index.gather(1, by_value), values


def _top_k_with_boundary_ties(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every item above the k-th value plus the lowest-index ties, in index order."""
    n_rows = scores.shape[0]
    kth = torch.topk(scores, k, dim=1).values[:, -1:]
    above = scores > kth
    tied = scores == kth
    room = k - above.sum(dim=1, keepdim=True)
    selected = above | (tied & (tied.cumsum(dim=1) <= room))
    index = selected.nonzero()[:, 1].view(n_rows, k)  # nonzero is row-major: ascending index
    return index, scores.gather(1, index)


def _known_states(states: data.UserStates, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """States without items the model does not know (idx > n_items), re-aligned to the right."""
    items, events = states.state_items, states.state_events
    unknown = items > n_items
    if unknown.any():
        items, events = np.where(unknown, 0, items), np.where(unknown, 0, events)
        items, events = data.left_align(items, events)
    return items, events


def _purchase_rows(states: data.UserStates, n_columns: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, item_idx) pairs of purchases, limited to item_idx < n_columns."""
    counts = np.diff(states.purchased_indptr)
    rows = np.repeat(np.arange(len(states)), counts)
    cols = states.purchased_items
    keep = (cols > 0) & (cols < n_columns)
    return rows[keep], cols[keep]


def _purchases_in_batch(
    buy_rows: np.ndarray, buy_cols: np.ndarray, users: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Purchases of a sorted batch of users as (row within the batch, item_idx)."""
    lo, hi = np.searchsorted(buy_rows, [users[0], users[-1] + 1])
    rows, cols = buy_rows[lo:hi], buy_cols[lo:hi]
    position = np.searchsorted(users, rows)
    member = users[np.minimum(position, len(users) - 1)] == rows
    return position[member], cols[member]


# --- random draws that do not depend on batches or devices ------------------------------------------

_M32 = 0xFFFFFFFF


def _mul32(x, c: int):
    """x * c mod 2**32 for 0 <= x < 2**32 held in int64 (numpy or torch), without overflowing."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _M32


def _mix32(x):
    """A 32-bit integer hash (a bijection with good avalanche), on int64 arrays or tensors."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _row_seeds(keys: np.ndarray, seed: int, stream: int) -> np.ndarray:
    return _mix32(_mix32(np.asarray(keys, dtype=np.int64) ^ stream) ^ (_mix32(np.int64(seed & _M32)) & _M32))


def _gumbel_noise(row_seeds: np.ndarray, n_cols: int) -> torch.Tensor:
    """[rows, n_cols] Gumbel(0, 1) noise on the CPU: row r is a function of row_seeds[r] only.

    -log(E) with E ~ Exponential(1) is Gumbel; each row has its own generator (PCG64, ziggurat
    exponentials: ~3 ns a value), seeded from the user, so the noise does not depend on which
    batch or device the user is scored in.
    """
    noise = np.empty((len(row_seeds), n_cols), dtype=np.float32)
    for row, seed in enumerate(row_seeds.tolist()):
        np.random.default_rng(seed).standard_exponential(out=noise[row], dtype=np.float32)
    return torch.from_numpy(noise).clamp_min_(np.finfo(np.float32).tiny).log_().neg_()


def _slot_coins(row_seeds: np.ndarray, k: int) -> np.ndarray:
    """[rows, k] uniforms in (0, 1) deciding whether a slot explores."""
    hashed = _mix32(row_seeds[:, None] ^ np.arange(k, dtype=np.int64)[None, :])
    return ((hashed >> 9).astype(np.float64) + 0.5) * 2.0**-23


# --- the scoring core -----------------------------------------------------------------------------


class Scorer:
    """A model and tonight's catalogue, ready to score batches of users on one device."""

    def __init__(
        self,
        model: QNetwork,
        catalogue: Catalogue,
        policy: Policy,
        *,
        model_version: str,
        generated_at: datetime,
        device: torch.device | str = "cpu",
    ):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.catalogue, self.policy, self.model_version = catalogue, policy, model_version
        self.stamp = pa.scalar(generated_at, pa.timestamp("us", tz="UTC"))
        n_known = model.n_items + 1  # columns the model can score
        self.n_known = n_known
        available = np.zeros(n_known, dtype=bool)
        shared = min(n_known, catalogue.n_items + 1)
        available[:shared] = catalogue.available[:shared]
        with torch.inference_mode():
            self.vectors = model.item_vectors().float()
            bias = model.item_biases().float()
            self.bias = bias.masked_fill(torch.as_tensor(~available, device=self.device), float("-inf"))
        per_chunk = SCORES_PER_CHUNK // (EXPLORE_CHUNK_SHARE if policy.explores else 1)
        self.rows_per_chunk = max(1, per_chunk // n_known)

    def score_batch(self, states: data.UserStates, keys: np.ndarray) -> pa.Table:
        """Recommendations for one batch: rows by user (in the given order), then rank."""
        return self._score_batch(states, keys)[0]

    def _score_batch(self, states: data.UserStates, keys: np.ndarray) -> tuple[pa.Table, np.ndarray]:
        """(table, the batch position of each row's user)."""
        state_items, state_events = _known_states(states, self.model.n_items)
        has_state = (state_items != 0).any(axis=1)
        pieces = [self._fallback(states, np.flatnonzero(~has_state))]
        scored = np.flatnonzero(has_state)
        buy_rows, buy_cols = (
            _purchase_rows(states, self.n_known) if self.policy.mask_purchased else (np.zeros(0, int),) * 2
        )
        for start in range(0, len(scored), self.rows_per_chunk):
            users = scored[start : start + self.rows_per_chunk]
            rows, cols = _purchases_in_batch(buy_rows, buy_cols, users)
            pieces.append(self._score_chunk(users, state_items[users], state_events[users], rows, cols, keys[users]))
        columns = [np.concatenate(column) for column in zip(*pieces, strict=True)]
        user, rank = columns[0], columns[1]
        order = np.lexsort((rank, user))  # by user (batch position), then rank
        return self._table(states.user_id, *(c[order] for c in columns)), user[order]

    def _score_chunk(self, users, items, events, buy_rows, buy_cols, keys) -> tuple[np.ndarray, ...]:
        device = self.device
        with torch.inference_mode():
            f = self.model.encode_state(torch.as_tensor(items, device=device), torch.as_tensor(events, device=device))
            q = torch.addmm(self.bias, f.float(), self.vectors.T)
            if len(buy_rows):
                q[torch.as_tensor(buy_rows, device=device), torch.as_tensor(buy_cols, device=device)] = float("-inf")
            try:
                index, values = top_k_deterministic(q, self.policy.top_k)
            except NaNScoresError:
                raise ValueError(
                    f"model {self.model_version} produced NaN Q-values; refusing to score with it"
                ) from None
            if self.policy.explores:
                return self._explore(q, index, values, users, keys)
            index, values = index.cpu().numpy(), values.cpu().numpy()
        keep = np.isfinite(values)
        # Masked slots sort last, so the kept ones are a prefix of each row and ranks stay 1..n.
        rank = np.broadcast_to(np.arange(1, index.shape[1] + 1), index.shape)[keep]
        user = np.broadcast_to(users[:, None], index.shape)[keep]
        n = len(user)
        return (
            user,
            rank,
            index[keep].astype(np.int64),
            values[keep].astype(np.float64),
            np.full(n, _SOURCE[schema.SOURCE_DQN]),
            np.ones(n),
        )

    def _explore(self, q, greedy, greedy_q, users, keys) -> tuple[np.ndarray, ...]:
        """Fill the K slots one by one: greedy, or the next Gumbel-top-k draw, with their propensities."""
        policy, k = self.policy, greedy.shape[1]
        temperature = policy.temperature
        noise = _gumbel_noise(_row_seeds(keys, policy.seed, _ITEM_STREAM), q.shape[1]).to(q.device)
        # Gumbel-top-k: the k best of Q/T + Gumbel noise are k draws without replacement from the softmax.
        drawn, _ = top_k_deterministic(noise.add_(q, alpha=1.0 / temperature), k)
        del noise
        drawn_q = q.gather(1, drawn)
        top = greedy_q[:, :1]
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        # Softmax mass of the eligible items in neither list (their exact share, no cancellation).
        # float32 here: the rest's share carries a relative error of ~1e-7, the listed items' none.
        q.scatter_(1, greedy, float("-inf")).scatter_(1, drawn, float("-inf"))
        log_rest = torch.logsumexp(q.sub_(top).div_(temperature), dim=1)
        greedy, greedy_q, drawn, drawn_q, log_rest, top = (
            t.cpu().numpy() for t in (greedy, greedy_q, drawn, drawn_q, log_rest, top)
        )
        coins = _slot_coins(_row_seeds(keys, policy.seed, _SLOT_STREAM), k)
        return _fill_slots(
            users,
            greedy.astype(np.int64),
            greedy_q.astype(np.float64),
            drawn.astype(np.int64),
            drawn_q.astype(np.float64),
            log_rest.astype(np.float64),
            top[:, 0].astype(np.float64),
            coins,
            policy.slot_epsilon()[:k],
            temperature,
        )

    def _fallback(self, states: data.UserStates, users: np.ndarray) -> tuple[np.ndarray, ...]:
        """Popular available items (category first) for users without a known state, minus purchases."""
        empty = np.zeros(0, dtype=np.int64)
        pieces: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = [(empty, empty, empty)]
        catalogue = self.catalogue
        if len(users):
            recent = states.state_items[users]
            category = np.where(recent <= catalogue.n_items, catalogue.category[np.minimum(recent, catalogue.n_items)], 0)
            known = category > 0
            last = category.shape[1] - 1 - np.argmax(known[:, ::-1], axis=1)
            user_category = np.where(known.any(axis=1), category[np.arange(len(users)), last], 0)
            bought = np.diff(states.purchased_indptr)[users] if self.policy.mask_purchased else np.zeros(len(users))
            for code in np.unique(user_category):
                ranked = catalogue.ranked(int(code))
                group = user_category == code
                pieces.append(self._popular(states, users[group & (bought == 0)], users[group & (bought > 0)], ranked))
        user, rank, item = (np.concatenate(p) for p in zip(*pieces, strict=True))
        n = len(user)
        return (
            user,
            rank,
            item,
            catalogue.popularity[item],
            np.full(n, _SOURCE[schema.SOURCE_FALLBACK]),
            np.ones(n),
        )

    def _popular(self, states, plain, buyers, ranked) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        k = self.policy.top_k
        head = ranked[:k]
        # Users with nothing to mask share one list; the rest (few) are filtered one by one.
        users = [np.repeat(plain, len(head))]
        ranks = [np.tile(np.arange(1, len(head) + 1), len(plain))]
        items = [np.tile(head, len(plain))]
        for user in buyers:
            purchased = states.purchased_items[states.purchased_indptr[user] : states.purchased_indptr[user + 1]]
            candidates = ranked[: k + len(purchased)]
            picked = candidates[~np.isin(candidates, purchased)][:k]
            users.append(np.full(len(picked), user))
            ranks.append(np.arange(1, len(picked) + 1))
            items.append(picked)
        return tuple(np.concatenate(a).astype(np.int64) for a in (users, ranks, items))

    def _table(self, user_id: pa.Array, user, rank, item, score, source, propensity) -> pa.Table:
        n = len(user)
        sources = pa.DictionaryArray.from_arrays(pa.array(source, pa.int8()), pa.array(schema.SOURCES))
        return pa.Table.from_arrays(
            [
                user_id.take(pa.array(user, pa.int64())).cast(pa.string()),
                pa.array(rank, pa.int32()),
                self.catalogue.item_ids.take(pa.array(item, pa.int64())),
                pa.array(score, pa.float64()),
                sources.cast(pa.string()),
                pa.array(propensity, pa.float64()),
                pa.repeat(pa.scalar(self.model_version, pa.string()), n),
                pa.repeat(self.stamp, n),
            ],
            schema=schema.arrow_schema(schema.RECOMMENDATIONS),
        )


@contextlib.contextmanager
def one_thread_per_batch(device: torch.device | str = "cpu") -> Iterator[int]:
    """Run torch on one CPU thread inside this block; yields how many batches may run side by side.

    On CPU the rounding of small matrix products and of the packed GRU depends on torch's thread
    count (measured here: 1 vs 2 threads changed scores in the last bits). Spark runs one task per
    core, so the torch engine does the same: each batch on one thread, batches in parallel across
    the cores. Same batches, same single-threaded kernels, identical rows. A GPU is left as it is.
    """
    threads = torch.get_num_threads()
    if torch.device(device).type != "cpu":
        yield 1
        return
    torch.set_num_threads(1)
    try:
        yield threads
    finally:
        torch.set_num_threads(threads)


def _fill_slots(users, greedy, greedy_q, drawn, drawn_q, log_rest, top, coins, slot_eps, temperature):
    """Slot r takes the best item not chosen yet (greedy) or the next draw (explore, prob slot_eps[r]).

    The softmax mass left before slot r is the rest (items in neither list) plus every listed item
    not chosen yet, summed in log space. Each list has k entries and at most k - 1 are taken before
    the last slot, so neither runs dry unless the row has fewer eligible items than slots.
    """
    n_rows, k = greedy.shape
    rows = np.arange(n_rows)
    with np.errstate(invalid="ignore"):
        log_w_greedy = np.where(np.isfinite(greedy_q), (greedy_q - top[:, None]) / temperature, -np.inf)
        log_w_drawn = np.where(np.isfinite(drawn_q), (drawn_q - top[:, None]) / temperature, -np.inf)
    in_greedy = (drawn[:, :, None] == greedy[:, None, :]).any(axis=2)  # counted once, on the greedy side
    left_greedy, left_drawn = np.isfinite(greedy_q), np.isfinite(drawn_q)
    out_item = np.zeros((n_rows, k), dtype=np.int64)
    out_q = np.zeros((n_rows, k))
    out_source = np.zeros((n_rows, k), dtype=np.int64)
    out_propensity = np.zeros((n_rows, k))
    filled = np.zeros((n_rows, k), dtype=bool)
    for slot in range(k):
        open_rows = left_greedy.any(axis=1)
        if not open_rows.any():
            break
        g_pos, d_pos = left_greedy.argmax(axis=1), left_drawn.argmax(axis=1)
        g_item, d_item = greedy[rows, g_pos], drawn[rows, d_pos]
        log_mass = _log_sum_rows(
            log_rest,
            np.where(left_greedy, log_w_greedy, -np.inf),
            np.where(left_drawn & ~in_greedy, log_w_drawn, -np.inf),
        )
        explore = coins[:, slot] < slot_eps[slot]
        item = np.where(explore, d_item, g_item)
        log_w = np.where(explore, log_w_drawn[rows, d_pos], log_w_greedy[rows, g_pos])
        eps = slot_eps[slot]
        propensity = eps * np.exp(log_w - log_mass) + (1.0 - eps) * (item == g_item)
        out_item[:, slot] = item
        out_q[:, slot] = np.where(explore, drawn_q[rows, d_pos], greedy_q[rows, g_pos])
        out_source[:, slot] = np.where(explore, _SOURCE[schema.SOURCE_EXPLORE], _SOURCE[schema.SOURCE_DQN])
        out_propensity[:, slot] = np.maximum(propensity, np.finfo(np.float64).tiny)  # a probability > 0
        filled[:, slot] = open_rows
        left_greedy &= greedy != item[:, None]
        left_drawn &= drawn != item[:, None]
    rank = np.broadcast_to(np.arange(1, k + 1), (n_rows, k))
    return (
        np.broadcast_to(users[:, None], (n_rows, k))[filled],
        rank[filled],
        out_item[filled],
        out_q[filled],
        out_source[filled],
        out_propensity[filled],
    )


def _log_sum_rows(log_rest: np.ndarray, *log_parts: np.ndarray) -> np.ndarray:
    """log(exp(log_rest) + sum of exp over each [rows, k] part), stable."""
    stacked = np.concatenate([log_rest[:, None], *log_parts], axis=1)
    peak = stacked.max(axis=1)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    with np.errstate(divide="ignore"):  # rows with nothing left: log(0) = -inf, never used
        return peak + np.log(np.exp(stacked - peak[:, None]).sum(axis=1))


# --- the single-process engine --------------------------------------------------------------------


def score_users(
    model: QNetwork,
    states: data.UserStates,
    items: data.ItemFeatures,
    *,
    top_k: int,
    batch_size: int,
    popularity: np.ndarray,
    model_version: str,
    generated_at: datetime,
    mask_purchased: bool = True,
    device: torch.device | str = "cpu",
    explore_slots: int = 0,
    explore_epsilon: float = 0.0,
    explore_temperature: float = 1.0,
    seed: int = 0,
) -> pa.Table:
    """Recommendations for every user in ``states``, schema ``arrow_schema(RECOMMENDATIONS)``.

    ``items`` is tonight's item index (availability, ids and categories; it may have more items
    than the model); ``popularity`` holds a score per item_idx for the fallback (e.g. action
    counts). Rows come per user in input order, ranks 1..K; a user gets fewer than K rows only
    when fewer items are left after masking. The model is moved to ``device`` and set to eval mode.
    """
    policy = Policy(
        top_k=top_k,
        mask_purchased=mask_purchased,
        explore_slots=explore_slots,
        explore_epsilon=explore_epsilon,
        temperature=explore_temperature,
        seed=seed,
    )
    keys = user_keys(states.user_id)
    batches = canonical_batches(states.user_id, keys, batch_size)
    if not batches:
        return schema.arrow_schema(schema.RECOMMENDATIONS).empty_table()
    with one_thread_per_batch(device) as workers:
        scorer = Scorer(
            model,
            Catalogue.from_features(items, popularity),
            policy,
            model_version=model_version,
            generated_at=generated_at,
            device=device,
        )

        def score_one(batch: np.ndarray) -> tuple[pa.Table, np.ndarray]:
            table, user = scorer._score_batch(take_states(states, batch), keys[batch])
            return table, batch[user]

        # torch releases the GIL in its kernels: one Python thread per core scores batches side by side.
        with ThreadPoolExecutor(max_workers=min(workers, len(batches))) as pool:
            tables, owners = zip(*pool.map(score_one, batches), strict=True)
    # Back to the input order of users; rows of one user stay in rank order (stable sort).
    order = np.argsort(np.concatenate(owners), kind="stable")
    return pa.concat_tables(tables).take(pa.array(order))


# --- the payload the Spark engine broadcasts ------------------------------------------------------


@dataclass(frozen=True)
class ScoringPayload:
    """Everything an executor needs to build a ``Scorer``: plain values, weights as safetensors bytes.

    Broadcast by the Spark job; the weights travel as a safetensors blob (``safetensors.torch.save``)
    and are rebuilt with ``safetensors.torch.load``: nothing the executor loads is unpickled model data.
    """

    weights: bytes
    """The QNetwork state dict, safetensors-encoded."""
    model: dict[str, Any]
    """n_items, n_categories and the model config section."""
    catalogue: Catalogue
    policy: Policy
    model_version: str
    generated_at: datetime
    max_len: int
    """State length L the user sequences are padded to."""
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    """Identifies this payload: an executor builds its Scorer once per payload."""

    @classmethod
    def build(
        cls,
        model: QNetwork,
        catalogue: Catalogue,
        policy: Policy,
        *,
        model_version: str,
        generated_at: datetime,
        max_len: int,
    ) -> ScoringPayload:
        from safetensors.torch import save

        state = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
        return cls(
            weights=save(state),
            model={
                "n_items": model.n_items,
                "n_categories": model.n_categories,
                "config": dataclasses.asdict(model.cfg),
            },
            catalogue=catalogue,
            policy=policy,
            model_version=model_version,
            generated_at=generated_at,
            max_len=max_len,
        )

    def load_model(self) -> QNetwork:
        from safetensors.torch import load

        known = {f.name for f in dataclasses.fields(ModelConfig)}
        cfg = ModelConfig(**{k: v for k, v in self.model["config"].items() if k in known})
        model = QNetwork(self.model["n_items"], self.model["n_categories"], cfg)
        model.load_state_dict(load(self.weights))
        return model.eval()

    def scorer(self, device: torch.device | str = "cpu") -> Scorer:
        return Scorer(
            self.load_model(),
            self.catalogue,
            self.policy,
            model_version=self.model_version,
            generated_at=self.generated_at,
            device=device,
        )
