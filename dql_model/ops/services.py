"""The production-like services on one machine: what `make airflow` starts and `make airflow-stop` stops.

Owns one concept: the local service set (its folders, ports, PID files and start/stop order)::

    postgres        Airflow's metadata database (initdb/pg_ctl into <home>/postgres, loopback, trust)
    spark-master    Spark standalone master (the classes pyspark ships), behind ``spark_default``
    spark-worker    one Spark worker registered with that master
    api-server      Airflow's UI and REST API (``/api/v2``) and the tasks' execution API
    scheduler       Airflow's scheduler with the LocalExecutor
    dag-processor   parses dags/
    triggerer       deferred tasks

Everything lives under ``<home>`` (default ``var/services``): ``airflow/`` (AIRFLOW_HOME), ``logs/``,
``pids/``, ``spark/`` and ``services.json`` (ports and URLs of the running set). Ports are picked free
at start time, on 127.0.0.1 only. Every process started gets ``DQLREC_SERVICES_HOME=<home>`` in its
environment, which its children inherit: ``stop`` ends the PID files' process groups, then anything
still carrying that marker (a task's spark-submit that left its group, say) and nothing else.

The secrets Airflow's components must share (JWT, API secret key, Fernet key) are generated once into
``<home>/airflow/airflow.cfg`` (mode 600, under the ignored var/); they are never printed.
"""

from __future__ import annotations

import argparse
import base64
import glob
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from dql_model.ops.threads import usable_cpus

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # dql_model/ops/services.py -> the project
DEFAULT_HOME = PROJECT_ROOT / "var" / "services"
HOME_MARKER = "DQLREC_SERVICES_HOME"
"""Environment variable set in every started process: how ``stop`` knows a process is ours."""
BIN = Path(sys.executable).parent
"""The interpreter's scripts folder (airflow, spark-submit): the project's .venv/bin."""
DB_USER = DB_NAME = "airflow"
ADMIN = "admin"
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"
"""The simple auth manager's password file in AIRFLOW_HOME: {user: password}."""
POOLS = {
    "spark": (1, "spark-submit jobs (one at a time: the worker's cores are the machine's)"),
    "gpu": (1, "training on the accelerator (one model at a time)"),
}
"""Pool name -> (slots, description); the DAG's tasks name these pools."""
AIRFLOW_SERVICES = ("api-server", "scheduler", "dag-processor", "triggerer")
ORDER = ("postgres", "spark-master", "spark-worker", *AIRFLOW_SERVICES)
"""Start order; stop goes the other way."""
STOP_GRACE_S = 20
READY_TIMEOUT_S = 240


class ServiceError(RuntimeError):
    """A service did not start or answer; the message names it and its log."""


# --- folders, ports, environment ---------------------------------------------------------------


@dataclass(frozen=True)
class Home:
    """The folders of one service set."""

    root: Path

    @property
    def airflow(self) -> Path:
        return self.root / "airflow"

    @property
    def postgres(self) -> Path:
        return self.root / "postgres"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pids(self) -> Path:
        return self.root / "pids"

    @property
    def spark(self) -> Path:
        return self.root / "spark"

    @property
    def state(self) -> Path:
        return self.root / "services.json"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def pid_file(self, name: str) -> Path:
        return self.pids / f"{name}.pid"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bindir() -> Path | None:
    """Folder with initdb and pg_ctl: $PG_BINDIR, PATH, or the newest /usr/lib/postgresql/*/bin (Debian)."""
    candidates = [os.environ.get("PG_BINDIR", "")]
    on_path = shutil.which("initdb")
    candidates.append(str(Path(on_path).parent) if on_path else "")
    versions = glob.glob("/usr/lib/postgresql/*/bin") + glob.glob("/usr/pgsql-*/bin")
    candidates += sorted(versions, key=lambda p: [int(x) for x in p.split("/") if x.isdigit()] or [0], reverse=True)
    for folder in filter(None, candidates):
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    return None


def _pg_bindir() -> Path:
    bindir = postgres_bindir()
    if bindir is None:
        raise ServiceError("PostgreSQL server binaries (initdb, pg_ctl) not found: install postgresql or set PG_BINDIR")
    return bindir


def spark_home() -> Path:
    """The Spark distribution inside the pyspark package (its bin/spark-class and jars/)."""
    spec = importlib.util.find_spec("pyspark")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError("pyspark is not installed in this interpreter; run `make install`")
    return Path(next(iter(spec.submodule_search_locations)))


def _postgres_account() -> dict:
    """initdb refuses root: as root, the server runs as the 'postgres' account."""
    if os.geteuid() != 0:
        return {}
    import pwd

    try:
        account = pwd.getpwnam("postgres")
    except KeyError:
        raise ServiceError("running as root and there is no 'postgres' account to run PostgreSQL as") from None
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def airflow_env(home: Home, ports: Mapping[str, int], base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every Airflow process of the set (and of the tasks it runs)."""
    env = dict(os.environ if base is None else base)
    # The connection lives in the metadata DB; an AIRFLOW_CONN_ variable (make run's local[*]) would win.
    env.pop("AIRFLOW_CONN_SPARK_DEFAULT", None)
    api = f"http://127.0.0.1:{ports['api-server']}"
    database = f"{DB_USER}@127.0.0.1:{ports['postgres']}/{DB_NAME}"
    env.update(
        {
            HOME_MARKER: str(home.root),
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            "AIRFLOW_HOME": str(home.airflow),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg://{database}",
            # Airflow would derive asyncpg (not installed) for its async engine; psycopg 3 does both.
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": f"postgresql+psycopg_async://{database}",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            # LocalExecutor pre-forks `parallelism` workers: a few per core, not the default 32.
            "AIRFLOW__CORE__PARALLELISM": env.get("AIRFLOW__CORE__PARALLELISM") or str(max(2, usable_cpus())),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(ports["api-server"]),
            "AIRFLOW__API__BASE_URL": api,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(ports["worker-logs"]),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(ports["trigger-logs"]),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            "SPARK_LOCAL_IP": "127.0.0.1",
            "PYSPARK_PYTHON": sys.executable,
            "PYSPARK_DRIVER_PYTHON": sys.executable,
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _write_secrets(home: Home) -> None:
    """Airflow's shared secrets and the admin's password, generated once, readable by this user only."""
    home.airflow.mkdir(parents=True, exist_ok=True)
    cfg = home.airflow / "airflow.cfg"
    if not cfg.is_file():
        fernet = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
        _write_private(
            cfg,
            "# Generated by dql_model.ops.services: secrets shared by this machine's Airflow components.\n"
            f"[core]\nfernet_key = {fernet}\n\n[api]\nsecret_key = {secrets.token_urlsafe(32)}\n\n"
            f"[api_auth]\njwt_secret = {secrets.token_urlsafe(48)}\n",
        )
    # Written here so that the simple auth manager does not generate one and print it to its log.
    passwords = home.airflow / PASSWORDS_FILE
    if not passwords.is_file():
        _write_private(passwords, json.dumps({ADMIN: secrets.token_urlsafe(16)}))


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


# --- processes -----------------------------------------------------------------------------------


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in ticks): tells a live process from a reused PID."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _spawn(home: Home, name: str, command: list[str], env: Mapping[str, str]) -> int:
    """Start ``command`` in its own session (its process group is the service), log to logs/<name>.log."""
    with open(home.log(name), "ab") as log:
        child = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(env), cwd=PROJECT_ROOT, start_new_session=True,
        )  # fmt: skip
    _record(home, name, child.pid)
    return child.pid


def _record(home: Home, name: str, pid: int) -> None:
    home.pid_file(name).write_text(json.dumps({"pid": pid, "start_time": _start_time(pid)}) + "\n")


def _recorded(home: Home, name: str) -> int | None:
    """The PID in pids/<name>.pid if that process is still the one recorded, else None."""
    try:
        record = json.loads(home.pid_file(name).read_text())
    except (OSError, ValueError):
        return None
    pid = int(record["pid"])
    return pid if is_running(pid) and _start_time(pid) == record.get("start_time") else None


def marked_processes(home: Path) -> list[int]:
    """PIDs of live processes whose environment carries this set's marker (ours, and their children)."""
    marker = f"{HOME_MARKER}={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                stat = (entry / "stat").read_text()
                if stat.rsplit(")", 1)[1].split()[0] != "Z":
                    found.append(int(entry.name))
        except OSError:
            continue
    return sorted(found)


def is_running(pid: int) -> bool:
    """The process exists and has not exited (a zombie waiting for its parent has)."""
    return _start_time(pid) is not None and not _is_zombie(pid)


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = [pid for pid in pids if is_running(pid)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [pid for pid in alive if is_running(pid)]
    return alive


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


# --- readiness -----------------------------------------------------------------------------------


def http_json(url: str, *, timeout: float = 5.0, token: str | None = None, method: str = "GET", body=None):
    """GET/POST/PATCH ``url`` and decode its JSON answer (urllib: the services need no extra client)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return json.loads(answer.read() or b"null")


def wait_for(what: str, check: Callable[[], bool], *, log: Path, timeout: float = READY_TIMEOUT_S, pid: int | None = None) -> None:
    """Poll ``check`` until true; a clear error naming the service and its log otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, ValueError, urllib.error.URLError):
            pass
        if pid is not None and not is_running(pid):
            raise ServiceError(f"{what} exited during start-up; its log {log} ends with:\n{_tail(log)}")
        time.sleep(1)
    raise ServiceError(f"{what} not ready after {timeout:.0f} s; its log {log} ends with:\n{_tail(log)}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def airflow_health(api_url: str) -> dict[str, str]:
    """Component -> status from the API server's /api/v2/monitor/health (no login needed)."""
    health = http_json(f"{api_url}/api/v2/monitor/health")
    return {name: (part or {}).get("status", "") for name, part in health.items()}


# --- the services ----------------------------------------------------------------------------------


def _start_postgres(home: Home, port: int) -> None:
    bindir, run_as = _pg_bindir(), _postgres_account()
    data, log = home.postgres / "data", home.log("postgres")
    home.postgres.mkdir(parents=True, exist_ok=True)
    log.touch(exist_ok=True)
    if run_as:  # the server writes its data folder and its log as that account
        for path in (home.postgres, log):
            os.chown(path, run_as["user"], run_as["group"])

    def pg(*args: str) -> None:
        result = subprocess.run(
            [str(bindir / args[0]), *args[1:]], capture_output=True, text=True, timeout=120, cwd=home.postgres, **run_as
        )
        if result.returncode:
            raise ServiceError(f"{args[0]} failed ({result.returncode}): {result.stderr}{result.stdout}\n{_tail(log)}")

    if not (data / "PG_VERSION").is_file():
        # Trust on loopback only (no password to keep); the server listens on 127.0.0.1 and no socket file.
        pg("initdb", "-D", str(data), "-U", DB_USER, "--auth-host=trust", "--auth-local=trust", "-E", "UTF8", "--locale=C")
    options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories=''"
    env = {**os.environ, HOME_MARKER: str(home.root)}
    result = subprocess.run(
        [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-o", options, "start"],
        capture_output=True, text=True, timeout=120, env=env, **run_as,
    )  # fmt: skip
    if result.returncode:
        raise ServiceError(f"PostgreSQL did not start: {result.stdout}{result.stderr}\n{log}:\n{_tail(log)}")
    _record(home, "postgres", int((data / "postmaster.pid").read_text().split()[0]))
    _create_database(port)


def _create_database(port: int) -> None:
    """The ``airflow`` database, once (psycopg is Airflow's driver here; the server has no psql beside it)."""
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=port, user=DB_USER, dbname="postgres", autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,)).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{DB_NAME}"')


def _stop_postgres(home: Home) -> None:
    data = home.postgres / "data"
    if (data / "postmaster.pid").is_file():
        subprocess.run(
            [str(_pg_bindir() / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            capture_output=True, timeout=60, **_postgres_account(),
        )  # fmt: skip


def spark_env(home: Home) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            HOME_MARKER: str(home.root),
            "SPARK_HOME": str(spark_home()),
            "SPARK_LOCAL_IP": "127.0.0.1",
            "SPARK_LOG_DIR": str(home.logs),
            "SPARK_WORKER_DIR": str(home.spark / "work"),
            "SPARK_DAEMON_MEMORY": "512m",
            "PYSPARK_PYTHON": sys.executable,
        }
    )
    return env


def _write_spark_defaults(home: Home) -> Path:
    """spark-defaults.conf of the jobs submitted to this cluster (SPARK_CONF_DIR of the Airflow processes).

    Executors are short-lived batch JVMs here: the driver's fast-start flags suit them too, and each
    executor takes the worker's cores, so Python workers (torch in mapInPandas) share those cores only.
    """
    from dql_model.contract.steps import FAST_JVM_OPTIONS

    conf = home.spark / "conf"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "spark-defaults.conf").write_text(
        f"spark.executor.extraJavaOptions {FAST_JVM_OPTIONS}\n"
        "spark.executor.memory 1g\n"
    )
    return conf


def _spark_class(main_class: str, *args: str) -> list[str]:
    return [str(spark_home() / "bin" / "spark-class"), main_class, *args]


def spark_connection(master_port: int) -> dict:
    """The ``spark_default`` connection to the standalone master (the hook builds spark://host:port)."""
    return {"conn_type": "spark", "host": "spark://127.0.0.1", "port": master_port, "extra": {"deploy-mode": "client"}}


def provision(connection: Mapping) -> None:
    """Pools and the spark_default connection in the metadata DB (run in a child with the Airflow env)."""
    from airflow.models import Connection, Pool
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        for name, (slots, description) in POOLS.items():
            Pool.create_or_update_pool(name, slots, description, include_deferred=False, session=session)
        existing = session.scalar(select(Connection).where(Connection.conn_id == "spark_default"))
        if existing is not None:
            session.delete(existing)
            session.flush()
        session.add(Connection(conn_id="spark_default", **{**connection, "extra": json.dumps(connection["extra"])}))


def start(home_root: Path = DEFAULT_HOME, *, out: Callable[[str], None] = print) -> dict:
    """Start the whole set (refuses if one of its services is already running); returns services.json."""
    home = Home(Path(home_root).resolve())
    running = [name for name in ORDER if _recorded(home, name)]
    if running:
        raise ServiceError(f"already running from {home.root}: {', '.join(running)}; run `make airflow-stop` first")
    for folder in (home.logs, home.pids, home.spark / "work", home.airflow):
        folder.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    ports = {name: free_port() for name in ("postgres", "api-server", "worker-logs", "trigger-logs")}
    ports |= {name: free_port() for name in ("spark-master", "spark-master-ui", "spark-worker", "spark-worker-ui")}
    state = {"home": str(home.root), "ports": ports}
    try:
        _start_all(home, ports, state, out)
    except BaseException:
        stop(home.root, out=lambda _line: None)
        raise
    state["seconds"] = round(time.monotonic() - started, 1)
    home.state.write_text(json.dumps(state, indent=2) + "\n")
    out(f"all services up in {state['seconds']:.0f} s; stop them with `make airflow-stop`")
    return state


def _start_all(home: Home, ports: dict[str, int], state: dict, out: Callable[[str], None]) -> None:
    _start_postgres(home, ports["postgres"])
    out(f"postgres       127.0.0.1:{ports['postgres']} (database {DB_NAME}, user {DB_USER})   log {home.log('postgres')}")
    env = airflow_env(home, ports)
    env["SPARK_CONF_DIR"] = str(_write_spark_defaults(home))
    _write_secrets(home)
    airflow = str(BIN / "airflow")
    migrate = subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, text=True, cwd=PROJECT_ROOT)
    home.log("db-migrate").write_text(migrate.stdout + migrate.stderr)
    if migrate.returncode:
        raise ServiceError(f"airflow db migrate failed; log {home.log('db-migrate')}:\n{_tail(home.log('db-migrate'))}")

    master_url = f"spark://127.0.0.1:{ports['spark-master']}"
    provisioned = subprocess.run(
        [sys.executable, "-m", "dql_model.ops.services", "_provision", json.dumps(spark_connection(ports["spark-master"]))],
        env=env, capture_output=True, text=True, cwd=PROJECT_ROOT,
    )  # fmt: skip
    if provisioned.returncode:
        raise ServiceError(f"creating the pools and spark_default failed:\n{provisioned.stderr[-3000:]}")

    senv = spark_env(home)
    master = _spawn(
        home, "spark-master",
        _spark_class("org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(ports["spark-master"]),
                     "--webui-port", str(ports["spark-master-ui"])),
        senv,
    )  # fmt: skip
    master_ui = f"http://127.0.0.1:{ports['spark-master-ui']}"
    wait_for("spark-master", lambda: http_json(f"{master_ui}/json/")["status"] == "ALIVE", log=home.log("spark-master"), pid=master)
    cores = usable_cpus()
    worker = _spawn(
        home, "spark-worker",
        _spark_class("org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--port", str(ports["spark-worker"]),
                     "--webui-port", str(ports["spark-worker-ui"]), "--cores", str(cores), "--memory", "2g",
                     "--work-dir", str(home.spark / "work"), master_url),
        senv,
    )  # fmt: skip
    wait_for(
        "spark-worker", lambda: any(w["state"] == "ALIVE" for w in http_json(f"{master_ui}/json/")["workers"]),
        log=home.log("spark-worker"), pid=worker,
    )  # fmt: skip
    out(f"spark-master   {master_url}   UI {master_ui}   log {home.log('spark-master')}")
    out(f"spark-worker   127.0.0.1:{ports['spark-worker']} ({cores} cores, 2g)   UI http://127.0.0.1:{ports['spark-worker-ui']}"
        f"   log {home.log('spark-worker')}")  # fmt: skip

    pids = {name: _spawn(home, name, [airflow, name], env) for name in AIRFLOW_SERVICES}
    api = env["AIRFLOW__API__BASE_URL"]
    components = ("metadatabase", "scheduler", "dag_processor", "triggerer")
    wait_for(
        "Airflow (api-server, scheduler, dag-processor, triggerer)",
        lambda: all(airflow_health(api).get(c) == "healthy" for c in components)
        and all(is_running(pid) for pid in pids.values()),
        log=home.log("api-server"),
        pid=pids["api-server"],
    )
    passwords = home.airflow / PASSWORDS_FILE
    out(f"api-server     {api}   (UI; REST {api}/api/v2; user {ADMIN}, password in {passwords})   log {home.log('api-server')}")
    for name in AIRFLOW_SERVICES[1:]:
        out(f"{name:<14} pid {pids[name]}   log {home.log(name)}")
    out(f"pools          {', '.join(POOLS)}; connection spark_default -> {master_url}")
    state["urls"] = {"airflow": api, "spark_master": master_url, "spark_master_ui": master_ui}


def stop(home_root: Path = DEFAULT_HOME, *, out: Callable[[str], None] = print) -> list[int]:
    """Stop what ``start`` started, by its PID files (then stragglers carrying the marker); returns leftovers."""
    home = Home(Path(home_root).resolve())
    for name in reversed(ORDER):
        pid = _recorded(home, name)
        if name == "postgres":
            if pid:
                _stop_postgres(home)
                out(f"stopped postgres (pid {pid})")
        elif pid:
            _signal_group(pid, signal.SIGTERM)
            if _wait_gone([pid], STOP_GRACE_S):
                _signal_group(pid, signal.SIGKILL)
                _wait_gone([pid], 5)
            out(f"stopped {name} (pid {pid})")
        home.pid_file(name).unlink(missing_ok=True)
    stragglers = marked_processes(home.root)
    for pid in stragglers:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    left = _wait_gone(stragglers, 10)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    left = _wait_gone(left, 5)
    home.state.unlink(missing_ok=True)
    if left:
        out(f"still running after SIGKILL: {left}")
    return left


def status(home_root: Path = DEFAULT_HOME, *, out: Callable[[str], None] = print) -> dict[str, int | None]:
    """Each service's live PID (None: not running)."""
    home = Home(Path(home_root).resolve())
    live = {name: _recorded(home, name) for name in ORDER}
    urls = json.loads(home.state.read_text()).get("urls", {}) if home.state.is_file() else {}
    for name, pid in live.items():
        out(f"{name:<14} {'running, pid ' + str(pid) if pid else 'stopped'}")
    for name, url in urls.items():
        out(f"{name:<14} {url}")
    return live


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dqlrec services", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["start", "stop", "status", "_provision"])
    parser.add_argument("arg", nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, default=Path(os.environ.get(HOME_MARKER) or DEFAULT_HOME),
                        help=f"folder of the service set (default {DEFAULT_HOME.relative_to(PROJECT_ROOT)})")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        if args.action == "start":
            start(args.home)
        elif args.action == "stop":
            return 1 if stop(args.home) else 0
        elif args.action == "status":
            return 0 if all(status(args.home).values()) else 3
        else:
            provision(json.loads(args.arg))
    except ServiceError as error:
        print(f"dqlrec services: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
