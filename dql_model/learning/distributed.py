"""Training in several processes: train.py's loop under DistributedDataParallel, launched by Spark's TorchDistributor.

Owns running one training on N ranks (``train.distributed_workers``) and bringing its result back.

    result = train.train_model(cfg, ...)   # with train.distributed_workers = N, it calls this module's train_model

The driver asks ``pyspark.ml.torch.distributor.TorchDistributor`` for N processes: on this host
(``local_mode``) when the Spark master is ``local[...]``, else one per barrier task on the
cluster's executors. Every process runs ``train.train_model`` itself, with a ``Ranks`` in hand:

- the same seeded batches on every rank, each step's batch split by rows (rank r takes rows r, r + N,
  ...): the shards are disjoint and together are the batch one process would train on, so the
  run takes the same steps with the same hyper-parameters (a batch with fewer rows than ranks is
  skipped by all). Every rank still reads the whole split; only the steps are shared.
- the step's loss runs through DistributedDataParallel, which all-reduces (averages) the gradients,
  so the weights stay identical on every rank (gloo on CPU, NCCL on CUDA);
- rank 0 alone evaluates validation and broadcasts the row, and every rank reads rank 0's clock:
  early stopping and train.max_minutes decide the same on all ranks, as in one process;
- checkpoints are off (a rank-local resume would desynchronise the ranks).

Every rank checks at the end that all hold the same weights, bit for bit, and returns the best epoch's
network with rank 0's history (its per-epoch training metrics, loss/* and throughput, are rank 0's
shard); ``TrainResult.distributed`` says what each rank did. The driver then goes on as after one
process. This module does not import train.py: train_model hands itself in.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import fields, replace
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from dql_model.config import Config, ConfigError
from dql_model.learning import sequences
from dql_model.learning.agent import compute_loss
from dql_model.learning.device import resolve_device
from dql_model.learning.networks import QNetwork
from dql_model.ops import spark_session
from dql_model.warehouse import data

APP_NAME = "dqlrec-train"
"""Spark application name of a training that starts its own session."""
_WORD = (1 << 64) - 1


def row_fingerprints(batch: sequences.SequenceBatch | data.TransitionBatch) -> np.ndarray:
    """[rows] uint64: a hash of each row's items and events by position (padding ignored, so a row
    hashes the same in any batch it is cut into). Sums of them fingerprint a multiset of rows."""
    if isinstance(batch, sequences.SequenceBatch):
        items, events = batch.items, batch.events
    else:
        items = np.concatenate([batch.state_items, batch.action[:, None]], axis=1)
        events = np.concatenate([batch.state_events, batch.event_code[:, None]], axis=1)
    position = np.arange(items.shape[1], dtype=np.uint64)
    cells = _mix(_mix(items.astype(np.uint64) + (position << np.uint64(32))) ^ events.astype(np.uint64))
    return np.where(items != 0, cells, np.uint64(0)).sum(axis=1, dtype=np.uint64)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise (uint64 arithmetic wraps)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _rows(batch) -> int:
    return batch.n_windows if isinstance(batch, sequences.SequenceBatch) else len(batch)


class _StepLoss(torch.nn.Module):
    """compute_loss as a module's forward: DDP must see the forward to all-reduce the backward."""

    def __init__(self, online: QNetwork):
        super().__init__()
        self.online = online

    def forward(self, batch, target, cfg, candidates):
        return compute_loss(batch, self.online, target, cfg, candidates)


class Ranks:
    """This process's place among the ranks, and the hooks train.train_model calls (module docstring)."""

    def __init__(self, device: torch.device):
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.device = device
        """Where collectives put their tensors: the CPU for gloo, this rank's GPU for NCCL."""
        self.first_epoch: int | None = None
        self.first_epoch_rows = 0
        self.first_epoch_fingerprint = 0

    def clock(self) -> float:
        """Rank 0's time.perf_counter on every rank: budget decisions agree (every rank calls it alike)."""
        now = torch.tensor([time.perf_counter() if self.rank == 0 else 0.0], dtype=torch.float64, device=self.device)
        dist.broadcast(now, src=0)
        return float(now.item())

    def join(self, setup, evaluate: Callable[..., dict]) -> Callable[..., dict]:
        """Shard ``setup``'s batches, route its agent's loss through DDP, and return ``evaluate`` run
        by rank 0 and broadcast."""
        setup.batches = self._sharded(setup.batches)
        device_ids = [torch.cuda.current_device()] if setup.device.type == "cuda" else None
        # Broadcasts rank 0's weights at construction; find_unused: a step need not touch every table.
        ddp = torch.nn.parallel.DistributedDataParallel(
            _StepLoss(setup.agent.online), device_ids=device_ids, find_unused_parameters=True
        )
        setup.agent.step_loss = lambda batch, online, target, cfg, candidates: ddp(batch, target, cfg, candidates)
        if self.rank:  # other dropout draws and negatives than rank 0 (whose stream one process would use)
            torch.manual_seed(torch.initial_seed() + 7919 * self.rank)
        return self._evaluated_on_rank_0(evaluate)

    def _sharded(self, batches_of: Callable[..., Any]) -> Callable[..., Iterator[Any]]:
        def batches(cfg: Config, transitions_dir: str, epoch: int) -> Iterator[Any]:
            if self.first_epoch is None:
                self.first_epoch = epoch
            for batch in batches_of(cfg, transitions_dir, epoch):
                rows = _rows(batch)
                if rows < self.world:  # every rank skips it: one has no row of it
                    continue
                mine = batch.take(np.arange(self.rank, rows, self.world))
                if epoch == self.first_epoch:
                    self.first_epoch_rows += _rows(mine)
                    added = int(row_fingerprints(mine).sum(dtype=np.uint64))
                    self.first_epoch_fingerprint = (self.first_epoch_fingerprint + added) & _WORD
                yield mine

        return batches

    def _evaluated_on_rank_0(self, evaluate: Callable[..., dict]) -> Callable[..., dict]:
        def on_rank_0(model: QNetwork, val, masks, device, metric: str) -> dict:
            row = self.from_rank_0(evaluate(model, val, masks, device, metric) if self.rank == 0 else None)
            if model.next_head is not None:  # the blend rank 0 picked, kept with the weights
                dist.broadcast(model.head_weight, src=0)
            return row

        return on_rank_0

    def gather(self, result) -> list[dict[str, Any]]:
        """Every rank's shard summary (TrainResult.distributed's shards), on every rank."""
        mine = {
            "rank": self.rank,
            "transitions": result.n_transitions,
            "first_epoch_rows": self.first_epoch_rows,
            "first_epoch_fingerprint": self.first_epoch_fingerprint,
            "pid": os.getpid(),
            "parent_pid": os.getppid(),
        }
        everyone: list[dict[str, Any] | None] = [None] * self.world
        dist.all_gather_object(everyone, mine)
        return everyone  # type: ignore[return-value]

    def from_rank_0(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        box = [value if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def check_same_weights(self, model: QNetwork) -> None:
        """Raise unless every rank ends with the same weights, bit for bit (what DDP keeps true)."""
        digest = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        digests: list[str | None] = [None] * self.world
        dist.all_gather_object(digests, digest.hexdigest())
        if len(set(digests)) != 1:
            raise RuntimeError(f"distributed training: the ranks ended with different weights ({digests})")


def _rank_main(train_one: Callable[..., Any], cfg: Config, kwargs: dict[str, Any]):
    """One rank, in a process torchrun started (RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR/PORT set):
    ``train_one`` (train.train_model) with this rank's hooks; returns its TrainResult with ``distributed``
    filled in."""
    from dql_model.ops.threads import set_torch_threads, torch_threads

    # The ranks on one host share its CPUs (train.threads, 0: all usable ones) instead of each taking all.
    on_this_host = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    set_torch_threads(max(1, torch_threads(cfg.train.threads) // on_this_host))
    device = resolve_device(cfg.train.device)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        device = torch.device("cuda", torch.cuda.current_device())  # collectives' tensors go here
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        ranks = Ranks(device)
        lines: list[str] = []

        def progress(line: str) -> None:
            if ranks.rank == 0:  # live in the driver's output through TorchDistributor
                print(f"rank 0: {line}", flush=True)
                lines.append(line)

        rank_cfg = cfg.replace(train={"checkpoints": False})
        result = train_one(rank_cfg, **kwargs, progress=progress, clock=ranks.clock, ranks=ranks)
        shards = ranks.gather(result)
        ranks.check_same_weights(result.model)
        # Every rank returns the same result (rank 0's history with its own, identical, weights): in
        # local_mode all ranks write TorchDistributor's one output file, and the last write wins.
        summary = ranks.from_rank_0(
            {f.name: getattr(result, f.name) for f in fields(result) if f.name not in ("model", "distributed")}
        )
        summary["n_transitions"] = sum(shard["transitions"] for shard in shards)
        done = replace(
            result,
            model=result.model.cpu(),
            **summary,
            distributed={
                "workers": ranks.world,
                "rendezvous": f"{os.environ.get('MASTER_ADDR', '')}:{os.environ.get('MASTER_PORT', '')}",
                "train_seconds": summary["seconds"],
                "log": ranks.from_rank_0(lines),
                "shards": shards,
            },
        )
        # No rank tears its connections down while another still reads from them: gloo aborts the
        # reader's process. (TorchDistributor's wrapper ignores the exit status: the output file counts.)
        dist.barrier()
        return done
    finally:
        dist.destroy_process_group()


def train_model(
    train_one: Callable[..., Any],
    cfg: Config,
    *,
    transitions_dir: str,
    item_index_dir: str,
    warm_start: QNetwork | None = None,
    exclude: str = "none",
    refit: bool = False,
    head_weight: float | None = None,
    progress: Callable[[str], None] = print,
):
    """``train_one`` (train.train_model) in ``train.distributed_workers`` processes (module docstring);
    the same arguments. Returns rank 0's TrainResult, ``seconds`` counting the processes' start."""
    from pyspark.ml.torch.distributor import TorchDistributor

    workers = cfg.train.distributed_workers
    if workers < 1:
        raise ConfigError(f"train.distributed_workers={workers}: 0 trains in this process, N >= 1 in N processes")
    spark, started_here = spark_session.session(cfg.spark, APP_NAME, console_progress=False)
    master = spark.sparkContext.master
    local = master == "local" or master.startswith("local[")
    cuda = resolve_device(cfg.train.device).type == "cuda"
    where = "on this host" if local else f"on the executors of {master}"
    progress(
        f"distributed training: {workers} processes {where} (TorchDistributor), DistributedDataParallel over "
        f"{'nccl' if cuda else 'gloo'}, each step's batch split between them; checkpoints off"
    )
    kwargs = {
        "transitions_dir": transitions_dir,
        "item_index_dir": item_index_dir,
        "warm_start": warm_start,
        "exclude": exclude,
        "refit": refit,
        "head_weight": head_weight,
    }
    started = time.perf_counter()
    try:
        distributor = TorchDistributor(num_processes=workers, local_mode=local, use_gpu=cuda)
        result = distributor.run(_rank_main, train_one, cfg, kwargs)
    finally:
        if started_here:  # its JVM would outlive the training otherwise
            spark.stop()
    if result is None or not result.distributed:
        raise RuntimeError(f"distributed training: rank 0 returned {type(result).__name__}, not a training result")
    result.seconds = time.perf_counter() - started
    result.model.eval()
    done = result.distributed
    if done["log"]:
        progress(done["log"][-1])  # rank 0's summary
    progress(
        f"distributed training: {workers} processes, {result.n_transitions} transitions per epoch, "
        f"{result.seconds:.1f}s with the processes' start ({done['train_seconds']:.1f}s training on rank 0)"
    )
    return result
