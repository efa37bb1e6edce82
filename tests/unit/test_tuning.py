"""`dqlrec tune`: a killed search resumes; the tuned settings file changes what the next night trains, below an
explicit setting; a tuned file with a key it may not hold is refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dql_model import faults
from dql_model.config import ConfigError, TrainConfig, TunedSettings, load_config
from dql_model.judging import report
from dql_model.learning import registry
from dql_model.warehouse import locks
from tests.conftest import PROJECT_ROOT
from tests.factories import write_night

NIGHT = "2026-11-27"


@pytest.fixture
def night(tiny_config, tmp_path):
    """One curated night in tiny_config's warehouse; a YAML config of it with trials that take a second."""
    cfg = tiny_config.replace(
        train={"epochs": 1, "device": "cpu", "seq_batch_size": 4, "threads": 1}, eval={"baseline_trials": 0}
    )
    write_night(cfg.layout, NIGHT)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return cfg, path


def _tune(config: Path, *, fault: str = "") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DQLREC_")}
    env.update({"DQLREC_CONFIG": str(config), "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"})
    if fault:
        env[faults.FAULT_ENV] = fault
    env.pop(locks.TOKEN_ENV, None)
    command = [sys.executable, "-m", "dql_model.cli", "tune", "--run-date", NIGHT, "--trials", "3", "--minutes", "3"]
    return subprocess.run(command, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)


def _trials(cfg) -> list:
    import optuna

    study = optuna.load_study(study_name=f"dqn-{NIGHT}", storage=f"sqlite:///{cfg.layout.tuning_study()}")
    return study.get_trials(deepcopy=True)


def test_a_killed_search_resumes_keeping_its_completed_trials(night):
    from optuna.trial import TrialState

    cfg, config = night
    killed = _tune(config, fault="tune:trial_done#2")  # the second trial dies after training, before it is told
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    before = _trials(cfg)
    assert [t.state for t in before] == [TrialState.COMPLETE, TrialState.RUNNING]
    assert not Path(cfg.layout.tuned_settings()).exists()  # no tuned file from an unfinished search

    resumed = _tune(config)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "trial 1 was left running by a killed search" in resumed.stdout
    after = _trials(cfg)
    first, killed_trial = after[0], after[1]
    assert (first.state, first.params, first.value) == (TrialState.COMPLETE, before[0].params, before[0].value)
    assert killed_trial.state == TrialState.FAIL
    retried = [t for t in after if t.system_attrs.get("failed_trial") == 1]
    assert len(retried) == 1 and retried[0].params == before[1].params and retried[0].state == TrialState.COMPLETE
    complete = [t for t in after if t.state == TrialState.COMPLETE]
    assert len(complete) == 3 and len(after) == 4

    tuned = yaml.safe_load(Path(cfg.layout.tuned_settings()).read_text())
    best = max(complete, key=lambda t: t.value)
    assert tuned["trials"] == 3 and tuned["value"] == pytest.approx(best.value)
    assert tuned["study"] == f"dqn-{NIGHT}" and tuned["run_date"] == NIGHT and tuned["metric"] == "eval/ndcg@10"
    assert tuned["settings"]["train"]["lr"] == pytest.approx(best.params["train.lr"])
    assert tuned["settings"]["model"]["embed_dim"] == tuned["settings"]["model"]["hidden_dim"] == best.params["model.width"]

    again = _tune(config)  # the study is complete: nothing is trained again
    assert again.returncode == 0 and "3 of 3 trials complete; 0 to run" in again.stdout
    assert len(_trials(cfg)) == 4


def _write_tuned(cfg, **settings) -> Path:
    tuned = TunedSettings(
        settings=settings, mode="dqn", study=f"dqn-{NIGHT}", run_date="2026-11-26", tuned_at="2026-12-01T03:00:00Z",
        metric="eval/ndcg@10", value=0.2712, trials=20,
    )  # fmt: skip
    path = Path(cfg.layout.tuned_settings())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(tuned.to_file()))
    return path


def test_a_tuned_file_changes_what_the_next_night_trains_below_explicit_settings(night, tmp_path, capsys):
    from dql_model.pipeline import tasks

    cfg, _ = night
    tuned_file = _write_tuned(cfg, **{"train.lr": 0.0042, "model.dropout": 0.33, "model.encoder": "sasrec"})
    explicit = tmp_path / "explicit.yaml"  # names only what this user sets: the dropout beats the tuned one
    explicit.write_text(yaml.safe_dump({**{k: v for k, v in cfg.to_dict().items() if k not in ("model", "train")},
                                        "model": {"embed_dim": 16, "hidden_dim": 16, "dropout": 0.05},
                                        "train": {"epochs": 1, "device": "cpu", "seq_batch_size": 4}}))  # fmt: skip
    night_cfg = load_config(explicit, env={})
    assert (night_cfg.train.lr, night_cfg.model.encoder, night_cfg.model.dropout) == (0.0042, "sasrec", 0.05)

    trained = tasks.train_model(NIGHT, cfg=night_cfg)
    saved = registry.load_model(Path(cfg.registry.root) / trained["version"])[1]["config"]
    assert saved["train"]["lr"] == 0.0042 and saved["model"]["encoder"] == "sasrec"
    assert saved["model"]["dropout"] == 0.05
    logged = capsys.readouterr().out
    line = (
        f"[dqlrec] tuned settings from {tuned_file} (tuned 2026-12-01T03:00:00Z on night 2026-11-26, 20 trials, "
        "eval/ndcg@10=0.2712): train.lr=0.0042 model.encoder=sasrec; set explicitly instead: model.dropout=0.05"
    )
    assert line in logged and trained["tuned"] == line.removeprefix("[dqlrec] ")
    text = report.render_markdown({"run_date": NIGHT, "evaluation": {"metrics": {"challenger": {}}, "tuned": trained["tuned"]}})
    assert f"Learning settings: {trained['tuned']}." in text

    # An explicit environment variable beats it too; tune.use_tuned off ignores the file.
    assert load_config(explicit, env={"DQLREC_TRAIN__LR": "0.001"}).train.lr == 0.001
    off = load_config(explicit, env={"DQLREC_TUNE__USE_TUNED": "false"})
    assert (off.train.lr, off.model.encoder) == (TrainConfig().lr, "gru")
    # A night of another mode does not take settings tuned for the DQN.
    supervised = load_config(explicit, env={"DQLREC_TRAIN__MODE": "supervised"})
    assert supervised.train.lr == TrainConfig().lr and tasks.tuned_line(supervised).endswith(
        "not used: tuned for train.mode=dqn, this run trains supervised"
    )


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda data: data["settings"]["train"].update(epochs=40), "['train.epochs']"),
        (lambda data: data.update(note="by hand"), "['note']"),
        (lambda data: data["settings"]["model"].update(dropout="lots"), "model.dropout"),
    ],
)
def test_a_tuned_file_with_a_key_it_may_not_hold_is_refused_naming_file_and_key(night, edit, named):
    cfg, config = night
    path = _write_tuned(cfg, **{"train.lr": 0.0042, "model.dropout": 0.3})
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as refused:
        load_config(config, env={})
    assert str(path) in str(refused.value) and named in str(refused.value)
