"""What scoring's masks took from the users, and who was left with fewer than top_k candidates.

Owns the mask reasons and their counts (``MaskCounts``); ``ranking.Ranker.count_masks`` fills one per
batch of users, both engines add them up and carry them in the ``ScoringSummary``; the task log, the
report and ``dqlrec summary`` print them with ``describe``. No torch here: the report reads it.

A (user, item) pair of tonight's catalogue (items with an id) that a user's list cannot hold is
counted once, under the first reason that applies, in this order:

1. the ``score.exclude`` rule: ``already_purchased`` or ``already_interacted`` (none with ``none``);
2. ``unavailable``: not available tonight;
3. ``new_since_training``: available but newer than the model, so the model cannot score it; only
   for users the model ranks (the popularity fallback serves new items like any other).

A user with fewer than top_k candidates left gets a short list: the ranker never pads a model's list
with fallback items, and the fallback has nothing more to give. ``short_lists`` counts those users
by who ranked them: ``model`` (users whose state has an item the model knows) or ``fallback``.
"""

from __future__ import annotations

from dataclasses import dataclass

EXCLUDE_REASONS = {"purchased": "already_purchased", "interacted": "already_interacted"}
"""``score.exclude`` rule -> its mask reason (``none`` masks nothing)."""
UNAVAILABLE = "unavailable"
NEW_SINCE_TRAINING = "new_since_training"
RANKED_BY = ("model", "fallback")
"""Who ranked a user's list: the keys of ``MaskCounts.short_lists``."""


def mask_reasons(exclude: str) -> tuple[str, ...]:
    """The reasons counted under an exclusion rule, in the order a pair is attributed to them."""
    rule = EXCLUDE_REASONS.get(exclude)
    return (*((rule,) if rule else ()), UNAVAILABLE, NEW_SINCE_TRAINING)


@dataclass(frozen=True)
class MaskCounts:
    """(user, item) pairs masked per reason, and users left with fewer than top_k candidates."""

    masked: dict[str, int]
    """reason (``mask_reasons``) -> (user, item) pairs."""
    short_lists: dict[str, int]
    """``model`` / ``fallback`` -> users with fewer than top_k candidates (they get short lists)."""

    @classmethod
    def zero(cls, exclude: str) -> MaskCounts:
        return cls({reason: 0 for reason in mask_reasons(exclude)}, {who: 0 for who in RANKED_BY})

    def __add__(self, other: MaskCounts) -> MaskCounts:
        if self.masked.keys() != other.masked.keys():
            raise ValueError(
                f"mask counts of different rules: {sorted(self.masked)} and {sorted(other.masked)}"
            )
        return MaskCounts(
            {k: self.masked[k] + other.masked[k] for k in self.masked},
            {k: self.short_lists[k] + other.short_lists[k] for k in self.short_lists},
        )

    def flat(self) -> dict[str, int]:
        """``masked/<reason>`` and ``short_lists/<who>`` -> count: one row each in the Spark engine's tally."""
        return {
            **{f"masked/{k}": int(v) for k, v in self.masked.items()},
            **{f"short_lists/{k}": int(v) for k, v in self.short_lists.items()},
        }

    @classmethod
    def from_flat(cls, counts: dict[str, int], exclude: str) -> MaskCounts:
        """The inverse of ``flat``; missing keys are zero (a tally over no users)."""
        zero = cls.zero(exclude)
        unknown = set(counts) - set(zero.flat())
        if unknown:
            raise ValueError(f"unknown mask counters {sorted(unknown)} for exclusion rule {exclude!r}")
        return cls(
            {k: int(counts.get(f"masked/{k}", 0)) for k in zero.masked},
            {k: int(counts.get(f"short_lists/{k}", 0)) for k in zero.short_lists},
        )


def describe(masked: dict[str, int], short_lists: dict[str, int], top_k: int) -> str:
    """One line for the task log, the report and the summary ("" for a summary without counts)."""
    if not masked and not short_lists:
        return ""
    order = [*EXCLUDE_REASONS.values(), UNAVAILABLE, NEW_SINCE_TRAINING]  # JSON files sort their keys
    ranked = sorted(masked.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order))
    pairs = ", ".join(f"{reason.replace('_', ' ')} {n:,}" for reason, n in ranked) or "none"
    short = sum(short_lists.values())
    who = ", ".join(f"{short_lists[name]:,} ranked by the {name}" for name in RANKED_BY if short_lists.get(name))
    lists = (
        f"{short:,} {'user' if short == 1 else 'users'} had fewer than {top_k} candidates and got short lists, not padded ({who})"
        if short
        else f"every user had at least {top_k} candidates"
    )
    return f"masked (user, item) pairs: {pairs}; {lists}"
