"""Shared fixtures: one SparkSession per test run, a real S3 API on loopback, tiny configs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from dql_model.config import Config

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

FAST_JVM = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Airflow reads these at import time: its metadata DB lives under the ignored var/ folder.
os.environ["AIRFLOW_HOME"] = str(PROJECT_ROOT / "var" / "test-airflow")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(PROJECT_ROOT / "dags")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
os.environ["AIRFLOW_CONN_SPARK_DEFAULT"] = '{"conn_type": "spark", "host": "local[1]"}'


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
        .config("spark.driver.extraJavaOptions", FAST_JVM)
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
def tiny_config(tmp_path: Path) -> Config:
    """A small shop and a short training run, everything under tmp_path."""
    return Config().replace(
        warehouse={"root": str(tmp_path / "warehouse")},
        registry={"root": str(tmp_path / "models")},
        publish={"export_uri": str(tmp_path / "export")},
        simulator={"n_users": 60, "n_items": 40, "n_categories": 4, "n_days": 6, "end_date": "2026-11-27"},
        etl={"max_len": 8, "train_days": 5, "val_days": 1},
        model={"embed_dim": 16, "hidden_dim": 16},
        train={"epochs": 2, "batch_size": 64},
        score={"top_k": 5},
        spark={"master": "local[1]", "shuffle_partitions": 1, "driver_memory": "1g"},
    )
