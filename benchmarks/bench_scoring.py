"""Scoring throughput next to the arithmetic limit of this machine, measured in the same run.

For K = 20 over catalogues of 10k and 100k items (embedding 64, states of up to 20 interactions),
``scoring.engines.score_users`` (the torch engine: encoder, masked matrix product, deterministic top-K,
Arrow rows) is timed end to end. Its useful arithmetic is the matrix product Q = f(s) g(·)ᵀ:
2 · 64 · (n_items + 1) floating-point operations per user; the GRU state encoder adds
2 · 3 · (64·64 + 64·64) per interaction in the state, which matters on small catalogues
(at 10k items it is about as much arithmetic as the product), so a second ratio counts both. Beside it, ``torch.mm`` of the same
shape as one scoring chunk ([users per chunk, 64] × [64, n_items + 1]) and a large square
product give the machine's matrix-multiply rate, so the table says how close scoring comes to it.

    python -m benchmarks.bench_scoring            # or: make bench
    python -m benchmarks.bench_scoring --quick    # fewer users, one repeat (a smoke run)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial

import numpy as np
import pyarrow as pa
import torch

from benchmarks.common import Timer, machine, peak_rss_mib, print_table, quick_mode, write_json
from dql_model.config import ModelConfig
from dql_model.learning.networks import QNetwork
from dql_model.scoring.engines import score_users
from dql_model.scoring.policy import Policy
from dql_model.scoring.ranking import SCORES_PER_CHUNK
from dql_model.warehouse import data

EMBED, TOP_K, MAX_LEN, BATCH_SIZE = 64, 20, 20, 2048
CASES = ((10_000, 32_768), (100_000, 8_192))
"""(items, users) per row of the table: enough users for a few seconds of work per run."""


def best_seconds(run: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(best, median) wall seconds of ``repeats`` runs after one warm-up."""
    run()
    times = []
    for _ in range(repeats):
        with Timer() as t:
            run()
        times.append(t.seconds)
    return min(times), float(np.median(times))


def matmul_gflops(m: int, k: int, n: int, repeats: int) -> float:
    """Best rate of torch.mm for [m, k] × [k, n] in float32, all threads, output preallocated."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    out = torch.empty(m, n)
    calls = max(1, int(2e9 // (2 * m * k * n)))  # about 2 GFLOP per timing: long enough to measure

    def run() -> None:
        for _ in range(calls):
            torch.mm(a, b, out=out)

    best, _ = best_seconds(run, repeats)
    return 2 * m * k * n * calls / best / 1e9


def synthetic_inputs(n_items: int, n_users: int, seed: int = 0):
    """A random QNetwork, tonight's items, user states (1% empty, a few purchases each), popularity."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model = QNetwork(n_items, 50, ModelConfig(embed_dim=EMBED, hidden_dim=EMBED)).eval()
    model.set_item_features(rng.integers(1, 51, n_items + 1), rng.integers(1, 17, n_items + 1))
    available = rng.random(n_items + 1) > 0.05
    available[0] = False
    items = data.ItemFeatures(
        item_ids=np.array([None] + [f"item-{i}" for i in range(1, n_items + 1)], dtype=object),
        category=rng.integers(1, 51, n_items + 1),
        price_bucket=rng.integers(1, 17, n_items + 1),
        available=available,
        category_ids=[f"c{c}" for c in range(1, 51)],
    )
    lengths = rng.integers(1, MAX_LEN + 1, n_users)
    lengths[rng.random(n_users) < 0.01] = 0
    columns = np.arange(MAX_LEN)[None, :] >= (MAX_LEN - lengths)[:, None]
    state_items = np.where(columns, rng.integers(1, n_items + 1, (n_users, MAX_LEN)), 0)
    bought = rng.integers(0, 4, n_users)
    states = data.UserStates(
        user_id=pa.array([f"user-{u}" for u in range(n_users)]),
        state_items=state_items,
        state_events=np.where(columns, rng.integers(1, 5, (n_users, MAX_LEN)), 0),
        excluded_indptr=np.concatenate([[0], np.cumsum(bought)]),
        excluded_items=rng.integers(1, n_items + 1, bought.sum()),
    )
    return model, items, states, rng.poisson(5.0, n_items + 1).astype(np.float64)


def main(argv: Sequence[str] = ()) -> None:
    """`python -m benchmarks` calls this without arguments: the full run."""
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--quick", action="store_true", help="fewer users and one repeat")
    options = args.parse_args(list(argv))
    repeats, user_share = (1, 8) if options.quick or quick_mode() else (3, 1)

    started = time.perf_counter()
    square = 2048
    peak = matmul_gflops(square, square, square, repeats)
    load = os.getloadavg()[0]
    header = [
        "items", "users", "explore", "users/s", "scoring GFLOP/s", "mm GFLOP/s", "% of mm",
        "% of mm incl. encoder", "mm-bound users/s",
    ]  # fmt: skip
    rows, records = [], []
    for n_items, n_users in CASES:
        n_users //= user_share
        model, items, states, popularity = synthetic_inputs(n_items, n_users)
        chunk = min(BATCH_SIZE, max(1, SCORES_PER_CHUNK // (n_items + 1)))
        mm = matmul_gflops(chunk, EMBED, n_items + 1, repeats)
        flop_per_user = 2 * EMBED * (n_items + 1)
        interactions = int((states.state_items != 0).sum())
        encoder_flop_per_user = (2 * 3 * 2 * EMBED * EMBED * interactions + 2 * EMBED * EMBED * n_users) / n_users
        for explore in (0, 2) if n_items == CASES[0][0] else (0,):
            run = partial(
                score_users,
                model,
                states,
                items,
                Policy(top_k=TOP_K, explore_slots=explore, seed=1),
                batch_size=BATCH_SIZE,
                popularity=popularity,
                model_version="bench",
                generated_at=datetime(2026, 11, 27, tzinfo=UTC),
            )
            best, median = best_seconds(run, repeats)
            users_per_s = n_users / best
            achieved = users_per_s * flop_per_user / 1e9
            with_encoder = users_per_s * (flop_per_user + encoder_flop_per_user) / 1e9
            rows.append(
                [
                    n_items, n_users, explore, round(users_per_s), achieved, mm, 100 * achieved / mm,
                    100 * with_encoder / mm, round(mm * 1e9 / flop_per_user),
                ]
            )  # fmt: skip
            records.append(
                {
                    "items": n_items,
                    "users": n_users,
                    "top_k": TOP_K,
                    "embed_dim": EMBED,
                    "explore_slots": explore,
                    "best_s": best,
                    "median_s": median,
                    "users_per_s": users_per_s,
                    "scoring_gflops": achieved,
                    "matmul_shape": [chunk, EMBED, n_items + 1],
                    "matmul_gflops": mm,
                    "share_of_matmul": achieved / mm,
                    "encoder_flop_per_user": encoder_flop_per_user,
                    "share_of_matmul_incl_encoder": with_encoder / mm,
                }
            )
    print_table(
        f"Scoring throughput, top-{TOP_K}, embedding {EMBED}, torch {torch.__version__} on "
        f"{torch.get_num_threads()} threads (best of {repeats}; square {square}³ torch.mm: {peak:.1f} GFLOP/s; "
        f"load average at start {load:.1f})",
        header,
        rows,
    )
    print(
        "scoring GFLOP/s counts only the matrix product (2·64·items per user); mm GFLOP/s is torch.mm of one "
        "scoring chunk's shape; mm-bound users/s is what a scorer doing nothing but that product would reach."
    )
    write_json(
        "bench_scoring",
        {
            "square_matmul": {"n": square, "gflops": peak},
            "cases": records,
            "repeats": repeats,
            "load_average_at_start": load,
            "seconds": round(time.perf_counter() - started, 1),
            "peak_rss_mib": round(peak_rss_mib()),
            "machine_at_end": machine(),
        },
    )


if __name__ == "__main__":
    main(sys.argv[1:])
