"""The GPU check that benchmarks/gpu_check.sh runs on a machine with an NVIDIA GPU.

1. Training: gradient steps of the default model (default catalogue, batch, max_len) with bf16
   autocast on the device, as train.py trains there: transitions/s and peak GPU memory.
2. Scoring: the torch engine (``scoring.engines.score_users``) over 1M users x 100k items, top-20, on
   the device: users/s and peak GPU memory.
3. Agreement: the same model and a sample of users scored on the device and on the CPU; the share of
   users whose top-K items are the same set (ties in float arithmetic may swap a last place), and
   the share with the identical ranked list. Exit 1 if the same-set share is below AGREEMENT.

    python -m benchmarks.gpu_check                      # the full check (needs CUDA)
    python -m benchmarks.gpu_check --device cpu --users 2000 --items 5000 --steps 5   # a smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime

import numpy as np
import torch

from benchmarks.bench_scoring import BATCH_SIZE, TOP_K, synthetic_inputs
from benchmarks.bench_training import synthetic_batch
from benchmarks.common import print_table, write_json
from dql_model.config import Config
from dql_model.contract import schema
from dql_model.learning.agent import DQNAgent, TensorBatch
from dql_model.learning.networks import QNetwork
from dql_model.scoring.engines import score_users
from dql_model.scoring.policy import Policy

AGREEMENT = 0.99
"""Least share of sampled users whose device and CPU top-K are the same set of items."""


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _peak_mib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None


def _reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def check_training(device: str, steps: int) -> dict[str, object]:
    cfg = Config()
    n_items = cfg.simulator.n_items
    torch.manual_seed(0)
    model = QNetwork(n_items, cfg.simulator.n_categories, cfg.model)
    model.set_item_features(
        np.arange(n_items + 1) % (cfg.simulator.n_categories + 1), np.arange(n_items + 1) % cfg.model.price_buckets
    )
    agent = DQNAgent(model, cfg.train, device=device, amp_dtype=torch.bfloat16 if device == "cuda" else None)
    batch = TensorBatch.from_numpy(synthetic_batch(n_items, cfg.train.batch_size, cfg.etl.max_len, cfg.train.n_step), device)
    for _ in range(3):
        agent.update(batch)
    _sync(device)
    _reset_peak(device)
    started = time.perf_counter()
    for _ in range(steps):
        metrics = agent.update(batch)
    loss = float(metrics["loss/total"])  # waits for the device
    seconds = time.perf_counter() - started
    return {
        "steps": steps,
        "batch_size": cfg.train.batch_size,
        "transitions_per_s": steps * cfg.train.batch_size / seconds,
        "peak_gpu_mib": _peak_mib(device),
        "final_loss": loss,
        "finite_loss": bool(np.isfinite(loss)),
    }


def _score(model, states, items, popularity, device: str):
    return score_users(
        model, states, items, Policy(top_k=TOP_K, explore_slots=0, seed=1), batch_size=BATCH_SIZE,
        popularity=popularity, model_version="gpu-check", generated_at=datetime(2026, 11, 27, tzinfo=UTC), device=device,
    )  # fmt: skip


def check_scoring(device: str, n_users: int, n_items: int) -> dict[str, object]:
    model, items, states, popularity = synthetic_inputs(n_items, n_users)
    _score(model, states, items, popularity, device)  # warm-up: kernels, allocator
    _sync(device)
    _reset_peak(device)
    started = time.perf_counter()
    table = _score(model, states, items, popularity, device)
    _sync(device)
    seconds = time.perf_counter() - started
    assert table.num_rows == n_users * TOP_K, (table.num_rows, n_users * TOP_K)
    return {"users": n_users, "items": n_items, "top_k": TOP_K, "seconds": seconds,
            "users_per_s": n_users / seconds, "peak_gpu_mib": _peak_mib(device)}  # fmt: skip


def _lists(table) -> dict[str, list[str]]:
    table = table.sort_by([(schema.USER_ID, "ascending"), (schema.RANK, "ascending")])
    users, items = table.column(schema.USER_ID).to_pylist(), table.column(schema.ITEM_ID).to_pylist()
    out: dict[str, list[str]] = {}
    for user, item in zip(users, items, strict=True):
        out.setdefault(user, []).append(item)
    return out


def check_agreement(device: str, n_users: int, n_items: int) -> dict[str, object]:
    model, items, states, popularity = synthetic_inputs(n_items, n_users, seed=1)
    on_device = _lists(_score(model, states, items, popularity, device))
    on_cpu = _lists(_score(model, states, items, popularity, "cpu"))
    assert on_device.keys() == on_cpu.keys()
    same_set = np.mean([set(on_device[u]) == set(on_cpu[u]) for u in on_cpu])
    same_list = np.mean([on_device[u] == on_cpu[u] for u in on_cpu])
    return {"users": n_users, "items": n_items, "same_set": float(same_set), "same_list": float(same_list)}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--steps", type=int, default=500, help="training steps timed")
    parser.add_argument("--users", type=int, default=1_000_000, help="users scored")
    parser.add_argument("--items", type=int, default=100_000, help="catalogue size of the scoring check")
    parser.add_argument("--sample", type=int, default=20_000, help="users of the CUDA vs CPU agreement check")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA device (torch.cuda.is_available() is False); "
              f"torch {torch.__version__} built for CUDA {torch.version.cuda}", file=sys.stderr)  # fmt: skip
        return 2
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    print(f"device: {name}; torch {torch.__version__}, CUDA {torch.version.cuda}")

    training = check_training(args.device, args.steps)
    scoring = check_scoring(args.device, args.users, args.items)
    agreement = check_agreement(args.device, min(args.sample, args.users), args.items)
    mib = lambda v: "-" if v is None else f"{v:,.0f}"  # noqa: E731
    print_table(
        f"GPU check on {name}",
        ["check", "size", "throughput", "peak GPU MiB"],
        [
            ["training" + (" (bf16 autocast)" if args.device == "cuda" else ""), f"{training['steps']} steps x {training['batch_size']}",
             f"{training['transitions_per_s']:,.0f} transitions/s", mib(training["peak_gpu_mib"])],
            [f"scoring top-{TOP_K}", f"{scoring['users']:,} users x {scoring['items']:,} items",
             f"{scoring['users_per_s']:,.0f} users/s ({scoring['seconds']:.1f} s)", mib(scoring["peak_gpu_mib"])],
        ],
    )  # fmt: skip
    print(f"agreement with CPU on {agreement['users']:,} users: same top-{TOP_K} set {agreement['same_set']:.2%}, "
          f"same ranked list {agreement['same_list']:.2%} (required same set >= {AGREEMENT:.0%})")  # fmt: skip
    ok = agreement["same_set"] >= AGREEMENT and training["finite_loss"]
    write_json("gpu_check", {"device": name, "training": training, "scoring": scoring, "agreement": agreement, "ok": ok})
    print("gpu check:", "pass" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
