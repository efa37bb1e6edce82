"""Settings the training step chooses from the night's data when the config leaves them at ``auto``.

One rule so far, for ``model.state_memory`` (the direct path that recalls the latest items of a
user's state, networks.QNetwork): it can only earn where users come back to items they already had
and the published lists may show those items again. The step measures that on the validation
events it judges on: the share whose item is in the user's state and not masked for the user
(``score.exclude``, the same masks the gate and scoring apply). At ``REPEAT_SHARE_MIN`` or more the
path is on (``networks.STATE_MEMORY_ON`` items), below it off.

On the demo shop shoppers view an item again and buy what they carted: the path is on. On a ratings
panel (MovieLens) a user rates a movie once and every rated movie is masked: the share is 0 and the
path off. There it had cost a quarter of NDCG@10 on MovieLens-100K's leave-one-out test (0.078 with
it, 0.103 without: supervised mode trained to convergence on the import's own transitions, the
test items held out before the import, as benchmarks/bench_quality.py does).

The choice and its reason go to the task log, into the model's saved config (a rebuilt model has the
shape it was trained with) and, through the training step's result, into the night's report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dql_model.config import AUTO, Config
from dql_model.learning.networks import STATE_MEMORY_ON
from dql_model.warehouse import data

REPEAT_SHARE_MIN = 0.01
"""Share of validation events repeating a state item that a list may hold, from which state memory is on."""


@dataclass(frozen=True)
class Choice:
    """What the data decided: config overrides (``Config.replace`` form) and one reason per setting."""

    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    reasons: tuple[str, ...] = ()

    def apply(self, cfg: Config) -> Config:
        return cfg.replace(**self.overrides) if self.overrides else cfg

    def line(self) -> str:
        """``settings from the data: model.state_memory=0 (...)``, or "" when nothing was ``auto``."""
        return "settings from the data: " + "; ".join(self.reasons) if self.reasons else ""


def repeat_share(val: data.TransitionBatch, masks: data.Exclusions) -> tuple[int, int]:
    """(validation events whose item is in the user's state and not masked for them, all events)."""
    n = len(val)
    if n == 0:
        return 0, 0
    in_state = (val.state_items == val.action[:, None]).any(axis=1)
    rows, items = masks.pairs(slice(0, len(masks)))
    masked = np.zeros(n, dtype=bool)
    masked[rows[items == val.action[rows]]] = True
    return int((in_state & ~masked).sum()), n


def choose(cfg: Config, val: data.TransitionBatch, masks: data.Exclusions) -> Choice:
    """The ``auto`` settings of ``cfg`` decided on tonight's validation events and masks."""
    if cfg.model.state_memory != AUTO:
        return Choice()
    repeats, n = repeat_share(val, masks)
    if n == 0:  # nothing to measure on (no validation, or a refit): the path stays on, as it always was
        memory, why = STATE_MEMORY_ON, "no validation events to measure repeats on"
    else:
        share = repeats / n
        memory = STATE_MEMORY_ON if share >= REPEAT_SHARE_MIN else 0
        why = (
            f"{share:.1%} of {n} validation events repeat a state item the lists may still hold "
            f"({'at least' if memory else 'under'} {REPEAT_SHARE_MIN:.0%})"
        )
    return Choice({"model": {"state_memory": memory}}, (f"model.state_memory={memory} ({why})",))
