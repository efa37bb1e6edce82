"""Training throughput (transitions/second) of the Q-network at the default model size, and what the
sampled softmax costs in quality.

Gradient steps on in-memory batches shaped like the demo shop's transitions (default catalogue,
default max_len and batch size), so the figure is the learner's own speed, not Parquet decoding:
DQN vs the supervised baseline with the GRU encoder, the LSTM and attention encoders, n-step
returns, and the full vs the sampled softmax (``train.loss_items``) at 1k, 20k and 200k items: the
full one's step grows with the catalogue, the sampled one's with the batch. CPU always; CUDA
(bf16 autocast, as in training) too when a GPU is visible.

Then, where ``make run`` (or ``dqlrec generate`` + the build_training_data task) has left a
transitions partition under warehouse.root, the demo shop is trained with the full and with the
sampled softmax at the default config for each seed of DEMO_SEEDS, and their validation NDCG@10
compared (the sampled one may lose at most 1 %).

    python -m benchmarks training
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import numpy as np
import torch

from benchmarks.bench_tradeoff import latest_run_date
from benchmarks.common import peak_rss_mib, print_table, quick_mode, write_json
from dql_model.config import Config
from dql_model.contract import schema
from dql_model.learning import train
from dql_model.learning.agent import DQNAgent, SequenceTensors, TensorBatch, describe_loss
from dql_model.learning.networks import QNetwork
from dql_model.learning.sequences import SequenceBatch
from dql_model.warehouse import data

WARMUP_STEPS = 3
TIMED_STEPS = 20
CATALOGUES = (1_000, 20_000, 200_000)
"""Catalogue sizes of the full vs sampled softmax comparison."""
DEMO_SEEDS = (0, 1, 2)
"""Training seeds of the demo shop's full vs sampled quality comparison."""
DEMO_NEGATIVES = (256,)
"""train.cql_negatives of the sampled runs on the demo shop (1,000 items; 4,096 of 219k is 1.9 %)."""
NDCG = schema.metric_name("ndcg", 10)
EVENT_MIX = {schema.VIEW: 0.85, schema.ADD_TO_CART: 0.11, schema.PURCHASE: 0.04}
"""Event types of the synthetic transitions, roughly the demo shop's funnel."""
REWARDS = {schema.VIEW: 0.0, schema.ADD_TO_CART: 0.3, schema.PURCHASE: 1.0}


def synthetic_batch(n_items: int, batch_size: int, max_len: int, n_step: int, seed: int = 0) -> data.TransitionBatch:
    """Random transitions with the demo's shape: full states, a few purchases, some episode ends."""
    rng = np.random.default_rng(seed)
    codes = np.array([schema.EVENT_CODE[t] for t in EVENT_MIX])
    share = np.array(list(EVENT_MIX.values()))
    reward_of = np.zeros(schema.N_EVENT_CODES, np.float32)
    reward_of[codes] = [REWARDS[t] for t in EVENT_MIX]
    items = rng.integers(1, n_items + 1, size=(batch_size, max_len))
    events = rng.choice(codes, p=share, size=(batch_size, max_len))
    code = rng.choice(codes, p=share, size=batch_size)
    reward = reward_of[code]
    batch = data.TransitionBatch.from_state(
        items, events, rng.integers(1, n_items + 1, batch_size), code, reward, rng.random(batch_size) < 0.1
    )
    if n_step > 1:
        batch.later_rewards = reward_of[rng.choice(codes, p=share, size=(batch_size, n_step - 1))]
        batch.n_steps = rng.integers(1, n_step + 1, size=batch_size)
    return batch


def synthetic_windows(n_items: int, windows: int, seq_len: int, seed: int = 0) -> SequenceBatch:
    """Random full windows of user sequences (train.batching=sequences): every position but the first an action."""
    rng = np.random.default_rng(seed)
    codes = np.array([schema.EVENT_CODE[t] for t in EVENT_MIX])
    share = np.array(list(EVENT_MIX.values()))
    reward_of = np.zeros(schema.N_EVENT_CODES, np.float32)
    reward_of[codes] = [REWARDS[t] for t in EVENT_MIX]
    events = rng.choice(codes, p=share, size=(windows, seq_len))
    loss = np.ones((windows, seq_len), bool)
    loss[:, 0] = False
    return SequenceBatch(
        items=rng.integers(1, n_items + 1, size=(windows, seq_len)),
        events=events,
        loss=loss,
        reward=np.where(loss, reward_of[events], 0.0).astype(np.float32),
        done=loss & (rng.random((windows, seq_len)) < 0.02),
    )


def synthetic_popularity(n_items: int) -> np.ndarray:
    """Logged actions per item_idx with a long tail (Zipf 1.1 by rank), as a shop's are."""
    counts = np.zeros(n_items + 1)
    counts[1:] = np.ceil(1e6 / np.arange(1, n_items + 1) ** 1.1)
    return counts


def measure(cfg: Config, n_items: int, device: str) -> dict[str, object]:
    torch.manual_seed(0)
    model = QNetwork(n_items, cfg.simulator.n_categories, cfg.model)
    model.set_item_features(
        np.arange(n_items + 1) % (cfg.simulator.n_categories + 1), np.arange(n_items + 1) % cfg.model.price_buckets
    )
    amp = torch.bfloat16 if device == "cuda" else None
    agent = DQNAgent(model, cfg.train, device=device, amp_dtype=amp, item_counts=synthetic_popularity(n_items))
    if cfg.train.batching == "sequences":
        batch = SequenceTensors.from_numpy(
            synthetic_windows(n_items, cfg.train.seq_batch_size, cfg.train.seq_len), device
        )
        rows = int(batch.loss.sum())
    else:
        batch = TensorBatch.from_numpy(
            synthetic_batch(n_items, cfg.train.batch_size, cfg.etl.max_len, cfg.train.n_step), device
        )
        rows = cfg.train.batch_size
    for _ in range(WARMUP_STEPS):
        agent.update(batch)
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(TIMED_STEPS):
        metrics = agent.update(batch)
    float(metrics["loss/total"])  # waits for the device
    seconds = time.perf_counter() - started
    return {
        "transitions_per_s": TIMED_STEPS * rows / seconds,
        "ms_per_step": 1000 * seconds / TIMED_STEPS,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def cases(base: Config) -> list[tuple[str, Config, int]]:
    """(name, config, items): transition batches of train.batch_size, except the cases named "sequences"
    (the default batching: train.seq_batch_size windows of train.seq_len events)."""
    n = base.simulator.n_items
    sequences = base
    base = base.replace(train={"batching": "transitions"})

    def with_(train=None, model=None) -> Config:
        return base.replace(train=train or {}, model=model or {})

    return [
        ("dqn, gru (default)", base, n),
        ("supervised, gru", with_({"mode": "supervised"}), n),
        ("dqn, lstm", with_(model={"encoder": "lstm"}), n),
        ("dqn, attention", with_(model={"encoder": "attention"}), n),
        ("dqn, gru, no state memory", with_(model={"state_memory": 0}), n),
        ("dqn, gru, n_step=3", with_({"n_step": 3}), n),
    ] + [
        (
            f"dqn, {items:,} items, " + describe_loss(with_({"loss_items": loss}).train, items),
            with_({"loss_items": loss}),
            items,
        )
        for items in CATALOGUES
        for loss in ("full", "sampled")
    ] + [
        (
            f"dqn, sequences, {items:,} items, " + describe_loss(cfg.train, items),
            cfg,
            items,
        )
        for items in CATALOGUES
        for cfg in [sequences.replace(train={"loss_items": loss}) for loss in ("full", "sampled")]
        if items <= base.simulator.n_items or cfg.train.loss_items == "sampled"  # full: minutes a step
    ]


def demo_quality(base: Config, seeds=DEMO_SEEDS, negatives=DEMO_NEGATIVES) -> list[dict[str, object]]:
    """Validation metrics of the demo shop trained with the full and with the sampled softmax, per seed."""
    run_date = latest_run_date(base)
    if run_date is None:
        print(f"demo quality skipped: no transitions partition under {base.warehouse.root}; `make run` builds one")
        return []
    transitions_dir = base.layout.partition(schema.TRANSITIONS, run_date)
    exclude = data.exclude_rule(base.score, data.night_protocol(base, run_date))
    variants = [("full", {"loss_items": "full"})] + [
        (f"sampled, {m} negatives", {"loss_items": "sampled", "cql_negatives": m}) for m in negatives
    ]
    records = []
    for seed in seeds:
        for name, overrides in variants:
            cfg = base.replace(train={**overrides, "seed": seed, "device": "cpu", "checkpoints": False})
            result = train.train_model(
                cfg,
                transitions_dir=transitions_dir,
                item_index_dir=base.layout.partition(schema.ITEM_INDEX, run_date),
                exclude=exclude,
                progress=lambda _: None,
            )
            rate = float(np.mean([row["throughput/transitions_per_s"] for row in result.history]))
            records.append(
                {"variant": name, "seed": seed, "best_epoch": result.best_epoch, "seconds": result.seconds,
                 "transitions_per_s": rate, **result.best_metrics}
            )  # fmt: skip
            print(f"  demo {name}, seed {seed}: {NDCG}={result.best_value:.4f} in {result.seconds:.0f}s", flush=True)
    full = {r["seed"]: r for r in records if r["variant"] == "full"}
    rows = []
    for name, _ in variants:
        runs = [r for r in records if r["variant"] == name]
        change = [r[NDCG] / full[r["seed"]][NDCG] - 1 for r in runs]  # paired by seed
        purchase = schema.metric_name("ndcg", 10, schema.PURCHASE)
        rows.append([
            name, " ".join(f"{r[NDCG]:.4f}" for r in runs), f"{np.mean([r[NDCG] for r in runs]):.4f}",
            f"{100 * np.mean(change):+.2f} %", f"{np.mean([r.get(purchase, float('nan')) for r in runs]):.4f}",
            round(float(np.mean([r["transitions_per_s"] for r in runs]))),
        ])  # fmt: skip
    print_table(
        f"Demo shop {run_date}: validation {NDCG} of the full vs the sampled softmax (seeds {list(seeds)}, "
        f"{torch.get_num_threads()} torch threads)",
        ["softmax", f"{NDCG} by seed", "mean", "vs full (paired)", "purchase ndcg@10", "transitions/s"],
        rows,
    )
    return records


def main(argv: Sequence[str] = ()) -> None:
    global WARMUP_STEPS, TIMED_STEPS, CATALOGUES
    quick = quick_mode(argv)
    if quick:  # a smoke run: every case, one timed step, catalogues of 1k and 10k items, no demo training
        WARMUP_STEPS, TIMED_STEPS, CATALOGUES = 1, 1, (1_000, 10_000)
    base = Config()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows, records = [], []
    for device in devices:
        for name, cfg, n_items in cases(base):
            got = measure(cfg, n_items, device)
            rows.append([name, device, n_items, round(got["transitions_per_s"]), got["ms_per_step"], got["parameters"]])
            records.append({"case": name, "device": device, "n_items": n_items, **got})
    print_table(
        f"Training throughput (batch {base.train.batch_size}, max_len {base.etl.max_len}, "
        f"embed {base.model.embed_dim}, {torch.get_num_threads()} torch threads)",
        ["case", "device", "items", "transitions/s", "ms/step", "parameters"],
        rows,
    )
    quality = [] if quick else demo_quality(base)
    write_json(
        "training",
        {
            "batch_size": base.train.batch_size,
            "max_len": base.etl.max_len,
            "model": base.to_dict()["model"],
            "results": records,
            "demo_quality": quality,
            "peak_rss_mib": peak_rss_mib(),
        },
    )


if __name__ == "__main__":
    main(sys.argv[1:])

