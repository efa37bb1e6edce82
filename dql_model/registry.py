"""Model registry: one directory per version and a champion pointer (the gate that moves it: dql_model.gate).

    <root>/<version>/model.safetensors   weights and item-feature buffers (no pickle)
    <root>/<version>/config.json         the full Config, n_items, n_categories
    <root>/<version>/metrics.json        validation metrics
    <root>/<version>/data_window.json    which data trained it (run date, partitions, counts)
    <root>/champion                      one line: the version that scores

A version is named ``YYYYMMDD-<hash>`` after the run date and a hash of weights and config, so
saving the same model twice is a no-op. Versions are staged in a hidden folder and renamed into
place; the champion pointer is replaced with os.replace, so readers never see a partial state.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from dql_model.config import Config, ModelConfig
from dql_model.networks import QNetwork
from dql_model.storage import write_json_atomic

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
METRICS = "metrics.json"
DATA_WINDOW = "data_window.json"
CHAMPION = "champion"
FORMAT_VERSION = 1
ADDED_MODEL_FIELDS = {"state_memory": 0}
"""model.* fields added since format 1, and the value that rebuilds a model saved before them."""


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
        if version is None:
            digest = hashlib.sha256((staged / WEIGHTS).read_bytes())
            digest.update(json.dumps(config, sort_keys=True).encode())
            version = f"{version_prefix or _version_date(data_window)}-{digest.hexdigest()[:8]}"
        final = root / version
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

    The metadata holds ``version``, ``config`` (the saved Config as a dict), ``n_items``,
    ``n_categories``, ``metrics`` and ``data_window``.
    """
    folder = Path(version_dir)
    for name in (WEIGHTS, CONFIG):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"model version {folder} has no {name}; is it a registry version directory?"
            )
    saved = json.loads((folder / CONFIG).read_text())
    model = build_network(saved["config"]["model"], saved["n_items"], saved["n_categories"])
    model.load_state_dict(load_file(str(folder / WEIGHTS), device=str(device)))
    model.to(device).eval()
    meta = {
        "version": folder.name,
        "config": saved["config"],
        "n_items": saved["n_items"],
        "n_categories": saved["n_categories"],
        "metrics": _read_json(folder / METRICS),
        "data_window": _read_json(folder / DATA_WINDOW),
    }
    return model, meta


def build_network(model_config: dict[str, Any], n_items: int, n_categories: int) -> QNetwork:
    """An untrained QNetwork of a saved shape: the one way a stored model is rebuilt (then its weights load).

    ``model_config`` is a saved ``model`` config section. Fields added since it was saved take the
    value that rebuilds the old model (ADDED_MODEL_FIELDS); unknown keys (from a newer config) are
    ignored so that older code can still load it.
    """
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    fields = {**ADDED_MODEL_FIELDS, **model_config}
    return QNetwork(n_items, n_categories, ModelConfig(**{k: v for k, v in fields.items() if k in known}))


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


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
    return _read_json(Path(registry_root) / version / METRICS)


def version_data_window(registry_root: str | os.PathLike[str], version: str) -> dict[str, Any]:
    """The data window saved with a version (run date, what it was warm-started from)."""
    return _read_json(Path(registry_root) / version / DATA_WINDOW)


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


def champion_version(registry_root: str | os.PathLike[str]) -> str | None:
    """The version the champion pointer names, or None when there is no champion yet."""
    pointer = Path(registry_root) / CHAMPION
    if not pointer.is_file():
        return None
    return pointer.read_text().strip() or None


def set_champion(registry_root: str | os.PathLike[str], version: str) -> None:
    """Point the champion at ``version`` atomically (temporary file, fsync, os.replace)."""
    root = Path(registry_root)
    if not (root / version / WEIGHTS).is_file():
        raise FileNotFoundError(
            f"cannot make {version} champion: {root / version} is not a saved model version"
        )
    temporary = root / f".{CHAMPION}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(temporary, "w") as handle:
            handle.write(version + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, root / CHAMPION)
    finally:
        temporary.unlink(missing_ok=True)
