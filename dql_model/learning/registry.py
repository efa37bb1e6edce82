"""Model registry: one directory per version and a champion pointer (the gate that moves it: dql_model.judging.gate).

    <root>/<version>/model.safetensors   weights and item-feature buffers (no pickle)
    <root>/<version>/config.json         the full Config, n_items, n_categories
    <root>/<version>/metrics.json        validation metrics
    <root>/<version>/data_window.json    which data trained it (run date, partitions, counts)
    <root>/<version>/digests.json        sha256 of model.safetensors and config.json, checked at load
    <root>/<version>/lineage.json        code commit, sha256 of requirements.txt, config hash, data window
    <root>/champion                      one line: the version that scores
    <root>/promotions.jsonl              append-only: one JSON line per change of the champion

A version is named ``YYYYMMDD-<hash>`` after the run date and a hash of weights and config, so
saving the same model twice is a no-op. Versions are staged in a hidden folder and renamed into
place; the champion pointer is replaced with os.replace, so readers never see a partial state.

``load_model`` refuses a version whose weights or config no longer match the digests recorded when
it was saved (ModelIntegrityError, naming the file and the version); versions saved before digests
existed (format 1) still load, with a warning. A version name is one folder name inside the registry:
the champion pointer and ``set_champion`` refuse anything else (``..``, a path, an absolute path).

Promotion log. Every change of the champion (the gate's, ``dqlrec models promote``, ``rollback``)
appends one line to ``promotions.jsonl``: when, who (``user@host``, or the Airflow DAG, task and run),
the action, the version, the previous champion and why. Lines are only ever appended, each with one
``write`` on an ``O_APPEND`` file, after the pointer has moved; the pointer and the log are changed
under the registry's write lock (``flock`` on ``registry.lock``), so two writers (a night's gate and
an engineer's promote) never interleave. ``champion_stack`` replays the log into the chain of
champions that ``rollback`` walks back: a pointer change that never reached the log (a crash between
the two writes, a hand edit) is recovered from the next line's ``previous``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import getpass
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_weights
from safetensors.torch import save_file

from dql_model import faults
from dql_model.config import Config, ModelConfig
from dql_model.contract import schema
from dql_model.errors import InputError, MissingInput
from dql_model.learning.networks import QNetwork
from dql_model.warehouse.storage import read_json, write_json_atomic

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
METRICS = "metrics.json"
DATA_WINDOW = "data_window.json"
DIGESTS = "digests.json"
LINEAGE = "lineage.json"
CHAMPION = "champion"
PROMOTIONS = "promotions.jsonl"
WRITE_LOCK = "registry.lock"
"""Held (flock) while the champion pointer and the promotion log change."""
PROJECT_ROOT = Path(__file__).resolve().parents[2]
"""The checkout (or installed tree) whose commit and requirements.txt a version's lineage records."""
UNKNOWN = "unknown"
FORMAT_VERSION = 2
"""2: digests.json records the sha256 of VERIFIED_FILES (1: saved without digests)."""
DIGESTS_SINCE = 2
VERIFIED_FILES = (WEIGHTS, CONFIG)
"""The files that decide what a version scores, digested at save time and checked at load."""
_VERSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
ADDED_MODEL_FIELDS = {"state_memory": 0, "heads": "one", "id_dropout": 0.0}
"""model.* fields added since format 1, and the value that rebuilds a model saved before them."""


class ModelIntegrityError(ValueError):
    """A version's files are not the ones it was saved with (changed, truncated, replaced), or no model."""


class UnknownVersion(MissingInput):
    """A version named by a command or a trigger is not in the registry; the message lists those that are."""


class NoRollback(InputError, LookupError):
    """The promotion log names no champion before the current one."""


def check_version_name(version: str) -> str:
    """``version`` if it names one folder inside the registry; ValueError for ``..``, paths and hidden names."""
    if not isinstance(version, str) or not _VERSION_NAME.fullmatch(version):
        raise ValueError(
            f"{version!r} is not a model version name: a version is one folder of the registry "
            "(letters, digits, '.', '_', '-'; not starting with '.'), never a path"
        )
    return version


def _version_date(data_window: dict[str, Any]) -> str:
    run_date = data_window.get("run_date")
    if run_date:
        return str(run_date).replace("-", "")[:8]
    return datetime.now(UTC).strftime("%Y%m%d")


def save_model(
    model: QNetwork,
    cfg: Config,
    *,
    registry_root: str | os.PathLike[str],
    metrics: dict[str, Any],
    data_window: dict[str, Any],
    version: str | None = None,
    version_prefix: str | None = None,
) -> str:
    """Write a new version directory and return its name (the champion pointer is not touched).

    Without ``version``, the name is ``<version_prefix>-<hash of weights and config>``; the
    prefix defaults to the data window's run date as YYYYMMDD (today, UTC, without one).
    """
    if version is not None:
        check_version_name(version)
    root = Path(registry_root)
    root.mkdir(parents=True, exist_ok=True)
    staged = root / f".staging-{uuid.uuid4().hex[:12]}"
    staged.mkdir()
    try:
        state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
        save_file(state, str(staged / WEIGHTS), metadata={"format": "pt"})
        config = {
            "format_version": FORMAT_VERSION,
            "config": cfg.to_dict(),
            "n_items": model.n_items,
            "n_categories": model.n_categories,
        }
        write_json_atomic(staged / CONFIG, config)
        write_json_atomic(staged / METRICS, metrics)
        write_json_atomic(staged / DATA_WINDOW, data_window)
        write_json_atomic(staged / LINEAGE, lineage(cfg, data_window))
        # Derived from the bytes _same_model compares, so saving the same model twice stays a no-op.
        digests = {name: hashlib.sha256((staged / name).read_bytes()).hexdigest() for name in VERIFIED_FILES}
        write_json_atomic(staged / DIGESTS, {"sha256": digests})
        if version is None:
            digest = hashlib.sha256((staged / WEIGHTS).read_bytes())
            digest.update(json.dumps(config, sort_keys=True).encode())
            version = f"{version_prefix or _version_date(data_window)}-{digest.hexdigest()[:8]}"
        final = root / version
        faults.point("registry:version_staged")
        if final.exists():
            if _same_model(final, staged):
                shutil.rmtree(staged)  # same weights and config: already registered (a rerun)
                return version
            raise FileExistsError(
                f"model version {final} already exists with other weights; pick another name"
            )
        os.rename(staged, final)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return version


def _same_model(a: Path, b: Path) -> bool:
    return all(
        (a / name).is_file() and (a / name).read_bytes() == (b / name).read_bytes()
        for name in (WEIGHTS, CONFIG)
    )


def load_model(
    version_dir: str | os.PathLike[str], device: torch.device | str = "cpu"
) -> tuple[QNetwork, dict[str, Any]]:
    """Rebuild a saved QNetwork (eval mode) and its metadata; nothing is unpickled.

    The weights and config are checked against the digests recorded at save time first: a file that
    changed since is refused with ModelIntegrityError naming it and the version, as are weights that
    are not safetensors or do not fit the saved config. The metadata holds ``version``, ``config``
    (the saved Config as a dict), ``n_items``, ``n_categories``, ``metrics`` and ``data_window``.
    """
    folder = Path(version_dir)
    for name in (WEIGHTS, CONFIG):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"model version {folder} has no {name}; is it a registry version directory?"
            )
    contents = {name: (folder / name).read_bytes() for name in VERIFIED_FILES}
    verified = _verify_digests(folder, contents)
    where = f"model version {folder.name} ({folder})"
    try:
        saved = json.loads(contents[CONFIG])
        model = build_network(saved["config"]["model"], saved["n_items"], saved["n_categories"])
    except (ValueError, KeyError, TypeError) as error:
        raise ModelIntegrityError(f"{where}: {CONFIG} is not a saved model config ({error!r})") from error
    if not verified:
        _warn_unverified(folder, saved)
    try:
        state = load_weights(contents[WEIGHTS])
    except SafetensorError as error:
        raise ModelIntegrityError(
            f"{where}: {WEIGHTS} is not a safetensors file ({error}); it is never unpickled"
        ) from error
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ModelIntegrityError(
            f"{where}: {WEIGHTS} does not fit the network in its {CONFIG}: {error}"
        ) from error
    model.to(device).eval()
    meta = {
        "version": folder.name,
        "config": saved["config"],
        "n_items": saved["n_items"],
        "n_categories": saved["n_categories"],
        "metrics": read_json(folder / METRICS),
        "data_window": read_json(folder / DATA_WINDOW),
    }
    return model, meta


def _verify_digests(folder: Path, contents: dict[str, bytes]) -> bool:
    """Check ``contents`` against the version's digests.json; False when it has none (checked by the caller)."""
    where = f"model version {folder.name} ({folder})"
    path = folder / DIGESTS
    if not path.is_file():
        return False
    try:
        recorded = json.loads(path.read_text())["sha256"]
        recorded = {name: str(recorded[name]) for name in contents}
    except (ValueError, KeyError, TypeError) as error:
        raise ModelIntegrityError(f"{where}: {DIGESTS} is unreadable or incomplete ({error!r})") from error
    for name, data in contents.items():
        found = hashlib.sha256(data).hexdigest()
        if found != recorded[name]:
            raise ModelIntegrityError(
                f"{where}: {name} does not match the sha256 recorded in {DIGESTS} when the version was "
                f"saved (recorded {recorded[name][:16]}..., found {found[:16]}...); the file changed since "
                "and is not loaded: restore it or register the model again"
            )
    return True


def _warn_unverified(folder: Path, saved: dict[str, Any]) -> None:
    """A version without digests.json loads only if it was saved before digests existed."""
    saved_format = saved.get("format_version", 1)
    if not isinstance(saved_format, int) or saved_format >= DIGESTS_SINCE:
        raise ModelIntegrityError(
            f"model version {folder.name} ({folder}): {DIGESTS} is missing, but the version was saved "
            f"with digests (format {saved_format!r}); its files cannot be verified and are not loaded"
        )
    log.warning(
        "model version %s was saved without digests (format %s, before %s); its files are not verified",
        folder.name,
        saved_format,
        DIGESTS_SINCE,
    )


def model_source(meta: dict[str, Any]) -> str:
    """The recommendation source of a loaded version (``load_model``'s metadata): its train.mode."""
    mode = (meta.get("config") or {}).get("train", {}).get("mode", "dqn")
    return schema.MODEL_SOURCES.get(mode, schema.SOURCE_DQN)


def build_network(model_config: dict[str, Any], n_items: int, n_categories: int) -> QNetwork:
    """An untrained QNetwork of a saved shape: the one way a stored model is rebuilt (then its weights load).

    ``model_config`` is a saved ``model`` config section. Fields added since it was saved take the
    value that rebuilds the old model (ADDED_MODEL_FIELDS); unknown keys (from a newer config) are
    ignored so that older code can still load it.
    """
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    fields = {**ADDED_MODEL_FIELDS, **model_config}
    return QNetwork(n_items, n_categories, ModelConfig(**{k: v for k, v in fields.items() if k in known}))


def list_versions(registry_root: str | os.PathLike[str]) -> list[str]:
    """Registered versions, oldest name first."""
    root = Path(registry_root)
    if not root.is_dir():
        return []
    return sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / WEIGHTS).is_file()
    )


def version_metrics(registry_root: str | os.PathLike[str], version: str) -> dict[str, Any]:
    """The metrics saved with a version."""
    return read_json(Path(registry_root) / check_version_name(version) / METRICS)


def version_data_window(registry_root: str | os.PathLike[str], version: str) -> dict[str, Any]:
    """The data window saved with a version (run date, what it was warm-started from)."""
    return read_json(Path(registry_root) / check_version_name(version) / DATA_WINDOW)


def incumbent_for(registry_root: str | os.PathLike[str], run_date: str) -> str | None:
    """The model a run for ``run_date`` starts from and is gated against.

    That is the champion, unless the champion was itself trained for ``run_date`` (a rerun): then
    it is the model that champion was warm-started from. So a rerun of a date trains from the same
    starting point and faces the same incumbent as the first run, and reproduces its outcome.
    """
    version, seen = champion_version(registry_root), set()
    while version and version not in seen:
        seen.add(version)
        window = version_data_window(registry_root, version)
        if str(window.get("run_date", "")) < run_date:
            return version
        version = window.get("warm_start_from")
    return None


REFIT_OF = "refit_of"
"""data_window key of a refit version (train.refit): the version it is the refit of."""


def refit_bases(registry_root: str | os.PathLike[str]) -> dict[str, str]:
    """Refit version -> the version it is the refit of, for every refit in the registry, oldest first."""
    found: dict[str, str] = {}
    for version in list_versions(registry_root):
        base = version_data_window(registry_root, version).get(REFIT_OF)
        if base:
            found[version] = str(base)
    return found


def refits(registry_root: str | os.PathLike[str]) -> dict[str, str]:
    """Version -> its newest refit (trained on its train + validation), for the versions that have one."""
    # oldest first: a later refit of the same version wins
    return {base: refit for refit, base in refit_bases(registry_root).items()}


def refit_of(registry_root: str | os.PathLike[str], version: str) -> str | None:
    """The refit of ``version`` (trained on its train + validation), or None when it has none."""
    return refits(registry_root).get(version)


def champion_version(registry_root: str | os.PathLike[str]) -> str | None:
    """The version the champion pointer names, or None when there is no champion yet."""
    pointer = Path(registry_root) / CHAMPION
    if not pointer.is_file():
        return None
    version = pointer.read_text().strip()
    if not version:
        return None
    try:
        return check_version_name(version)
    except ValueError as error:
        raise ValueError(
            f"the champion pointer {pointer} does not name a version of this registry: {error}; "
            "point it at a saved version with set_champion"
        ) from None


def set_champion(
    registry_root: str | os.PathLike[str], version: str, *, why: str = "", action: str = "gate"
) -> dict[str, Any] | None:
    """Point the champion at ``version`` atomically and log the change; returns the log line (None: no change).

    ``why`` says why (the gate's decision and reason, ``manual: <reason>``); ``action`` is ``gate``,
    ``promote`` or ``rollback``. Pointing at the version that is already champion changes nothing and
    logs nothing.
    """
    check_version_name(version)
    root = Path(registry_root)
    with _write_lock(root):
        return _point_champion(root, version, why=why, action=action)


def _point_champion(root: Path, version: str, *, why: str, action: str) -> dict[str, Any] | None:
    """set_champion under the write lock: the pointer first (temporary file, fsync, os.replace), then the log."""
    if not (root / version / WEIGHTS).is_file():
        raise UnknownVersion(f"cannot make {version} champion: {_not_registered(root, version)}")
    try:
        previous = champion_version(root)
    except ValueError as error:  # a pointer outside the registry: replacing it is the fix
        log.warning("%s", error)
        previous = None
    temporary = root / f".{CHAMPION}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(temporary, "w") as handle:
            handle.write(version + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, root / CHAMPION)
    finally:
        temporary.unlink(missing_ok=True)
    if previous == version:
        return None
    faults.point("registry:champion_pointed")
    entry = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "who": who(),
        "action": action,
        "version": version,
        "previous": previous,
        "why": why or "not recorded",
    }
    _append_line(root / PROMOTIONS, json.dumps(entry, sort_keys=True))
    return entry


@contextlib.contextmanager
def _write_lock(root: Path) -> Iterator[None]:
    """The registry's write lock: flock, released by the kernel when its holder dies (local filesystems)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / WRITE_LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _append_line(path: Path, line: str) -> None:
    """Append one line with one write (O_APPEND) and fsync; earlier lines are never rewritten.

    A line torn by a crash is closed with a newline first, so it stays one unreadable line on its own
    (``promotion_log`` skips it, saying so) instead of swallowing the next one.
    """
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
        os.write(fd, (("\n" if torn else "") + line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def who() -> str:
    """Who changes the registry: the Airflow DAG, task and run when a task does, else ``user@host``."""
    task = os.environ.get("AIRFLOW_CTX_TASK_ID")
    if task:
        dag = os.environ.get("AIRFLOW_CTX_DAG_ID", "?")
        return f"airflow:{dag}.{task} run {os.environ.get('AIRFLOW_CTX_DAG_RUN_ID', '?')}"
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def promotion_log(registry_root: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The promotion log's lines, oldest first ([] before the first change); unreadable lines are skipped, logged."""
    path = Path(registry_root) / PROMOTIONS
    if not path.is_file():
        return []
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            check_version_name(entry["version"])
        except (ValueError, KeyError, TypeError) as error:
            log.warning("%s line %d is not a promotion record (%s); skipped", path, number, error)
            continue
        entries.append(entry)
    return entries


def champion_stack(entries: list[dict[str, Any]]) -> list[str]:
    """The chain of champions the log describes, the latest last: what ``rollback`` walks back.

    A promotion pushes its version (after its ``previous``, when the chain does not end with it: a
    change that never reached the log); a rollback returns the chain to the version it restored.
    """
    stack: list[str] = []
    for entry in entries:
        version = entry["version"]
        if entry.get("action") == "rollback":
            while stack and stack[-1] != version:
                stack.pop()
            if not stack:
                stack.append(version)
            continue
        previous = entry.get("previous")
        if previous and (not stack or stack[-1] != previous):
            stack.append(previous)
        stack.append(version)
    return stack


def rollback_target(registry_root: str | os.PathLike[str]) -> str:
    """The champion before the current one, as the promotion log tells; NoRollback when it names none."""
    root = Path(registry_root)
    current = champion_version(root)
    stack = champion_stack(promotion_log(root))
    if stack and stack[-1] != current:
        return stack[-1]  # the pointer moved without a log line: back to the last logged champion
    if len(stack) < 2:
        raise NoRollback(
            f"nothing to roll back to: the promotion log {root / PROMOTIONS} names no champion before "
            f"{current or 'the current one (there is none)'}; promote a version instead"
        )
    return stack[-2]


def rollback(registry_root: str | os.PathLike[str], *, why: str) -> dict[str, Any]:
    """Make the previous champion (``rollback_target``) the champion again; returns the log line."""
    root = Path(registry_root)
    with _write_lock(root):
        target = rollback_target(root)
        entry = _point_champion(root, target, why=why, action="rollback")
    if entry is None:  # cannot happen: the target differs from the pointer by construction
        raise RuntimeError(f"rollback found {target} both champion and its predecessor in {root / PROMOTIONS}")
    return entry


def require_version(registry_root: str | os.PathLike[str], version: str) -> str:
    """``version`` if it is a saved version of the registry; UnknownVersion naming those that are otherwise."""
    root = Path(registry_root)
    try:
        check_version_name(version)
    except ValueError as error:
        raise UnknownVersion(str(error)) from None
    if not (root / version / WEIGHTS).is_file():
        raise UnknownVersion(_not_registered(root, version))
    return version


SHOWN_VERSIONS = 10
"""How many of the newest versions an unknown-version error names."""


def _not_registered(root: Path, version: str) -> str:
    versions = list_versions(root)
    if not versions:
        return f"model version {version} is not in the registry {root}, which has no versions yet"
    shown = ", ".join(versions[-SHOWN_VERSIONS:])
    more = f" (the newest {SHOWN_VERSIONS} of {len(versions)})" if len(versions) > SHOWN_VERSIONS else ""
    return f"model version {version} is not in the registry {root}; its versions{more}: {shown}"


def version_lineage(registry_root: str | os.PathLike[str], version: str) -> dict[str, Any]:
    """The lineage saved with a version ({} for versions saved before lineage was recorded)."""
    return read_json(Path(registry_root) / check_version_name(version) / LINEAGE)


def lineage(cfg: Config, data_window: dict[str, Any]) -> dict[str, Any]:
    """Where a version comes from: code commit, sha256 of requirements.txt, config hash and its data.

    The data are the run date, the first day of the training window and the counts the night's ETL
    summary already holds (nothing is counted again); ``unknown`` where a value cannot be found.
    """
    run_date = data_window.get("run_date")
    etl = read_json(cfg.layout.etl_summary(str(run_date))) if run_date else {}
    counts = etl.get("counts") or {}
    return {
        "code_commit": code_commit(),
        "requirements_sha256": _file_sha256(PROJECT_ROOT / "requirements.txt"),
        "config_hash": cfg.hash(),
        "registered_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "registered_by": who(),
        "data": {
            "run_date": run_date or UNKNOWN,
            "train_window": data_window.get("train_window", UNKNOWN),
            "train_window_start": (etl.get("window") or {}).get("start", UNKNOWN),
            "transitions_trained": data_window.get("transitions", UNKNOWN),
            "counts": {key: counts[key] for key in LINEAGE_COUNTS if key in counts},
            "etl_summary": cfg.layout.etl_summary(str(run_date)) if etl else UNKNOWN,
        },
    }


LINEAGE_COUNTS = (
    "input_events", "accepted", "quarantined", "users", "items", "new_items", "transitions_train",
    "transitions_validation",
)
"""The ETL summary's counts a version's lineage copies."""


@functools.cache
def code_commit() -> str:
    """``git rev-parse HEAD`` of the project (once per process), or ``unknown`` outside a git checkout."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else UNKNOWN


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else UNKNOWN


def describe_version(registry_root: str | os.PathLike[str], version: str) -> dict[str, Any]:
    """One version as ``dqlrec models show`` prints it: champion or not, best metrics, data window, lineage."""
    root = Path(registry_root)
    require_version(root, version)
    metrics = version_metrics(root, version)
    return {
        "version": version,
        "champion": version == champion_version(root),
        "metrics": metrics.get("best", {}),
        "epochs": len(metrics.get("history", [])),
        "refit_of": metrics.get(REFIT_OF),
        "data_window": version_data_window(root, version),
        "lineage": version_lineage(root, version),
    }
