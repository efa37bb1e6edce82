"""Hyper-parameter search on a night's validation split: `dqlrec tune` and the weekly dql_tuning DAG.

Owns: the search space (``suggest``), the study of a night and the writing of the tuned settings file.

Each trial trains a fresh model with ``dql_model.learning.train.train_model`` on the night's transitions
partition, exactly as the nightly challenger does (same train split, same validation split, same masks),
but from scratch, without checkpoints and within ``tune.minutes / tune.trials`` minutes (its
``train.max_minutes``). Its value is the best validation value of ``eval.early_stop_metric`` that training
reached (``TrainResult.best_value``); no test stage of a benchmark is ever read.

The study lives in the warehouse (``Layout.tuning_study``, Optuna's RDB storage on SQLite), named
``<train.mode>-<night>``, so a search that was killed resumes: the same command finds the study, keeps its
completed trials, fails the trial the kill left RUNNING and runs it again with the same settings
(``RetryHeartbeatStaleTrialCallback``), then runs trials until the study holds ``trials`` completed ones.
One search per warehouse at a time (``Layout.tune_lock``): so a RUNNING trial found at the start is a
killed run's and is failed at once; the heartbeat does the same for a trial whose process hangs.

When the study is complete its best trial becomes the tuned settings file (``Layout.tuned_settings``,
``config.TunedSettings``, written atomically), which ``load_config`` reads below the YAML config.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dql_model import faults
from dql_model.config import TUNED_KEYS, Config, ConfigError, TunedSettings, nested_settings, settings_line
from dql_model.contract import schema
from dql_model.errors import MissingInput
from dql_model.pipeline.tasks import say
from dql_model.warehouse import data, locks, run_dates, storage

HEARTBEAT_S = 60
"""Seconds between a running trial's heartbeats in the study."""
GRACE_S = 180
"""A RUNNING trial without a heartbeat for this long is failed (and run again) by the next search."""
MAX_RETRY = 3
"""Times a trial killed mid-way is run again with the same settings before the search moves on."""
WIDTHS = (32, 64, 128)
"""model.embed_dim and model.hidden_dim, tried together."""
ENCODERS = ("gru", "sasrec")


def suggest(trial, mode: str) -> dict[str, Any]:
    """The search space, in one place: ``section.field`` -> the trial's value.

    train.lr log-uniform 3e-4..5e-3; model.dropout 0..0.5; train.seq_len 20..200 in steps of 10;
    model.encoder gru or sasrec; model.embed_dim = model.hidden_dim in 32, 64, 128; train.weight_decay 0
    or log-uniform 1e-6..1e-3; for train.mode dqn also train.cql_alpha log-uniform 0.5..16.
    """
    width = trial.suggest_categorical("model.width", WIDTHS)
    decay = trial.suggest_categorical("train.weight_decay_on", (False, True))
    settings = {
        "train.lr": trial.suggest_float("train.lr", 3e-4, 5e-3, log=True),
        "model.dropout": trial.suggest_float("model.dropout", 0.0, 0.5),
        "train.seq_len": trial.suggest_int("train.seq_len", 20, 200, step=10),
        "model.encoder": trial.suggest_categorical("model.encoder", ENCODERS),
        "model.embed_dim": width,
        "model.hidden_dim": width,
        "train.weight_decay": trial.suggest_float("train.weight_decay", 1e-6, 1e-3, log=True) if decay else 0.0,
    }
    if mode == "dqn":
        settings["train.cql_alpha"] = trial.suggest_float("train.cql_alpha", 0.5, 16.0, log=True)
    assert set(settings) <= set(TUNED_KEYS), "config.TUNED_KEYS must list every searched setting"
    return settings


def study_name(cfg: Config, run_date: str) -> str:
    return f"{cfg.train.mode}-{run_date}"


def latest_night(cfg: Config) -> str:
    """The newest night with a transitions partition (the one a search of ``latest`` tunes on)."""
    nights = storage.dated_folders(cfg.layout.table(schema.TRANSITIONS))
    if not nights:
        raise MissingInput(
            f"no transitions partition under {cfg.layout.table(schema.TRANSITIONS)}: run a night first "
            "(`dqlrec task build_training_data --run-date D`), then tune on it"
        )
    return max(nights)


def tune(
    cfg: Config,
    run_date: str = run_dates.LATEST,
    *,
    trials: int = 0,
    minutes: float = 0.0,
    progress: Callable[[str], None] = say,
) -> dict[str, Any]:
    """Search until the night's study holds ``trials`` completed trials (0: tune.trials), each trial within
    ``minutes / trials`` minutes (0: tune.minutes); write the tuned settings file; return its contents."""
    import optuna

    trials, minutes = trials or cfg.tune.trials, minutes or cfg.tune.minutes
    if trials < 1 or not minutes > 0:
        raise ConfigError(f"tune: --trials {trials} and --minutes {minutes} must be at least 1 and above 0")
    if "://" in cfg.warehouse.root:
        raise ConfigError(f"tune: warehouse.root={cfg.warehouse.root} is not a local folder; the study is a SQLite file")
    night = latest_night(cfg) if str(run_date).lower() == run_dates.LATEST else schema.iso_date(run_date)
    transitions = cfg.layout.partition(schema.TRANSITIONS, night)
    if not Path(transitions).is_dir():
        raise MissingInput(f"tune: no transitions partition {transitions}; run the night {night} first")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is ours
    with locks.run_date_lock(
        cfg.layout.tune_lock(),
        run_date=f"{night} (its tuning study)",
        step="tune",
        wait_s=cfg.warehouse.lock_wait_s,
        stale_s=cfg.warehouse.lock_stale_s,
    ):
        study, retry = _open_study(cfg, night)
        _fail_killed_trials(study, retry, progress)
        done = _complete(study)
        share = minutes / trials
        progress(
            f"study {study.study_name} ({cfg.layout.tuning_study()}): {done} of {trials} trials complete; "
            f"{max(trials - done, 0)} to run, {share:.3g} min each, on {cfg.eval.early_stop_metric} of night {night}"
        )
        if done < trials:
            objective = _objective(cfg, night, share, progress)
            study.optimize(objective, n_trials=trials - done, callbacks=[_report(trials, cfg.eval.early_stop_metric, progress)])
        tuned = _tuned(cfg, study, night)
        storage.write_text_atomic(cfg.layout.tuned_settings(), _yaml(tuned))
    progress(
        f"wrote {tuned.path} (study {tuned.study}, {tuned.trials} trials, {tuned.metric}={tuned.value:.4f}): "
        f"{settings_line(tuned.settings)}"
    )
    return {**tuned.to_file(), "path": tuned.path}


def _open_study(cfg: Config, night: str):
    import optuna
    from optuna.exceptions import ExperimentalWarning

    Path(cfg.layout.tuning_study()).parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)  # the heartbeat retry is experimental in Optuna
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
        rdb = optuna.storages.RDBStorage(
            f"sqlite:///{cfg.layout.tuning_study()}",
            heartbeat_interval=HEARTBEAT_S,
            grace_period=GRACE_S,
            heartbeat_stale_trial_callback=retry,
        )
    study = optuna.create_study(
        study_name=study_name(cfg, night),
        storage=rdb,
        direction="maximize",  # every validation metric ranks higher-is-better (train_model stops on the same)
        load_if_exists=True,
    )
    searched = study.user_attrs.get("metric")
    if searched is None:
        study.set_user_attr("metric", cfg.eval.early_stop_metric)
    elif searched != cfg.eval.early_stop_metric:  # values of two metrics cannot be ranked together
        raise ConfigError(
            f"tune: study {study.study_name} in {cfg.layout.tuning_study()} searched {searched}, this config stops on "
            f"eval.early_stop_metric={cfg.eval.early_stop_metric}; set it back, or delete the study to start over"
        )
    # Seeded by the trials already there: a resumed search must not draw the first run's settings again.
    study.sampler = optuna.samplers.TPESampler(seed=cfg.train.seed + len(study.trials))
    return study, retry


def _fail_killed_trials(study, retry, progress: Callable[[str], None]) -> None:
    """Under the tune lock no other search runs: a RUNNING trial is a killed one. Fail it and queue it again."""
    import optuna

    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry(study, study.trials[trial.number])
        progress(f"trial {trial.number} was left running by a killed search: failed, queued again with its settings")


def _complete(study) -> int:
    import optuna

    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def _objective(cfg: Config, night: str, share: float, progress: Callable[[str], None]):
    from dql_model.learning.train import train_model

    exclude = data.exclude_rule(cfg.score, data.night_protocol(cfg, night))

    def objective(trial) -> float:
        settings = suggest(trial, cfg.train.mode)
        overrides = nested_settings(settings)
        overrides["train"] = {**overrides["train"], "max_minutes": share, "checkpoints": False}
        progress(f"trial {trial.number}: {settings_line(settings)}")
        result = train_model(
            cfg.replace(**overrides),
            transitions_dir=cfg.layout.partition(schema.TRANSITIONS, night),
            item_index_dir=cfg.layout.partition(schema.ITEM_INDEX, night),
            exclude=exclude,
            progress=lambda line: progress(f"trial {trial.number}: {line}"),
        )
        faults.point("tune:trial_done")
        if not math.isfinite(result.best_value):
            raise MissingInput(
                f"tune: the night {night} has no validation transitions in "
                f"{cfg.layout.partition(schema.TRANSITIONS, night)}; tuning needs a validation split"
            )
        trial.set_user_attr("settings", settings)
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("seconds", round(result.seconds, 1))
        return result.best_value

    return objective


def _report(trials: int, metric: str, progress: Callable[[str], None]):
    """A line after each trial: its value, the count of completed trials, the best so far."""

    def callback(study, trial) -> None:
        value = "-" if trial.value is None else f"{trial.value:.4f}"
        done = _complete(study)
        best = f"; best {study.best_value:.4f} (trial {study.best_trial.number})" if done else ""
        progress(f"trial {trial.number} {trial.state.name.lower()}: {metric}={value}; {done} of {trials} complete{best}")

    return callback


def _tuned(cfg: Config, study, night: str) -> TunedSettings:
    best = study.best_trial
    settings = best.user_attrs["settings"]
    return TunedSettings(
        settings=settings,
        mode=cfg.train.mode,
        study=study.study_name,
        run_date=night,
        tuned_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        metric=cfg.eval.early_stop_metric,
        value=float(best.value),
        trials=_complete(study),
        path=cfg.layout.tuned_settings(),
    )


def _yaml(tuned: TunedSettings) -> str:
    import yaml

    header = f"# written by `dqlrec tune` from study {tuned.study}; read by load_config (tune.use_tuned)\n"
    return header + yaml.safe_dump(tuned.to_file(), sort_keys=False)
