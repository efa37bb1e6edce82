"""The warehouse layout: where every table, partition, run summary, staging folder and report lives.

This module is the one owner of those paths; everything else asks it (``cfg.layout``)::

    <root>/raw/events/event_date=D/          the shop's events, one partition per day (input)
    <root>/raw/items/                        the catalogue (input, not partitioned)
    <root>/raw/import_quarantine/source_file=F/   rows `dqlrec import` refused from file F, with rule and line
    <root>/curated/<table>/run_date=D/       item_index, user_states, transitions, quarantine
    <root>/curated/_runs/run_date=D/build_training_data.json   the ETL job's counts
    <root>/output/recommendations/run_date=D/                  what marketing reads
    <root>/staging/recommendations/run_date=D/                 scored, not yet validated
    <root>/staging/_runs/run_date=D/score_users.json           the scoring engine's counts
    <root>/staging/_import/<id>/             chunks of one `dqlrec import` in progress (removed at its end)
    <root>/reports/run_date=D/               evaluation.json, summary.json, report.md, plots
    <root>/models/baselines/run_date=D/V/    the night's supervised baseline (registry-shaped, never a champion)
    <root>/marketing/<table>/run_date=D/     downstream teams' tables built from the output
    <root>/reports/data_docs/                Great Expectations Data Docs of every night's gates (one site)
    <root>/<layer>/_swap/<table>/            partitions being assembled or retired (swap_area)
    <root>/_locks/run_date=D.lock            the run date's writer lock (dql_model.warehouse.locks)
    <root>/_locks/import.lock                held by the `dqlrec import` under way (one at a time)
    <root>/_locks/tune.lock                  held by the `dqlrec tune` under way (one at a time)
    <root>/tuning/studies.db                 the Optuna studies of `dqlrec tune` (SQLite; a killed search resumes)
    <root>/tuning/tuned.yaml                 the best settings of the last finished search, read by load_config

Paths are strings, not ``Path`` objects, so a root like ``hdfs://...`` survives for the Spark
jobs; local callers wrap them in ``Path``. Writers put a partition together in the table's swap
area (``swap_area``), a sibling of the table folder rather than a folder inside it: a reader's glob
``<table>/*/*.parquet`` (DuckDB matches hidden names too) never reaches it, and it lies on the same
filesystem, so the finished partition is moved into place by a rename.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from dql_model.contract import schema

RAW, CURATED, OUTPUT, STAGING, REPORTS = "raw", "curated", "output", "staging", "reports"
MARKETING = "marketing"
"""Layer of the downstream tables marketing builds from the recommendations (dags/marketing_audiences.py)."""
RUNS = "_runs"
"""Folder of per-run JSON summaries inside a layer (hidden from table readers by its '_')."""
LAYER = {
    schema.EVENTS: RAW,
    schema.ITEMS: RAW,
    schema.IMPRESSIONS: RAW,
    schema.IMPORT_QUARANTINE: RAW,
    schema.ITEM_INDEX: CURATED,
    schema.USER_STATES: CURATED,
    schema.TRANSITIONS: CURATED,
    schema.QUARANTINE: CURATED,
    schema.IMPRESSIONS_QUARANTINE: CURATED,
    schema.RECOMMENDATIONS: OUTPUT,
}
"""Table -> the layer folder it lives in."""
ETL_JOB = "build_training_data"
"""The Spark job that builds the curated tables; its summary is <curated>/_runs/.../<ETL_JOB>.json."""
SCORING_SUMMARY = "score_users"
"""Name of the scoring engines' summary in <staging>/_runs/run_date=D/."""
HIDDEN_PREFIXES = (".", "_")
"""Names that table readers skip: staging folders, summaries, _SUCCESS markers."""
SWAP = "_swap"
"""Folder beside a table's folder where its partitions are assembled and retired (see swap_area)."""
LOCKS = "_locks"
"""Folder under the warehouse root with one lock file per run date being written."""
TUNING = "tuning"
"""Folder under the warehouse root of the hyper-parameter search (dql_model.pipeline.tuning)."""
DATA_DOCS = "data_docs"
DATA_DOCS_STORE = "_store"
"""The folder inside the Data Docs site that keeps the suites and validation results its pages render."""
DATA_DOCS_DATED = ("validations", f"{DATA_DOCS_STORE}/validation_results_store")
"""Inside the Data Docs site: the folders holding one ``<suite>/<run name>`` folder per validation, whose
run names are dated partition names (``event_date=D``, ``run_date=D``)."""
"""Folder of a run's report with the Great Expectations Data Docs of its gates."""


def swap_area(table_root: str) -> str:
    """Where the partitions of the table at ``table_root`` are assembled: ``<parent>/_swap/<table>``.

    Outside the table folder, so no reader of the table sees what lies there, and beside it, on the
    same filesystem, so a partition moves between the two by an atomic rename.
    """
    parent, _, name = table_root.rstrip("/").rpartition("/")
    return f"{parent}/{SWAP}/{name}"


def hidden_sibling(name: str, tag: str) -> str:
    """A fresh hidden name beside ``name``: ``.<name>.<tag>-<8 hex>`` (tag: staging, retired, tmp)."""
    return f".{name}.{tag}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Layout:
    """The paths of one warehouse, rooted at ``root`` (``cfg.layout`` builds it from the config)."""

    root: str

    def _join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def table(self, table: str) -> str:
        """Root folder of a table (its partitions are folders below it)."""
        try:
            return self._join(LAYER[table], table)
        except KeyError:
            raise KeyError(f"no table {table!r} in the warehouse; known: {sorted(LAYER)}") from None

    @staticmethod
    def partition_column(table: str) -> str:
        """event_date for the raw events (the day the events happened), shown_date for impressions
        (the day the lists were shown), run_date for the rest."""
        return {schema.EVENTS: schema.EVENT_DATE, schema.IMPRESSIONS: schema.SHOWN_DATE}.get(table, schema.RUN_DATE)

    def partition(self, table: str, day: str) -> str:
        """Folder of one partition: ``raw/events/event_date=D`` or ``<layer>/<table>/run_date=D``."""
        if table == schema.ITEMS:
            raise ValueError("raw items are not partitioned: use Layout.table(schema.ITEMS)")
        return f"{self.table(table)}/{self.partition_column(table)}={day}"

    def import_quarantine(self, source_file: str) -> str:
        """Rows `dqlrec import` refused from one input file (by its name): ``raw/import_quarantine/source_file=F``."""
        return f"{self.table(schema.IMPORT_QUARANTINE)}/{schema.SOURCE_FILE}={source_file}"

    def import_spill(self, import_id: str) -> str:
        """Scratch folder of one import in progress (chunks per date), hidden from every reader."""
        return self._join(STAGING, "_import", import_id)

    def import_lock(self) -> str:
        """The lock file of `dqlrec import`: one import into this warehouse at a time."""
        return self._join(LOCKS, "import.lock")

    def tuning_study(self) -> str:
        """The SQLite file of the Optuna studies `dqlrec tune` runs (one study per train.mode and night)."""
        return self._join(TUNING, "studies.db")

    def tuned_settings(self) -> str:
        """The tuned settings file: the best trial of the last finished search (config.TunedSettings)."""
        return self._join(TUNING, "tuned.yaml")

    def tune_lock(self) -> str:
        """The lock file of `dqlrec tune`: one search of this warehouse at a time."""
        return self._join(LOCKS, "tune.lock")

    def etl_summary(self, run_date: str) -> str:
        """The counts the ETL job writes for a run date (input = accepted + quarantined, ...)."""
        return self._join(CURATED, RUNS, f"{schema.RUN_DATE}={run_date}", f"{ETL_JOB}.json")

    def staged(self, table: str, run_date: str) -> str:
        """Where a run date's partition waits, unseen by readers, until it is validated and published."""
        return self._join(STAGING, table, f"{schema.RUN_DATE}={run_date}")

    def scoring_summary(self, run_date: str) -> str:
        """Counts of the staged recommendations, written by either scoring engine."""
        return self._join(STAGING, RUNS, f"{schema.RUN_DATE}={run_date}", f"{SCORING_SUMMARY}.json")

    def run_date_lock(self, run_date: str) -> str:
        """The lock file a writer of the run date's outputs holds (dql_model.warehouse.locks)."""
        return self._join(LOCKS, f"{schema.RUN_DATE}={run_date}.lock")

    def data_docs(self) -> str:
        """The one Great Expectations Data Docs site of every night's gates (index.html inside): each
        validation adds its page and the index lists them all, newest first."""
        return self._join(REPORTS, DATA_DOCS)

    def baseline_models(self, run_date: str) -> str:
        """The night's trained baselines, one registry-shaped version folder each (never champions)."""
        return self._join("models", "baselines", f"run_date={run_date}")

    def reports(self) -> str:
        """Folder with one report folder per run date."""
        return self._join(REPORTS)

    def report(self, run_date: str) -> str:
        """The report folder of a run date."""
        return self._join(REPORTS, f"{schema.RUN_DATE}={run_date}")

    def marketing(self, table: str, run_date: str) -> str:
        """A run date's partition of a downstream marketing table (e.g. campaign_audiences)."""
        return self._join(MARKETING, table, f"{schema.RUN_DATE}={run_date}")
