"""The popularity policy: available items by how often they were the logged action, minus what each
user must not be shown. Owns the policy's order and lists; every place that serves, evaluates or
estimates "popularity" asks this module:

- the scoring fallback (``ranking.Ranker``: users whose state has no item the model knows),
- the popularity baseline of the nightly evaluation (``PopularityScorer``, counts of the training split),
- the popularity candidate of the off-policy night and of the shop loop (``judging.candidates``),
- the shop loop's popularity twin (counts of the shop's own logs, which is all that twin has).

Order: count descending, then item_idx ascending, unavailable items left out. A user's list is the
first ``top_k`` items of that order that are not among the user's excluded items; computed for all
users at once, in chunks that bound the memory by ``CELLS_PER_CHUNK``, without a loop per user.
"""

from __future__ import annotations

import numpy as np

CELLS_PER_CHUNK = 1 << 24
"""[users, depth] booleans held at once when lists are cut from the order (16 MiB)."""


def popularity_order(counts: np.ndarray, available: np.ndarray | None = None) -> np.ndarray:
    """item_idx by count desc, then item_idx asc, only those ``available`` (index 0, padding, never)."""
    counts = np.asarray(counts, dtype=np.float64)
    order = np.lexsort((np.arange(len(counts)), -counts))
    keep = np.ones(len(counts), dtype=bool) if available is None else np.asarray(available, dtype=bool).copy()
    keep[0] = False
    return order[keep[order]]


def popular_lists(
    ranked: np.ndarray,
    excluded_indptr: np.ndarray,
    excluded_items: np.ndarray,
    top_k: int,
    users: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, rank, item): for each of ``users`` (rows of the CSR exclusions; default all) the first
    ``top_k`` items of ``ranked`` not among its excluded items, rank 1-based; rows grouped by user in
    the order of ``users``, ranks ascending. A user with fewer than ``top_k`` such items gets them all."""
    if users is None:
        users = np.arange(len(excluded_indptr) - 1)
    users = np.asarray(users, dtype=np.int64)
    starts, counts = excluded_indptr[users], excluded_indptr[users + 1] - excluded_indptr[users]
    pieces = [(np.zeros(0, np.int64),) * 3]
    size = max(1, CELLS_PER_CHUNK // (top_k + int(counts.max(initial=0))))
    for done in range(0, len(users), size):
        chunk = slice(done, done + size)
        depth = int(min(len(ranked), top_k + counts[chunk].max()))
        pieces.append(_cut(ranked[:depth], starts[chunk], counts[chunk], excluded_items, top_k, users[chunk]))
    return tuple(np.concatenate(column) for column in zip(*pieces, strict=True))


def _cut(head, starts, counts, excluded_items, top_k, users) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_users, depth = len(users), len(head)
    column = np.full(int(max(head.max(initial=0), excluded_items.max(initial=0))) + 1, -1, dtype=np.int64)
    column[head] = np.arange(depth)
    row = np.repeat(np.arange(n_users), counts)
    within = np.arange(len(row)) - np.repeat(np.cumsum(counts) - counts, counts)
    where = column[excluded_items[np.repeat(starts, counts) + within]]
    blocked = np.zeros((n_users, depth), dtype=bool)
    blocked[row[where >= 0], where[where >= 0]] = True
    rank = np.cumsum(~blocked, axis=1)
    r, c = np.nonzero(~blocked & (rank <= top_k))
    return users[r], rank[r, c], head[c]


class PopularityScorer:
    """The popularity policy as an evaluation ``Scorer``: the same scores (counts) for everyone, so
    ranked with ties by item_idx it gives ``popularity_order``'s order (evaluation masks the rest)."""

    def __init__(self, counts: np.ndarray):
        self.counts = np.asarray(counts, dtype=np.float32).copy()
        self.counts[0] = -np.inf

    @classmethod
    def from_transitions(cls, transitions_dir, *, n_items: int) -> PopularityScorer:
        from dql_model.contract import schema
        from dql_model.warehouse import data

        return cls(data.action_counts(transitions_dir, n_items=n_items, split=schema.TRAIN))

    @property
    def n_items(self) -> int:
        return len(self.counts) - 1

    def scores(self, state_items: np.ndarray, state_events: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(state_items), len(self.counts)))

    __call__ = scores
