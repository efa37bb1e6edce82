"""The raw events' row rules: the one table the raw data gate and the Spark cleaning job both read.

Owns: which row rules the events contract has, in which order a row is judged, the columns each
reads, what it means, and how the gate counts it. ``dql_model.warehouse.quality`` checks each rule with Great
Expectations before the Spark jobs (``GX_CHECKS`` there); ``jobs/clean_events.py`` quarantines the rows
that break one (``_CONDITIONS`` there). A test checks that both implement exactly the rules below, so a
rule added here and forgotten in one of them fails the build.

Threshold semantics (the gate, per partition): a rule broken by at most ``quality.max_bad_fraction``
of the partition's rows is tolerated, because the Spark job quarantines those rows; broken by more,
it fails the run before anything is built. Each rule is counted on its own, over all rows. Schema
failures (a missing column, a column of the wrong type) are not row rules: they always fail.
"""

from __future__ import annotations

from dataclasses import dataclass

from dql_model.contract import schema


@dataclass(frozen=True)
class RowRule:
    """One rule of the events contract that a row can break."""

    name: str
    """Written in the quarantine's ``rule`` column for a row that breaks it first."""
    columns: tuple[str, ...]
    """The columns it reads."""
    description: str
    """What breaks it, as the README and the errors say it."""


RAW_ROW_RULES = (
    RowRule(
        schema.RULE_NULL_ID,
        (schema.USER_ID, schema.ITEM_ID, schema.EVENT_TIME),
        "user_id, item_id or event_time is null, or an id is blank",
    ),
    RowRule(schema.RULE_BAD_EVENT_TYPE, (schema.EVENT_TYPE,), f"event_type is null or not one of {schema.EVENT_TYPES}"),
    RowRule(
        schema.RULE_UNKNOWN_ITEM,
        (schema.ITEM_ID,),
        "item_id is not in the catalogue (nor among the items indexed before)",
    ),
    RowRule(
        schema.RULE_BAD_VALUE,
        (schema.EVENT_TYPE, schema.VALUE),
        f"a rating whose value is null or outside {list(schema.RATING_BOUNDS)}",
    ),
    RowRule(
        schema.RULE_TIME_OUT_OF_RANGE,
        (schema.EVENT_TIME,),
        "event_time is at or after the end (UTC) of the partition's day (a future event), or more than "
        "etl.lookback_days days before its start (later than the tolerated lateness)",
    ),
    RowRule(
        schema.RULE_DUPLICATE,
        (schema.EVENT_TIME, schema.USER_ID, schema.ITEM_ID, schema.EVENT_TYPE, schema.VALUE, schema.SESSION_ID),
        "an exact copy of an earlier row that passed every other rule (the first copy is kept)",
    ),
)
"""In the order a row is judged: the first rule it breaks is the one it is quarantined under."""
RULE_ORDER = tuple(rule.name for rule in RAW_ROW_RULES)


def rule(name: str) -> RowRule:
    """The rule called ``name``."""
    for candidate in RAW_ROW_RULES:
        if candidate.name == name:
            return candidate
    raise KeyError(f"no raw events rule {name!r}; the rules are {list(RULE_ORDER)}")
