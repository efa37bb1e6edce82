"""dql_model.ops.services without the services: environment, PID files, and what stop may end."""

from __future__ import annotations

import json
import subprocess
import sys

from dql_model.ops import services


def test_the_airflow_environment_uses_the_metadata_db_connection_and_loopback(tmp_path):
    home = services.Home(tmp_path)
    ports = {"postgres": 5001, "api-server": 5002, "worker-logs": 5003, "trigger-logs": 5004}
    env = services.airflow_env(home, ports, base={"AIRFLOW_CONN_SPARK_DEFAULT": '{"host": "local[*]"}', "PATH": "/bin"})
    assert "AIRFLOW_CONN_SPARK_DEFAULT" not in env  # it would override the connection in the metadata DB
    assert env[services.HOME_MARKER] == str(tmp_path)
    assert env["AIRFLOW_HOME"] == str(tmp_path / "airflow")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == "postgresql+psycopg://airflow@127.0.0.1:5001/airflow"
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:5002/execution/"
    assert env["PATH"].startswith(str(services.BIN))


def test_secrets_are_private_generated_once_and_kept(tmp_path):
    home = services.Home(tmp_path)
    services._write_secrets(home)
    cfg, passwords = home.airflow / "airflow.cfg", home.airflow / services.PASSWORDS_FILE
    first = cfg.read_text(), passwords.read_text()
    assert (cfg.stat().st_mode & 0o777, passwords.stat().st_mode & 0o777) == (0o600, 0o600)
    assert "jwt_secret = " in first[0] and json.loads(first[1])[services.ADMIN]
    services._write_secrets(home)
    assert (cfg.read_text(), passwords.read_text()) == first


def _sleeper(home: services.Home, name: str) -> int:
    for folder in (home.logs, home.pids):
        folder.mkdir(parents=True, exist_ok=True)
    # A parent and a child in one process group, like a service and the task it runs.
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    return services._spawn(home, name, [sys.executable, "-c", code], {services.HOME_MARKER: str(home.root)})


def test_stop_ends_the_recorded_service_and_its_children_only(tmp_path):
    home = services.Home(tmp_path)
    pid = _sleeper(home, "scheduler")
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert services.status(home.root, out=lambda _line: None)["scheduler"] == pid
        for _ in range(50):  # the child may take a moment to appear
            if len(services.marked_processes(home.root)) == 2:
                break
            subprocess.run(["sleep", "0.1"])
        assert len(services.marked_processes(home.root)) == 2
        assert services.stop(home.root, out=lambda _line: None) == []
        assert services.marked_processes(home.root) == []
        assert not services.is_running(pid)
        assert bystander.poll() is None  # not ours: left alone
    finally:
        bystander.kill()
        bystander.wait()


def test_a_reused_pid_is_not_taken_for_the_service(tmp_path):
    home = services.Home(tmp_path)
    home.pids.mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        home.pid_file("scheduler").write_text(json.dumps({"pid": other.pid, "start_time": "0"}))
        assert services.status(home.root, out=lambda _line: None)["scheduler"] is None
        services.stop(home.root, out=lambda _line: None)
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_the_services_find_the_projects_dags_folder():
    """The DAG processor's folder is the project's dags/ (a wrong root loads no DAG and the API says 404)."""
    from dql_model.ops import services

    assert (services.PROJECT_ROOT / "dags" / "dql_recommendations.py").is_file()
    assert (services.PROJECT_ROOT / "pyproject.toml").is_file()
