"""The nightly evaluation and the champion/challenger gate.

Owns one decision: which model scores tonight. ``evaluate_night`` ranks the validation split with
tonight's challenger, the incumbent champion and the baselines fitted in the same run
(supervised, co-occurrence, popularity), lets the gate decide, points the champion at the winner,
measures how each treats the items training never saw when validation has events on them, and
simulates the policies' value in the synthetic shop. Its result, ``NightEvaluation``, is the
schema of ``evaluation.json`` (``to_json``) and of the small decision the DAG passes on
(``decision``).

The gate (``compare``) promotes a challenger unless it is worse than the champion on
``eval.gate_metric`` by more than ``eval.gate_tolerance`` (relative). Without a challenger the
champion keeps scoring; without either there is nothing to score with, and the night fails.

When the warehouse has impressions of the last ``eval.ope_days`` days, the candidates' off-policy
estimates (``dql_model.judging.ope_night``) go into ``evaluation.json["ope"]``; an ``ope/*`` gate metric
compares those, and falls back to ``eval/ndcg@10`` (saying why) on a night without impressions
or with too small an effective sample. ``decided_by`` records the metric that decided.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dql_model.config import Config
from dql_model.contract import schema

HEADLINE_METRICS = (
    schema.metric_name("ndcg", 10),
    schema.metric_name("hr", 10),
    schema.metric_name("ndcg", 10, schema.PURCHASE),
)
"""Printed per model in the task log; one of an event type no published list can score is left out
(``evaluate.unscorable_event_types``; a line says why); a metric the data lacks shows as n/a."""
NEW_ITEM_HEADLINE = (
    schema.metric_name("hr", 10, schema.NEW_ITEMS),
    schema.metric_name("ndcg", 10, schema.NEW_ITEMS),
    schema.metric_name("slots", 10, schema.NEW_ITEMS),
    schema.metric_name("coverage", 10, schema.NEW_ITEMS),
)
"""Printed per model when validation has events on new items."""


def compare(
    champion_metrics: dict[str, float] | None,
    challenger_metrics: dict[str, float],
    *,
    metric: str,
    tolerance: float,
) -> tuple[bool, str]:
    """(promote?, why): promote unless the challenger is worse than the champion beyond ``tolerance``.

    Worse is judged in the metric's own direction (``schema.higher_is_better``), and the allowance is
    ``tolerance`` times the champion's magnitude: for a higher-is-better metric the floor is
    ``champion - tolerance * |champion|``, which loosens the bar whatever the sign (off-policy values
    on ratings can be negative); for a lower-is-better one the ceiling is ``champion + tolerance *
    |champion|``. Promotes when there is no champion (or it lacks the metric); keeps the champion
    when the challenger lacks the metric or it is not a number.
    """
    challenger = challenger_metrics.get(metric)
    if challenger is None or not math.isfinite(float(challenger)):
        return False, f"challenger has no finite {metric} ({challenger!r})"
    champion = (champion_metrics or {}).get(metric)
    if champion is None or not math.isfinite(float(champion)):
        return True, f"no champion {metric} to compare with (challenger {challenger:.4f})"
    allowance = tolerance * abs(champion)
    if schema.higher_is_better(metric):
        bound, ok = champion - allowance, challenger >= champion - allowance
        sign, word = (">=" if ok else "<"), "-"
    else:
        bound, ok = champion + allowance, challenger <= champion + allowance
        sign, word = ("<=" if ok else ">"), "+"
    reason = f"challenger {metric}={challenger:.4f} {sign} {bound:.4f} (champion {champion:.4f} {word} {tolerance:.0%})"
    return ok, reason


@dataclass
class NightEvaluation:
    """Everything the night's evaluation found and decided; ``to_json`` is evaluation.json."""

    run_date: str
    validation_events: int
    metrics: dict[str, dict[str, float]]
    """Model name -> validation metrics (challenger, champion, then the baselines)."""
    champion_before: str | None
    """The incumbent the challenger faced (None on the first night)."""
    challenger: str | None
    """Tonight's trained version (None when training failed or was skipped)."""
    promoted: bool
    reason: str
    scoring_version: str
    """The champion after the gate: the model that scores tonight."""
    gate_metric: str
    """The metric the gate compared (eval.gate_metric, or its all-events form when the data has no
    event of its type, or eval/ndcg@10 when an off-policy gate metric had no usable estimate)."""
    decided_by: str | None = None
    """The metric whose comparison decided; None when nothing was compared (no challenger, or no
    validation events and no usable off-policy estimate)."""
    protocol: dict[str, Any] = field(default_factory=dict)
    """How the night held out validation, what it masked, and the event types it had (ETL summary)."""
    baselines: dict[str, Any] = field(default_factory=dict)
    """How each baseline was picked (search trials, tuned settings)."""
    learning_curves: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    new_items: dict[str, dict[str, float]] = field(default_factory=dict)
    """Model name -> ``evaluate.evaluate_new_items`` figures (the baselines with category popularity);
    empty when no validation event is on an item the training split never saw."""
    simulation: dict[str, Any] | None = None
    """The headline simulated policy value (first of eval.sim_refresh); None when off."""
    simulation_more: list[dict[str, Any]] = field(default_factory=list)
    """The other refresh protocols of eval.sim_refresh."""
    ope: dict[str, Any] | None = None
    """``ope_night.estimate_night``: the off-policy estimates per candidate; None without impressions."""
    unscorable: dict[str, str] = field(default_factory=dict)
    """Event type -> why its own metrics cannot be non-zero (``evaluate.unscorable_event_types``): the
    report and the summaries leave its columns out and say this instead."""

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        if self.simulation is None:
            del out["simulation"], out["simulation_more"]
        if self.ope is None:
            del out["ope"]
        if not self.new_items:
            del out["new_items"]
        return out

    def decision(self) -> dict[str, Any]:
        """What the scoring task needs (the DAG's XCom): small and JSON-able."""
        return {"scoring_version": self.scoring_version, "promoted": self.promoted, "reason": self.reason}


def evaluate_night(
    cfg: Config,
    run_date: str,
    challenger: str | None,
    *,
    no_challenger_reason: str = "train_model failed",
    supervised_baseline: str | None = None,
    progress: Callable[[str], object] = print,
) -> NightEvaluation:
    """Evaluate tonight's models, apply the gate and point the champion; see the module docstring."""
    from dql_model.evaluation import evaluate
    from dql_model.judging import baselines, ope_night, report
    from dql_model.learning import registry
    from dql_model.learning import supervised_baseline as supervised_baseline_module

    root = Path(cfg.registry.root)
    night = _Night.load(cfg, run_date, progress)
    # Without a challenger the current champion scores; with one, it faces the incumbent.
    champion = registry.incumbent_for(root, run_date) if challenger else registry.champion_version(root)
    if challenger is None and champion is None:
        raise RuntimeError(
            f"no model to score with for {run_date}: training did not produce a challenger "
            f"({no_challenger_reason}) and the registry {root} has no champion"
        )
    scorers, models = _registry_scorers(root, night.items, challenger=challenger, champion=champion)
    fitted = baselines.fit_baselines(
        cfg,
        transitions_dir=night.transitions_dir,
        item_index_dir=night.item_index_dir,
        items=night.items,
        val=night.val,
        exclude=night.exclude,
        supervised=supervised_baseline_module.load(cfg, run_date, supervised_baseline),
        masks=night.masks,
        progress=progress,
    )
    if supervised_baseline is None:
        progress("supervised baseline: none trained tonight (the training step did not run or failed)")
    scorers.update(fitted.scorers)
    results = evaluate.evaluate_models(scorers, night.val, exclude=night.masks)
    unscorable = evaluate.unscorable_event_types(night.val, night.masks, rule=night.exclude)
    headline = [m for m in HEADLINE_METRICS if schema.metric_event_type(m) not in unscorable]
    for name, metrics in results.items():
        progress(f"{name:<12} " + "  ".join(f"{m} {_figure(metrics.get(m))}" for m in headline))
    if unscorable:
        progress(report.absent_columns_line(unscorable))
    new_item_metrics = _evaluate_new_items(scorers, night.val, night.masks, night.transitions_dir, night.items, progress)
    ope_result = ope_night.estimate_night(
        cfg, run_date, models, items=night.items, exclude=night.exclude, progress=progress
    )

    gate_metric, fallback, off_policy = _gate_metric(cfg, night.val, ope_result)
    if fallback:
        progress(f"gate: {fallback}")
    if challenger is None:
        promoted, reason, decided_by = False, f"no challenger ({no_challenger_reason})", None
    else:
        promoted, reason, decided_by = _decide(
            cfg, results, off_policy, gate_metric, fallback, has_validation=bool(len(night.val))
        )
        # Point the champion explicitly either way: on a rerun it may still name this date's model.
        verdict = f"gate {run_date}: {'promoted' if promoted else 'kept champion'} ({reason})"
        registry.set_champion(root, challenger if promoted else champion, why=verdict)
    scoring_version = registry.champion_version(root)
    progress(f"gate: {'promoted' if promoted else 'kept champion'} ({reason}); scoring with {scoring_version}")
    if scoring_version is None:  # a challenger without the metric, and no champion to fall back on
        raise RuntimeError(f"no model to score with for {run_date}: {reason}, and the registry {root} has no champion")
    evaluation = NightEvaluation(
        run_date=run_date,
        validation_events=int(len(night.val.action)),
        metrics=results,
        champion_before=champion,
        challenger=challenger,
        promoted=promoted,
        reason=reason,
        scoring_version=scoring_version,
        gate_metric=gate_metric,
        decided_by=decided_by,
        protocol=night.protocol,
        baselines=fitted.details,
        new_items=new_item_metrics,
        learning_curves={
            **({"challenger": registry.version_metrics(root, challenger).get("history", [])} if challenger else {}),
            **fitted.histories,
        },
        ope=ope_result,
        unscorable=unscorable,
    )
    if cfg.eval.sim_users > 0:
        _simulate(evaluation, cfg, night.items, scorers, fitted.scorers, progress)
    return evaluation


@dataclass
class _Night:
    """What a night is judged on: its item index, validation split, protocol and the masks of its rule."""

    transitions_dir: str
    item_index_dir: str
    items: Any
    val: Any
    protocol: dict[str, Any]
    exclude: str
    masks: Any

    @classmethod
    def load(cls, cfg: Config, run_date: str, progress: Callable[[str], object]) -> _Night:
        from dql_model.warehouse import data

        transitions_dir = cfg.layout.partition(schema.TRANSITIONS, run_date)
        item_index_dir = cfg.layout.partition(schema.ITEM_INDEX, run_date)
        from dql_model.evaluation import evaluate

        val = data.load_transitions(transitions_dir, max_len=cfg.etl.max_len, split=schema.VALIDATION)
        protocol = data.night_protocol(cfg, run_date)
        exclude = data.exclude_rule(cfg.score, protocol)
        masks = data.load_exclusions(transitions_dir, exclude=exclude)
        items = data.load_item_features(item_index_dir, price_buckets=cfg.model.price_buckets)
        sample, why = evaluate.judged_sample(len(val), items.n_items, cfg.eval.max_events, cfg.train.seed)
        if sample is not None:
            progress(f"validation: judging a seeded sample of {len(sample)} of its {len(val)} events ({why})")
            protocol = {
                **protocol,
                "validation_events_total": len(val),
                "validation_sample": len(sample),
                "validation_sample_why": why,
            }
            val, masks = val.take(sample), masks.take(sample)
        present = {t: int((val.event_code == code).sum()) for t, code in schema.EVENT_CODE.items()}
        progress(
            f"validation: {len(val)} events ({', '.join(f'{t} {n}' for t, n in present.items() if n) or 'none'}), "
            f"split {protocol.get('validation', 'unknown')}, masking {exclude} items"
        )
        return cls(
            transitions_dir=transitions_dir,
            item_index_dir=item_index_dir,
            items=items,
            val=val,
            protocol=protocol,
            exclude=exclude,
            masks=masks,
        )


def _registry_scorers(root: Path, items, *, challenger: str | None, champion: str | None) -> tuple[dict, dict]:
    """(name -> Scorer, name -> (version, network)) of the challenger and the champion it faces."""
    from dql_model.learning import registry
    from dql_model.learning.scorer import QNetworkScorer

    scorers, models = {}, {}
    for name, version in (("challenger", challenger), ("champion", champion)):
        if version and not (name == "champion" and version == challenger):
            model, _ = registry.load_model(root / version)
            scorers[name] = QNetworkScorer(model, n_items=items.n_items)
            models[name] = (version, model)
    return scorers, models


def _decide(
    cfg: Config,
    results: dict[str, dict[str, float]],
    off_policy: dict[str, dict[str, float]] | None,
    gate_metric: str,
    fallback: str | None,
    *,
    has_validation: bool,
) -> tuple[bool, str, str | None]:
    """(promote?, why, the metric that decided or None) for a challenger: off-policy values when usable,
    else the validation metrics; with no validation events the newest model is promoted."""
    decided_by = None
    if off_policy is not None:
        promoted, reason = compare(
            off_policy.get("champion"), off_policy["challenger"], metric=gate_metric, tolerance=cfg.eval.gate_tolerance
        )
        decided_by = gate_metric
    elif not has_validation:
        promoted = True
        reason = "no validation events to compare on: the challenger, trained on the newest data, is promoted"
    else:
        promoted, reason = compare(
            results.get("champion"), results["challenger"], metric=gate_metric, tolerance=cfg.eval.gate_tolerance
        )
        decided_by = gate_metric
    if fallback and (decided_by or schema.is_ope_metric(cfg.eval.gate_metric)):
        reason = f"{reason}; {fallback}"
    return promoted, reason, decided_by


def _gate_metric(cfg: Config, val, ope_result) -> tuple[str, str | None, dict[str, dict[str, float]] | None]:
    """(metric the gate compares, why it is not eval.gate_metric or None, the off-policy values to
    compare when it is an ``ope/*`` estimate usable for the challenger and the champion, else None)."""
    from dql_model.evaluation import evaluate
    from dql_model.judging import ope_night

    metric = cfg.eval.gate_metric
    if not schema.is_ope_metric(metric):
        return (*evaluate.usable_metric(metric, val), None)
    values, why = ope_night.gate_values(ope_result, metric, ("challenger", "champion"))
    if values is not None and "challenger" in values:
        return metric, None, values
    fallback = OPE_FALLBACK_METRIC
    note = f"{metric} is not usable tonight ({why or 'no estimate for the challenger'}): the gate falls back to {fallback}"
    return fallback, note, None


OPE_FALLBACK_METRIC = schema.metric_name("ndcg", 10)
"""What an off-policy gate metric falls back to on a night without a usable estimate."""


def _evaluate_new_items(scorers, val, masks, transitions_dir, items, progress) -> dict[str, dict[str, float]]:
    """``evaluate.evaluate_new_items`` for every scorer and for category popularity, over the items the
    training split never shows; {} when no validation event is on one of them."""
    import numpy as np

    from dql_model.evaluation import evaluate
    from dql_model.judging import baselines
    from dql_model.warehouse import data

    counts, seen = data.item_usage(transitions_dir, n_items=items.n_items, split=schema.TRAIN)
    new = data.new_items(val, seen)
    on_new = int(np.isin(val.action, new).sum())
    if not on_new:
        return {}
    progress(f"new items: {len(new)} items the training split never shows, {on_new} validation events on them")
    by_category = baselines.CategoryPopularityScorer(counts, items.category, seen)
    results = {}
    for name, scorer in {**scorers, CATEGORY_POPULARITY: by_category}.items():
        results[name] = evaluate.evaluate_new_items(scorer, val, new, exclude=masks)
        figures = "  ".join(f"{m} {_figure(results[name].get(m))}" for m in NEW_ITEM_HEADLINE)
        progress(f"new items {name:<20} {figures}")
    return results


CATEGORY_POPULARITY = "category_popularity"
"""The name of the category-popularity baseline among the new-item figures."""


def _simulate(night: NightEvaluation, cfg: Config, items, scorers, baseline_scorers, progress) -> None:
    """The simulated value of tonight's DQN (the challenger, else the champion) and the baselines."""
    from dql_model.judging import policy_eval

    shared, shop_items = policy_eval.shop_items_known(cfg, items)
    if shared < SIM_MIN_SHARED * shop_items:
        progress(
            f"simulation skipped: it runs the synthetic shop, and tonight's item index has {shared} of its "
            f"{shop_items} items (the data is not the demo shop's); set eval.sim_users: 0 to silence this"
        )
        return
    dqn = "challenger" if "challenger" in scorers else "champion"
    policies = {dqn: scorers[dqn], **baseline_scorers}
    headline, *others = cfg.eval.sim_refresh
    night.simulation = policy_eval.simulate_policies(policies, cfg, items, refresh=headline, progress=progress)
    night.simulation_more = [
        policy_eval.simulate_policies(policies, cfg, items, refresh=mode, progress=progress) for mode in others
    ]


SIM_MIN_SHARED = 0.5
"""The simulation runs when tonight's item index holds at least this share of the shop's items."""


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
