"""How the K slots of a user are filled: greedily by Q, or drawn from softmax(Q / temperature).

Exploration is off by default. When on, the last ``explore_slots`` ranks, and every other rank with
probability ``explore_epsilon``, are drawn from the softmax over the eligible items not chosen yet
instead of taken greedily (source ``explore``).

``propensity`` is the marginal probability that the policy puts the item at that rank, what
position-based off-policy estimators divide by (``dql_model.evaluation.ope``). Given the items above a rank
the probability is exact and cheap: eps * w_j / (mass left) + (1 - eps) * [j is the best greedy
item left], with w = exp((q - top) / T). Where no rank above is random that conditional is the
marginal (every greedy rank: 1.0; the first explored rank below greedy ones). Below a random rank
it is averaged over ``propensity_draws`` replicate slates of the same policy, each with its own
coins and draws: E over prefixes of P(j at r | prefix) is P(j at r), so the average is unbiased,
and averaging probabilities rather than counting hits keeps its variance low.

Draws are a hash of (seed, user, item_idx or slot), the seed derived from the run date, so a rerun
and both engines draw the same items whatever batch or device a user is scored in; sampling without
replacement uses the Gumbel-top-k trick (one pass over the catalogue). A replicate draws its
explored ranks one at a time instead (the same distribution): Gumbel-max over the greedy list and
the rest of the catalogue as one entry, then, when the rest wins, inverse CDF over the rest's
cumulative weights. A replicate costs O(K) per rank, not a pass over the catalogue.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch

from dql_model.config import ScoreConfig
from dql_model.warehouse.data import check_exclude_rule, exclude_rule

_ITEM_STREAM, _SLOT_STREAM = 0x51ED2701, 0x2C1B3C6D
"""Tags that make the item draws and the slot coins of a user independent random streams."""
_REPLICATE_ITEM_STREAM, _REPLICATE_SLOT_STREAM = 0x7A3D9E15, 0x1F6B4C83
"""The same for the replicate slates behind the marginal propensities."""
REPLICATE_ROWS = 1 << 16
"""Replicate slates walked at once (users x propensity_draws): bounds the memory of the walk."""
_M32 = 0xFFFFFFFF


@dataclass(frozen=True)
class Policy:
    """How the K slots of a user are filled: greedy by Q, with optional exploration slots."""

    top_k: int
    """Recommendations per user."""
    exclude: str = "purchased"
    """Items never recommended (``data.EXCLUDE_RULES``): what the user bought, every item they
    interacted with, or none. The user states are read with this rule (``data.user_state_columns``)."""
    explore_slots: int = 0
    """The last this-many ranks are always drawn from the softmax."""
    explore_epsilon: float = 0.0
    """Every other rank is drawn from the softmax with this probability."""
    temperature: float = 1.0
    """Temperature of the softmax over Q-values."""
    seed: int = 0
    """Seed of the draws (``run_date_seed`` of the run date in the pipeline)."""
    propensity_draws: int = 64
    """Replicate slates behind each marginal propensity below a random rank."""

    def __post_init__(self) -> None:
        check_exclude_rule(self.exclude)
        if self.top_k < 1:
            raise ValueError(f"score.top_k must be at least 1, got {self.top_k}")
        if not 0 <= self.explore_slots <= self.top_k:
            raise ValueError(f"score.explore_slots must be between 0 and top_k={self.top_k}, got {self.explore_slots}")
        if not 0.0 <= self.explore_epsilon <= 1.0:
            raise ValueError(f"score.explore_epsilon must be between 0 and 1, got {self.explore_epsilon}")
        if not (self.temperature > 0 and np.isfinite(self.temperature)):
            raise ValueError(f"score.explore_temperature must be a positive number, got {self.temperature}")
        if self.propensity_draws < 1:
            raise ValueError(f"score.propensity_draws must be at least 1, got {self.propensity_draws}")

    @property
    def explores(self) -> bool:
        return self.explore_slots > 0 or self.explore_epsilon > 0

    def slot_epsilon(self) -> np.ndarray:
        """[top_k] probability that each rank is drawn from the softmax rather than taken greedily."""
        eps = np.full(self.top_k, self.explore_epsilon, dtype=np.float64)
        eps[self.top_k - self.explore_slots :] = 1.0
        return eps

    def replicated_ranks(self) -> np.ndarray:
        """[top_k] bool: a rank above is random, so the conditional propensity is not the marginal."""
        random_above = np.cumsum(self.slot_epsilon() > 0) - (self.slot_epsilon() > 0)
        return random_above > 0

    def item_noise(self, keys: np.ndarray, n_items: int) -> torch.Tensor:
        """[users, n_items] Gumbel noise of the item draws; row r depends on keys[r] and the seed only."""
        return _gumbel_noise(_row_seeds(keys, self.seed, _ITEM_STREAM), n_items)

    @classmethod
    def from_config(
        cls, cfg: ScoreConfig, run_date: str, *, protocol: dict | None = None, top_k: int | None = None
    ) -> Policy:
        """The pipeline's policy for a run date: the config, seeded by the date; ``score.exclude``
        auto is resolved by the night's ``protocol`` (``exclude_rule``)."""
        return cls(
            top_k=top_k or cfg.top_k,
            exclude=exclude_rule(cfg, protocol),
            explore_slots=cfg.explore_slots,
            explore_epsilon=cfg.explore_epsilon,
            temperature=cfg.explore_temperature,
            seed=run_date_seed(run_date),
            propensity_draws=cfg.propensity_draws,
        )


def run_date_seed(run_date: str) -> int:
    """The exploration seed of a run date: a rerun of the date draws the same items."""
    return zlib.crc32(f"dqlrec-explore:{run_date}".encode())


# --- random draws that do not depend on batches or devices ------------------------------------------


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


def _replicate_seeds(keys: np.ndarray, seed: int, stream: int, draws: int) -> np.ndarray:
    """[rows * draws] seeds of the replicate slates, user-major: a function of (key, seed, replicate)."""
    replicate = _mix32(np.arange(1, draws + 1, dtype=np.int64) ^ stream)
    return _mix32(_row_seeds(keys, seed, stream)[:, None] ^ replicate[None, :]).reshape(-1)


def _uniforms(row_seeds: np.ndarray, n: int) -> np.ndarray:
    """[rows, n] 32-bit uniforms in (0, 1): fine enough for Gumbel noise (its largest value is ~22)."""
    hashed = _mix32(row_seeds[:, None] ^ np.arange(n, dtype=np.int64)[None, :])
    return (hashed.astype(np.float64) + 0.5) * 2.0**-32


# --- filling the slots ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlotCandidates:
    """Per user of a chunk, the two k-long lists a slot picks from, with their Q-values.

    Q-values of ineligible entries are -inf. Q-values enter the softmax relative to ``top`` (the
    user's best greedy Q), which keeps exp() in range.
    """

    users: np.ndarray
    """[n] the users' positions in their batch."""
    keys: np.ndarray
    """[n] crc32(user_id): seeds the slot coins."""
    greedy: np.ndarray
    """[n, k] int64 item_idx of the k best Q-values, best first."""
    greedy_q: np.ndarray
    """[n, k] float64 their Q-values."""
    drawn: np.ndarray
    """[n, k] int64 item_idx of k draws without replacement from the softmax, in draw order."""
    drawn_q: np.ndarray
    """[n, k] float64 their Q-values."""
    log_rest: np.ndarray
    """[n] log of the softmax mass of the eligible items in neither list (relative to top)."""
    top: np.ndarray
    """[n] the best greedy Q-value (0 when the user has no eligible item)."""


@dataclass(frozen=True)
class CatalogueRest:
    """Per user, the softmax weights of the eligible items outside the greedy list, which the
    replicate slates draw from by inverse CDF.

    Weights are scaled by the largest of them rather than by ``top``: at a cold temperature
    they would all underflow relative to ``top``, yet a replicate that has taken the greedy
    items still needs their relative sizes. Items whose weight underflows relative to the largest
    one are never drawn, an error below 1e-300 in any probability.
    """

    cumulative: np.ndarray
    """[n, columns] float64 running sum over item_idx of w_i / w_max (0 for greedy and ineligible items)."""
    log_scale: np.ndarray
    """[n] log w_max relative to ``top``; -inf when no eligible item is left outside the greedy list."""

    @classmethod
    def from_q(cls, q: torch.Tensor, greedy: torch.Tensor, top: torch.Tensor, temperature: float) -> CatalogueRest:
        """From masked Q-values [n, columns] (untouched), the greedy list [n, k] and ``top`` [n, 1]."""
        log_w = q.scatter(1, greedy, float("-inf")).double().sub_(top.double()).div_(temperature)
        scale = log_w.max(dim=1, keepdim=True).values
        finite_scale = torch.where(torch.isfinite(scale), scale, torch.zeros_like(scale))
        cumulative = log_w.sub_(finite_scale).exp_().cumsum_(dim=1)
        return cls(cumulative=cumulative.cpu().numpy(), log_scale=scale[:, 0].cpu().numpy())


def fill_slots(policy: Policy, c: SlotCandidates, rest: CatalogueRest | None = None) -> tuple[np.ndarray, ...]:
    """Slot r takes the best item not chosen yet (greedy) or the next draw (explore, prob slot_eps[r]).

    Returns the rows (user, rank, item, q, explored, propensity). The propensity of a rank with a
    random rank above is the replicate average (``marginal_propensities``, from ``rest``), or, when
    no replicate could put the item there, the served slate's own term over draws + 1; without
    ``rest`` it stays the probability given the items above.
    """
    item, q, explored, propensity, filled = _fill(policy, c)
    n_rows, k = item.shape
    replicated = policy.replicated_ranks()[:k]
    if rest is not None and replicated.any():
        # An item was shown, so its marginal is above 0, yet every replicate may have put it higher
        # up: then the served slate, one more draw of the same process, is the only evidence, and
        # its own probability given the items above, counted as 1 of draws + 1, stands in.
        m = policy.propensity_draws
        marginal = marginal_propensities(policy, c, rest, item, q)
        marginal = np.where(marginal > 0, marginal, propensity / (m + 1))
        propensity = np.where(replicated[None, :], marginal, propensity)
    propensity = np.maximum(propensity, np.finfo(np.float64).tiny)  # a probability > 0
    rank = np.broadcast_to(np.arange(1, k + 1), (n_rows, k))
    return (
        np.broadcast_to(c.users[:, None], (n_rows, k))[filled],
        rank[filled],
        item[filled],
        q[filled],
        explored[filled],
        propensity[filled],
    )


def _log_weights(q: np.ndarray, top: np.ndarray, temperature: float) -> np.ndarray:
    """log of the softmax weights exp((q - top) / T), -inf for ineligible entries (q = -inf)."""
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(q), (q - top[:, None]) / temperature, -np.inf)


def _fill(policy: Policy, c: SlotCandidates) -> tuple[np.ndarray, ...]:
    """[n, k] item, q, explored and propensity given the items above, and which slots are filled.

    The softmax mass left before slot r is the rest (items in neither list) plus every listed
    item not chosen yet, summed in log space. Each list has k entries and at most k - 1 are taken
    before the last slot, so neither runs dry unless the row has fewer eligible items than slots.
    """
    n_rows, k = c.greedy.shape
    rows = np.arange(n_rows)
    coins = _slot_coins(_row_seeds(c.keys, policy.seed, _SLOT_STREAM), k)
    slot_eps = policy.slot_epsilon()[:k]
    log_w_greedy = _log_weights(c.greedy_q, c.top, policy.temperature)
    log_w_drawn = _log_weights(c.drawn_q, c.top, policy.temperature)
    in_greedy = (c.drawn[:, :, None] == c.greedy[:, None, :]).any(axis=2)  # counted once, on the greedy side
    left_greedy, left_drawn = np.isfinite(c.greedy_q), np.isfinite(c.drawn_q)
    out_item = np.zeros((n_rows, k), dtype=np.int64)
    out_q = np.zeros((n_rows, k))
    out_explored = np.zeros((n_rows, k), dtype=bool)
    out_propensity = np.zeros((n_rows, k))
    filled = np.zeros((n_rows, k), dtype=bool)
    for slot in range(k):
        open_rows = left_greedy.any(axis=1)
        if not open_rows.any():
            break
        g_pos, d_pos = left_greedy.argmax(axis=1), left_drawn.argmax(axis=1)
        g_item, d_item = c.greedy[rows, g_pos], c.drawn[rows, d_pos]
        log_mass = _log_sum_rows(
            c.log_rest,
            np.where(left_greedy, log_w_greedy, -np.inf),
            np.where(left_drawn & ~in_greedy, log_w_drawn, -np.inf),
        )
        explore = coins[:, slot] < slot_eps[slot]
        item = np.where(explore, d_item, g_item)
        log_w = np.where(explore, log_w_drawn[rows, d_pos], log_w_greedy[rows, g_pos])
        eps = slot_eps[slot]
        out_item[:, slot] = item
        out_q[:, slot] = np.where(explore, c.drawn_q[rows, d_pos], c.greedy_q[rows, g_pos])
        out_explored[:, slot] = explore
        out_propensity[:, slot] = eps * np.exp(log_w - log_mass) + (1.0 - eps) * (item == g_item)
        filled[:, slot] = open_rows
        left_greedy &= c.greedy != item[:, None]
        left_drawn &= c.drawn != item[:, None]
    return out_item, out_q, out_explored, out_propensity, filled


def marginal_propensities(
    policy: Policy, c: SlotCandidates, rest: CatalogueRest, items: np.ndarray, items_q: np.ndarray
) -> np.ndarray:
    """[n, k] P(items[u, r] at rank r), averaged over ``propensity_draws`` replicate slates per user.

    Meaningful at the ranks with a random rank above (``Policy.replicated_ranks``); 0 elsewhere.
    Replicate m of a user walks the policy's slots with its own coins and draws; at rank r it
    contributes eps_r * [j_r not above] * w_j / (mass left) + (1 - eps_r) * [j_r is the best
    greedy item left], the probability of the logged item j_r given the replicate's items above.
    The ranks above the first random one are the greedy list's head in every replicate.
    """
    n_rows, k = items.shape
    out = np.zeros((n_rows, k))
    if not policy.replicated_ranks()[:k].any():
        return out
    log_w_greedy = _log_weights(c.greedy_q, c.top, policy.temperature)
    log_w_items = _log_weights(items_q, c.top, policy.temperature)
    block = max(1, REPLICATE_ROWS // policy.propensity_draws)
    for start in range(0, n_rows, block):
        users = np.arange(start, min(start + block, n_rows))
        out[users] = _replicate_block(policy, c, rest, items[users], log_w_items[users], log_w_greedy, users)
    return out


def _replicate_block(policy, c, rest, items, log_w_items, log_w_greedy, users) -> np.ndarray:
    """``marginal_propensities`` for the users ``users`` (rows of ``c``) and their logged ``items``."""
    draws, (n_users, k) = policy.propensity_draws, items.shape
    slot_eps = policy.slot_epsilon()[:k]
    first = int(np.argmax(slot_eps > 0))  # the first random rank
    user = np.repeat(users, draws)  # replicate rows, user-major
    own = np.repeat(np.arange(n_users), draws)  # the same, within the block
    rows = np.arange(len(user))
    greedy, log_w_g = c.greedy[user], log_w_greedy[user]
    chosen = np.zeros((len(user), k), dtype=np.int64)
    chosen[:, :first] = greedy[:, :first]
    left = np.isfinite(log_w_g)
    left[:, :first] = False
    cumulative, log_scale = rest.cumulative, rest.log_scale[user]
    rest_total = cumulative[user, -1]
    rest_items = np.zeros((len(user), k), dtype=np.int64)  # items drawn from the rest, 0 = none
    rest_w = np.zeros((len(user), k))  # their scaled weights
    keys = c.keys[users]
    coins = _slot_coins(_replicate_seeds(keys, policy.seed, _REPLICATE_SLOT_STREAM, draws), k)
    item_seeds = _replicate_seeds(keys, policy.seed, _REPLICATE_ITEM_STREAM, draws)
    out = np.zeros((n_users, k))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # closed rows: never read
        for slot in range(first, k):
            eps = slot_eps[slot]
            g_item = greedy[rows, left.argmax(axis=1)]
            log_w_left = np.where(left, log_w_g, -np.inf)
            log_rest_left = log_scale + np.log(np.maximum(rest_total - rest_w.sum(axis=1), 0.0))
            log_mass = _log_sum_rows(log_rest_left, log_w_left)
            if slot > first:
                target = items[own, slot]
                above = (chosen[:, :slot] == target[:, None]).any(axis=1)
                p = eps * np.where(above, 0.0, np.exp(log_w_items[own, slot] - log_mass)) + (1.0 - eps) * (target == g_item)
                out[:, slot] = p.reshape(n_users, draws).mean(axis=1)
            if slot == k - 1:
                break
            item = g_item
            explore = np.flatnonzero((coins[:, slot] < eps) & left.any(axis=1))
            if len(explore):
                noise = _uniforms(_mix32(item_seeds[explore] ^ _mix32(np.int64(slot + 1))), k + 2)
                gumbel = -np.log(-np.log(noise[:, : k + 1]))
                entries = np.concatenate([log_w_left[explore], log_rest_left[explore, None]], axis=1)
                win = (entries + gumbel).argmax(axis=1)
                drawn = np.where(win < k, greedy[explore, np.minimum(win, k - 1)], 0)
                from_rest = explore[win == k]
                if len(from_rest):
                    t = noise[win == k, k + 1] * (rest_total[from_rest] - rest_w[from_rest].sum(axis=1))
                    picked, w = _draw_from_rest(cumulative, user[from_rest], t, rest_items[from_rest], rest_w[from_rest])
                    drawn[win == k] = picked
                    rest_items[from_rest, slot], rest_w[from_rest, slot] = picked, w
                item = g_item.copy()
                item[explore] = drawn
            chosen[:, slot] = item
            left &= greedy != item[:, None]
    return out


def _draw_from_rest(cumulative, user, t, taken_items, taken_w) -> tuple[np.ndarray, np.ndarray]:
    """Inverse CDF over a user's rest without the items it has taken: the first item j with
    cumulative[j] - (taken weight at or below j) > t, and its scaled weight.

    Each search moves j past the taken items below it; when no new taken item falls below j,
    j is the answer (the left side only grows with j). At most one search per taken item.
    """
    below = np.zeros(len(t))
    for _ in range(taken_items.shape[1] + 1):
        j = _first_above(cumulative, user, t + below)
        now_below = (taken_w * (taken_items <= j[:, None])).sum(axis=1)
        if np.array_equal(now_below, below):
            break
        below = now_below
    weight = cumulative[user, j] - np.where(j > 0, cumulative[user, np.maximum(j - 1, 0)], 0.0)
    return j, weight


def _first_above(cumulative: np.ndarray, user: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per row, the first column of cumulative[user] above t (the last column if none): binary search."""
    lo, hi = np.zeros(len(t), dtype=np.int64), np.full(len(t), cumulative.shape[1] - 1)
    while (lo < hi).any():
        mid = (lo + hi) // 2
        above = cumulative[user, mid] > t
        lo, hi = np.where(above, lo, mid + 1), np.where(above, mid, hi)
    return lo


def _log_sum_rows(log_rest: np.ndarray, *log_parts: np.ndarray) -> np.ndarray:
    """log(exp(log_rest) + sum of exp over each [rows, k] part), stable."""
    stacked = np.concatenate([log_rest[:, None], *log_parts], axis=1)
    peak = stacked.max(axis=1)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    with np.errstate(divide="ignore"):  # rows with nothing left: log(0) = -inf, never used
        return peak + np.log(np.exp(stacked - peak[:, None]).sum(axis=1))
