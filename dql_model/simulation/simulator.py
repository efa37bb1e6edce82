"""The synthetic shop: a hidden model of shoppers that writes realistic event logs and doubles as
an environment for simulated policy evaluation.

Hidden model (``ShopModel``): every item has a category, a lognormal price drawn around its
category's price level, a Zipf-like popularity and a latent taste vector close to its category's
centre; every user has a latent taste (a mix of one to three favourite categories), a price
sensitivity and an activity level (sessions per day, heavy-tailed across users).

Behaviour (``interact``, shared by the log generator and ``ShopEnvironment``): a session starts
with the user's taste nudged toward one "mission" category. At each step the user views an item
drawn from a softmax over taste affinity, popularity, price and satiation (plus, in the
environment, an attention boost for recommended items); interest drifts toward what was just
viewed (``taste_drift``). A viewed item is added to the cart with a probability rising with
affinity and falling with price; a carted item is bought with a probability rising with the
user's long-term affinity. A purchase satiates: the item itself is almost never bought again for
weeks, and its category is less wanted for a few days. Some purchases are rated 1..5 (correlated
with affinity) when the user comes back in a later session.

Times are seconds since the start of the window (midnight UTC of the first day) inside the
simulation and UTC timestamps at the edges.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dql_model.config import Config, SimulatorConfig
from dql_model.contract import schema
from dql_model.warehouse import storage

# Knobs of the hidden model that SimulatorConfig does not expose. They are calibrated so that the
# default shop has ~2-5 % purchases and ~8-15 % add-to-carts among its events.
LATENT_DIM = 16
"""Width of the hidden taste vectors of users and items."""
ITEM_SPREAD = 0.6
"""Noise of an item's taste vector around its category centre (cosine to the centre ~0.85)."""
USER_SPREAD = 0.5
"""Noise of a user's taste vector around the mix of their favourite categories."""
CATEGORY_SIZE_ALPHA = 2.0
"""Dirichlet concentration of category sizes (lower: more uneven categories)."""
ZIPF_EXPONENT = 0.8
"""Popularity of the item of popularity rank r is proportional to r ** -ZIPF_EXPONENT."""
UNAVAILABLE_SHARE = 0.03
"""Share of items that sell out at some time inside the window (available = False at the end)."""
SOLD_OUT_VIEW_PENALTY = 2.0
"""Log-odds penalty on viewing a sold-out item (the shop stops linking to it)."""
TASTE_SCALE = 4.0
"""Weight of the cosine between the current interest and an item in the view softmax."""
VIEW_PRICE_WEIGHT = 0.3
"""Weight of price (times the user's price sensitivity) in the view softmax."""
MISSION_WEIGHT = 0.7
"""Pull of a session's mission category on the interest at session start."""
MISSION_FOCUS = 3.0
"""Sharpness of the choice of a session's mission category by taste."""
CART_BIAS, CART_TASTE = -3.6, 3.4
"""Log-odds of adding a viewed item to the cart: bias + slope * cosine(interest, item)."""
BUY_BIAS, BUY_TASTE = -2.6, 3.0
"""Log-odds of buying a carted item: bias + slope * cosine(long-term taste, item)."""
ITEM_MEMORY_DAYS = 30.0
"""Time constant of the satiation on an item after buying it."""
CATEGORY_MEMORY_DAYS = 3.0
"""Time constant of the satiation on a category after buying in it."""
VIEW_ITEM_SATIATION, VIEW_CATEGORY_SATIATION = 2.5, 1.0
"""Log-odds penalties on viewing a just-bought item / an item of a just-bought category."""
CART_ITEM_SATIATION, CART_CATEGORY_SATIATION = 5.0, 1.0
"""Log-odds penalties on carting a just-bought item / an item of a just-bought category."""
BUY_ITEM_SATIATION = 6.0
"""Log-odds penalty on buying a just-bought item again."""
PURCHASE_MEMORY = 32
"""Purchases remembered per shopper for item satiation (a ring buffer; older ones have decayed)."""
CART_SLOTS = 16
"""Items remembered in a session's cart (an item is carted at most once per session)."""
ACTIVITY_SHAPE = 0.8
"""Gamma shape of users' activity around sessions_per_user_day (lower: heavier tail)."""
SESSION_LENGTH_DISPERSION = 1.5
"""Negative-binomial shape of session lengths (lower: more very short and very long sessions)."""
HOURLY_WEIGHT = np.array(
    [3, 2, 1, 1, 1, 1, 2, 3, 4, 5, 5, 5, 6, 6, 5, 5, 5, 6, 7, 8, 9, 9, 7, 5], dtype=float
)
"""Relative number of sessions starting in each UTC hour of the day (evening peak)."""
MIN_SESSION_GAP_S = 35 * 60.0
"""A user's next session starts at least this long after the previous one ended."""
VIEW_GAP_MEDIAN_S, CART_GAP_MEDIAN_S, BUY_GAP_MEDIAN_S = 25.0, 8.0, 40.0
"""Median seconds before a view, an add-to-cart after its view, a purchase after its cart."""
BUY_NOW_SHARE = 0.4
"""Share of purchases right after the add-to-cart; the others happen at checkout, at session end."""
RATING_PROBABILITY = 0.3
"""Share of purchases that the buyer rates later."""
RATING_DELAY_MEDIAN_DAYS = 2.0
"""Median delay before a rating; it is logged at the start of the buyer's next session after it."""
RATING_CENTER, RATING_SLOPE, RATING_NOISE = 0.3, 4.0, 0.8
"""Rating = round(3 + slope * (cosine(taste, item) - center) + noise), clipped to 1..5."""
ATTENTION_BOOST = 20.0
"""Environment: a recommended item at position k (0-based) is (1 + boost / log2(k + 2)) times likelier to be viewed."""
HISTORY_LEN = 50
"""Environment: interactions remembered per simulated user for history()."""
DEFAULT_REWARDS = {schema.VIEW: 0.0, schema.ADD_TO_CART: 0.3, schema.PURCHASE: 1.0}

# Independent random streams derived from the seed, so a change in one stage does not reshuffle
# the others.
_MODEL_STREAM, _LOG_STREAM, _ENV_STREAM, _LIVE_STREAM, _LOGGING_STREAM = 0, 1, 2, 3, 4
_DAY_S = 86_400.0
_CODE_VIEW = schema.EVENT_CODE[schema.VIEW]
_CODE_CART = schema.EVENT_CODE[schema.ADD_TO_CART]
_CODE_PURCHASE = schema.EVENT_CODE[schema.PURCHASE]
_CODE_RATING = schema.EVENT_CODE[schema.RATING]


@dataclass(frozen=True)
class ShopModel:
    """The hidden truth of the shop, as numpy arrays indexed by item and user (0-based)."""

    item_category: np.ndarray  # [n_items] int
    price: np.ndarray  # [n_items] float
    price_z: np.ndarray  # [n_items] standardised log price
    popularity_logit: np.ndarray  # [n_items] -ZIPF_EXPONENT * log(rank)
    item_vector: np.ndarray  # [n_items, LATENT_DIM] unit vectors (float32)
    release_time: np.ndarray  # [n_items] seconds; -inf for items on sale before the window
    sold_out_time: np.ndarray  # [n_items] seconds; +inf for items that stay available
    category_center: np.ndarray  # [n_categories, LATENT_DIM] unit vectors
    user_taste: np.ndarray  # [n_users, LATENT_DIM] unit vectors
    price_sensitivity: np.ndarray  # [n_users] > 0
    activity: np.ndarray  # [n_users] mean sessions per day
    taste_drift: float
    mean_session_events: float
    window_s: float  # length of the simulated window (n_days days)

    @property
    def n_items(self) -> int:
        return len(self.item_category)

    @property
    def n_users(self) -> int:
        return len(self.user_taste)


def build_model(cfg: SimulatorConfig) -> ShopModel:
    """Draw the hidden shop of ``cfg`` (deterministic by ``cfg.seed``)."""
    if cfg.n_users < 1 or cfg.n_items < 1 or cfg.n_categories < 1 or cfg.n_days < 1:
        raise ValueError(f"simulator: n_users, n_items, n_categories and n_days must be >= 1, got {cfg}")
    rng = np.random.default_rng([cfg.seed, _MODEL_STREAM])
    n_items, n_cats, window_s = cfg.n_items, cfg.n_categories, cfg.n_days * _DAY_S

    centers = _unit(rng.standard_normal((n_cats, LATENT_DIM)))
    category = rng.choice(n_cats, size=n_items, p=rng.dirichlet(np.full(n_cats, CATEGORY_SIZE_ALPHA)))
    noise = rng.standard_normal((n_items, LATENT_DIM)) / np.sqrt(LATENT_DIM)
    item_vector = _unit(centers[category] + ITEM_SPREAD * noise)

    log_price_level = rng.normal(np.log(30.0), 0.8, size=n_cats)
    log_price_spread = rng.uniform(0.25, 0.6, size=n_cats)
    log_price = log_price_level[category] + log_price_spread[category] * rng.standard_normal(n_items)
    price = np.maximum(np.round(np.exp(log_price), 2), 0.99)
    price_z = (np.log(price) - np.log(price).mean()) / max(np.log(price).std(), 1e-9)

    rank = rng.permutation(n_items) + 1
    popularity_logit = -ZIPF_EXPONENT * np.log(rank)

    # The newest items (highest ids) enter the catalogue during the window; at least one item is
    # on sale from the start so that every shopper always has something to look at.
    n_new = min(int(rng.poisson(cfg.new_items_per_day * cfg.n_days)), n_items - 1)
    release_time = np.full(n_items, -np.inf)
    release_time[n_items - n_new :] = np.sort(rng.uniform(0.0, window_s, size=n_new))
    sells_out = rng.random(n_items) < UNAVAILABLE_SHARE
    sold_out_at = rng.uniform(np.maximum(release_time, 0.0), window_s)
    sold_out_time = np.where(sells_out, sold_out_at, np.inf)

    n_users = cfg.n_users
    n_favourites = rng.integers(1, 4, size=n_users)
    weights = rng.dirichlet(np.ones(n_cats), size=n_users) * 0.15
    for k in range(3):
        favourite = rng.integers(0, n_cats, size=n_users)
        weights[np.arange(n_users), favourite] += np.where(
            k < n_favourites, rng.uniform(0.5, 1.0, n_users), 0.0
        )
    user_noise = rng.standard_normal((n_users, LATENT_DIM)) / np.sqrt(LATENT_DIM)
    user_taste = _unit(weights @ centers + USER_SPREAD * user_noise)
    price_sensitivity = rng.lognormal(np.log(0.5), 0.5, size=n_users)
    activity = cfg.sessions_per_user_day * rng.gamma(ACTIVITY_SHAPE, 1.0 / ACTIVITY_SHAPE, size=n_users)

    # What enters the [shoppers, items] view logits is float32: half the memory traffic, and
    # float64 matrix products of this shape stall on a busy machine.
    f32 = np.float32
    return ShopModel(
        item_category=category,
        price=price,
        price_z=price_z.astype(f32),
        popularity_logit=popularity_logit.astype(f32),
        item_vector=item_vector.astype(f32),
        release_time=release_time,
        sold_out_time=sold_out_time,
        category_center=centers.astype(f32),
        user_taste=user_taste.astype(f32),
        price_sensitivity=price_sensitivity.astype(f32),
        activity=activity,
        taste_drift=float(cfg.taste_drift),
        mean_session_events=float(cfg.mean_session_events),
        window_s=window_s,
    )


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# ---------------------------------------------------------------------------------------------
# The choice model, shared by the log generator and the environment.


@dataclass
class ShopperState:
    """Mutable state of a set of simulated shoppers (rows); ``user`` maps a row to its user index."""

    user: np.ndarray  # [n] user index
    interest: np.ndarray  # [n, LATENT_DIM] current (drifting) interest
    bought_item: np.ndarray  # [n, PURCHASE_MEMORY] ring of bought items, -1 empty
    bought_time: np.ndarray  # [n, PURCHASE_MEMORY] purchase times, -inf empty
    bought_next: np.ndarray  # [n] next ring slot
    category_bought_time: np.ndarray  # [n, n_categories] last purchase time in the category
    cart: np.ndarray  # [n, CART_SLOTS] items carted in the current session, -1 empty
    cart_next: np.ndarray  # [n]
    budget: np.ndarray  # [n] events left in the current session

    @classmethod
    def fresh(cls, model: ShopModel, users: np.ndarray) -> ShopperState:
        n = len(users)
        return cls(
            user=np.asarray(users, dtype=np.int64),
            interest=model.user_taste[users].copy(),
            bought_item=np.full((n, PURCHASE_MEMORY), -1, dtype=np.int64),
            bought_time=np.full((n, PURCHASE_MEMORY), -np.inf),
            bought_next=np.zeros(n, dtype=np.int64),
            category_bought_time=np.full((n, len(model.category_center)), -np.inf),
            cart=np.full((n, CART_SLOTS), -1, dtype=np.int64),
            cart_next=np.zeros(n, dtype=np.int64),
            budget=np.zeros(n),
        )


@dataclass(frozen=True)
class Interaction:
    """What each shopper did in one step: the item viewed, and whether it was carted and bought."""

    item: np.ndarray
    carted: np.ndarray
    bought: np.ndarray
    taste: np.ndarray  # cosine of the user's long-term taste and the item (drives ratings)


def start_sessions(model: ShopModel, state: ShopperState, rows: np.ndarray, rng: np.random.Generator) -> None:
    """New sessions for ``rows``: interest = taste pulled toward a mission category, empty cart, a length."""
    taste = model.user_taste[state.user[rows]]
    mission_logits = MISSION_FOCUS * taste @ model.category_center.T
    mission = _sample_rows(rng, mission_logits)
    state.interest[rows] = _unit(taste + MISSION_WEIGHT * model.category_center[mission])
    state.cart[rows] = -1
    state.cart_next[rows] = 0
    extra = model.mean_session_events - 1.0
    if extra > 0:
        p = SESSION_LENGTH_DISPERSION / (SESSION_LENGTH_DISPERSION + extra)
        state.budget[rows] = 1 + rng.negative_binomial(SESSION_LENGTH_DISPERSION, p, size=len(rows))
    else:
        state.budget[rows] = 1


def view_logits(
    model: ShopModel, state: ShopperState, rows: np.ndarray, now: np.ndarray, slate: np.ndarray | None = None
) -> np.ndarray:
    """Log-odds [len(rows), n_items] of the next item each shopper views at time ``now``.

    ``slate`` [len(rows), K] (item indices, negative = empty slot) are recommendations shown to the
    shopper: the item at position k gets a multiplicative attention boost.
    """
    users = state.user[rows]
    logits = TASTE_SCALE * (state.interest[rows] @ model.item_vector.T)
    logits += model.popularity_logit
    logits -= VIEW_PRICE_WEIGHT * np.outer(model.price_sensitivity[users], model.price_z)
    _apply_satiation(model, state, rows, now, logits)
    _apply_catalogue_dates(model, now, logits)
    if slate is not None:
        position = np.broadcast_to(np.arange(slate.shape[1]), slate.shape)
        shown = slate >= 0
        boost = np.zeros_like(logits)
        r = np.broadcast_to(np.arange(len(rows))[:, None], slate.shape)
        np.maximum.at(
            boost, (r[shown], slate[shown]), np.log1p(ATTENTION_BOOST / np.log2(position[shown] + 2.0))
        )
        logits += boost
    return logits


def _apply_satiation(
    model: ShopModel, state: ShopperState, rows: np.ndarray, now: np.ndarray, logits: np.ndarray
) -> None:
    category_time = state.category_bought_time[rows]
    bought_rows = np.flatnonzero(np.isfinite(category_time).any(axis=1))
    if bought_rows.size == 0:
        return
    category_recency = np.exp(
        -(now[bought_rows, None] - category_time[bought_rows]) / (CATEGORY_MEMORY_DAYS * _DAY_S)
    ).astype(logits.dtype)
    logits[bought_rows] -= VIEW_CATEGORY_SATIATION * category_recency[:, model.item_category]
    item_recency = np.exp(
        -(now[bought_rows, None] - state.bought_time[rows[bought_rows]]) / (ITEM_MEMORY_DAYS * _DAY_S)
    )
    items = state.bought_item[rows[bought_rows]]
    filled = items >= 0
    r = np.broadcast_to(bought_rows[:, None], items.shape)
    np.subtract.at(logits, (r[filled], items[filled]), VIEW_ITEM_SATIATION * item_recency[filled])


def _apply_catalogue_dates(model: ShopModel, now: np.ndarray, logits: np.ndarray) -> None:
    """Items not yet released cannot be viewed; sold-out items are seldom linked to."""
    unreleased = np.flatnonzero(model.release_time > now.min())
    if unreleased.size:
        hidden = now[:, None] < model.release_time[unreleased]
        logits[:, unreleased] = np.where(hidden, -np.inf, logits[:, unreleased])
    sold_out = np.flatnonzero(model.sold_out_time <= now.max())
    if sold_out.size:
        logits[:, sold_out] -= SOLD_OUT_VIEW_PENALTY * (now[:, None] >= model.sold_out_time[sold_out])


def _sample_rows(rng: np.random.Generator, logits: np.ndarray) -> np.ndarray:
    """One draw per row from softmax(logits) (inverse CDF; one uniform per row)."""
    weights = np.exp(logits - logits.max(axis=1, keepdims=True))
    cdf = np.cumsum(weights, axis=1)
    # "<" (not "<="): a draw of exactly 0 or of the total lands on an item of positive weight.
    u = (rng.random(len(cdf)) * cdf[:, -1]).astype(cdf.dtype)
    return np.minimum((cdf < u[:, None]).sum(axis=1), logits.shape[1] - 1)


def interact(
    model: ShopModel,
    state: ShopperState,
    rows: np.ndarray,
    now: np.ndarray,
    rng: np.random.Generator,
    slate: np.ndarray | None = None,
) -> Interaction:
    """One step of every shopper in ``rows`` at times ``now``: view, maybe cart, maybe buy.

    Updates the state (interest drift, cart, purchase satiation). Purchases take effect at ``now``.
    """
    n = len(rows)
    items = _sample_rows(rng, view_logits(model, state, rows, now, slate))
    users = state.user[rows]
    item_vector = model.item_vector[items]
    interest_cosine = np.einsum("nd,nd->n", state.interest[rows], item_vector)
    taste_cosine = np.einsum("nd,nd->n", model.user_taste[users], item_vector)
    drift = model.taste_drift
    state.interest[rows] = _unit((1.0 - drift) * state.interest[rows] + drift * item_vector)

    price = model.price_sensitivity[users] * model.price_z[items]
    item_recency = _item_recency(state, rows, items, now)
    category_time = state.category_bought_time[rows, model.item_category[items]]
    category_recency = np.exp(-(now - category_time) / (CATEGORY_MEMORY_DAYS * _DAY_S))
    in_cart = (state.cart[rows] == items[:, None]).any(axis=1)
    on_sale = (now >= model.release_time[items]) & (now < model.sold_out_time[items])

    cart_logit = (
        CART_BIAS
        + CART_TASTE * interest_cosine
        - price
        - CART_ITEM_SATIATION * item_recency
        - CART_CATEGORY_SATIATION * category_recency
    )
    buy_logit = BUY_BIAS + BUY_TASTE * taste_cosine - price - BUY_ITEM_SATIATION * item_recency
    carted = on_sale & ~in_cart & (rng.random(n) < _sigmoid(cart_logit))
    bought = carted & (rng.random(n) < _sigmoid(buy_logit))

    _remember_cart(state, rows[carted], items[carted])
    _remember_purchase(model, state, rows[bought], items[bought], now[bought])
    return Interaction(item=items, carted=carted, bought=bought, taste=taste_cosine)


def _item_recency(state: ShopperState, rows: np.ndarray, items: np.ndarray, now: np.ndarray) -> np.ndarray:
    """exp(-age / memory) of each shopper's last purchase of ``items`` (0 if never bought)."""
    same = state.bought_item[rows] == items[:, None]
    last = np.where(same, state.bought_time[rows], -np.inf).max(axis=1)
    return np.exp(-(now - last) / (ITEM_MEMORY_DAYS * _DAY_S))


def _remember_cart(state: ShopperState, rows: np.ndarray, items: np.ndarray) -> None:
    slot = state.cart_next[rows] % CART_SLOTS
    state.cart[rows, slot] = items
    state.cart_next[rows] += 1


def _remember_purchase(
    model: ShopModel, state: ShopperState, rows: np.ndarray, items: np.ndarray, now: np.ndarray
) -> None:
    slot = state.bought_next[rows] % PURCHASE_MEMORY
    state.bought_item[rows, slot] = items
    state.bought_time[rows, slot] = now
    state.bought_next[rows] += 1
    state.category_bought_time[rows, model.item_category[items]] = now


def _gaps(rng: np.random.Generator, median_s: float, n: int) -> np.ndarray:
    """Seconds between consecutive events: lognormal around ``median_s``, at least one second."""
    return np.maximum(1.0, median_s * rng.lognormal(0.0, 0.8, size=n))


# ---------------------------------------------------------------------------------------------
# Log generation.


@dataclass
class _Run:
    """The mutable world of one stretch of simulated shopping: its random stream, the shoppers' state,
    the event log being written and the ratings still due."""

    rng: np.random.Generator
    state: ShopperState
    log: _EventLog
    ratings: _PendingRatings


class _EventLog:
    """Columns of generated events, appended step by step (times in seconds since window start)."""

    def __init__(self) -> None:
        self.parts: list[tuple[np.ndarray, ...]] = []

    def add(self, time_s, user, item, code: int, value, session) -> None:
        if len(user):
            n = len(user)
            value = np.broadcast_to(np.asarray(value, dtype=float), (n,))
            self.parts.append((time_s.copy(), user, item, np.full(n, code, np.int8), value.copy(), session))

    def columns(self) -> tuple[np.ndarray, ...]:
        if not self.parts:
            empty = (np.float64, np.int64, np.int64, np.int8, np.float64, np.int64)
            return tuple(np.empty(0, dtype=t) for t in empty)
        return tuple(np.concatenate(column) for column in zip(*self.parts, strict=True))


class _PendingRatings:
    """Purchases that will be rated; a rating is logged at the start of the buyer's first session
    after its delay has passed."""

    def __init__(self) -> None:
        self.user = np.empty(0, np.int64)
        self.item = np.empty(0, np.int64)
        self.value = np.empty(0)
        self.ready = np.empty(0)

    def add(self, rng: np.random.Generator, users, items, taste, bought_at) -> None:
        rated = rng.random(len(users)) < RATING_PROBABILITY
        noise = rng.normal(0.0, RATING_NOISE, size=len(users))
        value = np.clip(np.round(3.0 + RATING_SLOPE * (taste - RATING_CENTER) + noise), 1, 5)
        delay = RATING_DELAY_MEDIAN_DAYS * _DAY_S * rng.lognormal(0.0, 0.7, size=len(users))
        self.user = np.concatenate([self.user, users[rated]])
        self.item = np.concatenate([self.item, items[rated]])
        self.value = np.concatenate([self.value, value[rated]])
        self.ready = np.concatenate([self.ready, (bought_at + delay)[rated]])

    def pop_due(self, is_starting: np.ndarray, session_start: np.ndarray):
        """Ratings due for users starting a session now (``is_starting``/``session_start`` by user)."""
        due = is_starting[self.user] & (self.ready <= session_start[self.user])
        popped = self.user[due], self.item[due], self.value[due]
        keep = ~due
        self.user, self.item, self.value, self.ready = (
            self.user[keep],
            self.item[keep],
            self.value[keep],
            self.ready[keep],
        )
        return popped


@dataclass(frozen=True)
class _SessionPlan:
    """Planned session starts, grouped by user: user u's r-th session is start[offset[u] + r]."""

    count: np.ndarray
    offset: np.ndarray
    start: np.ndarray


def plan_sessions(rng: np.random.Generator, model: ShopModel, *, n_days: int, first_day: int) -> _SessionPlan:
    """Session starts of every shopper over ``n_days`` days from day ``first_day`` of the window:
    Poisson(activity x days) sessions each, a uniform day, an hour from HOURLY_WEIGHT (a one-day
    range draws no day, so one live day consumes the same draws whatever came before)."""
    count = rng.poisson(model.activity * n_days)
    user = np.repeat(np.arange(model.n_users), count)
    day = first_day + rng.integers(0, n_days, size=len(user))
    hour = rng.choice(24, size=len(user), p=HOURLY_WEIGHT / HOURLY_WEIGHT.sum())
    start = day * _DAY_S + (hour + rng.random(len(user))) * 3600.0
    start = start[np.lexsort((start, user))]
    return _SessionPlan(count=count, offset=np.cumsum(count) - count, start=start)


def reward_by_code(rewards: Mapping[str, float]) -> np.ndarray:
    """[N_EVENT_CODES] the reward of each event code (0 for types ``rewards`` does not name)."""
    out = np.zeros(schema.N_EVENT_CODES)
    for name, reward in rewards.items():
        out[schema.EVENT_CODE[name]] = reward
    return out


def shop_item_ids(cfg: SimulatorConfig) -> np.ndarray:
    """The synthetic shop's item ids, position by position (no shop is built to know them)."""
    return np.array([f"i{i:06d}" for i in range(cfg.n_items)], dtype=object)


class ShopSimulator:
    """The synthetic shop of one SimulatorConfig: hidden model, item catalogue, event logs, environment."""

    def __init__(self, cfg: SimulatorConfig) -> None:
        self.cfg = cfg
        self.model = build_model(cfg)
        self.first_date = dt.date.fromisoformat(cfg.end_date) - dt.timedelta(days=cfg.n_days - 1)
        self.last_date = dt.date.fromisoformat(cfg.end_date)
        start = dt.datetime.combine(self.first_date, dt.time(), tzinfo=dt.UTC)
        self.window_start_us = int(start.timestamp()) * 1_000_000
        self.item_ids = shop_item_ids(cfg)
        width = max(2, len(str(cfg.n_categories - 1)))
        self.category_ids = np.array([f"c{c:0{width}d}" for c in range(cfg.n_categories)], dtype=object)
        width = max(5, len(str(cfg.n_users - 1)))
        self.user_ids = np.array([f"u{u:0{width}d}" for u in range(cfg.n_users)], dtype=object)

    def items_table(self) -> pa.Table:
        """The catalogue as it stands at the end of the window (schema ``arrow_schema(ITEMS)``)."""
        m = self.model
        return pa.table(
            {
                schema.ITEM_ID: pa.array(self.item_ids, pa.string()),
                schema.CATEGORY_ID: pa.array(self.category_ids[m.item_category], pa.string()),
                schema.PRICE: pa.array(m.price, pa.float64()),
                schema.AVAILABLE: pa.array(m.sold_out_time >= m.window_s, pa.bool_()),
            },
            schema=schema.arrow_schema(schema.ITEMS),
        )

    def affinity(self, users: np.ndarray) -> np.ndarray:
        """How much ``users`` like every item [len(users), n_items]: the log-odds, up to a constant,
        that a user who views the item carts and buys it (taste and price; no session context, no
        satiation). An oracle policy ranks by it."""
        m = self.model
        users = np.asarray(users)
        taste = m.user_taste[users] @ m.item_vector.T
        price = np.outer(m.price_sensitivity[users], m.price_z)
        return (CART_TASTE + BUY_TASTE) * taste - 2.0 * price

    @property
    def logged_days(self) -> int:
        """Last days of the window served by the logging policy (``simulator.logged_days``, at most
        n_days - 1: the first day has no history to be popular in)."""
        return min(self.cfg.logged_days, self.cfg.n_days - 1)

    def generate_events(self) -> pa.Table:
        """All events of the window, sorted by event_time then user_id; same config, same table."""
        return self.live().history

    def live(self) -> LiveShop:
        """The shop after its generated window, ready to serve more days (``LiveShop``): its
        ``history`` is ``generate_events()``, its ``impressions`` what the logging policy showed in
        the window's last ``logged_days`` days, and its shoppers remember what they did in it.

        The days before those are browsed without lists; each logged day is lived like a served day
        (``LiveShop.serve``) with the lists of ``logging_policy_lists``, so shoppers react to them."""
        rng = np.random.default_rng([self.cfg.seed, _LOG_STREAM])
        unlisted_days = self.cfg.n_days - self.logged_days
        plan = plan_sessions(rng, self.model, n_days=unlisted_days, first_day=0)
        state = ShopperState.fresh(self.model, np.arange(self.model.n_users))
        log, ratings = _EventLog(), _PendingRatings()
        last_end = np.full(self.model.n_users, -np.inf)
        end_s = unlisted_days * _DAY_S
        self._run_sessions(_Run(rng, state, log, ratings), plan, last_end, end_s=end_s)
        names = _session_names(self.user_ids, plan, suffix="")
        history = self._to_table(log, names, end_s=end_s)
        shop = LiveShop(
            self, history, state, ratings, last_end, date=self.first_date + dt.timedelta(days=unlisted_days - 1)
        )
        shop.live_logged_days(self.logged_days)
        return shop

    def _run_sessions(self, run: _Run, plan, last_end, *, end_s, slates=None, requests=None):
        """Every planned session that starts before ``end_s``, ordinal by ordinal; ``slates`` [n_users,
        K] are the lists on screen; ``requests``, if given, collects (user, session, shown time)."""
        rng, state, log, ratings = run.rng, run.state, run.log, run.ratings
        for ordinal in range(int(plan.count.max(initial=0))):
            users = np.flatnonzero(plan.count > ordinal)
            session = plan.offset[users] + ordinal
            start = np.maximum(plan.start[session], last_end[users] + MIN_SESSION_GAP_S)
            inside = start < end_s
            users, session, start = users[inside], session[inside], start[inside]
            start_sessions(self.model, state, users, rng)
            now = self._log_due_ratings(log, ratings, users, session, start)
            if requests is not None:
                requests.append((users, session, now.copy()))
            last_end[users] = self._browse(run, users, session, now, end_s=end_s, slates=slates)

    def _log_due_ratings(self, log, ratings, users, session, start) -> np.ndarray:
        """Log ratings due at these session starts, a few seconds apart; returns the times after them."""
        is_starting = np.zeros(self.model.n_users, bool)
        is_starting[users] = True
        session_start = np.zeros(self.model.n_users)
        session_start[users] = start
        session_of = np.zeros(self.model.n_users, np.int64)
        session_of[users] = session
        r_user, r_item, r_value = ratings.pop_due(is_starting, session_start)
        order = np.argsort(r_user, kind="stable")
        r_user, r_item, r_value = r_user[order], r_item[order], r_value[order]
        rank = np.arange(len(r_user)) - np.searchsorted(r_user, r_user)
        times = session_start[r_user] + 5.0 * rank
        log.add(times, r_user, r_item, _CODE_RATING, r_value, session_of[r_user])
        n_rated = np.bincount(r_user, minlength=self.model.n_users)[users]
        return start + 5.0 * n_rated

    def _browse(self, run: _Run, users, session, now, *, end_s, slates=None) -> np.ndarray:
        """Run one session of each of ``users`` from times ``now`` (with ``slates[user]`` on screen,
        if given) until its budget or ``end_s``; returns when each session ended."""
        rng, state, log, ratings = run.rng, run.state, run.log, run.ratings
        m = self.model
        t = now.copy()
        live = np.arange(len(users))
        deferred: list[tuple[np.ndarray, np.ndarray]] = []
        while live.size:
            rows = users[live]
            t[live] += _gaps(rng, VIEW_GAP_MEDIAN_S, live.size)
            step = interact(m, state, rows, t[live], rng, None if slates is None else slates[rows])
            log.add(t[live], rows, step.item, _CODE_VIEW, np.nan, session[live])

            c = live[step.carted]
            t[c] += _gaps(rng, CART_GAP_MEDIAN_S, c.size)
            log.add(
                t[c],
                users[c],
                step.item[step.carted],
                _CODE_CART,
                m.price[step.item[step.carted]],
                session[c],
            )

            buy_now = step.bought & (rng.random(live.size) < BUY_NOW_SHARE)
            b = live[buy_now]
            t[b] += _gaps(rng, BUY_GAP_MEDIAN_S, b.size)
            log.add(
                t[b], users[b], step.item[buy_now], _CODE_PURCHASE, m.price[step.item[buy_now]], session[b]
            )
            at_checkout = step.bought & ~buy_now
            deferred.append((live[at_checkout], step.item[at_checkout]))
            ratings.add(
                rng, rows[step.bought], step.item[step.bought], step.taste[step.bought], t[live[step.bought]]
            )

            state.budget[rows] -= 1 + step.carted + step.bought
            live = live[(state.budget[rows] > 0) & (t[live] < end_s)]
        return self._checkout(rng, log, users, session, t, deferred)

    def _checkout(self, rng, log, users, session, t, deferred) -> np.ndarray:
        """Purchases decided during a session but paid at its end, one second apart per order line."""
        pos = np.concatenate([p for p, _ in deferred]) if deferred else np.empty(0, np.int64)
        items = np.concatenate([i for _, i in deferred]) if deferred else np.empty(0, np.int64)
        if pos.size == 0:
            return t
        order = np.argsort(pos, kind="stable")
        pos, items = pos[order], items[order]
        first = np.searchsorted(pos, pos)
        line = np.arange(len(pos)) - first
        paid_at = t + _gaps(rng, BUY_GAP_MEDIAN_S, len(t))
        times = paid_at[pos] + line
        log.add(times, users[pos], items, _CODE_PURCHASE, self.model.price[items], session[pos])
        t = t.copy()
        np.maximum.at(t, pos, times)
        return t

    def _to_table(self, log: _EventLog, session_names: Callable[[np.ndarray], list[str]], *, end_s: float) -> pa.Table:
        """The logged events before ``end_s`` as an events table (plus event_date), sorted by time then user."""
        time_s, user, item, code, value, session = log.columns()
        inside = time_s < end_s
        time_s, user, item, code, value, session = (
            c[inside] for c in (time_s, user, item, code, value, session)
        )
        time_us = self.window_start_us + np.round(time_s * 1000.0).astype(np.int64) * 1000
        order = np.lexsort((user, time_us))
        time_us, user, item, code, value, session = (
            c[order] for c in (time_us, user, item, code, value, session)
        )
        used, session_index = np.unique(session, return_inverse=True)
        event_types = pa.array(schema.EVENT_TYPES, pa.string())
        columns = {
            schema.EVENT_TIME: pa.array(time_us, pa.timestamp("us", tz="UTC")),
            schema.USER_ID: _ids(user, self.user_ids),
            schema.ITEM_ID: _ids(item, self.item_ids),
            schema.EVENT_TYPE: pa.DictionaryArray.from_arrays(code.astype(np.int32) - 1, event_types).cast(
                pa.string()
            ),
            schema.VALUE: pa.array(value, pa.float64(), mask=np.isnan(value)),
            schema.SESSION_ID: _ids(session_index, np.array(session_names(used), dtype=object)),
        }
        table = pa.table(columns, schema=schema.arrow_schema(schema.EVENTS))
        event_date = pa.array((time_us // 86_400_000_000).astype(np.int32), pa.date32())
        return table.append_column(pa.field(schema.EVENT_DATE, pa.date32()), event_date)

    def environment(self, seed: int, *, rewards: Mapping[str, float] | None = None) -> ShopEnvironment:
        """A simulated shop where a policy's recommendations meet the same hidden shoppers."""
        return ShopEnvironment(self, seed, rewards=rewards)


@dataclass(frozen=True)
class ServedDay:
    """One live day of the shop: what its shoppers did, and what they were shown."""

    date: dt.date
    events: pa.Table
    """The day's events (schema ``arrow_schema(EVENTS)``), sorted by time then user."""
    impressions: pa.Table
    """One row per shown slot of every visit (schema ``arrow_schema(IMPRESSIONS)``): a visit is one
    request, its list the one published the night before, shown when the visit starts."""
    slot_reward: np.ndarray
    """[requests, K] reward (DEFAULT_REWARDS) of the visit's events on the item in each slot."""
    request_user: np.ndarray
    """[requests] the shopper (user index) of each visit, in the order of slot_reward's rows."""
    shoppers: int
    """Shoppers of the shop (the denominator of the per-shopper figures)."""
    visits: int
    reward: float
    """Total reward of the day's events (DEFAULT_REWARDS), listed items or not."""
    purchases: int
    revenue: float

    def per_shopper(self) -> dict[str, float]:
        """Return, purchases and revenue per shopper, and the reward per visit earned on listed items."""
        n = max(self.shoppers, 1)
        return {
            "return": self.reward / n,
            "purchases": self.purchases / n,
            "revenue": self.revenue / n,
            "visits": self.visits / n,
            "list_reward_per_visit": float(self.slot_reward.sum(axis=1).mean()) if self.visits else 0.0,
        }


class LiveShop:
    """The synthetic shop after its generated window, living on day by day (the closed loop).

    Each ``serve`` is one more UTC day: the day's sessions are planned as in the window (Poisson
    sessions per shopper, the same hourly profile), every visit is shown the shopper's list, and
    shoppers react through the hidden model (the list's attention boost, drift of interest,
    satiation and ratings carry over from day to day). The day's draws are seeded by the shop's
    seed and the date only, so twin shops serving different lists meet the same planned visits.
    """

    def __init__(
        self, simulator: ShopSimulator, history: pa.Table, state, ratings, last_end, *, date: dt.date | None = None
    ) -> None:
        self.simulator = simulator
        self.history = history
        """Every event lived so far (with event_date), sorted by time then user."""
        self.impressions = schema.arrow_schema(schema.IMPRESSIONS).empty_table()
        """What the logging policy showed in the window (``live_logged_days``); served days' are in their ``ServedDay``."""
        self.date = simulator.last_date if date is None else date
        """The last day lived (the window's last day once it is generated)."""
        self._state, self._ratings, self._last_end = state, ratings, last_end

    def live_logged_days(self, n_days: int) -> None:
        """Live ``n_days`` more days with the logging policy's lists (``logging_policy_lists`` over the
        event counts of every day before), appending their events to ``history`` and their shown slots
        to ``impressions``."""
        sim = self.simulator
        cfg = sim.cfg
        counts = _item_counts(self.history, sim.item_ids)
        days, shown = [self.history], [self.impressions]
        for _ in range(n_days):
            date = self.date + dt.timedelta(days=1)
            rng = np.random.default_rng([cfg.seed, _LOGGING_STREAM, (date - sim.first_date).days])
            lists, propensity = logging_policy_lists(
                rng, counts, self.n_users, top_k=cfg.logging_top_k, epsilon=cfg.logging_epsilon
            )
            day = self.serve(lists, propensity=propensity, model_version=logging_policy_name(cfg))
            event_date = pa.array(np.full(day.events.num_rows, date, dtype="datetime64[D]"), pa.date32())
            days.append(day.events.append_column(pa.field(schema.EVENT_DATE, pa.date32()), event_date))
            shown.append(day.impressions)
            counts += _item_counts(day.events, sim.item_ids)
        self.history, self.impressions = pa.concat_tables(days), pa.concat_tables(shown)

    @property
    def n_users(self) -> int:
        return self.simulator.model.n_users

    def serve(
        self,
        lists: np.ndarray,
        *,
        propensity: np.ndarray | None = None,
        model_version: str | np.ndarray = "",
        replicate: int = 0,
        advance: bool = True,
    ) -> ServedDay:
        """Live the next day with ``lists`` [n_users, K] (catalogue positions; -1: empty slot) on screen.

        ``propensity`` [n_users, K] is logged with each shown slot (1 where None), ``model_version``
        (one string or one per user) too. ``replicate`` > 0 draws another day of the same shop (another
        seed of the same date); ``advance`` False lives it on a copy and leaves this shop where it was
        (a twin day: the value of other lists on the same day).
        """
        import copy

        sim, m = self.simulator, self.simulator.model
        lists = np.asarray(lists, dtype=np.int64)
        if lists.ndim != 2 or lists.shape[0] != self.n_users or (lists.size and lists.max() >= m.n_items):
            raise ValueError(
                f"live shop: lists must be catalogue positions [n_users={self.n_users}, K] below {m.n_items}, "
                f"got {lists.dtype} {lists.shape}"
            )
        propensity = np.ones(lists.shape) if propensity is None else np.asarray(propensity, dtype=np.float64)
        versions = np.broadcast_to(np.asarray(model_version, dtype=object), (self.n_users,))
        date = self.date + dt.timedelta(days=1)
        day = (date - sim.first_date).days
        state, ratings, last_end = self._state, self._ratings, self._last_end
        if not advance:
            state, ratings, last_end = copy.deepcopy((state, ratings, last_end))
        rng = np.random.default_rng([sim.cfg.seed, _LIVE_STREAM, day, replicate])
        plan = plan_sessions(rng, m, n_days=1, first_day=day)
        log, requests = _EventLog(), []
        end_s = (day + 1) * _DAY_S
        sim._run_sessions(_Run(rng, state, log, ratings), plan, last_end, end_s=end_s, slates=lists, requests=requests)
        names = _session_names(sim.user_ids, plan, suffix=date.isoformat())
        events = sim._to_table(log, names, end_s=end_s).drop_columns([schema.EVENT_DATE])
        r_user = np.concatenate([u for u, _, _ in requests]) if requests else np.empty(0, np.int64)
        r_session = np.concatenate([q for _, q, _ in requests]) if requests else np.empty(0, np.int64)
        r_time = np.concatenate([t for _, _, t in requests]) if requests else np.empty(0)
        slot_reward = self._slot_rewards(log, lists, r_session, end_s)
        impressions = self._impressions(lists, propensity, versions, r_user, r_session, r_time, names)
        time_s, _, item, code, _, _ = log.columns()
        inside = time_s < end_s
        rewards = reward_by_code(DEFAULT_REWARDS)
        bought = inside & (code == _CODE_PURCHASE)
        if advance:
            self.date = date
        return ServedDay(
            date=date,
            events=events,
            impressions=impressions,
            slot_reward=slot_reward,
            request_user=r_user,
            shoppers=self.n_users,
            visits=len(r_user),
            reward=float(rewards[code[inside]].sum()),
            purchases=int(bought.sum()),
            revenue=float(m.price[item[bought]].sum()),
        )

    def _slot_rewards(self, log: _EventLog, lists: np.ndarray, r_session: np.ndarray, end_s: float) -> np.ndarray:
        """[requests, K]: each visit's rewards on the item in each of its slots (events before end_s)."""
        time_s, user, item, code, _, session = log.columns()
        out = np.zeros((len(r_session), lists.shape[1]))
        if not len(r_session) or not lists.shape[1]:
            return out
        rewards = reward_by_code(DEFAULT_REWARDS)
        request_of = np.full(int(max(r_session.max(), session.max(initial=0))) + 1, -1, np.int64)
        request_of[r_session] = np.arange(len(r_session))
        hit = lists[user] == item[:, None]
        listed = hit.any(axis=1) & (time_s < end_s) & (request_of[session] >= 0)
        np.add.at(out, (request_of[session[listed]], hit[listed].argmax(axis=1)), rewards[code[listed]])
        return out

    def _impressions(self, lists, propensity, versions, r_user, r_session, r_time, names) -> pa.Table:
        sim = self.simulator
        shown = lists[r_user] >= 0
        row, slot = np.nonzero(shown)
        time_us = sim.window_start_us + np.round(r_time[row] * 1000.0).astype(np.int64) * 1000
        return pa.table(
            {
                schema.SHOWN_TIME: pa.array(time_us, pa.timestamp("us", tz="UTC")),
                schema.USER_ID: _ids(r_user[row], sim.user_ids),
                schema.ITEM_ID: _ids(lists[r_user[row], slot], sim.item_ids),
                schema.POSITION: pa.array(slot + 1, pa.int32()),
                schema.PROPENSITY: pa.array(propensity[r_user[row], slot], pa.float64()),
                schema.REQUEST_ID: pa.array(np.array(names(r_session), dtype=object)[row], pa.string()),
                schema.MODEL_VERSION: pa.array(versions[r_user[row]].astype(str), pa.string()),
            },
            schema=schema.arrow_schema(schema.IMPRESSIONS),
        )


def logging_policy_name(cfg: SimulatorConfig) -> str:
    """The model_version of the logging policy's impressions."""
    return f"logging-popularity-epsilon-{cfg.logging_epsilon:g}"


def logging_policy_lists(
    rng: np.random.Generator, counts: np.ndarray, n_users: int, *, top_k: int, epsilon: float
) -> tuple[np.ndarray, np.ndarray]:
    """([n_users, K] catalogue positions, [n_users, K] propensities) of the demo history's logging policy.

    Popularity with epsilon exploration: the K = min(top_k, n_items // 2) items with the most events so
    far (``counts``, ties by catalogue position) make every list; each slot independently, with
    probability ``epsilon``, shows instead an item drawn uniformly from the M = n_items - K items outside
    them (a user's explored slots show distinct items, in a uniformly random order). So the marginal
    probability of what a slot shows (the contract's propensity) is 1 - epsilon for its popular item and
    epsilon / M for each other item: every item has a positive chance at every position.
    """
    n_items = len(counts)
    k = min(top_k, n_items // 2)  # at least K others, so a user's explored slots can all differ
    if k == 0:
        return np.empty((n_users, 0), np.int64), np.empty((n_users, 0))
    top = np.argsort(-counts, kind="stable")[:k]
    others = np.setdiff1d(np.arange(n_items), top)  # integer positions: a sorted merge, no string compare
    m = len(others)
    explore = rng.random((n_users, k)) < epsilon
    # A uniform random k-subset of the others per user, in random order: the k smallest of m uniforms.
    keys = rng.random((n_users, m))
    pick = np.argpartition(keys, k - 1, axis=1)[:, :k] if k < m else np.argsort(keys, axis=1)[:, :k]
    pick = np.take_along_axis(pick, np.argsort(np.take_along_axis(keys, pick, axis=1), axis=1), axis=1)
    lists = np.where(explore, others[pick], top[None, :])
    propensity = np.where(explore, epsilon / m, 1.0 - epsilon)
    return lists.astype(np.int64), propensity


def _item_counts(events: pa.Table, item_ids: np.ndarray) -> np.ndarray:
    """[n_items] events per catalogue position of ``events``' item ids."""
    position = pc.index_in(events.column(schema.ITEM_ID), value_set=pa.array(item_ids, pa.string()))
    position = position.drop_null().to_numpy(zero_copy_only=False)
    return np.bincount(position, minlength=len(item_ids)).astype(np.float64)


def _session_names(user_ids: np.ndarray, plan: _SessionPlan, *, suffix: str) -> Callable[[np.ndarray], list[str]]:
    """Session ids of planned sessions: ``<user>[-<suffix>]-s<ordinal>``, computed for the used ones only."""
    session_user = np.repeat(np.arange(len(plan.count)), plan.count)
    ordinal = np.arange(len(session_user)) - plan.offset[session_user]
    infix = f"-{suffix}" if suffix else ""
    return lambda used: [f"{user_ids[session_user[s]]}{infix}-s{ordinal[s]:03d}" for s in used]


def _ids(index: np.ndarray, names: np.ndarray) -> pa.Array:
    dictionary = pa.array(names, pa.string())
    return pa.DictionaryArray.from_arrays(pa.array(index, pa.int32()), dictionary).cast(pa.string())


# ---------------------------------------------------------------------------------------------
# Environment for simulated policy evaluation.


@dataclass(frozen=True)
class StepResult:
    """What every simulated user did in one environment step (arrays of length n_users)."""

    item: np.ndarray
    """Catalogue index (0-based) of the item the user interacted with."""
    event_type: np.ndarray
    """Deepest event reached on it: view, add_to_cart or purchase (str objects)."""
    event_code: np.ndarray
    """schema.EVENT_CODE of event_type (int8)."""
    reward: np.ndarray
    """Reward of event_type (rewards of the environment)."""
    from_slate: np.ndarray
    """Whether the item was among the user's recommendations."""
    session_end: np.ndarray
    """Whether the user's session ended with this step (the next step starts a new one, later)."""


class ShopEnvironment:
    """Simulated users who see recommendations and choose by the shop's hidden choice model.

    Each step every user views one item (a recommended one with boosted probability), and maybe
    carts and buys it, exactly as in the logs (a purchase here is immediate, not deferred to
    checkout). Sessions end and restart as in the logs; time passes between them, so satiation
    after a purchase wears off. The clock starts at the end of the generated window.
    """

    def __init__(
        self, simulator: ShopSimulator, seed: int, *, rewards: Mapping[str, float] | None = None
    ) -> None:
        self.simulator = simulator
        self.model = simulator.model
        self.rewards = dict(DEFAULT_REWARDS if rewards is None else rewards)
        unknown = set(self.rewards) - set(schema.EVENT_TYPES)
        if unknown:
            raise ValueError(
                f"environment rewards: unknown event type(s) {sorted(unknown)}; known {schema.EVENT_TYPES}"
            )
        self._reward_by_code = reward_by_code(self.rewards)
        self._rng = np.random.default_rng([simulator.cfg.seed, _ENV_STREAM, seed])
        self._state: ShopperState | None = None

    @property
    def n_items(self) -> int:
        return self.model.n_items

    @property
    def users(self) -> np.ndarray:
        """User index (into the simulator's users) of every row."""
        return self._require_state().user

    def reset(self, n_users: int, *, warmup_steps: int = 5) -> np.ndarray:
        """Start ``n_users`` simulated users (distinct while n_users <= the shop's users) with
        ``warmup_steps`` organic steps, so that history() has something to build a state from.

        Returns their user indices; row i of every later array is user ``reset(...)[i]``.
        """
        m = self.model
        if n_users < 1:
            raise ValueError(f"environment reset: n_users must be >= 1, got {n_users}")
        users = self._rng.choice(m.n_users, size=n_users, replace=n_users > m.n_users)
        self._state = ShopperState.fresh(m, users)
        self._rows = np.arange(n_users)
        self._now = m.window_s + self._rng.uniform(0.0, _DAY_S, size=n_users)
        self._session_over = np.zeros(n_users, bool)
        self._history_item = np.full((n_users, HISTORY_LEN), -1, np.int64)
        self._history_code = np.zeros((n_users, HISTORY_LEN), np.int8)
        self._history_len = np.zeros(n_users, np.int64)
        start_sessions(m, self._state, self._rows, self._rng)
        for _ in range(warmup_steps):
            self.step(None)
        return users

    def step(self, recommendations: np.ndarray | None) -> StepResult:
        """Show each user their row of ``recommendations`` [n_users, K] (catalogue indices; negative =
        empty slot; None = no recommendations) and let them make their next choice."""
        state, rows = self._require_state(), self._rows
        slate = None if recommendations is None else self._check_slate(recommendations)
        restart = rows[self._session_over]
        if restart.size:
            mean_gap = _DAY_S / np.maximum(self.model.activity[state.user[restart]], 1e-3)
            self._now[restart] += np.maximum(MIN_SESSION_GAP_S, self._rng.exponential(mean_gap))
            start_sessions(self.model, state, restart, self._rng)
        self._now += _gaps(self._rng, VIEW_GAP_MEDIAN_S, len(rows))
        step = interact(self.model, state, rows, self._now, self._rng, slate)
        self._now += np.where(step.carted, CART_GAP_MEDIAN_S, 0.0) + np.where(
            step.bought, BUY_GAP_MEDIAN_S, 0.0
        )

        code = np.where(step.bought, _CODE_PURCHASE, np.where(step.carted, _CODE_CART, _CODE_VIEW)).astype(
            np.int8
        )
        self._remember(rows, step.item, _CODE_VIEW)
        self._remember(rows[step.carted], step.item[step.carted], _CODE_CART)
        self._remember(rows[step.bought], step.item[step.bought], _CODE_PURCHASE)
        state.budget[rows] -= 1 + step.carted + step.bought
        self._session_over = state.budget <= 0
        from_slate = np.zeros(len(rows), bool) if slate is None else (slate == step.item[:, None]).any(axis=1)
        return StepResult(
            item=step.item,
            event_type=np.array(schema.EVENT_TYPES, dtype=object)[code - 1],
            event_code=code,
            reward=self._reward_by_code[code],
            from_slate=from_slate,
            session_end=self._session_over.copy(),
        )

    def history(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """(item indices, event codes) of row ``row``'s last HISTORY_LEN interactions, oldest first."""
        self._require_state()
        n = min(int(self._history_len[row]), HISTORY_LEN)
        slots = (self._history_len[row] - n + np.arange(n)) % HISTORY_LEN
        return self._history_item[row, slots].copy(), self._history_code[row, slots].copy()

    def histories(self, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Every row's last ``max_len`` interactions as [n_users, max_len] arrays, oldest first and
        most recent in the last column; left padding is item -1 and event code 0."""
        self._require_state()
        if not 1 <= max_len <= HISTORY_LEN:
            raise ValueError(f"histories: max_len must be in 1..{HISTORY_LEN}, got {max_len}")
        back = np.arange(max_len)[::-1]  # column j holds the (max_len - 1 - j)-th most recent
        index = self._history_len[:, None] - 1 - back
        valid = index >= 0
        slots = np.where(valid, index, 0) % HISTORY_LEN
        rows = self._rows[:, None]
        items = np.where(valid, self._history_item[rows, slots], -1)
        codes = np.where(valid, self._history_code[rows, slots], 0).astype(np.int8)
        return items, codes

    def _remember(self, rows: np.ndarray, items: np.ndarray, code: int) -> None:
        slot = self._history_len[rows] % HISTORY_LEN
        self._history_item[rows, slot] = items
        self._history_code[rows, slot] = code
        self._history_len[rows] += 1

    def _check_slate(self, recommendations: np.ndarray) -> np.ndarray:
        slate = np.asarray(recommendations)
        n_users = len(self._rows)
        if slate.ndim != 2 or slate.shape[0] != n_users or not np.issubdtype(slate.dtype, np.integer):
            raise ValueError(
                f"environment step: recommendations must be an integer array [n_users={n_users}, K], "
                f"got {slate.dtype} {slate.shape}"
            )
        if slate.size and slate.max() >= self.n_items:
            raise ValueError(
                f"environment step: item index {slate.max()} out of range; the catalogue has {self.n_items} items"
            )
        return slate

    def _require_state(self) -> ShopperState:
        if self._state is None:
            raise RuntimeError("environment: call reset(n_users) before step() or history()")
        return self._state


# ---------------------------------------------------------------------------------------------
# Warehouse.

_PARTITION = re.compile(rf"^{schema.EVENT_DATE}=(\d{{4}}-\d{{2}}-\d{{2}})$")


def write_shop(cfg: Config, *, progress: Callable[[str], object] = print) -> dict:
    """Generate the shop of ``cfg.simulator`` and write raw ``items`` and ``events`` (one partition
    per day, every day of the window even if empty) to the warehouse, replacing the previous shop.

    Returns counts for logs and XCom: events, items, users (with at least one event), days,
    first_date and last_date (ISO dates).
    """
    started = time.perf_counter()
    simulator = ShopSimulator(cfg.simulator)
    shop = simulator.live()
    progress(
        f"simulated {shop.history.num_rows} events of {cfg.simulator.n_users} users in {time.perf_counter() - started:.1f}s"
        + (
            f"; the last {simulator.logged_days} days shown {logging_policy_name(cfg.simulator)} lists "
            f"({shop.impressions.num_rows} impressions)"
            if simulator.logged_days
            else ""
        )
    )
    return write_window(cfg, simulator, shop.history, impressions=shop.impressions, progress=progress)


def write_window(
    cfg: Config,
    simulator: ShopSimulator,
    events: pa.Table,
    *,
    impressions: pa.Table | None = None,
    progress: Callable[[str], object] = print,
) -> dict:
    """Write the simulator's catalogue and its window's ``events`` (with event_date) to the warehouse,
    one partition per day (empty days too), replacing the previous shop; the counts of ``write_shop``.

    ``impressions``, if given, replace the impressions table too: one shown_date partition per day
    they cover, and no other (a previous shop's impressions would be credited with this shop's events).
    """
    items = simulator.items_table()
    storage.write_partition(items, cfg.layout.table(schema.ITEMS))

    days = [simulator.first_date + dt.timedelta(days=d) for d in range(simulator.cfg.n_days)]
    event_date = events.column(schema.EVENT_DATE).to_numpy()
    event_columns = events.drop_columns([schema.EVENT_DATE])
    bounds = np.searchsorted(
        event_date, np.array(days + [days[-1] + dt.timedelta(days=1)], dtype="datetime64[D]")
    )
    every = max(1, len(days) // 7)
    for i, day in enumerate(days):
        part = event_columns.slice(bounds[i], bounds[i + 1] - bounds[i])
        storage.write_partition(part, cfg.layout.partition(schema.EVENTS, str(day)))
        if (i + 1) % every == 0 or i + 1 == len(days):
            progress(f"wrote events up to {day} ({i + 1}/{len(days)} days, {int(bounds[i + 1])} events)")
    _remove_stale_partitions(cfg, schema.EVENTS, {str(day) for day in days}, progress)
    shown_days = _write_impressions(cfg, impressions, progress) if impressions is not None else []
    return {
        "events": events.num_rows,
        "impressions": 0 if impressions is None else impressions.num_rows,
        "impression_days": len(shown_days),
        "items": items.num_rows,
        "users": pc.count_distinct(events.column(schema.USER_ID)).as_py(),
        "days": len(days),
        "first_date": str(days[0]),
        "last_date": str(days[-1]),
    }


def _write_impressions(cfg: Config, impressions: pa.Table, progress: Callable[[str], object]) -> list[str]:
    """One partition per shown_date (the UTC day of shown_time) of ``impressions``; returns those days."""
    day = pc.cast(pc.cast(impressions.column(schema.SHOWN_TIME), pa.timestamp("us")), pa.date32())
    days = sorted({str(d) for d in pc.unique(day).to_pylist()})
    for shown_date in days:
        part = impressions.filter(pc.equal(day, pa.scalar(dt.date.fromisoformat(shown_date), pa.date32())))
        storage.write_partition(part, cfg.layout.partition(schema.IMPRESSIONS, shown_date))
    _remove_stale_partitions(cfg, schema.IMPRESSIONS, set(days), progress)
    if days:
        progress(f"wrote {impressions.num_rows} impressions of the logging policy, {days[0]}..{days[-1]}")
    return days


def _remove_stale_partitions(cfg: Config, table: str, keep: set[str], progress: Callable[[str], object]) -> None:
    """Partitions of a previous shop outside the new one's days would mix two shops: remove them."""
    root = Path(cfg.layout.table(table))
    if not root.is_dir():
        return
    partition = re.compile(rf"^{cfg.layout.partition_column(table)}=(\d{{4}}-\d{{2}}-\d{{2}})$")
    for folder in sorted(root.iterdir()):
        match = partition.match(folder.name)
        if match and match.group(1) not in keep:
            shutil.rmtree(folder)
            progress(f"removed stale partition {folder} (outside the new shop's window)")


def warehouse_has_events(cfg: Config) -> bool:
    """Whether the raw events table has at least one partition with a Parquet file."""
    root = Path(cfg.layout.table(schema.EVENTS))
    if not root.is_dir():
        return False
    return any(
        _PARTITION.match(folder.name) and any(folder.glob("*.parquet"))
        for folder in root.iterdir()
        if folder.is_dir()
    )
