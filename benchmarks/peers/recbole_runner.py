"""Train one RecBole sequential model on the leave-one-out split and export its test rankings.

Runs *inside* var/bench/recbole-venv (recbole_env.py builds it and starts this file); it imports
only RecBole, torch, numpy and the standard library, never dql_model.

    python recbole_runner.py --model GRU4Rec --data-dir DIR --out DIR [--epochs N] [--threads T]

RecBole is used as its authors configure it for this protocol: ``eval_args`` split
``{LS: valid_and_test}``, order ``TO``, mode ``full``; cross-entropy over all items; its default
sizes and optimiser; early stopping on validation NDCG@10 (``stopping_step`` epochs without
improvement). Two work-arounds for RecBole 1.2.1 under torch 2.13, neither changing what it
computes:

- its checkpoints pickle its Config, which torch >= 2.6 refuses to load by default; the best
  epoch's weights are kept in memory instead (no checkpoint is written or unpickled), and the
  test evaluation runs on them with ``load_best_model=False``;
- importing its model zoo turns on ``torch.autograd.set_detect_anomaly(True)`` process-wide
  (sine.py), which only slows training: it is turned off again after get_model.

A run to early stopping takes hours of a CPU core, longer than one sitting may last. With
``--resume-file`` the state after each epoch (weights, optimiser, the early-stopping counters, the
best epoch's weights, the epoch times and every random generator the training draws from: torch's,
the training loader's, NumPy's and Python's) is written to that file, atomically; a rerun with the
same file goes on after the last finished epoch, as the uninterrupted run would have, and the record
lists the epochs it resumed at. The file holds tensors, numbers and strings only and is read with
``torch.load(weights_only=True)``; it is removed once the record is written.

Written to ``--out``: ``<model>.json`` (RecBole's reported validation and test metrics, the
epochs, training seconds, the user and item tokens, each user's test target and top-10 with and
without the user's history masked) and ``<model>.scores.npy`` (float32 [users, items + 1] test
scores in RecBole's item order, column 0 padding at -inf, history not masked).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

TOP_K = 10


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, choices=["GRU4Rec", "SASRec"])
    parser.add_argument("--dataset", required=True, help="RecBole dataset name (never ml-100k: recbole_env)")
    parser.add_argument("--data-dir", required=True, type=Path, help="folder holding DATASET/DATASET.inter")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument(
        "--epochs", type=int, default=300, help="cap on epochs (early stopping usually ends first)"
    )
    parser.add_argument("--stopping-step", type=int, default=10, help="epochs without a better valid NDCG@10")
    parser.add_argument(
        "--time-budget-s",
        type=float,
        default=0.0,
        help="no new epoch after this many training seconds (0: none)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument(
        "--resume-file", type=Path, default=None, help="the state after each epoch; a rerun goes on from it"
    )
    return parser.parse_args(argv)


def recbole_config(args: argparse.Namespace):
    from recbole.config import Config

    return Config(
        model=args.model,
        dataset=args.dataset,
        config_dict={
            "data_path": str(args.data_dir),
            "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
            "eval_args": {
                "split": {"LS": "valid_and_test"},
                "order": "TO",
                "mode": "full",
                "group_by": "user",
            },
            "metrics": ["Hit", "NDCG", "MRR"],
            "topk": [TOP_K],
            "valid_metric": f"NDCG@{TOP_K}",
            "loss_type": "CE",
            "train_neg_sample_args": None,
            "epochs": args.epochs,
            "stopping_step": args.stopping_step,
            "seed": args.seed,
            "reproducibility": True,
            "device": "cpu",
            "use_gpu": False,
            "show_progress": False,
            "save_dataset": False,
            "save_dataloaders": False,
            "worker": 0,
            "checkpoint_dir": str(args.out / "recbole-checkpoints"),
        },
    )


class TimeBudgetReached(Exception):
    """Raised before an epoch that would start after --time-budget-s."""


def make_trainer(config, model, time_budget_s: float):
    from recbole.trainer import Trainer

    class InMemoryBestTrainer(Trainer):
        """RecBole's Trainer, keeping the best epoch's weights in memory instead of a pickled file."""

        best_state: dict[str, torch.Tensor] | None = None
        epoch_seconds: list[float] = []

        def _save_checkpoint(self, epoch, verbose=True, **kwargs):
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.best_epoch = epoch + 1

        def _train_epoch(self, *args, **kwargs):
            started = time.perf_counter()
            if time_budget_s and sum(self.epoch_seconds) >= time_budget_s:
                raise TimeBudgetReached
            try:
                return super()._train_epoch(*args, **kwargs)
            finally:
                self.epoch_seconds.append(time.perf_counter() - started)
                print(f"epoch {len(self.epoch_seconds)}: {self.epoch_seconds[-1]:.1f}s train", flush=True)

    trainer = InMemoryBestTrainer(config, model)
    trainer.epoch_seconds = []
    trainer.best_epoch = 0
    return trainer


class Resume:
    """The training's state after each finished epoch, in one file a rerun goes on from (docstring)."""

    FORMAT = 1

    def __init__(self, path: Path, trainer, train_data, stopping_step: int):
        self.path, self.trainer, self.train_data, self.stopping_step = path, trainer, train_data, stopping_step
        self.seconds_before = 0.0
        self.resumed_at: list[int] = []
        self.stopped = False

    def load(self) -> bool:
        """Restore the state of the file, if there is one; True when it did."""
        if not self.path.exists():
            return False
        state = torch.load(self.path, weights_only=True)
        if state.get("format") != self.FORMAT:
            raise ValueError(f"{self.path}: resume format {state.get('format')}, expected {self.FORMAT}")
        trainer = self.trainer
        trainer.model.load_state_dict(state["model"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.start_epoch, trainer.cur_step = state["next_epoch"], state["cur_step"]
        trainer.best_valid_score, trainer.best_valid_result = state["best_valid_score"], state["best_valid_result"]
        trainer.best_state, trainer.best_epoch = state["best_state"] or None, state["best_epoch"]
        trainer.epoch_seconds = list(state["epoch_seconds"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        self.train_data.generator.set_state(rng["loader"])
        np.random.set_state(("MT19937", rng["numpy_keys"].numpy().astype(np.uint32), *rng["numpy_rest"]))
        random.setstate((rng["python_version"], tuple(rng["python_state"]), rng["python_gauss"]))
        self.seconds_before, self.stopped = state["train_seconds"], state["stopped"]
        self.resumed_at = [*state["resumed_at"], state["next_epoch"]]
        print(f"resuming after epoch {state['next_epoch']} from {self.path}", flush=True)
        return True

    def save(self, epoch_idx: int, seconds: float) -> None:
        """After epoch ``epoch_idx`` (0-based) and its validation: RecBole's fit calls back here."""
        trainer = self.trainer
        _, keys, *rest = np.random.get_state()
        version, python_state, gauss = random.getstate()
        state = {
            "format": self.FORMAT,
            "next_epoch": epoch_idx + 1,
            "stopped": trainer.cur_step > self.stopping_step,  # early_stopping's own stop rule
            "cur_step": trainer.cur_step,
            "best_valid_score": float(trainer.best_valid_score),
            "best_valid_result": {k: float(v) for k, v in (trainer.best_valid_result or {}).items()} or None,
            "best_state": trainer.best_state or {},
            "best_epoch": trainer.best_epoch,
            "model": trainer.model.state_dict(),
            "optimizer": trainer.optimizer.state_dict(),
            "epoch_seconds": list(trainer.epoch_seconds),
            "train_seconds": self.seconds_before + seconds,
            "resumed_at": self.resumed_at,
            "rng": {
                "torch": torch.get_rng_state(),
                "loader": self.train_data.generator.get_state(),
                "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
                "numpy_rest": [int(rest[0]), int(rest[1]), float(rest[2])],
                "python_version": version,
                "python_state": list(python_state),
                "python_gauss": gauss,
            },
        }
        partial = self.path.with_name(self.path.name + ".partial")
        torch.save(state, partial)
        os.replace(partial, self.path)


@torch.no_grad()
def export_rankings(model, test_data, dataset) -> dict[str, object]:
    """Test scores of every user, RecBole's own top-10 (history not masked: what its metrics
    score) and the top-10 with the user's other items masked; all as tokens."""
    uid_field, iid_field = dataset.uid_field, dataset.iid_field
    inter = dataset.inter_feat
    user_items: dict[int, set[int]] = {}
    for u, i in zip(inter[uid_field].tolist(), inter[iid_field].tolist(), strict=True):
        user_items.setdefault(u, set()).add(i)
    model.eval()
    users, targets, score_rows = [], [], []
    for interaction, _history, _positive_u, positive_i in test_data:
        scores = model.full_sort_predict(interaction).view(len(interaction), -1).float()
        scores[:, 0] = -np.inf
        users.extend(interaction[uid_field].tolist())
        targets.extend(positive_i.tolist())
        score_rows.append(scores.numpy())
    scores = np.concatenate(score_rows)
    unmasked = torch.topk(torch.from_numpy(scores), TOP_K, dim=1).indices.numpy()
    masked_scores = scores.copy()
    for row, (u, target) in enumerate(zip(users, targets, strict=True)):
        masked_scores[row, sorted(user_items[u] - {target})] = -np.inf
    masked = torch.topk(torch.from_numpy(masked_scores), TOP_K, dim=1).indices.numpy()

    def tokens(field, ids):
        return [str(t) for t in dataset.id2token(field, np.asarray(ids))]

    return {
        "item_tokens": ["[PAD]", *tokens(iid_field, np.arange(1, dataset.item_num))],
        "users": tokens(uid_field, users),
        "targets": tokens(iid_field, targets),
        "top10_unmasked": [tokens(iid_field, row) for row in unmasked],
        "top10_masked": [tokens(iid_field, row) for row in masked],
        "scores": scores,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, init_logger, init_seed

    args.out.mkdir(parents=True, exist_ok=True)
    config = recbole_config(args)
    init_seed(config["seed"], config["reproducibility"])
    torch.set_num_threads(args.threads)  # init_seed leaves threads alone, but be explicit after it
    init_logger(config)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    # get_model imports RecBole's model zoo, whose sine.py turns anomaly detection on (docstring)
    torch.autograd.set_detect_anomaly(False)
    trainer = make_trainer(config, model, args.time_budget_s)
    resume = Resume(args.resume_file, trainer, train_data, args.stopping_step) if args.resume_file else None
    if resume:
        resume.load()

    started = time.perf_counter()

    def epoch_done(epoch_idx, _valid_score):
        if resume:
            resume.save(epoch_idx, time.perf_counter() - started)

    try:
        if not (resume and resume.stopped):
            trainer.fit(train_data, valid_data, saved=True, show_progress=False, callback_fn=epoch_done)
        stopped_by = "early stopping" if len(trainer.epoch_seconds) < args.epochs else "epoch cap"
    except TimeBudgetReached:
        stopped_by = "time budget"
    train_seconds = time.perf_counter() - started + (resume.seconds_before if resume else 0.0)
    if trainer.best_state is None:
        raise RuntimeError(f"{args.model}: RecBole never reported a best validation epoch")
    model.load_state_dict(trainer.best_state)
    test_result = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    rankings = export_rankings(model, test_data, dataset)

    np.save(
        args.out / f"{args.model}.scores.npy", rankings.pop("scores").astype(np.float32), allow_pickle=False
    )
    record = {
        "model": args.model,
        "recbole_test": {k: float(v) for k, v in test_result.items()},
        "recbole_valid": {k: float(v) for k, v in trainer.best_valid_result.items()},
        "best_valid_ndcg@10": float(trainer.best_valid_score),
        "best_epoch": trainer.best_epoch,
        "epochs_run": len(trainer.epoch_seconds),
        "epoch_cap": args.epochs,
        "stopping_step": args.stopping_step,
        "time_budget_s": args.time_budget_s,
        "stopped_by": stopped_by,
        "train_seconds": train_seconds,
        "epoch_train_seconds": trainer.epoch_seconds,
        "resumed_at_epochs": resume.resumed_at if resume else [],
        "threads": torch.get_num_threads(),
        "anomaly_detection": torch.is_anomaly_enabled(),
        "max_item_list_length": config["MAX_ITEM_LIST_LENGTH"],
        "train_batch_size": config["train_batch_size"],
        "learning_rate": config["learning_rate"],
        "torch": torch.__version__,
        **rankings,
    }
    (args.out / f"{args.model}.json").write_text(json.dumps(record))
    if resume:
        args.resume_file.unlink(missing_ok=True)
    print(
        f"{args.model}: test {record['recbole_test']} after {record['epochs_run']} epochs, {train_seconds:.0f}s"
    )


if __name__ == "__main__":
    main()
