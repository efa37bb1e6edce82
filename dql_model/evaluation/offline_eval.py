"""Top-K quality on held-out targets per user, with 95% intervals and paired differences.

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
- Intervals: normal approximation over users, mean ± 1.96 · sd / sqrt(U) of the per-user
  values (U is in the hundreds or more, where the mean is close to normal); the paired
  difference of two systems uses the per-user differences, which removes the between-user
  variance both share. Coverage@K (distinct recommended items / catalogue) is a count over all
  lists, not a mean over users, and has no interval: resampling users with replacement would
  only bias it downwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dql_model.contract import schema
from dql_model.evaluation import metrics
from dql_model.evaluation.intervals import MeanInterval

DEFAULT_K = 10
RANKING_FUNCTIONS = {"hr": metrics.hit_rate_at_k, "ndcg": metrics.ndcg_at_k, "mrr": metrics.mrr_at_k}
"""metrics.py's formula for each ranking metric, by schema.RANKING_METRICS name."""


def per_rank_values(kind: str, k: int) -> np.ndarray:
    """[k + 1] value of metric ``kind`` for a target at rank 1..k and for one beyond k (index k).

    Taken from metrics.py's mean over a single row, so the per-user values are exactly the terms
    whose mean metrics.py reports.
    """
    function = RANKING_FUNCTIONS[kind]
    return np.array([function(np.array([rank]), k) for rank in range(1, k + 2)])


def mask_scores(scores: np.ndarray, history_mask: np.ndarray | None) -> np.ndarray:
    """Scores as float64 with column 0 and the history at -inf (NaN ranks last, as in metrics)."""
    masked = np.array(scores, dtype=np.float64)
    masked[np.isnan(masked)] = -np.inf
    masked[:, 0] = -np.inf
    if history_mask is not None:
        if history_mask.shape != masked.shape:
            raise ValueError(f"history mask of shape {history_mask.shape} for scores of shape {masked.shape}")
        masked[history_mask] = -np.inf
    return masked


def top_k_lists(scores: np.ndarray, k: int = DEFAULT_K, history_mask: np.ndarray | None = None) -> np.ndarray:
    """[U, k] item_idx of each user's top k over the full catalogue, history masked (module docstring)."""
    masked = mask_scores(scores, history_mask)
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
    k: int = DEFAULT_K,
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
    k: int = DEFAULT_K,
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
