"""The DAG file imports cleanly, stays light, and has the shape the design asks for."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.airflow

DAG_ID = "dql_recommendations"
MAINTENANCE_DAG_ID = "dql_maintenance"
TUNING_DAG_ID = "dql_tuning"
EXPECTED_EDGES = {
    ("resolve_run_date", "validate_raw_events"),
    ("validate_raw_events", "build_training_data"),
    ("build_training_data", "validate_training_data"),
    ("validate_training_data", "train_model"),
    ("train_model", "evaluate_and_gate"),
    ("evaluate_and_gate", "choose_scoring_engine"),
    ("choose_scoring_engine", "score_users"),
    ("choose_scoring_engine", "score_users_spark"),
    ("score_users", "validate_recommendations"),
    ("score_users_spark", "validate_recommendations"),
    ("validate_recommendations", "publish_recommendations"),
    ("publish_recommendations", "write_report"),
}


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(PROJECT_ROOT / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert DAG_ID in dagbag.dags


def test_schedule_catchup_retries_and_tags(dagbag):
    dag = dagbag.dags[DAG_ID]
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert "dqlrec" in dag.tags
    assert dag.doc_md and "run date" in dag.doc_md.lower()
    for task in dag.tasks:
        assert task.retries >= 2, f"{task.task_id} has {task.retries} retries"


def test_task_edges(dagbag):
    dag = dagbag.dags[DAG_ID]
    edges = {(up.task_id, down) for up in dag.tasks for down in up.downstream_task_ids}
    missing = EXPECTED_EDGES - edges
    assert not missing, f"missing edges: {sorted(missing)}"
    # resolve_run_date feeds every task that takes the run date; no other edges may appear.
    extra = {e for e in edges - EXPECTED_EDGES if e[0] != "resolve_run_date"}
    assert not extra, f"unexpected edges: {sorted(extra)}"


def test_training_failure_falls_back_to_champion(dagbag):
    dag = dagbag.dags[DAG_ID]
    assert dag.get_task("evaluate_and_gate").trigger_rule == "all_done"
    assert dag.get_task("train_model").pool == "gpu"
    assert dag.get_task("train_model").queue == "gpu"  # compose's GPU worker takes this queue
    assert dag.get_task("build_training_data").pool == "spark"


def test_scoring_engine_is_a_branch_that_rejoins(dagbag):
    dag = dagbag.dags[DAG_ID]
    assert dag.get_task("score_users_spark").pool == "spark"
    # validate_recommendations runs after whichever scoring task ran; fails if the chosen one failed.
    assert dag.get_task("validate_recommendations").trigger_rule == "none_failed_min_one_success"
    outlets = dag.get_task("publish_recommendations").outlets
    assert [(a.name, a.uri) for a in outlets] == [
        ("dqlrec_recommendations", "dqlrec://warehouse/output/recommendations")
    ]


def test_params_are_typed(dagbag):
    params = dagbag.dags[DAG_ID].params
    expected = {"run_date": "string", "top_k": "integer", "skip_training": "boolean",
                "model_version": "string", "force_cpu": "boolean", "full_rebuild": "boolean"}
    for name, typ in expected.items():
        param = params.get_param(name)
        assert param.schema["type"] == typ
        assert param.schema.get("title") and param.description


@pytest.mark.parametrize("dag_id", [DAG_ID, "marketing_audiences", MAINTENANCE_DAG_ID, TUNING_DAG_ID])
def test_module_level_imports_are_light(dag_id):
    # The DAG file may import dql_model.contract.steps (standard library only: the step order) and the
    # package it sits in (an empty __init__), nothing else of the package, and none of the heavy libraries.
    code = (
        "import runpy, sys; runpy.run_path(sys.argv[1]); "
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'pyspark', 'great_expectations', 'pandas', 'numpy', 'pyarrow') "
        "or (m.startswith('dql_model.') and m not in ('dql_model.contract', 'dql_model.contract.steps'))); "
        "print('HEAVY=' + ','.join(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(PROJECT_ROOT / "dags" / f"{dag_id}.py")],
        capture_output=True, text=True, check=True,
    )
    marker = [line for line in out.stdout.splitlines() if line.startswith("HEAVY=")]
    assert marker == ["HEAVY="], f"heavy modules imported by the DAG file: {marker}"


def test_the_pipeline_module_imports_only_the_standard_library():
    code = (
        "import sys; before = set(sys.modules); import dql_model.contract.steps; "
        "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "print('OUTSIDE=' + ','.join(sorted(m for m in new if m not in sys.stdlib_module_names and m != 'dql_model')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "OUTSIDE=\n" in out.stdout + "\n", out.stdout


def test_the_dag_follows_the_pipeline_steps(dagbag):
    from dql_model.contract import steps

    dag = dagbag.dags[DAG_ID]
    scoring = {"score_users": "choose_scoring_engine"}  # the scoring step branches into two engines
    for before, after in zip(steps.STEPS, steps.STEPS[1:], strict=False):
        first = dag.get_task(scoring.get(after.name, after.name))
        assert before.name in first.upstream_task_ids or (
            before.name == "score_users" and {"score_users", "score_users_spark"} <= first.upstream_task_ids
        ), (before.name, after.name)


def test_params_are_the_run_options(dagbag):
    import dataclasses

    from dql_model.pipeline.tasks import RunOptions

    params = set(dagbag.dags[DAG_ID].params.keys())
    assert params == {"run_date"} | {f.name for f in dataclasses.fields(RunOptions)}


# --- the scoring branch and the asset, through Airflow itself ------------------------------------


@pytest.fixture(scope="module")
def airflow_db():
    """Airflow's metadata DB (SQLite under var/test-airflow), migrated once."""
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)


@pytest.fixture
def stubbed_tasks(monkeypatch):
    """The pipeline's task functions and spark-submit replaced by recorders: the DAG's wiring under test."""
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

    from dql_model.pipeline import tasks

    calls: list[str] = []

    def stub(name, result):
        def run(*args, **kwargs):
            calls.append(name)
            return result

        monkeypatch.setattr(tasks, name, run)

    stub("validate_raw_events", {"rows": 1})
    stub("validate_training_data", {"accepted": 1})
    stub("train_model", {"trained": True, "version": "v1"})
    stub("evaluate_and_gate", {"scoring_version": "v1", "promoted": True, "reason": "stub"})
    stub("score_users", {"path": "p", "rows": 2, "users": 1, "model_version": "v1", "top_k": 2})
    stub("validate_recommendations", {"model_version": "v1", "top_k": 2})
    published = {
        "run_date": "2026-11-27", "rows": 2, "users": 1, "export_uri": "s3://b/p/run_date=2026-11-27",
        "model_version": "v1", "degraded": True, "degraded_reason": "train_model failed: RuntimeError: x",
    }  # fmt: skip
    stub("publish_recommendations", published)
    stub("write_report", {"report_dir": "r"})

    def submit(self, context):
        calls.append(f"spark-submit {Path(self.application).name} {' '.join(self.application_args)}")

    monkeypatch.setattr(SparkSubmitOperator, "execute", submit)
    monkeypatch.delenv("DQLREC_CONFIG", raising=False)
    return calls


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["torch", "spark"])
def test_config_picks_the_scoring_path_and_publishing_emits_the_asset(
    engine, airflow_db, dagbag, stubbed_tasks, monkeypatch
):
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    monkeypatch.setenv("DQLREC_SCORE__ENGINE", engine)
    dag = dagbag.dags[DAG_ID]
    for task in dag.tasks:
        task.retries = 0
    run = dag.test(run_conf={"run_date": "2026-11-27", "top_k": 2})

    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "success", states
    chosen, skipped = ("score_users", "score_users_spark") if engine == "torch" else ("score_users_spark", "score_users")
    assert (states[chosen], states[skipped]) == ("success", "skipped")
    assert states["validate_recommendations"] == states["publish_recommendations"] == "success"
    submits = [c for c in stubbed_tasks if c.startswith("spark-submit score_recommendations.py")]
    if engine == "spark":
        assert submits == ["spark-submit score_recommendations.py --run-date 2026-11-27 --model-version v1 --top-k 2"]
        assert "score_users" not in stubbed_tasks
    else:
        assert submits == [] and "score_users" in stubbed_tasks

    with create_session() as session:
        events = session.scalars(
            select(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.uri == "dqlrec://warehouse/output/recommendations", AssetEvent.source_run_id == run.run_id)
        ).all()
        assert [(e.source_task_id, e.extra["run_date"], e.extra["rows"]) for e in events] == [
            ("publish_recommendations", "2026-11-27", 2)
        ]
        # Downstream DAGs learn from the event whether the champion scored after a failed training.
        assert (events[0].extra["degraded"], events[0].extra["degraded_reason"]) == (
            True, "train_model failed: RuntimeError: x"
        )  # fmt: skip


# --- failure paths: bad input fails at once, anything else keeps its retries --------------------


def _bad_inputs():
    from dql_model import errors
    from dql_model.config import ConfigError
    from dql_model.warehouse import quality

    report = quality.QualityReport(
        table="events",
        partition="event_date=2026-11-27",
        row_count=10,
        failures=[quality.RuleFailure("event_date=2026-11-27", "user_id", "expect_column_to_exist", 0, 10, detail="column missing")],
    )
    return [
        quality.DataQualityError(report),
        errors.MissingInput("raw events partition var/x/event_date=2026-11-27 is missing"),
        errors.EmptyInput("raw events partition event_date=2026-11-27 has no rows"),
        ConfigError("quality.empty_partition='maybe' is not one of ['fail', 'warn']"),
    ]


def _raising(error):
    def run(*args, **kwargs):
        raise error

    return run


def _call(dagbag, task_id, *args, params=None):
    """The task's own function, as its worker runs it, with the run's params in the context."""
    from airflow.sdk.execution_time.context import set_current_context

    callable_ = dagbag.dags[DAG_ID].get_task(task_id).python_callable
    with set_current_context({"params": {"run_date": "", **(params or {})}}):
        return callable_(*args)


@pytest.mark.parametrize("error", _bad_inputs(), ids=lambda e: type(e).__name__)
def test_bad_input_fails_the_task_without_retries_and_keeps_its_message(dagbag, monkeypatch, error):
    from airflow.sdk.exceptions import AirflowFailException

    from dql_model.pipeline import tasks

    monkeypatch.setattr(tasks, "validate_raw_events", _raising(error))
    with pytest.raises(AirflowFailException) as caught:
        _call(dagbag, "validate_raw_events", "2026-11-27")
    assert str(caught.value) == str(error)  # the error's own words, last in the task log
    assert caught.value.__cause__ is error


@pytest.mark.parametrize(
    "error",
    [ConnectionError("S3 endpoint unreachable"), TimeoutError("read timed out"), OSError(5, "I/O error")],
    ids=lambda e: type(e).__name__,
)
def test_transient_errors_keep_their_retries(dagbag, monkeypatch, error):
    from dql_model.pipeline import tasks

    monkeypatch.setattr(tasks, "validate_raw_events", _raising(error))
    with pytest.raises(type(error)) as caught:
        _call(dagbag, "validate_raw_events", "2026-11-27")
    assert caught.value is error  # not turned into a fail-without-retry


def test_an_unknown_run_option_fails_without_retries(dagbag):
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException, match=r"unknown run option\(s\) \['topk'\]"):
        _call(dagbag, "validate_raw_events", "2026-11-27", params={"topk": 3})


@pytest.mark.parametrize("full_rebuild", [True, False])
def test_the_full_rebuild_param_reaches_the_etl_jobs_arguments(dagbag, full_rebuild):
    """The trigger's full_rebuild, rendered into spark-submit's arguments, is what the job parses."""
    from jobs.build_training_data import parse_args

    dag = dagbag.dags[DAG_ID]
    assert dag.params["full_rebuild"] is False  # a scheduled run builds incrementally
    job = dag.get_task("build_training_data")
    assert job.application_args[:2] == ["--run-date", "{{ ti.xcom_pull(task_ids='resolve_run_date') }}"]
    rendered = job.render_template(job.application_args[2:], {"params": {"full_rebuild": full_rebuild}})
    assert parse_args(["--run-date", "2026-11-27", *rendered]).full_rebuild is full_rebuild
    scoring = dag.get_task("score_users_spark")
    assert "--full-rebuild" not in scoring.application_args  # only the ETL job rebuilds


def _triggered_with(dagbag, conf: dict) -> dict:
    """The params of a run triggered with ``conf``, validated as the API server does (its DAG is the serialized one)."""
    from airflow.serialization.serialized_objects import DagSerialization

    served = DagSerialization.from_dict(DagSerialization.to_dict(dagbag.dags[DAG_ID]))
    return served.params.deep_merge(conf).validate()


@pytest.mark.parametrize("run_date", ["2026-13-45", "2026-02-30", "2026-11-27x", "yesterday", "20261127"])
def test_the_trigger_refuses_a_run_date_that_is_not_a_calendar_day(dagbag, run_date):
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="Invalid input for param run_date"):
        _triggered_with(dagbag, {"run_date": run_date})
    with pytest.raises(ParamValidationError):
        dagbag.dags[DAG_ID].params.get_param("run_date").resolve(run_date)  # the SDK's check, the same schema


@pytest.mark.parametrize("run_date", ["", "latest", "2026-11-27", "2024-02-29"])
def test_the_trigger_accepts_a_calendar_day_latest_or_nothing(dagbag, run_date):
    assert _triggered_with(dagbag, {"run_date": run_date})["run_date"] == run_date


@pytest.mark.parametrize("run_date", ["2026-13-45", "2026-02-30"])
def test_a_run_date_that_is_not_a_calendar_day_fails_without_retries(dagbag, run_date):
    """A run date that gets past the trigger's validation is refused by resolve_run_date, naming the value."""
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException, match=f"expected a calendar date as YYYY-MM-DD, got '{run_date}'"):
        _call(dagbag, "resolve_run_date", params={"run_date": run_date})
    assert _call(dagbag, "resolve_run_date", params={"run_date": "2026-11-27"}) == "2026-11-27"


@pytest.mark.slow
def test_a_missing_partition_fails_the_run_at_once(airflow_db, dagbag, stubbed_tasks, monkeypatch):
    """Through Airflow: with retries on, the bad input's task and evaluate_and_gate (all_done) run once."""
    from dql_model import errors
    from dql_model.pipeline import tasks

    monkeypatch.setattr(tasks, "validate_raw_events", _raising(errors.MissingInput("raw events partition is missing")))
    dag = dagbag.dags[DAG_ID]
    for task in dag.tasks:
        monkeypatch.setattr(task, "retries", 2)
        monkeypatch.setattr(task, "retry_delay", timedelta(0))  # a retry would run at once, not hide
    run = dag.test(run_conf={"run_date": "2026-11-27"})

    tis = {ti.task_id: (ti.state, ti.try_number) for ti in run.get_task_instances()}
    assert run.state == "failed", tis
    assert tis["resolve_run_date"] == ("success", 1)
    assert tis["validate_raw_events"] == ("failed", 1), tis
    assert tis["evaluate_and_gate"] == ("failed", 1), tis
    ran = {"resolve_run_date", "validate_raw_events", "evaluate_and_gate"}
    assert {task_id: state for task_id, (state, _) in tis.items() if task_id not in ran} == {
        task_id: "upstream_failed" for task_id in tis if task_id not in ran
    }


# --- the weekly maintenance DAG (retention) -------------------------------------------------------


def test_the_maintenance_dag_has_the_shape_of_every_dag(dagbag):
    dag = dagbag.dags[MAINTENANCE_DAG_ID]
    assert dag.dag_id == MAINTENANCE_DAG_ID
    assert dag.catchup is False and dag.max_active_runs == 1
    assert dag.schedule == "0 5 * * 0"  # weekly, explicit
    assert dag.start_date.tzinfo is not None
    assert {"dqlrec", "maintenance"} <= set(dag.tags)
    assert dag.doc_md and "never removed" in dag.doc_md.lower()
    assert {t.task_id: t.retries >= 2 for t in dag.tasks} == {"plan_retention": True, "apply_retention": True}
    edges = {(up.task_id, down) for up in dag.tasks for down in up.downstream_task_ids}
    assert edges == {("plan_retention", "apply_retention")}
    param = dag.params.get_param("dry_run")
    assert param.schema["type"] == "boolean" and param.schema.get("title") and param.description


@pytest.mark.parametrize("dry_run", [True, False])
def test_the_maintenance_tasks_plan_and_prune_the_configured_warehouse(dagbag, tmp_path, monkeypatch, dry_run):
    import json

    import yaml
    from airflow.sdk.execution_time.context import set_current_context

    from dql_model.config import Config

    cfg = Config().replace(
        warehouse={"root": str(tmp_path / "warehouse")}, registry={"root": str(tmp_path / "models")},
        publish={"export_uri": str(tmp_path / "export")}, retention={"report_nights": 1},
    )  # fmt: skip
    for day in ("2026-11-25", "2026-11-26"):
        folder = Path(cfg.layout.report(day))
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps({"run_date": day}))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict()))
    monkeypatch.setenv("DQLREC_CONFIG", str(config))

    dag = dagbag.dags[MAINTENANCE_DAG_ID]
    with set_current_context({"params": {"dry_run": dry_run}}):
        planned = dag.get_task("plan_retention").python_callable()
        done = dag.get_task("apply_retention").python_callable(planned)
    assert planned["folders"] == 1 and planned["bytes"] > 0
    assert Path(cfg.layout.report("2026-11-26")).is_dir()
    assert Path(cfg.layout.report("2026-11-25")).is_dir() is dry_run
    assert done == ({"removed": 0, "skipped": 0, "bytes": 0} if dry_run else {"removed": 1, "skipped": 0, "bytes": planned["bytes"]})


# --- the weekly tuning DAG (dqlrec tune) ----------------------------------------------------------


def test_the_tuning_dag_has_the_shape_of_every_dag_and_typed_params(dagbag):
    dag = dagbag.dags[TUNING_DAG_ID]
    assert dag.catchup is False and dag.max_active_runs == 1
    assert dag.schedule == "0 3 * * 0" and dag.start_date.tzinfo is not None  # weekly, explicit
    assert {"dqlrec", "tuning"} <= set(dag.tags)
    assert dag.doc_md and "validation" in dag.doc_md and "resumes" in dag.doc_md
    assert [(t.task_id, t.retries >= 2) for t in dag.tasks] == [("tune", True)]
    expected = {"run_date": ("string", "latest"), "trials": ("integer", 0), "minutes": ("number", 0)}
    for name, (typ, default) in expected.items():
        param = dag.params.get_param(name)
        assert param.schema["type"] == typ and param.value == default
        assert param.schema.get("title") and param.description


def test_the_tuning_task_searches_the_latest_night_and_refuses_a_warehouse_without_one(dagbag, tmp_path, monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException
    from airflow.sdk.execution_time.context import set_current_context

    from dql_model.config import load_config
    from tests.factories import write_night

    for name in [n for n in os.environ if n.startswith("DQLREC_")]:
        monkeypatch.delenv(name)
    settings = {"WAREHOUSE__ROOT": str(tmp_path / "warehouse"), "REGISTRY__ROOT": str(tmp_path / "models"),
                "ETL__MAX_LEN": "8", "TRAIN__EPOCHS": "1", "TRAIN__DEVICE": "cpu", "TRAIN__SEQ_BATCH_SIZE": "4"}  # fmt: skip
    for name, value in settings.items():
        monkeypatch.setenv(f"DQLREC_{name}", value)
    task = dagbag.dags[TUNING_DAG_ID].get_task("tune")
    with set_current_context({"params": {"run_date": "latest", "trials": 2, "minutes": 1}}):
        with pytest.raises(AirflowFailException, match="no transitions partition under .*warehouse"):
            task.python_callable()  # bad input: no retries
        write_night(load_config().layout, "2026-11-26")
        write_night(load_config().layout, "2026-11-27")
        tuned = task.python_callable()
    assert tuned["run_date"] == "2026-11-27" and tuned["trials"] == 2 and tuned["study"] == "dqn-2026-11-27"
    assert set(tuned["settings"]) == {"train", "model"} and 0.0 <= tuned["settings"]["model"]["dropout"] <= 0.5
    assert load_config().train.lr == tuned["settings"]["train"]["lr"]  # the next night reads the file


# --- alerts: a failed or degraded night is told, a good one is not ---------------------------------

ALERT_SECRET = "s3cr3t-Pa55"


@pytest.fixture
def alert_receivers(tmp_path, monkeypatch):
    """A loopback SMTP server and webhook, configured as the alerts channels (the mail login's password in
    the environment, as a deployment sets it)."""
    from tests.receivers import receivers

    with receivers() as (got, smtp_host, url):
        for name in [n for n in os.environ if n.startswith("DQLREC_")]:
            monkeypatch.delenv(name)
        monkeypatch.setenv("DQLREC_WAREHOUSE__ROOT", str(tmp_path / "warehouse"))
        monkeypatch.setenv("DQLREC_ALERTS__SMTP_HOST", smtp_host)
        monkeypatch.setenv("DQLREC_ALERTS__SMTP_USER", "dqlrec")
        monkeypatch.setenv("DQLREC_ALERTS__TO", "ops@shop.example")
        monkeypatch.setenv("DQLREC_ALERTS__WEBHOOK_URL", url)
        monkeypatch.setenv("SMTP_PASSWORD", ALERT_SECRET)
        yield got


def _fake_ti(task_id, run_date="2026-11-27", pulled=None):
    from types import SimpleNamespace

    def xcom_pull(task_ids):
        return run_date if task_ids == "resolve_run_date" else pulled

    return SimpleNamespace(task_id=task_id, dag_id=DAG_ID, log_url=f"http://airflow/log/{task_id}", xcom_pull=xcom_pull)


def test_every_task_alerts_when_it_fails(dagbag):
    for task in dagbag.dags[DAG_ID].tasks:
        callbacks = task.on_failure_callback if isinstance(task.on_failure_callback, list) else [task.on_failure_callback]
        assert [type(c).__name__ for c in callbacks] == ["FailureAlert"], task.task_id


def test_a_failed_task_sends_a_mail_and_a_post_naming_the_night_without_its_secret(dagbag, alert_receivers):
    from dql_model import errors

    dag = dagbag.dags[DAG_ID]
    error = errors.MissingInput(f"raw events partition is missing (SMTP_PASSWORD={ALERT_SECRET})\nsecond line")
    dag.default_args["on_failure_callback"](
        {"ti": _fake_ti("validate_raw_events"), "exception": error, "params": {}, "dag": dag}
    )

    [mail], [post] = alert_receivers.mails, alert_receivers.posts
    assert mail.login == ("dqlrec", ALERT_SECRET) and mail.recipients == ["ops@shop.example"]
    for text in (DAG_ID, "2026-11-27", "validate_raw_events", "http://airflow/log/validate_raw_events",
                 "MissingInput: raw events partition is missing (SMTP_PASSWORD=***)"):  # fmt: skip
        assert text in mail.text and text in str(post)
    assert "second line" not in mail.text
    assert ALERT_SECRET not in mail.text and ALERT_SECRET not in mail.raw and ALERT_SECRET not in str(post)


def test_a_task_failing_because_its_upstream_did_is_not_alerted_again(dagbag, alert_receivers):
    dag = dagbag.dags[DAG_ID]
    callback = dag.default_args["on_failure_callback"]
    # The class this DAG object's callback checks (a DagBag may load the file more than once per session).
    upstream_failed = type(callback).notify.__globals__["UpstreamFailed"]
    error = upstream_failed("training data for 2026-11-27 was not built")
    callback({"ti": _fake_ti("evaluate_and_gate"), "exception": error, "params": {}, "dag": dag})
    assert (alert_receivers.mails, alert_receivers.posts) == ([], [])


@pytest.mark.parametrize("degraded", [True, False], ids=["degraded", "good"])
def test_a_degraded_publish_alerts_and_a_good_one_does_not(dagbag, alert_receivers, monkeypatch, degraded, tmp_path):
    from collections import defaultdict
    from types import SimpleNamespace

    from airflow.sdk.execution_time.context import set_current_context

    from dql_model.pipeline import tasks

    reason = "train_model failed: RuntimeError: CUDA out of memory; the champion scored instead" if degraded else ""
    published = {
        "run_date": "2026-11-27", "rows": 2, "users": 1, "export_uri": "s3://b/p/run_date=2026-11-27",
        "model_version": "v1", "degraded": degraded, "degraded_reason": reason,
    }  # fmt: skip
    monkeypatch.setattr(tasks, "publish_recommendations", lambda *args, **kwargs: published)
    context = {
        "params": {"run_date": ""},
        "ti": _fake_ti("publish_recommendations", pulled={"model_version": "v1", "top_k": 2}),
        "outlet_events": defaultdict(SimpleNamespace),
    }
    with set_current_context(context):
        assert dagbag.dags[DAG_ID].get_task("publish_recommendations").python_callable("2026-11-27") == published

    if not degraded:
        assert (alert_receivers.mails, alert_receivers.posts) == ([], [])
        return
    [mail], [post] = alert_receivers.mails, alert_receivers.posts
    assert "DEGRADED" in mail.message["Subject"] and post["kind"] == "degraded"
    report_dir = str(tmp_path / "warehouse" / "reports" / "run_date=2026-11-27")
    for text in (DAG_ID, "2026-11-27", "publish_recommendations", reason, report_dir):
        assert text in mail.message.get_content() and text in str(post)


@pytest.mark.slow
def test_a_failed_night_through_airflow_alerts_once(airflow_db, dagbag, stubbed_tasks, alert_receivers, monkeypatch):
    """dag.test: the failing task's callback mails and posts; evaluate_and_gate (all_done) fails after it, silently."""
    from dql_model import errors
    from dql_model.pipeline import tasks

    monkeypatch.setattr(tasks, "validate_raw_events", _raising(errors.MissingInput("raw events partition is missing")))
    for task in dagbag.dags[DAG_ID].tasks:
        monkeypatch.setattr(task, "retries", 0)
    run = dagbag.dags[DAG_ID].test(run_conf={"run_date": "2026-11-27"})

    assert run.state == "failed"
    assert [p["task_id"] for p in alert_receivers.posts] == ["validate_raw_events"]
    assert len(alert_receivers.mails) == 1 and "MissingInput: raw events partition is missing" in alert_receivers.mails[0].text


def test_channels_named_by_airflow_connections_take_their_passwords_from_them(dagbag, monkeypatch, tmp_path):
    """smtp_conn_id / webhook_conn_id: host, port, login from the connection; its passwords log in and
    authorize the POST, and stay out of both messages."""
    import json

    from tests.receivers import receivers

    dag = dagbag.dags[DAG_ID]
    with receivers() as (got, smtp_host, url):
        host, port = smtp_host.split(":")
        for name in [n for n in os.environ if n.startswith("DQLREC_")]:
            monkeypatch.delenv(name)
        smtp = {"conn_type": "smtp", "host": host, "port": int(port), "login": "mailer", "password": ALERT_SECRET}
        hook = {"conn_type": "http", "host": url, "password": "tok-" + ALERT_SECRET}
        monkeypatch.setenv("AIRFLOW_CONN_DQLREC_ALERTS_SMTP", json.dumps(smtp))
        monkeypatch.setenv("AIRFLOW_CONN_DQLREC_ALERTS_HOOK", json.dumps(hook))
        monkeypatch.setenv("DQLREC_ALERTS__SMTP_CONN_ID", "dqlrec_alerts_smtp")
        monkeypatch.setenv("DQLREC_ALERTS__WEBHOOK_CONN_ID", "dqlrec_alerts_hook")
        monkeypatch.setenv("DQLREC_ALERTS__TO", "ops@shop.example")
        error = RuntimeError(f"login mailer:{ALERT_SECRET} refused by the S3 proxy")
        dag.default_args["on_failure_callback"]({"ti": _fake_ti("train_model"), "exception": error, "params": {}, "dag": dag})

    [mail], [post], [headers] = got.mails, got.posts, got.headers
    assert mail.login == ("mailer", ALERT_SECRET) and headers["Authorization"] == f"Bearer tok-{ALERT_SECRET}"
    assert "RuntimeError: login mailer:*** refused by the S3 proxy" in mail.text and post["task_id"] == "train_model"
    assert ALERT_SECRET not in mail.text + mail.raw + json.dumps(post)
