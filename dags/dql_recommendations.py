"""
### dql_recommendations — nightly deep-Q-learning recommendations

validate raw events → build item index, user states, transitions (Spark) → validate training data →
train the Q-network (GPU pool when present) → evaluate against baselines and gate → score top-K →
validate recommendations → publish (warehouse partition, optional SQL table, export with manifest) →
write the report.

**Scoring engine.** `score.engine` in the config picks the path: `torch` scores in the `score_users`
task (batched matrix products, GPU when present); `spark` submits `jobs/score_recommendations.py`
(`score_users_spark`, pool `spark`, connection `spark_default`) with the model broadcast to the
executors. Both give the same rows.

**Asset.** Publishing emits the asset `dqlrec_recommendations` (`dqlrec://warehouse/output/recommendations`)
with the run date, row count, export URI and model version in the event's extra. Downstream DAGs run on
it with `schedule=[Asset(name="dqlrec_recommendations", uri="dqlrec://warehouse/output/recommendations")]`
and read `triggering_asset_events` for the date.

**Run date.** A scheduled run processes the day before its logical date (the day that just ended).
A manual trigger can set `run_date`; without it, yesterday (UTC) is used.

**Idempotent.** Every task writes only the run date's partitions and replaces them whole, so a rerun
of a date gives the same tables. If training fails or the challenger loses the gate, scoring uses the
champion model: marketing always gets fresh recommendations from a known-good model.

Heavy libraries (torch, pyspark, great_expectations, dql_model) are imported inside the tasks only.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG, Asset, Param, get_current_context, task

DAG_ID = Path(__file__).stem
PROJECT_ROOT = Path(os.environ.get("DQLREC_HOME", Path(__file__).resolve().parents[1]))
JOBS_DIR = Path(os.environ.get("DQLREC_JOBS_DIR", PROJECT_ROOT / "jobs"))
# Downstream DAGs schedule on this asset; it is emitted when a date's recommendations are published.
RECOMMENDATIONS_ASSET = Asset(name="dqlrec_recommendations", uri="dqlrec://warehouse/output/recommendations")
SPARK_FAST_JVM = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
# What every spark-submit task of this DAG shares: the connection, pool, timeout and Spark settings.
SPARK_SUBMIT_DEFAULTS = {
    "conn_id": "spark_default",
    "conf": {
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.extraJavaOptions": SPARK_FAST_JVM,
    },
    "pool": "spark",
    "execution_timeout": timedelta(hours=2),
}

default_args = {
    "owner": "dqlrec",
    "retries": 2,
    "retry_delay": timedelta(minutes=2),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=20),
}

params = {
    "run_date": Param(
        "",
        type="string",
        title="Run date",
        description="Day of events to process (YYYY-MM-DD). Empty: the day before the logical date.",
        pattern=r"^(\d{4}-\d{2}-\d{2})?$",
    ),
    "top_k": Param(
        0,
        type="integer",
        minimum=0,
        maximum=500,
        title="Top K",
        description="Recommendations per user. 0: the configured score.top_k.",
    ),
    "skip_training": Param(
        False,
        type="boolean",
        title="Skip training",
        description="Score with the current champion without training a challenger.",
    ),
    "model_version": Param(
        "",
        type="string",
        title="Pinned model version",
        description="Score with this registry version (implies skip training). Empty: the champion.",
    ),
    "force_cpu": Param(
        False,
        type="boolean",
        title="Force CPU",
        description="Train and score on CPU even when a GPU is present.",
    ),
}


def _run_options() -> dict:
    """The manual-trigger params of the current run, except run_date (resolved once, passed explicitly)."""
    return {k: v for k, v in get_current_context()["params"].items() if k != "run_date"}


with DAG(
    dag_id=DAG_ID,
    doc_md=__doc__,
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=default_args,
    params=params,
    tags=["dqlrec", "recommendations", "ml"],
) as dag:

    @task
    def resolve_run_date() -> str:
        """The run date from the params, else the day before the logical date (yesterday for manual runs)."""
        context = get_current_context()
        chosen = context["params"].get("run_date") or ""
        if chosen:
            return chosen
        logical = context.get("logical_date") or pendulum.now("UTC")
        return logical.subtract(days=1).to_date_string()

    @task
    def validate_raw_events(run_date: str) -> dict:
        from dql_model import tasks

        return tasks.validate_raw_events(run_date)

    build_training_data = SparkSubmitOperator(
        task_id="build_training_data",
        application=str(JOBS_DIR / "build_training_data.py"),
        application_args=["--run-date", "{{ ti.xcom_pull(task_ids='resolve_run_date') }}"],
        name="dqlrec-build-training-data",
        **SPARK_SUBMIT_DEFAULTS,
    )

    @task
    def validate_training_data(run_date: str) -> dict:
        from dql_model import tasks

        return tasks.validate_training_data(run_date)

    @task(pool="gpu", execution_timeout=timedelta(hours=3))
    def train_model(run_date: str) -> dict:
        from dql_model import tasks

        return tasks.train_model(run_date, **_run_options())

    @task(trigger_rule="all_done")
    def evaluate_and_gate(run_date: str) -> dict:
        """Runs even when training failed or was skipped: then the champion keeps scoring."""
        from dql_model import tasks

        ti = get_current_context()["ti"]
        if ti.xcom_pull(task_ids="validate_training_data") is None:
            raise RuntimeError(
                f"training data for {run_date} was not built and validated; see tasks "
                "build_training_data and validate_training_data of this run"
            )
        training = ti.xcom_pull(task_ids="train_model")
        return tasks.evaluate_and_gate(run_date, training or {}, **_run_options())

    @task.branch
    def choose_scoring_engine(gate: dict) -> str:
        """score.engine: torch -> score_users, spark -> score_users_spark."""
        from dql_model import tasks

        engine = tasks.run_config(**_run_options()).score.engine
        if engine not in ("torch", "spark"):
            raise ValueError(f"score.engine={engine!r} in the config: use torch or spark")
        print(f"scoring with {gate['scoring_version']} on the {engine} engine")
        return "score_users_spark" if engine == "spark" else "score_users"

    @task
    def score_users(run_date: str) -> dict:
        from dql_model import tasks

        gate = get_current_context()["ti"].xcom_pull(task_ids="evaluate_and_gate")
        return tasks.score_users(run_date, gate, **_run_options())

    score_users_spark = SparkSubmitOperator(
        task_id="score_users_spark",
        application=str(JOBS_DIR / "score_recommendations.py"),
        application_args=[
            "--run-date",
            "{{ ti.xcom_pull(task_ids='resolve_run_date') }}",
            "--model-version",
            "{{ ti.xcom_pull(task_ids='evaluate_and_gate')['scoring_version'] }}",
            "--top-k",
            "{{ params.top_k }}",
        ],
        name="dqlrec-score-recommendations",
        **SPARK_SUBMIT_DEFAULTS,
    )

    @task(trigger_rule="none_failed_min_one_success")
    def validate_recommendations(run_date: str) -> dict:
        """Runs after whichever scoring task the branch chose; reads that engine's summary."""
        from dql_model import tasks

        return tasks.validate_recommendations(run_date, None, **_run_options())

    @task(outlets=[RECOMMENDATIONS_ASSET])
    def publish_recommendations(run_date: str, validated: dict) -> dict:
        from dql_model import tasks

        published = tasks.publish_recommendations(run_date, validated)
        # Downstream DAGs scheduled on the asset learn which date is ready, and where, from the event.
        get_current_context()["outlet_events"][RECOMMENDATIONS_ASSET].extra = {
            key: published[key] for key in ("run_date", "rows", "users", "export_uri", "model_version")
        }
        return published

    @task
    def write_report(run_date: str, published: dict) -> dict:
        from dql_model import tasks

        return tasks.write_report(run_date, published)

    run_date = resolve_run_date()
    raw_checked = validate_raw_events(run_date)
    raw_checked >> build_training_data
    data_checked = validate_training_data(run_date)
    build_training_data >> data_checked
    training = train_model(run_date)
    data_checked >> training
    gate = evaluate_and_gate(run_date)
    training >> gate
    scored_by_torch = score_users(run_date)
    choose_scoring_engine(gate) >> [scored_by_torch, score_users_spark]
    validated = validate_recommendations(run_date)
    [scored_by_torch, score_users_spark] >> validated
    published = publish_recommendations(run_date, validated)
    write_report(run_date, published)
