"""Ranking metrics as plain numpy functions over 1-based ranks of the target item.

Ties are broken the way recommendations are: by score descending, then item_idx ascending, so
the rank of an item is its position in the top-K list scoring would write. Column 0 of a score
matrix is padding and never counts.
"""

from __future__ import annotations

import numpy as np


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the k best columns per row, ordered by (score desc, index asc).

    Exact under ties and linear in the number of columns (no full sort of each row).
    """
    scores = np.asarray(scores)
    if np.issubdtype(scores.dtype, np.floating) and np.isnan(scores).any():
        scores = np.where(np.isnan(scores), -np.inf, scores)  # NaN ranks last, never first
    n_rows, n_cols = scores.shape
    k = min(k, n_cols)
    if k == 0 or n_rows == 0:
        return np.zeros((n_rows, k), dtype=np.int64), np.zeros((n_rows, k), dtype=scores.dtype)
    kth = _kth_largest(scores, k)[:, None]
    above = scores > kth
    tied = scores == kth
    selected = above | tied
    # Of the items tied with the k-th score, keep the lowest indices that still fit: only rows with
    # more ties than room need the running count (a cumulative sum over a 200k-item row is costly).
    room = k - above.sum(axis=1)
    crowded = np.flatnonzero(tied.sum(axis=1) > room)
    if crowded.size:
        ties = tied[crowded]
        selected[crowded] = above[crowded] | (ties & (np.cumsum(ties, axis=1) <= room[crowded, None]))
    index = np.nonzero(selected)[1].reshape(n_rows, k)  # ascending index within each row
    values = np.take_along_axis(scores, index, axis=1)
    order = np.argsort(-values, axis=1, kind="stable")
    return np.take_along_axis(index, order, axis=1), np.take_along_axis(values, order, axis=1)


TORCH_TOPK_COLUMNS = 4096
"""From this many columns the k-th largest score per row comes from torch.topk (several times faster
than numpy's partition on a row of 200k items, and on every thread torch may use)."""


def _kth_largest(scores: np.ndarray, k: int) -> np.ndarray:
    """[n_rows] the k-th largest value of each row (no NaN)."""
    n_cols = scores.shape[1]
    if n_cols < TORCH_TOPK_COLUMNS or scores.dtype not in (np.float32, np.float64):
        return np.partition(scores, n_cols - k, axis=1)[:, n_cols - k]
    import torch

    return torch.topk(torch.from_numpy(np.ascontiguousarray(scores)), k, dim=1).values[:, -1].numpy()


NEVER_LISTED = 1 << 40
"""The rank of a masked target: no list holds it, whatever k and the catalogue's size."""


def rank_of_targets(scores_or_topk: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based rank of each row's target item.

    ``scores_or_topk`` is either a float score matrix [N, n_items + 1] (full-catalogue ranking,
    padding column excluded) or an integer matrix of top-K item_idx lists [N, K]; a target
    missing from its top-K list gets rank K + 1, so metrics at k <= K are exact; a masked target
    (score -inf) gets rank ``NEVER_LISTED``, beyond every k.
    """
    matrix = np.asarray(scores_or_topk)
    targets = np.asarray(targets, dtype=np.int64)
    if matrix.ndim != 2 or matrix.shape[0] != len(targets):
        raise ValueError(f"expected a [N, ...] matrix for N={len(targets)} targets, got shape {matrix.shape}")
    if np.issubdtype(matrix.dtype, np.integer):
        hit = matrix == targets[:, None]
        return np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, matrix.shape[1] + 1).astype(np.int64)
    if np.any((targets < 1) | (targets >= matrix.shape[1])):
        raise ValueError(f"targets must be item_idx in 1..{matrix.shape[1] - 1} (0 is padding)")
    items = matrix[:, 1:]
    target_index = targets - 1
    target_score = np.take_along_axis(items, target_index[:, None], axis=1)
    better = (items > target_score).sum(axis=1)
    tied = items == target_score
    # Ties rank by item_idx: count those before the target, only on the rows that have any.
    tied_before = np.zeros(len(targets), dtype=np.int64)
    rows = np.flatnonzero(tied.sum(axis=1) > 1)
    if rows.size:
        before = np.arange(items.shape[1])[None, :] < target_index[rows, None]
        tied_before[rows] = (tied[rows] & before).sum(axis=1)
    rank = 1 + better + tied_before
    # A masked target (-inf) is never in a list, even when the catalogue is shorter than k: a miss.
    return np.where(np.isneginf(target_score[:, 0]), NEVER_LISTED, rank).astype(np.int64)


def hit_rate_at_k(ranks: np.ndarray, k: int) -> float:
    """Share of rows whose target is in the top k."""
    ranks = np.asarray(ranks)
    return float(np.mean(ranks <= k)) if ranks.size else float("nan")


def ndcg_at_k(ranks: np.ndarray, k: int) -> float:
    """Mean of 1 / log2(rank + 1) over rows, 0 beyond k (one relevant item, so IDCG = 1)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if not ranks.size:
        return float("nan")
    return float(np.mean(np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0)))


def mrr_at_k(ranks: np.ndarray, k: int) -> float:
    """Mean of 1 / rank over rows, 0 beyond k."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if not ranks.size:
        return float("nan")
    return float(np.mean(np.where(ranks <= k, 1.0 / ranks, 0.0)))


RANKING_FUNCTIONS = {"hr": hit_rate_at_k, "ndcg": ndcg_at_k, "mrr": mrr_at_k}
"""The formula of each ranking metric kind, by ``schema.RANKING_METRICS`` name (a test holds the two equal)."""


def ranking_metrics(ranks: np.ndarray, ks: tuple[int, ...], prefix: str) -> dict[str, float]:
    """hr@k, ndcg@k and mrr@k for every k, named ``{prefix}hr@{k}`` and so on."""
    return {f"{prefix}{kind}@{k}": RANKING_FUNCTIONS[kind](ranks, k) for k in ks for kind in RANKING_FUNCTIONS}
