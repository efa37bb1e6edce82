"""The docker/ files cannot be built here (no engine): check what can be checked without one."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from tests.conftest import PROJECT_ROOT

DOCKER = PROJECT_ROOT / "docker"


def test_every_copy_source_exists():
    sources = re.findall(r"^COPY\s+(.+)\s+\S+$", (DOCKER / "Dockerfile").read_text(), flags=re.M)
    assert sources
    for line in sources:
        for src in line.split():
            assert (PROJECT_ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the repo"


def test_compose_builds_this_dockerfile_and_every_variable_is_documented():
    text = (DOCKER / "compose.yaml").read_text()
    compose = yaml.safe_load(text)
    build = compose["x-dqlrec"]["build"]
    assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == (DOCKER / "Dockerfile").resolve()
    used = set(re.findall(r"(?<!\$)\$\{(\w+)\}", text))  # variables without a default ($$: the container's own)
    example = Path(DOCKER / ".env.example").read_text()
    documented = set(re.findall(r"^(\w+)=", example, flags=re.M))
    assert used <= documented, f"undocumented compose variables: {sorted(used - documented)}"
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            assert not re.search(r"(?i)(password|secret)", key) or "${" in str(value), f"{name}.{key} is hard-coded"


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_every_image_is_pinned_by_version():
    compose = _compose()
    for name, service in compose["services"].items():
        image = service.get("image", "")
        assert image, f"{name} has no image"
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest", f"{name} uses {image!r}: pin a version"


def test_spark_cluster_behind_spark_default():
    services = _compose()["services"]
    master, worker = services["spark-master"], services["spark-worker"]
    assert master["command"][0] == "org.apache.spark.deploy.master.Master"
    assert worker["command"][0] == "org.apache.spark.deploy.worker.Worker"
    assert worker["command"][-1] == "spark://spark-master:7077"
    assert worker["depends_on"]["spark-master"]["condition"] == "service_healthy"
    # The Spark daemons run the dqlrec image: the same Spark and Python as the drivers.
    assert master["image"] == worker["image"] == services["airflow-worker"]["image"]
    connection = json.loads(services["airflow-scheduler"]["environment"]["AIRFLOW_CONN_SPARK_DEFAULT"])
    assert (connection["host"], connection["port"]) == ("spark://spark-master", 7077)


def test_the_bucket_is_created_once_after_minio_is_healthy():
    services = _compose()["services"]
    job = services["minio-create-bucket"]
    assert job["depends_on"]["minio"]["condition"] == "service_healthy"
    assert job.get("restart") == "no"
    assert "mc mb --ignore-existing" in " ".join(job["command"]) and "${EXPORT_BUCKET}" in job["environment"]["EXPORT_BUCKET"]
    assert services["airflow-worker"]["depends_on"]["minio-create-bucket"]["condition"] == "service_completed_successfully"


def test_the_gpu_worker_takes_queue_gpu_with_a_reserved_gpu():
    services = _compose()["services"]
    gpu = services["airflow-worker-gpu"]
    assert gpu["command"][:2] == ["celery", "worker"]
    assert gpu["command"][gpu["command"].index("--queues") + 1] == "gpu"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert gpu["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert "TORCH_INDEX_URL" in gpu["build"]["args"]


def test_every_long_running_service_has_a_health_check():
    one_shot = {"airflow-init", "minio-create-bucket"}
    for name, service in _compose()["services"].items():
        if name not in one_shot:
            assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"

