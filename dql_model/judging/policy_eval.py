"""Simulated policy value: each policy recommends to the synthetic shop's simulated shoppers.

The synthetic shop (``simulator.ShopSimulator``) doubles as an environment whose shoppers choose
by the same hidden model that wrote the logs, with an attention boost for recommended items. A
policy here is any evaluate.Scorer: at every step it scores the catalogue from each shopper's
recent history (the environment's, mapped to item_idx), the same masks as nightly scoring are
applied (padding, unavailable items, items the history shows as bought), and its top
``slate`` items are shown. The return of a shopper is the sum of the environment's rewards
(simulator.DEFAULT_REWARDS: a fixed yardstick, whatever rewards the model was trained with)
over ``steps`` steps; a policy's value is the mean return per shopper.

When a list is ranked (``refresh``):
- ``session``: when the evaluation starts and whenever a shopper starts a new session, from the
  history at that moment; the list stays on screen for the whole session. This is how the
  product's lists are consumed: ranked from the state before the visit (the nightly batch ranks
  even less often), not re-ranked after every click.
- ``step``: before every step, from the history including the click just made. A per-step policy
  can chase the item the shopper has just carted; in the hidden model its purchase was decided
  when it was carted, so a click on it earns nothing. Both protocols are reported.

Every policy meets the same seeds (same shoppers and warm-up histories), and the confidence
interval is over seeds: mean +- t(0.975, seeds - 1) * sd / sqrt(seeds). Differences to a
reference policy are paired by seed, so their intervals are tighter than the two separate ones.

The environment speaks 0-based catalogue positions and knows nothing of the item index; the
mapping to and from item_idx goes through item ids here (the simulator's API has no such map).
"""

from __future__ import annotations

import time
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from dql_model.config import Config, SimRefresh
from dql_model.contract import schema
from dql_model.evaluation import metrics
from dql_model.evaluation.evaluate import Scorer
from dql_model.evaluation.intervals import mean_ci
from dql_model.simulation.simulator import ShopSimulator, shop_item_ids
from dql_model.warehouse import data

REFRESH_MODES = typing.get_args(SimRefresh)
"""When a simulated shopper's list is re-ranked (module docstring); eval.sim_refresh picks them."""
PURCHASE_CODE = schema.EVENT_CODE[schema.PURCHASE]
CART_CODE = schema.EVENT_CODE[schema.ADD_TO_CART]


@dataclass(frozen=True)
class CatalogueMap:
    """item_idx <-> environment catalogue position, through item ids."""

    env_to_idx: np.ndarray
    """[env n_items] item_idx of each catalogue position; 0 when the item index lacks it."""
    idx_to_env: np.ndarray
    """[n_items + 1] catalogue position of each item_idx; -1 when the shop lacks it."""

    @classmethod
    def build(cls, env_item_ids: np.ndarray, items: data.ItemFeatures) -> CatalogueMap:
        position = {item_id: pos for pos, item_id in enumerate(env_item_ids)}
        idx_to_env = np.array([position.get(i, -1) if i is not None else -1 for i in items.item_ids])
        idx_to_env[0] = -1
        env_to_idx = np.zeros(len(env_item_ids), dtype=np.int64)
        known = idx_to_env >= 0
        env_to_idx[idx_to_env[known]] = np.flatnonzero(known)
        return cls(env_to_idx=env_to_idx, idx_to_env=idx_to_env)

    def states(self, env_items: np.ndarray, env_codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Environment histories (-1 = padding) -> left-padded item_idx and event-code states."""
        idx = np.where(env_items >= 0, self.env_to_idx[np.maximum(env_items, 0)], 0)
        codes = np.where(idx > 0, env_codes, 0).astype(np.int64)
        return data.left_align(idx, codes)


def recommend(
    scorer: Scorer,
    state_items: np.ndarray,
    state_events: np.ndarray,
    *,
    allowed: np.ndarray,
    slate: int,
    exclude: str = "purchased",
) -> np.ndarray:
    """Top-``slate`` item_idx per row after the masks; -1 where fewer items are left.

    ``exclude`` (a ``data.EXCLUDE_RULES`` rule) masks the purchases in the state, every item in it,
    or nothing: the shopper's history here is the state itself.
    """
    scores = np.array(scorer.scores(state_items, state_events), dtype=np.float64)
    scores[:, ~allowed] = -np.inf
    if exclude != "none":
        masked = state_items > 0 if exclude == "interacted" else state_events == PURCHASE_CODE
        rows, cols = np.nonzero(masked)
        scores[rows, state_items[rows, cols]] = -np.inf
    top, values = metrics.top_k(scores, slate)
    return np.where(np.isfinite(values), top, -1)


def run_policy(
    scorer: Scorer,
    simulator: ShopSimulator,
    catalogue: CatalogueMap,
    allowed: np.ndarray,
    *,
    seed: int,
    users: int,
    steps: int,
    slate: int,
    max_len: int,
    exclude: str = "purchased",
    refresh: str = "session",
) -> dict[str, float]:
    """One seed of one policy: mean return, purchases, add-to-carts and slate clicks per shopper,
    and how many lists were ranked per shopper."""
    _check_refresh(refresh)
    env = simulator.environment(seed)
    env.reset(users)
    total = np.zeros(users)
    shown = np.full((users, slate), -1, dtype=np.int64)
    stale = np.ones(users, dtype=bool)  # rows whose list is ranked before this step
    purchases = carts = clicks = rankings = 0
    for _ in range(steps):
        rows = np.flatnonzero(stale)
        if rows.size:
            history_items, history_codes = env.histories(max_len)
            state_items, state_events = catalogue.states(history_items[rows], history_codes[rows])
            top = recommend(
                scorer, state_items, state_events, allowed=allowed, slate=slate, exclude=exclude
            )
            shown[rows] = np.where(top > 0, catalogue.idx_to_env[np.maximum(top, 0)], -1)
            rankings += rows.size
        step = env.step(shown)
        total += step.reward
        purchases += int((step.event_code == PURCHASE_CODE).sum())
        carts += int((step.event_code >= CART_CODE).sum())
        clicks += int(step.from_slate.sum())
        stale = step.session_end if refresh == "session" else np.ones(users, dtype=bool)
    return {
        "return": float(total.mean()),
        "purchases": purchases / users,
        "carts": carts / users,
        "slate_share": clicks / (users * steps),
        "lists": rankings / users,
    }


def _check_refresh(refresh: str) -> None:
    if refresh not in REFRESH_MODES:
        raise ValueError(f"simulation refresh {refresh!r} is not one of {REFRESH_MODES}")


def shop_items_known(cfg: Config, items: data.ItemFeatures) -> tuple[int, int]:
    """(how many of the synthetic shop's items the item index has, the shop's item count): the
    simulation is meaningful only on the demo shop's own catalogue."""
    item_ids = shop_item_ids(cfg.simulator)
    return int((CatalogueMap.build(item_ids, items).env_to_idx > 0).sum()), len(item_ids)


def simulate_policies(
    policies: Mapping[str, Scorer],
    cfg: Config,
    items: data.ItemFeatures,
    *,
    users: int | None = None,
    steps: int | None = None,
    seeds: int | None = None,
    slate: int | None = None,
    refresh: str | None = None,
    reference: str | None = None,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Simulated value of every policy (defaults from eval.sim_*; ``refresh`` defaults to the
    first of eval.sim_refresh, the headline protocol), as a JSON-able dict:

    ``{"settings": {...}, "policies": {name: {"return": {mean, sd, ci95, low, high, n},
    "purchases": ..., "carts": ..., "slate_share": ..., "per_seed": [...]}},
    "vs_reference": {name: {mean, ci95, ...}}}``, the last one the paired difference
    name - reference over seeds (reference: the first policy by default).
    """
    t = cfg.eval
    users, steps = users or t.sim_users, steps or t.sim_steps
    seeds, slate = seeds or t.sim_seeds, slate or t.sim_slate
    refresh = refresh or t.sim_refresh[0]
    started = time.perf_counter()
    simulator = ShopSimulator(cfg.simulator)
    catalogue = CatalogueMap.build(simulator.item_ids, items)
    allowed = items.available & (catalogue.idx_to_env >= 0)
    max_len = min(cfg.etl.max_len, 50)
    out: dict[str, Any] = {
        "settings": {
            "users": users,
            "steps": steps,
            "seeds": seeds,
            "slate": slate,
            "refresh": refresh,
            "rewards": "simulator default",
        },
        "policies": {},
    }
    for name, scorer in policies.items():
        runs = [
            run_policy(
                scorer,
                simulator,
                catalogue,
                allowed,
                seed=seed,
                users=users,
                steps=steps,
                slate=slate,
                max_len=max_len,
                # The simulated shop sells: score.exclude auto is purchased there, as the ETL job decides.
                exclude="purchased" if cfg.score.exclude == "auto" else cfg.score.exclude,
                refresh=refresh,
            )
            for seed in range(seeds)
        ]
        summary = {key: mean_ci([r[key] for r in runs]) for key in runs[0]}
        summary["per_seed"] = [r["return"] for r in runs]
        out["policies"][name] = summary
        ret = summary["return"]
        progress(f"simulated {name} (lists ranked per {refresh}): return {ret['mean']:.3f} +- {ret['ci95']:.3f} per shopper over {steps} steps")
    reference = reference or next(iter(policies), None)
    if reference in out["policies"]:
        base = np.array(out["policies"][reference]["per_seed"])
        out["reference"] = reference
        out["vs_reference"] = {
            name: mean_ci(np.array(p["per_seed"]) - base)
            for name, p in out["policies"].items()
            if name != reference
        }
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out
