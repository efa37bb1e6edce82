"""Off-policy estimates of tonight's candidates from the impressions the published lists were shown as.

Owns the nightly off-policy evaluation's inputs: reading and checking the impressions, attributing
the events that followed to them (rewards), the candidates' target propensities, the position-based
reward model behind doubly robust, and the JSON block ``evaluation.json["ope"]``. The estimators
themselves are ``dql_model.evaluation.ope``.

- Impressions: the ``impressions`` partitions of the last ``eval.ope_days`` shown dates ending on the
  run date. Rows that break the contract (a null id or shown_time, a position below 1, a propensity
  outside (0, 1], a repeated (request_id, position)) are left out, counted per partition, column
  and rule, and reported: input = accepted + rejected.
- Attribution: the reward of a shown slot is the sum of the ETL's event rewards (``etl.reward_*``,
  as ``jobs.transitions`` computes them) of that user's events on that item from its shown_time up to
  (not including) the same user's next request with a later shown_time, and at most
  ``ATTRIBUTION_HOURS`` later. A later request shows a new list, so what happens after it is credited
  to that list; the horizon keeps a user who never comes back from crediting next week's visit.
  Events are read up to the run date: slots shown late on the run date have a shortened window.
- Target propensities: impressions of day D were served from the lists published on night D - 1,
  ranked from that night's ``user_states``. A candidate's lists for day D are ranked the same way
  (greedy top-K, K the longest logged list, the night's item index, exclusion rule and popularity
  fallback), and ``p_new`` is 1 when it puts the logged item at the logged position, else 0.
  Days whose night D - 1 left no user_states are skipped for every candidate, so all are estimated
  on the same rows.
- Reward model (doubly robust): ``PositionRewardModel``, q_hat(a, k) = theta_k * rho_a (see there).

``target_propensities`` takes any ``ListSource`` per candidate name, so another producer of lists
(the shop simulator) can be evaluated on the same log.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from dql_model.config import Config, OPEConfig
from dql_model.contract import schema
from dql_model.evaluation import ope
from dql_model.judging import candidates
from dql_model.warehouse import data, storage
from dql_model.warehouse.rewards import RewardRule

ATTRIBUTION_HOURS = 24
"""An event counts for a shown slot at most this many hours after it was shown."""
REWARD_SMOOTHING = 10.0
"""Pseudo-rows of the reward model's prior: an item seen on this many rows is half its own, half average."""
LOGGING = "logging"
"""The name of the logging policy's own (on-policy) value in ``evaluation.json["ope"]``."""
CHECKED_IDS = (schema.REQUEST_ID, schema.USER_ID, schema.ITEM_ID, schema.SHOWN_TIME)
"""Impression columns a row cannot do without (rule null_id)."""



# --- impressions ------------------------------------------------------------------------------------


@dataclass
class ImpressionLog:
    """The accepted impressions of the days read, and what the contract check left out."""

    rows: pd.DataFrame
    """Accepted rows: the contract's columns plus shown_date, in partition order."""
    days: list[str]
    """The shown dates whose partitions were read (oldest first)."""
    input_rows: int
    """Rows read: accepted plus rejected."""
    rejected: list[dict[str, Any]] = field(default_factory=list)
    """One entry per (partition, column, rule) with rows left out: ``partition``, ``column``, ``rule``, ``rows``."""

    @property
    def accepted_rows(self) -> int:
        return len(self.rows)

    def summary(self) -> dict[str, Any]:
        return {
            "days": self.days,
            "input_rows": self.input_rows,
            "accepted_rows": self.accepted_rows,
            "rejected": self.rejected,
        }


def shown_days(run_date: str, days: int) -> list[str]:
    """The ``days`` dates ending on ``run_date``, oldest first."""
    end = dt.date.fromisoformat(schema.iso_date(run_date))
    return [(end - dt.timedelta(days=n)).isoformat() for n in range(days - 1, -1, -1)]


def load_impressions(
    cfg: Config, run_date: str, days: int, *, progress: Callable[[str], object] = print
) -> ImpressionLog:
    """The impressions of the last ``days`` shown dates ending on ``run_date``, checked.

    Missing partitions are skipped; none at all gives an empty log. Each partition is cast to the
    contract (``schema.conform``; a column that cannot be cast is an error naming the partition),
    then checked row by row (``check_impressions``); every rule that left rows out is said, and the
    rows go to the run date's ``impressions_quarantine`` partition (rewritten whole, so a rerun
    never doubles it): read = accepted + quarantined.
    """
    frames, read, rejected, input_rows, quarantined = [], [], [], 0, []
    for day in shown_days(run_date, days):
        folder = cfg.layout.partition(schema.IMPRESSIONS, day)
        if not data.existing_parquet_files(folder):
            continue
        try:
            table = schema.conform(storage.read_partition(folder), schema.IMPRESSIONS)
        except ValueError as error:
            raise ValueError(f"impressions partition {folder}: {error}") from None
        frame = table.to_pandas()
        accepted, dropped, bad = check_impressions(frame, partition=folder)
        quarantined.append(bad)
        for entry in dropped:
            progress(
                f"impressions partition {entry['partition']}: {entry['rows']} rows rejected by rule "
                f"{entry['rule']} on column {entry['column']}; they are left out of the off-policy estimates"
            )
        frames.append(accepted.assign(**{schema.SHOWN_DATE: day}))
        read.append(day)
        rejected += dropped
        input_rows += len(frame)
    if read:
        _write_quarantine(cfg, run_date, pd.concat(quarantined, ignore_index=True))
    columns = [*schema.arrow_schema(schema.IMPRESSIONS).names, schema.SHOWN_DATE]
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    return ImpressionLog(rows=rows, days=read, input_rows=input_rows, rejected=rejected)


def _write_quarantine(cfg: Config, run_date: str, rows: pd.DataFrame) -> None:
    contract = schema.arrow_schema(schema.IMPRESSIONS_QUARANTINE)
    table = pa.Table.from_pandas(rows[contract.names], preserve_index=False).cast(contract)
    storage.write_partition(table, cfg.layout.partition(schema.IMPRESSIONS_QUARANTINE, run_date))


def check_impressions(
    frame: pd.DataFrame, *, partition: str
) -> tuple[pd.DataFrame, list[dict[str, Any]], pd.DataFrame]:
    """(accepted rows, one entry per column and rule that rejected rows, the rejected rows with their
    rule and partition): each row fails at most once, by the first rule it breaks in this order:
    null_id, bad_position, bad_propensity, duplicate (the first row of a repeated (request_id,
    position) is kept)."""
    failed = np.zeros(len(frame), dtype=bool)
    rule_of = np.full(len(frame), None, dtype=object)
    rejected = []

    def reject(bad: np.ndarray, rule: str, column: str) -> None:
        new = np.asarray(bad, dtype=bool) & ~failed
        if new.any():
            rejected.append({"partition": partition, "column": column, "rule": rule, "rows": int(new.sum())})
            failed[new] = True
            rule_of[new] = rule

    for column in CHECKED_IDS:
        reject(frame[column].isna().to_numpy(), schema.RULE_NULL_ID, column)
    position = frame[schema.POSITION]
    reject((position.isna() | (position < 1)).to_numpy(), schema.RULE_BAD_POSITION, schema.POSITION)
    p = frame[schema.PROPENSITY]
    reject((p.isna() | ~((p > 0) & (p <= 1))).to_numpy(), schema.RULE_BAD_PROPENSITY, schema.PROPENSITY)
    repeated = np.zeros(len(frame), dtype=bool)
    repeated[~failed] = (
        frame[~failed].duplicated([schema.REQUEST_ID, schema.POSITION], keep="first").to_numpy()
    )
    reject(repeated, schema.RULE_DUPLICATE, f"{schema.REQUEST_ID}, {schema.POSITION}")
    accepted = frame[~failed].reset_index(drop=True)
    quarantined = frame[failed].assign(**{schema.RULE: rule_of[failed], schema.SOURCE_PARTITION: partition})
    return accepted.astype({schema.POSITION: np.int64}), rejected, quarantined.reset_index(drop=True)


# --- rewards ------------------------------------------------------------------------------------------


def attribute_rewards(
    impressions: pd.DataFrame,
    events: pd.DataFrame,
    *,
    horizon: dt.timedelta = dt.timedelta(hours=ATTRIBUTION_HOURS),
) -> np.ndarray:
    """[rows of ``impressions``] the summed ``reward`` of ``events`` credited to each shown slot.

    ``events`` has user_id, item_id, event_time and reward. A slot shown at t to user u earns the
    events of u on its item in [t, end), end the earlier of u's next request shown after t (a
    request's time is its earliest shown_time) and t + ``horizon``.
    """
    n = len(impressions)
    if not n or events.empty:
        return np.zeros(n)
    shown = _utc(impressions[schema.SHOWN_TIME])
    requests = (
        pd.DataFrame({schema.USER_ID: impressions[schema.USER_ID], "t": shown})
        .groupby(impressions[schema.REQUEST_ID].to_numpy())
        .agg({schema.USER_ID: "first", "t": "min"})
    )
    visits = requests.drop_duplicates().sort_values([schema.USER_ID, "t"])
    times = visits["t"].to_numpy()
    users = visits[schema.USER_ID].to_numpy()
    slots = pd.DataFrame(
        {
            "row": np.arange(n),
            schema.USER_ID: impressions[schema.USER_ID].to_numpy(),
            schema.ITEM_ID: impressions[schema.ITEM_ID].to_numpy(),
            "start": shown.to_numpy(),
        }
    )
    slots["end"] = _window_end(users, times, slots, horizon)
    credited = slots.merge(
        events[[schema.USER_ID, schema.ITEM_ID, schema.EVENT_TIME, schema.REWARD]],
        on=[schema.USER_ID, schema.ITEM_ID],
    )
    event_time = _utc(credited[schema.EVENT_TIME]).to_numpy()
    credited = credited[
        (event_time >= credited["start"].to_numpy()) & (event_time < credited["end"].to_numpy())
    ]
    return np.bincount(credited["row"].to_numpy(), weights=credited[schema.REWARD].to_numpy(), minlength=n)


def _window_end(users: np.ndarray, times: np.ndarray, slots: pd.DataFrame, horizon: dt.timedelta) -> np.ndarray:
    """[slots] the earlier of the first visit of the slot's user after its start and start + horizon.

    ``users`` / ``times`` are the distinct (user, request time) pairs sorted by user, then time. One
    searchsorted over (user, time rank) keys finds every slot's next visit at once.
    """
    starts = slots["start"].to_numpy().astype("datetime64[ns]")
    out = starts + np.timedelta64(horizon)
    if not len(times):
        return out
    codes, _ = pd.factorize(np.concatenate([users, slots[schema.USER_ID].to_numpy()]))
    visit_user, slot_user = codes[: len(users)].astype(np.int64), codes[len(users) :].astype(np.int64)
    visit_ns = times.astype("datetime64[ns]").view(np.int64)
    distinct = np.unique(visit_ns)
    width = len(distinct) + 1
    visit_key = visit_user * width + np.searchsorted(distinct, visit_ns)  # ascending: sorted by user, then time
    slot_key = slot_user * width + np.searchsorted(distinct, starts.view(np.int64), side="right")
    j = np.searchsorted(visit_key, slot_key, side="left").clip(max=len(visit_key) - 1)
    following = (visit_user[j] == slot_user) & (visit_key[j] >= slot_key)
    nxt = times.astype("datetime64[ns]")[j]
    return np.where(following & (nxt < out), nxt, out)


def _utc(values: pd.Series) -> pd.Series:
    """Timestamps as tz-naive UTC datetime64[ns] (numpy compares those without surprises)."""
    values = pd.to_datetime(values, utc=True)
    return values.dt.tz_localize(None).astype("datetime64[ns]")


def load_events(
    cfg: Config, first_day: str, last_day: str, *, users: np.ndarray, items: np.ndarray
) -> pd.DataFrame:
    """Raw events of ``users`` on ``items`` from the event_date partitions first_day..last_day (missing
    ones skipped), with their ETL reward; rows without a user, item, time or type are left out."""
    columns = [schema.EVENT_TIME, schema.USER_ID, schema.ITEM_ID, schema.EVENT_TYPE, schema.VALUE]
    start, end = dt.date.fromisoformat(first_day), dt.date.fromisoformat(last_day)
    user_set, item_set = (
        pa.array(np.unique(users).tolist(), pa.string()),
        pa.array(np.unique(items).tolist(), pa.string()),
    )
    tables = []
    for offset in range((end - start).days + 1):
        folder = cfg.layout.partition(schema.EVENTS, (start + dt.timedelta(days=offset)).isoformat())
        if not data.existing_parquet_files(folder):
            continue
        table = storage.read_partition(folder, columns=columns)
        keep = pc.and_(
            pc.and_(
                pc.is_in(table[schema.USER_ID], value_set=user_set),
                pc.is_in(table[schema.ITEM_ID], value_set=item_set),
            ),
            pc.and_(pc.is_valid(table[schema.EVENT_TIME]), pc.is_valid(table[schema.EVENT_TYPE])),
        )
        table = table.filter(pc.fill_null(keep, False))
        tables.append(
            table.select(columns).cast(
                pa.schema([schema.arrow_schema(schema.EVENTS).field(c) for c in columns])
            )
        )
    if not tables:
        return pd.DataFrame(columns=[*columns, schema.REWARD])
    events = pa.concat_tables(tables).to_pandas()
    weight = _purchase_weights(cfg, events[schema.ITEM_ID].to_numpy())
    events[schema.REWARD] = RewardRule.from_config(cfg).numpy(
        events[schema.EVENT_TYPE].to_numpy(), events[schema.VALUE].to_numpy(), weight
    )
    return events


def _purchase_weights(cfg: Config, item_ids: np.ndarray) -> np.ndarray | float:
    """price / mean catalogue price per event's item with etl.reward_value_weighted (missing prices weigh
    1), as the ETL weighs purchases; 1 otherwise."""
    if not cfg.etl.reward_value_weighted:
        return 1.0
    index = storage.read_partition(
        _latest_partition(cfg, schema.ITEM_INDEX), columns=[schema.ITEM_ID, schema.PRICE]
    ).to_pandas()
    prices = index.set_index(schema.ITEM_ID)[schema.PRICE]
    mean_price = prices[prices > 0].mean()
    weight = pd.Series(item_ids).map(prices / mean_price).to_numpy(dtype=np.float64)
    return np.where(np.isfinite(weight), weight, 1.0)


def _latest_partition(cfg: Config, table: str) -> str:
    folders = sorted(Path(cfg.layout.table(table)).glob(f"{cfg.layout.partition_column(table)}=*"))
    if not folders:
        raise FileNotFoundError(f"no {table} partition under {cfg.layout.table(table)}; run the ETL first")
    return str(folders[-1])


# --- candidates' lists and target propensities -----------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A candidate policy on the logged rows."""

    p_new: np.ndarray
    """[rows] 1.0 where the candidate puts the logged item at the logged position, else 0.0."""
    item_id: np.ndarray
    """[rows] object: the item the candidate puts at the row's (user, day, position); None when its list is shorter."""


def target_propensities(rows: pd.DataFrame, lists: Mapping[str, candidates.ListSource]) -> dict[str, Target]:
    """Per candidate: its deterministic lists matched against the logged slots, day by day.

    ``rows`` has user_id, item_id, position and shown_date; the lists of day D are asked once for
    the distinct users shown something on D.
    """
    out = {}
    keys = rows[[schema.SHOWN_DATE, schema.USER_ID, schema.POSITION]].reset_index(drop=True)
    for name, source in lists.items():
        found = []
        for day, users in keys.groupby(schema.SHOWN_DATE)[schema.USER_ID]:
            table = source(str(day), pa.array(users.unique().tolist(), pa.string()))
            found.append(
                pd.DataFrame(
                    {
                        schema.SHOWN_DATE: day,
                        schema.USER_ID: table[schema.USER_ID].to_pylist(),
                        schema.POSITION: np.asarray(table[schema.RANK].to_pylist(), dtype=np.int64),
                        "target_item": table[schema.ITEM_ID].to_pylist(),
                    }
                )
            )
        slots = pd.concat(found, ignore_index=True) if found else None
        if slots is None or slots.empty:
            item = np.full(len(rows), None, dtype=object)
        else:
            matched = keys.merge(slots, on=[schema.SHOWN_DATE, schema.USER_ID, schema.POSITION], how="left")
            item = (
                matched["target_item"].astype(object).where(matched["target_item"].notna(), None).to_numpy()
            )
        p_new = (item == rows[schema.ITEM_ID].to_numpy()).astype(np.float64)
        out[name] = Target(p_new=p_new, item_id=item)
    return out


# --- reward model -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PositionRewardModel:
    """q_hat(a, k) = theta_k * rho_a: a position's mean reward times an item's smoothed multiplier.

    theta_k is the mean attributed reward of the log's rows at position k (how much attention the
    position gets); rho_a compares the reward item a earned with what its positions earn on average,
    R_a / E_a (E_a the sum of theta over a's rows), shrunk toward 1 by ``smoothing`` pseudo-rows:
    rho_a = (n_a * R_a / E_a + m) / (n_a + m). An item the log never shows has rho 1 (the position
    mean). Fitted on the same log it serves (the usual DR shortcut: cheap, slightly optimistic).
    """

    positions: np.ndarray
    theta: np.ndarray
    item_ids: np.ndarray
    rho: np.ndarray
    smoothing: float

    @classmethod
    def fit(
        cls,
        position: np.ndarray,
        item_id: np.ndarray,
        reward: np.ndarray,
        *,
        smoothing: float = REWARD_SMOOTHING,
    ):
        positions, pos_code = np.unique(position, return_inverse=True)
        theta = np.bincount(pos_code, weights=reward) / np.bincount(pos_code)
        item_ids, item_code = np.unique(np.asarray(item_id, dtype=str), return_inverse=True)
        n = np.bincount(item_code).astype(np.float64)
        earned = np.bincount(item_code, weights=reward)
        expected = np.bincount(item_code, weights=theta[pos_code])
        raw = np.divide(earned, expected, out=np.ones_like(earned), where=expected > 0)
        return cls(positions, theta, item_ids, (n * raw + smoothing) / (n + smoothing), smoothing)

    def predict(self, position: np.ndarray, item_id: np.ndarray) -> np.ndarray:
        """q_hat per (position, item); 0 where the item is None (no item at that position) or the
        position was never logged."""
        position, item_id = np.asarray(position), np.asarray(item_id, dtype=object)
        k = np.searchsorted(self.positions, position).clip(0, len(self.positions) - 1)
        theta = np.where(self.positions[k] == position, self.theta[k], 0.0)
        present = np.array([v is not None for v in item_id], dtype=bool)
        names = np.where(present, item_id, "").astype(str)
        j = np.searchsorted(self.item_ids, names).clip(0, max(len(self.item_ids) - 1, 0))
        known = present & (len(self.item_ids) > 0) & (self.item_ids[j] == names)
        rho = np.where(known, self.rho[j], 1.0)
        return np.where(present, theta * rho, 0.0)


# --- the night's estimates --------------------------------------------------------------------------


def estimate_candidates(
    rows: pd.DataFrame, targets: Mapping[str, Target], config: OPEConfig = ope.DEFAULTS
) -> dict[str, Any]:
    """IPS, SNIPS, DR and support of each candidate on the logged ``rows`` (with a reward column), and
    the logging policy's own value; JSON-able."""
    model = PositionRewardModel.fit(
        rows[schema.POSITION].to_numpy(), rows[schema.ITEM_ID].to_numpy(), rows[schema.REWARD].to_numpy()
    )
    q_logged = model.predict(rows[schema.POSITION].to_numpy(), rows[schema.ITEM_ID].to_numpy())
    n_requests = int(rows[schema.REQUEST_ID].nunique())
    out = {
        LOGGING: {
            "value": float(rows[schema.REWARD].sum() / n_requests),
            "rows": len(rows),
            "requests": n_requests,
        },
        "candidates": {},
        "min_ess": config.min_ess,
        "reward_model": {"kind": "theta_k * rho_a", "smoothing": model.smoothing},
    }
    for name, target in targets.items():
        log = ope.LoggedSlates.from_arrays(
            request_id=rows[schema.REQUEST_ID].to_numpy(),
            position=rows[schema.POSITION].to_numpy(),
            propensity=rows[schema.PROPENSITY].to_numpy(),
            reward=rows[schema.REWARD].to_numpy(),
            target_propensity=target.p_new,
        )
        q_target = model.predict(rows[schema.POSITION].to_numpy(), target.item_id)
        estimates = ope.estimate_all(log, q_logged, q_target, config)
        out["candidates"][name] = {
            **{key: _estimate_json(est) for key, est in estimates.items()},
            "support": _support_json(ope.support(log, config)),
            "ess": estimates["ips"].ess,
            "usable": estimates["ips"].ess >= config.min_ess,
        }
    return out


def _estimate_json(est: ope.Estimate) -> dict[str, Any]:
    return {
        "value": est.value,
        "low": est.interval[0],
        "high": est.interval[1],
        "per_position": {
            str(p): v for p, v in zip(est.positions.tolist(), est.position_values.tolist(), strict=True)
        },
        "ess": est.ess,
        "warnings": list(est.warnings),
    }


def _support_json(sup: ope.Support) -> dict[str, Any]:
    rows = sup.n_rows.astype(np.float64)
    return {
        "supported_share": float((sup.supported_mass * rows).sum() / rows.sum()),
        "per_position": {
            str(p): m for p, m in zip(sup.positions.tolist(), sup.supported_mass.tolist(), strict=True)
        },
        "matched_share": float((sup.matched_share * rows).sum() / rows.sum()),
        "warnings": list(sup.warnings),
    }


def estimate_night(
    cfg: Config,
    run_date: str,
    models: Mapping[str, tuple[str, Any]],
    *,
    items: data.ItemFeatures,
    exclude: str,
    config: OPEConfig | None = None,
    progress: Callable[[str], object] = print,
) -> dict[str, Any] | None:
    """``evaluation.json["ope"]``: the estimates of ``models`` (name -> (version, QNetwork)) and of the
    popularity baseline on the last ``eval.ope_days`` days of impressions; None when there are none."""
    if cfg.eval.ope_days < 1:
        return None
    log = load_impressions(cfg, run_date, cfg.eval.ope_days, progress=progress)
    if not log.accepted_rows:
        if log.input_rows:
            progress(
                f"off-policy estimates: none of the {log.input_rows} impression rows passed the contract check"
            )
        return None
    inputs = candidates.NightInputs(cfg, exclude, schema.iso_date(run_date))
    rows = log.rows
    skipped = sorted(d for d in rows[schema.SHOWN_DATE].unique() if not inputs.has_states(candidates.previous_night(d)))
    for day in skipped:
        progress(
            f"off-policy estimates: shown_date {day} skipped: night {candidates.previous_night(day)} has no user_states "
            f"partition ({cfg.layout.partition(schema.USER_STATES, candidates.previous_night(day))}) to rank its lists from"
        )
    rows = rows[~rows[schema.SHOWN_DATE].isin(skipped)].reset_index(drop=True)
    summary = {**log.summary(), "skipped_days": skipped, "rows_used": len(rows)}
    if rows.empty:
        return {**summary, "candidates": {}}
    events = load_events(
        cfg,
        rows[schema.SHOWN_DATE].min(),
        min(candidates.next_day(rows[schema.SHOWN_DATE].max()), schema.iso_date(run_date)),
        users=rows[schema.USER_ID].to_numpy(),
        items=rows[schema.ITEM_ID].to_numpy(),
    )
    rows[schema.REWARD] = attribute_rewards(rows, events)
    top_k = int(rows[schema.POSITION].max())
    lists = {
        name: candidates.model_lists(model, version, inputs, items, top_k=top_k)
        for name, (version, model) in models.items()
    }
    lists[candidates.POPULARITY] = candidates.popularity_lists(inputs, items, top_k=top_k)
    estimates = estimate_candidates(rows, target_propensities(rows, lists), config or cfg.ope)
    result = {**summary, **estimates}
    progress(
        f"off-policy estimates: {len(rows)} slots of {estimates[LOGGING]['requests']} requests on "
        f"{rows[schema.SHOWN_DATE].nunique()} days; logging policy {estimates[LOGGING]['value']:.4f} per request"
    )
    for name, found in estimates["candidates"].items():
        progress(
            f"ope {name:<12} "
            + "  ".join(f"{key} {found[key]['value']:.4f}" for key in schema.OPE_ESTIMATORS)
            + f"  ess {found['ess']:.1f}"
        )
    return result


def gate_values(
    result: dict[str, Any] | None, metric: str, names: tuple[str, ...]
) -> tuple[dict[str, dict[str, float]] | None, str]:
    """({candidate: {metric: value}}, "") when the estimate ``metric`` (``ope/dr``) is usable for every
    one of ``names`` present, else (None, why not)."""
    if not result or not result.get("candidates"):
        return None, "the night has no impressions to estimate from"
    estimator = metric.split("/", 1)[1]
    values = {}
    for name in names:
        found = result["candidates"].get(name)
        if found is None:
            continue
        if not found["usable"]:
            return None, (
                f"{name}'s effective sample size {found['ess']:.1f} is below ope.min_ess {result['min_ess']:g}"
            )
        values[name] = {metric: found[estimator]["value"]}
    return values, ""
