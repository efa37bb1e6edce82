"""Shared fixtures: one SparkSession per test run, a real S3 API on loopback, a throwaway PostgreSQL,
tiny configs. Builders of test data (plain functions) are in tests/factories.py."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from dql_model.config import Config
from dql_model.contract.steps import FAST_JVM_OPTIONS
from dql_model.ops.services import postgres_bindir

# spark-submit and the Spark workers must find this interpreter and its scripts.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
# Never let a developer's real AWS profile leak into a test.
for _var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
    os.environ.pop(_var, None)
os.environ["AWS_ACCESS_KEY_ID"] = "testing"
os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Airflow reads these at import time: its metadata DB lives under the ignored var/ folder.
os.environ["AIRFLOW_HOME"] = str(PROJECT_ROOT / "var" / "test-airflow")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(PROJECT_ROOT / "dags")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
os.environ["AIRFLOW_CONN_SPARK_DEFAULT"] = '{"conn_type": "spark", "host": "local[1]"}'


@pytest.fixture(scope="session")
def airflow_db():
    """Airflow's metadata DB (SQLite under var/test-airflow), migrated once per test run."""
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)


@pytest.fixture(scope="session")
def spark():
    """The one SparkSession of the test run: local[1], one shuffle partition, no UI."""
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[1]")
        .appName("dqlrec-tests")
        .config("spark.sql.shuffle.partitions", "1")
        .config("spark.default.parallelism", "1")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.memory", "1g")
        .config("spark.driver.extraJavaOptions", FAST_JVM_OPTIONS)
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.execution.arrow.pyspark.fallback.enabled", "false")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 API (moto's server) on a free loopback port; boto3 reaches it by endpoint_url."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ["AWS_ENDPOINT_URL_S3"] = endpoint
    yield endpoint
    os.environ.pop("AWS_ENDPOINT_URL_S3", None)
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint, request):
    """A fresh bucket per test, named after the test."""
    import boto3

    name = "t-" + request.node.name.lower().replace("_", "-")[:50].strip("-")
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def no_env_credentials(monkeypatch):
    """Only the Airflow connections can supply S3 or PostgreSQL credentials (and no instance metadata lookup)."""
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3", "PGPASSWORD", "PGPASSFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/dqlrec-test-credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/dqlrec-test-config")
    monkeypatch.setenv("PGPASSFILE", "/nonexistent/dqlrec-test-pgpass")


@pytest.fixture
def tiny_config(tmp_path: Path) -> Config:
    """A small shop and a short training run, everything under tmp_path."""
    return make_tiny_config(tmp_path)


def make_tiny_config(root: Path) -> Config:
    """tiny_config's configuration under any folder (for fixtures wider than one test)."""
    return Config().replace(
        warehouse={"root": str(root / "warehouse")},
        registry={"root": str(root / "models")},
        publish={"export_uri": str(root / "export")},
        simulator={"n_users": 60, "n_items": 40, "n_categories": 4, "n_days": 6, "end_date": "2026-11-27"},
        etl={"max_len": 8, "train_window": "5d", "validation": "time", "val_days": 1},
        model={"embed_dim": 16, "hidden_dim": 16},
        train={"epochs": 2, "batch_size": 64},
        score={"top_k": 5},
        spark={"master": "local[1]", "shuffle_partitions": 1, "driver_memory": "1g"},
    )


# --- a throwaway PostgreSQL server (the SQL sink's tests and the publish reliability tests) --------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """initdb + pg_ctl on a private folder; as root, the server runs as the 'postgres' user."""

    USER = "dqlrec"

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.password = secrets.token_urlsafe(16)
        self.run_as: dict = {}
        self.home = Path(tempfile.mkdtemp(prefix="dqlrec-pg-"))
        if os.geteuid() == 0:  # initdb refuses root: run the server as the 'postgres' account
            import pwd

            account = pwd.getpwnam("postgres")
            os.chown(self.home, account.pw_uid, account.pw_gid)
            self.run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        self.data = self.home / "data"
        self.port = 0

    def _run(self, *args: str) -> None:
        result = subprocess.run(
            [str(self.bindir / args[0]), *args[1:]], capture_output=True, text=True, timeout=60, cwd=self.home, **self.run_as
        )
        if result.returncode:
            log = (self.home / "server.log").read_text() if (self.home / "server.log").is_file() else ""
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stderr}{result.stdout}\n{log}")

    def start(self) -> None:
        pwfile = self.home / "pw"
        pwfile.write_text(self.password + "\n")
        if self.run_as:
            os.chown(pwfile, self.run_as["user"], self.run_as["group"])
        self._run(
            "initdb", "-D", str(self.data), "-U", self.USER, "--auth=scram-sha-256",
            f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C",
        )  # fmt: skip
        pwfile.unlink()
        for _ in range(3):  # another process may take the free port between the probe and the start
            self.port = _free_port()
            options = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories='' -c fsync=off"
            try:
                self._run("pg_ctl", "-D", str(self.data), "-l", str(self.home / "server.log"), "-w", "-o", options, "start")
                return
            except RuntimeError:
                continue
        raise RuntimeError(f"PostgreSQL did not start; see {self.home / 'server.log'}")

    def stop(self) -> None:
        try:
            if self.port:
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.home, ignore_errors=True)

    @property
    def url(self) -> str:
        return f"postgresql://{self.USER}@127.0.0.1:{self.port}/postgres"


@pytest.fixture(scope="module")
def postgres():
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: install postgresql or set PG_BINDIR")
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' account to run the server as (initdb refuses root)")
    server = PostgresServer(bindir)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres, monkeypatch):
    """The server's URL; its password reaches the sink through PGPASSWORD only."""
    monkeypatch.setenv("PGPASSWORD", postgres.password)
    return postgres.url
