"""`make airflow` for real: PostgreSQL, the four Airflow services, a Spark standalone master and worker.

The nightly DAG is triggered through the stable REST API (``/api/v2``) with the simple auth manager's
token, on a tiny generated shop, and run by the scheduler with the LocalExecutor; its Spark job goes to
the standalone master through ``spark_default``. Then: the published recommendations, the master's
list of finished applications, the asset event, and marketing's DAG, which the asset event triggered
after the publish, built the audiences of the published date. A headless Chromium (Debian's package,
tests/browser.py) then saves the DAG's grid view, showing that run, as an artifact of the test in
var/test-artifacts/. Last, stopping leaves no process behind.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.parse

import numpy as np
import pyarrow.compute as pc
import pytest
import yaml
from PIL import Image

from dql_model.config import load_config
from dql_model.contract import schema
from dql_model.ops import services
from dql_model.publishing import audiences
from dql_model.simulation import simulator
from dql_model.warehouse import storage
from tests.browser import Browser, BrowserUnavailable
from tests.conftest import PROJECT_ROOT, make_tiny_config, postgres_bindir

pytestmark = [pytest.mark.services, pytest.mark.slow]

HOME = PROJECT_ROOT / "var" / "test-services"
MAIN, MARKETING = "dql_recommendations", "marketing_audiences"
ARTIFACTS = PROJECT_ROOT / "var" / "test-artifacts"
"""What the services test leaves to look at: grid.png, the DAG's grid view, and grid.html, its DOM."""
RUN_TIMEOUT_S = 900
"""A bound on waiting for a run, not a performance claim: a hung run fails instead of hanging CI."""
FAILED = {"failed", "up_for_retry", "upstream_failed"}


class Api:
    """The Airflow REST API with a bearer token from the simple auth manager."""

    def __init__(self, base: str, password: str):
        self.base = base
        login = {"username": "admin", "password": password}
        self.token = services.http_json(f"{base}/auth/token", method="POST", body=login)["access_token"]

    def __call__(self, path: str, *, method: str = "GET", body=None):
        return services.http_json(f"{self.base}/api/v2{path}", token=self.token, method=method, body=body, timeout=30)

    def wait_for_dag(self, dag_id: str) -> dict:
        deadline = time.monotonic() + 120
        while True:
            try:
                return self(f"/dags/{dag_id}")
            except urllib.error.HTTPError as error:
                if error.code != 404 or time.monotonic() > deadline:
                    raise
            time.sleep(2)

    def task_log(self, dag_id: str, run_id: str, ti: dict) -> str:
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{ti['task_id']}/logs/{max(ti['try_number'], 1)}"
        try:
            content = self(f"{path}?full_content=true").get("content", [])
        except urllib.error.HTTPError as error:
            return f"(log unavailable: {error})"
        lines = [c.get("event", str(c)) if isinstance(c, dict) else str(c) for c in content]
        return "\n".join(lines[-40:])

    def wait_for_run(self, dag_id: str, run_id: str) -> dict[str, dict]:
        """Task id -> task instance once the run succeeded; a failed task fails the test with its log."""
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while time.monotonic() < deadline:
            run = self(f"/dags/{dag_id}/dagRuns/{run_id}")
            tis = {ti["task_id"]: ti for ti in self(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]}
            broken = [ti for ti in tis.values() if ti["state"] in FAILED]
            if broken:
                pytest.fail(f"{dag_id} task {broken[0]['task_id']} is {broken[0]['state']}:\n{self.task_log(dag_id, run_id, broken[0])}")
            if run["state"] == "success":
                return tis
            assert run["state"] in ("queued", "running"), run
            time.sleep(3)
        pytest.fail(f"{dag_id} run {run_id} did not finish in {RUN_TIMEOUT_S} s: {[(t, ti['state']) for t, ti in tis.items()]}")


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A tiny generated shop and its config file, which the services' tasks read through DQLREC_CONFIG."""
    root = tmp_path_factory.mktemp("services")
    config_file = root / "dqlrec.yaml"
    # The nightly evaluation's simulation and supervised search are tested elsewhere; here they cost minutes.
    cfg = make_tiny_config(root).replace(eval={"sim_users": 0, "baseline_trials": 0})
    config_file.write_text(yaml.safe_dump(cfg.to_dict()))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DQLREC_CONFIG", str(config_file))
        cfg = load_config()
        simulator.write_shop(cfg)
        yield cfg


@pytest.fixture(scope="module")
def running(shop):
    """The services started from a clean folder; stopped at the end even if a test failed."""
    if postgres_bindir() is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: install postgresql or set PG_BINDIR")
    services.stop(HOME, out=lambda _line: None)  # what an interrupted earlier run may have left
    shutil.rmtree(HOME, ignore_errors=True)
    state = services.start(HOME)
    try:
        yield state
    finally:
        services.stop(HOME, out=lambda _line: None)


@pytest.fixture(scope="module")
def api(running):
    passwords = json.loads((HOME / "airflow" / "simple_auth_manager_passwords.json.generated").read_text())
    return Api(running["urls"]["airflow"], passwords["admin"])


def test_the_nightly_dag_runs_on_the_services_and_triggers_marketing(running, api, shop):
    cfg, run_date = shop, shop.simulator.end_date
    main_dag = api.wait_for_dag(MAIN)
    api.wait_for_dag(MARKETING)
    api(f"/dags/{MARKETING}", method="PATCH", body={"is_paused": False})
    # The manual run takes the logical date of the next scheduled one, so unpausing adds no second run.
    run = api(
        f"/dags/{MAIN}/dagRuns",
        method="POST",
        body={"logical_date": main_dag["next_dagrun_logical_date"], "conf": {"run_date": run_date}},
    )
    api(f"/dags/{MAIN}", method="PATCH", body={"is_paused": False})
    tis = api.wait_for_run(MAIN, run["dag_run_id"])

    published = storage.read_partition(cfg.layout.partition(schema.RECOMMENDATIONS, run_date))
    users, k = pc.count_distinct(published.column(schema.USER_ID)).as_py(), cfg.score.top_k
    assert users > 0 and published.num_rows == users * k
    assert set(published.column(schema.RANK).to_pylist()) == set(range(1, k + 1))

    # The Spark job ran on the standalone master, not in local mode.
    master = services.http_json(f"{running['urls']['spark_master_ui']}/json/")
    finished = {app["name"] for app in master["completedapps"]}
    assert "dqlrec-build_training_data" in finished, master  # the job's own app name (jobs/spark_session.py)
    assert tis["build_training_data"]["state"] == "success"

    query = urllib.parse.urlencode({"source_dag_id": MAIN, "source_run_id": run["dag_run_id"]})  # run ids hold '+'
    events = api(f"/assets/events?{query}")["asset_events"]
    assert [(e["uri"], e["source_task_id"], e["extra"]["run_date"], e["extra"]["rows"]) for e in events] == [
        ("dqlrec://warehouse/output/recommendations", "publish_recommendations", run_date, published.num_rows)
    ]

    # Marketing's DAG ran because of that event, after the publish, and read the published date from it.
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not (runs := api(f"/dags/{MARKETING}/dagRuns")["dag_runs"]) and time.monotonic() < deadline:
        time.sleep(3)
    assert [r["run_type"] for r in runs] == ["asset_triggered"], runs
    marketing_tis = api.wait_for_run(MARKETING, runs[0]["dag_run_id"])
    assert marketing_tis["published_run_dates"]["start_date"] > tis["publish_recommendations"]["end_date"]
    dates = api(
        f"/dags/{MARKETING}/dagRuns/{runs[0]['dag_run_id']}/taskInstances/published_run_dates/xcomEntries/return_value"
    )["value"]
    assert (json.loads(dates) if isinstance(dates, str) else dates) == [run_date]
    table = storage.read_partition(cfg.layout.marketing(audiences.TABLE, run_date))
    items = storage.read_partition(cfg.layout.table(schema.ITEMS))
    assert table.equals(audiences.build_campaign_audiences(published, items))


def test_the_grid_view_shows_the_run_in_headless_chromium(running, api):
    runs = [r for r in api(f"/dags/{MAIN}/dagRuns")["dag_runs"] if r["state"] == "success"]
    assert runs, "no successful run of the nightly DAG to show: the test above triggers it"
    run_id, last = runs[0]["dag_run_id"], "publish_recommendations"
    task_ids = [task["task_id"] for task in api(f"/dags/{MAIN}/tasks")["tasks"]]
    # The grid's cells carry their run and task ids; this waits until the run's last cell is drawn.
    cell = (
        "[...document.querySelectorAll('[data-run-id]')]"
        f".some(c => c.dataset.runId === {json.dumps(run_id)} && c.dataset.taskId === '{last}')"
    )
    try:
        session = Browser()
    except BrowserUnavailable as reason:
        pytest.skip(f"no headless browser on this machine: {reason}")
    with session as browser:
        # The UI's API calls authenticate with the `_token` cookie its login sets; the REST token is that JWT.
        browser.set_cookie(f"{api.base}/", "_token", api.token)
        drawn = browser.open(f"{api.base}/dags/{MAIN}", until=cell, timeout=120)  # the grid is the default view
        url, text, dom = browser.url(), browser.text(), browser.dom()
        png = browser.screenshot(ARTIFACTS / "grid.png")
    (ARTIFACTS / "grid.html").write_text(dom)
    assert browser.processes() == []

    # The DAG's page, not the login form (where a missing or rejected token redirects) nor an error page.
    assert urllib.parse.urlsplit(url).path == f"/dags/{MAIN}", url
    assert not any(s in text for s in ("Sign into Airflow", "Page Not Found", "Access Denied")), text[:800]
    assert drawn, f"the grid never showed run {run_id}; the page says:\n{text[:1500]}"
    assert MAIN in text and all(task_id in text for task_id in task_ids), text[:1500]
    # A real picture: the viewport asked for, and no blank page (one colour nearly everywhere).
    with Image.open(png) as image:
        assert image.size == (1400, 900) and image.format == "PNG"
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    colours, counts = np.unique(pixels, axis=0, return_counts=True)
    assert len(colours) > 50 and counts.max() / len(pixels) < 0.95, (len(colours), counts.max() / len(pixels))


def test_stop_ends_every_process_it_started(running):
    pids = [json.loads((HOME / "pids" / f"{name}.pid").read_text())["pid"] for name in services.ORDER]
    assert services.marked_processes(HOME) != []
    assert services.stop(HOME, out=lambda _line: None) == []
    assert services.marked_processes(HOME) == []
    assert not any(services.is_running(pid) for pid in pids)
    assert not any((HOME / "pids").glob("*.pid"))
