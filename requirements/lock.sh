#!/usr/bin/env bash
# Re-resolve requirements/requirements.in into the frozen requirements.txt.
# Airflow's constraints file cannot be downloaded here, so the whole tree is pinned by this lock.
set -euo pipefail
cd "$(dirname "$0")/.."
uv=${UV:-uv}
tmp=$(mktemp)
"$uv" pip compile requirements/requirements.in --override requirements/overrides.txt \
  --python-version 3.11 --python-platform x86_64-manylinux_2_28 --no-header -o "$tmp" --quiet
{
  echo "# Frozen lock of requirements/requirements.in (requirements/lock.sh). Installed with --no-deps;"
  echo "# torch's GPU runtime packages are resolved by pip for the machine's torch build."
  awk -f requirements/strip_gpu.awk "$tmp"
} > requirements.txt
rm -f "$tmp"
