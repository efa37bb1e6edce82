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
with the run date, row count, export URI, model version and `degraded` (with its reason) in the event's extra. Downstream DAGs run on
it with `schedule=[Asset(name="dqlrec_recommendations", uri="dqlrec://warehouse/output/recommendations")]`
and read `triggering_asset_events` for the date.

**Run date.** A scheduled run processes the day before its logical date (the day that just ended).
A manual trigger can set `run_date` (a day, or `latest`: the last loaded events partition); without
it, yesterday (UTC) is used. A `run_date` that is not a calendar day (2026-13-45, 2026-02-30) is
refused by the trigger form's validation; one that gets past it (a param set another way) fails
`resolve_run_date`.

**Full rebuild.** The `full_rebuild` param makes `build_training_data` rebuild user states and
transitions from every raw partition (`--full-rebuild true`) instead of updating yesterday's; run one
night with it after a raw partition was loaded late (`dqlrec task ... --full-rebuild` outside Airflow).

**Failures.** Bad input (`dql_model.errors.InputError`: a raw partition that is missing or empty, a
broken data contract, a refused config value or param, a run date that is not a calendar day) fails
its task at once, without retries, with the error's own message last in the task log. In a Spark job
too: the job exits with `dql_model.errors.EXIT_BAD_INPUT` and its spark-submit task fails at once,
quoting the job's last line. Anything else (S3, the network, a Spark job that died) keeps its retries.

**Alerts.** Every task's `on_failure_callback` (`FailureAlert`, once its retries are spent) and a
degraded publish send a message (DAG, run date, task, the error's first line, the log URL or the report
folder) by mail and/or webhook, as the config's `alerts` section says (`dql_model.ops.alerts`); with no
channel configured nothing is sent. A task that fails only because its upstream did is not alerted twice.

**Idempotent.** Every task writes only the run date's partitions and replaces them whole, so a rerun
of a date gives the same tables. If training fails or the challenger loses the gate, scoring uses the
champion model: marketing always gets fresh recommendations from a known-good model.

**Shape.** The task order is `dql_model.contract.steps.STEPS`, the one list the CLI (`dqlrec task`) runs too;
each Python task calls the function of the same name in `dql_model.pipeline.tasks` with the run's typed options.

Heavy libraries (torch, pyspark, great_expectations, pandas) and the rest of dql_model are imported
inside the tasks only; at parse time the file imports `dql_model.contract.steps`, which is standard library only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG, Asset, BaseNotifier, Param, get_current_context, task
from airflow.sdk.exceptions import AirflowException, AirflowFailException

# Standard library only (its docstring says why): the step order and the Spark launch flags.
from dql_model.contract import steps

DAG_ID = Path(__file__).stem
PROJECT_ROOT = Path(os.environ.get("DQLREC_HOME", Path(__file__).resolve().parents[1]))
JOBS_DIR = Path(os.environ.get("DQLREC_JOBS_DIR", PROJECT_ROOT / "jobs"))
# Downstream DAGs schedule on this asset; it is emitted when a date's recommendations are published.
RECOMMENDATIONS_ASSET = Asset(name=steps.RECOMMENDATIONS_ASSET_NAME, uri=steps.RECOMMENDATIONS_ASSET_URI)
RUN_DATE_XCOM = "{{ ti.xcom_pull(task_ids='resolve_run_date') }}"
# What every spark-submit task of this DAG shares: the connection, pool, timeout and Spark settings.
SPARK_SUBMIT_DEFAULTS = {
    "conn_id": "spark_default",
    "conf": {
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.extraJavaOptions": steps.FAST_JVM_OPTIONS,
    },
    "pool": "spark",
    "execution_timeout": timedelta(hours=2),
}



def _send_alert(kind: str, run_date: str, task_id: str, error, where: str) -> dict[str, str]:
    """Send a failure or degraded alert (dql_model.ops.alerts) on the channels of the config's alerts section.

    Connections named there are read from Airflow (their passwords never enter the config); with no
    channel configured nothing is sent. Returns {channel: outcome}, also printed to the task log.
    """
    from airflow.sdk import Connection

    from dql_model.config import ConfigError, load_config
    from dql_model.ops import alerts

    try:
        cfg = load_config().alerts
        smtp = alerts.smtp_server(cfg, Connection.get(cfg.smtp_conn_id) if cfg.smtp_conn_id else None)
        hook = alerts.webhook(cfg, Connection.get(cfg.webhook_conn_id) if cfg.webhook_conn_id else None)
    except ConfigError as error_in_config:  # the night may have failed on this very config
        print(f"[dqlrec] no {kind} alert sent: {error_in_config}", flush=True)
        return {}
    if smtp is None and hook is None:
        return {}
    make = alerts.failure if kind == "failure" else alerts.degraded
    outcome = alerts.send(make(DAG_ID, run_date, task_id, error, where), cfg, smtp=smtp, hook=hook)
    print(f"[dqlrec] {kind} alert for {task_id} {run_date}: {outcome}", flush=True)
    return outcome


class UpstreamFailed(AirflowFailException):
    """A task that runs whatever its upstream did (trigger rule all_done) found the upstream's result missing:
    the upstream's own failure is the news, alerted already; this one is not alerted again."""


class FailureAlert(BaseNotifier):
    """on_failure_callback of every task (called once retries are spent): who should know hears of it."""

    def notify(self, context) -> None:
        if isinstance(context.get("exception"), UpstreamFailed):
            return
        ti = context["ti"]
        error = context.get("exception") or "unknown error"
        if isinstance(error, BaseException) and error.__cause__ is not None and str(error.__cause__) == str(error):
            error = error.__cause__  # bad input re-raised as AirflowFailException: name the input error itself
        run_date = ti.xcom_pull(task_ids="resolve_run_date") or context["params"].get("run_date") or "unknown"
        log = getattr(ti, "log_url", "") or "the task's log in Airflow"
        _send_alert("failure", run_date, ti.task_id, error, log)


default_args = {
    "owner": "dqlrec",
    "on_failure_callback": FailureAlert(),
    "retries": 2,
    "retry_delay": timedelta(minutes=2),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=20),
}

# One Param per field of dql_model.pipeline.tasks.RunOptions (a test checks they match), plus the run date.
params = {
    "run_date": Param(
        "",
        type="string",
        title="Run date",
        description=(
            "Day of events to process (YYYY-MM-DD), or 'latest' for the last loaded events partition. "
            "Empty: the day before the logical date."
        ),
        pattern=r"^(\d{4}-\d{2}-\d{2}|latest)?$",
        # The pattern shapes the form's input; JSON schema's date format (checked by Airflow's
        # validation when a run is triggered) refuses days that do not exist, such as 2026-02-30.
        anyOf=[{"format": "date"}, {"enum": ["", "latest"]}],
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
    "full_rebuild": Param(
        False,
        type="boolean",
        title="Full rebuild",
        description=(
            "Rebuild user states and transitions from every raw events partition instead of updating "
            "yesterday's (needed once after a raw partition was loaded late)."
        ),
    ),
}
# The trigger params a step's Spark job takes on its command line (RunOptions.job_args in the CLI).
JOB_PARAM_ARGS = {"build_training_data": ("--full-rebuild", "{{ params.full_rebuild }}")}


@contextmanager
def _bad_input_fails_at_once() -> Iterator[None]:
    """Bad input (dql_model.errors.InputError) fails the task without Airflow's retries: retrying
    cannot help. The error's message is the exception's text, so it is the last thing the log shows.
    """
    from dql_model.errors import InputError

    try:
        yield
    except InputError as error:
        raise AirflowFailException(str(error)) from error


def _options():
    """The run's manual-trigger params as the typed RunOptions (an unknown param is an error)."""
    from dql_model.pipeline import tasks

    return tasks.RunOptions.from_params(get_current_context()["params"])


def _run(name: str, run_date: str, *, missing_upstream: dict | None = None) -> dict:
    """dql_model.pipeline.tasks.<name>(run_date, [the upstream step's XCom], options=...); bad input not retried."""
    from dql_model.pipeline import tasks

    with _bad_input_fails_at_once():
        needs = steps.step(name).needs
        upstream = ()
        if needs:
            pulled = get_current_context()["ti"].xcom_pull(task_ids=needs)
            upstream = (missing_upstream if pulled is None else pulled,)
        return getattr(tasks, name)(run_date, *upstream, options=_options())


_SUBMIT_EXIT_CODE = re.compile(r"(?:Error code|Kubernetes spark exit code) is: (-?\d+)")
"""How SparkSubmitHook.submit reports a failed spark-submit: its exit code (and the driver pod's on Kubernetes)."""


class BadInputFailsSparkSubmitOperator(SparkSubmitOperator):
    """spark-submit whose job exiting with dql_model.errors.EXIT_BAD_INPUT fails the task without retries.

    The provider's hook raises a plain AirflowException naming spark-submit's exit code, which
    Airflow retries; a job that read bad input would read it again, so that one code fails at once,
    with the job's last line (its error's own message) as the task's error. Any other failure keeps
    its retries.
    """

    def execute(self, context):
        from dql_model.errors import EXIT_BAD_INPUT

        try:
            return super().execute(context)
        except AirflowException as error:
            if EXIT_BAD_INPUT not in {int(code) for code in _SUBMIT_EXIT_CODE.findall(str(error))}:
                raise
            tail = [line.strip() for line in str(error).splitlines() if line.strip()]
            last = tail[-1] if len(tail) > 1 else "see the task log"
            raise AirflowFailException(
                f"{self.task_id}: {Path(self.application).name} refused its input "
                f"(exit code {EXIT_BAD_INPUT}, not retried): {last}"
            ) from error


def _spark_job(task_id: str, job: str, *args: str) -> SparkSubmitOperator:
    return BadInputFailsSparkSubmitOperator(
        task_id=task_id,
        application=str(JOBS_DIR / f"{job}.py"),
        application_args=["--run-date", RUN_DATE_XCOM, *args],
        name=f"dqlrec-{job.replace('_', '-')}",
        **SPARK_SUBMIT_DEFAULTS,
    )


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
        """The run date from the params, else the day before the logical date (yesterday for manual runs).

        The param's schema refuses a date that is not a calendar day when the run is triggered; one
        that reaches this task anyway fails here, without retries, rather than later as a missing partition.
        """
        context = get_current_context()
        chosen = context["params"].get("run_date") or ""
        if chosen:
            from dql_model.config import load_config
            from dql_model.warehouse.run_dates import resolve_run_date

            with _bad_input_fails_at_once():
                return resolve_run_date(load_config(), chosen)
        logical = context.get("logical_date") or pendulum.now("UTC")
        return logical.subtract(days=1).to_date_string()

    @task
    def validate_raw_events(run_date: str) -> dict:
        return _run("validate_raw_events", run_date)

    @task
    def validate_training_data(run_date: str) -> dict:
        return _run("validate_training_data", run_date)

    @task(pool="gpu", queue="gpu", execution_timeout=timedelta(hours=3))
    def train_model(run_date: str) -> dict:
        return _run("train_model", run_date)

    @task(trigger_rule="all_done")
    def evaluate_and_gate(run_date: str) -> dict:
        """Runs even when training failed or was skipped: then the champion keeps scoring."""
        if get_current_context()["ti"].xcom_pull(task_ids="validate_training_data") is None:
            # An earlier task failed; a retry of this one cannot bring its result back.
            raise UpstreamFailed(
                f"training data for {run_date} was not built and validated; see tasks "
                "build_training_data and validate_training_data of this run"
            )
        return _run("evaluate_and_gate", run_date, missing_upstream={})

    @task.branch
    def choose_scoring_engine() -> str:
        """score.engine: torch -> score_users, spark -> score_users_spark (the config refuses others)."""
        from dql_model.config import load_config

        with _bad_input_fails_at_once():
            engine = _options().apply(load_config()).score.engine
        gate = get_current_context()["ti"].xcom_pull(task_ids="evaluate_and_gate")
        print(f"[dqlrec] scoring with {gate['scoring_version']} on the {engine} engine", flush=True)
        return "score_users_spark" if engine == "spark" else "score_users"

    @task
    def score_users(run_date: str) -> dict:
        return _run("score_users", run_date)

    @task(trigger_rule="none_failed_min_one_success")
    def validate_recommendations(run_date: str) -> dict:
        """Runs after whichever scoring task the branch chose; the Spark path leaves no XCom, so the
        task reads that engine's summary instead."""
        return _run("validate_recommendations", run_date)

    @task(outlets=[RECOMMENDATIONS_ASSET])
    def publish_recommendations(run_date: str) -> dict:
        from dql_model.pipeline import tasks

        published = _run("publish_recommendations", run_date)
        if published.get("degraded"):  # marketing got the champion's lists: someone should look at training
            from dql_model.config import load_config

            report_dir = load_config().layout.report(run_date)
            _send_alert("degraded", run_date, "publish_recommendations", published["degraded_reason"], report_dir)
        # Downstream DAGs scheduled on the asset learn which date is ready, where, and whether the
        # night was degraded (training failed, the champion scored), from the event.
        get_current_context()["outlet_events"][RECOMMENDATIONS_ASSET].extra = tasks.asset_extra(published)
        return published

    @task
    def write_report(run_date: str) -> dict:
        return _run("write_report", run_date)

    run_date = resolve_run_date()
    python_steps = {
        "validate_raw_events": validate_raw_events,
        "validate_training_data": validate_training_data,
        "train_model": train_model,
        "evaluate_and_gate": evaluate_and_gate,
        "validate_recommendations": validate_recommendations,
        "publish_recommendations": publish_recommendations,
        "write_report": write_report,
    }
    # Each step as (first task, last tasks): the scoring step is a branch into the two engines.
    choose = choose_scoring_engine()
    score_users_spark = _spark_job(
        "score_users_spark",
        steps.SCORING_JOB,
        "--model-version",
        "{{ ti.xcom_pull(task_ids='evaluate_and_gate')['scoring_version'] }}",
        "--top-k",
        "{{ params.top_k }}",
    )
    engines = [score_users(run_date), score_users_spark]
    choose >> engines
    ends = {"score_users": (choose, engines)}
    for step in steps.STEPS:
        if step.job:
            node = _spark_job(step.name, step.job, *JOB_PARAM_ARGS.get(step.job, ()))
            ends[step.name] = (node, [node])
        elif step.name in python_steps:
            node = python_steps[step.name](run_date)
            ends[step.name] = (node, [node])
    for before, after in zip(steps.STEPS, steps.STEPS[1:], strict=False):
        ends[before.name][1] >> ends[after.name][0]
