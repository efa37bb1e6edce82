"""`dqlrec prune` and the maintenance DAG: the retention plan of a whole installation, and its removal.

Owns one concept: what the model registry protects from retention. The keep rules and the removal
itself are ``dql_model.warehouse.retention``'s; the registry lives above the warehouse package, so the
versions that must stay are gathered here:

- the champion (checked again just before each removal, in case the gate moved it meanwhile);
- every version in ``retention.pinned_versions``;
- every version the promotion log names, as champion or as the one before, within
  ``retention.promotion_days`` (what ``dqlrec models rollback`` may need);
- the incumbent of a rerun of every kept curated night (``registry.incumbent_for``): a rerun starts
  from it and is gated against it;
- every version trained for a run date whose run-date lock is held (a night between training and
  its gate, whose version is not champion yet).

A refit (``train.refit``) scores in its base's place, so it is not a version of its own here: it is
kept and removed with its base (``retention.version_plan``'s ``follows``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dql_model.config import Config
from dql_model.contract import schema
from dql_model.learning import registry
from dql_model.warehouse import retention, storage


def protected_versions(cfg: Config, *, now: datetime) -> dict[str, str]:
    """Registry version -> why ``dqlrec prune`` keeps it (see the module docstring)."""
    root = cfg.registry.root
    keep = cfg.retention
    out: dict[str, str] = {}
    champion = registry.champion_version(root)
    if champion:
        out[champion] = "the champion"
    for version in keep.pinned():
        out.setdefault(version, "pinned (retention.pinned_versions)")
    for entry in registry.promotion_log(root):
        if keep.promotion_days and _days_since(entry.get("at"), now) > keep.promotion_days:
            continue
        for key in ("version", "previous"):
            if entry.get(key):
                out.setdefault(entry[key], f"named by the promotion log on {entry.get('at')} (retention.promotion_days)")
    for day in _kept_curated_nights(cfg):
        incumbent = registry.incumbent_for(root, day)
        if incumbent:
            out.setdefault(incumbent, f"the incumbent of a rerun of {day} (a kept curated night)")
    locked = retention.locked_dates(cfg)
    if locked:
        for version in registry.list_versions(root):
            day = str(registry.version_data_window(root, version).get("run_date", ""))
            if day in locked:
                out.setdefault(version, f"trained for {day}, whose run-date lock is held")
    return out


def _days_since(at: Any, now: datetime) -> float:
    try:
        when = datetime.fromisoformat(str(at))
    except ValueError:
        return 0.0  # an unreadable time: treated as recent, so its versions stay
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (now - when).total_seconds() / 86400.0


def _kept_curated_nights(cfg: Config) -> list[str]:
    nights = sorted(storage.dated_folders(cfg.layout.table(schema.TRANSITIONS)))
    return nights[-cfg.retention.curated_nights :] if cfg.retention.curated_nights else nights


def plan(cfg: Config, *, now: datetime | None = None) -> retention.Plan:
    """Everything ``dqlrec prune`` removes: warehouse layers, reports, export, registry versions, checkpoints."""
    from dql_model.learning.train import CHECKPOINTS

    now = now or datetime.now(UTC)
    root = Path(cfg.registry.root)
    return retention.merge(
        retention.warehouse_plan(cfg),
        retention.version_plan(
            root, registry.list_versions(root), keep=cfg.retention.registry_versions,
            protected=protected_versions(cfg, now=now), follows=registry.refit_bases(root),
        ),  # fmt: skip
        retention.stale_plan(
            root / CHECKPOINTS, days=cfg.retention.checkpoint_days, layer="checkpoints", setting="checkpoint_days",
            now=now.timestamp(),
        ),  # fmt: skip
    )


def prune(
    cfg: Config, *, dry_run: bool, now: datetime | None = None, progress: Callable[[str], object] = print
) -> dict[str, Any]:
    """Plan, and unless ``dry_run`` remove what the plan lists; a JSON-able account of either."""
    planned = plan(cfg, now=now)
    if dry_run:
        return {"dry_run": True, **planned.to_json()}
    root = Path(cfg.registry.root)
    base_of = registry.refit_bases(root)  # fixed once saved; only the champion pointer moves meanwhile

    def still_removable(removal: retention.Removal) -> str | None:
        if removal.layer != "registry":
            return None
        version, champion = Path(removal.path).name, registry.champion_version(root)
        if version == champion:
            return "became the champion after the plan was made"
        if champion and base_of.get(version) == champion:
            return "its base became the champion after the plan was made"
        return None

    done = retention.apply(cfg, planned, still_removable=still_removable, progress=progress)
    return {"dry_run": False, "notes": planned.notes, **done.to_json()}
