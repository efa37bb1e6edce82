"""A candidate policy's lists for a night: what a registry model, or the popularity policy, would
have ranked from night D - 1's user states for the users shown something on day D.

Owns: the night's inputs those lists are ranked from (``NightInputs``: item index, user states,
action counts, read once per night and shared), a model's greedy lists (through the scoring
engine, so they are the lists scoring would have written without exploration) and the popularity
policy's lists. The off-policy night (``ope_night``) and the shop loop both take their candidates
from here, so both value the same policies.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dql_model.config import Config
from dql_model.contract import schema
from dql_model.warehouse import data

POPULARITY = "popularity"
"""The name of the popularity policy's candidate."""

ListSource = Callable[[str, pa.Array], pa.Table]
"""(shown day D, user ids) -> a candidate's lists for those users on day D: a table with columns
user_id, rank (1-based) and item_id, one row per slot; a user without a list has no rows."""


@dataclass
class NightInputs:
    """What night D - 1 ranked from, per night, loaded once and shared by every candidate."""

    cfg: Config
    exclude: str
    tonight: str
    """The run date: its partitions stand in for a night's that are gone."""
    _cache: dict[str, Any] = field(default_factory=dict)

    def has_states(self, night: str) -> bool:
        return bool(data.existing_parquet_files(self.cfg.layout.partition(schema.USER_STATES, night)))

    def items(self, night: str, fallback: data.ItemFeatures) -> data.ItemFeatures:
        """That night's item index (the item_idx its user states use); tonight's when it is gone."""
        folder = self.cfg.layout.partition(schema.ITEM_INDEX, night)
        if not data.existing_parquet_files(folder):
            return fallback
        return self._cached(
            ("items", night),
            lambda: data.load_item_features(folder, price_buckets=self.cfg.model.price_buckets),
        )

    def popularity(self, night: str, n_items: int) -> np.ndarray:
        """Action counts of that night's transitions (train and validation: the scoring fallback's);
        tonight's when that partition is gone."""
        folder = self.cfg.layout.partition(schema.TRANSITIONS, night)
        if not data.existing_parquet_files(folder):
            folder = self.cfg.layout.partition(schema.TRANSITIONS, self.tonight)
        splits = (schema.TRAIN, schema.VALIDATION)
        return self._cached(
            ("popularity", night, n_items), lambda: data.action_counts(folder, n_items=n_items, split=splits)
        )

    def states(self, night: str, users: pa.Array) -> data.UserStates:
        """That night's states of ``users`` (those it has), read with the exclusion rule."""
        from dql_model.scoring.ranking import take_states

        folder = self.cfg.layout.partition(schema.USER_STATES, night)
        every = self._cached(
            ("states", night),
            lambda: data.load_user_states(folder, max_len=self.cfg.etl.max_len, exclude=self.exclude),
        )
        keep = np.flatnonzero(pc.is_in(every.user_id, value_set=users).to_numpy(zero_copy_only=False))
        return take_states(every, keep)

    def _cached(self, key, load):
        if key not in self._cache:
            self._cache[key] = load()
        return self._cache[key]


def previous_night(day: str) -> str:
    """The run date whose published lists were shown on ``day``."""
    return (dt.date.fromisoformat(day) - dt.timedelta(days=1)).isoformat()


def next_day(day: str) -> str:
    """The day after: a slot's attribution window may reach into it."""
    return (dt.date.fromisoformat(day) + dt.timedelta(days=1)).isoformat()


def model_lists(
    model,
    version: str,
    inputs: NightInputs,
    tonight: data.ItemFeatures,
    *,
    top_k: int,
    source: str = schema.SOURCE_DQN,
) -> ListSource:
    """A registry model's greedy top-K for day D, ranked as the scoring task would have on night D - 1."""
    from dql_model.scoring.engines import score_users
    from dql_model.scoring.policy import Policy

    policy = Policy(top_k=top_k, exclude=inputs.exclude)

    def lists(day: str, users: pa.Array) -> pa.Table:
        night = previous_night(day)
        items = inputs.items(night, tonight)
        return score_users(
            model,
            inputs.states(night, users),
            items,
            policy,
            batch_size=inputs.cfg.score.batch_size,
            popularity=inputs.popularity(night, items.n_items),
            model_version=version,
            generated_at=dt.datetime.fromisoformat(night).replace(tzinfo=dt.UTC),
            source=source,
        )

    return lists


def popularity_lists(inputs: NightInputs, tonight: data.ItemFeatures, *, top_k: int) -> ListSource:
    """The popularity policy (``dql_model.scoring.popularity``) for day D: night D - 1's action counts,
    its available items, each user's excluded items masked; the scoring fallback's overall order."""
    from dql_model.scoring.popularity import popular_lists
    from dql_model.scoring.ranking import Catalogue

    def lists(day: str, users: pa.Array) -> pa.Table:
        night = previous_night(day)
        items = inputs.items(night, tonight)
        ranked = Catalogue.from_features(items, inputs.popularity(night, items.n_items)).ranked(0)
        states = inputs.states(night, users)
        user, rank, item = popular_lists(ranked, states.excluded_indptr, states.excluded_items, top_k)
        return pa.table(
            {
                schema.USER_ID: states.user_id.take(pa.array(user, pa.int64())),
                schema.RANK: pa.array(rank, pa.int32()),
                schema.ITEM_ID: pa.array(items.item_ids[item].tolist(), pa.string()),
            }
        )

    return lists
