"""Settings decided from the night's data (dql_model.learning.shape): model.state_memory at ``auto``."""

from __future__ import annotations

import numpy as np
import pytest

from dql_model.config import AUTO, Config, ConfigError, from_dict
from dql_model.learning import registry, shape, train
from dql_model.learning.networks import STATE_MEMORY_ON
from dql_model.warehouse import data
from tests.factories import make_shop


def _validation(states: list[list[int]], actions: list[int]) -> data.TransitionBatch:
    items = np.array(states, dtype=np.int64)
    n = len(actions)
    return data.TransitionBatch.from_state(
        items,
        np.where(items > 0, 1, 0),
        np.array(actions),
        np.ones(n, np.int64),
        np.zeros(n, np.float32),
        np.ones(n, bool),
    )


def _masks(rows: list[list[int]]) -> data.Exclusions:
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    return data.Exclusions(indptr, np.array([i for r in rows for i in r], dtype=np.int64))


# Three events repeat an item of their state (rows 0, 1, 3); row 2 is a new item.
VAL = _validation([[1, 2, 3], [0, 4, 5], [0, 0, 6], [7, 8, 9]], [3, 4, 10, 9])


def test_repeats_that_a_list_may_still_hold_turn_state_memory_on():
    assert shape.repeat_share(VAL, _masks([[], [], [], []])) == (3, 4)
    choice = shape.choose(Config(), VAL, _masks([[], [4], [], []]))  # row 1's repeat is masked: 2 of 4 remain
    assert choice.overrides == {"model": {"state_memory": STATE_MEMORY_ON}}
    assert choice.line() == (
        f"settings from the data: model.state_memory={STATE_MEMORY_ON} (50.0% of 4 validation events repeat a "
        "state item the lists may still hold (at least 1%))"
    )


def test_when_every_repeat_is_masked_state_memory_is_off():
    masked = _masks([[1, 2, 3], [4, 5], [6], [7, 8, 9]])  # score.exclude interacted: the whole state
    assert shape.repeat_share(VAL, masked) == (0, 4)
    choice = shape.choose(Config(), VAL, masked)
    assert choice.apply(Config()).model.state_memory == 0
    assert "model.state_memory=0 (0.0% of 4 validation events" in choice.line()


def test_a_set_value_is_kept_and_no_validation_keeps_the_path_on():
    cfg = Config().replace(model={"state_memory": 5})
    assert shape.choose(cfg, VAL, _masks([[1, 2, 3], [4, 5], [6], [7, 8, 9]])).line() == ""
    empty = shape.choose(Config(), VAL.take(slice(0, 0)), data.Exclusions.none(0))
    assert empty.overrides == {"model": {"state_memory": STATE_MEMORY_ON}}
    assert "no validation events" in empty.line()


def test_state_memory_reads_a_number_or_auto_and_nothing_else():
    assert Config().model.state_memory == AUTO
    assert from_dict({"model": {"state_memory": "0"}}).model.state_memory == 0
    with pytest.raises(ConfigError, match=r"model.state_memory='many' is none of: int or 'auto'"):
        from_dict({"model": {"state_memory": "many"}})


def test_training_saves_the_decided_setting_and_says_why(tiny_config, tmp_path, monkeypatch):
    transitions, item_index = make_shop(tmp_path / "shop", n_items=30, n_users=40, steps=12, max_len=6)
    cfg = tiny_config.replace(etl={"max_len": 6}, train={"epochs": 1, "device": "cpu"})

    def trained(**kw) -> tuple[train.TrainResult, list[str]]:
        lines: list[str] = []
        result = train.train_model(
            cfg, transitions_dir=str(transitions), item_index_dir=str(item_index), progress=lines.append, **kw
        )
        return result, lines

    on, lines = trained()  # the shop's users come back to items: the path is on
    assert on.config.model.state_memory == STATE_MEMORY_ON and on.model.memory_weight is not None
    assert (
        on.shape.startswith(f"settings from the data: model.state_memory={STATE_MEMORY_ON} (")
        and on.shape in lines
    )

    monkeypatch.setattr(shape, "REPEAT_SHARE_MIN", 0.99)  # a bar this shop's repeats cannot reach
    off, lines = trained()
    assert off.config.model.state_memory == 0 and off.model.memory_weight is None
    assert "model.state_memory=0 (" in off.shape and "(under 99%)" in off.shape and off.shape in lines
    # Saved with the decided value, the model is rebuilt in the shape it was trained in.
    version = registry.save_model(
        off.model,
        off.config,
        registry_root=str(tmp_path / "models"),
        metrics={"history": off.history},
        data_window={},
    )
    loaded, meta = registry.load_model(tmp_path / "models" / version)
    assert meta["config"]["model"]["state_memory"] == 0 and loaded.memory_weight is None
