"""One typed configuration for the DAG, the Spark jobs and the CLI.

Defaults live in the dataclasses below. The tuned settings file of `dqlrec tune`
(``<warehouse>/tuning/tuned.yaml``, ``TunedSettings``; with ``tune.use_tuned``) overrides them for the
keys in ``TUNED_KEYS``, a YAML file (``DQLREC_CONFIG`` or ``--config``) overrides both, and environment
variables override all: ``DQLREC_<SECTION>__<FIELD>``, for example
``DQLREC_TRAIN__EPOCHS=3`` or ``DQLREC_SCORE__TOP_K=10``. The resolved config is saved with every
model and its hash goes into every export manifest. A ``DQLREC_*`` variable that is neither such an
override nor one of ``OTHER_ENV`` (a typo such as ``DQLREC_TRAIN_EPOCHS``, one underscore) is ignored
with a warning, once per process, that names the closest known variable.

This module is the only gate for its values: a field with a fixed set of values is typed as a
``Literal`` and refused when the config loads (or a section is built in code), with a message
naming the field, the value and the choices, so no later stage has to check it again. The same
goes for credentials: a URL field that carries a password (``user:password@`` or a password query
parameter) is refused with the password masked, because the config is saved with every model, handed
to the Spark jobs and hashed into the manifests; passwords come from PGPASSWORD or ~/.pgpass, S3
credentials from the standard AWS settings.

Fields that moved keep working under their old names (``LEGACY_FIELDS``): the evaluation settings
were in ``train`` and ``registry`` and now have their own section, ``eval``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import hashlib
import json
import math
import os
import re
import types
import typing
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from dql_model import faults
from dql_model.contract import schema, steps
from dql_model.errors import InputError

CONFIG_ENV = "DQLREC_CONFIG"
OTHER_ENV = frozenset(
    {CONFIG_ENV, faults.FAULT_ENV, "DQLREC_HOME", "DQLREC_JOBS_DIR", "DQLREC_RUN_LOCK_TOKEN", "DQLREC_SERVICES_HOME"}
)
"""The DQLREC_* variables that are not config overrides. Their owners sit above this module (the DAG file,
warehouse.locks.TOKEN_ENV, ops.services.HOME_MARKER), so the names are listed here; a test holds the list
to every DQLREC_ name the code reads."""


class UnknownVariableWarning(UserWarning):
    """A DQLREC_* environment variable that dqlrec does not read (ignored)."""


_WARNED_VARIABLES: set[str] = set()
"""Unknown variables already warned about in this process (load_config runs many times per command)."""


class ConfigError(InputError, ValueError):
    """A configuration value is unknown or has the wrong type (bad input: not retried)."""


Auto = Literal["auto"]
AUTO = "auto"
"""A setting the training step chooses from the night's data (dql_model.learning.shape), saying why."""
Encoder = Literal["gru", "lstm", "attention", "sasrec"]
SEQUENCE_ENCODERS = ("gru", "lstm", "sasrec")
"""Encoders with an output after every position (``forward_all``): those ``train.batching: sequences`` can
use. ``attention`` encodes "how many events ago", so it has an output for the last position only."""
TrainMode = Literal["dqn", "supervised", "sqn"]
"""The learned policies: each trains one model and its rows carry ``schema.MODEL_SOURCES[mode]``."""
LEARNED_MODES: tuple[str, ...] = typing.get_args(TrainMode)
Heads = Literal["one", "two"]
Batching = Literal["transitions", "sequences"]
TargetUpdate = Literal["polyak", "hard"]
LossItems = Literal["auto", "full", "sampled"]
PurchaseCredit = Literal["cart", "purchase"]
ScoringEngine = Literal["torch", "spark"]
RetrievalMode = Literal["auto", "exact", "ann"]
SimRefresh = Literal["session", "step"]
Device = Literal["auto", "cuda", "cpu"]
EmptyPartition = Literal["fail", "warn"]
Validation = Literal["auto", "time", "leave_last_out"]
Exclude = Literal["auto", "purchased", "interacted", "none"]


class _Section:
    """Base of every section: fixed-choice fields are checked however the section is built."""

    def __post_init__(self) -> None:
        section = SECTION_NAMES.get(type(self), type(self).__name__)
        for name, typ in typing.get_type_hints(type(self)).items():
            _check_choices(getattr(self, name), typ, f"{section}.{name}")


SQL_SCHEMES = ("postgresql", "postgres", "redshift")
"""Schemes publish.sql_url may use; a driver suffix (``postgresql+psycopg://``) is allowed."""
PG_CREDENTIALS = "set PGPASSWORD (or ~/.pgpass) for the process instead"
AWS_CREDENTIALS = (
    "use the standard AWS settings instead (an instance role, AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
    "AWS_SECRET_ACCESS_KEY in the environment)"
)
_CONN_ID = re.compile(r"^[A-Za-z0-9_.-]*$")
_IAM_ROLE = re.compile(r"^(default|arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+)$")
_SECRET_PARAMETERS = ("password", "secret", "token")
"""A query parameter whose name contains one of these carries a credential."""


def refuse_credentials(value: str, where: str, instead: str) -> None:
    """Refuse a URL that carries a password, naming the field and showing the URL with the secret masked.

    Local paths (no ``://``) carry none. ``instead`` says where the credential belongs.
    """
    if "://" not in value:
        return
    try:
        parts = urlsplit(value)
        password = parts.password
    except ValueError:
        raise ConfigError(f"{where} is not a valid URL") from None
    query = parse_qsl(parts.query, keep_blank_values=True)
    secret = [key for key, _ in query if any(word in key.lower() for word in _SECRET_PARAMETERS)]
    if password is None and not secret:
        return
    netloc = parts.netloc
    if password is not None:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:***@{host}"
    masked_query = "&".join(f"{key}={'***' if key in secret else v}" for key, v in query)
    masked = urlunsplit(parts._replace(netloc=netloc, query=masked_query))
    raise ConfigError(
        f"{where}={masked!r} carries a credential; remove it and {instead}: the config is saved with "
        "every model and must not hold secrets"
    )


def sql_dialect(url: str) -> str:
    """The database a publish.sql_url names: its scheme without a driver suffix (``postgresql+psycopg`` ->
    ``postgresql``, ``redshift`` -> ``redshift``)."""
    return urlsplit(url).scheme.split("+", 1)[0]


def check_sql_url(url: str, where: str = "publish.sql_url") -> None:
    """A libpq URL of PostgreSQL or Redshift without a password, or empty (no SQL sink)."""
    if not url:
        return
    refuse_credentials(url, where, PG_CREDENTIALS)
    try:
        scheme = urlsplit(url).scheme
    except ValueError:
        raise ConfigError(f"{where} is not a valid URL") from None
    if "://" not in url or sql_dialect(url) not in SQL_SCHEMES:
        # The value is not echoed: a libpq keyword string ("host=... password=...") may hold a secret.
        got = f"scheme {scheme!r}" if "://" in url else "no scheme://"
        raise ConfigError(
            f"{where} must be a postgresql:// URL (PostgreSQL or Redshift), got {got}; "
            "e.g. postgresql://user@host:5432/db"
        )


def parse_train_window(window: str) -> int | dt.date | None:
    """``etl.train_window`` as None (all history), a number of days, or a first day; ConfigError otherwise."""
    text = str(window).strip().lower()
    if text == "all":
        return None
    days = text[:-1] if text.endswith("d") else text
    if days.isdigit():
        if int(days) < 1:
            raise ConfigError(f"etl.train_window={window!r}: a window of days must be at least 1 day")
        return int(days)
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"etl.train_window={window!r} is not 'all', a number of days ('14' or '14d') or a first day "
            "(YYYY-MM-DD)"
        ) from None


def parse_active_window(window: str) -> int | None:
    """``score.active_window`` resolved: days, None for all users, or the string ``auto``; ConfigError otherwise."""
    text = str(window).strip().lower()
    if text in ("all", "auto"):
        return None if text == "all" else text  # type: ignore[return-value]
    days = text[:-1] if text.endswith("d") else text
    if days.isdigit() and int(days) >= 1:
        return int(days)
    raise ConfigError(f"score.active_window={window!r} is not 'auto', 'all' or a number of days ('30d')")


def train_window_start(window: str, run_date: dt.date, first_day: dt.date) -> dt.date:
    """First day of the training window ``etl.train_window`` for a run date, given the first loaded day.

    Never before ``first_day``; a window that starts after the run date is refused.
    """
    parsed = parse_train_window(window)
    if parsed is None:
        return first_day
    if isinstance(parsed, int):
        return max(first_day, run_date - dt.timedelta(days=parsed - 1))
    if parsed > run_date:
        raise ConfigError(f"etl.train_window={window!r} starts after the run date {run_date}")
    return max(first_day, parsed)


def seed_states_night(
    state_nights: Iterable[dt.date], window_start: dt.date, usable: Callable[[dt.date], bool] = lambda night: True
) -> dt.date | None:
    """The user_states night that seeds the transitions of a night whose training window starts on
    ``window_start``: the newest before it that is ``usable`` (asked newest first, until one is), whose states
    are each user's history up to the window; None when there is none. ``jobs/build_training_data.py`` plans
    with it; retention keeps that night's states."""
    before = sorted((night for night in state_nights if night < window_start), reverse=True)
    return next((night for night in before if usable(night)), None)


def _is_union(typ: Any) -> bool:
    """``X | None`` and ``int | Literal[...]`` (the second is a typing.Union, not a types.UnionType)."""
    return isinstance(typ, types.UnionType) or typing.get_origin(typ) is typing.Union


def _type_name(typ: Any) -> str:
    if typing.get_origin(typ) is Literal:
        return " or ".join(repr(choice) for choice in typing.get_args(typ))
    return getattr(typ, "__name__", str(typ))


def _check_choices(value: Any, typ: Any, where: str) -> None:
    if _is_union(typ):  # a number or one of some words: a word must be one of them
        words = [c for k in typing.get_args(typ) if typing.get_origin(k) is Literal for c in typing.get_args(k)]
        if isinstance(value, str) and words and value not in words:
            raise ConfigError(f"{where}={value!r} is not a number or one of {words}")
        return
    origin = typing.get_origin(typ)
    if origin is Literal:
        choices = typing.get_args(typ)
        if value not in choices:
            raise ConfigError(f"{where}={value!r} is not one of {list(choices)}")
    elif origin is tuple:
        element = typing.get_args(typ)[0]
        if not value:
            raise ConfigError(f"{where} is empty; give at least one of {list(typing.get_args(element))}")
        for item in value:
            _check_choices(item, element, where)


@dataclass
class WarehouseConfig(_Section):
    """Where the tables live (local Parquet by default)."""

    root: str = "var/warehouse"
    """Warehouse root folder; dql_model.contract.layout says what lives where below it."""
    lock_wait_s: float = 60.0
    """How long a step waits for another run of the same date to release the run-date lock."""
    lock_stale_s: float = 4 * 3600.0
    """A run-date lock older than this is taken over (its holder is presumed gone): above the longest step."""

    def __post_init__(self) -> None:
        super().__post_init__()
        refuse_credentials(self.root, "warehouse.root", AWS_CREDENTIALS)


@dataclass
class SimulatorConfig(_Section):
    """The synthetic shop used for the demo, the tests and simulated evaluation."""

    n_users: int = 3000
    """Number of shoppers."""
    n_items: int = 1000
    """Number of products in the catalogue."""
    n_categories: int = 20
    """Number of product categories."""
    n_days: int = 14
    """Days of events generated, ending on the run date."""
    end_date: str = "2026-11-27"
    """Last day of generated events (UTC), the demo's run date."""
    seed: int = 7
    """Seed of every random draw: same seed, same shop, same events."""
    sessions_per_user_day: float = 0.35
    """Mean number of sessions a user starts per day."""
    mean_session_events: float = 8.0
    """Mean number of events in a session."""
    taste_drift: float = 0.15
    """How far a user's interest moves toward what they just looked at."""
    new_items_per_day: float = 0.0
    """Mean number of products that enter the catalogue each day."""
    logged_days: int = 7
    """Last days of the window (at most n_days - 1) whose shoppers are shown lists from the logging policy
    (popularity with epsilon exploration), logged as impressions with their propensities; 0: none."""
    logging_top_k: int = 10
    """Length of the logging policy's lists (at most half the catalogue)."""
    logging_epsilon: float = 0.1
    """Chance that a slot of the logging policy's list shows a uniformly drawn item instead of the popular one."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.logged_days < 0:
            raise ConfigError(f"simulator.logged_days={self.logged_days} must be 0 (no impressions) or more")
        if self.logging_top_k < 1:
            raise ConfigError(f"simulator.logging_top_k={self.logging_top_k} must be at least 1")
        if not 0.0 < self.logging_epsilon <= 1.0:
            raise ConfigError(
                f"simulator.logging_epsilon={self.logging_epsilon} must be in (0, 1]: every item needs a chance"
            )


@dataclass
class EtlConfig(_Section):
    """How raw events become user states and training transitions."""

    max_len: int = 20
    """Number of recent interactions kept in a user state (L)."""
    session_gap_minutes: int = 30
    """Inactivity gap that starts a new session when the event has no session_id."""
    train_window: str = "all"
    """Events that make transitions: ``all`` (every loaded day), ``N`` or ``Nd`` (the N days ending on
    the run date) or a first day ``YYYY-MM-DD``. ``all`` reads the whole history each night; bound it
    (e.g. ``90d``) when the history is long and the nights must stay short."""
    validation: Validation = "auto"
    """How the validation split is held out: ``time`` (the last val_days days of the window),
    ``leave_last_out`` (each user's last interaction, the protocol of RecBole and most papers) or
    ``auto`` (time when those days hold at least 5% of the window's events, else leave_last_out)."""
    val_days: int = 2
    """Days at the end of the training window held out by the time split."""
    lookback_days: int = 3
    """Late events up to this many days older than the partition they arrive in are accepted."""
    incremental: bool = True
    """Build user states from the previous night's states plus the new partitions (False: full rebuild)."""
    reward_view: float = 0.0
    """Reward of a view."""
    reward_add_to_cart: float = 0.3
    """Reward of an add-to-cart."""
    reward_purchase: float = 1.0
    """Reward of a purchase."""
    reward_rating_scale: float = 1.0
    """A rating v in [0.5, 5] earns reward_rating_scale * (v - 3) / 2, clipped to [-1, 1]."""
    reward_value_weighted: bool = False
    """Multiply purchase rewards by price / mean price (the item-value weights w_i)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.train_window = str(self.train_window).strip().lower()
        parse_train_window(self.train_window)  # a bad value is refused here, not in the Spark job
        if self.val_days < 1:
            raise ConfigError(f"etl.val_days={self.val_days} must be at least 1")


@dataclass
class ModelConfig(_Section):
    """Shape of the Q-network."""

    encoder: Encoder = "gru"
    """Sequence encoder: gru, lstm, attention (recency-encoded; transition batches only) or sasrec
    (SASRec's causal self-attention with learned positions)."""
    embed_dim: int = 64
    """Width of item, event and state embeddings."""
    hidden_dim: int = 64
    """Hidden width of the sequence encoder."""
    price_buckets: int = 16
    """Number of log-price buckets in the item tower."""
    dropout: float = 0.1
    """Dropout in the encoder and item tower."""
    state_memory: int | Auto = "auto"
    """Latest state items recalled by a second item embedding (a direct path for repeats); 0 = off. auto
    (dql_model.learning.shape): 20 when at least 1 % of the validation events repeat an item of the
    user's state that the published lists may still hold, else 0; the task log and the report say which
    and why. Where every repeat is masked (ratings, score.exclude interacted) the path cannot earn and
    only adds noise: on MovieLens-100K it cost a quarter of the test NDCG@10 (0.078 with 20, 0.103 off)."""
    heads: Heads = "one"
    """Set from train.mode, not a setting: two (a Q head and a next-item cross-entropy head on one
    encoder, as in SQN) for sqn, one (the Q head) otherwise. Saved with each model to rebuild it."""
    max_positions: int = 200
    """Longest sequence the sasrec encoder has position embeddings for (longer states keep the latest)."""
    id_dropout: float = 0.0
    """Probability per gradient step that an item's id embedding and bias are hidden (replaced by
    the unknown-item ones items without history get), so the tower learns to score from category
    and price; 0 = off. Never applied in eval mode. On a shop with 20 new items a day 0.1 lifts the
    DQN's new-item HR@10 from 0.020 to 0.113 (at cql_alpha 8) but costs 1.5 % of NDCG@10 over all
    events (docs/evaluation.md, "New items"), more than a default may: set it where items launch daily."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.id_dropout < 1.0:
            raise ConfigError(f"model.id_dropout={self.id_dropout} must be in [0, 1)")


@dataclass
class TrainConfig(_Section):
    """How the Q-network is trained."""

    mode: TrainMode = "dqn"
    """dqn (TD + conservative term), supervised (next-item cross-entropy only, the baseline) or sqn
    (both, on two heads of one encoder; model.heads follows from it)."""
    batching: Batching = "sequences"
    """sequences: batches of users' whole event sequences (windows of seq_len), the losses at every
    position from one encoder pass (needs model.encoder gru, lstm or sasrec); transitions: batches
    of transition rows, each with its own state of etl.max_len (any encoder). On the demo shop
    sequences train about 3x as many transitions a second to the same validation NDCG@10
    (measured at cql_alpha 2)."""
    seq_len: int = 50
    """Events per training window with batching=sequences (longer histories are cut into windows)."""
    seq_batch_size: int = 32
    """Windows per gradient step with batching=sequences (32 x 50 events: ~1,600 transitions)."""
    epochs: int = 100
    """Upper bound on the passes over the training transitions. Training ends earlier, keeping its best
    epoch, when validation has not improved for ``patience`` epochs (converged) or when the share of
    ``max_minutes`` runs out, whichever comes first; the task log says which."""
    batch_size: int = 256
    """Transitions per gradient step with batching=transitions."""
    lr: float = 2e-3
    """Adam learning rate."""
    weight_decay: float = 0.0
    """Adam weight decay."""
    gamma: float = 0.6
    """Discount of future rewards (0.6 with n_step 3: best validation NDCG@10 on the demo shop)."""
    cql_alpha: float = 8.0
    """Weight of the conservative term logsumexp_a Q(s, a) - Q(s, a_logged). 8: the best mean
    validation NDCG@10 of 0, 0.5, 1, 2, 4 and 8 over 3 training seeds on the demo shop (the gate's
    rule; ``python -m benchmarks.bench_tradeoff``). Smaller weights earn more simulated return and
    lose next-event accuracy (docs/evaluation.md, "The conservative weight")."""
    loss_items: LossItems = "auto"
    """Items the softmax of the conservative term and the next-item loss runs over: full (every item,
    exact), sampled (the logged action, the batch's actions and cql_negatives uniform draws, log-Q
    corrected; a step's cost follows the batch, not the catalogue) or auto (full up to
    full_loss_max_items items, sampled above)."""
    full_loss_max_items: int = 10_000
    """Largest catalogue that loss_items=auto trains with the full softmax (at 20,000 items a full step
    costs 3x a sampled one on 2 CPU cores: benchmarks/bench_training.py)."""
    cql_negatives: int = 4096
    """Items drawn uniformly per step for the sampled softmax, besides the batch's own actions."""
    max_minutes: float = 30.0
    """Time budget of the nightly training step: the challenger and the supervised baseline it is judged
    against get half each (the baseline's half split over its trials), so the comparison stays fair and
    the step stays within it. A model's training stops at the end of the step where its share runs out
    and keeps its best epoch so far (a cut epoch is evaluated too); 0 = no limit. From the first
    checkpoint on, the share left is a step count at the rate so far, so a rerun after a crash stops
    where the uninterrupted run would have (the wall clock still stops it at 1.5 times the share)."""
    n_step: int = 3
    """Rewards summed (discounted) before bootstrapping: n-step returns; 1 is one-step TD."""
    purchase_credit: PurchaseCredit = "cart"
    """cart: a purchase's reward is credited to the add-to-cart of the item earlier in the session
    (where the purchase was decided; data.credit_purchases_to_carts); purchase: to the purchase event."""
    td_weight: float = 1.0
    """Weight of the double-DQN TD loss."""
    target_update: TargetUpdate = "polyak"
    """polyak (soft update every step with tau) or hard (copy every target_every steps)."""
    tau: float = 0.01
    """Polyak rate of the target network."""
    averaged_weights: bool = True
    """Judge, keep and publish the Polyak average of the online weights (rate tau: in dqn and sqn the
    target network, in supervised mode the same average kept for the purpose) rather than the last
    step's weights. The average moves less from step to step; on MovieLens-100K's validation it
    ranks ahead of the online weights from about the 10th epoch and its best epoch scores higher on
    the held-out test (docs/evaluation.md). Needs target_update polyak; with hard the online
    weights are kept."""
    target_every: int = 200
    """Steps between hard target updates."""
    grad_clip: float = 5.0
    """Max gradient norm."""
    patience: int = 5
    """Epochs without a better eval.early_stop_metric before training stops (best weights are kept). 5:
    validation on a few thousand users wanders by noise for a few epochs while it still rises (on
    MovieLens-100K's 943 validation users one best came 4 epochs after the one before)."""
    device: Device = "auto"
    """auto (CUDA when present), cuda or cpu."""
    seed: int = 0
    """Seed of initialisation and batching; CPU runs are bit-for-bit reproducible."""
    checkpoints: bool = True
    """Checkpoint every epoch under <registry.root>/.checkpoints; a rerun after a crash resumes there."""
    checkpoint_minutes: float = 10.0
    """With checkpoints, also checkpoint inside an epoch after this many minutes of it since the last
    checkpoint, so a killed night loses at most that much training (at RetailRocket's size the time
    budget ends inside the first epoch); 0 = after every epoch only."""
    refit: bool | Auto = "auto"
    """After training, train the same start again on train + validation for the best epoch count, and
    score with that refit (the published model has also learnt from the newest days, which validation
    held out). The gate still judges the model that never saw validation. true: always (up to twice
    the training time); false: never; auto (dql_model.learning.train.plan_refit): when training ended
    by converging or its epoch cap, had validation events, and the time budget's share left holds the
    refit's estimate (its epochs' time so far) REFIT_MARGIN times over; a refit the budget cuts short
    is dropped and the gated model scores. On MovieLens-100K it lifts the published NDCG@10 from 0.1119
    to 0.1183 (docs/evaluation.md); on the demo shop and at RetailRocket's size the budget ends
    training, so nothing changes there."""
    threads: int = 0
    """torch CPU threads of training, evaluation, scoring and simulation: 0 = the CPUs this process may use
    (affinity, cgroup quota); a positive value caps that (e.g. 1 per job when jobs share a worker's cores)."""
    distributed_workers: int = 0
    """0: train in this process. N >= 1: train in N processes under DistributedDataParallel, launched by
    Spark's TorchDistributor (dql_model.learning.distributed): on this host when spark.master is local[...],
    else one per executor task of the cluster; gloo on CPU, NCCL on CUDA. Each step's batch is split
    between them, so the run trains the same steps as one process."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_minutes < 0 or self.full_loss_max_items < 0:
            raise ConfigError(
                f"train.max_minutes={self.max_minutes} and train.full_loss_max_items={self.full_loss_max_items} "
                "must be >= 0 (max_minutes 0: no time limit)"
            )


@dataclass(frozen=True)
class OPEConfig(_Section):
    """How the off-policy estimates (``dql_model.evaluation.ope``) are computed and when they are flagged
    as unreliable; the days of impressions they read are ``eval.ope_days``."""

    n_bootstrap: int = 1000
    """Bootstrap resamples of the requests behind each interval."""
    confidence: float = 0.95
    """Coverage of the percentile bootstrap intervals."""
    seed: int = 0
    """Seed of the resampling: the same seed gives the same intervals."""
    clip: float | None = None
    """Importance weights above this are cut to it (less variance, some bias); None: no clipping."""
    min_ess: float = 100.0
    """An effective sample size below this (at a position or overall) is reported as too few rows."""
    min_support: float = 0.95
    """``support`` warns where the target's mass on items the log can show is clearly below this."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_bootstrap < 1:
            raise ConfigError(f"ope.n_bootstrap must be at least 1, got {self.n_bootstrap}")
        if not 0.0 < self.confidence < 1.0:
            raise ConfigError(f"ope.confidence must be between 0 and 1, got {self.confidence}")
        if self.clip is not None and not (self.clip > 0 and math.isfinite(self.clip)):
            raise ConfigError(f"ope.clip must be a positive number or None, got {self.clip}")
        if not self.min_ess >= 0:
            raise ConfigError(f"ope.min_ess must be non-negative, got {self.min_ess}")
        if not 0.0 <= self.min_support <= 1.0:
            raise ConfigError(f"ope.min_support must be between 0 and 1, got {self.min_support}")


@dataclass
class EvalConfig(_Section):
    """How models are judged each night: the metrics, the gate, the baselines, the simulation."""

    early_stop_metric: str = schema.metric_name("ndcg", 10)
    """Validation metric of early stopping and of the best epoch (patience: train.patience)."""
    gate_metric: str = schema.metric_name("ndcg", 10)
    """Metric the champion/challenger gate compares: a validation metric, or an off-policy estimate
    from the impressions (``ope/ips``, ``ope/snips``, ``ope/dr``), which falls back to eval/ndcg@10 on
    a night without enough impressions."""
    max_events: int = 20_000
    """The nightly evaluation (the training's early stopping and the gate) judges a seeded sample of this
    many validation events when the split is larger (every model on the same events; 0: all): at 20,000
    events NDCG@10's 95 % interval is about ± 0.005. Above 53k items the sample shrinks so that events x
    items stays within 2^30 scores a pass (evaluate.EVAL_CELLS; at least 2,000 events); the log and the
    report say so."""
    gate_tolerance: float = 0.02
    """A challenger is promoted unless it is worse than the champion by more than this (relative)."""
    baseline_trials: int = 1
    """Supervised-baseline settings tried in the training step (supervised_baseline.SUPERVISED_GRID); 0 skips it.
    1 (the run's own settings) gives the supervised mode the DQN's budget: one training run each."""
    baseline_epochs: int = 0
    """Epochs of each supervised-baseline trial; 0 means the same as train.epochs."""
    sim_users: int = 500
    """Simulated shoppers per seed in the simulated policy evaluation; 0 skips the simulation."""
    sim_steps: int = 20
    """Steps (recommendation slates shown) per simulated shopper: the horizon of the return."""
    sim_seeds: int = 10
    """Environment seeds; the confidence interval of the simulated return is over these."""
    sim_slate: int = 10
    """Recommendations shown to a simulated shopper at each step."""
    sim_refresh: tuple[SimRefresh, ...] = ("session", "step")
    """When a simulated shopper's list is re-ranked: session (at each session start) and/or step
    (after every click); a list or a comma-separated string, each is simulated, the first is the headline."""
    ope_days: int = 7
    """Days of impressions (shown_date up to the run date) behind the off-policy estimates; 0 turns them off."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("early_stop_metric", "gate_metric"):
            value = getattr(self, name)
            if name == "gate_metric" and value.startswith(f"{schema.OPE_NAMESPACE}/"):
                if not schema.is_ope_metric(value):
                    raise ConfigError(
                        f"eval.gate_metric={value!r} is not an off-policy estimate; accepted: "
                        f"{', '.join(schema.OPE_METRICS)} (or a validation metric like {schema.metric_name('ndcg', 10)!r})"
                    )
            elif not schema.is_metric_name(value):
                accepted = " or the off-policy " + ", ".join(schema.OPE_METRICS) if name == "gate_metric" else ""
                raise ConfigError(
                    f"eval.{name}={value!r} is not a validation metric; expected a name like "
                    f"{schema.metric_name('ndcg', 10)!r} or {schema.metric_name('hr', 20, schema.PURCHASE)!r}{accepted}"
                )
        if self.ope_days < 0:
            raise ConfigError(f"eval.ope_days={self.ope_days} must be 0 (off) or a number of days")


@dataclass
class ScoreConfig(_Section):
    """How recommendations are produced."""

    top_k: int = 20
    """Recommendations per user."""
    batch_size: int = 2048
    """Users per scoring batch (grouped by a hash of user_id, so both engines form the same batches)."""
    exclude: Exclude = "auto"
    """Items never recommended to a user: ``purchased`` (what they bought, the shop default),
    ``interacted`` (every item in their whole history: for ratings and other consumption data),
    ``none``, or ``auto`` (interacted when the data has ratings and no purchases, else purchased).
    The nightly evaluation masks the same items, so its metrics describe the published lists."""
    engine: ScoringEngine = "torch"
    """torch (batched matrix products in the scoring task) or spark (a Spark job, model broadcast to executors)."""
    active_window: str = "auto"
    """Which users get a list tonight, by their last event: ``Nd`` those with an event in the last N days
    (the run date counted), ``all`` everyone with a state, or ``auto``: ``30d`` on a shop's log (it holds
    months of one-visit visitors a nightly list cannot reach), ``all`` on a ratings panel (ratings and
    no purchases, such as MovieLens, where every user is kept)."""
    explore_slots: int = 0
    """The last this-many of the K ranks are drawn from a softmax over Q-values (source explore)."""
    explore_epsilon: float = 0.0
    """Probability that each other rank is drawn from the softmax instead of taken greedily."""
    explore_temperature: float = 1.0
    """Temperature of the exploration softmax: higher spreads the draws over more items."""
    propensity_draws: int = 64
    """Replicate slates of the policy per user behind each marginal propensity below a random rank
    (``dql_model.scoring.policy``): more draws, less noise in the off-policy weights, more time."""
    retrieval: RetrievalMode = "auto"
    """How the torch engine finds each user's top-K: ``exact`` (every item's Q-value), ``ann`` (a FAISS
    IVF inner-product index proposes ``ann_candidates`` items per user, re-ranked exactly with the same
    masks: ``dql_model.scoring.retrieval``), or ``auto``: exact below ``ann_min_items`` items the model may
    recommend tonight; from there ann, once its recall@K against brute force on the recall sample reaches
    ``ann_min_recall`` (probing more lists until it does, up to an eighth of them), else exact. The
    scoring log and the report say which ran and why. Exploring policies and the spark engine rank
    exactly (a softmax needs every item's Q-value)."""
    ann_min_items: int = 100_000
    """``retrieval: auto``: ann from this many items (exact scoring of every user against fewer is cheap)."""
    ann_min_recall: float = 0.95
    """``retrieval: auto``: the recall@K on the sample below which the night scores exactly instead."""
    ann_lists: int = 0
    """IVF lists (k-means cells) of the ann index; 0: about 4 * sqrt(items)."""
    ann_probe: int = 16
    """Lists searched per user: more, higher recall and slower; equal to the lists, every item is seen."""
    ann_candidates: int = 0
    """Items the ann stage proposes per user before the exact re-rank; 0: 10 * top_k."""
    ann_recall_sample: int = 1000
    """Users (a sample seeded by the run date) on which ann's recall@K against brute force is measured
    and reported; 0: not measured."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.propensity_draws < 1:
            raise ConfigError(f"score.propensity_draws={self.propensity_draws} must be at least 1")
        for name in ("ann_lists", "ann_candidates", "ann_recall_sample"):
            if getattr(self, name) < 0:
                raise ConfigError(f"score.{name}={getattr(self, name)} must be 0 (auto) or positive")
        if self.ann_probe < 1:
            raise ConfigError(f"score.ann_probe={self.ann_probe} must be at least 1")
        if self.ann_candidates and self.ann_candidates < self.top_k:
            raise ConfigError(
                f"score.ann_candidates={self.ann_candidates} is below score.top_k={self.top_k}: "
                "the exact re-rank needs at least top_k candidates (0 picks 10 * top_k)"
            )
        if self.ann_min_items < 0:
            raise ConfigError(f"score.ann_min_items={self.ann_min_items} must be >= 0")
        if not 0.0 <= self.ann_min_recall <= 1.0:
            raise ConfigError(f"score.ann_min_recall={self.ann_min_recall} must be within [0, 1]")
        if self.retrieval == "auto" and self.ann_recall_sample == 0:
            raise ConfigError(
                "score.retrieval=auto trusts ann only on its measured recall: score.ann_recall_sample=0 measures none "
                "(set a sample, or retrieval ann or exact)"
            )
        if self.retrieval == "ann" and self.engine == "spark":
            raise ConfigError("score.retrieval=ann runs in the torch engine only: set score.engine=torch or retrieval=exact")
        parse_active_window(self.active_window)


@dataclass
class RegistryConfig(_Section):
    """Model registry and the champion/challenger gate."""

    root: str = "var/models"
    """Folder with one directory per model version and the champion pointer."""

    def __post_init__(self) -> None:
        super().__post_init__()
        refuse_credentials(self.root, "registry.root", AWS_CREDENTIALS)


@dataclass
class PublishConfig(_Section):
    """Where recommendations go besides the warehouse."""

    export_uri: str = "var/export/recommendations"
    """Local folder or s3://bucket/prefix; run_date=YYYY-MM-DD/ is added below it."""
    rows_per_file: int = 500_000
    """Maximum rows in one exported Parquet file."""
    export_jsonl: bool = False
    """Also export the night as JSON Lines beside the Parquet files, one object per user as AWS Personalize's
    batch output has ({"input": {"userId"}, "output": {"recommendedItems", "scores"}}), listed in the manifest."""
    s3_attempts: int = 4
    """Tries of each S3 step (upload, delete, manifest) before the publish fails."""
    s3_backoff_s: float = 1.0
    """Wait before the first S3 retry, in seconds; doubled after each failed try."""
    sql_url: str = ""
    """SQL warehouse sink, e.g. postgresql://user@host:5432/db; empty: off. A password in the URL is refused:
    it comes from PGPASSWORD or ~/.pgpass."""
    sql_table: str = "recommendations"
    """Table of the SQL sink, optionally schema-qualified; created if missing."""
    aws_conn_id: str = ""
    """Airflow connection for the S3 export, read inside an Airflow task; empty (and the CLI): boto3's chain."""
    sql_conn_id: str = ""
    """Airflow connection for the SQL sink, read inside an Airflow task instead of sql_url; empty: sql_url."""
    redshift_iam_role: str = ""
    """IAM role ARN Redshift assumes to COPY the night from the S3 export (a Redshift sink needs it)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        refuse_credentials(self.export_uri, "publish.export_uri", AWS_CREDENTIALS)
        check_sql_url(self.sql_url)
        for name in ("aws_conn_id", "sql_conn_id"):
            if not _CONN_ID.match(getattr(self, name)):
                # The value is not echoed: a URL put here by mistake may hold a password.
                raise ConfigError(
                    f"publish.{name} is not an Airflow connection id (letters, digits, _ - .): name the connection, "
                    "which holds the host and the secret"
                )
        if self.redshift_iam_role and not _IAM_ROLE.match(self.redshift_iam_role):
            raise ConfigError(
                f"publish.redshift_iam_role={self.redshift_iam_role!r} is not an IAM role ARN "
                "(arn:aws:iam::123456789012:role/name) or 'default'"
            )


@dataclass
class QualityConfig(_Section):
    """Thresholds of the data-quality gates: Great Expectations' row rules, the input volume and drift check."""

    max_bad_fraction: float = 0.01
    """Fail the run when more than this share of a raw partition breaks a row rule."""
    empty_partition: EmptyPartition = "fail"
    """A raw events partition with no rows: fail the run, or warn and run on the earlier days' data."""
    drift_nights: int = 7
    """Trailing nights the run date's raw events are compared with (volume, event-type mix, new items and
    users; dql_model.warehouse.quality.input_drift); 0 turns the comparison off."""
    volume_warn: float = 0.5
    """Warn when the day's event count is more than this share above or below its trailing mean."""
    volume_fail: float = 0.9
    """Fail the run beyond this share (0.9: a tenth of the usual events, a broken feed; or 1.9 times as many)."""
    mix_warn: float = 0.1
    """Warn when the day's event-type mix is this far from the trailing nights' (total variation distance, 0..1)."""
    mix_fail: float = 0.3
    """Fail the run when the event-type mix is this far from the trailing nights' (e.g. purchases stopped arriving)."""
    new_share_warn: float = 0.15
    """Warn when the share of the day's items (or users) never seen in the trailing nights rises this many
    points (0..1) above its trailing mean."""
    new_share_fail: float = 0.5
    """Fail the run when that share rises this many points above its trailing mean (ids changed format?)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.drift_nights < 0:
            raise ConfigError(f"quality.drift_nights={self.drift_nights} must be 0 (off) or a number of nights")
        for name in ("volume", "mix", "new_share"):
            warn, fail = getattr(self, f"{name}_warn"), getattr(self, f"{name}_fail")
            if not 0 < warn <= fail:
                raise ConfigError(
                    f"quality.{name}_warn={warn} and quality.{name}_fail={fail}: expected 0 < warn <= fail"
                )


@dataclass
class RetentionConfig(_Section):
    """What `dqlrec prune` keeps of each layer (dql_model.warehouse.retention): the newest nights of each
    table, counted per table, so a month without runs never empties one. 0 keeps everything."""

    raw_nights: int = 0
    """Newest raw events and impressions partitions kept; 0 = all (a full rebuild reads every one). It may not
    be shorter than what a night reads (etl.train_window + etl.lookback_days days, eval.ope_days,
    quality.drift_nights + 1);
    with etl.train_window 'all' the kept days become the training window."""
    curated_nights: int = 7
    """Newest nights of the curated tables and ETL summaries: the next night builds on the last one, and a
    rerun of a kept night finds the night before it. Older user_states that the next night or such a rerun
    reads stay too: those seeding its transitions (the night before its training window) and those its
    off-policy estimates rank impressions from (eval.ope_days)."""
    output_nights: int = 30
    """Newest nights of output/recommendations, the marketing tables and staging leftovers."""
    export_nights: int = 30
    """Newest dates of a local export folder (an s3:// export is left to a bucket lifecycle rule)."""
    report_nights: int = 90
    """Newest report folders (evaluation.json, summary.json, plots, Data Docs): what `dqlrec runs` lists."""
    baseline_nights: int = 7
    """Newest nights of trained baselines under models/baselines."""
    registry_versions: int = 10
    """Newest registry versions kept besides the champion, the pinned ones and those the promotion log
    names within promotion_days. A refit is not counted: it is kept and removed with its base."""
    promotion_days: int = 30
    """A version the promotion log names (as champion or the one before) within this many days is kept: a
    rollback may need it. 0 = every version the log names."""
    pinned_versions: str = ""
    """Comma-separated registry versions never pruned (e.g. a model a trigger pins)."""
    checkpoint_days: int = 7
    """Training checkpoint folders (a crashed training's, kept for its resume) untouched this many days go."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int) and value < 0:
                raise ConfigError(f"retention.{f.name}={value} must be 0 (keep all) or a positive count")

    def pinned(self) -> tuple[str, ...]:
        """pinned_versions as names."""
        return tuple(name.strip() for name in self.pinned_versions.split(",") if name.strip())


@dataclass
class SparkConfig(_Section):
    """Spark settings for the jobs (the spark_default connection chooses the master in Airflow)."""

    master: str = "local[*]"
    """Master URL used when a job runs outside spark-submit."""
    shuffle_partitions: int = 8
    """spark.sql.shuffle.partitions."""
    driver_memory: str = "2g"
    """spark.driver.memory."""
    driver_java_options: str = steps.FAST_JVM_OPTIONS
    """spark.driver.extraJavaOptions outside spark-submit (the default halves JVM start-up)."""


@dataclass
class AlertsConfig(_Section):
    """Who hears of a failed or degraded night (dql_model.ops.alerts), by mail, webhook or both; all empty: nobody.
    No credentials here: a password comes from the Airflow connection or the environment."""

    smtp_conn_id: str = ""
    """Airflow connection of the mail server (host, port, login, password); empty: smtp_host."""
    smtp_host: str = ""
    """Mail server as host or host:port when there is no smtp_conn_id; both empty: no mail."""
    smtp_user: str = ""
    """Login at smtp_host (its password is read from the variable smtp_password_env); empty: no login."""
    smtp_password_env: str = "SMTP_PASSWORD"
    """Name of the environment variable holding smtp_user's password (never the password itself)."""
    smtp_starttls: bool = False
    """Upgrade the mail connection with STARTTLS before logging in."""
    sender: str = "dqlrec@localhost"
    """From address of alert mails."""
    to: str = ""
    """Comma-separated recipients of alert mails; needed when a mail server is set."""
    webhook_url: str = ""
    """URL an alert is POSTed to as JSON; a credential in it is refused (use webhook_conn_id)."""
    webhook_conn_id: str = ""
    """Airflow connection of the webhook (host: the URL; password: sent as a Bearer token); replaces webhook_url."""

    def __post_init__(self) -> None:
        super().__post_init__()
        refuse_credentials(self.webhook_url, "alerts.webhook_url", "keep the token in the webhook_conn_id connection")
        if (self.smtp_conn_id or self.smtp_host) and not self.recipients():
            raise ConfigError("alerts.to is empty but a mail server is set (alerts.smtp_conn_id or alerts.smtp_host)")

    def recipients(self) -> list[str]:
        """``to`` as addresses."""
        return [address.strip() for address in self.to.split(",") if address.strip()]


@dataclass
class TuneConfig(_Section):
    """The hyper-parameter search of `dqlrec tune` and the weekly dql_tuning DAG (dql_model.pipeline.tuning)
    and whether the nightly run uses what it found."""

    trials: int = 20
    """Completed trials a search runs to, in all: a killed search resumes and runs only the rest."""
    minutes: float = 60.0
    """Time budget of a search: each trial trains for minutes / trials (its train.max_minutes)."""
    use_tuned: bool = True
    """Read the tuned settings file (<warehouse>/tuning/tuned.yaml) when it exists: defaults < tuned file <
    the YAML config < DQLREC_* variables, so a setting given explicitly beats the tuned one."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.trials < 1 or not self.minutes > 0:
            raise ConfigError(f"tune.trials={self.trials} and tune.minutes={self.minutes} must be at least 1 and above 0")


@dataclass
class Config:
    """Everything a run needs."""

    warehouse: WarehouseConfig = field(default_factory=WarehouseConfig)
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
    etl: EtlConfig = field(default_factory=EtlConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ope: OPEConfig = field(default_factory=OPEConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)

    def __post_init__(self) -> None:
        self.model.heads = "two" if self.train.mode == "sqn" else "one"
        if self.train.batching == "sequences" and self.model.encoder not in SEQUENCE_ENCODERS:
            warnings.warn(
                f"model.encoder={self.model.encoder!r} trains on transition rows only: train.batching='transitions' "
                f"(sequence batches need model.encoder one of {', '.join(SEQUENCE_ENCODERS)})",
                UserWarning,
                stacklevel=2,
            )
            self.train.batching = "transitions"
        if self.train.seq_len < 2:
            raise ConfigError(f"train.seq_len={self.train.seq_len} must be at least 2")
        self._check_raw_retention()

    def _check_raw_retention(self) -> None:
        """retention.raw_nights may not prune raw days that a night still reads (its training window and the
        lookback before it, its off-policy days, its drift check): a pruned day would silently change what the
        night learns from. Each count includes the run date's own partition, which may land before a prune
        that runs ahead of its night."""
        keep = self.retention.raw_nights
        if not keep:
            return
        window = parse_train_window(self.etl.train_window)
        reads = {
            # the window's transitions, and lookback_days before it where a duplicate's kept copy can be
            "etl.train_window + etl.lookback_days": window + self.etl.lookback_days if isinstance(window, int) else 0,
            "eval.ope_days": self.eval.ope_days,
            "quality.drift_nights": self.quality.drift_nights + 1,
        }
        short = {name: days for name, days in reads.items() if days > keep}
        if short:
            raise ConfigError(
                f"retention.raw_nights={keep} keeps fewer raw days than a night reads ("
                + ", ".join(f"{name} needs {days}" for name, days in short.items())
                + f"): set it to at least {max(short.values())}, or 0 to keep every raw day"
            )

    @property
    def layout(self):
        """Where every table, summary and report of this warehouse lives (dql_model.contract.layout.Layout)."""
        from dql_model.contract.layout import Layout

        return Layout(self.warehouse.root)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts, lists for tuples: what YAML, JSON and from_dict take."""
        return dataclasses.asdict(
            self, dict_factory=lambda items: {k: list(v) if isinstance(v, tuple) else v for k, v in items}
        )

    def hash(self) -> str:
        """Short stable hash of the resolved config, written into manifests."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def replace(self, **sections: dict[str, Any]) -> Config:
        """Copy with some fields changed: ``cfg.replace(train={"epochs": 1})``."""
        return from_dict(_deep_merge(self.to_dict(), sections))

    def rewards(self) -> dict[str, float]:
        return {
            schema.VIEW: self.etl.reward_view,
            schema.ADD_TO_CART: self.etl.reward_add_to_cart,
            schema.PURCHASE: self.etl.reward_purchase,
        }


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


SECTION_NAMES: dict[type, str] = {}
"""Section class -> its name in Config (filled below), for the messages of _Section."""

LEGACY_FIELDS = {
    ("train", "baseline_trials"): ("eval", "baseline_trials"),
    ("train", "baseline_epochs"): ("eval", "baseline_epochs"),
    ("train", "sim_users"): ("eval", "sim_users"),
    ("train", "sim_steps"): ("eval", "sim_steps"),
    ("train", "sim_seeds"): ("eval", "sim_seeds"),
    ("train", "sim_slate"): ("eval", "sim_slate"),
    ("train", "sim_refresh"): ("eval", "sim_refresh"),
    ("registry", "gate_metric"): ("eval", "gate_metric"),
    ("registry", "gate_tolerance"): ("eval", "gate_tolerance"),
    ("etl", "train_days"): ("etl", "train_window"),
    ("score", "mask_purchased"): ("score", "exclude"),
}
"""Old (section, field) -> where it lives now; old names are moved with a warning, never refused.
A value that changed meaning is translated by ``LEGACY_VALUES``."""

LEGACY_VALUES = {
    ("score", "mask_purchased"): lambda masked: (
        "purchased" if _coerce(masked, bool, "score.mask_purchased") else "none"
    ),
}
"""Old (section, field) -> how its value reads under the new name."""


def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


def _coerce(value: Any, typ: Any, where: str) -> Any:
    """Convert a YAML or environment value to the field's declared type."""
    if _is_union(typ):
        optional = type(None) in typing.get_args(typ)
        if optional and (value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null"))):
            return None
        kinds = [t for t in typing.get_args(typ) if t is not type(None)]
        if len(kinds) > 1:  # e.g. int | Literal["auto"]: the first reading that takes the value
            for kind in kinds:
                try:
                    return _coerce(value, kind, where)
                except ConfigError:
                    continue
            raise ConfigError(f"{where}={value!r} is none of: {' or '.join(_type_name(k) for k in kinds)}")
        typ = kinds[0]
    origin = typing.get_origin(typ)
    if origin is Literal:
        choices = typing.get_args(typ)
        text = value.strip() if isinstance(value, str) else value
        if text not in choices:
            raise ConfigError(f"{where}={value!r} is not one of {list(choices)}")
        return text
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise ConfigError(f"{where}: expected a list or a comma-separated string, got {value!r}")
        element = typing.get_args(typ)[0]
        return tuple(_coerce(item, element, where) for item in items if str(item).strip())
    if typ is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in {"1", "true", "yes", "on"}:
            return True
        if text in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{where}: expected a boolean, got {value!r}")
    try:
        if typ is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return typ(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected {typ.__name__}, got {value!r}") from None


def _moved_fields(data: dict[str, Any], origin: str) -> dict[str, Any]:
    """``data`` with fields under their LEGACY_FIELDS names moved to where they live now."""
    moved = {name: dict(section) if isinstance(section, dict) else section for name, section in data.items()}
    for (old_section, old_name), (new_section, new_name) in LEGACY_FIELDS.items():
        section = moved.get(old_section)
        if not isinstance(section, dict) or old_name not in section:
            continue
        value = section.pop(old_name)
        target = moved.setdefault(new_section, {}) or {}
        moved[new_section] = target
        note = "the old name still works"
        if new_name in target:
            note = f"ignored: {new_section}.{new_name} is given too and wins"
        else:
            translate = LEGACY_VALUES.get((old_section, old_name))
            target[new_name] = translate(value) if translate else value
        warnings.warn(
            f"{origin}: {old_section}.{old_name} is now {new_section}.{new_name}; {note}",
            FutureWarning,
            stacklevel=3,
        )
    return moved


def from_dict(data: dict[str, Any], *, origin: str = "config") -> Config:
    """Build a Config from nested dicts, rejecting unknown sections and fields."""
    data = _moved_fields(data, origin)
    sections = {}
    for name, section_type in _section_types().items():
        given = dict(data.get(name) or {})
        hints = typing.get_type_hints(section_type)
        known = {f.name for f in dataclasses.fields(section_type)}
        unknown = sorted(set(given) - known)
        if unknown:
            raise ConfigError(
                f"{origin}: unknown field(s) {unknown} in section '{name}'; known: {sorted(known)}"
            )
        values = {key: _coerce(value, hints[key], f"{origin}: {name}.{key}") for key, value in given.items()}
        try:
            sections[name] = section_type(**values)
        except ConfigError as error:
            raise ConfigError(f"{origin}: {error}") from None
    unknown_sections = sorted(set(data) - set(sections))
    if unknown_sections:
        raise ConfigError(f"{origin}: unknown section(s) {unknown_sections}; known: {sorted(sections)}")
    return Config(**sections)


SECTION_NAMES.update({typ: name for name, typ in _section_types().items()})


def env_variables() -> list[str]:
    """Every DQLREC_* variable dqlrec reads: one override per config field, then OTHER_ENV."""
    prefix = steps.CONFIG_ENV_PREFIX
    overrides = [
        f"{prefix}{section.upper()}__{f.name.upper()}"
        for section, typ in _section_types().items()
        for f in dataclasses.fields(typ)
    ]
    return overrides + sorted(OTHER_ENV)


def _warn_unknown_variables(env: typing.Mapping[str, str]) -> None:
    """Warn once per process about each DQLREC_* variable without ``__`` that dqlrec does not read. (One
    with ``__`` is a config override: an unknown section or field there is refused by ``from_dict``.)"""
    unknown = [
        key
        for key in env
        if key.startswith(steps.CONFIG_ENV_PREFIX) and "__" not in key
        and key not in OTHER_ENV and key not in _WARNED_VARIABLES
    ]  # fmt: skip
    if not unknown:
        return
    prefix = steps.CONFIG_ENV_PREFIX
    known = {name.removeprefix(prefix): name for name in env_variables()}
    by_field = {name.partition("__")[2]: name for name in known.values() if "__" in name}
    for key in unknown:
        _WARNED_VARIABLES.add(key)
        rest = key.removeprefix(prefix)
        # A field name without its section (DQLREC_TOP_K) is the likeliest slip; then the nearest spelling.
        closest = [by_field[rest]] if rest in by_field else difflib.get_close_matches(rest, known, n=1, cutoff=0.6)
        hint = (
            f"did you mean {known.get(closest[0], closest[0])}?"
            if closest
            else f"config overrides are {prefix}<SECTION>__<FIELD>, two underscores"
        )
        warnings.warn(
            f"environment variable {key} is not a dqlrec setting and is ignored; {hint}",
            UnknownVariableWarning,
            stacklevel=4,
        )


def _env_overrides(env: typing.Mapping[str, str]) -> dict[str, dict[str, str]]:
    _warn_unknown_variables(env)
    out: dict[str, dict[str, str]] = {}
    for key, value in env.items():
        if not key.startswith(steps.CONFIG_ENV_PREFIX) or key == CONFIG_ENV or "__" not in key:
            continue
        section, _, name = key[len(steps.CONFIG_ENV_PREFIX) :].lower().partition("__")
        out.setdefault(section, {})[name] = value
    return out


def load_config(
    path: str | os.PathLike[str] | None = None, *, env: typing.Mapping[str, str] | None = None
) -> Config:
    """Defaults, then the YAML file (argument or $DQLREC_CONFIG), then DQLREC_* variables.

    Relative warehouse, registry and export paths are made absolute against the working
    directory, so a spark-submit child process and the DAG resolve them to the same folder.
    """
    env = os.environ if env is None else env
    path = path or env.get(CONFIG_ENV) or None
    data: dict[str, Any] = {}
    if path:
        import yaml

        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"config file {file} does not exist (from --config or ${CONFIG_ENV})")
        data = yaml.safe_load(file.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{file}: expected a mapping of sections at the top level")
    explicit = _deep_merge(data, _env_overrides(env))
    origin = str(path or "environment")
    cfg = _absolute_paths(from_dict(explicit, origin=origin))
    tuned = tuned_settings(cfg)
    if tuned is None or tuned.mode != cfg.train.mode:
        return cfg
    return _absolute_paths(from_dict(_deep_merge(tuned.nested(), explicit), origin=origin))


def _absolute_paths(cfg: Config) -> Config:
    def absolute(p: str) -> str:
        return p if "://" in p else str(Path(p).expanduser().resolve())

    cfg.warehouse.root = absolute(cfg.warehouse.root)
    cfg.registry.root = absolute(cfg.registry.root)
    cfg.publish.export_uri = absolute(cfg.publish.export_uri)
    return cfg


# --- the tuned settings file (written by dql_model.pipeline.tuning, read here) -------------------------------

TUNED_KEYS = (
    "train.lr",
    "train.weight_decay",
    "train.seq_len",
    "train.cql_alpha",
    "model.dropout",
    "model.encoder",
    "model.embed_dim",
    "model.hidden_dim",
)
"""The settings a tuned file may hold (the search space of dql_model.pipeline.tuning); any other is refused."""


@dataclass(frozen=True)
class TunedSettings:
    """The tuned settings file (``Layout.tuned_settings``): the best trial of a finished search and where it
    came from. Its fields are the file's top-level keys, but ``path`` (where it was read)."""

    settings: dict[str, Any]
    """``section.field`` -> tuned value, keys from TUNED_KEYS."""
    mode: str
    """train.mode the search trained; a night of another mode does not use the file."""
    study: str
    """Name of the Optuna study in <warehouse>/tuning/studies.db."""
    run_date: str
    """The night whose transitions (train split) and validation split the search used."""
    tuned_at: str
    """When the search finished (UTC, ISO 8601)."""
    metric: str
    """The validation metric searched on (eval.early_stop_metric)."""
    value: float
    """The best trial's best validation value of ``metric``."""
    trials: int
    """Completed trials of the study."""
    path: str = ""

    @classmethod
    def file_keys(cls) -> list[str]:
        """The file's top-level keys."""
        return [f.name for f in dataclasses.fields(cls) if f.name != "path"]

    def nested(self) -> dict[str, dict[str, Any]]:
        """The settings as config sections: ``{"train": {"lr": ...}, ...}``."""
        return nested_settings(self.settings)

    def to_file(self) -> dict[str, Any]:
        """What the file holds (settings nested by section)."""
        return {**{name: getattr(self, name) for name in self.file_keys() if name != "settings"}, "settings": self.nested()}

    def describe(self, cfg: Config) -> str:
        """One line for the task log and the report: which tuned values this config runs with, and when they were
        tuned; the explicitly configured values that beat tuned ones are named."""
        if self.mode != cfg.train.mode:
            return f"tuned settings in {self.path} not used: tuned for train.mode={self.mode}, this run trains {cfg.train.mode}"
        actual = {key: getattr(getattr(cfg, key.partition(".")[0]), key.partition(".")[2]) for key in self.settings}
        used = {key: value for key, value in self.settings.items() if actual[key] == value}
        overridden = {key: actual[key] for key in self.settings if key not in used}
        line = (
            f"tuned settings from {self.path} (tuned {self.tuned_at} on night {self.run_date}, {self.trials} trials, "
            f"{self.metric}={self.value:.4f}): {settings_line(used) or 'none used'}"
        )
        return line + (f"; set explicitly instead: {settings_line(overridden)}" if overridden else "")


def nested_settings(settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"train.lr": x}`` -> ``{"train": {"lr": x}}`` (what ``Config.replace`` and the YAML config take)."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in settings.items():
        section, _, name = key.partition(".")
        out.setdefault(section, {})[name] = value
    return out


def settings_line(settings: dict[str, Any]) -> str:
    """``train.lr=0.0012 model.encoder=gru``: settings as a log shows them (floats to 4 significant digits)."""
    return " ".join(f"{key}={_short(value)}" for key, value in settings.items())


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def tuned_settings(cfg: Config) -> TunedSettings | None:
    """The tuned settings file of ``cfg``'s warehouse, when ``tune.use_tuned`` and the file exists (a local file:
    a warehouse on s3:// has none); an unknown key or a bad value is refused naming the file and the key."""
    path = Path(cfg.layout.tuned_settings())
    if not cfg.tune.use_tuned or "://" in cfg.warehouse.root or not path.is_file():
        return None
    import yaml

    data = yaml.safe_load(path.read_text())
    fix = "rerun `dqlrec tune`, or set tune.use_tuned: false"
    if not isinstance(data, dict):
        raise ConfigError(f"tuned settings file {path}: expected a mapping of {TunedSettings.file_keys()}; {fix}")
    unknown = sorted(set(data) - set(TunedSettings.file_keys()))
    missing = sorted(set(TunedSettings.file_keys()) - set(data))
    if unknown or missing:
        raise ConfigError(
            f"tuned settings file {path}: unknown key(s) {unknown}, missing key(s) {missing}; "
            f"expected {TunedSettings.file_keys()}; {fix}"
        )
    sections = data["settings"] or {}
    if not isinstance(sections, dict) or not all(isinstance(v, dict) for v in sections.values()):
        raise ConfigError(f"tuned settings file {path}: settings must map sections to fields (train: {{lr: ...}}); {fix}")
    flat = {f"{section}.{name}": value for section, fields in sections.items() for name, value in fields.items()}
    refused = sorted(set(flat) - set(TUNED_KEYS))
    if refused:
        raise ConfigError(
            f"tuned settings file {path}: setting(s) {refused} are not tuned settings; a tuned file may set only "
            f"{list(TUNED_KEYS)}; {fix}"
        )
    parsed = from_dict(sections, origin=f"tuned settings file {path}")  # each value coerced and checked
    settings = {  # in TUNED_KEYS' order, whatever the file's
        key: getattr(getattr(parsed, key.partition(".")[0]), key.partition(".")[2]) for key in TUNED_KEYS if key in flat
    }
    try:
        numbers = {"value": float(data["value"]), "trials": int(data["trials"])}
        return TunedSettings(**{**data, **numbers, "settings": settings}, path=str(path))
    except (TypeError, ValueError) as error:
        raise ConfigError(f"tuned settings file {path}: {error}; {fix}") from None
