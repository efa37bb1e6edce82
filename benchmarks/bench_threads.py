"""Two trainings on the same cores: does each get a fair share, or does oversubscription collapse both?

Each training is a child process doing gradient steps of the default model (bench_training's
synthetic batches) for a fixed window; the two of a pair start their window at the same instant.
Cases: one training alone (threads from the usable CPUs, as the pipeline sets them, and capped to
half of them); two at once with
torch's default (one thread per core each); two at once capped by the config (``train.threads``, e.g.
``DQLREC_TRAIN__THREADS``) to the usable CPUs divided between them; two at once each pinned to its own
cores (the affinity a container or a pinned worker gives), where ``dql_model.ops.threads`` follows the pin
with no setting. The check: a pair set up by dql_model.ops.threads reaches together at least 80% of the
better single training. Other load on the machine lowers every row: the load average is printed.

    python -m benchmarks threads
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence

from benchmarks.common import print_table, quick_mode, write_json
from dql_model.ops import threads

WINDOW_S = 15.0
START_DELAY_S = 20.0
"""Time for the children to import torch and warm up before their common window starts."""
QUICK_WINDOW_S, QUICK_START_DELAY_S = 2.0, 6.0
"""Quick mode (a smoke run): one training alone and one managed pair, short windows."""
REQUIRED_SHARE = 0.8


def train_for(window_s: float, start_at: float, configured: int | None) -> dict[str, float]:
    """Gradient steps of the default model from ``start_at`` for ``window_s``; transitions per second.

    ``configured`` is train.threads for dql_model.ops.threads (None: leave torch's own default).
    """
    import torch

    from benchmarks.bench_training import WARMUP_STEPS, synthetic_batch
    from dql_model.config import Config
    from dql_model.learning.agent import DQNAgent, TensorBatch
    from dql_model.learning.networks import QNetwork

    used = threads.set_torch_threads(configured) if configured is not None else torch.get_num_threads()
    cfg = Config()
    n_items = cfg.simulator.n_items
    torch.manual_seed(0)
    model = QNetwork(n_items, cfg.simulator.n_categories, cfg.model)
    agent = DQNAgent(model, cfg.train, device="cpu")
    batch = TensorBatch.from_numpy(synthetic_batch(n_items, cfg.train.batch_size, cfg.etl.max_len, cfg.train.n_step), "cpu")
    for _ in range(WARMUP_STEPS):
        agent.update(batch)
    time.sleep(max(0.0, start_at - time.time()))
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < window_s:
        agent.update(batch)
        steps += 1
    seconds = time.perf_counter() - started
    return {"transitions_per_s": steps * cfg.train.batch_size / seconds, "threads": used, "steps": steps}


def run_together(specs: list[dict], window_s: float = WINDOW_S, delay_s: float = START_DELAY_S) -> list[dict]:
    """Start one child per spec ({"threads": int | None, "cpus": set | None}); their results in order."""
    start_at = time.time() + delay_s
    children = []
    for spec in specs:
        command = [sys.executable, "-m", "benchmarks.bench_threads", "--worker", "--start-at", str(start_at),
                   "--window", str(window_s)]  # fmt: skip
        if spec["threads"] is not None:
            command += ["--threads", str(spec["threads"])]
        pin = (lambda cpus=spec["cpus"]: os.sched_setaffinity(0, cpus)) if spec.get("cpus") else None
        children.append(subprocess.Popen(command, stdout=subprocess.PIPE, text=True, preexec_fn=pin))
    results = []
    for child in children:
        out, _ = child.communicate()
        if child.returncode:
            raise RuntimeError(f"benchmark child failed ({child.returncode}): {out[-2000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def main(argv: Sequence[str] = ()) -> None:
    quick = quick_mode(argv)
    window_s, delay_s = (QUICK_WINDOW_S, QUICK_START_DELAY_S) if quick else (WINDOW_S, START_DELAY_S)
    cpus = sorted(os.sched_getaffinity(0))
    usable = threads.usable_cpus()
    half = max(1, usable // 2)
    halves = [set(cpus[: len(cpus) // 2] or cpus), set(cpus[len(cpus) // 2 :] or cpus)]
    cases = [
        ("one alone, threads = usable CPUs", [{"threads": 0}]),
        (f"one alone, train.threads = {half}", [{"threads": half}]),
        ("two at once, torch default threads", [{"threads": None}, {"threads": None}]),
        (f"two at once, train.threads = {half}", [{"threads": half}, {"threads": half}]),
        ("two at once, each pinned to half the CPUs", [{"threads": 0, "cpus": halves[0]}, {"threads": 0, "cpus": halves[1]}]),
    ]
    singles = 2  # the cases of one training alone
    if quick:
        cases, singles = [cases[0], cases[3]], 1
    rows, records = [], []
    for name, specs in cases:
        got = run_together(specs, window_s, delay_s)
        total = sum(g["transitions_per_s"] for g in got)
        rows.append([name, " + ".join(str(g["threads"]) for g in got),
                     " + ".join(f"{g['transitions_per_s']:,.0f}" for g in got), round(total)])  # fmt: skip
        records.append({"case": name, "runs": got, "total_transitions_per_s": total})
    alone = max(r["total_transitions_per_s"] for r in records[:singles])  # the better single training
    for row, record in zip(rows, records, strict=True):
        record["share_of_alone"] = record["total_transitions_per_s"] / alone
        row.append(f"{record['share_of_alone']:.0%}")
    print_table(
        f"Two trainings on the same {usable} usable CPUs, load average {os.getloadavg()[0]:.1f} at the end"
        f" (default model, {window_s:.0f} s windows, transitions/s{', quick mode' if quick else ''})",
        ["case", "threads", "each", "together", "vs best alone"],
        rows,
    )
    managed = [r["share_of_alone"] for r in records[1 if quick else 3 :]]  # the pairs ops.threads sets up
    verdict = "pass" if min(managed) >= REQUIRED_SHARE else "FAIL"
    print(f"check: pairs set by dql_model.ops.threads reach {', '.join(f'{s:.0%}' for s in managed)} of one alone "
          f"(required {REQUIRED_SHARE:.0%}): {verdict}")  # fmt: skip
    write_json("threads", {"usable_cpus": usable, "window_s": window_s, "results": records, "check": verdict})


def _worker(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--start-at", type=float, required=True)
    parser.add_argument("--window", type=float, required=True)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    print(json.dumps(train_for(args.window, args.start_at, args.threads)), flush=True)


if __name__ == "__main__":
    if "--worker" in sys.argv:
        _worker(sys.argv[1:])
    else:
        main(sys.argv[1:])
