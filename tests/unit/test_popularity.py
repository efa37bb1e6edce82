"""The popularity policy's one owner: its order and its per-user lists, against a reading user by user."""

from __future__ import annotations

import numpy as np
import pytest

from dql_model.scoring import popularity
from dql_model.scoring.popularity import PopularityScorer, popular_lists, popularity_order


def test_order_is_count_desc_then_item_idx_and_leaves_out_padding_and_unavailable_items():
    counts = np.array([99.0, 3.0, 5.0, 3.0, 0.0, 5.0])
    available = np.array([True, True, True, True, True, False])
    assert popularity_order(counts, available).tolist() == [2, 1, 3, 4]
    assert popularity_order(counts).tolist() == [2, 5, 1, 3, 4]


def one_by_one(ranked, indptr, excluded, top_k, users):
    rows = []
    for u in users:
        mine = set(excluded[indptr[u] : indptr[u + 1]].tolist())
        kept = [i for i in ranked.tolist() if i not in mine][:top_k]
        rows += [(u, r + 1, i) for r, i in enumerate(kept)]
    return rows


@pytest.mark.parametrize("cells", [1 << 24, 7])  # one chunk, and many chunks of a user or two
def test_lists_match_a_user_by_user_reading_on_a_random_shop(monkeypatch, cells):
    monkeypatch.setattr(popularity, "CELLS_PER_CHUNK", cells)
    rng = np.random.default_rng(3)
    n_items, n_users, top_k = 40, 60, 5
    ranked = popularity_order(rng.poisson(4.0, n_items + 1).astype(float), rng.random(n_items + 1) > 0.2)
    sizes = rng.choice([0, 0, 1, 3, 12, 35], size=n_users)
    indptr = np.concatenate([[0], np.cumsum(sizes)])
    excluded = np.concatenate([np.sort(rng.choice(np.arange(1, n_items + 1), s, replace=False)) for s in sizes])
    users = rng.permutation(n_users)[:45]
    user, rank, item = popular_lists(ranked, indptr, excluded.astype(np.int64), top_k, users=users)
    assert list(zip(user.tolist(), rank.tolist(), item.tolist(), strict=True)) == one_by_one(
        ranked, indptr, excluded, top_k, users
    )
    listed = np.bincount(user, minlength=n_users)[users]
    assert (listed < top_k).any() and (listed == top_k).any()  # the draw has users left short, and full lists


def test_scorer_ranks_as_the_order_does():
    counts = np.array([0.0, 3.0, 5.0, 3.0, 0.0])
    scores = PopularityScorer(counts).scores(np.zeros((2, 3)), np.zeros((2, 3)))
    by_score = np.lexsort((np.arange(5), -scores[0]))
    assert by_score[: len(popularity_order(counts))].tolist() == popularity_order(counts).tolist()
    assert np.isneginf(scores[:, 0]).all()
