"""
### dql_maintenance — weekly retention: remove the nights, versions and checkpoints no longer kept

`plan_retention` lists what the `retention` section of the config no longer keeps (old partitions of
each warehouse layer, report folders, local export dates, the nights' baselines, registry versions,
stale training checkpoints) with the bytes each frees; `prune` then removes what a plan made at that
moment lists, exactly as `dqlrec prune` does (`dqlrec prune --dry-run` shows the same list by hand).

**Never removed:** the champion, a pinned version (`retention.pinned_versions`), a version the promotion
log names within `retention.promotion_days`, the model a rerun of a kept night starts from, or any folder
of a run date whose run-date lock is held: a nightly run that is writing a date keeps it whole (prune
takes each date's lock without waiting and skips a date another run holds).

**Params.** `dry_run` (default false): plan and log only. XCom carries counts and bytes, never paths.

Runs on Sundays at 05:00 UTC, after the night. Imports airflow, pendulum and the standard library at parse
time; `dql_model` inside the tasks only. Bad input (a refused config value) fails at once, without retries.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.sdk import DAG, Param, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

DAG_ID = Path(__file__).stem


def _config():
    from dql_model.config import load_config
    from dql_model.errors import InputError

    try:
        return load_config()
    except InputError as error:  # a refused config value: retrying cannot fix it
        raise AirflowFailException(str(error)) from error


def _log(lines: list[dict], notes: list[str]) -> None:
    for row in lines:
        print(f"[dqlrec] {row['bytes']:>12} B  {row['layer']:<26} {row['path']}  ({row['reason']})", flush=True)
    for note in notes:
        print(f"[dqlrec] note: {note}", flush=True)


with DAG(
    dag_id=DAG_ID,
    doc_md=__doc__,
    schedule="0 5 * * 0",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "dqlrec", "retries": 2, "retry_delay": timedelta(minutes=5)},
    params={
        "dry_run": Param(
            False,
            type="boolean",
            title="Dry run",
            description="Only list what retention would remove and the bytes it would free; remove nothing.",
        ),
    },
    tags=["dqlrec", "maintenance"],
) as dag:

    @task
    def plan_retention() -> dict:
        """What a prune would remove now: logged line by line; counts and bytes to XCom."""
        from dql_model.pipeline import prune

        planned = prune.prune(_config(), dry_run=True)
        _log(planned["removals"], planned["notes"])
        print(f"[dqlrec] retention plan: {len(planned['removals'])} folders, {planned['bytes']} bytes", flush=True)
        return {"folders": len(planned["removals"]), "bytes": planned["bytes"]}

    @task
    def apply_retention(planned: dict) -> dict:
        """Remove what retention no longer keeps (a plan made now, the one it logs); nothing with dry_run."""
        from dql_model.pipeline import prune

        if get_current_context()["params"].get("dry_run"):
            print(f"[dqlrec] dry run: nothing removed ({planned['folders']} folders planned)", flush=True)
            return {"removed": 0, "skipped": 0, "bytes": 0}
        done = prune.prune(_config(), dry_run=False)
        _log(done["removed"], done["notes"])
        print(
            f"[dqlrec] pruned {len(done['removed'])} folders, {done['bytes']} bytes; "
            f"{len(done['skipped'])} skipped (locked or changed since the plan)",
            flush=True,
        )
        return {"removed": len(done["removed"]), "skipped": len(done["skipped"]), "bytes": done["bytes"]}

    apply_retention(plan_retention())
