"""Retention: which stored nights are old enough to go, and removing exactly those.

Owns one concept: the keep rule of every stored layer (``cfg.retention``) and the way a folder is
removed. ``plan`` lists what goes (path, bytes, reason) and never deletes; ``apply`` removes the
paths of a plan and nothing else, so ``dqlrec prune --dry-run`` prints what ``dqlrec prune`` removes.

The rule, per table (counted per table, so a month without runs never empties one):

- dated folders (``<column>=YYYY-MM-DD`` partitions, report folders, local export dates, the nights'
  baselines, the Data Docs site's pages and validation results per suite): the newest
  ``retention.<layer>_nights`` are kept, older ones go; 0 keeps all (the site's index drops the pages
  of removed results when the next validation rebuilds it); ``user_states`` and the ETL summaries also
  keep the older nights that the next night or a rerun of a kept night reads (``states_read_later``);
- registry versions: ``version_plan`` keeps the newest ``retention.registry_versions`` and every
  version its caller protects (the champion, pinned versions, versions of recent promotions: the
  registry lives above this package, ``dql_model.pipeline.prune`` gathers them); a refit is not
  counted on its own: it stays and goes with the version it is the refit of;
- folders whose newest file is older than a number of days (training checkpoints): ``stale_plan``.

Never removed: a folder of a run date whose run-date lock is held (``dql_model.warehouse.locks``).
The plan leaves out every date with a lock file, and ``apply`` takes each date's lock (without
waiting) while it removes that date's folders, so a run that starts meanwhile keeps its date whole:
those folders are reported as skipped, not removed.

A folder is first renamed out of its readers' sight (a table's partition into the table's swap area,
anything else to a hidden sibling) and then deleted, so a reader sees a partition whole or not at
all; what a crash leaves of an interrupted removal is swept by the next plan. An ``s3://`` export is
not listed (object stores expire objects with a bucket lifecycle rule, the cheaper tool); the plan
says so in its notes.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dql_model.config import Config, ConfigError, seed_states_night, train_window_start
from dql_model.contract import layout, schema
from dql_model.warehouse import locks, storage

PRUNED = "pruned"
"""Tag of a folder being removed (``layout.hidden_sibling``); a plan sweeps those a crash left."""
STEP = "prune"
"""How a prune names itself in the run-date locks it takes."""

RAW_TABLES = (schema.EVENTS, schema.IMPRESSIONS)
CURATED_TABLES = (
    schema.ITEM_INDEX, schema.USER_STATES, schema.TRANSITIONS, schema.QUARANTINE, schema.IMPRESSIONS_QUARANTINE,
)  # fmt: skip


@dataclass(frozen=True)
class Removal:
    """One folder a plan removes."""

    path: str
    bytes: int
    layer: str
    """What it is: ``curated/user_states``, ``reports``, ``registry``, ``export``, ..."""
    reason: str
    run_date: str | None = None
    """The run date whose lock guards it (None: a registry version, a checkpoint folder)."""
    in_swap_area: bool = False
    """A table's partition: moved into the table's swap area before it is deleted."""


@dataclass
class Plan:
    """What a prune removes, in a stable order, and notes on what it left alone and why."""

    removals: list[Removal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.removals)

    def paths(self) -> list[str]:
        return [r.path for r in self.removals]

    def to_json(self) -> dict[str, Any]:
        return {"removals": [asdict(r) for r in self.removals], "bytes": self.bytes, "notes": list(self.notes)}


@dataclass
class Outcome:
    """What ``apply`` did: the folders removed, those skipped (with why), the bytes freed."""

    removed: list[Removal] = field(default_factory=list)
    skipped: list[tuple[Removal, str]] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.removed)

    def to_json(self) -> dict[str, Any]:
        return {
            "removed": [asdict(r) for r in self.removed],
            "skipped": [{**asdict(r), "why": why} for r, why in self.skipped],
            "bytes": self.bytes,
        }


def folder_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes of the files below ``path`` (a file: its size); 0 when it is gone."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except FileNotFoundError:
                pass
    return total


def locked_dates(cfg: Config) -> set[str]:
    """Run dates with a lock file under ``_locks`` (held, or left by a writer that died: kept either way)."""
    folder = Path(cfg.layout.root) / layout.LOCKS
    dates = set()
    if folder.is_dir():
        for lock in folder.glob(f"{schema.RUN_DATE}=*.lock"):
            dates.add(lock.name.removeprefix(f"{schema.RUN_DATE}=").removesuffix(".lock"))
    return dates


def _oldest_beyond(
    parent: str | os.PathLike[str], keep: int, *, layer: str, setting: str, spared: Mapping[str, str],
    notes: list[str], in_swap_area: bool = False,
) -> list[Removal]:
    """The dated folders of ``parent`` older than its ``keep`` newest; the ``spared`` dates stay (noted with why)."""
    if keep <= 0:
        return []
    by_date = storage.dated_folders(parent)
    old = sorted(by_date)[:-keep]
    out = []
    for day in old:
        if day in spared:
            notes.append(f"kept {by_date[day]}: {spared[day]}")
            continue
        out.append(
            Removal(
                str(by_date[day]), folder_bytes(by_date[day]), layer,
                f"older than the newest {keep} nights of {layer} (retention.{setting})", day, in_swap_area,
            )
        )  # fmt: skip
    return out


def _interrupted(parents: Iterable[str | os.PathLike[str]], layer: str) -> list[Removal]:
    """Folders an interrupted prune renamed and did not finish deleting."""
    out = []
    for parent in parents:
        parent = Path(parent)
        if parent.is_dir():
            for leftover in sorted(parent.glob(f"*.{PRUNED}-*")):
                out.append(Removal(str(leftover), folder_bytes(leftover), layer, "left by an interrupted prune"))
    return out


def states_read_later(cfg: Config) -> dict[str, str]:
    """user_states nights older than the newest ``curated_nights`` that the next night, or a rerun of a kept
    night, still reads -> why (their ETL summaries too: the Spark job checks how the states were built):

    - the night whose states seed its transitions (``config.seed_states_night``: the newest before its
      training window, with the window's first day counted from the raw days this plan keeps);
    - the nights whose lists its off-policy estimates rank from their states (the ``eval.ope_days`` shown
      days up to it that have impressions were served from the lists of the night before each).

    Without them the Spark job would find no seed and read every raw partition (a cost that grows with the
    history, and transitions whose first states lack the history before the kept raw days), and the
    estimates would skip days.
    """
    keep, lay = cfg.retention, cfg.layout
    states = sorted(dt.date.fromisoformat(day) for day in storage.dated_folders(lay.table(schema.USER_STATES)))
    if keep.curated_nights <= 0 or len(states) <= keep.curated_nights:
        return {}
    kept = states[-keep.curated_nights :]
    raw = sorted(storage.dated_folders(lay.table(schema.EVENTS)))
    first_raw = raw[-keep.raw_nights :][0] if keep.raw_nights and raw else (raw[0] if raw else None)
    shown = set(storage.dated_folders(lay.table(schema.IMPRESSIONS)))
    out: dict[str, str] = {}
    for night in [*kept, states[-1] + dt.timedelta(days=1)]:
        whose = f"a rerun of {night}" if night in kept else f"the next night ({night})"
        if first_raw is not None:
            try:
                start = train_window_start(cfg.etl.train_window, night, dt.date.fromisoformat(first_raw))
            except ConfigError:  # a first day after the night: that night has no window to seed
                start = None
            seed = None if start is None else seed_states_night(states, start)
            if seed is not None and seed not in kept:
                out.setdefault(str(seed), f"its user_states seed the transitions of {whose} (etl.train_window)")
        for back in range(1, cfg.eval.ope_days + 1):
            served = night - dt.timedelta(days=back)
            if str(served + dt.timedelta(days=1)) in shown and served in states and served not in kept:
                out.setdefault(
                    str(served), f"{whose} ranks the impressions of {served + dt.timedelta(days=1)} from its user_states "
                    "(eval.ope_days)",
                )  # fmt: skip
    return out


def warehouse_plan(cfg: Config) -> Plan:
    """What the dated layers of the warehouse, the reports and a local export lose under ``cfg.retention``."""
    keep, lay = cfg.retention, cfg.layout
    locked = {day: f"the run-date lock of {day} is held" for day in locked_dates(cfg)}
    read_later = {**states_read_later(cfg), **locked}
    plan = Plan()
    tables = [
        *[(t, keep.raw_nights, "raw_nights") for t in RAW_TABLES],
        *[(t, keep.curated_nights, "curated_nights") for t in CURATED_TABLES],
        (schema.RECOMMENDATIONS, keep.output_nights, "output_nights"),
    ]
    for table, nights, setting in tables:
        root = lay.table(table)
        plan.removals += _oldest_beyond(
            root, nights, layer=f"{layout.LAYER[table]}/{table}", setting=setting,
            spared=read_later if table == schema.USER_STATES else locked, notes=plan.notes, in_swap_area=True,
        )  # fmt: skip
        plan.removals += _interrupted([layout.swap_area(root)], f"{layout.LAYER[table]}/{table}")
    warehouse = Path(lay.root)
    runs = warehouse / layout.CURATED / layout.RUNS
    folders = [
        (runs, keep.curated_nights, "curated_nights", "curated/_runs"),
        (warehouse / layout.STAGING / schema.RECOMMENDATIONS, keep.output_nights, "output_nights", "staging"),
        (warehouse / layout.STAGING / layout.RUNS, keep.output_nights, "output_nights", "staging/_runs"),
        (Path(lay.reports()), keep.report_nights, "report_nights", "reports"),
        (Path(lay.baseline_models("x")).parent, keep.baseline_nights, "baseline_nights", "models/baselines"),
    ]
    docs = Path(lay.data_docs())
    folders += [
        (suite, keep.report_nights, "report_nights", "reports/data_docs")
        for dated in layout.DATA_DOCS_DATED if (docs / dated).is_dir()
        for suite in sorted((docs / dated).iterdir()) if suite.is_dir()
    ]  # fmt: skip
    marketing = warehouse / layout.MARKETING
    if marketing.is_dir():
        folders += [
            (t, keep.output_nights, "output_nights", f"marketing/{t.name}") for t in sorted(marketing.iterdir())
            if t.is_dir() and not t.name.startswith(layout.HIDDEN_PREFIXES)
        ]  # fmt: skip
    export = cfg.publish.export_uri
    if "://" in export:
        plan.notes.append(f"export {export} is not pruned here: expire its dates with a bucket lifecycle rule")
    else:
        folders.append((Path(export), keep.export_nights, "export_nights", "export"))
    for parent, nights, setting, layer in folders:
        spared = read_later if parent == runs else locked
        plan.removals += _oldest_beyond(parent, nights, layer=layer, setting=setting, spared=spared, notes=plan.notes)
        plan.removals += _interrupted([parent], layer)
    return plan


def version_plan(
    registry_root: str | os.PathLike[str],
    versions: list[str],
    *,
    keep: int,
    protected: Mapping[str, str],
    follows: Mapping[str, str] | None = None,
) -> Plan:
    """Registry versions to remove: all but the newest ``keep`` (0: none go) and the ``protected`` ones.

    ``versions`` are the registry's versions oldest first (names start with their run date);
    ``protected`` maps a version to why it must stay (champion, pinned, a recent promotion).
    ``follows`` maps a version that stands in for another (a refit, which scores in its base's place)
    to that base: it is not counted among the ``keep``, and it stays and goes with its base. One whose
    base is no longer stored counts as a version of its own.
    """
    plan = Plan()
    root = Path(registry_root)
    plan.removals += _interrupted([root], "registry")
    if keep <= 0:
        return plan
    stored = set(versions)
    base_of = {version: base for version, base in (follows or {}).items() if version in stored and base in stored}
    counted = [version for version in versions if version not in base_of]
    newest = set(counted[-keep:])
    for version in versions:
        base = base_of.get(version, version)
        if base in newest:
            continue
        why = protected.get(version) or (protected.get(base) and f"the refit of {base}, kept as {protected[base]}")
        if why:
            plan.notes.append(f"kept registry version {version}: {why}")
            continue
        folder = root / version
        reason = f"older than the newest {keep} versions (retention.registry_versions)"
        if base != version:
            reason = f"the refit of {base}, which goes: {reason}"
        plan.removals.append(Removal(str(folder), folder_bytes(folder), "registry", reason))
    return plan


def stale_plan(parent: str | os.PathLike[str], *, days: int, layer: str, setting: str, now: float) -> Plan:
    """Sub-folders of ``parent`` with no file changed in ``days`` days before ``now`` (0: none go)."""
    plan = Plan()
    parent = Path(parent)
    if days <= 0 or not parent.is_dir():
        return plan
    cutoff = now - days * 86400.0
    for folder in sorted(p for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")):
        newest = max((f.stat().st_mtime for f in folder.rglob("*") if f.is_file()), default=folder.stat().st_mtime)
        if newest < cutoff:
            plan.removals.append(
                Removal(str(folder), folder_bytes(folder), layer, f"untouched for more than {days} days (retention.{setting})")
            )
    return plan


def merge(*plans: Plan) -> Plan:
    """One plan of several, in a stable order (by layer, then path)."""
    out = Plan()
    for plan in plans:
        out.removals += plan.removals
        out.notes += plan.notes
    out.removals.sort(key=lambda r: (r.layer, r.path))
    return out


def apply(
    cfg: Config,
    plan: Plan,
    *,
    still_removable: Callable[[Removal], str | None] = lambda removal: None,
    progress: Callable[[str], object] = print,
) -> Outcome:
    """Remove the plan's folders, each date's under its run-date lock; nothing outside the plan.

    A date whose lock another run holds is skipped whole. ``still_removable(removal)`` is asked just
    before each removal and may veto it with a reason (the champion moved onto a planned version).
    """
    outcome = Outcome()
    by_date: dict[str | None, list[Removal]] = {}
    for removal in plan.removals:
        by_date.setdefault(removal.run_date, []).append(removal)
    for day, removals in sorted(by_date.items(), key=lambda item: item[0] or ""):
        if day is None:
            _remove_all(removals, outcome, still_removable)
            continue
        try:
            with locks.run_date_lock(
                cfg.layout.run_date_lock(day), run_date=day, step=STEP, wait_s=0.0, stale_s=cfg.warehouse.lock_stale_s
            ):
                _remove_all(removals, outcome, still_removable)
        except locks.RunDateLocked as error:
            outcome.skipped += [(r, f"run date {day} is locked: {error}") for r in removals]
    order = {removal.path: index for index, removal in enumerate(plan.removals)}
    outcome.removed.sort(key=lambda r: order[r.path])  # in the plan's order, as the dry run lists it
    outcome.skipped.sort(key=lambda pair: order[pair[0].path])
    for removal, why in outcome.skipped:
        progress(f"[dqlrec] prune: kept {removal.path}: {why}")
    return outcome


def _remove_all(removals: list[Removal], outcome: Outcome, still_removable: Callable[[Removal], str | None]) -> None:
    for removal in removals:
        veto = still_removable(removal)
        if veto:
            outcome.skipped.append((removal, veto))
            continue
        if remove(removal):
            outcome.removed.append(removal)
        else:
            outcome.skipped.append((removal, "already gone"))


def remove(removal: Removal) -> bool:
    """Rename the folder out of readers' sight, then delete it; False when it is already gone."""
    path = Path(removal.path)
    if not path.exists():
        return False
    if f".{PRUNED}-" in path.name:
        hidden = path  # the leftover of an interrupted prune: already out of sight
    elif removal.in_swap_area:
        area = Path(layout.swap_area(str(path.parent)))
        area.mkdir(parents=True, exist_ok=True)
        # Named as storage names its staged folders, so a writer's recover() also sweeps a leftover.
        hidden = area / f"{path.name}.{PRUNED}-{uuid.uuid4().hex[:8]}"
    else:
        hidden = path.parent / layout.hidden_sibling(path.name, PRUNED)
    if hidden != path:
        os.rename(path, hidden)
    if hidden.is_dir() and not hidden.is_symlink():
        shutil.rmtree(hidden)
    else:
        hidden.unlink(missing_ok=True)
    return True
