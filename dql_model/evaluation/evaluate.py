"""Offline ranking evaluation: the one place that masks scores, takes top-K lists and turns ranks into metrics.

Two views of the same ranking:

- per validation event (``evaluate_scorer``, the nightly gate and early stopping): rank the full
  catalogue from the state before every validation event. Every scorer has the same signature,
  ``scores(state_items, state_events) -> [B, n_items + 1]`` (column 0 is padding, at -inf), so the
  Q-network and the baselines are evaluated by the same code and logged under the same names.
- per user, with intervals (``evaluate_lists`` / ``evaluate_scores``, the quality benchmark): top-K
  quality on held-out targets, one value per user and metric, so a table can say how sure it is and
  two systems can be compared on the same users.

Owns the per-user view of the offline metrics: one value per user and metric, so that a table
can say how sure it is and two systems can be compared on the same users. The formulas are
metrics.py's (not repeated here); this module adds the per-user values, the masks and the
intervals. Pure numpy, no Spark, no torch.

- Ranking is over the full catalogue (item_idx 1..n_items; column 0 of a score matrix is
  padding). Items in the user's history mask get -inf before ranking, as scoring masks them; a
  target the user already had is therefore a miss. Ties are broken as scoring breaks them
  (metrics.top_k: score descending, then item_idx ascending), so a tie never favours the
  target by luck and every run gives the same lists. Items at -inf never fill a slot: a user
  with fewer than K candidates gets empty slots (item_idx 0).
- A system may also hand in its own top-K lists (a peer library's export); they are scored as
  given, and the history mask then only measures the share of already-seen items in them.
- With several targets per user (a [U, T] array, 0 = no target), each target is ranked in the
  user's list on its own (one relevant item, IDCG = 1, as for leave-one-out) and the user's
  value is the mean over their targets, so every user weighs the same.
- Intervals: ``intervals.MeanInterval`` over users (Student t, which for the hundreds of users
  of a benchmark is the normal approximation); the paired
  difference of two systems uses the per-user differences, which removes the between-user
  variance both share. Coverage@K (distinct recommended items / catalogue) is a count over all
  lists, not a mean over users, and has no interval: resampling users with replacement would
  only bias it downwards.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from dql_model.contract import schema
from dql_model.evaluation import metrics
from dql_model.evaluation.intervals import MeanInterval
from dql_model.warehouse import data

DEFAULT_KS = (5, 10, 20)
"""The cut-offs of the nightly validation metrics."""
LIST_K = 10
"""Length of the lists the list metrics (coverage, seen, purchased) and the per-user view judge."""
SCORE_CELLS = 1 << 22
"""Scores held at once by an evaluation pass (16 MiB of float32): fewer rows per batch on a large
catalogue, so that each of the pass's sweeps over a batch stays in the CPU's cache."""


def ci95_name(metric: str) -> str:
    """Where ``evaluate_scorer`` puts a metric's 95 % half-width: ``eval/ndcg@10`` -> ``eval/ndcg@10/ci95``."""
    return f"{metric}/ci95"


EVAL_CELLS = 1 << 30
"""Scores a model's evaluation pass computes at most (validation events x catalogue items): up to
53k items eval.max_events (20,000) events fit; above, the sample shrinks so that one pass over a
catalogue of 200k items stays about a minute on 2 cores, and the gate's dozen passes a night fit."""
MIN_EVAL_EVENTS = 2_000
"""The fewest events a sample shrunk by EVAL_CELLS keeps (NDCG@10's 95 % interval then about ± 0.015)."""


def events_to_judge(max_events: int, n_items: int) -> int:
    """The size of the nightly evaluation's sample: ``eval.max_events`` (0: all), fewer where that many
    events times ``n_items`` would exceed EVAL_CELLS, but never fewer than MIN_EVAL_EVENTS."""
    if max_events <= 0:
        return 0
    return min(max_events, max(MIN_EVAL_EVENTS, EVAL_CELLS // max(n_items, 1)))


def judged_sample(n_rows: int, n_items: int, max_events: int, seed: int) -> tuple[np.ndarray | None, str]:
    """(sample_rows of the night's evaluation, where its size comes from: "eval.max_events", or that
    and the catalogue's size when EVAL_CELLS shrank it)."""
    size = events_to_judge(max_events, n_items)
    why = "eval.max_events" if size == max_events else f"eval.max_events, fewer on a catalogue of {n_items} items"
    return sample_rows(n_rows, size, seed), why


def sample_rows(n_rows: int, max_rows: int, seed: int) -> np.ndarray | None:
    """Sorted indices of a seeded sample of ``max_rows`` of ``n_rows`` rows, the same every run with the
    same seed; None when every row fits (``max_rows`` 0: no limit). Each model is judged on the same rows."""
    if max_rows <= 0 or n_rows <= max_rows:
        return None
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=max_rows, replace=False))


class Scorer(Protocol):
    def scores(self, state_items: np.ndarray, state_events: np.ndarray) -> np.ndarray: ...


def _masked_scores(
    scorer: Scorer, val: data.TransitionBatch, *, batch_size: int, exclude: data.Exclusions | None
) -> Iterator[tuple[slice, np.ndarray]]:
    """(rows, scores) per batch of validation rows, the ``exclude`` items of each row at -inf."""
    if exclude is not None and len(exclude) != len(val):
        raise ValueError(f"exclusions cover {len(exclude)} rows, the validation split has {len(val)}")

    def rows_for(width: int) -> int:  # rows per batch bounded by the catalogue: [rows, width] of SCORE_CELLS at most
        return max(1, min(batch_size, SCORE_CELLS // max(width, 1)))

    # From the first batch on: a scorer that does not say its n_items scores one row to show its width.
    n_items = getattr(scorer, "n_items", None)
    size = rows_for(n_items + 1) if n_items is not None else 1
    start, buffer = 0, None
    while start < len(val):
        rows = slice(start, start + size)
        scores = scorer.scores(val.state_items[rows], val.state_events[rows])
        buffer = mask_scores(scores, pairs=exclude.pairs(rows) if exclude is not None else None, out=buffer)
        yield rows, buffer
        start = rows.stop
        size = rows_for(np.shape(scores)[1])


def evaluate_scorer(
    scorer: Scorer,
    val: data.TransitionBatch,
    *,
    ks: tuple[int, ...] = DEFAULT_KS,
    batch_size: int = 1024,
    exclude: data.Exclusions | None = None,
) -> dict[str, float]:
    """HR, NDCG and MRR at each k over all validation events and per event type, plus coverage.

    ``exclude`` (``data.load_exclusions``) masks, per event, the items scoring would never have
    recommended (the ``score.exclude`` rule over the user's history before it), so the metrics
    describe the lists that are published; an event on a masked item counts as a miss.

    Names: ``eval/ndcg@10`` (all events), ``eval/purchase/ndcg@10`` (one event type),
    ``eval/coverage@10`` (share of the catalogue in at least one top-10), ``eval/seen@10``
    (share of top-10 slots holding an item already in the state), ``eval/purchased@10`` (share
    of top-10 slots holding an item the state shows as already purchased), ``eval/n`` (events).
    """
    out: dict[str, float] = {f"{schema.metric_prefix()}n": float(len(val))}
    if not len(val):
        return out
    ranks, covered, seen, purchased = [], None, 0.0, 0.0
    purchase_code = schema.EVENT_CODE[schema.PURCHASE]
    for rows, scores in _masked_scores(scorer, val, batch_size=batch_size, exclude=exclude):
        if covered is None:
            covered = np.zeros(scores.shape[1], dtype=bool)
        ranks.append(metrics.rank_of_targets(scores, val.action[rows]))
        top = top_k_lists(scores, LIST_K)
        covered[top.ravel()] = True
        in_state = (top[:, :, None] == val.state_items[rows][:, None, :]) & (top[:, :, None] > 0)  # 0: an empty slot
        seen += in_state.any(axis=2).mean(axis=1).sum()
        bought = val.state_events[rows][:, None, :] == purchase_code
        purchased += (in_state & bought).any(axis=2).mean(axis=1).sum()
    all_ranks = np.concatenate(ranks)
    out.update(metrics.ranking_metrics(all_ranks, ks, schema.metric_prefix()))
    for k in ks:  # how sure each overall figure is: the 95 % half-width over these events
        for kind in schema.RANKING_METRICS:
            per_event = per_rank_values(kind, k)[np.minimum(all_ranks, k + 1) - 1]
            out[ci95_name(schema.metric_name(kind, k))] = MeanInterval.of(per_event).half_width
    for event_type, code in schema.EVENT_CODE.items():
        mask = val.event_code == code
        if mask.any():
            out[f"{schema.metric_prefix(event_type)}n"] = float(mask.sum())
            out.update(metrics.ranking_metrics(all_ranks[mask], ks, schema.metric_prefix(event_type)))
    n_items = len(covered) - 1
    out[schema.metric_name("coverage", LIST_K)] = float(covered[1:].sum() / max(n_items, 1))
    out[schema.metric_name("seen", LIST_K)] = float(seen / len(val))
    out[schema.metric_name("purchased", LIST_K)] = float(purchased / len(val))
    return out


def evaluate_new_items(
    scorer: Scorer,
    val: data.TransitionBatch,
    new_items: np.ndarray,
    *,
    ks: tuple[int, ...] = DEFAULT_KS,
    batch_size: int = 1024,
    exclude: data.Exclusions | None = None,
) -> dict[str, float]:
    """How a scorer treats the items training never saw (``data.new_items``), masked as ``evaluate_scorer``.

    Hit: HR, NDCG and MRR at each k over the validation events whose target is a new item
    (``eval/new_items/ndcg@10``; ``eval/new_items/n`` events). Recommended, over the top-10 lists of
    every validation row: ``eval/new_items/slots@10``, the share of slots holding a new item, and
    ``eval/new_items/coverage@10``, the share of the new items in at least one list.
    ``eval/new_items/items`` is the number of new items.
    """
    prefix = schema.metric_prefix(schema.NEW_ITEMS)
    new_items = np.asarray(new_items, dtype=np.int64)
    on_new = np.isin(val.action, new_items)
    out: dict[str, float] = {f"{prefix}items": float(len(new_items)), f"{prefix}n": float(on_new.sum())}
    if not len(val) or not len(new_items):
        return out
    ranks, reached, slots = [], None, 0.0
    for rows, scores in _masked_scores(scorer, val, batch_size=batch_size, exclude=exclude):
        if reached is None:
            is_new = np.zeros(scores.shape[1], dtype=bool)
            is_new[new_items[new_items < scores.shape[1]]] = True
            reached = np.zeros(scores.shape[1], dtype=bool)
        targets = on_new[rows]
        ranks.append(metrics.rank_of_targets(scores[targets], val.action[rows][targets]))
        top = top_k_lists(scores, LIST_K)
        reached[top[is_new[top]]] = True
        slots += is_new[top].mean(axis=1).sum()
    all_ranks = np.concatenate(ranks)
    if len(all_ranks):
        out.update(metrics.ranking_metrics(all_ranks, ks, prefix))
    out[schema.metric_name("slots", LIST_K, schema.NEW_ITEMS)] = float(slots / len(val))
    out[schema.metric_name("coverage", LIST_K, schema.NEW_ITEMS)] = float(reached.sum() / len(new_items))
    return out


def usable_metric(metric: str, val: data.TransitionBatch) -> tuple[str, str | None]:
    """``metric``, or the same metric over all events when the validation split has no event of the
    type it is restricted to (ratings-only data and a purchase metric); the note says why."""
    event_type = schema.metric_event_type(metric)
    if event_type is None or (val.event_code == schema.EVENT_CODE[event_type]).any():
        return metric, None
    overall = schema.overall_metric(metric)
    return overall, f"no {event_type} events in the validation split: {metric} falls back to {overall}"


EXCLUDED_AS = {"purchased": "already purchased", "interacted": "already interacted with"}
"""How an exclusion rule (``data.EXCLUDE_RULES``, bar none) reads in a sentence."""


def masked_targets(val: data.TransitionBatch, exclude: data.Exclusions | None) -> dict[str, dict[str, int]]:
    """Per event type: validation events, and how many of them are on an item ``exclude`` masks for that
    row (a target no published list can hold: a miss for every scorer). One pass over the masks."""
    on_masked = np.zeros(len(val), dtype=bool)
    if exclude is not None and len(exclude):
        if len(exclude) != len(val):
            raise ValueError(f"exclusions cover {len(exclude)} rows, the validation split has {len(val)}")
        rows = np.repeat(np.arange(len(exclude)), np.diff(exclude.indptr))
        on_masked[rows[exclude.items == val.action[rows]]] = True
    out = {}
    for event_type, code in schema.EVENT_CODE.items():
        of_type = val.event_code == code
        out[event_type] = {"events": int(of_type.sum()), "masked": int((of_type & on_masked).sum())}
    return out


def unscorable_event_types(
    val: data.TransitionBatch, exclude: data.Exclusions | None, *, rule: str
) -> dict[str, str]:
    """Event types whose own metrics (``eval/<type>/...``) cannot be non-zero for any scorer, with why:
    the validation split has no event of the type, or every one is on an item the published lists mask
    for that user (``rule``, the resolved ``score.exclude``). Decided from the data, for any event type."""
    out = {}
    for event_type, found in masked_targets(val, exclude).items():
        if not found["events"]:
            out[event_type] = f"no {event_type} events in the validation split"
        elif found["masked"] == found["events"]:
            out[event_type] = (
                f"every one of its {found['events']} validation events is on an item the user had "
                f"{EXCLUDED_AS.get(rule, 'masked')}, which the published lists mask (score.exclude {rule}), "
                "so no list can hold it"
            )
    return out


def evaluate_models(
    named_scorers: Mapping[str, Scorer],
    val: data.TransitionBatch,
    *,
    ks: tuple[int, ...] = DEFAULT_KS,
    batch_size: int = 1024,
    exclude: data.Exclusions | None = None,
) -> dict[str, dict[str, float]]:
    """evaluate_scorer for each named scorer: {name: metrics}, all under the same metric names."""
    return {
        name: evaluate_scorer(scorer, val, ks=ks, batch_size=batch_size, exclude=exclude)
        for name, scorer in named_scorers.items()
    }


# --- per user, with intervals ------------------------------------------------------------------------



def per_rank_values(kind: str, k: int) -> np.ndarray:
    """[k + 1] value of metric ``kind`` for a target at rank 1..k and for one beyond k (index k).

    Taken from metrics.py's mean over a single row, so the per-user values are exactly the terms
    whose mean metrics.py reports.
    """
    function = metrics.RANKING_FUNCTIONS[kind]
    return np.array([function(np.array([rank]), k) for rank in range(1, k + 2)])


def mask_scores(
    scores: np.ndarray,
    history_mask: np.ndarray | None = None,
    *,
    pairs: tuple[np.ndarray, np.ndarray] | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """A copy of ``scores`` (float32 stays float32: a batch over a large catalogue is big) with column 0,
    NaN (ranked last, as in metrics) and the masked items at -inf: ``history_mask`` [U, n_items + 1]
    bool, or ``pairs`` (rows, item_idx) as ``data.Exclusions.pairs`` gives them. ``out``: an array of the
    same shape and dtype to write the copy into (the copy is returned)."""
    dtype = np.float32 if np.asarray(scores).dtype == np.float32 else np.float64
    if out is not None and out.shape == np.shape(scores) and out.dtype == dtype:
        masked = out  # a buffer reused batch after batch: a fresh copy of each faults in new pages
        np.copyto(masked, scores)
    else:
        masked = np.array(scores, dtype=dtype)
    np.copyto(masked, -np.inf, where=np.isnan(masked))
    masked[:, 0] = -np.inf
    if history_mask is not None:
        if history_mask.shape != masked.shape:
            raise ValueError(f"history mask of shape {history_mask.shape} for scores of shape {masked.shape}")
        masked[history_mask] = -np.inf
    if pairs is not None:
        rows, items = pairs
        keep = items < masked.shape[1]
        masked[rows[keep], items[keep]] = -np.inf
    return masked


def top_k_lists(scores: np.ndarray, k: int = LIST_K, history_mask: np.ndarray | None = None) -> np.ndarray:
    """[U, k] item_idx of each row's top k as scoring would write it: masked items (-inf) never fill a
    slot (item_idx 0 instead), ties by item_idx ascending."""
    masked = mask_scores(scores, history_mask) if history_mask is not None else scores
    index, values = metrics.top_k(masked[:, 1:], k)
    return np.where(np.isneginf(values), 0, index + 1)


def _targets_2d(targets: np.ndarray, n_users: int) -> np.ndarray:
    targets = np.asarray(targets, dtype=np.int64)
    if targets.ndim == 1:
        targets = targets[:, None]
    if targets.ndim != 2 or targets.shape[0] != n_users:
        raise ValueError(f"expected [U] or [U, T] targets for U={n_users} users, got shape {targets.shape}")
    if not (targets > 0).any(axis=1).all():
        raise ValueError("every user needs at least one target item_idx > 0 (0 marks no target)")
    return targets


@dataclass
class Evaluation:
    """Per-user values of one system on one set of users."""

    k: int
    users: np.ndarray
    """[U] ids of the users, in row order (paired comparisons check they match)."""
    per_user: dict[str, np.ndarray]
    """metric name (eval/hr@10, eval/ndcg@10, eval/mrr@10, eval/seen@10) -> [U] values."""
    coverage: float
    """Distinct recommended items / catalogue size (eval/coverage@k)."""
    lists: np.ndarray
    """[U, k] the lists that were scored."""

    @property
    def n_users(self) -> int:
        return len(self.users)

    def summary(self) -> dict[str, MeanInterval]:
        """Mean and 95% interval of every per-user metric."""
        return {name: MeanInterval.of(values) for name, values in self.per_user.items()}

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {name: e.as_dict() for name, e in self.summary().items()}
        out[schema.metric_name("coverage", self.k)] = self.coverage
        out[f"{schema.metric_prefix()}users"] = self.n_users
        return out


def evaluate_lists(
    lists: np.ndarray,
    targets: np.ndarray,
    *,
    n_items: int,
    history_mask: np.ndarray | None = None,
    users: np.ndarray | None = None,
    k: int = LIST_K,
) -> Evaluation:
    """HR, NDCG, MRR and seen share at k per user, and coverage, of given top-K lists.

    ``lists`` [U, >= k] item_idx best first (0 = empty slot); ``targets`` [U] or [U, T];
    ``history_mask`` [U, n_items + 1] bool, items each user had before the target (only the
    seen share reads it: lists are scored as given).
    """
    lists = np.asarray(lists, dtype=np.int64)
    if lists.ndim != 2 or lists.shape[1] < k:
        raise ValueError(f"expected [U, >= {k}] top-K lists, got shape {lists.shape}")
    lists = lists[:, :k]
    n_users = len(lists)
    if np.any((lists < 0) | (lists > n_items)):
        raise ValueError(f"lists hold item_idx outside 0..{n_items}")
    targets = _targets_2d(targets, n_users)
    present = targets > 0
    per_user: dict[str, np.ndarray] = {}
    # A target's rank in its list (k + 1 when absent), one column of targets at a time.
    ranks = np.stack([metrics.rank_of_targets(lists, targets[:, t]) for t in range(targets.shape[1])], axis=1)
    ranks = np.minimum(ranks, k + 1)
    for kind in schema.RANKING_METRICS:
        values = per_rank_values(kind, k)[ranks - 1]
        per_user[schema.metric_name(kind, k)] = np.where(present, values, 0.0).sum(axis=1) / present.sum(
            axis=1
        )
    seen = np.zeros(lists.shape, dtype=bool)
    if history_mask is not None:
        if history_mask.shape != (n_users, n_items + 1):
            raise ValueError(f"history mask of shape {history_mask.shape}, expected {(n_users, n_items + 1)}")
        seen = np.take_along_axis(history_mask, lists, axis=1) & (lists > 0)
    per_user[schema.metric_name("seen", k)] = seen.mean(axis=1)
    recommended = np.unique(lists[lists > 0])
    return Evaluation(
        k=k,
        users=np.arange(n_users) if users is None else np.asarray(users),
        per_user=per_user,
        coverage=len(recommended) / n_items,
        lists=lists,
    )


def evaluate_scores(
    scores: np.ndarray,
    targets: np.ndarray,
    *,
    history_mask: np.ndarray | None,
    users: np.ndarray | None = None,
    k: int = LIST_K,
) -> Evaluation:
    """evaluate_lists of the full-catalogue top k of ``scores`` [U, n_items + 1], history masked
    (``history_mask`` None: nothing masked, the protocol of a peer that does not mask)."""
    lists = top_k_lists(scores, k, history_mask)
    return evaluate_lists(
        lists, targets, n_items=scores.shape[1] - 1, history_mask=history_mask, users=users, k=k
    )


def paired_difference(a: Evaluation, b: Evaluation) -> dict[str, MeanInterval]:
    """a - b per metric over the same users: mean of the per-user differences and its 95% interval."""
    if a.k != b.k or a.n_users != b.n_users or not np.array_equal(a.users, b.users):
        raise ValueError(
            "paired differences need both systems evaluated at the same k on the same users, in order"
        )
    return {name: MeanInterval.of(a.per_user[name] - b.per_user[name]) for name in a.per_user}
