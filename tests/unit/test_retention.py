"""Retention (dql_model.warehouse.retention, dql_model.pipeline.prune): old nights go, what a night, a rerun
or a rollback needs stays, and `prune` removes exactly what `prune --dry-run` lists."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
from pathlib import Path

import pyarrow as pa
import pytest

from dql_model.config import Config
from dql_model.contract import layout, schema
from dql_model.learning import registry
from dql_model.pipeline import prune
from dql_model.warehouse import retention, storage
from tests.factories import write_parquet

START = dt.date(2026, 10, 1)
TABLE = pa.table({"user_id": ["u1", "u2", "u3"], "item_id": ["i1", "i2", "i3"], "score": [0.5, 0.25, 0.125]})


def night(n: int) -> str:
    return (START + dt.timedelta(days=n)).isoformat()


def config(tmp_path: Path, **retention_fields) -> Config:
    return Config().replace(
        warehouse={"root": str(tmp_path / "warehouse")},
        registry={"root": str(tmp_path / "models")},
        publish={"export_uri": str(tmp_path / "export")},
        retention=retention_fields,
    )


def fake_version(cfg: Config, run_date: str, *, warm_start_from: str | None = None, refit_of: str | None = None) -> str:
    """A registry-shaped version folder: what retention reads of one (weights file, data window)."""
    version = f"{run_date.replace('-', '')}-{abs(hash((run_date, refit_of))) % 16**8:08x}"
    folder = Path(cfg.registry.root) / version
    folder.mkdir(parents=True)
    (folder / registry.WEIGHTS).write_bytes(b"w" * 4096)
    window = {"run_date": run_date, "warm_start_from": warm_start_from, **({registry.REFIT_OF: refit_of} if refit_of else {})}
    (folder / registry.DATA_WINDOW).write_text(json.dumps(window))
    return version


def write_night(cfg: Config, run_date: str) -> None:
    """One night's folders in every layer retention knows, small and of the same size every night."""
    lay = cfg.layout
    write_parquet(Path(lay.partition(schema.EVENTS, run_date)), TABLE)
    for table in retention.CURATED_TABLES[:4]:
        write_parquet(Path(lay.partition(table, run_date)), TABLE)
    write_parquet(Path(lay.partition(schema.RECOMMENDATIONS, run_date)), TABLE)
    for path in (lay.etl_summary(run_date), Path(lay.report(run_date)) / "summary.json"):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps({"run_date": run_date}))
    write_parquet(Path(cfg.publish.export_uri) / f"run_date={run_date}", TABLE)
    write_parquet(Path(lay.baseline_models(run_date)) / "supervised", TABLE)
    for dated in layout.DATA_DOCS_DATED:  # the Data Docs site's page and stored result of each gate
        for suite, run in (("dqlrec_events", f"event_date={run_date}"), ("dqlrec_recommendations", f"run_date={run_date}")):
            page = Path(lay.data_docs()) / dated / suite / run / "20261001T010000.000000Z" / "dqlrec-frame.html"
            page.parent.mkdir(parents=True)
            page.write_text("<html>" + "x" * 1000)


def locked_by_another_run(cfg: Config, run_date: str) -> Path:
    """The lock file a live writer of ``run_date`` holds (this process's pid stands for a live one)."""
    path = Path(cfg.layout.run_date_lock(run_date))
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = {"token": "another-run", "step": "publish_recommendations", "pid": os.getpid(),
              "host": socket.gethostname(), "started_at": "2026-10-20T01:00:00+00:00"}  # fmt: skip
    path.write_text(json.dumps(holder))
    return path


def removed_layers(plan: retention.Plan) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for removal in plan.removals:
        out.setdefault(removal.layer, []).append(Path(removal.path).name)
    return out


def test_each_layer_keeps_its_newest_nights_and_raw_events_are_kept_by_default(tmp_path):
    cfg = config(tmp_path, curated_nights=2, output_nights=3, export_nights=3, report_nights=4, baseline_nights=1)
    for n in range(6):
        write_night(cfg, night(n))
    plan = prune.plan(cfg)
    by_layer = removed_layers(plan)
    assert "raw/events" not in by_layer  # retention.raw_nights 0: every raw partition stays
    assert by_layer["curated/user_states"] == [f"run_date={night(n)}" for n in range(4)]
    assert by_layer["curated/_runs"] == [f"run_date={night(n)}" for n in range(4)]
    assert by_layer["output/recommendations"] == [f"run_date={night(n)}" for n in range(3)]
    assert by_layer["export"] == [f"run_date={night(n)}" for n in range(3)]
    assert by_layer["reports"] == [f"run_date={night(n)}" for n in range(2)]
    per_suite = [f"event_date={night(n)}" for n in range(2)] + [f"run_date={night(n)}" for n in range(2)]
    assert by_layer["reports/data_docs"] == per_suite * 2  # the site's pages and the results they render
    assert by_layer["models/baselines"] == [f"run_date={night(n)}" for n in range(5)]
    assert all(r.bytes > 0 and "retention." in r.reason for r in plan.removals)
    assert plan.bytes == sum(retention.folder_bytes(p) for p in plan.paths())


def test_the_champion_a_pinned_version_and_recently_promoted_ones_are_never_removed(tmp_path):
    cfg = config(tmp_path, registry_versions=2, promotion_days=30, pinned_versions="PINNED")
    versions = [fake_version(cfg, night(n)) for n in range(8)]
    root = cfg.registry.root
    registry.set_champion(root, versions[1], why="gate")  # the log names versions[1] now
    registry.set_champion(root, versions[0], why="manual: back")  # champion: the oldest; previous: versions[1]
    cfg = cfg.replace(retention={"pinned_versions": versions[3]})

    plan = prune.plan(cfg)
    doomed = sorted(Path(p).name for p in plan.paths())
    assert doomed == [versions[2], versions[4], versions[5]]
    notes = "\n".join(plan.notes)
    assert f"kept registry version {versions[0]}: the champion" in notes
    assert f"kept registry version {versions[1]}: named by the promotion log" in notes
    assert f"kept registry version {versions[3]}: pinned" in notes

    done = prune.prune(cfg, dry_run=False)
    assert sorted(Path(r["path"]).name for r in done["removed"]) == doomed
    assert registry.list_versions(root) == [versions[0], versions[1], versions[3], versions[6], versions[7]]
    assert registry.champion_version(root) == versions[0]


def test_a_promotion_older_than_the_window_protects_nothing_but_the_champion(tmp_path):
    cfg = config(tmp_path, registry_versions=1, promotion_days=30)
    versions = [fake_version(cfg, night(n)) for n in range(4)]
    root = cfg.registry.root
    registry.set_champion(root, versions[1], why="gate")
    registry.set_champion(root, versions[0], why="manual: back")
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=31)
    doomed = sorted(Path(p).name for p in prune.plan(cfg, now=later).paths())
    assert doomed == [versions[1], versions[2]]  # versions[1] fell out of the promotion window; champion stays


def test_the_partitions_of_a_locked_run_date_are_never_removed(tmp_path):
    cfg = config(tmp_path, curated_nights=1, output_nights=1, export_nights=1, report_nights=1, baseline_nights=1)
    for n in range(3):
        write_night(cfg, night(n))
    before = prune.plan(cfg)  # made before the other run took the lock: it lists night 0
    assert any(r.run_date == night(0) for r in before.removals)

    lock = locked_by_another_run(cfg, night(0))
    after = prune.plan(cfg)
    assert {r.run_date for r in after.removals} == {night(1)}
    assert f"the run-date lock of {night(0)} is held" in "\n".join(after.notes)

    # A plan made before the lock was taken: apply takes each date's lock and skips the held one whole.
    outcome = retention.apply(cfg, before, progress=lambda message: None)
    assert {r.run_date for r in outcome.removed} == {night(1)}
    assert {r.run_date for r, _ in outcome.skipped} == {night(0)}
    assert all("is locked" in why for _, why in outcome.skipped)
    assert all(Path(r.path).exists() for r, _ in outcome.skipped)
    assert json.loads(lock.read_text())["token"] == "another-run"  # the holder's lock is untouched


def test_a_version_trained_for_a_locked_run_date_stays_until_its_gate_ran(tmp_path):
    cfg = config(tmp_path, registry_versions=1)
    versions = [fake_version(cfg, night(n)) for n in range(3)]
    locked_by_another_run(cfg, night(0))  # a rerun of night 0 trained versions[0]; its gate has not run
    assert sorted(Path(p).name for p in prune.plan(cfg).paths()) == [versions[1]]


def test_a_refit_stays_and_goes_with_its_base_and_is_not_counted_among_the_newest(tmp_path, monkeypatch):
    cfg = config(tmp_path, registry_versions=2, promotion_days=0)
    bases = [fake_version(cfg, night(n)) for n in range(5)]
    refit = {b: fake_version(cfg, night(n), refit_of=b) for n, b in enumerate(bases) if n != 3}  # night 3: no refit
    root = cfg.registry.root
    registry.set_champion(root, bases[0], why="gate")  # the champion scores through its refit

    plan = prune.plan(cfg)
    # The newest 2 are bases 3 and 4 (refits are not counted); 4's refit stays with it, 0's with the champion.
    doomed = sorted(Path(p).name for p in plan.paths())
    assert doomed == sorted([bases[1], refit[bases[1]], bases[2], refit[bases[2]]])
    reasons = {Path(r.path).name: r.reason for r in plan.removals}
    assert reasons[refit[bases[1]]].startswith(f"the refit of {bases[1]}, which goes: older than the newest 2")
    assert f"kept registry version {refit[bases[0]]}: the refit of {bases[0]}, kept as the champion" in plan.notes

    # The gate crowns bases[1] between the plan and its removal: it stays, and so does its refit.
    registry.set_champion(root, bases[1], why="gate")
    monkeypatch.setattr(prune, "plan", lambda cfg, now=None: plan)
    done = prune.prune(cfg, dry_run=False, progress=lambda _: None)
    assert sorted(Path(r["path"]).name for r in done["removed"]) == sorted([bases[2], refit[bases[2]]])
    assert {Path(r["path"]).name for r in done["skipped"]} == {bases[1], refit[bases[1]]}
    assert registry.refit_of(root, bases[1]) == refit[bases[1]]
    assert registry.refit_of(root, bases[0]) == refit[bases[0]]

    # A refit whose base is gone counts as a version of its own.
    orphan = {refit[bases[4]]: "20260101-00000000"}
    kept = retention.version_plan(root, [bases[3], refit[bases[4]]], keep=1, protected={}, follows=orphan)
    assert [Path(p).name for p in kept.paths()] == [bases[3]]


def test_stale_checkpoints_and_an_interrupted_prune_are_swept(tmp_path):
    cfg = config(tmp_path, checkpoint_days=7)
    checkpoints = Path(cfg.registry.root) / ".checkpoints"
    for key, age_days in (("old", 8), ("recent", 1)):
        (checkpoints / key).mkdir(parents=True)
        file = checkpoints / key / "epoch-0001.pt"
        file.write_bytes(b"c" * 100)
        stamp = dt.datetime.now(dt.UTC).timestamp() - age_days * 86400
        os.utime(file, (stamp, stamp))
    leftover = Path(cfg.layout.reports()) / ".run_date=2026-10-01.pruned-0123abcd"
    leftover.mkdir(parents=True)
    (leftover / "summary.json").write_text("{}")
    plan = prune.plan(cfg)
    assert sorted(plan.paths()) == sorted([str(checkpoints / "old"), str(leftover)])
    prune.prune(cfg, dry_run=False)
    assert not (checkpoints / "old").exists() and (checkpoints / "recent").exists() and not leftover.exists()


def test_thirty_nights_keep_storage_flat_and_prune_removes_exactly_what_the_dry_run_lists(tmp_path, monkeypatch):
    """Thirty nights with a nightly prune: after the longest window, each night adds what it prunes.

    Nights of a fixed size, so the bytes stay exactly flat and the registry's window is counted exactly;
    tests/spark/test_thirty_nights.py runs thirty real nights, whose sizes follow their data."""
    windows = {"raw_nights": 10, "curated_nights": 3, "output_nights": 5, "export_nights": 5, "report_nights": 7,
               "baseline_nights": 2, "registry_versions": 3, "promotion_days": 6}  # fmt: skip
    cfg = config(tmp_path, **windows)
    clock = {"now": dt.datetime(2026, 10, 1, 12, tzinfo=dt.UTC)}

    class Clock(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return clock["now"]

    monkeypatch.setattr(registry, "datetime", Clock)  # promotion log lines carry the simulated night's time
    log = Path(cfg.registry.root) / registry.PROMOTIONS
    sizes, previous = [], None
    for n in range(30):
        clock["now"] = dt.datetime.combine(START + dt.timedelta(days=n), dt.time(12), dt.UTC)
        write_night(cfg, night(n))
        version = fake_version(cfg, night(n), warm_start_from=previous)
        registry.set_champion(cfg.registry.root, version, why="gate: promoted")
        previous = version

        listed = prune.prune(cfg, dry_run=True, now=clock["now"])
        done = prune.prune(cfg, dry_run=False, now=clock["now"])
        assert [r["path"] for r in done["removed"]] == [r["path"] for r in listed["removals"]], night(n)
        assert done["skipped"] == [] and done["bytes"] == listed["bytes"]
        assert not any(Path(r["path"]).exists() for r in done["removed"])
        sizes.append(retention.folder_bytes(tmp_path) - log.stat().st_size)  # the promotion log is append-only

    longest = max(windows["raw_nights"], windows["promotion_days"] + 1 + windows["registry_versions"])
    assert sizes[longest - 1] > sizes[0]
    assert set(sizes[longest - 1 :]) == {sizes[longest - 1]}, sizes  # flat once every window is full
    # The log's lines of the last 6 days (nights 24..30) name 8 versions (23..30), the newest 3 among them.
    assert registry.list_versions(cfg.registry.root)[0].startswith("20261023")
    assert len(registry.list_versions(cfg.registry.root)) == 8
    assert len(storage.dated_folders(cfg.layout.table(schema.EVENTS))) == 10


def test_the_prune_command_removes_what_its_dry_run_lists(tmp_path, capsys):
    import yaml

    from dql_model import cli

    cfg = config(tmp_path, curated_nights=1, output_nights=1, export_nights=1, report_nights=1, baseline_nights=1)
    for n in range(3):
        write_night(cfg, night(n))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))

    assert cli.main(["--config", str(path), "prune", "--dry-run"]) == 0
    text = capsys.readouterr().out
    # 9 layers and the Data Docs site's 4 dated folders (pages and results of 2 suites), 2 old nights each
    assert f"user_states/run_date={night(0)}" in text and "would remove 26 folders" in text
    assert cli.main(["--config", str(path), "prune", "--dry-run", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert all(Path(r["path"]).exists() for r in listed["removals"])  # a dry run removes nothing

    assert cli.main(["--config", str(path), "prune", "--json"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in done["removed"]] == [r["path"] for r in listed["removals"]]
    assert done["bytes"] == listed["bytes"] > 0
    assert not any(Path(r["path"]).exists() for r in done["removed"])
    assert cli.main(["--config", str(path), "prune"]) == 0
    assert "removed 0 folders, 0 B" in capsys.readouterr().out


def test_raw_retention_shorter_than_what_a_night_reads_is_refused():
    from dql_model.config import ConfigError

    # 30 days of transitions and the 3 days of lookback before them, where a duplicate's kept copy can be
    with pytest.raises(ConfigError, match=r"retention.raw_nights=32 keeps fewer raw days than a night reads "
                                          r"\(etl.train_window \+ etl.lookback_days needs 33\): set it to at least 33"):  # fmt: skip
        Config().replace(etl={"train_window": "30d"}, retention={"raw_nights": 32})
    assert Config().replace(etl={"train_window": "30d"}, retention={"raw_nights": 33}).retention.raw_nights == 33
    with pytest.raises(ConfigError, match=r"etl.train_window \+ etl.lookback_days needs 31"):
        Config().replace(etl={"train_window": "30d", "lookback_days": 1}, retention={"raw_nights": 30})


def test_the_user_states_a_later_night_reads_outlive_curated_nights(tmp_path):
    """The next night's transitions start from the states of the night before its training window, and its
    off-policy estimates rank each shown day's impressions from the states of the night before that day:
    those user_states (and the ETL summaries that say how they were built) stay, as they do for a rerun of
    each kept night; nothing else of those nights does."""
    cfg = config(tmp_path, curated_nights=2).replace(etl={"train_window": "4d"})
    for n in range(10):
        write_night(cfg, night(n))
    for shown in (1, 3):  # impressions shown on night 3's day were served from night 2's lists
        write_parquet(Path(cfg.layout.partition(schema.IMPRESSIONS, night(shown))), TABLE)

    plan = prune.plan(cfg)
    by_layer = removed_layers(plan)
    # Kept: 8 and 9 (the newest 2); 4, 5 and 6 seed the transitions of reruns of 8 and 9 and of the next
    # night 10 (windows from 5, 6 and 7); 2 ranks the impressions of day 3, inside the 7 shown days
    # (eval.ope_days) of a rerun of 8 or 9. Day 1's impressions are older than any of those windows.
    gone = [f"run_date={night(n)}" for n in (0, 1, 3, 7)]
    assert by_layer["curated/user_states"] == gone
    assert by_layer["curated/_runs"] == gone
    assert by_layer["curated/transitions"] == [f"run_date={night(n)}" for n in range(8)]
    notes = "\n".join(plan.notes)
    assert f"user_states seed the transitions of the next night ({night(10)}) (etl.train_window)" in notes
    assert f"seed the transitions of a rerun of {night(8)}" in notes
    assert f"a rerun of {night(8)} ranks the impressions of {night(3)} from its user_states (eval.ope_days)" in notes

    # A warehouse keeping every raw day starts a 'all' window on its first day: no night seeds from older states.
    assert removed_layers(prune.plan(cfg.replace(etl={"train_window": "all"}, eval={"ope_days": 0})))[
        "curated/user_states"
    ] == [f"run_date={night(n)}" for n in range(8)]
