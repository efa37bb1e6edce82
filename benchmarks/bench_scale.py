"""A real shop's night at several sizes: RetailRocket-shaped files through import and every nightly step.

``python -m benchmarks.bench_scale [--scales 0.1,0.3,1.0]`` (``--quick`` or ``DQLREC_BENCH_QUICK=1``:
scale 0.002, the import and the raw gate only, seconds): for each scale, the four files of
RetailRocket's layout (``benchmarks/retailrocket_shape.py``: 1.41M visitors, 2.76M events, 235k items
with events, 417k items in the property files at 1.0; visitors, events and items scaled together) are
written under var/bench/scale/<scale>/, then, with the defaults and nothing else set:

    import (dqlrec import --format retailrocket) -> validate_raw_events -> build_training_data (Spark)
    -> validate_training_data -> train_model -> evaluate_and_gate -> score_users
    -> validate_recommendations -> publish_recommendations -> write_report

each step in order in this process, as ``dqlrec task`` chains them (the Spark job in its child). A
sampler reads the resident memory of this process and all its children every ``SAMPLE_S`` seconds;
a step's peak is the largest sum seen while it ran. The table gives each step's seconds and peak
MiB per scale, the whole night, and the growth exponent of each step's time between consecutive
scales (log t2/t1 over log s2/s1: 1 is linear). Writes var/bench/scale.json with the machine.
"""

from __future__ import annotations

import argparse
import math
import shutil
import threading
import time
from collections.abc import Sequence

from benchmarks import retailrocket_shape
from benchmarks.common import BENCH_DIR, print_table, quick_mode, write_json

DEFAULT_SCALES = (0.1, 0.3, 1.0)
QUICK_SCALE = 0.002
SAMPLE_S = 0.25
SCALE_DIR = BENCH_DIR / "scale"
IMPORT = "import"


class TreeMemory:
    """Peak resident memory of this process and its children, sampled in a thread, per named phase."""

    def __init__(self) -> None:
        import psutil

        self._me = psutil.Process()
        self._phase: str | None = None
        self.peaks: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()

    def phase(self, name: str) -> None:
        self._phase = name
        self._sample()

    def _sample(self) -> None:
        import psutil

        total = 0
        for process in [self._me, *self._me.children(recursive=True)]:
            try:
                total += process.memory_info().rss
            except psutil.Error:  # a child that just ended
                pass
        if self._phase is not None:
            self.peaks[self._phase] = max(self.peaks.get(self._phase, 0.0), total / 2**20)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self._sample()


def night(scale: float, *, quick: bool, train_minutes: float | None = None) -> dict[str, dict[str, float]]:
    """Generate the files at ``scale``, import them and run the night; step -> seconds and peak MiB.

    ``train_minutes`` replaces the default ``train.max_minutes`` (the night's one setting that is a time,
    not a size: a shorter budget measures the other steps' growth in less time; None keeps the default)."""
    from dql_model.config import Config
    from dql_model.contract import steps
    from dql_model.importers import import_data
    from dql_model.ops import spark_jobs
    from dql_model.pipeline import tasks
    from dql_model.warehouse.run_dates import resolve_run_date

    folder = SCALE_DIR / f"{scale:g}"
    shutil.rmtree(folder, ignore_errors=True)
    files = folder / "retailrocket"
    files.mkdir(parents=True)
    print(f"scale {scale:g}: writing RetailRocket-shaped files to {files}", flush=True)
    retailrocket_shape.write(files, scale)
    cfg = Config().replace(
        warehouse={"root": str(folder / "warehouse")},
        registry={"root": str(folder / "models")},
        publish={"export_uri": str(folder / "export")},
    )
    if train_minutes is not None:
        cfg = cfg.replace(train={"max_minutes": train_minutes})
    figures: dict[str, dict[str, float]] = {}
    with TreeMemory() as memory:
        memory.phase(IMPORT)
        started = time.perf_counter()
        import_data(cfg.layout, "retailrocket", files, progress_every=10**9)
        figures[IMPORT] = {"seconds": time.perf_counter() - started}
        run_date = resolve_run_date(cfg, "latest", require_loaded=True)
        chosen = list(steps.STEPS[:1] if quick else steps.STEPS)
        following = {step.name: nxt.name for step, nxt in zip(chosen, chosen[1:], strict=False)}

        def done(step, result, seconds) -> None:
            figures[step.name] = {"seconds": seconds}
            print(f"scale {scale:g}: {step.name} {seconds:.1f} s", flush=True)
            if step.name in following:
                memory.phase(following[step.name])

        memory.phase(chosen[0].name)
        tasks.run_steps(
            chosen,
            run_date,
            cfg=cfg,
            run_job=lambda job: spark_jobs.run_job(job, run_date, config=cfg.to_dict(), scratch=cfg.layout.root),
            warn=print,
            step_done=done,
        )
    for name, peak in memory.peaks.items():
        if name in figures:
            figures[name]["peak_mib"] = peak
    figures["night"] = {
        "seconds": sum(f["seconds"] for f in figures.values()),
        "peak_mib": max(f.get("peak_mib", 0.0) for f in figures.values()),
    }
    if not quick:
        shutil.rmtree(files, ignore_errors=True)  # the warehouse stays for a look; the CSVs are large
    return figures


def growth(figures: dict[float, dict[str, dict[str, float]]]) -> dict[str, list[float | None]]:
    """Per step, log(t2 / t1) / log(s2 / s1) between consecutive scales (1: linear)."""
    scales = sorted(figures)
    out: dict[str, list[float | None]] = {}
    for name in figures[scales[0]]:
        exponents = []
        for a, b in zip(scales, scales[1:], strict=False):
            ta, tb = figures[a].get(name, {}).get("seconds"), figures[b].get(name, {}).get("seconds")
            ok = ta and tb and ta > 0.05
            exponents.append(round(math.log(tb / ta) / math.log(b / a), 2) if ok else None)
        out[name] = exponents
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_scale", description=__doc__.split("\n")[0])
    parser.add_argument("--scales", default=",".join(f"{s:g}" for s in DEFAULT_SCALES))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--train-minutes", type=float, default=None, help="train.max_minutes for every scale (default: the "
        "product's default); training stops at its budget at every scale, so a shorter one measures how the "
        "other steps grow in less time"
    )  # fmt: skip
    args = parser.parse_args([] if argv is None else list(argv))
    quick = args.quick or quick_mode()
    scales = (QUICK_SCALE,) if quick else tuple(float(s) for s in args.scales.split(","))
    figures = {scale: night(scale, quick=quick, train_minutes=args.train_minutes) for scale in scales}
    names = list(figures[scales[0]])
    exponents = growth(figures) if len(scales) > 1 else {}
    header = ["step", *(f"s @ {s:g}" for s in scales), *(f"MiB @ {s:g}" for s in scales)]
    if exponents:
        header += [f"growth {a:g}->{b:g}" for a, b in zip(scales, scales[1:], strict=False)]
    rows = []
    for name in names:
        row = [name]
        row += [round(figures[s].get(name, {}).get("seconds", float("nan")), 1) for s in scales]
        row += [round(figures[s].get(name, {}).get("peak_mib", float("nan"))) for s in scales]
        row += [e if e is not None else "-" for e in exponents.get(name, [])]
        rows.append(row)
    budget = "defaults" if args.train_minutes is None else f"defaults but train.max_minutes={args.train_minutes:g}"
    print_table(f"A RetailRocket-shaped night, {budget}, by scale" + (" (quick)" if quick else ""), header, rows)
    write_json(
        "scale",
        {
            "quick": quick,
            "scales": list(scales),
            "train_minutes": args.train_minutes,
            "steps": {f"{s:g}": figures[s] for s in scales},
            "growth": exponents,
        },
    )
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
