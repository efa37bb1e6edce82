"""The event reward rule: what each logged event earns. The one definition that the Spark job
(``jobs/transitions.py``, for training transitions) and numpy (``dql_model.judging.ope_night``, for
the events that follow a shown list) both evaluate.

- views, add-to-carts and purchases earn a fixed reward each (``etl.reward_*``); a purchase's is
  multiplied by its weight (price / mean catalogue price with ``etl.reward_value_weighted``, else 1);
- a rating v earns ``scale * (v - RATING_MIDPOINT) / RATING_HALF_RANGE`` clipped to [-1, 1], 0 when
  v is missing;
- any other event type earns 0.

``spark_column`` and ``numpy`` are written from the same fields below; ``tests/spark/test_transitions.py``
evaluates both on the same events and holds them equal.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dql_model.contract import schema

if TYPE_CHECKING:  # pyspark is needed only by the Spark job's side of the rule
    from pyspark.sql import Column

FIXED_REWARD_TYPES = (schema.VIEW, schema.ADD_TO_CART, schema.PURCHASE)
"""Event types with a fixed reward per event."""
RATING_MIDPOINT = 3.0
"""A rating of this value earns nothing."""
RATING_HALF_RANGE = 2.0
"""A rating this far from the midpoint earns ``scale`` (before clipping)."""
RATING_CLIP = 1.0
"""A rating's reward is clipped to [-RATING_CLIP, RATING_CLIP]."""


@dataclass(frozen=True)
class RewardRule:
    """The fixed rewards per event type and the rating scale."""

    fixed: Mapping[str, float]
    """Reward per event of each of FIXED_REWARD_TYPES."""
    rating_scale: float = 1.0

    def __post_init__(self) -> None:
        missing = [t for t in FIXED_REWARD_TYPES if t not in self.fixed]
        if missing:
            raise ValueError(f"rewards lacks event type(s) {missing}; give a reward for each of {FIXED_REWARD_TYPES}")

    @classmethod
    def from_config(cls, cfg: Any) -> RewardRule:
        """From a ``dql_model.config.Config`` (its ``etl.reward_*`` fields)."""
        return cls(fixed=cfg.rewards(), rating_scale=cfg.etl.reward_rating_scale)

    def numpy(
        self, event_type: np.ndarray, value: np.ndarray, purchase_weight: np.ndarray | float = 1.0
    ) -> np.ndarray:
        """[events] the reward of each event; ``value`` is the rating (NaN or None when missing)."""
        event_type = np.asarray(event_type, dtype=object)
        out = np.zeros(len(event_type), dtype=np.float64)
        for name in FIXED_REWARD_TYPES:
            out[event_type == name] = float(self.fixed[name])
        is_purchase = event_type == schema.PURCHASE
        weight = np.broadcast_to(np.asarray(purchase_weight, dtype=np.float64), out.shape)
        out[is_purchase] *= weight[is_purchase]
        values = np.asarray(value, dtype=np.float64)
        rating = np.nan_to_num(float(self.rating_scale) * (values - RATING_MIDPOINT) / RATING_HALF_RANGE)
        is_rating = event_type == schema.RATING
        out[is_rating] = np.clip(rating, -RATING_CLIP, RATING_CLIP)[is_rating]
        return out

    def spark_column(self, purchase_weight: Column | None = None) -> Column:
        """The same rule as a Spark column over ``event_type`` and ``value``."""
        from pyspark.sql import functions as F

        weight = F.lit(1.0) if purchase_weight is None else purchase_weight
        event_type = F.col(schema.EVENT_TYPE)
        rating = F.coalesce(
            F.lit(float(self.rating_scale)) * (F.col(schema.VALUE) - RATING_MIDPOINT) / RATING_HALF_RANGE,
            F.lit(0.0),
        )
        fixed = {name: F.lit(float(self.fixed[name])) for name in FIXED_REWARD_TYPES}
        fixed[schema.PURCHASE] = fixed[schema.PURCHASE] * weight
        column = F.when(event_type == FIXED_REWARD_TYPES[0], fixed[FIXED_REWARD_TYPES[0]])
        for name in FIXED_REWARD_TYPES[1:]:
            column = column.when(event_type == name, fixed[name])
        clipped = F.greatest(F.lit(-RATING_CLIP), F.least(F.lit(RATING_CLIP), rating))
        return column.when(event_type == schema.RATING, clipped).otherwise(F.lit(0.0))
