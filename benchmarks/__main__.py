"""Run every benchmark module (bench_*.py) in turn: ``python -m benchmarks [--quick] [NAME ...]``.

``--quick`` (or DQLREC_BENCH_QUICK=1) runs each one's quick mode: tiny sizes, seconds each, so that
tests/unit/test_benchmarks_run.py can show every benchmark still runs; its figures are not to quote.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys

import benchmarks
from benchmarks.common import QUICK_ENV


def main(argv: list[str]) -> int:
    if "--quick" in argv:
        os.environ[QUICK_ENV] = "1"
        argv = [a for a in argv if a != "--quick"]
    names = sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_"))
    selected = [n for n in names if not argv or any(a in n for a in argv)]
    if not selected:
        print(f"no benchmark matches {argv}; available: {names}")
        return 2
    for name in selected:
        importlib.import_module(f"benchmarks.{name}").main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
