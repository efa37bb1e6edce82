from __future__ import annotations

import pytest
import yaml

from dql_model.config import Config, ConfigError, load_config


def test_defaults_then_file_then_environment(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"train": {"epochs": 3, "lr": 0.01}, "score": {"top_k": 7}}))
    cfg = load_config(path, env={"DQLREC_TRAIN__EPOCHS": "9", "DQLREC_SCORE__MASK_PURCHASED": "false"})
    assert cfg.train.epochs == 9  # environment beats the file
    assert cfg.train.lr == 0.01  # the file beats the default
    assert cfg.score.top_k == 7
    assert cfg.score.mask_purchased is False
    assert cfg.train.batch_size == Config().train.batch_size  # untouched default


def test_relative_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(env={"DQLREC_PUBLISH__EXPORT_URI": "s3://bucket/prefix"})
    assert cfg.warehouse.root == str(tmp_path / "var" / "warehouse")
    assert cfg.publish.export_uri == "s3://bucket/prefix"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DQLREC_TRAIN__EPOCHS": "many"}, "train.epochs: expected int"),
        ({"DQLREC_TRAIN__EPOCH": "3"}, "unknown field(s) ['epoch'] in section 'train'"),
        ({"DQLREC_TRAINING__EPOCHS": "3"}, "unknown section(s) ['training']"),
        ({"DQLREC_SCORE__MASK_PURCHASED": "perhaps"}, "expected a boolean"),
    ],
)
def test_bad_values_are_named(env, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_config(env=env)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml does not exist"):
        load_config(tmp_path / "nope.yaml", env={})


def test_hash_changes_with_any_field():
    base = Config()
    assert base.hash() == Config().hash()
    assert base.replace(train={"gamma": 0.5}).hash() != base.hash()


def test_rewards_follow_config():
    cfg = Config().replace(etl={"reward_purchase": 2.0})
    assert cfg.rewards() == {"view": 0.0, "add_to_cart": 0.3, "purchase": 2.0}
