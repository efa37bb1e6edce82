"""The shop in the loop at a reduced scale: DQN, a less conservative DQN, the supervised mode and
popularity on twin shops.

Each policy lives ``--days`` days on each seed's shop (``dql_model.pipeline.shop_loop``): every day's shoppers
see the lists the nightly pipeline published the night before, and the nightly pipeline (Great
Expectations, the Spark job, training, the gate, scoring, publishing) runs on their events and
impressions. Prints the per-day return of each policy, the cumulative return, the paired
difference DQN - supervised with its 95 % interval over seeds, and the coverage of the off-policy
estimators' intervals against the candidates' true values; writes ``var/bench/loop.json`` and the
plot ``benchmarks/figures/loop_return.png``.

The scale (SCALE) is a 600-shopper, 200-item shop with 4 training epochs a night: 14 days x 3 seeds
x 3 learned policies are 126 nights of about 85 s on 2 shared cores (three processes side by side
take about 75 minutes); the demo's 3000 x 1000 shop takes about four times as long a night. Finished twins are cached under
``var/bench/loop/``: a killed run resumes at the twin it was in, and two processes can share the
work (``--policy dqn`` in one, ``--policy supervised,popularity`` in another, then a run with all
of them prints the summary from the cache).

    python -m benchmarks.bench_loop [--days 14] [--seeds 3] [--policy dqn,dqn:cql_alpha=1,supervised,popularity]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import jobs.shop_loop
from benchmarks.common import BENCH_DIR, machine, quick_mode, write_json
from dql_model.config import load_config
from dql_model.judging import plots
from dql_model.pipeline import shop_loop

SCALE = {
    "simulator": {"n_users": 600, "n_items": 200, "n_categories": 8},
    "train": {"epochs": 4, "threads": 1},
    "eval": {"baseline_trials": 0, "sim_users": 0},
    "spark": {"master": "local[1]", "shuffle_partitions": 1},
}
"""The reduced scale (overrides of the default config); everything else is the default."""
QUICK_SCALE = {
    "simulator": {"n_users": 120, "n_items": 40, "n_categories": 4},
    "train": {"epochs": 1, "threads": 1},
    "eval": {"baseline_trials": 0, "sim_users": 0},
    "spark": {"master": "local[1]", "shuffle_partitions": 1},
}
"""Quick mode (a smoke run of one night of each policy on one tiny twin shop)."""
QUICK_ARGS = ["--days", "1", "--seeds", "1", "--policy", "dqn,popularity", "--truth-replicates", "1"]
FIGURE = Path(__file__).parent / "figures" / plots.LOOP_RETURN


def main(argv: Sequence[str] = ()) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_loop", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--policy", default="dqn,dqn:cql_alpha=1,supervised,popularity")
    parser.add_argument("--truth-replicates", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help=f"{' '.join(QUICK_ARGS)} on a tiny shop")
    quick = quick_mode(argv)
    args = parser.parse_args([*QUICK_ARGS, *argv] if quick else list(argv))
    scale = QUICK_SCALE if quick else SCALE
    cfg = load_config(None).replace(**scale)
    settings = shop_loop.LoopSettings(
        days=args.days,
        seeds=tuple(range(args.seeds)),
        policies=tuple(p for p in args.policy.split(",") if p),
        truth_replicates=args.truth_replicates,
    )
    summary = jobs.shop_loop.run(cfg, settings, BENCH_DIR / ("loop-quick" if quick else "loop"))
    print(shop_loop.format_summary(summary))
    if len(settings.policies) > 1 and not quick:
        plots.loop_return(summary, FIGURE)
        print(f"plot {FIGURE}")
    print(f"json {write_json('loop', {'machine': machine(), 'scale': scale, **summary})}")


if __name__ == "__main__":
    main(sys.argv[1:])
