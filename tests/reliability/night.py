"""A night of the pipeline without Airflow or Spark: the nightly steps from train_model to write_report,
run in order through ``dql_model.pipeline.tasks`` as the DAG runs them, results passed on as its XCom.

    python -m tests.reliability.night CONFIG RUN_DATE FIRST LAST [UPSTREAM_JSON]

runs the steps FIRST..LAST in a process of its own, which the fault-injection tests kill with
``DQLREC_FAULT_AT``; the tests run the rerun in their own process with ``run_steps``. With
``NO_EXCHANGE_ENV`` set the process behaves as on a file system without an atomic exchange of folders
(storage.exchange refuses), so its swaps take the two-rename fallback and reach ``swap:retired``.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from dql_model.config import Config, load_config
from dql_model.contract import steps
from dql_model.pipeline import tasks
from dql_model.warehouse import storage

CHAIN = tuple(step.name for step in steps.chain_to("write_report"))
"""train_model, evaluate_and_gate, score_users, validate_recommendations, publish_recommendations, write_report."""
NO_EXCHANGE_ENV = "DQLREC_TEST_NO_EXCHANGE"
"""Set (to anything) in a child's environment: its swaps fall back to two renames (see the module)."""


def run_steps(
    cfg: Config, run_date: str, first: str = CHAIN[0], last: str = CHAIN[-1], upstream: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Run the steps ``first``..``last`` of CHAIN for ``run_date``; ``upstream`` is the result ``first`` needs."""
    result = upstream or {}
    for name in CHAIN[CHAIN.index(first) : CHAIN.index(last) + 1]:
        needs = (result,) if steps.step(name).needs else ()
        result = getattr(tasks, name)(run_date, *needs, cfg=cfg)
    return result


def main(argv: list[str]) -> int:
    config, run_date, first, last, *rest = argv
    if os.environ.get(NO_EXCHANGE_ENV):
        storage.exchange = lambda a, b: False  # as on a file system without renameat2 RENAME_EXCHANGE
    upstream = json.loads(rest[0]) if rest else None
    print(json.dumps(run_steps(load_config(config), run_date, first, last, upstream), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
