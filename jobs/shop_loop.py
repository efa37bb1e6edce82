"""The shop in the loop (``dql_model.pipeline.shop_loop``) with one Spark session for every night.

Each simulated day is followed by a nightly run whose Spark job runs here, in the session this
process keeps, instead of a child process with its own JVM per night. ``dqlrec simulate`` launches
it; by hand::

    python -m jobs.shop_loop --run-date 2026-11-27 [--config dqlrec.yaml] [--days 14] \\
        [--policy dqn,supervised,popularity] [--seeds 3] [--out var/loop]

``--run-date`` is the generated window's last day (``simulator.end_date``): the first night.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dql_model.config import Config, load_config
from dql_model.judging import plots
from dql_model.pipeline import shop_loop
from jobs.common import exit_status, run_date_arg
from jobs.spark_session import get_spark

JOB = "shop_loop"


def in_session_jobs(job: str, run_date: str, config_file: Path) -> None:
    """A nightly Spark job in the active session (each job's ``main`` keeps a session it finds)."""
    importlib.import_module(f"jobs.{job}").main(["--run-date", run_date, "--config", str(config_file)])


def run(cfg: Config, settings: shop_loop.LoopSettings, folder: Path, **kwargs: Any) -> dict[str, Any]:
    """``shop_loop.run_loop`` with the Spark jobs in this process's session (the caller's, if one is active)."""
    from pyspark.sql import SparkSession

    owns_session = SparkSession.getActiveSession() is None
    spark = get_spark(cfg.spark, f"dqlrec-{JOB}")
    try:
        return shop_loop.run_loop(cfg, settings, folder, run_job=in_session_jobs, **kwargs)
    finally:
        if owns_session:
            spark.stop()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=JOB, description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run-date", required=True, type=run_date_arg, help="the first night, YYYY-MM-DD (UTC)"
    )
    parser.add_argument(
        "--config", default=None, help="YAML config (default: $DQLREC_CONFIG, then built-in defaults)"
    )
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--policy", default="dqn,supervised,popularity")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--explore-slots", type=int, default=3)
    parser.add_argument("--truth-replicates", type=int, default=4)
    parser.add_argument("--out", required=True, help="the loop folder")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    cfg = load_config(args.config)
    if args.run_date.isoformat() != cfg.simulator.end_date:
        cfg = cfg.replace(simulator={"end_date": args.run_date.isoformat()})
    settings = shop_loop.LoopSettings(
        days=args.days,
        seeds=tuple(range(args.seeds)),
        policies=tuple(p.strip() for p in args.policy.split(",") if p.strip()),
        top_k=args.top_k,
        explore_slots=args.explore_slots,
        truth_replicates=args.truth_replicates,
    )
    folder = Path(args.out)
    summary = run(cfg, settings, folder)
    print(shop_loop.format_summary(summary))
    if len(summary["policies"]) > 1:
        print(f"plot {plots.loop_return(summary, folder / plots.LOOP_RETURN)}")
    print(f"summary {folder / shop_loop.SUMMARY_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(exit_status(main))
