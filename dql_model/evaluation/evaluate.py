"""Offline evaluation: rank the full catalogue from the state before every validation event.

Every scorer has the same signature, ``scores(state_items, state_events) -> [B, n_items + 1]``
(column 0 is padding, at -inf), so the Q-network and the baselines are evaluated by the same
code and logged under the same metric names.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Protocol

import numpy as np

from dql_model.contract import schema
from dql_model.evaluation import metrics
from dql_model.warehouse import data

DEFAULT_KS = (5, 10, 20)
COVERAGE_K = 10


class Scorer(Protocol):
    def scores(self, state_items: np.ndarray, state_events: np.ndarray) -> np.ndarray: ...


class PopularityScorer:
    """The same scores for everyone: how often each item was the logged action in training."""

    def __init__(self, counts: np.ndarray):
        self.counts = np.asarray(counts, dtype=np.float32).copy()
        self.counts[0] = -np.inf

    @classmethod
    def from_transitions(cls, transitions_dir: str | os.PathLike[str], *, n_items: int) -> PopularityScorer:
        return cls(data.action_counts(transitions_dir, n_items=n_items, split=schema.TRAIN))

    def scores(self, state_items: np.ndarray, state_events: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(state_items), len(self.counts)))

    __call__ = scores


def _masked_scores(
    scorer: Scorer, val: data.TransitionBatch, *, batch_size: int, exclude: data.Exclusions | None
) -> Iterator[tuple[slice, np.ndarray]]:
    """(rows, scores) per batch of validation rows, the ``exclude`` items of each row at -inf."""
    if exclude is not None and len(exclude) != len(val):
        raise ValueError(f"exclusions cover {len(exclude)} rows, the validation split has {len(val)}")
    for start in range(0, len(val), batch_size):
        rows = slice(start, start + batch_size)
        scores = np.asarray(scorer.scores(val.state_items[rows], val.state_events[rows]))
        if exclude is not None:
            masked_rows, masked_items = exclude.pairs(rows)
            if len(masked_rows):
                scores = np.array(scores, dtype=np.float32 if scores.dtype == np.float32 else np.float64)
                keep = masked_items < scores.shape[1]
                scores[masked_rows[keep], masked_items[keep]] = -np.inf
        yield rows, scores


def _top_items(scores: np.ndarray) -> np.ndarray:
    """[B, COVERAGE_K] item_idx of each row's top list, as scoring would write it."""
    top, _ = metrics.top_k(scores[:, 1:], COVERAGE_K)
    return top + 1  # back to item_idx (column 0 was dropped)


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
        top = _top_items(scores)
        covered[top.ravel()] = True
        in_state = top[:, :, None] == val.state_items[rows][:, None, :]
        seen += in_state.any(axis=2).mean(axis=1).sum()
        bought = val.state_events[rows][:, None, :] == purchase_code
        purchased += (in_state & bought).any(axis=2).mean(axis=1).sum()
    all_ranks = np.concatenate(ranks)
    out.update(metrics.ranking_metrics(all_ranks, ks, schema.metric_prefix()))
    for event_type, code in schema.EVENT_CODE.items():
        mask = val.event_code == code
        if mask.any():
            out[f"{schema.metric_prefix(event_type)}n"] = float(mask.sum())
            out.update(metrics.ranking_metrics(all_ranks[mask], ks, schema.metric_prefix(event_type)))
    n_items = len(covered) - 1
    out[schema.metric_name("coverage", COVERAGE_K)] = float(covered[1:].sum() / max(n_items, 1))
    out[schema.metric_name("seen", COVERAGE_K)] = float(seen / len(val))
    out[schema.metric_name("purchased", COVERAGE_K)] = float(purchased / len(val))
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
        top = _top_items(scores)
        reached[top[is_new[top]]] = True
        slots += is_new[top].mean(axis=1).sum()
    all_ranks = np.concatenate(ranks)
    if len(all_ranks):
        out.update(metrics.ranking_metrics(all_ranks, ks, prefix))
    out[schema.metric_name("slots", COVERAGE_K, schema.NEW_ITEMS)] = float(slots / len(val))
    out[schema.metric_name("coverage", COVERAGE_K, schema.NEW_ITEMS)] = float(reached.sum() / len(new_items))
    return out


def usable_metric(metric: str, val: data.TransitionBatch) -> tuple[str, str | None]:
    """``metric``, or the same metric over all events when the validation split has no event of the
    type it is restricted to (ratings-only data and a purchase metric); the note says why."""
    event_type = schema.metric_event_type(metric)
    if event_type is None or (val.event_code == schema.EVENT_CODE[event_type]).any():
        return metric, None
    overall = schema.overall_metric(metric)
    return overall, f"no {event_type} events in the validation split: {metric} falls back to {overall}"


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
