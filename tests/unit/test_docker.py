"""The docker/ files cannot be built here (no engine): check what can be checked without one."""

from __future__ import annotations

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
    used = set(re.findall(r"\$\{(\w+)\}", text))  # variables without a default
    example = Path(DOCKER / ".env.example").read_text()
    documented = set(re.findall(r"^(\w+)=", example, flags=re.M))
    assert used <= documented, f"undocumented compose variables: {sorted(used - documented)}"
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            assert not re.search(r"(?i)(password|secret)", key) or "${" in str(value), f"{name}.{key} is hard-coded"
