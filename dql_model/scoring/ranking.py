"""The ranking core both engines share: top-K of Q(s, ·) = f(s) · g(·)ᵀ + b(·) per user, masked.

``Ranker`` holds a model and tonight's ``Catalogue`` and scores one batch of users at a time; the
torch engine runs it in one process, the Spark engine on executors. A matrix product's rounding
depends on the batch it runs in, so both cut the users into the same batches: users whose
crc32(user_id) falls in the same bucket, sorted by user_id (``canonical_batches``). Same batches,
same arithmetic, identical rows.

- Masks: the padding column, the user's excluded items (``Policy.exclude``: purchased, every item
  interacted with, or none; the states carry them as ``UserStates.excluded_*``), items that are not
  available tonight, and items the model does not know (new since it was trained; they reach users
  through the fallback until the next training). Masked items get a bias of -inf, so masking costs
  nothing in the matrix product.
- Fallback: a user whose state has no item the model knows gets popular available items: first the
  popular items of the category of their most recent interaction that has a category (a brand-new
  item still has one), then popular items overall; without such an interaction, popular items
  overall. Same masks; source ``fallback_popular``; score = the item's popularity.
- Exploration: the policy fills the slots (``dql_model.scoring.policy``).
- Counts: ``Ranker.count_masks`` tallies what these masks take from a batch of users, per reason, and
  the users left with fewer than K candidates (``dql_model.scoring.masks`` names the reasons).
- Ties are broken by item_idx ascending, so the output is a deterministic function of its inputs.
- Retrieval (``score.retrieval``): exact scores every item the model knows. ``ann`` asks a FAISS IVF
  index (``dql_model.scoring.retrieval``) for each user's candidates and re-ranks only those exactly,
  with the same masks and tie order; a user left with fewer than K eligible candidates (most of them
  excluded) is ranked by the exact path instead, so every list is as full as the exact path's.
  Exploring policies always rank exactly: their softmax needs every item's Q-value. ``auto`` builds
  the index only from ``min_items`` indexable items (``indexable``); ``drop_ann`` returns to exact.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from dql_model.contract import schema
from dql_model.learning.networks import QNetwork
from dql_model.scoring.masks import EXCLUDE_REASONS, NEW_SINCE_TRAINING, UNAVAILABLE, MaskCounts
from dql_model.scoring.policy import CatalogueRest, Policy, SlotCandidates, fill_slots
from dql_model.scoring.popularity import popular_lists, popularity_order
from dql_model.scoring.retrieval import AnnIndex, AnnSettings, recall_at_k
from dql_model.warehouse import data

SCORES_PER_CHUNK = 1 << 25
"""Q-values held at once (128 MiB of float32): users per matrix product = this // catalogue size."""
EXPLORE_CHUNK_SHARE = 8
"""Exploring holds a few more [users, items] arrays (random keys), so its chunks are this much smaller."""
_SOURCE = {name: code for code, name in enumerate(schema.SOURCES)}
NO_ITEM, UNAVAILABLE_ITEM, NEW_ITEM, MODEL_CANDIDATE = range(4)
"""What an item_idx is to tonight's ranker (``item_kinds``)."""


class NaNScoresError(ValueError):
    """Scores contain NaN: there is no meaningful ranking."""


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
        """From the item index as ``dql_model.warehouse.data`` decodes it, and a fallback score per item_idx."""
        return cls(
            item_ids=pa.array(items.item_ids, pa.string()),
            available=items.available,
            category=np.asarray(items.category, dtype=np.int64),
            popularity=_fit(popularity, items.n_items + 1),
        )

    def ranked(self, category: int = 0) -> np.ndarray:
        """Available item_idx by popularity desc, then item_idx asc; a category's own items first."""
        if category not in self._ranked:
            if category == 0:
                self._ranked[0] = popularity_order(self.popularity, self.available)
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


def item_kinds(catalogue: Catalogue, n_model_items: int) -> np.ndarray:
    """[n_items + 1] per item_idx: NO_ITEM (padding, an unused index), UNAVAILABLE_ITEM, NEW_ITEM (available,
    newer than the model) or MODEL_CANDIDATE (available and known to the model)."""
    real = pc.is_valid(catalogue.item_ids).to_numpy(zero_copy_only=False).copy()
    real[0] = False
    kind = np.where(real, UNAVAILABLE_ITEM, NO_ITEM)
    on_sale = real & catalogue.available
    kind[on_sale] = NEW_ITEM
    kind[on_sale & (np.arange(len(kind)) <= n_model_items)] = MODEL_CANDIDATE
    return kind


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
    starts = states.excluded_indptr[index]
    counts = states.excluded_indptr[index + 1] - starts
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    within = np.arange(indptr[-1]) - np.repeat(indptr[:-1], counts)
    return data.UserStates(
        user_id=states.user_id.take(pa.array(index, pa.int64())),
        state_items=states.state_items[index],
        state_events=states.state_events[index],
        excluded_indptr=indptr,
        excluded_items=states.excluded_items[np.repeat(starts, counts) + within],
    )


# --- top-K and masks --------------------------------------------------------------------------------


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


def _excluded_rows(states: data.UserStates, n_columns: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, item_idx) pairs of the excluded items, limited to item_idx < n_columns."""
    counts = np.diff(states.excluded_indptr)
    rows = np.repeat(np.arange(len(states)), counts)
    cols = states.excluded_items
    keep = (cols > 0) & (cols < n_columns)
    return rows[keep], cols[keep]


def _excluded_in_batch(
    masked_rows: np.ndarray, masked_cols: np.ndarray, users: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Excluded items of a sorted batch of users as (row within the batch, item_idx)."""
    lo, hi = np.searchsorted(masked_rows, [users[0], users[-1] + 1])
    rows, cols = masked_rows[lo:hi], masked_cols[lo:hi]
    position = np.searchsorted(users, rows)
    member = users[np.minimum(position, len(users) - 1)] == rows
    return position[member], cols[member]


# --- the ranker -------------------------------------------------------------------------------------


class Ranker:
    """A model and tonight's catalogue, ready to rank items for batches of users on one device."""

    def __init__(
        self,
        model: QNetwork,
        catalogue: Catalogue,
        policy: Policy,
        *,
        model_version: str,
        generated_at: datetime,
        device: torch.device | str = "cpu",
        source: str = schema.SOURCE_DQN,
        ann: AnnSettings | None = None,
    ):
        if source not in schema.MODEL_SOURCES.values():
            raise ValueError(f"source {source!r} is not a model's source {sorted(schema.MODEL_SOURCES.values())}")
        self.source = _SOURCE[source]
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
        self.item_kind = item_kinds(catalogue, model.n_items)
        self.items_per_kind = np.bincount(self.item_kind, minlength=4).astype(np.int64)
        self.ann_index: AnnIndex | None = None
        if ann is not None and not policy.explores and self.indexable >= ann.min_items:
            indexed = np.flatnonzero(self.item_kind == MODEL_CANDIDATE)
            self.ann_index = AnnIndex(
                self.vectors[indexed].cpu().numpy(), bias[indexed].cpu().numpy(), indexed, ann
            )
            self.ann_candidates = min(ann.n_candidates(policy.top_k), len(indexed))
            # the re-rank gathers [users, candidates, D] vectors: as many floats as the exact path's Q-values
            self.ann_rows = max(1, SCORES_PER_CHUNK // (self.ann_candidates * self.vectors.shape[1]))

    def count_masks(self, states: data.UserStates) -> MaskCounts:
        """What the masks take from these users and who is left with fewer than top_k candidates, as
        ``rank_batch`` masks them (the rules are ``dql_model.scoring.masks``'s). Additive over batches."""
        items = states.state_items  # the model ranks a user whose state has an item it knows (rank_batch)
        by_model = ((items > 0) & (items <= self.model.n_items)).any(axis=1)
        n_users, n_model = len(states), int(by_model.sum())
        kind, per_kind = self.item_kind, self.items_per_kind
        if self.policy.exclude == "none":  # rank_batch and the fallback mask nothing then
            rows, cols = np.zeros(0, np.int64), np.zeros(0, np.int64)
        else:
            rows, cols = np.repeat(np.arange(n_users), np.diff(states.excluded_indptr)), states.excluded_items
        inside = (cols > 0) & (cols < len(kind))
        rows, of_kind = rows[inside], kind[cols[inside]]
        rows, of_kind = rows[of_kind != NO_ITEM], of_kind[of_kind != NO_ITEM]
        masked = {}
        if self.policy.exclude in EXCLUDE_REASONS:
            masked[EXCLUDE_REASONS[self.policy.exclude]] = len(rows)
        # Pairs already counted as excluded are not counted again.
        masked[UNAVAILABLE] = int(per_kind[UNAVAILABLE_ITEM] * n_users - (of_kind == UNAVAILABLE_ITEM).sum())
        new_excluded = ((of_kind == NEW_ITEM) & by_model[rows]).sum()
        masked[NEW_SINCE_TRAINING] = int(per_kind[NEW_ITEM] * n_model - new_excluded)
        # Candidates left: the model ranks the items it knows, the fallback every available item.
        model_lost = np.bincount(rows[of_kind == MODEL_CANDIDATE], minlength=n_users)
        fallback_lost = np.bincount(rows[of_kind >= NEW_ITEM], minlength=n_users)
        left = np.where(
            by_model,
            per_kind[MODEL_CANDIDATE] - model_lost,
            per_kind[NEW_ITEM] + per_kind[MODEL_CANDIDATE] - fallback_lost,
        )
        short = left < self.policy.top_k
        return MaskCounts(masked, {"model": int((short & by_model).sum()), "fallback": int((short & ~by_model).sum())})

    def score_batch(self, states: data.UserStates, keys: np.ndarray) -> pa.Table:
        """Recommendations for one batch: rows by user (in the given order), then rank."""
        return self.rank_batch(states, keys)[0]

    def rank_batch(self, states: data.UserStates, keys: np.ndarray) -> tuple[pa.Table, np.ndarray]:
        """``score_batch`` and the batch position of each row's user (to restore an input order)."""
        state_items, state_events = _known_states(states, self.model.n_items)
        has_state = (state_items != 0).any(axis=1)
        pieces = [self._fallback(states, np.flatnonzero(~has_state))]
        scored = np.flatnonzero(has_state)
        masks = self.policy.exclude != "none"
        masked_rows, masked_cols = _excluded_rows(states, self.n_known) if masks else (np.zeros(0, int),) * 2
        chunk, score_chunk = (
            (self.rows_per_chunk, self._score_chunk) if self.ann_index is None else (self.ann_rows, self._ann_chunk)
        )
        for start in range(0, len(scored), chunk):
            users = scored[start : start + chunk]
            rows, cols = _excluded_in_batch(masked_rows, masked_cols, users)
            pieces.append(score_chunk(users, state_items[users], state_events[users], rows, cols, keys[users]))
        columns = [np.concatenate(column) for column in zip(*pieces, strict=True)]
        user, rank = columns[0], columns[1]
        order = np.lexsort((rank, user))  # by user (batch position), then rank
        return self._table(states.user_id, *(c[order] for c in columns)), user[order]

    def _score_chunk(self, users, items, events, masked_rows, masked_cols, keys) -> tuple[np.ndarray, ...]:
        device = self.device
        with torch.inference_mode():
            f = self.model.encode_state(torch.as_tensor(items, device=device), torch.as_tensor(events, device=device))
            q = torch.addmm(self.bias, f.float(), self.vectors.T)
            if len(masked_rows):
                q[torch.as_tensor(masked_rows, device=device), torch.as_tensor(masked_cols, device=device)] = float("-inf")
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
            np.full(n, self.source),
            np.ones(n),
        )

    def _ann_chunk(self, users, items, events, masked_rows, masked_cols, keys) -> tuple[np.ndarray, ...]:
        """``_score_chunk``'s rows from the ann candidates re-ranked exactly (``_ann_top_k``)."""
        top = self._ann_top_k(items, events, masked_rows, masked_cols)
        return self._ann_rows(users, items, events, masked_rows, masked_cols, keys, *top)

    def _ann_top_k(self, items, events, masked_rows, masked_cols) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per user the top-K of the ann candidates by their exact Q-values, masked as ``_score_chunk``
        masks: item_idx [B, K], Q [B, K] (-inf past the eligible candidates), and whether the user is
        short: fewer eligible candidates than the K (or fewer) items the exact path would list."""
        device, k = self.device, self.policy.top_k
        with torch.inference_mode():
            f = self.model.encode_state(torch.as_tensor(items, device=device), torch.as_tensor(events, device=device))
            f = f.float()
        found = self.ann_index.search(f.cpu().numpy(), self.ann_candidates)
        # candidates in item_idx order (missing ones last), so top_k_deterministic's ties go by item_idx
        found = np.sort(np.where(found < 0, self.n_known, found), axis=1)
        masked = found == self.n_known
        found[masked] = 0
        if len(masked_rows):
            width = np.int64(self.n_known)
            pairs = np.arange(len(items), dtype=np.int64)[:, None] * width + found
            masked |= np.isin(pairs, masked_rows.astype(np.int64) * width + masked_cols)
        candidates = torch.as_tensor(found, device=device)
        with torch.inference_mode():
            q = torch.bmm(self.vectors[candidates], f[:, :, None])[:, :, 0] + self.bias[candidates]
            q.masked_fill_(torch.as_tensor(masked, device=device), float("-inf"))
            try:
                index, values = top_k_deterministic(q, k)
            except NaNScoresError:
                raise ValueError(
                    f"model {self.model_version} produced NaN Q-values; refusing to score with it"
                ) from None
            index, values = index.cpu().numpy(), values.cpu().numpy()
        inside = masked_cols < len(self.item_kind)
        candidate = self.item_kind[masked_cols[inside]] == MODEL_CANDIDATE
        eligible = self.items_per_kind[MODEL_CANDIDATE] - np.bincount(masked_rows[inside][candidate], minlength=len(items))
        short = np.isfinite(values).sum(axis=1) < np.minimum(k, eligible)
        return np.take_along_axis(found, index, axis=1), values, short

    def _ann_rows(self, users, items, events, masked_rows, masked_cols, keys, top, values, short) -> tuple[np.ndarray, ...]:
        """``_ann_top_k``'s lists as rows; a short user is ranked by the exact path instead (not by a wider
        search): rare (most of their candidates excluded), and it gives exactly the exact path's list."""
        keep = np.isfinite(values) & ~short[:, None]
        rank = np.broadcast_to(np.arange(1, top.shape[1] + 1), top.shape)[keep]
        user = np.broadcast_to(users[:, None], top.shape)[keep]
        n = len(user)
        ann_rows = (user, rank, top[keep].astype(np.int64), values[keep].astype(np.float64), np.full(n, self.source), np.ones(n))
        if not short.any():
            return ann_rows
        redo = np.flatnonzero(short)
        member = np.isin(masked_rows, redo)
        exact_rows = self._score_chunk(
            users[redo], items[redo], events[redo], np.searchsorted(redo, masked_rows[member]), masked_cols[member], keys[redo]
        )
        return tuple(np.concatenate(pair) for pair in zip(ann_rows, exact_rows, strict=True))

    @property
    def indexable(self) -> int:
        """Items the ann stage indexes: available tonight and known to the model."""
        return int(self.items_per_kind[MODEL_CANDIDATE])

    def drop_ann(self) -> None:
        """Rank exactly from now on (``retrieval: auto`` when the index's recall falls short)."""
        self.ann_index = None

    def ann_recall(self, states: data.UserStates, keys: np.ndarray) -> tuple[float, int, int]:
        """Recall@K of the ann path against brute force over these users' model-ranked lists: the share
        of the exact top-K (user, item) pairs the ann top-K holds too; how many users were compared; and
        how many of them the ann path handed to the exact path (short of eligible candidates)."""
        if self.ann_index is None:
            raise ValueError("ann_recall needs score.retrieval=ann on a greedy policy")
        state_items, state_events = _known_states(states, self.model.n_items)
        users = np.flatnonzero((state_items != 0).any(axis=1))
        if len(users) == 0:
            return 1.0, 0, 0
        masks = self.policy.exclude != "none"
        masked_rows, masked_cols = _excluded_rows(states, self.n_known) if masks else (np.zeros(0, int),) * 2
        exact, ann, handed = [], [], 0
        for start in range(0, len(users), self.ann_rows):
            part = users[start : start + self.ann_rows]
            chunk = (state_items[part], state_events[part], *_excluded_in_batch(masked_rows, masked_cols, part))
            exact.append(self._score_chunk(part, *chunk, keys[part])[:3:2])
            top = self._ann_top_k(*chunk)
            ann.append(self._ann_rows(part, *chunk, keys[part], *top)[:3:2])
            handed += int(top[2].sum())
        (exact_users, exact_items), (ann_users, ann_items) = (
            (np.concatenate(c) for c in zip(*rows, strict=True)) for rows in (exact, ann)
        )
        return recall_at_k(exact_users, exact_items, ann_users, ann_items), len(users), handed

    def _explore(self, q, greedy, greedy_q, users, keys) -> tuple[np.ndarray, ...]:
        """Fill the K slots one by one: greedy, or the next Gumbel-top-k draw, with their marginal propensities."""
        k, temperature = greedy.shape[1], self.policy.temperature
        noise = self.policy.item_noise(keys, q.shape[1]).to(q.device)
        # Gumbel-top-k: the k best of Q/T + Gumbel noise are k draws without replacement from the softmax.
        drawn, _ = top_k_deterministic(noise.add_(q, alpha=1.0 / temperature), k)
        del noise
        drawn_q = q.gather(1, drawn)
        top = greedy_q[:, :1]
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        # The replicate slates behind the marginal propensities draw from what the greedy list leaves.
        replicated = self.policy.replicated_ranks()[:k].any()
        rest = CatalogueRest.from_q(q, greedy, top, temperature) if replicated else None
        # Softmax mass of the eligible items in neither list (their exact share, no cancellation).
        # float32 here: the rest's share carries a relative error of ~1e-7, the listed items' none.
        q.scatter_(1, greedy, float("-inf")).scatter_(1, drawn, float("-inf"))
        log_rest = torch.logsumexp(q.sub_(top).div_(temperature), dim=1)
        greedy, greedy_q, drawn, drawn_q, log_rest, top = (
            t.cpu().numpy() for t in (greedy, greedy_q, drawn, drawn_q, log_rest, top)
        )
        candidates = SlotCandidates(
            users=users,
            keys=keys,
            greedy=greedy.astype(np.int64),
            greedy_q=greedy_q.astype(np.float64),
            drawn=drawn.astype(np.int64),
            drawn_q=drawn_q.astype(np.float64),
            log_rest=log_rest.astype(np.float64),
            top=top[:, 0].astype(np.float64),
        )
        user, rank, item, value, explored, propensity = fill_slots(self.policy, candidates, rest)
        source = np.where(explored, _SOURCE[schema.SOURCE_EXPLORE], self.source)
        return user, rank, item, value, source, propensity

    def _fallback(self, states: data.UserStates, users: np.ndarray) -> tuple[np.ndarray, ...]:
        """Popular available items (category first) for users without a known state, minus their excluded items."""
        empty = np.zeros(0, dtype=np.int64)
        pieces: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = [(empty, empty, empty)]
        catalogue = self.catalogue
        if len(users):
            recent = states.state_items[users]
            category = np.where(recent <= catalogue.n_items, catalogue.category[np.minimum(recent, catalogue.n_items)], 0)
            known = category > 0
            last = category.shape[1] - 1 - np.argmax(known[:, ::-1], axis=1)
            user_category = np.where(known.any(axis=1), category[np.arange(len(users)), last], 0)
            masked = np.diff(states.excluded_indptr)[users] * (self.policy.exclude != "none")
            for code in np.unique(user_category):
                ranked = catalogue.ranked(int(code))
                group = user_category == code
                pieces.append(self._popular(states, users[group & (masked == 0)], users[group & (masked > 0)], ranked))
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

    def _popular(self, states, plain, masked_users, ranked) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        k = self.policy.top_k
        head = ranked[:k]
        # Users with nothing to mask share one list; the others get the policy's lists minus their items.
        masked = popular_lists(ranked, states.excluded_indptr, states.excluded_items, k, users=masked_users)
        users = [np.repeat(plain, len(head)), masked[0]]
        ranks = [np.tile(np.arange(1, len(head) + 1), len(plain)), masked[1]]
        items = [np.tile(head, len(plain)), masked[2]]
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
