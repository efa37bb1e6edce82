"""Why a user got the list they got on a night (`dqlrec explain USER`): owns the explanation of one
published list, nothing else.

It reads what the night left: the user's row of ``user_states`` (their last ``etl.max_len`` events,
decoded to item ids and event types through ``item_index``), their rows of the published
``recommendations`` partition, the exclusion rule the night applied (``score.exclude`` as the ETL job
resolved it), and the size of the scoring model's catalogue from the registry. The reasons follow the
scoring rules of ``dql_model.scoring.ranking`` and ``dql_model.scoring.policy``: model rows are greedy
by Q (propensity 1) or explored (drawn from a softmax over Q; propensity below 1, the marginal
probability of that item at that rank); a fallback row means no item of the user's state was known to
the model, and popular available items filled the list (the category of the most recent interaction
that has one first). The user's excluded items, the unavailable items and the items newer than the
model in their state are listed as masked, with the reason and its code (the reason names of
``dql_model.scoring.masks``, under which the night's counts hold the same pairs).

Cost: one filtered read of the user's rows in two partitions (pyarrow pushes the user_id predicate to
the row groups) and the item index once, as scoring reads it; no loop over users or items.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dql_model.config import Config
from dql_model.contract import schema
from dql_model.errors import MissingInput
from dql_model.scoring import masks
from dql_model.warehouse import data, storage

SHOWN_MASKED = 20
"""Masked items the text shows (the JSON has them all)."""
MASK_REASONS = {
    "purchased": "purchased before (score.exclude = purchased)",
    "interacted": "interacted with before (score.exclude = interacted)",
}
"""Why the exclusion rule masks an item, per rule (``data.EXCLUDE_RULES`` other than none)."""


def latest_published(cfg: Config) -> str:
    """The last run date with a published recommendations partition."""
    table = Path(cfg.layout.table(schema.RECOMMENDATIONS))
    days = sorted(storage.dated_folders(table))
    if not days:
        raise MissingInput(f"no recommendations have been published under {table} yet; run `make run` first")
    return days[-1]


def explain(cfg: Config, user_id: str, run_date: str) -> dict[str, Any]:
    """The explanation of ``user_id``'s published list on ``run_date`` as one JSON-ready dict."""
    published_folder = cfg.layout.partition(schema.RECOMMENDATIONS, run_date)
    if not data.existing_parquet_files(published_folder):
        raise MissingInput(
            f"recommendations partition {published_folder} is missing: nothing was published for {run_date}; "
            "run the night first (make run RUN_DATE=... or dqlrec task publish --run-date ...)"
        )
    rows = _user_rows(published_folder, user_id)
    rule = data.exclude_rule(cfg.score, data.night_protocol(cfg, run_date))
    items = data.load_item_features(cfg.layout.partition(schema.ITEM_INDEX, run_date), price_buckets=1)
    state = _user_rows(cfg.layout.partition(schema.USER_STATES, run_date), user_id)
    versions = sorted(set(rows.column(schema.MODEL_VERSION).to_pylist())) if rows.num_rows else []
    model_version = versions[0] if len(versions) == 1 else None
    model_items = _model_items(cfg, model_version)
    explained = {
        "user_id": user_id,
        "run_date": run_date,
        "model_version": model_version,
        "model_items": model_items,
        "exclude_rule": rule,
        "state": _state(state, items, cfg.etl.max_len, rule),
        "recommendations": _slots(rows),
    }
    explained["masked"] = _masked(explained["state"], items, model_items, rule)
    explained["fallback_reason"] = _fallback_reason(explained, items)
    explained["not_listed_reason"] = None if rows.num_rows else _not_listed_reason(cfg, explained, run_date)
    return explained


def _user_rows(folder: str, user_id: str) -> pa.Table:
    """The rows of one user in a partition (empty when none); the partition must exist."""
    files = data.existing_parquet_files(folder)
    if not files:
        raise MissingInput(f"partition {folder} is missing; the night for this date did not run")
    tables = [pq.read_table(file, filters=[(schema.USER_ID, "=", user_id)]) for file in files]
    return pa.concat_tables(tables, promote_options="default")


def _model_items(cfg: Config, version: str | None) -> int | None:
    """How many items the scoring model knows (item_idx 1..n); None when its registry entry is not readable."""
    from dql_model.learning import registry

    path = Path(cfg.registry.root) / str(version) / registry.CONFIG
    if version is None or not path.is_file():
        return None
    return int(storage.read_json(path)["n_items"])


def _decode(item_idx: np.ndarray, items: data.ItemFeatures) -> list[str | None]:
    """item_idx -> item_id (None for an index the item index does not have)."""
    known = (item_idx > 0) & (item_idx <= items.n_items)
    return items.item_ids[np.where(known, item_idx, 0)].tolist()  # item_ids[0] is None (padding)


def _state(state: pa.Table, items: data.ItemFeatures, max_len: int, rule: str) -> dict[str, Any] | None:
    if not state.num_rows:
        return None
    decoded = data.decode_user_states(state.slice(0, 1), max_len, exclude=rule)
    seq, codes = decoded.state_items[0], decoded.state_events[0]
    seq, codes = seq[seq > 0], codes[seq > 0]  # left padding off; oldest first
    excluded = decoded.excluded_items[decoded.excluded_indptr[0] : decoded.excluded_indptr[1]]
    last = state.column(schema.LAST_EVENT_TIME)[0].as_py() if schema.LAST_EVENT_TIME in state.column_names else None
    if last is not None and last.tzinfo is None:  # a Spark-written timestamp without its zone: UTC by contract
        last = last.replace(tzinfo=UTC)
    n_events = state.column(schema.N_EVENTS)[0].as_py() if schema.N_EVENTS in state.column_names else None
    return {
        "last_event_time": last.isoformat() if last else None,
        "n_events": n_events,
        "events": [
            {"item_id": item, "item_idx": int(idx), "event_type": _event_type(code)}
            for item, idx, code in zip(_decode(seq, items), seq.tolist(), codes.tolist(), strict=True)
        ],
        "excluded_idx": sorted(set(excluded.tolist())),
    }


def _event_type(code: int) -> str:
    return schema.EVENT_TYPES[code - 1] if 1 <= code <= len(schema.EVENT_TYPES) else f"unknown code {code}"


def _slots(rows: pa.Table) -> list[dict[str, Any]]:
    rows = rows.sort_by(schema.RANK)
    slots = []
    for row in rows.select([schema.RANK, schema.ITEM_ID, schema.SCORE, schema.SOURCE, schema.PROPENSITY]).to_pylist():
        source, propensity = row[schema.SOURCE], row[schema.PROPENSITY]
        if source == schema.SOURCE_FALLBACK:
            why = "popular available item (fallback); score = its popularity"
        elif source == schema.SOURCE_EXPLORE:
            why = f"explored: drawn from a softmax over Q; {propensity:.3g} = P(this item at this rank)"
        else:
            why = "greedy by Q" if propensity == 1.0 else f"by Q after explored ranks above; P(here) = {propensity:.3g}"
        slots.append({**row, "why": why})
    return slots


def _masked(state: dict | None, items: data.ItemFeatures, model_items: int | None, rule: str) -> list[dict[str, Any]]:
    """The items of the user's state and exclusion list that scoring could not recommend, with why."""
    if state is None:
        return []
    excluded = np.asarray(state["excluded_idx"], dtype=np.int64)
    masked = [
        {"item_id": item, "code": masks.EXCLUDE_REASONS[rule], "reason": MASK_REASONS[rule]}
        for item in _decode(excluded, items)
    ]
    seen = np.unique(np.asarray([e["item_idx"] for e in state["events"]], dtype=np.int64))
    seen = seen[~np.isin(seen, excluded)]  # integer indices: a hash-free sort-based set operation
    in_index = (seen > 0) & (seen <= items.n_items)
    unavailable = seen[in_index & ~items.available[np.minimum(seen, items.n_items)]]
    masked += [
        {"item_id": item, "code": masks.UNAVAILABLE, "reason": "not available tonight"}
        for item in _decode(unavailable, items)
    ]
    if model_items is not None:
        newer = seen[seen > model_items]
        reason = f"newer than the model (it knows item_idx 1..{model_items}); reaches users by the fallback"
        masked += [{"item_id": item, "code": masks.NEW_SINCE_TRAINING, "reason": reason} for item in _decode(newer, items)]
    return masked


def _fallback_reason(explained: dict[str, Any], items: data.ItemFeatures) -> str | None:
    if not any(slot[schema.SOURCE] == schema.SOURCE_FALLBACK for slot in explained["recommendations"]):
        return None
    state, model_items = explained["state"], explained["model_items"]
    events = state["events"] if state else []
    if model_items is None:
        why = "the user's state has no item the scoring model knows"
    elif not events:
        why = "the user's state is empty"
    else:
        why = f"no item of the user's state is one the model knows (item_idx 1..{model_items}): all are newer"
    categorised = [e for e in events if e["item_idx"] <= items.n_items and items.category[e["item_idx"]] > 0]
    if categorised:
        recent = categorised[-1]
        category = items.category_ids[items.category[recent["item_idx"]] - 1]
        return f"{why}; popular available items of category {category} (of {recent['item_id']}, the most recent "\
            "interaction with a category) came first, then popular items overall"
    return f"{why}; popular available items overall filled the list"


def _not_listed_reason(cfg: Config, explained: dict[str, Any], run_date: str) -> str:
    state = explained["state"]
    if state is None:
        return (
            f"no state for this user on {run_date}: no events up to that night (or a user id the shop does not have)"
        )
    since = data.active_since(cfg.score, data.night_protocol(cfg, run_date), run_date)
    last = datetime.fromisoformat(state["last_event_time"]) if state["last_event_time"] else None
    if since is not None and last is not None and last < since:
        return (
            f"not scored: the last event ({state['last_event_time']}) is before {since.date()}, the first day of "
            f"score.active_window = {cfg.score.active_window}"
        )
    return "the user has a state but no published rows: check the night's scoring summary"


def render(explained: dict[str, Any]) -> str:
    """The explanation as text for a person."""
    lines = [
        f"user {explained['user_id']}, run {explained['run_date']}, model {explained['model_version'] or 'none'}"
        + (f" ({explained['model_items']} items)" if explained["model_items"] else "")
    ]
    state = explained["state"]
    if state is None:
        lines.append("state: none")
    else:
        events = ", ".join(f"{e['item_id']} {e['event_type']}" for e in state["events"]) or "no events"
        lines.append(
            f"state (last {len(state['events'])} of {state['n_events']} events, oldest first; last event "
            f"{state['last_event_time']}): {events}"
        )
    masked = explained["masked"]
    lines.append(f"masked ({len(masked)}, score.exclude resolved to {explained['exclude_rule']}):" if masked else
                 f"masked: nothing of this user's (score.exclude resolved to {explained['exclude_rule']})")
    lines += [f"  {m['item_id']}: {m['reason']}" for m in masked[:SHOWN_MASKED]]
    if len(masked) > SHOWN_MASKED:
        lines.append(f"  ... {len(masked) - SHOWN_MASKED} more (--json lists them all)")
    slots = explained["recommendations"]
    if not slots:
        lines.append(f"published list: none; {explained['not_listed_reason']}")
        return "\n".join(lines)
    lines.append(f"published list (top {len(slots)}; scores compare only within a source: Q for model rows, "
                 "popularity for fallback rows):")
    lines.append(f"  {'rank':>4}  {'item':<12} {'score':>9}  {'source':<16} {'propensity':>10}  why")
    lines += [
        f"  {s[schema.RANK]:>4}  {s[schema.ITEM_ID]!s:<12} {s[schema.SCORE]:>9.4f}  {s[schema.SOURCE]:<16} "
        f"{s[schema.PROPENSITY]:>10.4f}  {s['why']}"
        for s in slots
    ]
    if explained["fallback_reason"]:
        lines.append(f"fallback: {explained['fallback_reason']}")
    return "\n".join(lines)
