"""Nightly training: stream the train split, update the Q-network, early-stop on validation.

    result = train_model(cfg, transitions_dir=..., item_index_dir=..., warm_start=champion)

Per epoch it prints one line of namespaced metrics (loss/*, q/*, eval/*) and keeps the weights
of the best epoch by the validation metric ``eval.early_stop_metric`` (``eval/ndcg@10`` by default):
with ``train.averaged_weights`` the Polyak average of the online weights is what is judged and kept. On CUDA the forward passes run under bf16
autocast; on CPU a run is bit-for-bit reproducible for a seed. The log names the softmax the loss
runs over (``train.loss_items``: full, or sampled on large catalogues; dql_model.learning.agent) and,
every PROGRESS_EVERY_S seconds inside an epoch, the steps done, the rate and the epoch's ETA.

``train.max_minutes`` bounds the night's training: the run stops at the end of the step where the
budget runs out, evaluates that cut epoch like a finished one, and keeps the best epoch so far. At the
run's first checkpoint the budget left becomes a number of steps at the rate so far (see _Clock), so
that a resumed run stops at the same step as an uninterrupted one.

With ``train.checkpoints`` every finished epoch is saved (networks, optimizer, history, best
weights, random state, the time budget spent), and inside an epoch every ``train.checkpoint_minutes``
the steps trained so far, under ``<registry.root>/.checkpoints/<run key>/``, the key being a hash
of the config, the input partitions and the warm-start weights. The same call after a crash
resumes where the last checkpoint was written (skipping the steps of that epoch it trained), stops
at the step the budget planned, and ends with the same weights as an uninterrupted run (on CPU, bit
for bit: saving changes nothing the run goes on with); a finished run removes its checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from dql_model import faults
from dql_model.config import Config
from dql_model.contract import schema
from dql_model.evaluation.evaluate import evaluate_scorer, judged_sample, usable_metric
from dql_model.learning import sequences, shape
from dql_model.learning.agent import DQNAgent, describe_loss
from dql_model.learning.device import resolve_device, seed_everything
from dql_model.learning.networks import QNetwork
from dql_model.learning.scorer import QNetworkScorer
from dql_model.warehouse import data

CHECKPOINTS = ".checkpoints"
"""Folder under the registry root with one sub-folder of checkpoints per training run."""
ITEM_ROW_TABLES = (
    "item_embedding.weight",
    "item_bias.weight",
    "category_embedding.weight",
    "memory_embedding.weight",
    "next_item_embedding.weight",
    "next_bias.weight",
)
"""Parameters with one row per item_idx / category index: they grow with the catalogue."""
ITEM_FEATURE_BUFFERS = ("item_category", "item_price_bucket", "cold_item")
PREFETCH_BATCHES = 4
"""Batches decoded ahead in a background thread when training on a GPU."""
PROGRESS_EVERY_S = 10.0
"""Seconds of training between two progress lines inside an epoch."""
BUDGET_OVERRUN = 1.5
"""Once the time budget is a planned step count, the wall clock still ends training at this multiple of
train.max_minutes: a machine that slows down after the plan (a second job on its cores) still ends the night."""
REFIT_MARGIN = 1.25
"""train.refit auto: the time budget's share left must hold the refit's estimate this many times over."""
HEAD_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
"""Blends w * Q + (1 - w) * next-item logits tried on validation after each epoch of train.mode=sqn."""
HEAD_WEIGHT_METRIC = f"{schema.metric_prefix()}head_weight"
PROGRESS_METRICS = (
    HEAD_WEIGHT_METRIC,
    schema.metric_name("ndcg", 10),
    schema.metric_name("hr", 10),
    schema.metric_name("mrr", 10),
    schema.metric_name("ndcg", 10, schema.PURCHASE),
    schema.metric_name("coverage", 10),
)


STOP_CONVERGED, STOP_BUDGET, STOP_EPOCH_CAP = "converged", "time budget", "epoch cap"
STOP_REASONS = (STOP_CONVERGED, STOP_BUDGET, STOP_EPOCH_CAP)
"""converged: no better validation metric for train.patience epochs; time budget: train.max_minutes (or
the run's share of it) ran out; epoch cap: train.epochs passes (or no validation to stop on)."""


@dataclass
class TrainResult:
    """What a training run produced."""

    model: QNetwork
    """The network with the weights of the best validation epoch."""
    history: list[dict[str, float]]
    """One dict of metrics per epoch (loss/*, q/*, grad/*, eval/*, time/*)."""
    best_value: float
    """Best value of the validation metric eval.early_stop_metric (NaN without validation transitions)."""
    best_epoch: int
    """Epoch (1-based) whose weights the model holds."""
    device: str
    """Device the model trained on."""
    n_transitions: int
    """Training transitions per epoch."""
    seconds: float
    """Wall time of the whole run."""
    config: Config
    """The config the model was trained with, its ``auto`` settings decided: what to save the model with."""
    best_metrics: dict[str, float] = field(default_factory=dict)
    """Validation metrics (eval/*) of the best epoch."""
    stopped_by: str = STOP_EPOCH_CAP
    """Why training ended: one of STOP_REASONS."""
    distributed: dict[str, Any] = field(default_factory=dict)
    """Empty from one process; with train.distributed_workers, what dql_model.learning.distributed adds:
    workers, rendezvous, train_seconds (rank 0's, without the processes' start), log (rank 0's lines)
    and shards (per rank: what it trained on and its process ids)."""
    shape: str = ""
    """What the data decided for the ``auto`` settings, and why (dql_model.learning.shape); "" if none."""



def build_model(items: data.ItemFeatures, cfg: Config, action_counts=None) -> QNetwork:
    """A fresh QNetwork sized to the item index, with its item features set, and the items that
    ``action_counts`` (per item_idx, of the split trained on) never shows marked cold."""
    model = QNetwork(items.n_items, items.n_categories, cfg.model)
    model.set_item_features(items.category, items.price_bucket)
    if action_counts is not None:
        model.set_cold_items(np.asarray(action_counts) == 0)
    return model


def warm_start_from(model: QNetwork, previous: QNetwork) -> int:
    """Copy ``previous`` weights into ``model``; per-item rows are copied where both have them.

    The item index is append-only, so row i means the same item in both networks. Returns the
    number of item rows copied. Any other shape difference (a changed model config) is an error.
    """
    new_state = model.state_dict()
    for name, old in previous.state_dict().items():
        if name in ITEM_FEATURE_BUFFERS:
            continue  # tonight's features, already set from the item index
        if name not in new_state:
            raise ValueError(f"cannot warm-start: the previous model has {name}, the new one does not")
        new = new_state[name]
        if name in ITEM_ROW_TABLES and new.shape[1:] == old.shape[1:]:
            rows = min(new.shape[0], old.shape[0])
            new[:rows].copy_(old[:rows])
        elif new.shape == old.shape:
            new.copy_(old)
        else:
            raise ValueError(
                f"cannot warm-start: {name} has shape {tuple(old.shape)} in the previous model and "
                f"{tuple(new.shape)} now; did model.* settings change? Train from scratch instead."
            )
    return min(model.n_items, previous.n_items)


T = TypeVar("T")


def prefetched(items: Iterable[T], depth: int = PREFETCH_BATCHES) -> Iterator[T]:
    """Iterate ``items`` in a background thread, up to ``depth`` ahead, in the same order.

    Parquet decoding and numpy release the GIL, so the next batches are read while the GPU works
    on this one. An error in the producer is raised here; leaving early stops the producer.
    """
    handoff: queue.Queue = queue.Queue(maxsize=depth)
    finished, stop = object(), threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(finished)
        except BaseException as error:  # handed to the consumer, raised there
            put(error)

    thread = threading.Thread(target=produce, name="dqlrec-prefetch", daemon=True)
    thread.start()
    try:
        while (item := handoff.get()) is not finished:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def _check_indices(batch: data.TransitionBatch | sequences.SequenceBatch, n_items: int, where: str) -> None:
    if isinstance(batch, sequences.SequenceBatch):
        too_big, smallest = int(batch.items.max(initial=0)), int(batch.items[batch.loss].min(initial=1))
    else:
        too_big = max(int(batch.action.max(initial=0)), int(batch.state_items.max(initial=0)))
        smallest = int(batch.action.min(initial=1))
    if too_big > n_items or smallest < 1:
        raise ValueError(
            f"{where}: item_idx {too_big} (or an action < 1) is outside the item index 1..{n_items}; "
            "are transitions and item_index from the same run date?"
        )


def _evaluate(
    model: QNetwork, val: data.TransitionBatch, masks: data.Exclusions, device, metric: str
) -> dict:
    """Validation metrics; with two heads, of the best blend in HEAD_WEIGHTS by ``metric``, which
    stays set on the model (and so in the best epoch's weights)."""
    scorer = QNetworkScorer(model, device=device)
    if model.next_head is None:
        return evaluate_scorer(scorer, val, exclude=masks)
    trials = []
    for weight in HEAD_WEIGHTS:
        model.head_weight.fill_(weight)
        trials.append((evaluate_scorer(scorer, val, exclude=masks), weight))
    row, weight = max(trials, key=lambda trial: trial[0].get(metric, float("-inf")))
    model.head_weight.fill_(weight)
    return {**row, HEAD_WEIGHT_METRIC: weight}


def _format(metrics: dict[str, float], names) -> str:
    return " ".join(f"{name}={metrics[name]:.4f}" for name in names if name in metrics)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, minutes = divmod(seconds // 60, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds % 60:02d}s"


@dataclass
class _Clock:
    """The run's time source: the training budget (train.max_minutes) and the in-epoch progress lines.

    At the run's first checkpoint (an epoch's end, or ``train.checkpoint_minutes`` into the first) the
    budget left becomes a step count at the rate measured so far, and is checkpointed with the run: from
    then on training ends at that step, so a run resumed after a crash ends where the uninterrupted run
    would have, with its weights, however fast the rerun's machine is. Before the plan, and past
    BUDGET_OVERRUN times the budget, the wall clock decides."""

    now: Callable[[], float]
    started: float
    budget_s: float
    """Seconds of training allowed from ``started``; inf without a limit."""
    stop_step: int | None = None
    """The optimizer step (DQNAgent.steps) the budget ends at, once planned."""
    rate_from: tuple[float, int] | None = None
    """(time, step) at the end of this process's first step: the rate leaves out the loading before it."""

    def spent(self, at: float, step: int) -> bool:
        """Called after every step: whether the budget ends here."""
        if self.rate_from is None:
            self.rate_from = (at, step)
        if self.stop_step is not None:
            return step >= self.stop_step or at - self.started >= BUDGET_OVERRUN * self.budget_s
        return at - self.started >= self.budget_s

    def plan(self, at: float, step: int) -> str | None:
        """Fix ``stop_step`` from the rate since this process's first step, once; the log line."""
        if self.stop_step is not None or self.budget_s == float("inf") or self.rate_from is None:
            return None
        began_at, began_step = self.rate_from
        if step <= began_step:
            return None
        per_step = max(at - began_at, 1e-9) / (step - began_step)
        left = self.budget_s - (at - self.started)
        self.stop_step = step + max(int(left // per_step), 0)
        return (
            f"time budget: {_duration(max(left, 0.0))} left is {self.stop_step - step} more steps at "
            f"{per_step:.3g} s a step so far: training ends at step {self.stop_step}, also after a resume"
        )


@dataclass
class _EpochPass:
    """What one pass over the training batches did."""

    metrics: dict[str, float]
    n_rows: int
    steps: int
    cut: bool
    """The time budget ran out before the pass ended."""


@dataclass
class _EpochSoFar:
    """The part of an epoch trained before a mid-epoch checkpoint: where a resumed run goes on from."""

    steps: int = 0
    n_rows: int = 0
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    """Each batch metric summed over the rows so far (weighted by the batch's rows)."""


def _train_epoch(
    agent: DQNAgent,
    batches,
    n_items: int,
    where: str,
    clock: _Clock,
    total_steps: int,
    label: str,
    progress: Callable[[str], None],
    *,
    so_far: _EpochSoFar | None = None,
    checkpoint: Callable[[_EpochSoFar], None] | None = None,
    checkpoint_every_s: float = float("inf"),
) -> _EpochPass:
    """Train on ``batches`` until they end or the time budget runs out (at the end of that step);
    every PROGRESS_EVERY_S seconds a line with the steps done, the rate and the epoch's ETA.

    ``so_far`` (from a mid-epoch checkpoint) skips the batches it trained and goes on from its sums;
    ``checkpoint`` is handed the epoch so far every ``checkpoint_every_s`` seconds of training; the
    budget counts in the agent's optimizer steps."""
    so_far = so_far or _EpochSoFar()
    sums: dict[str, torch.Tensor] = dict(so_far.sums)
    n_rows, steps, skip = so_far.n_rows, so_far.steps, so_far.steps
    epoch_start = last_line = last_checkpoint = clock.now()
    cut = False
    for batch in batches:
        if skip:  # the same seeded order as before the checkpoint: these were trained
            skip -= 1
            continue
        _check_indices(batch, n_items, where)
        step = agent.update(batch)
        for name, value in step.items():
            sums[name] = sums.get(name, 0.0) + value.float() * len(batch)
        n_rows += len(batch)
        steps += 1
        now = clock.now()
        if now - last_line >= PROGRESS_EVERY_S:
            elapsed = max(now - epoch_start, 1e-9)
            done_here = steps - so_far.steps
            eta = max(total_steps - steps, 0) * elapsed / done_here
            progress(
                f"training {label} step {steps}/{total_steps} ({100 * steps / max(total_steps, 1):.0f}%) "
                f"{(n_rows - so_far.n_rows) / elapsed:.0f} transitions/s, epoch ETA {_duration(eta)}"
            )
            last_line = now
        if clock.spent(now, agent.steps):
            cut = True
            break
        if checkpoint is not None and steps < total_steps and now - last_checkpoint >= checkpoint_every_s:
            checkpoint(_EpochSoFar(steps, n_rows, dict(sums)))
            last_checkpoint = clock.now()
    # One device sync per epoch, not per step.
    metrics = {name: float(total) / max(n_rows, 1) for name, total in sums.items()}
    return _EpochPass(metrics, n_rows, steps, cut)


class Checkpoints:
    """Per-epoch checkpoints of one training run: save, load the latest, remove when done.

    A checkpoint is a dict of tensors and plain values, written with torch.save to a temporary
    file and renamed into place, and read back with ``weights_only=True`` (nothing unpickled).
    """

    def __init__(self, folder: str | os.PathLike[str]):
        self.folder = Path(folder)

    @staticmethod
    def run_key(
        cfg: Config,
        *,
        transitions_dir: str,
        item_index_dir: str,
        warm_start: QNetwork | None,
        refit: bool = False,
    ) -> str:
        """Hash of what determines the run's result: config, inputs, warm-start weights, refit or not."""
        digest = hashlib.sha256()
        inputs = {
            **({"refit": True} if refit else {}),
            "config": cfg.to_dict(),
            "transitions": str(Path(transitions_dir).resolve()),
            "item_index": str(Path(item_index_dir).resolve()),
        }
        digest.update(json.dumps(inputs, sort_keys=True, default=str).encode())
        if warm_start is not None:
            for name, tensor in sorted(warm_start.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def latest(self) -> Path | None:
        files = sorted(self.folder.glob("epoch-*.pt"))
        return files[-1] if files else None

    def save(self, epoch: int, state: dict[str, Any], *, step: int | None = None) -> Path:
        """Write ``state`` as the run's only checkpoint: after ``epoch``, or inside it at ``step``
        (``epoch-0003-step-00000120.pt`` sorts before ``epoch-0003.pt`` and after ``epoch-0002.pt``)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"epoch-{epoch:04d}" + (f"-step-{step:08d}" if step is not None else "")
        path = self.folder / f"{name}.pt"
        temporary = path.with_suffix(".tmp")
        torch.save(state, temporary)
        os.replace(temporary, path)
        for older in self.folder.glob("epoch-*.pt"):
            if older != path:
                older.unlink(missing_ok=True)
        return path

    def load(self, device: torch.device) -> dict[str, Any] | None:
        path = self.latest()
        if path is None:
            return None
        return torch.load(path, map_location=device, weights_only=True)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


@dataclass
class _Progress:
    """What a run has done so far: checkpointed after every epoch, and inside long ones."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_value: float = float("-inf")
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    n_transitions: int = 0
    partial: _EpochSoFar | None = None
    """The unfinished epoch after ``history``'s, as far as a mid-epoch checkpoint got; None between epochs."""
    spent_s: float = 0.0
    """Seconds of the time budget spent when the checkpoint was written: a resumed run has the rest."""
    stop_step: int | None = None
    """The step the time budget ends at, once planned (_Clock.plan)."""

    @property
    def epoch(self) -> int:
        return len(self.history)

    def to_checkpoint(self, agent: DQNAgent) -> dict[str, Any]:
        return {
            "online": agent.online.state_dict(),
            "target": agent.target.state_dict() if agent.target is not None else {},
            "optimizer": agent.optimizer.state_dict(),
            "steps": agent.steps,
            "target_lag": agent.target_lag(),
            "history": self.history,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state or {},
            "n_transitions": self.n_transitions,
            "rng": _rng_state(),
            "partial": vars(self.partial) if self.partial is not None else {},
            "spent_s": self.spent_s,
            "stop_step": -1 if self.stop_step is None else self.stop_step,
        }

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any], agent: DQNAgent) -> _Progress:
        agent.online.load_state_dict(saved["online"])
        if agent.target is not None:
            agent.target.load_state_dict(saved["target"])
        agent.optimizer.load_state_dict(saved["optimizer"])
        agent.steps = int(saved["steps"])
        agent.restore_target_lag(saved.get("target_lag", {}))
        _set_rng_state(saved["rng"])
        return cls(
            history=list(saved["history"]),
            best_value=float(saved["best_value"]),
            best_epoch=int(saved["best_epoch"]),
            best_state={k: v.cpu() for k, v in saved["best_state"].items()} or None,
            n_transitions=int(saved["n_transitions"]),
            partial=_EpochSoFar(**saved["partial"]) if saved.get("partial") else None,
            spent_s=float(saved.get("spent_s", 0.0)),
            stop_step=None if int(saved.get("stop_step", -1)) < 0 else int(saved["stop_step"]),
        )


def _resume(checkpoints: Checkpoints | None, agent: DQNAgent, device, progress) -> _Progress:
    if checkpoints is None:
        return _Progress()
    try:
        saved = checkpoints.load(device)
        if saved is None:
            return _Progress()
        state = _Progress.from_checkpoint(saved, agent)
    except Exception as error:  # a torn or stale checkpoint must not block the night: start over
        progress(f"warning: cannot resume from {checkpoints.folder} ({error}); training from the start")
        checkpoints.clear()
        return _Progress()
    done = [f"epoch {state.epoch} done"] if state.epoch else []
    if state.partial is not None:
        done.append(f"epoch {state.epoch + 1} to step {state.partial.steps}")
    where = ", ".join(done)
    budget = f"; {_duration(state.spent_s)} of the time budget spent" if state.spent_s else ""
    if state.stop_step is not None:
        budget += f", ends at step {state.stop_step}"
    progress(f"resuming from checkpoint {checkpoints.latest()} ({where}{budget})")
    return state


@dataclass
class _Setup:
    """What a training run is built from: tonight's items, the network and its agent, the validation
    rows and their masks, the metric to stop on, the batches' source and the checkpoint folder."""

    items: data.ItemFeatures
    model: QNetwork
    agent: DQNAgent
    val: data.TransitionBatch
    masks: data.Exclusions
    metric: str
    fit_splits: Any
    windows: Any
    steps_per_epoch: int
    checkpoints: Checkpoints | None
    device: torch.device
    config: Config
    """The run's config with its ``auto`` settings decided (shape.choose): what the model is saved with."""
    shape: str = ""
    """The line saying what the data decided and why ("" when nothing was auto)."""

    def batches(self, cfg: Config, transitions_dir: str, epoch: int) -> Iterable[Any]:
        """One epoch's training batches, shuffled by (seed, epoch): sequence windows or transition rows."""
        if self.windows is not None:
            batches = self.windows.batches(cfg.train.seq_batch_size, seed=cfg.train.seed * 1_000 + epoch)
        else:
            batches = data.iter_transition_batches(
                transitions_dir,
                max_len=cfg.etl.max_len,
                batch_size=cfg.train.batch_size,
                split=self.fit_splits,
                seed=cfg.train.seed * 1_000 + epoch,
                n_step=cfg.train.n_step,
                credit_carts=cfg.train.purchase_credit == "cart",
            )
        if self.device.type == "cuda":  # on CPU the decoding thread would only compete for the cores
            batches = prefetched(batches)
        return batches


def _prepare(
    cfg: Config,
    *,
    transitions_dir: str,
    item_index_dir: str,
    warm_start: QNetwork | None,
    exclude: str,
    refit: bool,
    head_weight: float | None,
    device: torch.device,
    progress: Callable[[str], None],
) -> _Setup:
    """Build the run: the network (warm-started where it can be), validation and its masks, the batch
    source, the agent and the checkpoint folder; say what will be trained, how, and on what."""
    amp_dtype = torch.bfloat16 if device.type == "cuda" else None
    items = data.load_item_features(item_index_dir, price_buckets=cfg.model.price_buckets)
    fit_splits = (schema.TRAIN, schema.VALIDATION) if refit else schema.TRAIN
    counts = data.action_counts(transitions_dir, n_items=items.n_items, split=fit_splits)
    val = data.load_transitions(transitions_dir, max_len=cfg.etl.max_len, split=schema.VALIDATION)
    if refit:  # validation is trained on: nothing is left to stop on
        val, masks = val.take(slice(0, 0)), data.Exclusions.none(0)
    else:
        masks = data.load_exclusions(transitions_dir, exclude=exclude)
    given, choice = cfg, shape.choose(cfg, val, masks)
    cfg = choice.apply(cfg)
    if choice.line():
        progress(choice.line())
    sample, why = judged_sample(len(val), items.n_items, cfg.eval.max_events, cfg.train.seed)  # the gate's events
    if sample is not None:
        progress(f"validation: early stopping on a seeded sample of {len(sample)} of its {len(val)} events ({why})")
        val, masks = val.take(sample), masks.take(sample)
    model = build_model(items, cfg, counts)
    if warm_start is not None:
        try:
            rows = warm_start_from(model, warm_start)
            progress(f"warm start: {rows} item rows copied, {items.n_items - rows} new items")
        except ValueError as error:
            # A changed model config must not fail every night: train from scratch instead.
            model = build_model(items, cfg, counts)
            progress(f"warning: {error}; training from scratch")
    if len(val):
        _check_indices(val, items.n_items, f"{transitions_dir} (validation)")
    else:
        progress(f"warning: no validation transitions in {transitions_dir}; no early stopping")
    if model.next_head is not None:
        model.head_weight.fill_(0.5 if head_weight is None else head_weight)
    windows = None
    if cfg.train.batching == "sequences":
        windows = sequences.load_windows(
            transitions_dir,
            max_len=cfg.etl.max_len,
            seq_len=cfg.train.seq_len,
            split=fit_splits,
            credit_carts=cfg.train.purchase_credit == "cart",
        )
        progress(
            f"sequence batches: {len(windows)} transitions in {windows.n_windows} windows of up to "
            f"{cfg.train.seq_len} events"
        )
    agent = DQNAgent(model, cfg.train, device=device, amp_dtype=amp_dtype, item_counts=counts)
    metric, fallback = usable_metric(cfg.eval.early_stop_metric, val)
    if fallback:
        progress(f"early stopping: {fallback}")
    checkpoints = None
    if cfg.train.checkpoints:
        key = Checkpoints.run_key(
            given,  # as called: the same call on the same data decides the same auto settings
            transitions_dir=transitions_dir,
            item_index_dir=item_index_dir,
            warm_start=warm_start,
            refit=refit,
        )
        checkpoints = Checkpoints(Path(cfg.registry.root) / CHECKPOINTS / key)
    progress(
        f"training {cfg.train.mode} ({cfg.model.encoder}, {cfg.train.batching}, n_step={cfg.train.n_step}) on {device}: "
        f"{items.n_items} items, {len(val)} validation transitions, up to {cfg.train.epochs} epochs"
        + (f" (stops after {cfg.train.patience} without a better {metric})" if len(val) else "")
    )
    in_batch = agent.sampler is not None and agent.sampler.in_batch
    limit = f"{cfg.train.max_minutes:g} min" if cfg.train.max_minutes > 0 else "none"
    if agent.averages:
        judged = (
            f"the Polyak average of the weights (tau {cfg.train.tau:g}) from step {agent.average_from_step}, "
            "the online ones before"
        )
    else:
        judged = "the online weights" + (" (train.target_update=hard: no average)" if cfg.train.averaged_weights else "")
    progress(f"loss: {describe_loss(cfg.train, items.n_items, in_batch=in_batch)}; time budget: {limit}")
    progress(f"judging and keeping {judged}")
    if windows is not None:
        steps_per_epoch = -(-windows.n_windows // cfg.train.seq_batch_size)
    else:
        steps_per_epoch = -(-int(counts.sum()) // cfg.train.batch_size)
    return _Setup(
        items=items,
        model=model,
        agent=agent,
        val=val,
        masks=masks,
        metric=metric,
        fit_splits=fit_splits,
        windows=windows,
        steps_per_epoch=steps_per_epoch,
        checkpoints=checkpoints,
        device=device,
        config=cfg,
        shape=choice.line(),
    )


def train_model(
    cfg: Config,
    *,
    transitions_dir: str,
    item_index_dir: str,
    warm_start: QNetwork | None = None,
    exclude: str = "none",
    refit: bool = False,
    head_weight: float | None = None,
    progress: Callable[[str], None] = print,
    clock: Callable[[], float] = time.perf_counter,
    ranks: Any = None,
) -> TrainResult:
    """Train a Q-network on one transitions partition; see the module docstring.

    Early stopping ranks validation with the items of the ``exclude`` rule masked
    (``data.load_exclusions``), as the gate and scoring do. With ``refit`` it trains on the train and
    validation splits together for ``train.epochs`` epochs, with nothing held out to stop on.
    With two heads (train.mode=sqn) the ranking blend is picked on validation each epoch; without
    validation it is ``head_weight`` (the refit passes the gated model's), else an even blend.
    Training stops at the end of the step where ``train.max_minutes`` (from the call, by ``clock``)
    runs out; the cut epoch is evaluated like a finished one and the best epoch so far is kept.
    With ``train.distributed_workers`` the run is dql_model.learning.distributed's: this loop in each of
    its processes, ``ranks`` (its ``Ranks``) supplying the shards, the gradient all-reduce and rank 0's
    evaluation.
    """
    if cfg.train.epochs < 1:
        raise ValueError(f"train.epochs={cfg.train.epochs}: need at least one epoch")
    if cfg.train.distributed_workers and ranks is None:
        from dql_model.learning import distributed

        return distributed.train_model(
            train_model,
            cfg,
            transitions_dir=transitions_dir,
            item_index_dir=item_index_dir,
            warm_start=warm_start,
            exclude=exclude,
            refit=refit,
            head_weight=head_weight,
            progress=progress,
        )
    started = clock()
    budget = _Clock(clock, started, 60.0 * cfg.train.max_minutes if cfg.train.max_minutes > 0 else float("inf"))
    seed_everything(cfg.train.seed)
    device = resolve_device(cfg.train.device)
    setup = _prepare(
        cfg,
        transitions_dir=transitions_dir,
        item_index_dir=item_index_dir,
        warm_start=warm_start,
        exclude=exclude,
        refit=refit,
        head_weight=head_weight,
        device=device,
        progress=progress,
    )
    items, agent, val, masks = setup.items, setup.agent, setup.val, setup.masks
    metric, fit_splits, steps_per_epoch, checkpoints = setup.metric, setup.fit_splits, setup.steps_per_epoch, setup.checkpoints
    patience = cfg.train.patience
    run = _resume(checkpoints, agent, device, progress)
    budget.started -= run.spent_s  # the budget holds across a crash: a resumed run has what was left
    budget.stop_step = run.stop_step  # and ends at the step the crashed run had planned
    minutes = cfg.train.checkpoint_minutes
    checkpoint_every_s = 60.0 * minutes if minutes > 0 else float("inf")

    def checkpoint(epoch: int, so_far: _EpochSoFar | None = None) -> None:
        """After ``epoch``, or inside it as far as ``so_far``: plan the budget's last step the first
        time, then (with train.checkpoints) save; the budget spent and planned goes with it."""
        planned = budget.plan(clock(), agent.steps)
        if planned:
            progress(planned)
        if checkpoints is None:
            return
        run.partial, run.spent_s, run.stop_step = so_far, clock() - budget.started, budget.stop_step
        checkpoints.save(epoch, run.to_checkpoint(agent), step=so_far.steps if so_far is not None else None)
        if so_far is not None:
            faults.point("train:mid_epoch_checkpoint")
    stopped_by = STOP_EPOCH_CAP
    evaluate = _evaluate
    if ranks is not None:  # one process of several: its shard of each batch, a DDP step, rank 0's evaluation
        evaluate = ranks.join(setup, _evaluate)

    def stopped() -> bool:
        return bool(len(val)) and run.epoch - run.best_epoch >= patience

    for epoch in range(run.epoch + 1, cfg.train.epochs + 1):
        if stopped():
            stopped_by = STOP_CONVERGED
            break
        if run.history and budget.spent(clock(), agent.steps):  # the first epoch trains at least one step
            progress(f"time budget: train.max_minutes={cfg.train.max_minutes:g} spent before epoch {epoch}")
            stopped_by = STOP_BUDGET
            break
        epoch_start = clock()
        batches = setup.batches(cfg, transitions_dir, epoch)
        resumed = run.partial  # trained before a crash; a checkpoint of this pass replaces run.partial
        row = {"epoch": float(epoch)}
        label = f"epoch {epoch}/{cfg.train.epochs}"
        where = f"{transitions_dir} (train)"
        done = _train_epoch(
            agent,
            batches,
            items.n_items,
            where,
            budget,
            steps_per_epoch,
            label,
            progress,
            so_far=resumed,
            checkpoint=lambda so_far, epoch=epoch: checkpoint(epoch, so_far),
            checkpoint_every_s=checkpoint_every_s,
        )
        resumed_rows, run.partial = (resumed.n_rows if resumed else 0), None
        train_metrics, n_rows = done.metrics, done.n_rows
        if n_rows == 0:
            raise ValueError(f"{transitions_dir}: no {fit_splits} transitions to train on")
        if not done.cut or not run.n_transitions:
            run.n_transitions = n_rows
        agent.settle_target()
        train_seconds = clock() - epoch_start
        row.update(train_metrics)
        if done.cut:
            row["time/epoch_share"] = done.steps / max(steps_per_epoch, done.steps)
            label += f" (cut at step {done.steps}/{steps_per_epoch})"
        if len(val):
            row.update(evaluate(agent.averaged, val, masks, device, metric))
        row["time/epoch_s"] = clock() - epoch_start
        row["throughput/transitions_per_s"] = (n_rows - resumed_rows) / max(train_seconds, 1e-9)
        run.history.append(row)

        value = row.get(metric, float("nan"))
        improved = not len(val) or value > run.best_value
        if improved:
            run.best_value, run.best_epoch = value, epoch
            run.best_state = {k: v.detach().to("cpu", copy=True) for k, v in agent.averaged.state_dict().items()}
        progress(
            f"{label} {_format(row, sorted(train_metrics))} "
            f"{_format(row, PROGRESS_METRICS)} {row['throughput/transitions_per_s']:.0f} transitions/s"
            + (" *" if improved else "")
        )
        if done.cut:
            progress(
                f"time budget: train.max_minutes={cfg.train.max_minutes:g} spent at step {done.steps}/"
                f"{steps_per_epoch} of epoch {epoch}; keeping epoch {run.best_epoch}"
                + (f" ({metric}={run.best_value:.4f})" if len(val) else "")
            )
            stopped_by = STOP_BUDGET
            break
        checkpoint(epoch)
        faults.point("train:epoch_done")
        if stopped():
            progress(f"early stop: no better {metric} for {patience} epochs")
            stopped_by = STOP_CONVERGED
            break

    return _finish(setup, run, metric, seconds=clock() - started, stopped_by=stopped_by, progress=progress)


def _finish(
    setup: _Setup, run, metric: str, *, seconds: float, stopped_by: str, progress: Callable[[str], None]
) -> TrainResult:
    """The best epoch's weights in eval mode, the checkpoints cleared, the run summed up."""
    model, val, checkpoints = setup.model, setup.val, setup.checkpoints
    if run.best_state is not None:
        model.load_state_dict(run.best_state)
    model.sparse_item_gradients(False)  # whoever trains it next starts from ordinary tables
    model.eval()
    if checkpoints is not None:
        checkpoints.clear()
    best_metrics = {
        k: v for k, v in run.history[run.best_epoch - 1].items() if k.startswith(schema.metric_prefix())
    }
    best_value = run.best_value if len(val) else float("nan")
    progress(
        f"trained {run.n_transitions} transitions x {run.epoch} epochs on {setup.device} in {seconds:.1f}s; "
        f"best {metric}={best_value:.4f} at epoch {run.best_epoch}; stopped by {stopped_by}"
    )
    return TrainResult(
        model=model,
        history=run.history,
        best_value=best_value,
        best_epoch=run.best_epoch,
        device=str(setup.device),
        n_transitions=run.n_transitions,
        seconds=seconds,
        best_metrics=best_metrics,
        stopped_by=stopped_by,
        config=setup.config,
        shape=setup.shape,
    )


def train_challenger(
    cfg: Config, run_date: str, *, progress: Callable[[str], None] = print
) -> dict[str, Any]:
    """Tonight's challenger: warm-started from the incumbent, trained on the run date's
    transitions, registered (the gate decides on promotion). Returns version, device, seconds and
    transitions per epoch.
    """
    from dql_model.learning import registry

    warm_start = None
    incumbent = registry.incumbent_for(cfg.registry.root, run_date)
    if incumbent:
        warm_start, _ = registry.load_model(Path(cfg.registry.root) / incumbent)
    protocol = data.night_protocol(cfg, run_date)
    result = train_model(
        cfg,
        transitions_dir=cfg.layout.partition(schema.TRANSITIONS, run_date),
        item_index_dir=cfg.layout.partition(schema.ITEM_INDEX, run_date),
        warm_start=warm_start,
        exclude=data.exclude_rule(cfg.score, protocol),
        progress=progress,
    )
    window = {
        "run_date": run_date,
        "train_window": cfg.etl.train_window,
        "validation": protocol.get("validation", cfg.etl.validation),
        "val_days": cfg.etl.val_days,
        "transitions": result.n_transitions,
        "warm_start_from": incumbent,
    }
    cfg = result.config  # its auto settings decided on tonight's data: the model is rebuilt with them
    version = registry.save_model(
        result.model,
        cfg,
        registry_root=cfg.registry.root,
        metrics={"history": result.history, "best": result.best_metrics, "stopped_by": result.stopped_by},
        data_window=window,
        version_prefix=run_date.replace("-", ""),
    )
    trained = {
        "version": version,
        "device": str(result.device),
        "seconds": round(result.seconds, 1),
        "transitions": result.n_transitions,
        "epochs": len(result.history),
        "best_epoch": result.best_epoch,
        "stopped_by": result.stopped_by,
        "shape": result.shape,
    }
    plan = plan_refit(cfg, result)
    progress(f"refit: {plan.reason}")
    trained["refit_reason"] = plan.reason
    if plan.run:
        refit, trained["refit_seconds"] = _refit(cfg, run_date, version, result, plan.epochs, warm_start, window, progress)
        if refit:
            trained["refit"] = refit
    return trained


@dataclass(frozen=True)
class RefitPlan:
    """Whether the night refits its challenger on train + validation (train.refit), and why."""

    run: bool
    reason: str
    epochs: int
    """The refit's epochs: the training's best epoch count."""


def plan_refit(cfg: Config, result: TrainResult) -> RefitPlan:
    """train.refit decided for a finished training ``result`` whose time budget was ``cfg.train.max_minutes``.

    ``auto`` refits only a model that could learn something new in time: one with validation events
    (which the refit adds to its data), whose training was not ended by the time budget, and whose
    estimate (the time its first best_epoch epochs took) fits REFIT_MARGIN times in the budget left.
    The refit runs under the training's own share, not the time left: its config is hashed into the
    version's name and its checkpoints' key, so no clock reading may enter it. A refit that fits the
    time left ends long before that share does.
    """
    epochs = max(result.best_epoch, 1)
    per_epoch = [row.get("time/epoch_s", 0.0) for row in result.history]
    estimate = sum(per_epoch[:epochs])
    budget = 60.0 * cfg.train.max_minutes
    left = max(budget - max(result.seconds, sum(per_epoch)), 0.0) if budget > 0 else float("inf")
    work = f"{epochs} epoch(s) on train + validation, about {estimate:.0f} s"
    if cfg.train.refit is True:
        return RefitPlan(True, f"train.refit true: {work}", epochs)
    if cfg.train.refit is False:
        return RefitPlan(False, "skipped (train.refit false)", epochs)
    if not np.isfinite(result.best_value):
        return RefitPlan(False, "skipped (no validation events: training saw every transition)", epochs)
    if result.stopped_by == STOP_BUDGET:
        return RefitPlan(False, f"skipped (the time budget, {cfg.train.max_minutes:g} min, ended training)", epochs)
    if estimate * REFIT_MARGIN > left:
        why = f"skipped ({work}, would not fit {REFIT_MARGIN:g} times in the {left:.0f} s of the time budget left)"
        return RefitPlan(False, why, epochs)
    room = f"{left:.0f} s of the time budget left" if budget > 0 else "no time budget"
    return RefitPlan(True, f"{work} ({result.stopped_by}; {room})", epochs)


def _refit(
    cfg: Config,
    run_date: str,
    version: str,
    result: TrainResult,
    epochs: int,
    warm_start: QNetwork | None,
    window: dict[str, Any],
    progress: Callable[[str], None],
) -> tuple[str | None, float]:
    """Train the same start on train + validation for ``epochs``; register it as the refit of
    ``version`` (``registry.refit_of``), which scores in its place once the gate promotes it. Returns the
    refit's version, None when its time budget cut it short (fewer epochs than the gated model's are not
    what was judged), and its training seconds either way."""
    from dql_model.learning import registry

    progress(f"refit: training {version}'s start on train + validation for {epochs} epoch(s)")
    refitted = train_model(
        cfg.replace(train={"epochs": epochs}),
        transitions_dir=cfg.layout.partition(schema.TRANSITIONS, run_date),
        item_index_dir=cfg.layout.partition(schema.ITEM_INDEX, run_date),
        warm_start=warm_start,
        refit=True,
        head_weight=float(result.model.head_weight) if result.model.next_head is not None else None,
        progress=progress,
    )
    seconds = round(refitted.seconds, 1)
    if refitted.stopped_by == STOP_BUDGET:
        progress(f"refit: cut by its time budget after {len(refitted.history)} of {epochs} epoch(s); {version} scores")
        return None, seconds
    return registry.save_model(
        refitted.model,
        cfg,
        registry_root=cfg.registry.root,
        metrics={"history": refitted.history, "refit_of": version},
        data_window={**window, "transitions": refitted.n_transitions, registry.REFIT_OF: version},
        version_prefix=run_date.replace("-", ""),
    ), seconds
