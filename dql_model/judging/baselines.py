"""The baselines a DQN challenger is compared with, in the same run and under the same metrics.

- popularity: the most frequent logged actions of the training split (scoring.popularity.PopularityScorer);
- category popularity: popular items of the categories the state shows, with a category prior
  for the items training never saw (CategoryPopularityScorer); judged on new items only;
- co-occurrence: item-to-item collaborative filtering over sequences. Score(s, j) is the sum,
  over the last ``window`` items i of the state (d = 1 the most recent), of
  ``decay^(d - 1) * P_d(next = j | i was d steps back)``, the conditional probabilities counted
  on the training transitions; a tiny popularity term orders the items no neighbour reaches.
  Repeats (j = i) count like any pair, so "the item just viewed" is one of its candidates;
- supervised: the same Q-network trained on next-item cross-entropy only (train.mode =
  "supervised", GRU4Rec-like with a full softmax), with a small hyperparameter search; trained in
  the training step beside the challenger (``dql_model.learning.supervised_baseline``), so judging
  only loads it.

Each baseline is tuned on the validation split, as the DQN's early stopping is: the comparison
is, if anything, tilted in the baselines' favour.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from dql_model.config import Config
from dql_model.contract import schema
from dql_model.evaluation.evaluate import Scorer, evaluate_scorer
from dql_model.learning.networks import QNetwork
from dql_model.learning.scorer import QNetworkScorer
from dql_model.scoring.popularity import PopularityScorer
from dql_model.warehouse import data

MAX_WINDOW = 10
"""Deepest state position the co-occurrence counts look at."""
COOCCURRENCE_GRID = (
    {"window": 1, "decay": 1.0},
    {"window": 3, "decay": 0.5},
    {"window": MAX_WINDOW, "decay": 0.7},
)
"""Co-occurrence settings tried on the validation split (counting is shared, so all are cheap)."""
POPULARITY_TIE_BREAK = 1e-9
"""Weight of normalised popularity in co-occurrence scores: below any co-occurrence evidence."""


# --------------------------------------------------------------------------------------------
# Item-to-item co-occurrence


@dataclass
class SparseRows:
    """A sparse [n_rows, n_cols] matrix as sorted CSR arrays (numpy only), for row lookups."""

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    n_cols: int

    @classmethod
    def from_pairs(cls, keys: np.ndarray, values: np.ndarray, *, n_rows: int, n_cols: int) -> SparseRows:
        """From unique sorted keys row * n_cols + col and their values."""
        rows = keys // n_cols
        indptr = np.searchsorted(rows, np.arange(n_rows + 1)).astype(np.int64)
        return cls(indptr=indptr, indices=(keys % n_cols).astype(np.int64), values=values, n_cols=n_cols)

    def add_rows_to(self, out: np.ndarray, rows: np.ndarray, weight: float) -> None:
        """out[b] += weight * self[rows[b]] for every b."""
        starts, stops = self.indptr[rows], self.indptr[rows + 1]
        lengths = stops - starts
        if not lengths.sum():
            return
        batch_row = np.repeat(np.arange(len(rows)), lengths)
        position = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        entry = starts[batch_row] + position
        out[batch_row, self.indices[entry]] += weight * self.values[entry]


class _PairCounter:
    """Counts of (row, col) pairs accumulated over batches, kept as sorted unique keys.

    Each batch is reduced on its own and held as pending; the pending runs are merged into the
    counted keys only when they outgrow them, so the total work is O(pairs log pairs) however many
    batches arrive (re-sorting every key per batch was quadratic in the number of batches).
    """

    MERGE_AT = 1 << 20
    """Pending keys held before a merge, at least (or as many as are counted)."""

    def __init__(self, n_cols: int):
        self.n_cols = n_cols
        self.keys = np.zeros(0, dtype=np.int64)
        self.counts = np.zeros(0, dtype=np.float64)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_size = 0

    def add(self, rows: np.ndarray, cols: np.ndarray) -> None:
        keys, counts = np.unique(rows.astype(np.int64) * self.n_cols + cols, return_counts=True)
        self._pending.append((keys, counts.astype(np.float64)))
        self._pending_size += len(keys)
        if self._pending_size > max(len(self.keys), self.MERGE_AT):
            self._merge()

    def _merge(self) -> None:
        if not self._pending:
            return
        keys = np.concatenate([self.keys, *(k for k, _ in self._pending)])
        weights = np.concatenate([self.counts, *(c for _, c in self._pending)])
        self.keys, inverse = np.unique(keys, return_inverse=True)
        self.counts = np.bincount(inverse, weights=weights)
        self._pending, self._pending_size = [], 0

    def matrix(self, n_rows: int) -> SparseRows:
        self._merge()
        return SparseRows.from_pairs(self.keys, self.counts, n_rows=n_rows, n_cols=self.n_cols)


@dataclass
class CooccurrenceCounts:
    """C_d[i, j]: training transitions whose state had item i d steps back and whose action was j."""

    by_distance: list[SparseRows]
    """C_1 .. C_max_window, each [n_items + 1, n_items + 1] (row and column 0 are padding)."""
    popularity: np.ndarray
    """[n_items + 1] logged-action counts."""

    @property
    def n_items(self) -> int:
        return len(self.popularity) - 1

    @classmethod
    def from_batches(cls, batches, *, n_items: int, max_window: int = MAX_WINDOW) -> CooccurrenceCounts:
        counters = [_PairCounter(n_items + 1) for _ in range(max_window)]
        popularity = np.zeros(n_items + 1)
        for batch in batches:
            action = batch.action
            keep_action = (action > 0) & (action <= n_items)
            popularity += np.bincount(action[keep_action], minlength=n_items + 1)
            for d in range(1, min(max_window, batch.max_len) + 1):
                previous = batch.state_items[:, -d]
                keep = keep_action & (previous > 0) & (previous <= n_items)
                counters[d - 1].add(previous[keep], action[keep])
        return cls(by_distance=[c.matrix(n_items + 1) for c in counters], popularity=popularity)

    @classmethod
    def from_transitions(
        cls, folder: str | os.PathLike[str], *, n_items: int, max_len: int, max_window: int = MAX_WINDOW
    ) -> CooccurrenceCounts:
        """Counts over the training split, streamed (never the whole table in memory)."""
        batches = data.iter_transition_batches(
            folder, max_len=max_len, batch_size=65_536, split=schema.TRAIN, shuffle=False
        )
        return cls.from_batches(batches, n_items=n_items, max_window=max_window)


class CooccurrenceScorer:
    """Scores of the co-occurrence baseline (module docstring) for a window and a decay."""

    def __init__(self, counts: CooccurrenceCounts, *, window: int, decay: float):
        if not 1 <= window <= len(counts.by_distance):
            raise ValueError(f"co-occurrence window {window} is outside 1..{len(counts.by_distance)}")
        self.window, self.decay = window, decay
        self.conditional = [_row_normalised(c) for c in counts.by_distance[:window]]
        pop = counts.popularity.astype(np.float64)
        self.prior = POPULARITY_TIE_BREAK * pop / max(pop.max(), 1.0)
        self.prior[0] = -np.inf

    @property
    def n_items(self) -> int:
        return len(self.prior) - 1

    def scores(self, state_items: np.ndarray, state_events: np.ndarray) -> np.ndarray:
        state_items = np.asarray(state_items)
        out = np.broadcast_to(self.prior, (len(state_items), len(self.prior))).copy()
        for d, conditional in enumerate(self.conditional, start=1):
            if d > state_items.shape[1]:
                break
            previous = np.where(state_items[:, -d] <= self.n_items, state_items[:, -d], 0)
            conditional.add_rows_to(out, previous, self.decay ** (d - 1))
        return out

    __call__ = scores


def _row_normalised(counts: SparseRows) -> SparseRows:
    rows = np.repeat(np.arange(len(counts.indptr) - 1), np.diff(counts.indptr))
    totals = np.bincount(rows, weights=counts.values, minlength=len(counts.indptr) - 1)
    return SparseRows(
        indptr=counts.indptr,
        indices=counts.indices,
        values=counts.values / np.maximum(totals[rows], 1.0),
        n_cols=counts.n_cols,
    )


def tune_cooccurrence(
    counts: CooccurrenceCounts,
    val: data.TransitionBatch,
    *,
    metric: str = schema.metric_name("ndcg", 10),
    grid=COOCCURRENCE_GRID,
    exclude: data.Exclusions | None = None,
) -> tuple[CooccurrenceScorer, list[dict[str, Any]]]:
    """The grid setting with the best validation ``metric``, and every trial's settings and value."""
    trials, best, best_value = [], None, float("-inf")
    k = schema.metric_k(metric)
    for setting in grid:
        scorer = CooccurrenceScorer(counts, **setting)
        value = evaluate_scorer(scorer, val, ks=(k,), exclude=exclude).get(metric, 0.0) if len(val) else 0.0
        trials.append({**setting, "value": value})
        if best is None or value > best_value:
            best, best_value = scorer, value
    return best, trials


# --------------------------------------------------------------------------------------------
# Category popularity


class CategoryPopularityScorer:
    """Popular items of the categories the user looks at: what a shop shows without a model.

    ``score(s, i) = P(c(i) | s) * P(i | c(i)) + POPULARITY_TIE_BREAK * P(c(i)) * P(i | c(i))``:

    - ``P(c | s)``: the share of the state's events (its non-padding positions) on items of
      category c, the user's interest; items without a category form one group of their own;
    - ``P(i | c)``: item i's share of its category's logged actions in the training split, for the
      items training saw (``seen``; one seen only in states has a share of 0). An item training never
      saw gets its category's mean share over the items it saw, the prior a shop gives an unseen
      item (``1 / items in the category`` when training saw none of them);
    - ``P(c)``: the category's share of the training split's actions. The tiny second term orders
      the items the state's categories do not reach (all of them for an empty state) by overall
      popularity, each unseen item at its prior; remaining ties go to the lower item_idx, as everywhere.
    """

    def __init__(self, counts: np.ndarray, category: np.ndarray, seen: np.ndarray):
        counts = np.asarray(counts, dtype=np.float64)
        self.category = np.asarray(category, dtype=np.int64)
        seen = np.asarray(seen, dtype=bool) & (np.arange(len(counts)) > 0)
        if not len(counts) == len(self.category) == len(seen):
            raise ValueError("counts, category and seen must all have n_items + 1 entries")
        self.n_groups = int(self.category.max(initial=0)) + 1
        items = np.arange(len(counts)) > 0
        per_category = np.bincount(self.category[items], weights=counts[items], minlength=self.n_groups)
        share = np.divide(counts, per_category[self.category], out=np.zeros_like(counts), where=counts > 0)
        seen_shares = np.bincount(self.category[seen], weights=share[seen], minlength=self.n_groups)
        n_seen = np.bincount(self.category[seen], minlength=self.n_groups)
        n_listed = np.bincount(self.category[items], minlength=self.n_groups)
        prior = np.where(n_seen > 0, seen_shares / np.maximum(n_seen, 1), 1.0 / np.maximum(n_listed, 1))
        self.within = np.where(seen, share, prior[self.category])  # P(i | c(i)), [n_items + 1]
        category_share = per_category / max(per_category.sum(), 1.0)
        self.tie_break = POPULARITY_TIE_BREAK * category_share[self.category] * self.within
        self.tie_break[0] = -np.inf

    @property
    def n_items(self) -> int:
        return len(self.within) - 1

    def scores(self, state_items: np.ndarray, state_events: np.ndarray) -> np.ndarray:
        state_items = np.asarray(state_items)
        present = (state_items > 0) & (state_items <= self.n_items)
        groups = self.category[np.where(present, state_items, 0)]
        row = np.repeat(np.arange(len(state_items)), present.sum(axis=1))
        interest = np.bincount(
            row * self.n_groups + groups[present], minlength=len(state_items) * self.n_groups
        ).reshape(len(state_items), self.n_groups) / np.maximum(present.sum(axis=1, keepdims=True), 1)
        return interest[:, self.category] * self.within + self.tie_break

    __call__ = scores


# --------------------------------------------------------------------------------------------
# All baselines of a run


@dataclass
class Baselines:
    """Scorers of the baselines (in table order) and how each was picked."""

    scorers: dict[str, Scorer]
    details: dict[str, Any]
    histories: dict[str, list[dict[str, float]]]


def fit_baselines(
    cfg: Config,
    *,
    transitions_dir: str,
    item_index_dir: str,
    items: data.ItemFeatures,
    val: data.TransitionBatch,
    exclude: str = "none",
    supervised: tuple[QNetwork, dict[str, Any]] | None = None,
    masks: data.Exclusions | None = None,
    progress: Callable[[str], None] = print,
) -> Baselines:
    """Co-occurrence (tuned) and popularity, fitted on the training split and tuned on validation with
    the items of the ``exclude`` rule masked, as the models are judged; beside them the supervised
    baseline the training step trained and saved (``supervised``: its network and saved metadata, from
    ``learning.supervised_baseline.load``), when there is one. ``masks`` are the exclusions of the rows
    of ``val`` when it is a sample of the split."""
    scorers: dict[str, Scorer] = {}
    details: dict[str, Any] = {}
    histories: dict[str, list[dict[str, float]]] = {}
    if supervised is not None:
        model, meta = supervised
        found = meta["metrics"]
        scorers["supervised"] = QNetworkScorer(model, n_items=items.n_items)
        details["supervised"] = {
            "version": meta["version"],
            "picked": found["picked"],
            "trials": found["trials"],
            "metric": found["metric"],
        }
        histories["supervised"] = found["history"]
    counts = CooccurrenceCounts.from_transitions(transitions_dir, n_items=items.n_items, max_len=cfg.etl.max_len)
    if masks is None:  # the rows of ``val`` are the whole split
        masks = data.load_exclusions(transitions_dir, exclude=exclude)
    cooccurrence, trials = tune_cooccurrence(counts, val, metric=cfg.eval.early_stop_metric, exclude=masks)
    scorers["cooccurrence"] = cooccurrence
    details["cooccurrence"] = {
        "picked": {"window": cooccurrence.window, "decay": cooccurrence.decay},
        "trials": trials,
        "metric": cfg.eval.early_stop_metric,
    }
    progress(f"co-occurrence: window {cooccurrence.window}, decay {cooccurrence.decay} (of {len(trials)} tried)")
    scorers["popularity"] = PopularityScorer(counts.popularity)
    return Baselines(scorers=scorers, details=details, histories=histories)
