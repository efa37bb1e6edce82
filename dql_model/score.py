"""Top-K recommendations per user: batched Q(s, ·) = f(s) · g(·)ᵀ + b(·), masked, ranked.

Masks: the padding column, items the user already purchased (optional), items that are not
available tonight, and items the model does not know (new since it was trained; they reach users
through the fallback until the next training). States are cleaned of items the model does not
know; a user left with no known item gets the popularity fallback, with the same masks.
Ties are broken by item_idx ascending, so the output is a deterministic function of its inputs.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pyarrow as pa
import torch

from dql_model import data, schema
from dql_model.networks import QNetwork


def top_k_deterministic(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, values) of the k best columns per row, ordered by score desc then index asc.

    torch.topk does not define which of several tied items it returns; this selects all items
    above the k-th value plus the lowest-index ties, then sorts those k stably.
    """
    n_rows, n_cols = scores.shape
    k = min(k, n_cols)
    kth = torch.topk(scores, k, dim=1).values[:, -1:]
    above = scores > kth
    tied = scores == kth
    room = k - above.sum(dim=1, keepdim=True)
    selected = above | (tied & (tied.cumsum(dim=1) <= room))
    index = selected.nonzero()[:, 1].view(n_rows, k)  # nonzero is row-major: ascending index
    values = scores.gather(1, index)
    order = torch.sort(values, dim=1, descending=True, stable=True).indices
    return index.gather(1, order), values.gather(1, order)


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


def _rows_table(
    user_id: pa.Array,
    user_pos: np.ndarray,
    rank: np.ndarray,
    item_idx: np.ndarray,
    score: np.ndarray,
    source: str,
    item_ids: np.ndarray,
    model_version: str,
    generated_at: pa.Scalar,
) -> pa.Table:
    n = len(user_pos)
    return pa.Table.from_arrays(
        [
            user_id.take(pa.array(user_pos, pa.int64())).cast(pa.string()),
            pa.array(rank, pa.int32()),
            pa.array(item_ids[item_idx], pa.string()),
            pa.array(score, pa.float64()),
            pa.array(np.full(n, source, dtype=object), pa.string()),
            pa.array(np.ones(n), pa.float64()),
            pa.array(np.full(n, model_version, dtype=object), pa.string()),
            pa.repeat(generated_at, n),
        ],
        schema=schema.arrow_schema(schema.RECOMMENDATIONS),
    )


def _flatten_top(index: np.ndarray, values: np.ndarray, users: np.ndarray) -> tuple[np.ndarray, ...]:
    """[U, K] top lists -> flat (user, rank, item, score), dropping masked (-inf) slots."""
    keep = np.isfinite(values)
    # Masked slots sort last, so the kept ones are a prefix of each row and ranks stay 1..n.
    rank = np.broadcast_to(np.arange(1, index.shape[1] + 1), index.shape)
    user = np.broadcast_to(users[:, None], index.shape)
    return user[keep], rank[keep], index[keep], values[keep]


def _fallback(
    states: data.UserStates,
    users: np.ndarray,
    *,
    top_k: int,
    popularity: np.ndarray,
    available: np.ndarray,
    mask_purchased: bool,
) -> tuple[np.ndarray, ...]:
    """Popular available items for the given users, skipping what each one already bought."""
    order = np.lexsort((np.arange(len(popularity)), -popularity))  # popularity desc, idx asc
    ranked = order[available[order]]
    empty = np.zeros(0, dtype=np.int64)
    if not len(users) or not len(ranked):
        return empty, empty, empty, empty.astype(np.float64)
    out_user, out_rank, out_item = [], [], []
    bought = (
        np.diff(states.purchased_indptr)[users] if mask_purchased else np.zeros(len(users), dtype=np.int64)
    )
    plain = users[bought == 0]
    head = ranked[:top_k]
    # Users with nothing to mask share one list; the rest (few) are filtered one by one.
    out_user.append(np.repeat(plain, len(head)))
    out_rank.append(np.tile(np.arange(1, len(head) + 1), len(plain)))
    out_item.append(np.tile(head, len(plain)))
    for user in users[bought > 0]:
        purchased = states.purchased_items[states.purchased_indptr[user] : states.purchased_indptr[user + 1]]
        candidates = ranked[: top_k + len(purchased)]
        picked = candidates[~np.isin(candidates, purchased)][:top_k]
        out_user.append(np.full(len(picked), user))
        out_rank.append(np.arange(1, len(picked) + 1))
        out_item.append(picked)
    item = np.concatenate(out_item).astype(np.int64)
    return np.concatenate(out_user), np.concatenate(out_rank), item, popularity[item].astype(np.float64)


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
) -> pa.Table:
    """Recommendations for every user in ``states``, schema ``arrow_schema(RECOMMENDATIONS)``.

    ``items`` is tonight's item index (availability and ids; it may have more items than the
    model); ``popularity`` holds a score per item_idx for the fallback (e.g. action counts).
    Rows come per user in input order, ranks 1..K; a user gets fewer than K rows only when
    fewer items are left after masking. The model is moved to ``device`` and set to eval mode.
    """
    device = torch.device(device)
    n_known = model.n_items + 1  # columns the model can score
    available = np.zeros(max(items.n_items + 1, n_known), dtype=bool)
    available[: items.n_items + 1] = items.available
    available[0] = False
    item_ids = np.full(len(available), None, dtype=object)
    item_ids[: items.n_items + 1] = items.item_ids
    pop = np.zeros(items.n_items + 1, dtype=np.float64)
    given = np.asarray(popularity, dtype=np.float64)[: items.n_items + 1]
    pop[: len(given)] = given
    stamp = pa.scalar(generated_at, pa.timestamp("us", tz="UTC"))

    state_items, state_events = _known_states(states, model.n_items)
    has_state = (state_items != 0).any(axis=1)
    buy_rows, buy_cols = _purchase_rows(states, n_known) if mask_purchased else (np.zeros(0, int),) * 2

    model = model.to(device).eval()
    mask = torch.as_tensor(~available[:n_known], device=device)  # padding, unavailable
    pieces = []
    with torch.inference_mode():
        vectors, bias = model.item_vectors(), model.item_biases()
        scored = np.flatnonzero(has_state)
        for start in range(0, len(scored), batch_size):
            users = scored[start : start + batch_size]
            f = model.encode_state(
                torch.as_tensor(state_items[users], device=device),
                torch.as_tensor(state_events[users], device=device),
            )
            q = model.q_from_state(f, vectors, bias).float().masked_fill(mask, float("-inf"))
            if torch.isnan(q).any():
                raise ValueError(f"model {model_version} produced NaN Q-values; refusing to score with it")
            rows, cols = _purchases_in_batch(buy_rows, buy_cols, users)
            if len(rows):
                q[torch.as_tensor(rows, device=device), torch.as_tensor(cols, device=device)] = float("-inf")
            index, values = top_k_deterministic(q, top_k)
            user, rank, item, score = _flatten_top(index.cpu().numpy(), values.cpu().numpy(), users)
            pieces.append((user, rank, item, score, schema.SOURCE_DQN))

    fallback_users = np.flatnonzero(~has_state)
    user, rank, item, score = _fallback(
        states,
        fallback_users,
        top_k=top_k,
        popularity=pop,
        available=available[: items.n_items + 1],
        mask_purchased=mask_purchased,
    )
    pieces.append((user, rank, item, score, schema.SOURCE_FALLBACK))

    tables = [
        _rows_table(states.user_id, u, r, i, s, source, item_ids, model_version, stamp)
        for u, r, i, s, source in pieces
        if len(u)
    ]
    if not tables:
        return schema.arrow_schema(schema.RECOMMENDATIONS).empty_table()
    table = pa.concat_tables(tables)
    # Back to input order of users, rank within user (both sources were produced separately).
    positions = np.concatenate([p[0] for p in pieces if len(p[0])])
    ranks = np.concatenate([p[1] for p in pieces if len(p[1])])
    return table.take(pa.array(np.lexsort((ranks, positions))))
