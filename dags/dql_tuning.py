"""
### dql_tuning — weekly search of the learning settings; the nightly run reads what it finds

`tune` runs `dql_model.pipeline.tuning.tune`, exactly as `dqlrec tune` does: trials of the search space
(learning rate, dropout, state length, encoder, widths, weight decay and, for the DQN, the conservative
weight) each train a fresh model on a night's transitions within an equal share of the time budget, and
are scored on that night's **validation** split (`eval.early_stop_metric`). No test stage is read.

**Study.** The study lives in the warehouse (`<warehouse>/tuning/studies.db`, one per `train.mode` and
night): a killed or retried task resumes it, keeps the completed trials, runs the killed one again and stops
at `trials` completed trials in all. **Outcome:** `<warehouse>/tuning/tuned.yaml` with the best settings,
the metric and its value, the study, the night, when it was tuned and the trial count. The nightly DAG reads
it (`tune.use_tuned`) below the YAML config, logs which settings it runs with, and its report says so.

**Params.** `run_date` (a night, or `latest`: the newest night with transitions), `trials` and `minutes`
(0: the config's `tune.trials` and `tune.minutes`). XCom carries the tuned file's contents (settings and
counts), never data.

Runs on Sundays at 03:00 UTC, after the Saturday night. Imports airflow, pendulum and the standard library at
parse time; `dql_model` inside the task only. Bad input (a refused config value, no such night) fails at once,
without retries.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.sdk import DAG, Param, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

DAG_ID = Path(__file__).stem

with DAG(
    dag_id=DAG_ID,
    doc_md=__doc__,
    schedule="0 3 * * 0",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "dqlrec", "retries": 2, "retry_delay": timedelta(minutes=5)},
    params={
        "run_date": Param(
            "latest",
            type="string",
            title="Night",
            description="The night to tune on (YYYY-MM-DD), or 'latest': the newest night with transitions.",
            pattern=r"^(\d{4}-\d{2}-\d{2}|latest)$",
        ),
        "trials": Param(
            0,
            type="integer",
            minimum=0,
            title="Trials",
            description="Completed trials in all, counting those of a resumed study. 0: the configured tune.trials.",
        ),
        "minutes": Param(
            0,
            type="number",
            minimum=0,
            title="Minutes",
            description="Time budget of the search, shared equally by the trials. 0: the configured tune.minutes.",
        ),
    },
    tags=["dqlrec", "tuning"],
) as dag:

    @task
    def tune() -> dict:
        """Search (or resume the search) on the night's validation split and write the tuned settings file."""
        from dql_model.config import load_config
        from dql_model.errors import InputError
        from dql_model.ops.threads import set_torch_threads
        from dql_model.pipeline import tuning

        params = get_current_context()["params"]
        try:
            cfg = load_config()
            set_torch_threads(cfg.train.threads)
            tuned = tuning.tune(
                cfg, params.get("run_date") or "latest", trials=int(params.get("trials") or 0),
                minutes=float(params.get("minutes") or 0),
            )  # fmt: skip
        except InputError as error:  # retrying cannot fix bad input
            raise AirflowFailException(str(error)) from error
        return {key: tuned[key] for key in ("settings", "study", "run_date", "metric", "value", "trials")}

    tune()
