"""Scoring throughput next to the arithmetic limit of this machine, measured in the same run.

For K = 20 over catalogues of 10k and 100k items (embedding 64, states of up to 20 interactions),
``scoring.engines.score_users`` (the torch engine: encoder, masked matrix product, deterministic top-K,
Arrow rows) is timed end to end. Its useful arithmetic is the matrix product Q = f(s) g(·)ᵀ:
2 · 64 · (n_items + 1) floating-point operations per user; the GRU state encoder adds
2 · 3 · (64·64 + 64·64) per interaction in the state, which matters on small catalogues
(at 10k items it is about as much arithmetic as the product), so a second ratio counts both. Beside it, ``torch.mm`` of the same
shape as one scoring chunk ([users per chunk, 64] × [64, n_items + 1]) and a large square
product give the machine's matrix-multiply rate, so the table says how close scoring comes to it.

Then the memory of the scoring step as the scoring task runs it (``--memory-only``: this part alone):
500k users over 20k items at K = 20 (10M rows), ranked and written to a partition, once as the task
did before it streamed (``rank_users``' one table of every row, then ``storage.write_partition``) and
once as it does now (``ranked_batches`` into ``write_batches``: part files written as the batches come).
Each runs in a child process of its own; the kernel's high-water mark of resident memory is restarted
after the inputs are built (``common.reset_peak_rss``), so "step peak" is the step's own peak, and
"above inputs" what the step added to the model, states and catalogue it was given.

Then ``score.retrieval: ann`` against the exact path where a big catalogue makes it matter: 200k items,
15k users, embedding 64, K = 20, the default ann settings (about 4·sqrt(items) IVF lists, 16 probed,
10·K candidates re-ranked exactly). Both are timed end to end from the model (the ann time split into
building the index and ranking), with the ratio, and ann's recall@K against brute force on a seeded
sample of 1,000 users (``engines.choose_retrieval``, what the scoring summary reports); once with an
untrained QNetwork (item vectors without clusters: IVF's worst case) and once with known clustered
vectors (``ClusteredVectors``, a stand-in for a trained model).

    python -m benchmarks.bench_scoring            # or: make bench
    python -m benchmarks.bench_scoring --quick    # fewer users, one repeat (a smoke run)
    python -m benchmarks.bench_scoring --memory-only [--memory-users 1400000 --memory-items 20000]
    python -m benchmarks.bench_scoring --ann-only [--ann-items 200000 --ann-users 20000]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from benchmarks.common import (
    Timer,
    machine,
    peak_rss_mib,
    print_table,
    quick_mode,
    reset_peak_rss,
    rss_mib,
    write_json,
)
from dql_model.config import ModelConfig, PublishConfig, ScoreConfig
from dql_model.contract import schema
from dql_model.learning.networks import QNetwork
from dql_model.scoring import engines
from dql_model.scoring.engines import score_users
from dql_model.scoring.policy import Policy
from dql_model.scoring.ranking import SCORES_PER_CHUNK
from dql_model.scoring.retrieval import AnnSettings
from dql_model.warehouse import data, storage

EMBED, TOP_K, MAX_LEN, BATCH_SIZE = 64, 20, 20, 2048
CASES = ((10_000, 32_768), (100_000, 8_192))
"""(items, users) per row of the table: enough users for a few seconds of work per run."""
MEMORY_CASE, MEMORY_QUICK, MEMORY_EMBED = (20_000, 500_000), (500, 4_000), 16
"""(items, users) of the memory comparison, full and quick, and its model's embedding (a small model:
the figures are about the rows, so the arithmetic is kept short)."""
ANN_CASE, ANN_QUICK, ANN_CLUSTERS = (200_000, 15_000), (20_000, 2_000), 500
"""(items, users) of the ann-against-exact comparison, full and quick; clusters of ``ClusteredVectors``."""
WRITERS = ("one table", "streamed")
"""How the scoring step writes its rows: before the streaming change, and now."""


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


def synthetic_inputs(n_items: int, n_users: int, seed: int = 0, embed: int = EMBED):
    """A random QNetwork, tonight's items, user states (1% empty, a few purchases each), popularity."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model = QNetwork(n_items, 50, ModelConfig(embed_dim=embed, hidden_dim=embed)).eval()
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


def scoring_step(writer: str, n_items: int, n_users: int, folder: Path) -> dict[str, object]:
    """One scoring step in this process on synthetic inputs, the task's defaults (K, batch size), writing
    the partition ``folder`` as ``writer`` says; its seconds, the step's peak memory and the files."""
    model, items, states, popularity = synthetic_inputs(n_items, n_users, embed=MEMORY_EMBED)
    policy = Policy(top_k=ScoreConfig().top_k)
    options = {
        "batch_size": ScoreConfig().batch_size,
        "popularity": popularity,
        "model_version": "bench",
        "generated_at": datetime(2026, 11, 27, tzinfo=UTC),
    }
    gc.collect()
    inputs = rss_mib()
    exact = reset_peak_rss()
    with Timer() as t:
        if writer == "one table":  # score_with_torch before it streamed: every row, then the files
            table, _ = engines.rank_users(model, states, items, policy, **options)
            storage.write_partition(table, folder, rows_per_file=PublishConfig().rows_per_file)
            rows, _ = table.num_rows, pc.value_counts(table.column(schema.SOURCE))
            users = pc.count_distinct(table.column(schema.USER_ID)).as_py()
            del table
        else:
            with contextlib.closing(engines.ranked_batches(model, states, items, policy, **options)) as ranked:
                written = engines.write_batches(ranked, folder, exclude=policy.exclude, n_users=n_users, say=lambda line: None)
            rows, users = written.rows, written.users
    files = sorted(folder.glob("part-*.parquet"))
    return {
        "writer": writer,
        "items": n_items,
        "users": n_users,
        "rows": rows,
        "users_with_rows": users,
        "seconds": t.seconds,
        "inputs_rss_mib": inputs,
        "step_peak_rss_mib": peak_rss_mib(),
        "peak_is_the_steps": exact,
        "part_files": len(files),
        "largest_part_mib": max(f.stat().st_size for f in files) / 2**20,
        "largest_part_rows": max(pq.ParquetFile(f).metadata.num_rows for f in files),
        "torch_threads": torch.get_num_threads(),
    }


def memory_comparison(n_items: int, n_users: int) -> list[dict[str, object]]:
    """``scoring_step`` of each writer in a child process of its own (a fresh high-water mark each)."""
    records = []
    root = Path(__file__).resolve().parents[1]
    for writer in WRITERS:
        with tempfile.TemporaryDirectory(prefix="dqlrec-bench-scoring-") as tmp:
            out = Path(tmp) / "figures.json"
            command = [
                sys.executable, "-m", "benchmarks.bench_scoring", "--memory-child", writer,
                "--memory-items", str(n_items), "--memory-users", str(n_users), "--memory-out", str(out),
            ]  # fmt: skip
            subprocess.run(command, cwd=root, check=True)
            records.append(json.loads(out.read_text()))
    header = ["writer", "users", "items", "rows", "seconds", "inputs MiB", "step peak MiB", "above inputs MiB",
              "part files", "largest part MiB"]  # fmt: skip
    rows = [
        [r["writer"], r["users"], r["items"], r["rows"], r["seconds"], r["inputs_rss_mib"], r["step_peak_rss_mib"],
         r["step_peak_rss_mib"] - r["inputs_rss_mib"], r["part_files"], r["largest_part_mib"]]
        for r in records
    ]  # fmt: skip
    exact = all(r["peak_is_the_steps"] for r in records)
    print_table(
        f"Memory of the scoring step, top-{ScoreConfig().top_k}, batches of {ScoreConfig().batch_size} users, "
        f"embedding {MEMORY_EMBED}, "
        f"torch on {records[0]['torch_threads']} thread(s), each writer in its own process",
        header,
        rows,
    )
    print(
        "step peak: the kernel's high-water mark of resident memory "
        + ("restarted after the inputs were built" if exact else "since the process started (no reset allowed here)")
        + "; above inputs: what the step added to the model, states and catalogue it was given."
    )
    return records


class ClusteredVectors(QNetwork):
    """Known item vectors in ``ANN_CLUSTERS`` clusters (item norms spread lognormally, small biases) and
    f(s) = the mean vector of the state's items: a stand-in for a trained model, whose item vectors
    cluster by what is bought together. Synthetic; only the ranking interface is real."""

    def __init__(self, n_items: int, seed: int = 0):
        super().__init__(n_items, 1, ModelConfig(embed_dim=4, hidden_dim=4))
        rng = np.random.default_rng(seed)
        centres = rng.standard_normal((ANN_CLUSTERS, EMBED))
        vectors = centres[rng.integers(0, ANN_CLUSTERS, n_items + 1)] + 0.5 * rng.standard_normal((n_items + 1, EMBED))
        vectors *= rng.lognormal(0.0, 0.3, (n_items + 1, 1))
        vectors[0] = 0.0
        self.register_buffer("fixed_vectors", torch.tensor(vectors, dtype=torch.float32))
        self.register_buffer("fixed_biases", torch.tensor(0.1 * rng.standard_normal(n_items + 1), dtype=torch.float32))

    def item_vectors(self, items: torch.Tensor | None = None) -> torch.Tensor:
        return self.fixed_vectors if items is None else self.fixed_vectors[items]

    def item_biases(self, items: torch.Tensor | None = None) -> torch.Tensor:
        return self.fixed_biases if items is None else self.fixed_biases[items]

    def encode_state(self, state_items: torch.Tensor, state_events: torch.Tensor) -> torch.Tensor:
        length = (state_items > 0).sum(dim=1, keepdim=True).clamp(min=1)
        return self.fixed_vectors[state_items].sum(dim=1) / length


def ann_comparison(n_items: int, n_users: int) -> list[dict[str, object]]:
    """Exact and ann scoring of the same users end to end (ann: index build, then ranking), their ratio,
    and ann's recall@K against brute force on a seeded sample of users (``engines.choose_retrieval``),
    with the default ann settings; for an untrained QNetwork and for ``ClusteredVectors``."""
    untrained, items, states, popularity = synthetic_inputs(n_items, n_users)
    policy = Policy(top_k=TOP_K)
    settings = AnnSettings.from_config(ScoreConfig(retrieval="ann"))
    options = {"popularity": popularity, "model_version": "bench", "generated_at": datetime(2026, 11, 27, tzinfo=UTC)}

    def rank(ranker) -> int:
        return sum(table.num_rows for table, _, _ in engines.ranker_batches(ranker, states, batch_size=BATCH_SIZE))

    records, rows = [], []
    for name, model in (("untrained QNetwork", untrained), ("clustered vectors", ClusteredVectors(n_items))):
        with Timer() as exact:
            exact_rows = rank(engines.make_ranker(model, items, policy, **options))
        with Timer() as build:
            ranker = engines.make_ranker(model, items, policy, ann=settings, **options)
        with Timer() as search:
            ann_rows = rank(ranker)
        recall = engines.choose_retrieval(ranker, states, settings, seed=0)
        ann_seconds = build.seconds + search.seconds
        records.append({
            "model": name, "items": n_items, "users": n_users, "top_k": TOP_K, "embed_dim": EMBED,
            "method": recall["method"], "exact_s": exact.seconds, "ann_s": ann_seconds,
            "ann_index_build_s": build.seconds, "ann_ranking_s": search.seconds, "speedup": exact.seconds / ann_seconds,
            "speedup_ranking_only": exact.seconds / search.seconds, "recall_at_k": recall["recall"],
            "recall_users": recall["users"], "rows": [exact_rows, ann_rows], "torch_threads": torch.get_num_threads(),
        })  # fmt: skip
        rows.append([name, exact.seconds, ann_seconds, build.seconds, search.seconds, exact.seconds / ann_seconds,
                     exact.seconds / search.seconds, recall["recall"], recall["users"]])  # fmt: skip
    print_table(
        f"score.retrieval exact vs ann, top-{TOP_K}, embedding {EMBED}, {n_users:,} users x {n_items:,} items, "
        f"torch on {torch.get_num_threads()} thread(s); ann: {records[0]['method']}",
        ["model", "exact s", "ann s", "ann index s", "ann ranking s", "exact/ann", "exact/ann ranking",
         f"recall@{TOP_K}", "recall users"],
        rows,
    )  # fmt: skip
    print("recall@K: the share of the exact top-K that ann's top-K holds, on a seeded sample of users. An untrained "
          "model's item vectors have no clusters, the worst case for IVF; clustered vectors are its good case.")  # fmt: skip
    return records


def main(argv: Sequence[str] = ()) -> None:
    """`python -m benchmarks` calls this without arguments: the full run."""
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--quick", action="store_true", help="fewer users and one repeat")
    args.add_argument("--memory-only", action="store_true", help="only the memory of the scoring step")
    args.add_argument("--memory-users", type=int, default=None, help=f"users of the memory comparison ({MEMORY_CASE[1]:,})")
    args.add_argument("--memory-items", type=int, default=None, help=f"items of the memory comparison ({MEMORY_CASE[0]:,})")
    args.add_argument("--ann-only", action="store_true", help="only score.retrieval ann against exact")
    args.add_argument("--ann-users", type=int, default=None, help=f"users of the ann comparison ({ANN_CASE[1]:,})")
    args.add_argument("--ann-items", type=int, default=None, help=f"items of the ann comparison ({ANN_CASE[0]:,})")
    args.add_argument("--memory-child", choices=WRITERS, help=argparse.SUPPRESS)
    args.add_argument("--memory-out", help=argparse.SUPPRESS)
    options = args.parse_args(list(argv))
    quick = options.quick or quick_mode()
    n_items = options.memory_items or (MEMORY_QUICK if quick else MEMORY_CASE)[0]
    n_users = options.memory_users or (MEMORY_QUICK if quick else MEMORY_CASE)[1]
    if options.memory_child:  # one writer's run, in the child memory_comparison started
        with tempfile.TemporaryDirectory(prefix="dqlrec-bench-scoring-") as tmp:
            figures = scoring_step(options.memory_child, n_items, n_users, Path(tmp) / "run_date=2026-11-27")
        Path(options.memory_out).write_text(json.dumps(figures))
        return
    started = time.perf_counter()
    ann_items = options.ann_items or (ANN_QUICK if quick else ANN_CASE)[0]
    ann_users = options.ann_users or (ANN_QUICK if quick else ANN_CASE)[1]
    if options.ann_only:
        write_json("bench_scoring_ann", {"ann": ann_comparison(ann_items, ann_users), "machine_at_end": machine()})
        return
    if options.memory_only:
        write_json("bench_scoring_memory", {"memory": memory_comparison(n_items, n_users)})
        return
    memory = memory_comparison(n_items, n_users)
    throughput(quick, started, memory, ann_comparison(ann_items, ann_users))


def throughput(quick: bool, started: float, memory: list[dict[str, object]], ann: dict[str, object]) -> None:
    """The throughput table, then the JSON record with ``memory``'s figures beside it."""
    repeats, user_share = (1, 8) if quick else (3, 1)
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
            "memory": memory,
            "ann": ann,
            "machine_at_end": machine(),
        },
    )


if __name__ == "__main__":
    main(sys.argv[1:])
