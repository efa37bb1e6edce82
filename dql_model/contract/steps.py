"""The nightly pipeline's steps in order, their names and the Spark jobs behind them: the one source
for the DAG, the CLI and the tests (``dql_model.ops.spark_jobs`` launches the jobs).

The DAG file imports this module at parse time, so it imports the standard library only (a test
checks it): the DAG processor parses DAG files often and must not load torch, Spark or pandas.

    validate_raw_events -> build_training_data (Spark) -> validate_training_data -> train_model
    -> evaluate_and_gate -> score_users (torch, or the Spark job) -> validate_recommendations
    -> publish_recommendations -> write_report

Each Python step is the function of the same name in ``dql_model.pipeline.tasks``; a Spark step is the
module ``jobs.<job>``. A step's ``needs`` is the earlier step whose result it takes (the XCom the
DAG passes, the value the CLI chains).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    """One step of the nightly run."""

    name: str
    """Task id in the DAG and name in ``dqlrec task NAME``."""
    job: str = ""
    """Module under ``jobs/`` when the step is a Spark job, else empty (a function in dql_model.pipeline.tasks)."""
    needs: str = ""
    """The step whose result this one takes as its second argument; empty: only the run date."""


STEPS = (
    Step("validate_raw_events"),
    Step("build_training_data", job="build_training_data"),
    Step("validate_training_data"),
    Step("train_model"),
    Step("evaluate_and_gate", needs="train_model"),
    Step("score_users", needs="evaluate_and_gate"),
    Step("validate_recommendations", needs="score_users"),
    Step("publish_recommendations", needs="validate_recommendations"),
    Step("write_report", needs="publish_recommendations"),
)
STEP_NAMES = tuple(step.name for step in STEPS)
SCORING_JOB = "score_recommendations"
"""The Spark job of the scoring step when ``score.engine`` is spark (``jobs/score_recommendations.py``)."""

RECOMMENDATIONS_ASSET_NAME = "dqlrec_recommendations"
RECOMMENDATIONS_ASSET_URI = "dqlrec://warehouse/output/recommendations"
"""The Airflow asset publishing emits (extra: run_date, rows, users, export_uri, model_version);
downstream DAGs such as dags/marketing_audiences.py are scheduled on it."""

FAST_JVM_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
"""Driver JVM flags for short batch jobs: C1 only and the serial GC halve the JVM start-up."""


def step(name: str) -> Step:
    """The step called ``name``; a clear error naming the steps otherwise."""
    for candidate in STEPS:
        if candidate.name == name:
            return candidate
    raise KeyError(f"no pipeline step {name!r}; the steps are {list(STEP_NAMES)}")


def chain_to(name: str) -> list[Step]:
    """The steps to run, in order, to get ``name``'s result: it and the steps it needs, transitively."""
    todo = [step(name)]
    while todo[0].needs:
        todo.insert(0, step(todo[0].needs))
    return todo


CONFIG_ENV_PREFIX = "DQLREC_"
"""Prefix of the config's environment variables (dql_model.config reads them); not passed to a job's child."""
