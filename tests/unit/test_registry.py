"""Registry: save -> load round trip, idempotent versions, atomic champion pointer."""

from __future__ import annotations

import hashlib
import json
import os
import re
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest
import torch

from dql_model.config import Config
from dql_model.learning import registry
from dql_model.learning.networks import QNetwork
from dql_model.scoring.engines import score_users
from dql_model.scoring.policy import Policy
from dql_model.warehouse import data, storage

torch.set_num_threads(1)
WINDOW = {"run_date": "2026-11-27", "train_days": 5, "n_transitions": 123}


def trained_like_model(cfg: Config, seed: int = 0) -> QNetwork:
    torch.manual_seed(seed)
    model = QNetwork(20, 3, cfg.model)
    model.set_item_features(np.arange(21) % 4, np.arange(21) % 5)
    with torch.no_grad():
        model.item_bias.weight.normal_()
    return model.eval()


def top_k_table(model: QNetwork) -> pa.Table:
    rng = np.random.default_rng(0)
    items = rng.integers(0, 21, size=(6, 5))
    states = data.UserStates(
        user_id=pa.array([f"u{i}" for i in range(6)]),
        state_items=items,
        state_events=(items > 0).astype(np.int64),
        excluded_indptr=np.zeros(7, dtype=np.int64),
        excluded_items=np.zeros(0, dtype=np.int64),
    )
    features = data.ItemFeatures(
        item_ids=np.array([None] + [f"i{i}" for i in range(1, 21)], dtype=object),
        category=np.zeros(21, dtype=np.int64),
        price_bucket=np.zeros(21, dtype=np.int64),
        available=np.arange(21) > 0,
        category_ids=[],
    )
    return score_users(
        model,
        states,
        features,
        Policy(top_k=5),
        batch_size=4,
        popularity=np.zeros(21),
        model_version="v",
        generated_at=datetime(2026, 11, 27, tzinfo=UTC),
    )


def as_saved_before_digests(folder) -> dict:
    """Make ``folder`` look like a version saved before digests existed (format 1); returns its config.json."""
    (folder / "digests.json").unlink()
    saved = json.loads((folder / "config.json").read_text())
    saved["format_version"] = 1
    (folder / "config.json").write_text(json.dumps(saved))
    return saved


@pytest.fixture
def cfg(tiny_config) -> Config:
    return tiny_config.replace(model={"encoder": "lstm"})


def test_save_load_gives_identical_top_k(tmp_path, cfg):
    model = trained_like_model(cfg)
    version = registry.save_model(
        model, cfg, registry_root=tmp_path, metrics={"eval/ndcg@10": 0.3}, data_window=WINDOW
    )
    assert re.fullmatch(r"20261127-[0-9a-f]{8}", version)
    folder = tmp_path / version
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "data_window.json",
        "digests.json",
        "lineage.json",
        "metrics.json",
        "model.safetensors",
    ]
    saved = json.loads((folder / "config.json").read_text())
    assert saved["config"] == cfg.to_dict() and saved["n_items"] == 20 and saved["n_categories"] == 3

    loaded, meta = registry.load_model(folder)
    assert isinstance(loaded.encoder.rnn, torch.nn.LSTM)
    assert (
        meta["metrics"] == {"eval/ndcg@10": 0.3}
        and meta["data_window"] == WINDOW
        and meta["version"] == version
    )
    torch.testing.assert_close(loaded.item_category, model.item_category)  # item features travel too
    assert top_k_table(loaded).equals(top_k_table(model))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_same_model_same_version_other_weights_other_version(tmp_path, cfg):
    model = trained_like_model(cfg)
    first = registry.save_model(model, cfg, registry_root=tmp_path, metrics={}, data_window=WINDOW)
    assert registry.save_model(model, cfg, registry_root=tmp_path, metrics={}, data_window=WINDOW) == first
    other = registry.save_model(
        trained_like_model(cfg, seed=1), cfg, registry_root=tmp_path, metrics={}, data_window=WINDOW
    )
    assert other != first
    assert registry.list_versions(tmp_path) == sorted([first, other])
    prefixed = registry.save_model(
        model, cfg, registry_root=tmp_path, metrics={}, data_window={}, version_prefix="20261128"
    )
    assert prefixed == "20261128-" + first.split("-")[1]
    with pytest.raises(FileExistsError):
        registry.save_model(
            trained_like_model(cfg, seed=2),
            cfg,
            registry_root=tmp_path,
            metrics={},
            data_window=WINDOW,
            version=first,
        )


def test_failed_save_leaves_nothing(tmp_path, cfg, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(registry, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        registry.save_model(
            trained_like_model(cfg), cfg, registry_root=tmp_path, metrics={}, data_window=WINDOW
        )
    assert list(tmp_path.iterdir()) == []


def test_set_champion_is_atomic(tmp_path, cfg, monkeypatch):
    assert registry.champion_version(tmp_path) is None
    first = registry.save_model(
        trained_like_model(cfg), cfg, registry_root=tmp_path, metrics={}, data_window=WINDOW
    )
    second = registry.save_model(
        trained_like_model(cfg, 1), cfg, registry_root=tmp_path, metrics={}, data_window=WINDOW
    )
    registry.set_champion(tmp_path, first)
    assert registry.champion_version(tmp_path) == first

    def crash(src, dst):
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        registry.set_champion(tmp_path, second)
    monkeypatch.undo()
    assert registry.champion_version(tmp_path) == first  # the old pointer is intact
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # temp file cleaned up

    registry.set_champion(tmp_path, second)
    assert registry.champion_version(tmp_path) == second
    with pytest.raises(FileNotFoundError, match="model version 20990101-deadbeef is not in the registry"):
        registry.set_champion(tmp_path, "20990101-deadbeef")


def test_load_model_never_unpickles(tmp_path, cfg):
    version = registry.save_model(
        trained_like_model(cfg), cfg, registry_root=tmp_path, metrics={}, data_window=WINDOW
    )
    # A pickle where the weights should be is rejected, not executed.
    torch.save({"x": torch.zeros(1)}, tmp_path / version / "model.safetensors")
    with pytest.raises(Exception, match="(?i)header|safetensor|deserializ"):
        registry.load_model(tmp_path / version)
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        registry.load_model(tmp_path / "missing")


def test_a_model_saved_before_state_memory_still_loads(tmp_path, cfg):
    old_cfg = cfg.replace(model={"state_memory": 0})
    model = trained_like_model(old_cfg)
    version = registry.save_model(model, old_cfg, registry_root=tmp_path, metrics={}, data_window=WINDOW)
    saved = as_saved_before_digests(tmp_path / version)
    del saved["config"]["model"]["state_memory"]  # as written before the field existed
    (tmp_path / version / "config.json").write_text(json.dumps(saved))
    loaded, _ = registry.load_model(tmp_path / version)
    assert loaded.memory_weight is None
    assert top_k_table(loaded).equals(top_k_table(model))


def test_digests_are_recorded_at_save_time_and_saving_twice_stays_a_no_op(tmp_path, cfg):
    import hashlib

    model = trained_like_model(cfg)
    version = registry.save_model(model, cfg, registry_root=tmp_path, metrics={}, data_window=WINDOW)
    folder = tmp_path / version
    digests = json.loads((folder / "digests.json").read_text())
    assert digests == {
        "sha256": {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in ("model.safetensors", "config.json")}
    }
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert registry.save_model(model, cfg, registry_root=tmp_path, metrics={}, data_window=WINDOW) == version
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_a_finite_change_to_the_weights_is_refused_naming_the_file_and_the_version(tmp_path, cfg):
    from safetensors.torch import load_file, save_file

    model = trained_like_model(cfg)
    version = registry.save_model(model, cfg, registry_root=tmp_path, metrics={}, data_window=WINDOW)
    weights = tmp_path / version / "model.safetensors"
    state = load_file(str(weights))
    state["item_bias.weight"] = state["item_bias.weight"] + 0.5  # a valid file, finite values, other scores
    save_file(state, str(weights), metadata={"format": "pt"})
    with pytest.raises(registry.ModelIntegrityError, match=f"model version {version} .*: model.safetensors does not match the sha256"):
        registry.load_model(tmp_path / version)

    # The config is covered too: another network shape must not be rebuilt around the weights.
    other = registry.save_model(model, cfg, registry_root=tmp_path / "b", metrics={}, data_window=WINDOW)
    config = tmp_path / "b" / other / "config.json"
    config.write_text(config.read_text().replace('"top_k": 5', '"top_k": 6'))
    with pytest.raises(registry.ModelIntegrityError, match=f"model version {other} .*: config.json does not match"):
        registry.load_model(tmp_path / "b" / other)

    # Removing the digests does not get a changed file through.
    (tmp_path / "b" / other / "digests.json").unlink()
    with pytest.raises(registry.ModelIntegrityError, match=f"model version {other} .*: digests.json is missing"):
        registry.load_model(tmp_path / "b" / other)


def test_a_pickle_in_place_of_the_weights_is_refused_naming_the_file_and_the_version(tmp_path, cfg):
    for name in ("with-digests", "before-digests"):
        version = registry.save_model(
            trained_like_model(cfg), cfg, registry_root=tmp_path / name, metrics={}, data_window=WINDOW
        )
        folder = tmp_path / name / version
        if name == "before-digests":
            as_saved_before_digests(folder)  # no digest to catch it: the safetensors parser does
        torch.save({"x": torch.zeros(1)}, folder / "model.safetensors")
        with pytest.raises(registry.ModelIntegrityError, match=f"model version {version} .*: model.safetensors "):
            registry.load_model(folder)


def test_a_version_saved_before_digests_loads_with_a_warning(tmp_path, cfg, caplog):
    model = trained_like_model(cfg)
    version = registry.save_model(model, cfg, registry_root=tmp_path, metrics={}, data_window=WINDOW)
    as_saved_before_digests(tmp_path / version)
    with caplog.at_level("WARNING", logger="dql_model.learning.registry"):
        loaded, meta = registry.load_model(tmp_path / version)
    assert meta["version"] == version and top_k_table(loaded).equals(top_k_table(model))
    assert f"model version {version} was saved without digests" in caplog.text


@pytest.mark.parametrize("name", ["../../x", "/etc/passwd", "other/20261127-deadbeef", "..", ".staging-1", "a\\b"])
def test_a_champion_pointer_outside_the_registry_is_refused(tmp_path, cfg, name):
    version = registry.save_model(trained_like_model(cfg), cfg, registry_root=tmp_path, metrics={}, data_window=WINDOW)
    (tmp_path / "champion").write_text(name + "\n")
    with pytest.raises(ValueError, match="champion pointer .*champion does not name a version of this registry"):
        registry.champion_version(tmp_path)
    with pytest.raises(ValueError, match="champion pointer"):
        registry.incumbent_for(tmp_path, "2026-11-28")  # what training and the gate start from
    with pytest.raises(ValueError, match="is not a model version name"):
        registry.set_champion(tmp_path, name)
    registry.set_champion(tmp_path, version)
    assert registry.champion_version(tmp_path) == version


def test_set_champion_and_save_model_refuse_names_that_leave_the_registry(tmp_path, cfg):
    model = trained_like_model(cfg)
    elsewhere = registry.save_model(model, cfg, registry_root=tmp_path / "elsewhere", metrics={}, data_window=WINDOW)
    root = tmp_path / "models"
    root.mkdir()
    escaping = f"../elsewhere/{elsewhere}"  # resolves to a saved version, but not one of this registry
    with pytest.raises(ValueError, match="is not a model version name"):
        registry.set_champion(root, escaping)
    assert registry.champion_version(root) is None
    with pytest.raises(ValueError, match="is not a model version name"):
        registry.save_model(model, cfg, registry_root=root, metrics={}, data_window=WINDOW, version="../outside")
    assert not (tmp_path / "outside").exists() and list(root.iterdir()) == []


def test_the_cold_mask_travels_with_the_weights_and_a_model_saved_before_it_still_loads(tmp_path, cfg):
    from safetensors.torch import load_file, save_file

    model = trained_like_model(cfg)
    with torch.no_grad():
        model.unknown_item.normal_()
    model.set_cold_items(np.arange(21) % 3 == 0)
    version = registry.save_model(model, cfg, registry_root=tmp_path, metrics={}, data_window=WINDOW)
    loaded, _ = registry.load_model(tmp_path / version)
    assert torch.equal(loaded.cold_item, model.cold_item) and loaded.cold_item.sum() == 6
    assert top_k_table(loaded).equals(top_k_table(model))

    old_model = trained_like_model(cfg, seed=1)  # as trained before the mask: no cold items
    version = registry.save_model(old_model, cfg, registry_root=tmp_path, metrics={}, data_window=WINDOW)
    weights = tmp_path / version / "model.safetensors"
    state = {k: v for k, v in load_file(weights).items() if k not in ("cold_item", "unknown_item")}
    save_file(state, str(weights), metadata={"format": "pt"})
    saved = as_saved_before_digests(tmp_path / version)
    del saved["config"]["model"]["id_dropout"]
    (tmp_path / version / "config.json").write_text(json.dumps(saved))
    loaded, _ = registry.load_model(tmp_path / version)
    assert not loaded.cold_item.any() and loaded.cfg.id_dropout == 0.0
    assert top_k_table(loaded).equals(top_k_table(old_model))


# --- the promotion log, rollback and lineage ---------------------------------------------------------


def saved_versions(root, cfg, n: int) -> list[str]:
    """``n`` distinct versions, oldest name first."""
    return [
        registry.save_model(
            trained_like_model(cfg, seed), cfg, registry_root=root, metrics={"best": {"eval/ndcg@10": 0.1 * seed}},
            data_window=WINDOW, version=f"2026112{seed}-v",
        )
        for seed in range(n)
    ]  # fmt: skip


def test_each_change_of_the_champion_appends_one_line_and_never_rewrites_earlier_ones(tmp_path, cfg, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CTX_DAG_ID", "dql_recommendations")
    monkeypatch.setenv("AIRFLOW_CTX_TASK_ID", "evaluate_and_gate")
    monkeypatch.setenv("AIRFLOW_CTX_DAG_RUN_ID", "scheduled__2026-11-28")
    a, b = saved_versions(tmp_path, cfg, 2)
    registry.set_champion(tmp_path, a, why="gate 2026-11-27: promoted (no champion)")
    log_file = tmp_path / registry.PROMOTIONS
    first_bytes = log_file.read_bytes()
    assert registry.set_champion(tmp_path, a, why="gate: kept champion") is None  # no change, no line
    monkeypatch.delenv("AIRFLOW_CTX_TASK_ID")
    entry = registry.set_champion(tmp_path, b, why="manual: better on purchases", action="promote")

    assert log_file.read_bytes().startswith(first_bytes)  # appended after, never rewritten
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [(e["action"], e["version"], e["previous"]) for e in lines] == [("gate", a, None), ("promote", b, a)]
    assert lines[0]["who"] == "airflow:dql_recommendations.evaluate_and_gate run scheduled__2026-11-28"
    assert lines[1] == entry and re.fullmatch(r"[^@]+@.+", entry["who"])
    assert entry["why"] == "manual: better on purchases"
    assert datetime.fromisoformat(entry["at"]).tzinfo is not None
    assert registry.promotion_log(tmp_path) == lines


def test_rollback_walks_back_the_champions_of_the_log(tmp_path, cfg):
    a, b, c = saved_versions(tmp_path, cfg, 3)
    with pytest.raises(registry.NoRollback, match="nothing to roll back to"):
        registry.rollback(tmp_path, why="manual: none yet")
    for version in (a, b, c):
        registry.set_champion(tmp_path, version, why="gate")

    assert registry.rollback(tmp_path, why="manual: c is broken")["version"] == b
    assert registry.champion_version(tmp_path) == b
    assert registry.rollback(tmp_path, why="manual: b too")["version"] == a  # not back to c
    with pytest.raises(registry.NoRollback, match=f"names no champion before {a}"):
        registry.rollback(tmp_path, why="manual: again")
    assert registry.champion_version(tmp_path) == a
    log = registry.promotion_log(tmp_path)
    assert [(e["action"], e["version"], e["previous"]) for e in log[-2:]] == [("rollback", b, c), ("rollback", a, b)]


def test_a_pointer_change_missing_from_the_log_is_recovered_from_the_next_line(tmp_path, cfg):
    """A crash between the pointer and the log, or a hand edit: the next line's ``previous`` still tells."""
    a, b, c = saved_versions(tmp_path, cfg, 3)
    registry.set_champion(tmp_path, a, why="gate")
    (tmp_path / registry.CHAMPION).write_text(b + "\n")  # moved without a log line
    assert registry.rollback_target(tmp_path) == a
    registry.set_champion(tmp_path, c, why="gate")
    assert registry.champion_stack(registry.promotion_log(tmp_path)) == [a, b, c]
    assert registry.rollback(tmp_path, why="manual")["version"] == b


def test_a_torn_line_is_skipped_and_does_not_swallow_the_next_one(tmp_path, cfg, caplog):
    a, b = saved_versions(tmp_path, cfg, 2)
    registry.set_champion(tmp_path, a, why="gate")
    with open(tmp_path / registry.PROMOTIONS, "a") as log_file:
        log_file.write('{"at": "2026-11-28T0')  # a crash mid-write
    registry.set_champion(tmp_path, b, why="gate")
    with caplog.at_level("WARNING", logger="dql_model.learning.registry"):
        log = registry.promotion_log(tmp_path)
    assert [e["version"] for e in log] == [a, b]
    assert "line 2 is not a promotion record" in caplog.text


def test_an_unknown_version_is_refused_naming_it_and_the_versions_that_exist(tmp_path, cfg):
    a, b = saved_versions(tmp_path, cfg, 2)
    with pytest.raises(registry.UnknownVersion) as refused:
        registry.require_version(tmp_path, "20990101-nope")
    assert str(refused.value) == f"model version 20990101-nope is not in the registry {tmp_path}; its versions: {a}, {b}"
    with pytest.raises(registry.UnknownVersion, match="is not a model version name"):
        registry.require_version(tmp_path, "../x")
    assert not (tmp_path / registry.PROMOTIONS).exists()


def test_lineage_records_code_requirements_config_and_the_nights_data(tmp_path, cfg):
    summary = {"window": {"start": "2026-11-23"}, "counts": {"accepted": 90, "transitions_train": 70, "users": 6}}
    storage.write_json_atomic(cfg.layout.etl_summary(WINDOW["run_date"]), summary)
    version = registry.save_model(
        trained_like_model(cfg), cfg, registry_root=tmp_path / "models", metrics={}, data_window=WINDOW
    )
    lineage = registry.version_lineage(tmp_path / "models", version)
    requirements = registry.PROJECT_ROOT / "requirements.txt"
    assert lineage["requirements_sha256"] == hashlib.sha256(requirements.read_bytes()).hexdigest()
    assert lineage["config_hash"] == cfg.hash()
    assert lineage["code_commit"] == registry.code_commit()
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", lineage["code_commit"])
    assert lineage["data"]["run_date"] == "2026-11-27" and lineage["data"]["train_window_start"] == "2026-11-23"
    assert lineage["data"]["counts"] == summary["counts"]

    bare = registry.save_model(
        trained_like_model(cfg, 1), cfg.replace(warehouse={"root": str(tmp_path / "empty")}),
        registry_root=tmp_path / "models", metrics={}, data_window={},
    )  # fmt: skip
    assert registry.version_lineage(tmp_path / "models", bare)["data"]["train_window_start"] == "unknown"


def _promote_in_turn(root: str, versions: list[str], times: int) -> None:
    for n in range(times):
        registry.set_champion(root, versions[n % len(versions)], why=f"writer {os.getpid()}")


def test_concurrent_writers_leave_one_unbroken_chain_in_the_log(tmp_path, cfg):
    """Two processes moving the champion at once: each line's previous is the line before's version."""
    import multiprocessing

    versions = saved_versions(tmp_path, cfg, 3)
    context = multiprocessing.get_context("fork")
    writers = [
        context.Process(target=_promote_in_turn, args=(str(tmp_path), order, 30))
        for order in (versions, versions[::-1])
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
    assert [writer.exitcode for writer in writers] == [0, 0]
    log = registry.promotion_log(tmp_path)
    assert len(log) == len((tmp_path / registry.PROMOTIONS).read_text().splitlines()) > 30
    assert all(later["previous"] == earlier["version"] for earlier, later in zip(log, log[1:], strict=False))
    assert registry.champion_version(tmp_path) == log[-1]["version"]
