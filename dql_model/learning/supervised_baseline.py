"""The supervised baseline: the same Q-network trained on next-item cross-entropy only (``train.mode:
supervised``), picked by a small search over ``SUPERVISED_GRID``. The training step trains it beside
the challenger, on the same transitions and with the same epoch budget, and saves it (with the search's
trials) in a registry-shaped folder of the night (``Layout.baseline_models``); the gate only loads it.
It never becomes a champion: it lives outside the model registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dql_model.config import Config
from dql_model.contract import schema
from dql_model.learning import registry, train
from dql_model.learning.networks import QNetwork
from dql_model.warehouse import data

SUPERVISED_GRID = (
    {"train": {}, "model": {}},
    {"train": {}, "model": {"dropout": 0.3}},
    {"train": {"lr": 5e-3}, "model": {}},
    {"train": {"lr": 1e-3}, "model": {"embed_dim": 128, "hidden_dim": 128}},
)
"""Overrides of the run's config tried for the supervised baseline, in order; the nightly run tries
the first ``eval.baseline_trials`` of them."""

VERSION_PREFIX = "supervised"
"""Name prefix of a saved baseline (``supervised-<hash of weights and config>``)."""


@dataclass
class SupervisedSearch:
    """The supervised baseline picked by the search, and what every trial reached."""

    model: QNetwork
    """Best trial's network (best epoch's weights), eval mode."""
    history: list[dict[str, float]]
    """Per-epoch metrics of the best trial."""
    overrides: dict[str, Any]
    """Config overrides of the best trial (a SUPERVISED_GRID entry)."""
    trials: list[dict[str, Any]] = field(default_factory=list)
    """Overrides, best value of eval.early_stop_metric, best epoch and seconds of every trial."""
    config: Config | None = None
    """The best trial's config (its overrides, the supervised mode, the epoch budget and the ``auto`` settings
    decided on the data: train.TrainResult.config); what the baseline is saved with."""


def supervised_config(cfg: Config, overrides: dict[str, Any], epochs: int) -> Config:
    """The run's config with the supervised mode, the trial's overrides and its epoch budget."""
    return cfg.replace(
        train={**overrides.get("train", {}), "mode": "supervised", "epochs": epochs},
        model=overrides.get("model", {}),
    )


def search_supervised(
    cfg: Config,
    *,
    transitions_dir: str,
    item_index_dir: str,
    trials: int | None = None,
    epochs: int | None = None,
    grid=SUPERVISED_GRID,
    exclude: str = "none",
    progress: Callable[[str], None] = print,
) -> SupervisedSearch | None:
    """Train the first ``trials`` grid settings (default eval.baseline_trials) in supervised mode
    and keep the best by the validation metric eval.early_stop_metric; None when trials is 0."""
    trials = cfg.eval.baseline_trials if trials is None else trials
    epochs = epochs or cfg.eval.baseline_epochs or cfg.train.epochs
    best: SupervisedSearch | None = None
    best_value = float("-inf")
    summaries = []
    for number, overrides in enumerate(grid[:trials], start=1):
        trial_cfg = supervised_config(cfg, overrides, epochs)
        result = train.train_model(
            trial_cfg,
            transitions_dir=transitions_dir,
            item_index_dir=item_index_dir,
            exclude=exclude,
            progress=lambda line, n=number: progress(f"supervised trial {n}/{trials}: {line}"),
        )
        value = result.best_value
        summaries.append(
            {
                "overrides": overrides,
                "value": value,
                "best_epoch": result.best_epoch,
                "seconds": round(result.seconds, 1),
            }
        )
        if best is None or value > best_value:
            best_value = value
            best = SupervisedSearch(
                model=result.model, history=result.history, overrides=overrides, config=result.config
            )
    if best is not None:
        best.trials = summaries
    return best


def train_and_save(cfg: Config, run_date: str, *, progress: Callable[[str], None] = print) -> str | None:
    """Search the supervised baseline on the run date's transitions and save the best trial; its
    version name (None when ``eval.baseline_trials`` is 0). Saving the same weights again (a rerun)
    is a no-op."""
    protocol = data.night_protocol(cfg, run_date)
    search = search_supervised(
        cfg,
        transitions_dir=cfg.layout.partition(schema.TRANSITIONS, run_date),
        item_index_dir=cfg.layout.partition(schema.ITEM_INDEX, run_date),
        exclude=data.exclude_rule(cfg.score, protocol),
        progress=progress,
    )
    if search is None:
        progress("supervised baseline: eval.baseline_trials is 0, none trained")
        return None
    metrics = {
        "history": search.history,
        "picked": search.overrides,
        "trials": search.trials,
        "metric": cfg.eval.early_stop_metric,
    }
    version = registry.save_model(
        search.model,
        search.config,
        registry_root=cfg.layout.baseline_models(run_date),
        metrics=metrics,
        data_window={"run_date": run_date, "train_window": cfg.etl.train_window},
        version_prefix=VERSION_PREFIX,
    )
    progress(f"supervised baseline {version} saved (best of {len(search.trials)} trials)")
    return version


def load(cfg: Config, run_date: str, version: str | None) -> tuple[QNetwork, dict[str, Any]] | None:
    """The baseline ``train_and_save`` saved for the run date (network and metadata); None without one."""
    if not version:
        return None
    return registry.load_model(Path(cfg.layout.baseline_models(run_date)) / version)
