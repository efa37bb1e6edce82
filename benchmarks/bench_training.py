"""Training throughput (transitions/second) of the Q-network at the default model size.

Gradient steps on in-memory batches shaped like the demo shop's transitions (default catalogue,
default max_len and batch size), so the figure is the learner's own speed, not Parquet decoding:
DQN vs the supervised baseline with the GRU encoder, the LSTM and attention encoders, n-step
returns, and the full vs the sampled conservative term on a large catalogue. CPU always; CUDA
(bf16 autocast, as in training) too when a GPU is visible.

    python -m benchmarks training
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import numpy as np
import torch

from benchmarks.common import peak_rss_mib, print_table, quick_mode, write_json
from dql_model.config import Config
from dql_model.contract import schema
from dql_model.learning.agent import DQNAgent, TensorBatch
from dql_model.learning.networks import QNetwork
from dql_model.warehouse import data

WARMUP_STEPS = 3
TIMED_STEPS = 20
LARGE_CATALOGUE = 100_000
SAMPLED_NEGATIVES = 2_048
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


def measure(cfg: Config, n_items: int, device: str) -> dict[str, object]:
    torch.manual_seed(0)
    model = QNetwork(n_items, cfg.simulator.n_categories, cfg.model)
    model.set_item_features(
        np.arange(n_items + 1) % (cfg.simulator.n_categories + 1), np.arange(n_items + 1) % cfg.model.price_buckets
    )
    amp = torch.bfloat16 if device == "cuda" else None
    agent = DQNAgent(model, cfg.train, device=device, amp_dtype=amp)
    batch = TensorBatch.from_numpy(
        synthetic_batch(n_items, cfg.train.batch_size, cfg.etl.max_len, cfg.train.n_step), device
    )
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
        "transitions_per_s": TIMED_STEPS * cfg.train.batch_size / seconds,
        "ms_per_step": 1000 * seconds / TIMED_STEPS,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def cases(base: Config) -> list[tuple[str, Config, int]]:
    n = base.simulator.n_items

    def with_(train=None, model=None) -> Config:
        return base.replace(train=train or {}, model=model or {})

    return [
        ("dqn, gru (default)", base, n),
        ("supervised, gru", with_({"mode": "supervised"}), n),
        ("dqn, lstm", with_(model={"encoder": "lstm"}), n),
        ("dqn, attention", with_(model={"encoder": "attention"}), n),
        ("dqn, gru, no state memory", with_(model={"state_memory": 0}), n),
        ("dqn, gru, n_step=3", with_({"n_step": 3}), n),
        (f"dqn, {LARGE_CATALOGUE:,} items, full logsumexp", base, LARGE_CATALOGUE),
        (
            f"dqn, {LARGE_CATALOGUE:,} items, {SAMPLED_NEGATIVES} sampled",
            with_({"cql_negatives": SAMPLED_NEGATIVES}),
            LARGE_CATALOGUE,
        ),
    ]


def main(argv: Sequence[str] = ()) -> None:
    global WARMUP_STEPS, TIMED_STEPS, LARGE_CATALOGUE
    if quick_mode(argv):  # a smoke run: every case, one timed step, a 10k "large" catalogue
        WARMUP_STEPS, TIMED_STEPS, LARGE_CATALOGUE = 1, 1, 10_000
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
    write_json(
        "training",
        {
            "batch_size": base.train.batch_size,
            "max_len": base.etl.max_len,
            "model": base.to_dict()["model"],
            "results": records,
            "peak_rss_mib": peak_rss_mib(),
        },
    )


if __name__ == "__main__":
    main(sys.argv[1:])

