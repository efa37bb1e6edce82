"""What every benchmark shares: the machine description, the printed table and the JSON record."""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

BENCH_DIR = Path(os.environ.get("DQLREC_BENCH_DIR", Path(__file__).resolve().parents[1] / "var" / "bench"))
QUICK_ENV = "DQLREC_BENCH_QUICK"
"""``1``: every benchmark runs its quick mode (tiny sizes, seconds each; ``python -m benchmarks --quick``)."""


def quick_mode(argv: Sequence[str] = ()) -> bool:
    """True when ``--quick`` is in ``argv`` or DQLREC_BENCH_QUICK=1: a smoke run, not figures to quote."""
    return "--quick" in argv or os.environ.get(QUICK_ENV) == "1"


def skipped(name: str, reason: str) -> Path:
    """Say why benchmark ``name`` did not run, and record it as its JSON (``skipped``: the reason)."""
    print(f"{name} skipped: {reason}")
    return write_json(name, {"skipped": reason})


def machine() -> dict[str, object]:
    """CPU model, core count, memory and library versions: printed with every table."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    info: dict[str, object] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if "torch" in sys.modules:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return info


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    """Resident memory of this process now (Linux: /proc/self/statm); 0.0 where that file is missing."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


def reset_peak_rss() -> bool:
    """Restart ``peak_rss_mib`` from the memory resident now (Linux: ``5`` to /proc/self/clear_refs), so
    that it measures one step; False where the kernel does not allow it (the peak then counts from the start)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.3g}"
        return f"{v:,}" if isinstance(v, int) else str(v)

    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in [list(header), *cells]) for i in range(len(header))]
    m = machine()
    print(f"\n## {title}")
    print(f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Python {m['python']}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))


def write_json(name: str, figures: dict[str, object]) -> Path:
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    path = BENCH_DIR / f"{name}.json"
    record = {"benchmark": name, "at": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(), **figures}
    path.write_text(json.dumps(record, indent=2, default=str))
    print(f"figures written to {path}")
    return path
