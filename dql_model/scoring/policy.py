"""How the K slots of a user are filled: greedily by Q, or drawn from softmax(Q / temperature).

Exploration is off by default. When on, the last ``explore_slots`` ranks, and every other rank with
probability ``explore_epsilon``, are drawn from the softmax over the eligible items not chosen yet
instead of taken greedily (source ``explore``). ``propensity`` is the probability that the slot's
policy chose the item given the items above it: 1.0 for a purely greedy slot.

Draws are a hash of (seed, user, item_idx or slot), the seed derived from the run date, so a rerun
and both engines draw the same items whatever batch or device a user is scored in; sampling without
replacement uses the Gumbel-top-k trick (one pass over the catalogue).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch

from dql_model.config import ScoreConfig
from dql_model.data import check_exclude_rule, exclude_rule

_ITEM_STREAM, _SLOT_STREAM = 0x51ED2701, 0x2C1B3C6D
"""Tags that make the item draws and the slot coins of a user independent random streams."""
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

    @property
    def explores(self) -> bool:
        return self.explore_slots > 0 or self.explore_epsilon > 0

    def slot_epsilon(self) -> np.ndarray:
        """[top_k] probability that each rank is drawn from the softmax rather than taken greedily."""
        eps = np.full(self.top_k, self.explore_epsilon, dtype=np.float64)
        eps[self.top_k - self.explore_slots :] = 1.0
        return eps

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


def fill_slots(policy: Policy, c: SlotCandidates) -> tuple[np.ndarray, ...]:
    """Slot r takes the best item not chosen yet (greedy) or the next draw (explore, prob slot_eps[r]).

    Returns the rows (user, rank, item, q, explored, propensity). The softmax mass left before slot
    r is the rest (items in neither list) plus every listed item not chosen yet, summed in log
    space. Each list has k entries and at most k - 1 are taken before the last slot, so neither
    runs dry unless the row has fewer eligible items than slots.
    """
    n_rows, k = c.greedy.shape
    rows = np.arange(n_rows)
    coins = _slot_coins(_row_seeds(c.keys, policy.seed, _SLOT_STREAM), k)
    slot_eps = policy.slot_epsilon()[:k]
    with np.errstate(invalid="ignore"):
        log_w_greedy = np.where(np.isfinite(c.greedy_q), (c.greedy_q - c.top[:, None]) / policy.temperature, -np.inf)
        log_w_drawn = np.where(np.isfinite(c.drawn_q), (c.drawn_q - c.top[:, None]) / policy.temperature, -np.inf)
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
        propensity = eps * np.exp(log_w - log_mass) + (1.0 - eps) * (item == g_item)
        out_item[:, slot] = item
        out_q[:, slot] = np.where(explore, c.drawn_q[rows, d_pos], c.greedy_q[rows, g_pos])
        out_explored[:, slot] = explore
        out_propensity[:, slot] = np.maximum(propensity, np.finfo(np.float64).tiny)  # a probability > 0
        filled[:, slot] = open_rows
        left_greedy &= c.greedy != item[:, None]
        left_drawn &= c.drawn != item[:, None]
    rank = np.broadcast_to(np.arange(1, k + 1), (n_rows, k))
    return (
        np.broadcast_to(c.users[:, None], (n_rows, k))[filled],
        rank[filled],
        out_item[filled],
        out_q[filled],
        out_explored[filled],
        out_propensity[filled],
    )


def _log_sum_rows(log_rest: np.ndarray, *log_parts: np.ndarray) -> np.ndarray:
    """log(exp(log_rest) + sum of exp over each [rows, k] part), stable."""
    stacked = np.concatenate([log_rest[:, None], *log_parts], axis=1)
    peak = stacked.max(axis=1)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    with np.errstate(divide="ignore"):  # rows with nothing left: log(0) = -inf, never used
        return peak + np.log(np.exp(stacked - peak[:, None]).sum(axis=1))
