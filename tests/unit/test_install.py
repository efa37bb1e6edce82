"""`make install` fits the machine: the Python and Java it needs are checked up front (.ci/check-prerequisites)
with a message naming what was found and what is needed; a .venv without pip is re-created; TORCH_BUILD picks
torch's CPU build only when asked."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / ".ci" / "check-prerequisites"

pytestmark = pytest.mark.skipif(shutil.which("make") is None or shutil.which("sh") is None, reason="needs make and sh")


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def fake_python(folder: Path, version: str = "3.11.9", platform: str = "linux x86_64", venv: str = "good") -> Path:
    """A `python` that reports ``version`` on ``platform``; `-m venv DIR` makes a venv whose pip works or not."""
    venv_python = "exit 0" if venv == "good" else "exit 1"
    return _script(
        folder / f"python-{version}-{venv}",
        f"""case "$*" in
  *version_info*) echo "{'.'.join(version.split('.')[:2])}" ;;
  "-m venv "*) mkdir -p "$3/bin" && printf '#!/bin/sh\\n{venv_python}\\n' > "$3/bin/python" && chmod +x "$3/bin/python" ;;
  -c*) echo "{version} {platform}" ;;
  *) exit 2 ;;
esac
""",
    )


def fake_java(folder: Path, version: str) -> Path:
    return _script(folder / f"java-{version}", f'echo \'openjdk version "{version}" 2023-01-01\' >&2\n')


def check(*args: str, python: Path | str, java: Path | str, **env: str) -> subprocess.CompletedProcess:
    inherited = {key: value for key, value in os.environ.items() if key != "SKIP_PLATFORM_CHECK"}
    environ = {**inherited, "PYTHON": str(python), "JAVA": str(java), **env}
    return subprocess.run([str(CHECK), *args], env=environ, capture_output=True, text=True, check=False)


@pytest.mark.parametrize("java_version", ["17.0.15", "21", "25-ea"])
def test_a_fitting_python_and_java_pass(tmp_path, java_version):
    done = check("versions", python=fake_python(tmp_path), java=fake_java(tmp_path, java_version))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["Python 3.11.9 (linux x86_64): ok", f"Java {java_version}: ok"]


def test_an_old_python_is_named_with_what_is_needed(tmp_path):
    done = check("versions", python=fake_python(tmp_path, "3.9.18"), java=fake_java(tmp_path, "17.0.1"))
    assert done.returncode == 1
    assert "found Python 3.9.18" in done.stderr and "Python 3.11 or later is needed" in done.stderr
    assert "Java" not in done.stdout  # stops at the first thing to fix


def test_a_missing_python_is_named(tmp_path):
    done = check("versions", python=tmp_path / "python9", java=fake_java(tmp_path, "17.0.1"))
    assert done.returncode == 1
    assert f"'{tmp_path / 'python9'}' was not found" in done.stderr and "PYTHON=" in done.stderr


def test_another_platform_than_the_locks_is_refused_unless_asked(tmp_path):
    python, java = fake_python(tmp_path, platform="darwin arm64"), fake_java(tmp_path, "17.0.1")
    done = check("versions", python=python, java=java)
    assert done.returncode == 1
    assert "on darwin arm64" in done.stderr and "locked for x86_64 Linux" in done.stderr
    assert check("versions", python=python, java=java, SKIP_PLATFORM_CHECK="1").returncode == 0


@pytest.mark.parametrize(("java_version", "shown"), [("1.8.0_381", "Java 1.8.0_381"), ("11.0.22", "Java 11.0.22")])
def test_an_old_java_is_named_with_what_is_needed(tmp_path, java_version, shown):
    done = check("versions", python=fake_python(tmp_path), java=fake_java(tmp_path, java_version))
    assert done.returncode == 1
    assert f"found {shown}" in done.stderr and "Java 17 or later is needed" in done.stderr


def test_a_missing_java_is_named(tmp_path):
    done = check("versions", python=fake_python(tmp_path), java=tmp_path / "no-java")
    assert done.returncode == 1
    assert "Java 17+ is needed" in done.stderr and "no-java' was not found" in done.stderr


def test_make_runs_the_check_with_the_given_python_and_java(tmp_path):
    done = subprocess.run(
        ["make", "-s", "-C", str(ROOT), "prerequisites", f"PYTHON={fake_python(tmp_path, '3.10.4')}",
         f"JAVA={fake_java(tmp_path, '17.0.1')}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode != 0 and "found Python 3.10.4" in done.stderr


def test_a_venv_without_pip_is_re_created(tmp_path):
    venv = tmp_path / ".venv"
    (venv / "bin").mkdir(parents=True)
    _script(venv / "bin" / "python", "exit 1\n")  # what `python -m venv` leaves without ensurepip
    (venv / "left-over").touch()
    done = check("venv", str(venv), python=fake_python(tmp_path), java="java")
    assert done.returncode == 0, done.stderr
    assert "no working pip" in done.stdout and not (venv / "left-over").exists()
    assert subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "--version"], check=False).returncode == 0
    # A working one is kept as it is.
    (venv / "kept").touch()
    assert check("venv", str(venv), python=fake_python(tmp_path), java="java").returncode == 0
    assert (venv / "kept").exists()


def test_a_python_that_cannot_make_a_venv_with_pip_names_the_package_to_install(tmp_path):
    venv = tmp_path / ".venv"
    done = check("venv", str(venv), python=fake_python(tmp_path, "3.12.3", venv="no-pip"), java="java")
    assert done.returncode == 1
    assert "apt install python3.12-venv" in done.stderr
    assert not venv.exists()  # not left half-made for the next call to reuse


def _dry_run_install(*variables: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "-n", "-B", "-C", str(ROOT), "install", *variables], capture_output=True, text=True, check=False
    )


def test_torch_build_cpu_adds_the_cpu_index_to_the_installs_that_can_fetch_torch():
    cpu = [line for line in _dry_run_install("TORCH_BUILD=cpu").stdout.splitlines() if " install " in line]
    index = "--extra-index-url https://download.pytorch.org/whl/cpu"
    assert [index in line for line in cpu] == [True, True, False]  # the lock, torch; not the package itself
    default = _dry_run_install().stdout
    assert "pip" in default and "--extra-index-url" not in default
    mirror = _dry_run_install("TORCH_BUILD=cpu", "TORCH_CPU_INDEX=https://mirror.example/whl/cpu").stdout
    assert "--extra-index-url https://mirror.example/whl/cpu" in mirror


def test_an_unknown_torch_build_is_refused_by_name():
    done = _dry_run_install("TORCH_BUILD=cuda")
    assert done.returncode != 0 and "TORCH_BUILD=cuda is not a torch build" in done.stderr


def _dry_run(target: str, venv: Path, *what_if: str) -> list[str]:
    """The pip installs `make -n TARGET` would run with ``venv`` already installed (both stamps newer than
    the locks), as if the files ``what_if`` had just changed."""
    for stamp in (".installed", ".installed-dev"):
        (venv / stamp).touch()
    done = subprocess.run(
        ["make", "-n", "-C", str(ROOT), target, f"VENV={os.path.relpath(venv, ROOT)}",
         *(f"--what-if={name}" for name in what_if)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if " pip " in line and " install " in line]


def test_run_installs_the_runtime_lock_only_and_test_lint_bench_add_the_development_one(tmp_path):
    venv = tmp_path / ".venv"
    venv.mkdir()
    for target in ("install", "run"):
        installs = _dry_run(target, venv, "requirements.txt", "requirements-dev.txt")
        assert any("-r requirements.txt" in line for line in installs), target
        assert not any("requirements-dev.txt" in line for line in installs), target
    for target in ("test", "lint", "bench"):
        installs = _dry_run(target, venv, "requirements.txt")
        assert any("-r requirements.txt" in line for line in installs), target
        # A reinstalled runtime lock reinstalls the development pins beside it (stamp order).
        assert any("--no-deps" in line and "-r requirements-dev.txt" in line for line in installs), target


def test_a_changed_lock_reinstalls_only_what_it_pins(tmp_path):
    venv = tmp_path / ".venv"
    venv.mkdir()
    assert _dry_run("test", venv) == []  # both stamps current: nothing to install
    dev_only = _dry_run("test", venv, "requirements-dev.txt")
    assert len(dev_only) == 1 and "-r requirements-dev.txt" in dev_only[0]
    assert _dry_run("run", venv, "requirements-dev.txt") == []


def test_the_runtime_lock_holds_no_development_package_and_no_pin_is_in_both():
    def pins(name: str) -> dict[str, str]:
        lines = (ROOT / name).read_text().splitlines()
        return dict(line.split("==", 1) for line in lines if line[:1].isalnum())

    runtime, dev = pins("requirements.txt"), pins("requirements-dev.txt")
    assert {"pytest", "ruff", "duckdb", "moto"} <= dev.keys()
    assert not {"pytest", "ruff", "duckdb", "moto", "cfn-lint", "aws-xray-sdk", "docker"} & runtime.keys()
    needed_by_run = {"apache-airflow", "pyspark", "torch", "great-expectations", "optuna", "psycopg", "boto3"}
    assert needed_by_run <= runtime.keys()
    assert not runtime.keys() & dev.keys()
