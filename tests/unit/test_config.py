from __future__ import annotations

import datetime as dt
import os

import pytest
import yaml

from dql_model.config import Config, ConfigError, load_config, train_window_start


def test_defaults_then_file_then_environment(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"train": {"epochs": 3, "lr": 0.01}, "score": {"top_k": 7}}))
    cfg = load_config(path, env={"DQLREC_TRAIN__EPOCHS": "9", "DQLREC_SCORE__EXCLUDE": "none"})
    assert cfg.train.epochs == 9  # environment beats the file
    assert cfg.train.lr == 0.01  # the file beats the default
    assert cfg.score.top_k == 7
    assert cfg.score.exclude == "none"
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


FIXED_CHOICES = {
    "model.encoder": ["gru", "lstm", "attention", "sasrec"],
    "train.mode": ["dqn", "supervised", "sqn"],
    "train.batching": ["transitions", "sequences"],
    "train.target_update": ["polyak", "hard"],
    "train.purchase_credit": ["cart", "purchase"],
    "train.device": ["auto", "cuda", "cpu"],
    "score.engine": ["torch", "spark"],
    "eval.sim_refresh": ["session", "step"],
    "quality.empty_partition": ["fail", "warn"],
}


@pytest.mark.parametrize("key", sorted(FIXED_CHOICES))
def test_a_fixed_choice_field_refuses_other_values_at_load_time(key):
    section, name = key.split(".")
    env = {f"DQLREC_{section.upper()}__{name.upper()}": "bogus"}
    with pytest.raises(ConfigError) as caught:
        load_config(env=env)
    message = str(caught.value)
    assert f"{key}='bogus' is not one of {FIXED_CHOICES[key]}" in message
    assert "\n" not in message
    for choice in FIXED_CHOICES[key]:  # every allowed value loads
        loaded = load_config(env={f"DQLREC_{section.upper()}__{name.upper()}": choice})
        value = getattr(getattr(loaded, section), name)
        assert value == ((choice,) if isinstance(value, tuple) else choice)


def test_sections_built_in_code_are_checked_too():
    from dql_model.config import ScoreConfig, TrainConfig

    with pytest.raises(ConfigError, match=r"train.mode='sarsa' is not one of \['dqn', 'supervised', 'sqn'\]"):
        TrainConfig(mode="sarsa")
    with pytest.raises(ConfigError, match="score.engine='gpu'"):
        Config().replace(score={"engine": "gpu"})
    assert ScoreConfig(engine="spark").engine == "spark"


def test_sim_refresh_takes_a_list_or_a_comma_separated_string(tmp_path):
    assert load_config(env={"DQLREC_EVAL__SIM_REFRESH": "step, session"}).eval.sim_refresh == ("step", "session")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"eval": {"sim_refresh": ["step"]}}))
    cfg = load_config(path, env={})
    assert cfg.eval.sim_refresh == ("step",)
    assert yaml.safe_load(yaml.safe_dump(cfg.to_dict()))["eval"]["sim_refresh"] == ["step"]
    with pytest.raises(ConfigError, match="eval.sim_refresh is empty"):
        load_config(env={"DQLREC_EVAL__SIM_REFRESH": ","})


def test_metric_names_are_checked():
    assert load_config(env={"DQLREC_EVAL__GATE_METRIC": "eval/purchase/hr@20"}).eval.gate_metric == "eval/purchase/hr@20"
    for bad in ("eval/ndcg10", "ndcg@10", "eval/clicks/ndcg@10", "eval/purchase/coverage@10", "eval/ndcg@0"):
        with pytest.raises(ConfigError, match=r"environment: eval.gate_metric=.* is not a validation metric"):
            load_config(env={"DQLREC_EVAL__GATE_METRIC": bad})


def test_evaluation_settings_under_their_old_names_still_work(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({"train": {"sim_users": 7, "baseline_trials": 0}, "registry": {"gate_tolerance": 0.1}}))
    with pytest.warns(FutureWarning, match="train.sim_users is now eval.sim_users"):
        cfg = load_config(path, env={"DQLREC_TRAIN__SIM_SEEDS": "3"})
    assert (cfg.eval.sim_users, cfg.eval.baseline_trials, cfg.eval.gate_tolerance, cfg.eval.sim_seeds) == (7, 0, 0.1, 3)
    # Given both ways, the new name wins.
    with pytest.warns(FutureWarning):
        both = load_config(env={"DQLREC_TRAIN__SIM_USERS": "7", "DQLREC_EVAL__SIM_USERS": "9"})
    assert both.eval.sim_users == 9


def test_windows_and_masks_under_their_old_names_keep_their_meaning():
    with pytest.warns(FutureWarning, match="etl.train_days is now etl.train_window"):
        cfg = load_config(env={"DQLREC_ETL__TRAIN_DAYS": "14"})
    assert train_window_start(cfg.etl.train_window, dt.date(2026, 11, 27), dt.date(2026, 1, 1)) == dt.date(2026, 11, 14)
    for old, new in (("false", "none"), ("true", "purchased")):
        with pytest.warns(FutureWarning, match="score.mask_purchased is now score.exclude"):
            assert load_config(env={"DQLREC_SCORE__MASK_PURCHASED": old}).score.exclude == new


def test_the_training_window_is_all_history_a_number_of_days_or_a_first_day():
    run, first = dt.date(2026, 11, 27), dt.date(2026, 5, 1)
    assert train_window_start("all", run, first) == first
    assert train_window_start("14d", run, first) == dt.date(2026, 11, 14)
    assert train_window_start("14", run, first) == dt.date(2026, 11, 14)
    assert train_window_start("400d", run, first) == first  # never before the first loaded day
    assert train_window_start("2026-10-01", run, first) == dt.date(2026, 10, 1)
    assert load_config(env={"DQLREC_ETL__TRAIN_WINDOW": "2026-06-01"}).etl.train_window == "2026-06-01"
    assert train_window_start("2020-01-01", run, first) == first
    with pytest.raises(ConfigError, match="starts after the run date"):
        train_window_start("2026-12-01", run, first)
    for bad in ("fortnight", "0d", "2026-02-30"):
        with pytest.raises(ConfigError, match="etl.train_window"):
            load_config(env={"DQLREC_ETL__TRAIN_WINDOW": bad})
    with pytest.raises(ConfigError, match="etl.validation='random' is not one of"):
        load_config(env={"DQLREC_ETL__VALIDATION": "random"})


def test_layout_follows_the_warehouse_root():
    cfg = Config().replace(warehouse={"root": "/data/wh"})
    assert cfg.layout.partition("events", "2026-11-27") == "/data/wh/raw/events/event_date=2026-11-27"
    assert cfg.layout.partition("transitions", "2026-11-27") == "/data/wh/curated/transitions/run_date=2026-11-27"
    assert cfg.layout.etl_summary("2026-11-27") == "/data/wh/curated/_runs/run_date=2026-11-27/build_training_data.json"
    assert cfg.layout.staged("recommendations", "2026-11-27") == "/data/wh/staging/recommendations/run_date=2026-11-27"
    assert cfg.layout.report("2026-11-27") == "/data/wh/reports/run_date=2026-11-27"
    with pytest.raises(KeyError, match="no table 'clicks'"):
        cfg.layout.table("clicks")


SECRET = "hunter2"


@pytest.mark.parametrize(
    ("key", "url", "instead"),
    [
        ("publish.sql_url", f"postgresql://dqlrec:{SECRET}@db:5432/wh", "PGPASSWORD (or ~/.pgpass)"),
        ("publish.sql_url", f"postgresql+psycopg://dqlrec@db/wh?sslmode=require&password={SECRET}", "PGPASSWORD"),
        ("publish.sql_url", "redshift://dqlrec:@cluster.example:5439/dev", "PGPASSWORD"),
        ("publish.export_uri", f"s3://AKIAEXAMPLE:{SECRET}@bucket/marketing", "standard AWS settings"),
        ("warehouse.root", f"s3://AKIAEXAMPLE:{SECRET}@lake/warehouse", "standard AWS settings"),
        ("registry.root", f"s3://models/registry?aws_secret_access_key={SECRET}", "standard AWS settings"),
    ],
)
def test_credentials_in_urls_are_refused_when_the_config_loads_and_never_echoed(key, url, instead):
    section, name = key.split(".")
    with pytest.raises(ConfigError) as caught:
        load_config(env={f"DQLREC_{section.upper()}__{name.upper()}": url})
    message = str(caught.value)
    assert message.startswith(f"environment: {key}=") and "carries a credential" in message
    assert instead in message and "***" in message  # the URL is shown with the secret masked
    assert SECRET not in message and SECRET not in str(caught.value.__context__)
    with pytest.raises(ConfigError, match=f"{key}=.*carries a credential"):  # built in code: the same gate
        Config().replace(**{section: {name: url}})


@pytest.mark.parametrize("url", ["mysql://dqlrec@db/wh", f"host=db user=dqlrec password={SECRET}"])
def test_sql_url_must_be_a_postgresql_url(url):
    with pytest.raises(ConfigError, match=r"publish.sql_url must be a postgresql:// URL") as caught:
        load_config(env={"DQLREC_PUBLISH__SQL_URL": url})
    assert SECRET not in str(caught.value)  # a libpq keyword string is not echoed either


def test_urls_without_credentials_load():
    cfg = load_config(
        env={
            "DQLREC_PUBLISH__SQL_URL": "postgresql+psycopg://dqlrec@db:5432/wh?sslmode=require",
            "DQLREC_PUBLISH__EXPORT_URI": "s3://bucket/marketing",
            "DQLREC_WAREHOUSE__ROOT": "s3://lake/warehouse",
            "DQLREC_REGISTRY__ROOT": "/data/models:v2@nightly",  # a local path may hold ':' and '@'
        }
    )
    assert cfg.publish.sql_url == "postgresql+psycopg://dqlrec@db:5432/wh?sslmode=require"
    assert cfg.warehouse.root == "s3://lake/warehouse"
    assert cfg.registry.root == "/data/models:v2@nightly"
    assert load_config(env={"DQLREC_PUBLISH__SQL_URL": "redshift://u@cluster.example:5439/dev"}).publish.sql_url


def test_a_password_from_the_environment_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys):
    """The config with the password never reaches a model's config.json, a report, XCom or a job's config file."""
    from dql_model import cli
    from dql_model.pipeline import tasks

    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("DQLREC_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DQLREC_PUBLISH__SQL_URL", f"postgresql://dqlrec:{SECRET}@db:5432/wh")
    monkeypatch.setenv("DQLREC_WAREHOUSE__ROOT", str(tmp_path / "warehouse"))
    monkeypatch.setenv("DQLREC_REGISTRY__ROOT", str(tmp_path / "models"))
    for name, value in {"N_USERS": "12", "N_ITEMS": "10", "N_CATEGORIES": "2", "N_DAYS": "2"}.items():
        monkeypatch.setenv(f"DQLREC_SIMULATOR__{name}", value)  # small, should the shop be written

    assert cli.main(["generate"]) == 2
    error = capsys.readouterr().err
    assert "publish.sql_url" in error and "PGPASSWORD" in error and SECRET not in error
    with pytest.raises(ConfigError, match="publish.sql_url=.*carries a credential") as caught:
        tasks.train_model("2026-11-27")  # the task that saves the config with the model
    assert SECRET not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_each_learned_mode_and_encoder_capability_has_one_owner():
    """The learned modes are train.mode's choices and the sources their rows carry; the encoders that
    sequence batches accept are exactly those with an output after every position."""
    import typing

    from dql_model import config
    from dql_model.contract import schema
    from dql_model.learning.networks import ENCODERS

    assert config.LEARNED_MODES == tuple(schema.MODEL_SOURCES)
    assert set(ENCODERS) == set(typing.get_args(config.Encoder))
    assert {name for name, encoder in ENCODERS.items() if hasattr(encoder, "forward_all")} == set(config.SEQUENCE_ENCODERS)
    with pytest.warns(UserWarning, match="attention.*trains on transition rows only"):
        cfg = Config().replace(model={"encoder": "attention"}, train={"batching": "sequences"})
    assert cfg.train.batching == "transitions"


def test_the_off_policy_settings_are_a_config_section():
    """Their errors name ope.*: that section exists in YAML and the environment, and None means no clipping."""
    assert load_config(env={"DQLREC_OPE__CLIP": "2.5"}).ope.clip == 2.5
    assert load_config(env={"DQLREC_OPE__CLIP": "none"}).ope.clip is None
    with pytest.raises(ConfigError, match=r"ope.n_bootstrap must be at least 1"):
        load_config(env={"DQLREC_OPE__N_BOOTSTRAP": "0"})
