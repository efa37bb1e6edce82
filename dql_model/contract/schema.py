"""The data contract: table names, column names, event types and schemas, in one place.

Spark schemas are DDL strings (no pyspark import needed here); pyarrow schemas are built on
demand. Partition columns (``event_date`` for raw events, ``run_date`` for curated and output
tables) live in the Hive-style folder names, not inside the Parquet files.
"""

from __future__ import annotations

# Event types, and the integer codes the model sees (0 is padding).
VIEW = "view"
ADD_TO_CART = "add_to_cart"
PURCHASE = "purchase"
RATING = "rating"
EVENT_TYPES = (VIEW, ADD_TO_CART, PURCHASE, RATING)
EVENT_CODE = {name: code for code, name in enumerate(EVENT_TYPES, start=1)}
N_EVENT_CODES = len(EVENT_TYPES) + 1

# Tables (dql_model.contract.layout says where each one lives).
EVENTS = "events"
ITEMS = "items"
ITEM_INDEX = "item_index"
USER_STATES = "user_states"
TRANSITIONS = "transitions"
QUARANTINE = "quarantine"
IMPORT_QUARANTINE = "import_quarantine"
RECOMMENDATIONS = "recommendations"
IMPRESSIONS = "impressions"
IMPRESSIONS_QUARANTINE = "impressions_quarantine"
"""Impression rows the nightly off-policy evaluation rejected, with the rule and the partition they
came from; one partition per run date, replaced whole on rerun."""
"""Optional raw input: what a recommender showed, one row per (request, position); partitioned by
``shown_date`` (``SHOWN_DATE``) like events by event_date. ``propensity`` is the marginal probability
that the serving policy put that item at that position (what position-based off-policy estimators
need). Rewards are not logged here: off-policy evaluation joins the events that followed
(``dql_model.judging.ope_night``)."""

# Columns.
EVENT_TIME = "event_time"
EVENT_DATE = "event_date"
USER_ID = "user_id"
ITEM_ID = "item_id"
EVENT_TYPE = "event_type"
VALUE = "value"
SESSION_ID = "session_id"
CATEGORY_ID = "category_id"
PRICE = "price"
AVAILABLE = "available"
ITEM_IDX = "item_idx"
FIRST_SEEN = "first_seen"
ITEM_SEQ = "item_seq"
EVENT_SEQ = "event_seq"
GAP_SEQ = "gap_seq"
PURCHASED = "purchased"
INTERACTED = "interacted"
HISTORY_ITEMS = "history_items"
HISTORY_PURCHASED = "history_purchased"
LAST_EVENT_TIME = "last_event_time"
N_EVENTS = "n_events"
ACTION = "action"
REWARD = "reward"
DONE = "done"
SPLIT = "split"
TRAIN = "train"
VALIDATION = "validation"
RULE = "rule"
SOURCE_PARTITION = "source_partition"
SOURCE_FILE = "source_file"
LINE = "line"
COLUMN = "column"
RAW_VALUE = "raw_value"
RECORD = "record"
RUN_DATE = "run_date"
RANK = "rank"
SCORE = "score"
SOURCE = "source"
PROPENSITY = "propensity"
REQUEST_ID = "request_id"
POSITION = "position"
TARGET_PROPENSITY = "target_propensity"
"""A candidate policy's marginal probability of the logged item at the logged position (off-policy evaluation)."""
MODEL_VERSION = "model_version"
SHOWN_TIME = "shown_time"
SHOWN_DATE = "shown_date"
"""Partition column of impressions (the UTC day of shown_time)."""
GENERATED_AT = "generated_at"

# A rating's value must lie in this closed range (the reward maps it to [-1, 1]).
RATING_BOUNDS = (0.5, 5.0)
"""Ratings the contract accepts: MovieLens' scale, half stars from 0.5 (ML-10M and later) included."""

SOURCE_DQN = "dqn"
SOURCE_FALLBACK = "fallback_popular"
SOURCE_EXPLORE = "explore"
SOURCE_SUPERVISED = "supervised"
SOURCE_SQN = "sqn"
SOURCES = (SOURCE_DQN, SOURCE_FALLBACK, SOURCE_EXPLORE, SOURCE_SUPERVISED, SOURCE_SQN)
"""What produced a recommendation row: the Q-network (dqn), a network trained in train.mode
supervised, a two-headed network of train.mode sqn (ranking by its validated blend of the Q and
next-item heads), the popularity fallback, or an exploration draw."""
MODEL_SOURCES = {"dqn": SOURCE_DQN, "supervised": SOURCE_SUPERVISED, "sqn": SOURCE_SQN}
"""train.mode of a model -> the source of the rows it ranks."""

# Quarantine rules (the name of the rule a row failed).
RULE_NULL_ID = "null_id"
RULE_UNKNOWN_ITEM = "unknown_item"
RULE_BAD_EVENT_TYPE = "bad_event_type"
RULE_TIME_OUT_OF_RANGE = "event_time_out_of_range"
RULE_BAD_VALUE = "bad_value"
RULE_DUPLICATE = "duplicate"
# Rules only the impressions check applies (dql_model.judging.ope_night; it also uses null_id and duplicate).
RULE_BAD_POSITION = "bad_position"
"""An impression's position is missing or below 1 (positions are 1-based ranks)."""
RULE_BAD_PROPENSITY = "bad_propensity"
"""An impression's propensity is missing or outside (0, 1]."""
# Rules only `dqlrec import` applies (it also uses null_id, bad_event_type and bad_value above).
RULE_BAD_TIMESTAMP = "bad_timestamp"
RULE_MALFORMED_ROW = "malformed_row"

# Validation metric names: eval/<kind>@<k> over all events, eval/<event_type>/<kind>@<k> per type.
METRIC_NAMESPACE = "eval"
RANKING_METRICS = ("hr", "ndcg", "mrr")
"""Kinds of ranking metric (``dql_model.evaluation.metrics`` computes each); higher is better."""
LIST_METRICS = ("coverage", "seen", "purchased")
"""Kinds of list metric: share of the catalogue listed, share of slots already in the state or bought."""
LOWER_IS_BETTER = ("seen", "purchased")
"""Metric kinds where a smaller value is the better list: slots spent on what the user already had."""
NEW_ITEMS = "new_items"
"""Segment of the new-item figures (``evaluate.evaluate_new_items``): ``eval/new_items/hr@10`` and so
on, named like an event type's; descriptive only, so not a metric the gate or early stopping accepts."""
NEW_ITEM_LIST_METRICS = ("slots", "coverage")
"""Share of top-k slots holding a new item, share of the new items in at least one top-k."""


OPE_NAMESPACE = "ope"
OPE_ESTIMATORS = ("ips", "snips", "dr")
"""Off-policy estimators of the nightly evaluation (``dql_model.evaluation.ope``); ``ope/<estimator>`` names the
value of a candidate's estimate (expected slate reward per request, higher is better)."""


def ope_metric_name(estimator: str) -> str:
    """``ope/dr``: the gate metric naming an off-policy estimate's value."""
    return f"{OPE_NAMESPACE}/{estimator}"


OPE_METRICS = tuple(ope_metric_name(e) for e in OPE_ESTIMATORS)
"""The off-policy names ``eval.gate_metric`` accepts besides the validation metrics."""


def is_ope_metric(name: str) -> bool:
    """True for ``ope/ips``, ``ope/snips`` and ``ope/dr``."""
    return name in OPE_METRICS


def metric_prefix(event_type: str | None = None) -> str:
    """``eval/`` or ``eval/<event_type>/`` (or ``eval/new_items/``): what a metric name starts with."""
    return f"{METRIC_NAMESPACE}/{event_type}/" if event_type else f"{METRIC_NAMESPACE}/"


def metric_name(kind: str, k: int, event_type: str | None = None) -> str:
    """The name of a validation metric: ``metric_name("ndcg", 10, PURCHASE)`` is ``eval/purchase/ndcg@10``."""
    return f"{metric_prefix(event_type)}{kind}@{k}"


def metric_k(name: str) -> int:
    """The cut-off k of a metric name: ``metric_k("eval/ndcg@10")`` is 10."""
    return int(name.rpartition("@")[2])


def metric_event_type(name: str) -> str | None:
    """The event type a metric is restricted to (``eval/purchase/ndcg@10`` -> purchase), else None."""
    parts = name.rpartition("@")[0].split("/")
    return parts[1] if len(parts) == 3 else None


def overall_metric(name: str) -> str:
    """The same metric over all events: ``eval/purchase/ndcg@10`` -> ``eval/ndcg@10``."""
    return metric_name(metric_kind(name), metric_k(name))


def metric_kind(name: str) -> str:
    """The kind of a metric name: ``eval/purchase/ndcg@10`` -> ndcg; ``ope/dr`` -> dr."""
    return name.rpartition("@")[0].split("/")[-1] if "@" in name else name.split("/")[-1]


def higher_is_better(name: str) -> bool:
    """Which way a metric improves: every ranking metric and off-policy value up, ``seen``/``purchased`` down."""
    return metric_kind(name) not in LOWER_IS_BETTER


def is_metric_name(name: str) -> bool:
    """True for a name ``metric_name`` can produce (a known kind, a positive k, a known event type)."""
    head, _, k = name.rpartition("@")
    parts = head.split("/")
    if not k.isdigit() or int(k) < 1 or parts[0] != METRIC_NAMESPACE or len(parts) not in (2, 3):
        return False
    kinds = RANKING_METRICS if len(parts) == 3 else RANKING_METRICS + LIST_METRICS
    return parts[-1] in kinds and (len(parts) == 2 or parts[1] in EVENT_TYPES)


SPARK_DDL = {
    EVENTS: (
        "event_time TIMESTAMP, user_id STRING, item_id STRING, event_type STRING, "
        "value DOUBLE, session_id STRING"
    ),
    ITEMS: "item_id STRING, category_id STRING, price DOUBLE, available BOOLEAN",
    ITEM_INDEX: (
        "item_id STRING, item_idx INT, category_id STRING, price DOUBLE, available BOOLEAN, first_seen DATE"
    ),
    USER_STATES: (
        "user_id STRING, item_seq ARRAY<INT>, event_seq ARRAY<INT>, gap_seq ARRAY<DOUBLE>, "
        "purchased ARRAY<INT>, interacted ARRAY<INT>, last_event_time TIMESTAMP, n_events BIGINT"
    ),
    TRANSITIONS: (
        "user_id STRING, event_time TIMESTAMP, item_seq ARRAY<INT>, event_seq ARRAY<INT>, "
        "action INT, event_type STRING, reward DOUBLE, done BOOLEAN, split STRING, "
        "history_items ARRAY<INT>, history_purchased ARRAY<INT>"
    ),
    QUARANTINE: (
        "event_time TIMESTAMP, user_id STRING, item_id STRING, event_type STRING, "
        "value DOUBLE, session_id STRING, rule STRING, source_partition STRING"
    ),
    RECOMMENDATIONS: (
        "user_id STRING, rank INT, item_id STRING, score DOUBLE, source STRING, "
        "propensity DOUBLE, model_version STRING, generated_at TIMESTAMP"
    ),
}


def arrow_schema(table: str):
    """pyarrow schema of a table's Parquet files (partition column excluded)."""
    import pyarrow as pa

    ts = pa.timestamp("us", tz="UTC")
    schemas = {
        EVENTS: [
            (EVENT_TIME, ts),
            (USER_ID, pa.string()),
            (ITEM_ID, pa.string()),
            (EVENT_TYPE, pa.string()),
            (VALUE, pa.float64()),
            (SESSION_ID, pa.string()),
        ],
        ITEMS: [
            (ITEM_ID, pa.string()),
            (CATEGORY_ID, pa.string()),
            (PRICE, pa.float64()),
            (AVAILABLE, pa.bool_()),
        ],
        IMPORT_QUARANTINE: [
            (LINE, pa.int64()),
            (RULE, pa.string()),
            (COLUMN, pa.string()),
            (RAW_VALUE, pa.string()),
            (RECORD, pa.string()),
        ],
        IMPRESSIONS: [
            (SHOWN_TIME, ts),
            (USER_ID, pa.string()),
            (ITEM_ID, pa.string()),
            (POSITION, pa.int32()),
            (PROPENSITY, pa.float64()),
            (REQUEST_ID, pa.string()),
            (MODEL_VERSION, pa.string()),
        ],
        RECOMMENDATIONS: [
            (USER_ID, pa.string()),
            (RANK, pa.int32()),
            (ITEM_ID, pa.string()),
            (SCORE, pa.float64()),
            (SOURCE, pa.string()),
            (PROPENSITY, pa.float64()),
            (MODEL_VERSION, pa.string()),
            (GENERATED_AT, ts),
        ],
    }
    schemas[IMPRESSIONS_QUARANTINE] = [*schemas[IMPRESSIONS], (RULE, pa.string()), (SOURCE_PARTITION, pa.string())]
    if table not in schemas:
        raise KeyError(f"no pyarrow schema for table {table!r}; known: {sorted(schemas)}")
    return pa.schema(schemas[table])


def iso_date(value) -> str:
    """A run date or event date as ``YYYY-MM-DD``: a ``date`` or a string naming a real calendar day.

    Anything else raises ``errors.BadDate`` (a ValueError, and bad input: not retried).
    """
    import datetime as dt
    import re

    from dql_model.errors import BadDate

    text = value.isoformat() if isinstance(value, dt.date) and not isinstance(value, dt.datetime) else str(value)
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        pass
    raise BadDate(f"expected a calendar date as YYYY-MM-DD, got {value!r}")


def conform(table, name: str):
    """``table`` in the contract's column order and types (``arrow_schema(name)``); a clear error otherwise."""
    import pyarrow as pa

    contract = arrow_schema(name)
    missing = [n for n in contract.names if n not in table.column_names]
    extra = [n for n in table.column_names if n not in contract.names]
    if missing or extra:
        raise ValueError(
            f"{name} table does not match the contract: missing columns {missing}, "
            f"unexpected columns {extra} (the partition column lives in the folder name, not in the files)"
        )
    try:
        return table.select(contract.names).cast(contract)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        found = {f.name: str(f.type) for f in table.schema if f.type != contract.field(f.name).type}
        raise ValueError(f"{name} columns {found} cannot be cast to the contract types: {exc}") from None
