"""dqlrec: nightly deep Q-learning recommendations (config, data contract, simulator, Q-network,
training, evaluation, scoring, publishing, data quality, model registry, CLI)."""

import os

__version__ = "0.1.0"

# OpenMP threads that wait for work sleep instead of spinning. With the default (spinning), two
# jobs on the same cores each burn the cores the other needs: two trainings at once with 2 threads
# each on 2 cores reached 44% of one alone (benchmarks/bench_threads.py); with PASSIVE they reached
# 135%, at a cost of about 20% to one training alone. Read once, when the OpenMP runtime starts
# (torch's first import), so it is set here, before any module of the package imports torch. An
# explicit OMP_WAIT_POLICY (e.g. ACTIVE on a dedicated machine) wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
