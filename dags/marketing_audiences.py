"""
### marketing_audiences — per-category campaign audiences from the published recommendations

An example of marketing's side of the recommendations asset. The DAG has no clock: it runs when
`dql_recommendations` publishes a date (the asset `dqlrec_recommendations`), reads **the published
run date from the triggering asset event's extra** (never from its own logical date), and builds the
table `campaign_audiences` for that date: the users whose top-K is dominated by one category (at least
`min_share` of their list), one audience per category. It writes `marketing/campaign_audiences/run_date=D/`
in the warehouse, replacing that partition whole, so a rerun of a date gives the same table.

If several dates were published before the DAG ran, each date is built. A manual trigger must name
the `run_date` to (re)build. `dql_model.publishing.audiences` holds the rule; this file imports airflow, pendulum
and `dql_model.contract.steps` (standard library only) at parse time.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.sdk import DAG, Asset, Param, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from dql_model.contract import steps

DAG_ID = Path(__file__).stem
RECOMMENDATIONS_ASSET = Asset(name=steps.RECOMMENDATIONS_ASSET_NAME, uri=steps.RECOMMENDATIONS_ASSET_URI)

with DAG(
    dag_id=DAG_ID,
    doc_md=__doc__,
    schedule=[RECOMMENDATIONS_ASSET],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "marketing", "retries": 2, "retry_delay": timedelta(minutes=2)},
    params={
        "run_date": Param(
            "",
            type="string",
            title="Run date",
            description="Published date to (re)build (YYYY-MM-DD). Empty: the dates in the triggering asset events.",
            pattern=r"^(\d{4}-\d{2}-\d{2})?$",
        ),
        "min_share": Param(
            0.6,
            type="number",
            exclusiveMinimum=0.5,
            maximum=1.0,
            title="Minimum category share",
            description="Share of a user's top-K in one category that puts the user in that category's audience.",
        ),
    },
    tags=["dqlrec", "marketing"],
) as dag:

    @task
    def published_run_dates() -> list[str]:
        """The run dates named by the triggering asset events (or the param of a manual trigger)."""
        from dql_model.contract import schema

        context = get_current_context()
        chosen = context["params"].get("run_date") or ""
        if chosen:
            return [schema.iso_date(chosen)]
        events = context["triggering_asset_events"]
        published = events[RECOMMENDATIONS_ASSET] if RECOMMENDATIONS_ASSET in events else []
        dates = sorted({schema.iso_date(event.extra["run_date"]) for event in published})
        if not dates:
            raise AirflowFailException(
                f"no {steps.RECOMMENDATIONS_ASSET_NAME} asset event triggered this run; "
                "trigger it with the run_date param to build a date by hand"
            )
        print(f"[dqlrec] audiences for published run date(s) {', '.join(dates)}", flush=True)
        return dates

    @task
    def build_campaign_audiences(run_dates: list[str]) -> list[dict]:
        from dql_model.config import load_config
        from dql_model.publishing import audiences

        cfg, min_share = load_config(), float(get_current_context()["params"]["min_share"])
        built = [audiences.write_campaign_audiences(cfg, day, min_share=min_share) for day in run_dates]
        for summary in built:
            print(f"[dqlrec] campaign audiences {summary['run_date']}: {summary['rows']} users, {summary['audiences']}", flush=True)
        return built

    build_campaign_audiences(published_run_dates())
