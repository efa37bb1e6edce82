#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU (see benchmarks/gpu_check.py for what it measures):
# CUDA training of the default model for fixed steps with bf16 autocast, scoring 1M users x 100k items
# with top-20 (throughput and peak GPU memory of both), and CUDA vs CPU top-K agreement on a sample.
#
#   benchmarks/gpu_check.sh                 # from the repository root, after `make install`
#   PYTHON=/path/to/python benchmarks/gpu_check.sh --steps 1000
#
# The project's torch must be a CUDA build there: `make install` on a GPU machine installs the pinned
# torch from the package index, which is one. Output: the table on stdout, var/bench/gpu_check.json,
# and this run's log in var/bench/gpu_check.log. Exit status: 0 pass, 1 a check failed, 2 no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-.venv/bin/python}"
if [ ! -x "$PYTHON" ]; then
  echo "gpu_check: $PYTHON not found: run \`make install\` first, or set PYTHON" >&2
  exit 2
fi
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: no NVIDIA GPU visible (nvidia-smi missing or failing); nothing to check" >&2
  exit 2
fi

mkdir -p var/bench
{
  echo "# gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m benchmarks.gpu_check "$@"
} 2>&1 | tee var/bench/gpu_check.log
exit "${PIPESTATUS[0]}"
