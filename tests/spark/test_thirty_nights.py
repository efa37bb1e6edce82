"""Thirty nights of the real pipeline on a tiny shop with retention on, pruned after every night.

A month of a shop: each day the simulator's events and impressions of that day arrive in the raw
tables (the shop is generated once, outside the installation), then the nightly steps run in the
DAG's order (``tasks.run_steps`` over ``steps.STEPS``: both Great Expectations gates,
jobs/build_training_data.py in the session-wide Spark session, training warm-started from the
champion beside its supervised baseline, the gate with its off-policy estimates, scoring, publishing
to the warehouse and a local export, the report), then the maintenance DAG's prune: a dry run, then
the prune.

Pruned after every night, not weekly as dql_maintenance is scheduled: the keep rules count dated
folders, not days since the last prune, so a weekly prune removes the union of what six nightly
ones would; nightly, each of the 30 nights checks the dry run against the prune (weekly: 4), and the
storage after each prune is the steady state the windows promise (weekly, it saw-tooths by up to six
nights of writes, measured by three or four prunes).

Some windows are shorter than what a night reaches back to, on purpose: curated_nights 2 against a
4-day training window (whose transitions start from the user_states of the night before it) and 3
days of impressions (ranked from the user_states of the nights they were served from); raw_nights
is the least the config accepts. The nights then show that a prune keeps what a later night reads.

The clock: the night of run date D runs at 02:00 UTC on D + 1; the promotion log's times and the
prune's "now" follow it (the 30 nights take minutes of wall time, and ``retention.promotion_days``
counts days).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import itertools
import json
import os
import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml

import jobs.build_training_data
from dql_model.config import Config
from dql_model.contract import schema, steps
from dql_model.judging import history
from dql_model.learning import registry
from dql_model.pipeline import prune, tasks
from dql_model.publishing import publish
from dql_model.simulation import simulator
from dql_model.warehouse import retention, storage
from tests.conftest import make_tiny_config

pytestmark = [pytest.mark.spark, pytest.mark.slow]

NIGHTS = 30
HISTORY_DAYS = 4
"""Days of events before the first night (its training window)."""
TRAIN_DAYS = 4
LOOKBACK_DAYS = 3
OPE_DAYS = 3
DRIFT_NIGHTS = 3
WINDOWS = {
    "raw_nights": TRAIN_DAYS + LOOKBACK_DAYS,  # the least the config accepts: what a night reads
    "curated_nights": 2,
    "output_nights": 3,
    "export_nights": 3,
    "report_nights": 4,
    "baseline_nights": 2,
    "registry_versions": 3,
    "promotion_days": 3,
}
PROMOTION_LOG = registry.PROMOTIONS
SMALL_DATA_SPARK = {
    "spark.sql.adaptive.enabled": "false",
    "spark.sql.codegen.wholeStage": "false",
    "spark.sql.codegen.factoryMode": "NO_CODEGEN",
}
"""Session settings for the month, restored after it. The Spark job is most of a night's cost here
(measured on 2 cores: the JVM 8-16 s of CPU a night, Python 2.5 s); on a few hundred rows, compiling
each query's code and re-planning it adaptively cost more than they save: interpreted and planned
once, the JVM's CPU a night fell to 5-6 s. The plans compute the same tables."""


@dataclass
class Night:
    """What one night left behind, recorded right after its prune."""

    run_date: str
    listed: dict[str, Any]
    """prune(dry_run=True) made after the night."""
    done: dict[str, Any]
    """prune(dry_run=False) right after it."""
    bytes: int
    """Everything the installation stores after the prune, the promotion log aside (it only grows)."""
    dated: dict[str, int]
    """Dated folders (``<column>=YYYY-MM-DD``) per parent folder, relative to the installation."""
    undated: int
    """Bytes outside the dated folders and the model versions (the promotion log aside)."""
    versions: list[str]
    refits: dict[str, str]
    """Refit version -> the version it is the refit of (``registry.refit_bases``)."""
    champion: str
    champion_files: dict[str, str]
    """sha256 of each file of the champion's folder after the prune."""
    etl: dict[str, Any]
    """build_training_data's summary of the night."""
    evaluation: dict[str, Any]
    log: bytes
    """The promotion log after the night."""
    raw_before: set[str] = field(default_factory=set)
    """The raw events partitions stored when the night started."""


@dataclass
class Month:
    cfg: Config
    nights: list[Night]
    champion_digests: dict[str, dict[str, str]]
    """Version -> sha256 of its files when the gate made it champion."""
    rerun: tuple[pa.Table, pa.Table]
    """The last night's recommendations, as first published and after a rerun of the night."""


def night_config(root: Path) -> Config:
    """The tiny shop (40 users, 60 items, about two events per user a day) and the cheapest honest night:
    one epoch, small dims, a few simulated shoppers, 50 bootstrap resamples."""
    end = dt.date(2026, 11, 1) + dt.timedelta(days=HISTORY_DAYS + NIGHTS - 1)
    return make_tiny_config(root).replace(
        publish={"export_uri": str(root / "export")},
        simulator={
            "n_users": 40, "n_items": 60, "n_categories": 4, "n_days": HISTORY_DAYS + NIGHTS,
            "end_date": end.isoformat(), "sessions_per_user_day": 0.5, "mean_session_events": 4.0,
            # every day after the first is shown the logging policy's lists: impressions each night
            "logged_days": HISTORY_DAYS + NIGHTS - 1,
        },
        etl={"train_window": f"{TRAIN_DAYS}d", "val_days": 1, "lookback_days": LOOKBACK_DAYS},
        train={"epochs": 1, "device": "cpu"},
        eval={"baseline_trials": 1, "sim_users": 20, "sim_seeds": 2, "sim_steps": 5, "ope_days": OPE_DAYS},
        ope={"n_bootstrap": 50},
        quality={"drift_nights": DRIFT_NIGHTS},
        retention=WINDOWS,
    )  # fmt: skip


def files_digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*")) if path.is_file()
    }  # fmt: skip


def inventory(root: Path, registry_root: Path) -> tuple[dict[str, int], int]:
    """(dated folders per parent folder, bytes of the files outside every dated folder and model version)
    under ``root``, found by walking it rather than from retention's list of layers, so a layer that list
    forgot shows up too. The promotion log is left out of the bytes: it only grows, by design."""
    counts: dict[str, int] = {}
    undated = 0
    versions = set(registry.list_versions(registry_root))
    for folder, children, files in os.walk(root):
        here = Path(folder)
        for child in list(children):
            if storage.DATED.match(child) or (here == registry_root and child in versions):
                children.remove(child)  # counted, not entered: what is inside goes with the night or version
                if storage.DATED.match(child):
                    parent = str(here.relative_to(root))
                    counts[parent] = counts.get(parent, 0) + 1
        undated += sum((here / name).stat().st_size for name in files if here / name != registry_root / PROMOTION_LOG)
    return counts, undated


def arrive(source: Config, cfg: Config, day: str) -> None:
    """The day's raw events and impressions land in the installation's raw tables."""
    for table in (schema.EVENTS, schema.IMPRESSIONS):
        folder = Path(source.layout.partition(table, day))
        if folder.is_dir():
            shutil.copytree(folder, cfg.layout.partition(table, day))


def run_night(cfg: Config, config_file: Path, run_date: str) -> None:
    etl = lambda job: jobs.build_training_data.main(["--run-date", run_date, "--config", str(config_file)])  # noqa: E731
    assert steps.STEPS[1].job == "build_training_data"  # the one Spark step, run here in the test's session
    tasks.run_steps(steps.STEPS, run_date, cfg=cfg, run_job=etl, warn=print)


def recommendations(cfg: Config, run_date: str) -> pa.Table:
    table = storage.read_partition(cfg.layout.partition(schema.RECOMMENDATIONS, run_date))
    table = table.drop_columns([schema.GENERATED_AT])
    return table.sort_by([(schema.USER_ID, "ascending"), (schema.RANK, "ascending")])


@contextlib.contextmanager
def session_settings(spark, settings: dict[str, str]):
    before = {key: spark.conf.get(key, None) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


@pytest.fixture(scope="module")
def month(spark, tmp_path_factory) -> Month:
    base = tmp_path_factory.mktemp("thirty-nights")
    root = base / "installation"
    cfg = night_config(root)
    source = cfg.replace(warehouse={"root": str(base / "shop")})
    shop = simulator.write_shop(source, progress=lambda _: None)
    days = [str(dt.date.fromisoformat(shop["first_date"]) + dt.timedelta(days=d)) for d in range(shop["days"])]
    assert len(days) == HISTORY_DAYS + NIGHTS
    shutil.copytree(source.layout.table(schema.ITEMS), cfg.layout.table(schema.ITEMS))
    for day in days[:HISTORY_DAYS]:
        arrive(source, cfg, day)
    config_file = base / "dqlrec.yaml"
    config_file.write_text(yaml.safe_dump(cfg.to_dict()))

    clock = {"now": dt.datetime(2026, 11, 1, tzinfo=dt.UTC)}

    class Clock(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return clock["now"]

    nights, digests = [], {}
    log = Path(cfg.registry.root) / PROMOTION_LOG
    with pytest.MonkeyPatch.context() as patch, session_settings(spark, SMALL_DATA_SPARK):
        patch.setattr(registry, "datetime", Clock)
        for run_date in days[HISTORY_DAYS:]:
            clock["now"] = dt.datetime.combine(dt.date.fromisoformat(run_date) + dt.timedelta(days=1), dt.time(2), dt.UTC)
            arrive(source, cfg, run_date)
            raw_before = set(storage.dated_folders(cfg.layout.table(schema.EVENTS)))
            run_night(cfg, config_file, run_date)
            champion = registry.champion_version(cfg.registry.root)
            digests.setdefault(champion, files_digest(Path(cfg.registry.root) / champion))

            listed = prune.prune(cfg, dry_run=True, now=clock["now"], progress=lambda _: None)
            done = prune.prune(cfg, dry_run=False, now=clock["now"], progress=lambda _: None)
            dated, undated = inventory(root, Path(cfg.registry.root))
            nights.append(
                Night(
                    run_date=run_date, listed=listed, done=done,
                    bytes=retention.folder_bytes(root) - log.stat().st_size, dated=dated, undated=undated,
                    versions=registry.list_versions(cfg.registry.root),
                    refits=registry.refit_bases(cfg.registry.root), champion=champion,
                    champion_files=files_digest(Path(cfg.registry.root) / champion),
                    etl=storage.read_json(cfg.layout.etl_summary(run_date)),
                    evaluation=storage.read_json(Path(cfg.layout.report(run_date)) / "evaluation.json"),
                    log=log.read_bytes(), raw_before=raw_before,
                )
            )  # fmt: skip
        last = days[-1]
        first_run = recommendations(cfg, last)
        run_night(cfg, config_file, last)  # a rerun of the last night, after its prune
        rerun = recommendations(cfg, last)
    return Month(cfg, nights, digests, (first_run, rerun))


def test_each_prune_removes_exactly_what_its_dry_run_listed(month):
    pruning = 0
    for night in month.nights:
        listed = [(r["path"], r["bytes"]) for r in night.listed["removals"]]
        removed = [(r["path"], r["bytes"]) for r in night.done["removed"]]
        assert removed == listed, night.run_date
        assert night.done["skipped"] == [] and night.done["bytes"] == night.listed["bytes"], night.run_date
        assert not any(Path(path).exists() for path, _ in removed), night.run_date
        pruning += bool(removed)
    assert pruning >= NIGHTS - WINDOWS["raw_nights"]  # every night once the shortest windows filled


def full_from(month: Month) -> int:
    """Index of the first night after whose prune every layer holds as many dated folders as it ever will."""
    last = month.nights[-1].dated
    return next(i for i, night in enumerate(month.nights) if all(n.dated == last for n in month.nights[i:]))


def test_storage_is_flat_once_every_window_is_full(month):
    nights = month.nights
    full = full_from(month)
    # The longest window: raw_nights (7) over the 4 days before the first night, and the user_states the
    # next night and reruns read (below), which exist once TRAIN_DAYS nights ran.
    assert full <= WINDOWS["raw_nights"], [n.dated for n in nights]
    kept = nights[-1].dated
    for layer in ("warehouse/raw/events", "warehouse/raw/impressions"):
        assert kept[layer] == WINDOWS["raw_nights"]
    for layer in ("transitions", "item_index", "quarantine", "impressions_quarantine"):
        assert kept[f"warehouse/curated/{layer}"] == WINDOWS["curated_nights"]
    # Beside the 2 newest (D-1, D): the states seeding the transitions of reruns of D-1 and D and of the
    # next night (D-5, D-4, D-3: the night before each one's 4-day window), and those the off-policy
    # estimates of those three nights rank the last 3 shown days from (D-4..D-2, the day before each).
    assert kept["warehouse/curated/user_states"] == kept["warehouse/curated/_runs"] == WINDOWS["curated_nights"] + 4
    assert kept["warehouse/output/recommendations"] == kept["warehouse/staging/_runs"] == WINDOWS["output_nights"]
    assert kept["export"] == WINDOWS["export_nights"]
    assert kept["warehouse/models/baselines"] == WINDOWS["baseline_nights"]
    assert kept["warehouse/reports"] == WINDOWS["report_nights"]
    for site in ("validations", "_store/validation_results_store"):  # Data Docs: per gate's suite
        for suite in ("dqlrec_events", "dqlrec_recommendations"):
            assert kept[f"warehouse/reports/data_docs/{site}/{suite}"] == WINDOWS["report_nights"]
    assert set(kept) == set(nights[full].dated)  # no layer appears later on

    # Registry: the newest 3, the champion, what the promotion log names within 3 days (each night's line
    # names its version and the one before), and the incumbents of reruns of the kept curated nights; each
    # with its refit, if it has one, which stays and goes with it and is not counted.
    assert any(n.refits for n in nights)  # the month's nights refit: this checks the pairing
    bases = [[v for v in n.versions if v not in n.refits] for n in nights]
    bound = WINDOWS["registry_versions"] + 1 + (WINDOWS["promotion_days"] + 2) + WINDOWS["curated_nights"]
    assert all(len(b) <= bound for b in bases), [len(b) for b in bases]
    assert max(map(len, bases[full + 10 :])) <= max(map(len, bases[full : full + 10]))
    for before, after in itertools.pairwise(nights):
        assert set(after.refits.values()) <= set(after.versions), after.run_date  # no refit outlives its base
        kept = set(before.versions) & set(after.versions)
        assert {r for r, b in before.refits.items() if b in kept} <= kept, after.run_date  # nor goes before it

    # Outside the dated folders and model versions (the Data Docs site's assets, index and expectation
    # pages, the items table, the champion pointer): the same bytes but for a few digits of the night's
    # figures and dates in the Data Docs pages (measured: 3 bytes); one line appended per night would break it.
    undated = [n.undated for n in nights[full:]]
    assert max(undated) - min(undated) <= 64, [n.undated for n in nights]

    # In all: the same count of dated folders and versions night after night, but each night's size
    # follows its day's data (a Poisson count of sessions of 40 shoppers, the digits of the report's
    # figures), so the total wanders (measured: within 79 kB, 1.3 %): it may not drift upwards. A night writes
    # about what its prune frees (~0.55 MB: its report and Data Docs pages, its model version, its
    # partitions); a leak of anything it writes would add at least that layer's share every night.
    # Tolerances: the wander stays within a quarter of one night's writes, and the least-squares trend
    # over the nights since the windows filled is under 1 % of one night's writes per night.
    sizes = [n.bytes for n in nights[full:]]
    night_writes = sum(n.done["bytes"] for n in nights[full:]) / len(sizes)
    assert max(sizes) - min(sizes) < night_writes / 4, sizes
    slope = statistics.linear_regression(range(len(sizes)), sizes).slope
    assert slope < night_writes / 100, (slope, night_writes, sizes)


def test_no_night_lost_what_it_reads(month):
    """After each prune the next night still ran incrementally from the states before its window, read
    only raw partitions that were there, and ranked every shown day of its off-policy window."""
    first = dt.date.fromisoformat(month.nights[0].run_date)
    for night in month.nights[1:]:
        run_date = dt.date.fromisoformat(night.run_date)
        assert night.etl["mode"] == "incremental", night.run_date
        assert night.etl["previous_user_states"] == str(run_date - dt.timedelta(days=1))
        # Once the night before its window ran, its states seed the window's transitions, and only the
        # window's raw partitions and LOOKBACK_DAYS before them are read. (The first night's full build
        # also wrote the states of the nights its impressions were served from, but no run summary says
        # how they were built: not a seed, and the nights before read every raw partition still there.)
        seed = run_date - dt.timedelta(days=TRAIN_DAYS)
        if seed >= first:
            assert night.etl["transitions_seed_states"] == str(seed), night.run_date
            read_from = seed + dt.timedelta(days=1 - LOOKBACK_DAYS)
            assert night.etl["partitions"]["read_from"] == str(read_from), night.run_date
            read = {str(read_from + dt.timedelta(days=d)) for d in range((run_date - read_from).days + 1)}
            assert read <= night.raw_before, (night.run_date, sorted(read - night.raw_before))
        ope = night.evaluation["ope"]
        assert ope["skipped_days"] == [] and ope["rows_used"] > 0, night.run_date


def test_the_champion_stays_whole(month):
    for night in month.nights:
        assert night.champion in night.versions, night.run_date
        assert night.champion_files == month.champion_digests[night.champion], night.run_date
    promoted = sum(bool(n.evaluation["promoted"]) for n in month.nights)
    assert promoted > 1  # the champion moved: several champions were guarded in turn
    model, meta = registry.load_model(Path(month.cfg.registry.root) / month.nights[-1].champion)
    assert meta["version"] == month.nights[-1].champion  # its digests still match: loadable


def test_the_last_nights_are_whole_and_readable(month):
    cfg, dates = month.cfg, [n.run_date for n in month.nights]
    for run_date in dates[-WINDOWS["output_nights"] :]:
        table = storage.read_partition(cfg.layout.partition(schema.RECOMMENDATIONS, run_date))
        assert table.num_rows > 0
        assert publish.read_export(cfg.publish.export_uri, run_date).equals(table)  # checked against its manifest
    assert not Path(cfg.layout.partition(schema.RECOMMENDATIONS, dates[-WINDOWS["output_nights"] - 1])).exists()
    assert not (Path(cfg.publish.export_uri) / f"run_date={dates[-WINDOWS['export_nights'] - 1]}").exists()
    listed = history.night_history(cfg)  # what `dqlrec runs` shows
    assert [r["run_date"] for r in listed] == dates[-WINDOWS["report_nights"] :]
    assert all(r["finished"] and r["rows"] > 0 and r["decision"] != "not gated" for r in listed)
    for run_date in dates[-WINDOWS["report_nights"] :]:
        assert (Path(cfg.layout.report(run_date)) / "report.md").read_text().strip()


def test_the_promotion_log_only_grows(month):
    before = b""
    for night in month.nights:
        assert night.log.startswith(before), night.run_date  # earlier lines never change or go
        before = night.log
    lines = [json.loads(line) for line in month.nights[-1].log.decode().splitlines()]
    assert len(lines) == sum(bool(n.evaluation["promoted"]) for n in month.nights)
    assert [line["version"] for line in lines][-1] == month.nights[-1].champion
    assert all(a["version"] == b["previous"] for a, b in itertools.pairwise(lines))


def test_a_rerun_of_the_last_night_after_its_prune_publishes_the_same_lists(month):
    first, rerun = month.rerun
    assert first.num_rows > 0 and rerun.equals(first)
