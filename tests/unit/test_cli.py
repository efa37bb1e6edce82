"""`dqlrec`: every subcommand, its --json output, --config honoured everywhere, bad input refused."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from dql_model import cli
from dql_model.config import load_config
from dql_model.judging import report
from dql_model.warehouse import storage

RUN_DATE = "2026-11-27"


@pytest.fixture
def config_file(tiny_config, tmp_path) -> Path:
    """tiny_config as a YAML file, the way a user passes --config."""
    path = tmp_path / "my.yaml"
    path.write_text(yaml.safe_dump(tiny_config.to_dict()))
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_config_prints_the_resolved_config_and_one_value(capsys, config_file, monkeypatch):
    monkeypatch.setenv("DQLREC_SCORE__TOP_K", "7")
    code, out, _ = run(capsys, "--config", str(config_file), "config")
    printed = yaml.safe_load(out)
    assert code == 0
    assert printed["score"]["top_k"] == 7  # the environment beats the file
    assert printed["simulator"]["n_users"] == 60  # from the file
    assert printed["eval"]["sim_refresh"] == ["session", "step"]
    assert run(capsys, "--config", str(config_file), "config", "etl.max_len")[1].strip() == "8"
    code, _, err = run(capsys, "config", "train.epoch")
    assert code == 2 and "unknown config key 'train.epoch'" in err


@pytest.mark.parametrize(
    ("variable", "choices"),
    [
        ("DQLREC_TRAIN__MODE", "['dqn', 'supervised', 'sqn']"),
        ("DQLREC_MODEL__ENCODER", "['gru', 'lstm', 'attention', 'sasrec']"),
        ("DQLREC_SCORE__ENGINE", "['torch', 'spark']"),
        ("DQLREC_TRAIN__TARGET_UPDATE", "['polyak', 'hard']"),
        ("DQLREC_TRAIN__PURCHASE_CREDIT", "['cart', 'purchase']"),
        ("DQLREC_EVAL__SIM_REFRESH", "['session', 'step']"),
    ],
)
def test_a_bad_fixed_choice_exits_non_zero_with_one_line(variable, choices):
    """As a user runs it: the installed entry point, a real exit code, one line on stderr."""
    dqlrec = Path(sys.executable).parent / "dqlrec"
    env = {**os.environ, variable: "bogus"}
    done = subprocess.run([str(dqlrec), "config"], env=env, capture_output=True, text=True)
    field = variable.removeprefix("DQLREC_").replace("__", ".").lower()
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [f"dqlrec: error: environment: {field}='bogus' is not one of {choices}"]


def test_a_missing_config_file_is_named(capsys, tmp_path):
    code, _, err = run(capsys, "--config", str(tmp_path / "nope.yaml"), "demo-date")
    assert code == 2 and "nope.yaml does not exist" in err


def test_generate_and_demo_date_use_the_given_config(capsys, config_file, tiny_config):
    code, out, _ = run(capsys, "--config", str(config_file), "generate", "--if-empty")
    assert code == 0 and f"demo shop written to {tiny_config.warehouse.root}" in out
    assert Path(tiny_config.layout.partition("events", RUN_DATE)).is_dir()
    code, out, _ = run(capsys, "--config", str(config_file), "generate", "--if-empty")
    assert code == 0 and "already has events; not generating" in out
    assert run(capsys, "--config", str(config_file), "demo-date")[1].strip() == tiny_config.simulator.end_date


def test_task_reads_the_warehouse_of_the_given_config(capsys, config_file, tiny_config, monkeypatch):
    monkeypatch.chdir(config_file.parent)  # the default warehouse (var/warehouse here) stays empty
    run(capsys, "--config", str(config_file), "generate")
    code, out, _ = run(capsys, "--config", str(config_file), "task", "validate_raw_events", "--run-date", RUN_DATE)
    result = json.loads(out[out.index("{") :])
    assert code == 0
    assert result["partition"] == f"event_date={RUN_DATE}" and result["success"] is True
    assert result["checked_rows"] > 0
    assert not (config_file.parent / "var").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["task", "train", "--run-date", RUN_DATE], "invalid choice: 'train'"),
        (["task", "validate_raw_events", "--run-date", "2026-13-45"], "expected a calendar date"),
    ],
)
def test_task_refuses_unknown_tasks_and_impossible_dates(capsys, argv, message):
    with pytest.raises(SystemExit) as stopped:
        cli.main(argv)
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def written_run(cfg) -> None:
    """A finished run's report folder, as the gate and report tasks leave it."""
    evaluation = {
        "run_date": RUN_DATE,
        "validation_events": 12,
        "metrics": {
            "challenger": {"eval/ndcg@10": 0.25, "eval/n": 12.0, "eval/rating/ndcg@10": 0.0},
            "popularity": {"eval/ndcg@10": 0.1, "eval/rating/ndcg@10": 0.0},
        },
        "unscorable": {"rating": "every one of its 3 validation events is on an item the user had already purchased"},
        "promoted": True,
        "reason": "no champion to compare with",
        "scoring_version": "20261127-abcd1234",
        "learning_curves": {"challenger": [{"epoch": 1.0, "loss/total": 3.0}]},
    }
    storage.write_json_atomic(Path(cfg.layout.report(RUN_DATE)) / report.EVALUATION, evaluation)
    masks = {"masked": {"already_purchased": 7, "unavailable": 12, "new_since_training": 0}, "short_lists": {"model": 0, "fallback": 0}}
    storage.write_json_atomic(cfg.layout.scoring_summary(RUN_DATE), {"run_date": RUN_DATE, "top_k": 5, **masks})
    published = {
        "run_date": RUN_DATE, "rows": 30, "users": 6, "top_k": 5, "model_version": "20261127-abcd1234",
        "warehouse_path": "w", "export_uri": "e", "files": 1,
    }  # fmt: skip
    report.write_run_report(cfg, RUN_DATE, published, written_at=datetime(2026, 11, 28, tzinfo=UTC))


def test_summary_and_evaluate_read_the_latest_run(capsys, config_file):
    cfg = load_config(config_file)
    code, _, err = run(capsys, "--config", str(config_file), "summary")
    assert code == 2 and "no run has written summary.json" in err
    written_run(cfg)

    code, out, _ = run(capsys, "--config", str(config_file), "summary")
    assert code == 0 and f"dqlrec run {RUN_DATE}: done" in out and "users scored   6 (top 5, 30 rows)" in out
    assert cfg.layout.report(RUN_DATE) in out
    assert "masks          masked (user, item) pairs: already purchased 7, unavailable 12" in out
    assert "rating NDCG@10" not in out and out.count("Not shown: rating — every one of its 3 validation events") == 1

    code, out, _ = run(capsys, "--config", str(config_file), "evaluate", "--json")
    figures = json.loads(out)
    assert code == 0
    assert figures["metrics"]["challenger"]["eval/ndcg@10"] == 0.25
    assert "learning_curves" not in figures  # the curves stay in evaluation.json

    code, out, _ = run(capsys, "--config", str(config_file), "evaluate", "--run-date", RUN_DATE)
    assert code == 0 and "gate: promoted (no champion to compare with)" in out and "challenger" in out
    assert "new items" not in out  # the run had none
    assert "rating NDCG@10" not in out and "Not shown: rating — every one of its 3 validation events" in out
    code, _, err = run(capsys, "--config", str(config_file), "evaluate", "--run-date", "2026-11-01")
    assert code == 2 and "did not finish" in err


def test_evaluate_prints_the_new_item_figures_when_the_run_has_them(capsys, config_file):
    cfg = load_config(config_file)
    written_run(cfg)
    path = Path(cfg.layout.report(RUN_DATE)) / report.EVALUATION
    figures = {"eval/new_items/items": 4.0, "eval/new_items/n": 9.0, "eval/new_items/hr@10": 0.375}
    storage.write_json_atomic(path, storage.read_json(path) | {"new_items": {"popularity": figures}})

    code, out, _ = run(capsys, "--config", str(config_file), "evaluate", "--run-date", RUN_DATE)
    new_items = out[out.index("new items:") :].splitlines()
    assert code == 0 and new_items[2].split()[:2] == ["popularity", "0.3750"]
    assert "4 items the training split never shows" in new_items[3] and "9 validation events" in new_items[3]


def test_evaluate_prints_the_off_policy_table_when_the_run_has_one(capsys, config_file):
    cfg = load_config(config_file)
    written_run(cfg)
    path = Path(cfg.layout.report(RUN_DATE)) / report.EVALUATION
    estimate = {"value": 1.5, "low": 1.25, "high": 1.75, "per_position": {"1": 1.5}, "ess": 120.0, "warnings": []}
    support = {"supported_share": 0.5, "per_position": {"1": 0.5}, "matched_share": 0.5, "warnings": []}
    found = {"ips": estimate, "snips": estimate, "dr": estimate, "support": support, "ess": 120.0, "usable": True}
    ope = {"days": [RUN_DATE], "input_rows": 10, "rows_used": 10, "candidates": {"champion": found}}
    storage.write_json_atomic(path, storage.read_json(path) | {"ope": ope, "decided_by": "ope/dr"})

    code, out, _ = run(capsys, "--config", str(config_file), "evaluate", "--run-date", RUN_DATE)
    table = out[out.index("off-policy estimates") :].splitlines()
    assert code == 0 and table[2].split()[:3] == ["champion", "1.5000", "[1.2500,"]
    assert "Gate decided by `ope/dr`." in out


def test_task_reports_bad_data_in_one_line(capsys, config_file, tiny_config):
    """An empty day is bad input: exit 2 and the message, not a traceback (and not a silent pass)."""
    run(capsys, "--config", str(config_file), "generate")
    folder = tiny_config.layout.partition("events", RUN_DATE)
    storage.write_partition(storage.read_partition(folder).slice(0, 0), folder)
    code, _, err = run(capsys, "--config", str(config_file), "task", "validate_raw_events", "--run-date", RUN_DATE)
    assert code == 2, err
    assert err.startswith("dqlrec: error: raw events partition event_date=2026-11-27") and "has no rows" in err
    assert "Traceback" not in err


# --- the first task failure of an Airflow log (what `make run` shows last) --------------------------

TASK_RUNNER = "/venv/lib/python3.11/site-packages/airflow/sdk/execution_time/task_runner.py"
CALLBACK_RUNNER = "/venv/lib/python3.11/site-packages/airflow/sdk/execution_time/callback_runner.py"
DAG_FILE = "/repo/dags/dql_recommendations.py"
AIRFLOW_LOG = f"""\
2026-12-01T11:34:33.371688Z [warning  ] Could not import graphviz. [py.warnings] category=UserWarning
[dqlrec] raw events event_date=2026-11-27: 812 rows pass the contract
2026-12-01T11:34:50.997088Z [error    ] Task failed with exception     [task] loc=task_runner.py:1639
Traceback (most recent call last):
  File "{DAG_FILE}", line 127, in _bad_input_fails_at_once
    yield
  File "/repo/dql_model/warehouse/quality.py", line 204, in check_raw_partition
    raise DataQualityError(report)
dql_model.warehouse.quality.DataQualityError: raw events partition event_date=2026-11-27 failed 1 data-quality rule (812 rows):
  - raw events partition event_date=2026-11-27: column item_id, rule expect_column_to_exist: column missing

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "{TASK_RUNNER}", line 1579, in _run_task_and_map_outcome
    result = _execute_task(context=context, ti=ti, log=log)
             ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "{CALLBACK_RUNNER}", line 97, in run
    return func(*args, **kwargs)
           ^^^^^^^^^^^^^^^^^^^^^
  File "{DAG_FILE}", line 193, in validate_raw_events
    return _run("validate_raw_events", run_date)
  File "{DAG_FILE}", line 129, in _bad_input_fails_at_once
    raise AirflowFailException(str(error)) from error
airflow.sdk.exceptions.AirflowFailException: raw events partition event_date=2026-11-27 failed 1 data-quality rule (812 rows):
  - raw events partition event_date=2026-11-27: column item_id, rule expect_column_to_exist: column missing
Fix the partition at its source and rerun the date.
2026-12-01T11:34:51.095276Z [warning  ] No tasks to run. unrunnable tasks: {{<TaskInstance: ...>}}
2026-12-01T11:34:54.475456Z [error    ] Task failed with exception     [task] loc=task_runner.py:1639
Traceback (most recent call last):
  File "{CALLBACK_RUNNER}", line 97, in run
    return func(*args, **kwargs)
  File "{DAG_FILE}", line 208, in evaluate_and_gate
    raise AirflowFailException(
airflow.sdk.exceptions.AirflowFailException: training data for 2026-11-27 was not built and validated
2026-12-01T11:34:57.719115Z [warning  ] No tasks to run. unrunnable tasks: {{<TaskInstance: ...>}}
DagRun failed
"""
FIRST_ERROR = """\
airflow.sdk.exceptions.AirflowFailException: raw events partition event_date=2026-11-27 failed 1 data-quality rule (812 rows):
  - raw events partition event_date=2026-11-27: column item_id, rule expect_column_to_exist: column missing
Fix the partition at its source and rerun the date."""


def test_the_first_task_failure_is_the_first_tasks_last_exception():
    from dql_model.ops.airflow_log import first_task_failure

    failure = first_task_failure(AIRFLOW_LOG.splitlines(keepends=True))
    assert failure.task == "validate_raw_events"
    assert failure.error == FIRST_ERROR  # all of its lines, none of the next record's


def test_a_failure_at_the_end_of_the_log_stops_before_prints_and_the_cli_verdict():
    from dql_model.ops.airflow_log import first_task_failure

    spark_failure = f"""\
\x1b[2m2026-12-01T11:40:00.000001Z\x1b[0m [\x1b[31merror    \x1b[0m] Task failed with exception [task]
Traceback (most recent call last):
  File "{TASK_RUNNER}", line 1579, in _run_task_and_map_outcome
    result = _execute_task(context=context, ti=ti, log=log)
  File "/venv/lib/python3.11/site-packages/airflow/providers/apache/spark/hooks/spark_submit.py", line 655, in submit
    raise AirflowException(
airflow.sdk.exceptions.AirflowException: Cannot execute: spark-submit --name dqlrec-build-training-data jobs/build_training_data.py. Error code is: 1.
[dqlrec] a later task's progress line
DagRun failed
"""
    failure = first_task_failure((AIRFLOW_LOG.split("2026-12-01T11:34:50")[0] + spark_failure).splitlines())
    assert failure.task is None  # an operator task: its id is not in the traceback
    assert failure.error == (
        "airflow.sdk.exceptions.AirflowException: Cannot execute: spark-submit --name dqlrec-build-training-data "
        "jobs/build_training_data.py. Error code is: 1."
    )
    assert first_task_failure(AIRFLOW_LOG.split("2026-12-01T11:34:50")[0].splitlines()) is None


def test_first_failure_prints_the_error_last_and_exits_1_without_one(capsys, tmp_path):
    log = tmp_path / "airflow-run.log"
    log.write_text(AIRFLOW_LOG)
    code, out, _ = run(capsys, "first-failure", str(log))
    assert code == 0
    assert out == f"The first task that failed, validate_raw_events:\n{FIRST_ERROR}\n"
    log.write_text("2026-12-01T11:34:33.371688Z [warning  ] Could not import graphviz.\nDagRun failed\n")
    assert run(capsys, "first-failure", str(log))[:2] == (1, "")
    code, _, err = run(capsys, "first-failure", str(tmp_path / "none.log"))
    assert code == 2 and "none.log" in err


# --- dqlrec models: the registry and its promotion log ----------------------------------------------


@pytest.fixture
def registered(tiny_config, config_file) -> list[str]:
    """Three versions of tiny_config's registry, oldest first, none champion yet."""
    import torch

    from dql_model.learning import registry
    from dql_model.learning.networks import QNetwork

    versions = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = QNetwork(10, 2, tiny_config.model).eval()
        window = {"run_date": f"2026-11-2{5 + seed}", "train_window": "5d", "transitions": 100 + seed}
        metrics = {"history": [{"epoch": 1.0}], "best": {"eval/ndcg@10": 0.2 + seed / 10}}
        versions.append(
            registry.save_model(
                model, tiny_config, registry_root=tiny_config.registry.root, metrics=metrics, data_window=window
            )
        )
    return versions


def models(capsys, config_file, *argv: str) -> tuple[int, str, str]:
    return run(capsys, "--config", str(config_file), "models", *argv)


@pytest.mark.parametrize("command", ["list", "show", "promote", "rollback", "history"])
def test_every_models_command_has_help_and_json(capsys, command):
    with pytest.raises(SystemExit) as done:
        cli.main(["models", command, "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and "--json" in out
    assert ("--reason" in out) == (command in ("promote", "rollback"))


def test_models_list_and_show(capsys, config_file, registered):
    a, b, c = registered
    code, out, _ = models(capsys, config_file, "list")
    assert code == 0 and "no versions" not in out
    rows = [line for line in out.splitlines() if any(v in line for v in registered)]
    assert [row.split()[0] for row in rows] == registered  # no champion yet: no star
    assert rows[2].split()[1:4] == ["2026-11-27", "102", "0.4000"]

    models(capsys, config_file, "promote", b, "--reason", "first")
    listed = json.loads(models(capsys, config_file, "list", "--json")[1])
    assert [(v["version"], v["champion"]) for v in listed] == [(a, False), (b, True), (c, False)]
    assert [line.split()[:2] for line in models(capsys, config_file, "list")[1].splitlines()[1:4]][1] == ["*", b]

    code, out, _ = models(capsys, config_file, "show", b)
    assert code == 0 and out.startswith(f"model version {b} (champion)\n")
    assert "run date 2026-11-26, train window 5d" in out and "eval/ndcg@10" in out and "0.3000" in out
    shown = json.loads(models(capsys, config_file, "show", c, "--json")[1])
    assert shown["champion"] is False and shown["metrics"] == {"eval/ndcg@10": pytest.approx(0.4)}
    assert set(shown["lineage"]) >= {"code_commit", "requirements_sha256", "config_hash", "data"}
    assert shown["data_window"]["transitions"] == 102


def test_models_promote_rollback_and_history(capsys, config_file, registered, tiny_config):
    a, b, c = registered
    code, out, _ = models(capsys, config_file, "promote", a, "--reason", "first model")
    assert code == 0 and out.strip().startswith(f"champion: {a} (was none)")
    entry = json.loads(models(capsys, config_file, "promote", c, "--reason", "fixes purchases", "--json")[1])
    assert (entry["version"], entry["previous"], entry["why"], entry["action"]) == (c, a, "manual: fixes purchases", "promote")
    code, out, _ = models(capsys, config_file, "promote", c, "--reason", "again")
    assert code == 0 and "already the champion; nothing changed" in out

    code, out, _ = models(capsys, config_file, "rollback", "--reason", "c misranks new items")
    assert code == 0 and f"champion: {a} (was {c})" in out
    from dql_model.learning import registry

    assert registry.champion_version(tiny_config.registry.root) == a

    history = json.loads(models(capsys, config_file, "history", "--json")[1])
    assert [(e["action"], e["version"], e["previous"]) for e in history] == [
        ("promote", a, None), ("promote", c, a), ("rollback", a, c),
    ]  # fmt: skip
    lines = models(capsys, config_file, "history")[1].splitlines()
    assert len(lines) == 3 and "rollback" in lines[2] and "manual: c misranks new items" in lines[2]

    code, _, err = models(capsys, config_file, "rollback", "--reason", "once more")
    assert code == 2 and f"names no champion before {a}" in err


def test_promoting_an_unknown_version_names_it_and_the_versions_that_exist(capsys, config_file, registered):
    code, out, err = models(capsys, config_file, "promote", "20990101-nope", "--reason", "typo")
    assert code == 2 and out == ""
    assert "model version 20990101-nope is not in the registry" in err and ", ".join(registered) in err
    code, _, err = models(capsys, config_file, "show", "../elsewhere")
    assert code == 2 and "is not a model version name" in err
    assert json.loads(models(capsys, config_file, "history", "--json")[1]) == []


def test_models_on_an_empty_registry_say_so(capsys, config_file):
    assert "has no versions yet" in models(capsys, config_file, "list")[1]
    assert json.loads(models(capsys, config_file, "list", "--json")[1]) == []
    assert "no promotion log yet" in models(capsys, config_file, "history")[1]


@pytest.mark.parametrize(("flags", "expected"), [([], ["--full-rebuild", "false"]), (["--full-rebuild"], ["--full-rebuild", "true"])])
def test_task_passes_full_rebuild_to_the_etl_jobs_arguments(capsys, config_file, monkeypatch, flags, expected):
    from dql_model.ops import spark_jobs

    launched = []
    monkeypatch.setattr(spark_jobs, "run_job", lambda job, run_date, args=(), **_: launched.append((job, run_date, args)))
    code, _, _ = run(capsys, "--config", str(config_file), "task", "build_training_data", "--run-date", RUN_DATE, *flags)
    assert code == 0 and launched == [("build_training_data", RUN_DATE, expected)]


# --- command-line habits: --version, --config anywhere, --json, exit statuses, README's reference -------


def test_version_prints_the_package_version(capsys):
    import dql_model

    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out == f"dqlrec {dql_model.__version__}\n"


def test_config_is_accepted_before_or_after_the_command(capsys, config_file, tiny_config):
    before = run(capsys, "--config", str(config_file), "config", "warehouse.root")
    after = run(capsys, "config", "warehouse.root", "--config", str(config_file))
    nested = run(capsys, "models", "list", "--config", str(config_file), "--json")
    assert before == after == (0, f"{tiny_config.warehouse.root}\n", "")
    assert nested == (0, "[]\n", "")
    # Without it after the command, the one before it stays (a subcommand does not reset it).
    assert run(capsys, "--config", str(config_file), "demo-date") == (0, f"{tiny_config.simulator.end_date}\n", "")


def test_commands_whose_output_a_script_reads_print_json(capsys, config_file, tiny_config):
    cfg = load_config(config_file)
    code, out, _ = run(capsys, "--config", str(config_file), "generate", "--json")
    written = json.loads(out)
    assert code == 0 and written["generated"] is True and written["events"] > 0
    assert written["last_date"] == tiny_config.simulator.end_date
    assert json.loads(run(capsys, "--config", str(config_file), "generate", "--if-empty", "--json")[1]) == {
        "warehouse": tiny_config.warehouse.root, "generated": False,
    }  # fmt: skip
    assert json.loads(run(capsys, "--config", str(config_file), "demo-date", "--json")[1]) == {
        "run_date": tiny_config.simulator.end_date
    }
    assert json.loads(run(capsys, "--config", str(config_file), "run-date", "--json")[1]) == {
        "run_date": tiny_config.simulator.end_date
    }
    assert json.loads(run(capsys, "--config", str(config_file), "config", "score", "--json")[1]) == cfg.to_dict()["score"]
    written_run(cfg)
    code, out, _ = run(capsys, "--config", str(config_file), "summary", "--run-date", RUN_DATE, "--json")
    summary = json.loads(out)
    assert code == 0 and summary["run_date"] == RUN_DATE and summary["report_dir"] == cfg.layout.report(RUN_DATE)


def test_first_failure_prints_json_too(capsys, tmp_path):
    log = tmp_path / "airflow-run.log"
    log.write_text(AIRFLOW_LOG)
    code, out, _ = run(capsys, "first-failure", str(log), "--json")
    assert code == 0 and json.loads(out) == {"task": "validate_raw_events", "error": FIRST_ERROR}
    log.write_text("DagRun failed\n")
    assert run(capsys, "first-failure", str(log), "--json")[:2] == (1, "null\n")


def test_a_failed_spark_job_exits_1_and_bad_input_2(capsys, config_file, monkeypatch):
    from dql_model.ops import spark_jobs

    def failing(*args, **kwargs):
        raise spark_jobs.JobFailed("job shop_loop exited with 1: ...its last lines")

    monkeypatch.setattr(spark_jobs, "run_job", failing)
    code, _, err = run(capsys, "--config", str(config_file), "simulate", "--days", "1")
    assert (code, err) == (cli.EXIT_FAILED, "dqlrec: error: job shop_loop exited with 1: ...its last lines\n")
    assert run(capsys, "--config", str(config_file), "config", "nope")[0] == cli.EXIT_BAD_INPUT


@pytest.fixture
def fresh_warnings(monkeypatch):
    """Each test sees the once-per-process warning of an unknown variable afresh."""
    from dql_model import config

    monkeypatch.setattr(config, "_WARNED_VARIABLES", set())
    for name in [n for n in os.environ if n.startswith("DQLREC_")]:
        monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("variable", "hint"),
    [
        ("DQLREC_TRAIN_EPOCHS", "did you mean DQLREC_TRAIN__EPOCHS?"),
        ("DQLREC_TOP_K", "did you mean DQLREC_SCORE__TOP_K?"),
        ("DQLREC_CONFG", "did you mean DQLREC_CONFIG?"),
        ("DQLREC_XYZZY", "config overrides are DQLREC_<SECTION>__<FIELD>, two underscores"),
    ],
)
def test_an_unknown_dqlrec_variable_is_warned_about_once_with_the_closest_name(
    capsys, fresh_warnings, monkeypatch, variable, hint
):
    monkeypatch.setenv(variable, "3")
    code, _, err = run(capsys, "config", "train.epochs")
    assert code == 0
    assert err == f"dqlrec: warning: environment variable {variable} is not a dqlrec setting and is ignored; {hint}\n"
    # Once per process: later loads (a command loads the config many times) stay quiet.
    assert run(capsys, "demo-date")[2] == ""


def test_known_variables_are_not_warned_about(fresh_warnings, monkeypatch, recwarn, tiny_config):
    from dql_model import config

    for name in config.OTHER_ENV - {config.CONFIG_ENV}:
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("DQLREC_TRAIN__EPOCHS", "2")
    assert load_config().train.epochs == 2
    assert not [w for w in recwarn if issubclass(w.category, config.UnknownVariableWarning)]


def test_every_dqlrec_variable_the_code_reads_is_known():
    """config.OTHER_ENV lists the DQLREC_* names outside the config: hold it to the code that reads them."""
    from dql_model import config
    from dql_model.ops import services
    from dql_model.warehouse import locks

    root = Path(__file__).resolve().parents[2]
    sources = [*root.glob("dql_model/**/*.py"), *root.glob("dags/*.py"), *root.glob("jobs/*.py")]
    quoted = r"""["'](DQLREC_[A-Z][A-Z0-9_]*)["']"""  # names in code, not in the prose of docstrings
    named = {m for path in sources for m in re.findall(quoted, path.read_text())}
    assert config.CONFIG_ENV in named and "DQLREC_HOME" in named  # the search finds what it looks for
    overrides = set(config.env_variables()) - config.OTHER_ENV
    unknown = {n for n in named if n not in config.OTHER_ENV and n not in overrides and "__" not in n}
    assert unknown == set(), f"add these to dql_model.config.OTHER_ENV: {sorted(unknown)}"
    assert {locks.TOKEN_ENV, services.HOME_MARKER} <= config.OTHER_ENV


def _readme_command_reference() -> str:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("\n## Command line\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```", 2)[1]


def _readme_code() -> str:
    """The README's code: fenced blocks and inline code spans (prose says 'dqlrec and RecBole')."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    fenced = readme.split("```")[1::2]
    inline = re.findall(r"`([^`\n]+)`", "".join(readme.split("```")[0::2]))
    return "\n".join([*fenced, *inline])


def _subcommands(parser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_the_readme_command_reference_lists_every_subcommand():
    reference = _readme_command_reference()
    listed = set(re.findall(r"^dqlrec ([a-z][a-z-]*)", reference, flags=re.MULTILINE))
    commands = _subcommands(cli.build_parser())
    assert set(commands) - listed == set(), "subcommands missing from README's command reference"
    models = set(_subcommands(commands["models"]))
    mentioned = {name for names in re.findall(r"dqlrec models ([a-z|]+)", reference) for name in names.split("|")}
    mentioned |= set(re.findall(r"`(\w+) --reason", reference))  # "`rollback --reason R` restores ..."
    assert models - mentioned == set(), "models subcommands missing from README's command reference"


def test_every_dqlrec_command_the_readme_names_exists():
    commands = _subcommands(cli.build_parser())
    named = set(re.findall(r"(?:^|[\s/`(])dqlrec ([a-z][a-z-]*)", _readme_code(), flags=re.MULTILINE))
    assert named, "the README names no command"
    assert named - set(commands) == set(), "README names commands the CLI does not have"
    models = set(_subcommands(commands["models"]))
    named_models = set(re.findall(r"dqlrec models ([a-z]+)", _readme_code()))
    assert named_models - models == set()


def test_the_readme_exit_status_table_is_the_clis():
    reference = (Path(__file__).resolve().parents[2] / "README.md").read_text().split("\n## Command line\n", 1)[1]
    rows = dict(re.findall(r"^\| `(\d)` \| ([^|]+) \|", reference, flags=re.MULTILINE))
    assert set(rows) == {str(cli.EXIT_OK), str(cli.EXIT_FAILED), str(cli.EXIT_BAD_INPUT)}
