"""train_model end to end on a tiny learnable shop: metrics, early stopping, seeds, warm start."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dql_model.config import Config, ModelConfig
from dql_model.contract import schema
from dql_model.evaluation.evaluate import evaluate_scorer
from dql_model.learning import device, train
from dql_model.learning.networks import QNetwork
from dql_model.learning.scorer import QNetworkScorer
from dql_model.learning.train import Checkpoints
from dql_model.scoring.popularity import PopularityScorer
from dql_model.warehouse import data
from tests.factories import item_index_table, make_shop, write_parquet

torch.set_num_threads(1)
MAX_LEN = 8


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    return make_shop(tmp_path_factory.mktemp("shop"), n_items=30, n_users=40, steps=12, max_len=MAX_LEN)


def config(tiny_config: Config, **train_overrides) -> Config:
    return tiny_config.replace(
        etl={"max_len": MAX_LEN},
        model={"embed_dim": 16, "hidden_dim": 16, "dropout": 0.0},
        train={"epochs": 6, "batch_size": 32, "seq_batch_size": 4, "lr": 1e-2, "device": "cpu"}
        | train_overrides,
    )


def run(cfg: Config, shop, **kw) -> train.TrainResult:
    transitions, item_index = shop
    lines: list[str] = []
    result = train.train_model(
        cfg, transitions_dir=str(transitions), item_index_dir=str(item_index), progress=lines.append, **kw
    )
    result.lines = lines
    return result


def test_train_model_end_to_end_learns_the_shop(tiny_config, shop):
    result = run(config(tiny_config), shop)

    assert result.n_transitions == 40 * 10 and result.device == "cpu"
    assert 1 <= result.best_epoch <= len(result.history) <= 6
    for row in result.history:
        assert {"loss/td", "loss/cql", "loss/total", "q/mean", "eval/ndcg@10", "eval/purchase/hr@10"} <= set(
            row
        )
        assert {"time/epoch_s", "throughput/transitions_per_s", "eval/coverage@10"} <= set(row)
    assert result.best_value == max(row["eval/ndcg@10"] for row in result.history)
    assert result.best_metrics["eval/ndcg@10"] == result.best_value
    assert any(line.startswith("epoch 1/6 ") and "eval/ndcg@10=" in line for line in result.lines)
    assert "best eval/ndcg@10=" in result.lines[-1]

    # The users follow a hidden successor rule: the Q-network must beat popularity by far.
    transitions, _ = shop
    val = data.load_transitions(transitions, max_len=MAX_LEN, split=schema.VALIDATION)
    popularity = evaluate_scorer(PopularityScorer.from_transitions(transitions, n_items=30), val)
    assert result.best_value > popularity["eval/ndcg@10"] + 0.3
    assert not result.model.training


def test_supervised_mode_trains_without_td(tiny_config, shop):
    result = run(config(tiny_config, mode="supervised", epochs=1), shop)
    assert result.stopped_by == train.STOP_EPOCH_CAP  # one epoch: neither converged nor out of time
    assert "loss/td" not in result.history[0] and "loss/cql" in result.history[0]
    assert result.history[0]["loss/total"] == pytest.approx(result.history[0]["loss/cql"])


def test_cpu_training_is_reproducible_for_a_seed(tiny_config, shop):
    cfg = config(tiny_config, epochs=2, seed=3)
    cfg = cfg.replace(model={"dropout": 0.2, "id_dropout": 0.3})  # dropout draws must be seeded too
    first, second = run(cfg, shop), run(cfg, shop)
    other = run(cfg.replace(train={"seed": 4}), shop)

    def losses(result):
        return [row["loss/total"] for row in result.history]

    assert losses(first) == losses(second)
    for name, tensor in first.model.state_dict().items():
        assert torch.equal(tensor, second.model.state_dict()[name]), name
    assert losses(first) != losses(other)


def test_early_stopping_keeps_the_best_weights(tiny_config, shop, monkeypatch):
    scores = iter([0.5, 0.7, 0.6, 0.4, 0.9, 0.9])
    snapshots = []

    def fake_evaluate(scorer, val, **kwargs):
        snapshots.append({k: v.clone() for k, v in scorer.model.state_dict().items()})
        return {"eval/ndcg@10": next(scores)}

    monkeypatch.setattr(train, "evaluate_scorer", fake_evaluate)
    result = run(config(tiny_config, epochs=6, patience=2), shop)
    # best at epoch 2, no better in epochs 3 and 4 -> stop after 4 (patience 2)
    assert len(result.history) == 4 and result.best_epoch == 2 and result.best_value == 0.7
    assert result.stopped_by == train.STOP_CONVERGED
    assert any(line.startswith("early stop") for line in result.lines)
    assert result.lines[-1].endswith("best eval/ndcg@10=0.7000 at epoch 2; stopped by converged")
    for name, tensor in result.model.state_dict().items():
        assert torch.equal(tensor, snapshots[1][name]), name
    assert not torch.equal(result.model.item_bias.weight, snapshots[3]["item_bias.weight"])


def test_the_polyak_average_is_what_is_judged_and_kept(tiny_config, shop, monkeypatch):
    real_prepare, real_evaluate = train._prepare, train._evaluate
    agents, judged, online, averages = [], [], [], []

    def prepare(*args, **kwargs):
        setup = real_prepare(*args, **kwargs)
        agents.append(setup.agent)
        return setup

    def evaluate(model, val, masks, device, metric):
        agent = agents[-1]
        judged.append((agent.steps, model is agent.target, model is agent.online))
        online.append(agent.online.state_head.weight.detach().clone())
        averages.append({k: v.clone() for k, v in agent.target.state_dict().items()} if agent.target else {})
        return real_evaluate(model, val, masks, device, metric)

    monkeypatch.setattr(train, "_prepare", prepare)
    monkeypatch.setattr(train, "_evaluate", evaluate)
    result = run(config(tiny_config, mode="supervised", epochs=2, patience=5, tau=0.5), shop)
    assert "judging and keeping the Polyak average of the weights (tau 0.5) from step 5, the online ones before" in (
        result.lines
    )
    assert all(steps >= 5 and is_target for steps, is_target, _ in judged)  # 10 steps an epoch here
    kept, best = result.model.state_dict(), result.best_epoch - 1
    for name, tensor in averages[best].items():
        assert torch.equal(kept[name], tensor), name
    assert not torch.equal(kept["state_head.weight"], online[best])

    agents.clear(), judged.clear()
    result = run(config(tiny_config, mode="supervised", epochs=1, averaged_weights=False), shop)
    assert "judging and keeping the online weights" in result.lines and agents[-1].target is None
    assert judged == [(agents[-1].steps, False, True)]


def test_warm_start_copies_rows_of_items_that_existed(tiny_config, shop, tmp_path):
    transitions, _ = shop
    grown = write_parquet(tmp_path / "item_index", item_index_table(35))  # 5 new items tonight
    cfg = config(tiny_config, epochs=1, lr=0.0)  # lr=0: weights stay as copied
    previous = run(cfg, shop).model
    result = train.train_model(
        cfg,
        transitions_dir=str(transitions),
        item_index_dir=str(grown),
        warm_start=previous,
        progress=lambda _: None,
    )
    new = result.model
    assert new.n_items == 35
    torch.testing.assert_close(new.item_embedding.weight[:31], previous.item_embedding.weight)
    torch.testing.assert_close(new.state_head.weight, previous.state_head.weight)
    assert not torch.equal(new.item_embedding.weight[31:], torch.zeros(4, 16))  # fresh rows, not zeros
    # tonight's cold items come from tonight's training split, not from the previous model
    counts = data.action_counts(transitions, n_items=35)
    assert new.cold_item.tolist() == [i > 0 and counts[i] == 0 for i in range(36)]
    assert new.cold_item[31:].all()

    other_shape = QNetwork(30, 3, ModelConfig(embed_dim=8, hidden_dim=8))
    with pytest.raises(ValueError, match="cannot warm-start"):
        train.warm_start_from(new, other_shape)
    # in train_model an incompatible champion (changed model config) means training from scratch
    lines = []
    fresh = train.train_model(
        cfg,
        transitions_dir=str(transitions),
        item_index_dir=str(grown),
        warm_start=other_shape,
        progress=lines.append,
    )
    assert any("training from scratch" in line for line in lines) and fresh.model.cfg.embed_dim == 16


def test_resolve_device_and_seed():
    assert device.resolve_device("cpu").type == "cpu"
    assert device.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            device.resolve_device("cuda")
    device.seed_everything(5)
    a = (np.random.rand(), torch.rand(1).item())
    device.seed_everything(5)
    assert (np.random.rand(), torch.rand(1).item()) == a


def test_actions_outside_the_item_index_are_an_error(tiny_config, shop, tmp_path):
    transitions, _ = shop
    small = write_parquet(tmp_path / "item_index", item_index_table(10))
    with pytest.raises(ValueError, match="outside the item index 1..10"):
        train.train_model(
            config(tiny_config, epochs=1),
            transitions_dir=str(transitions),
            item_index_dir=str(small),
            progress=lambda _: None,
        )


def test_prefetched_keeps_order_and_raises_producer_errors():
    assert list(train.prefetched(iter(range(50)), depth=3)) == list(range(50))

    def broken():
        yield 1
        raise OSError("bad parquet")

    stream = train.prefetched(broken())
    assert next(stream) == 1
    with pytest.raises(OSError, match="bad parquet"):
        next(stream)
    early = train.prefetched(iter(range(1000)), depth=2)
    assert next(early) == 0
    early.close()  # leaving early stops the producer thread


def test_a_crashed_run_resumes_from_its_checkpoint_and_ends_identically(tiny_config, shop, monkeypatch):
    cfg = config(tiny_config, epochs=3, patience=5, n_step=2).replace(model={"dropout": 0.2})
    uninterrupted = run(cfg, shop)
    checkpoints = tiny_config.registry.root + "/" + train.CHECKPOINTS
    assert not list(Path(checkpoints).glob("*/*.pt"))  # a finished run leaves none behind

    real_epoch = train._train_epoch
    calls = []

    def crash_in_epoch_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("worker lost")
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train, "_train_epoch", crash_in_epoch_3)
    with pytest.raises(RuntimeError, match="worker lost"):
        run(cfg, shop)
    assert [p.name for p in Path(checkpoints).glob("*/*.pt")] == ["epoch-0002.pt"]

    monkeypatch.setattr(train, "_train_epoch", real_epoch)
    resumed = run(cfg, shop)
    assert any("resuming from checkpoint" in line and "epoch 2 done" in line for line in resumed.lines)
    assert sum(line.startswith("epoch ") for line in resumed.lines) == 1  # only epoch 3 trained again
    assert [row["loss/total"] for row in resumed.history] == [
        row["loss/total"] for row in uninterrupted.history
    ]
    for name, tensor in uninterrupted.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name

    # another config is another run: it does not pick up this run's checkpoint
    other = Checkpoints.run_key(
        cfg.replace(train={"lr": 0.5}),
        transitions_dir=str(shop[0]),
        item_index_dir=str(shop[1]),
        warm_start=None,
    )
    same = Checkpoints.run_key(
        cfg, transitions_dir=str(shop[0]), item_index_dir=str(shop[1]), warm_start=None
    )
    assert other != same


def test_a_run_killed_inside_an_epoch_resumes_at_its_last_step_checkpoint(tiny_config, shop, monkeypatch):
    # A checkpoint after every step but an epoch's last (the epoch's own follows), as any time between
    # steps exceeds so tiny an interval; the crash comes after the one at epoch 2, step 3.
    cfg = config(tiny_config, epochs=2, patience=5, checkpoint_minutes=1e-9).replace(model={"dropout": 0.2})
    uninterrupted = run(cfg, shop)
    steps_per_epoch = 10  # 40 users' windows, 4 to a batch
    checkpoints = Path(tiny_config.registry.root) / train.CHECKPOINTS
    assert not list(checkpoints.glob("*/*.pt"))

    real_point, seen = train.faults.point, []

    def crash_at_the_13th_step_checkpoint(name):
        seen.append(name)
        if seen.count("train:mid_epoch_checkpoint") == steps_per_epoch - 1 + 3:
            raise RuntimeError("node preempted")
        real_point(name)

    monkeypatch.setattr(train.faults, "point", crash_at_the_13th_step_checkpoint)
    with pytest.raises(RuntimeError, match="node preempted"):
        run(cfg, shop)
    assert [p.name for p in checkpoints.glob("*/*.pt")] == ["epoch-0002-step-00000003.pt"]

    monkeypatch.setattr(train.faults, "point", real_point)
    resumed = run(cfg, shop)
    line = next(line for line in resumed.lines if "resuming from checkpoint" in line)
    assert "(epoch 1 done, epoch 2 to step 3; " in line and "of the time budget spent, ends at step " in line
    assert [row["loss/total"] for row in resumed.history] == [row["loss/total"] for row in uninterrupted.history]
    for name, tensor in uninterrupted.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    assert not list(checkpoints.glob("*/*.pt"))


def test_checkpoints_leave_the_sampled_softmaxs_lazy_target_as_it_would_have_been(
    tiny_config, tmp_path_factory, monkeypatch
):
    # Sampled softmax: target item rows catch up lazily, and with 400 items most lag at any step. A run
    # that checkpoints after every step and is killed at epoch 1, step 6 must end with the weights of a
    # run that never checkpointed: saving may not settle the lagging rows (which changes their numbers),
    # it keeps each row's last update instead.
    shop = make_shop(tmp_path_factory.mktemp("wide_shop"), n_items=400, n_users=40, steps=12, max_len=MAX_LEN)
    cfg = config(tiny_config, epochs=2, patience=5, full_loss_max_items=20, cql_negatives=8)
    never_saved = run(cfg.replace(train={"checkpoints": False}), shop)
    assert any("sampled softmax" in line for line in never_saved.lines)

    cfg = cfg.replace(train={"checkpoint_minutes": 1e-9})
    real_point, seen = train.faults.point, []

    def crash_at_the_6th_step_checkpoint(name):
        seen.append(name)
        if seen.count("train:mid_epoch_checkpoint") == 6:
            raise RuntimeError("node preempted")
        real_point(name)

    monkeypatch.setattr(train.faults, "point", crash_at_the_6th_step_checkpoint)
    with pytest.raises(RuntimeError, match="node preempted"):
        run(cfg, shop)
    monkeypatch.setattr(train.faults, "point", real_point)
    resumed = run(cfg, shop)
    assert any("(epoch 1 to step 6; " in line for line in resumed.lines)
    for name, tensor in never_saved.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name


def test_a_torn_checkpoint_means_training_from_the_start(tiny_config, shop):
    cfg = config(tiny_config, epochs=1)
    key = Checkpoints.run_key(cfg, transitions_dir=str(shop[0]), item_index_dir=str(shop[1]), warm_start=None)
    folder = Path(tiny_config.registry.root) / train.CHECKPOINTS / key
    folder.mkdir(parents=True)
    (folder / "epoch-0001.pt").write_bytes(b"not a checkpoint")
    result = run(cfg, shop)
    assert any("cannot resume" in line for line in result.lines) and len(result.history) == 1


def night_inputs(cfg: Config, shop, run_date: str) -> None:
    """The tiny shop's transitions and item index as ``run_date``'s partitions of cfg's warehouse."""
    import shutil

    for table, folder in zip((schema.TRANSITIONS, schema.ITEM_INDEX), shop, strict=True):
        shutil.copytree(folder, cfg.layout.partition(table, run_date))


def test_refit_trains_on_validation_too_and_scores_in_place_of_the_gated_version(
    tiny_config, shop, monkeypatch
):
    from dql_model.learning import registry
    from dql_model.scoring import engines

    run_date = "2026-11-27"
    cfg = config(tiny_config, epochs=2, checkpoints=False, refit=True)
    night_inputs(cfg, shop, run_date)

    lines: list[str] = []
    trained = train.train_challenger(cfg, run_date, progress=lines.append)

    version, refit = trained["version"], trained["refit"]
    assert any(line.startswith("refit: train.refit true: 2 epoch(s) on train + validation") for line in lines)
    assert trained["transitions"] == 40 * 10  # the gated model never saw the validation split
    assert registry.version_data_window(cfg.registry.root, refit)["transitions"] == 40 * 12
    assert registry.refit_of(cfg.registry.root, version) == refit != version
    assert registry.refit_of(cfg.registry.root, refit) is None
    assert trained["refit_seconds"] > 0  # the night's training time counts it (the run history's trend)
    monkeypatch.setitem(engines.ENGINES, "torch", lambda _cfg, _date, scored: scored)
    assert engines.score(cfg, run_date, version) == refit
    assert engines.score(cfg.replace(train={"refit": False}), run_date, version) == version
    assert engines.score(cfg.replace(train={"refit": "auto"}), run_date, version) == refit


def test_a_refit_its_time_budget_cuts_short_is_dropped_and_the_gated_model_scores(tiny_config, shop):
    from dql_model.learning import registry

    run_date = "2026-11-27"
    cfg = config(tiny_config, epochs=2, checkpoints=False, refit=True, max_minutes=1e-6)
    night_inputs(cfg, shop, run_date)
    lines: list[str] = []

    trained = train.train_challenger(cfg, run_date, progress=lines.append)

    assert "refit" not in trained and registry.refit_of(cfg.registry.root, trained["version"]) is None
    assert trained["refit_seconds"] >= 0  # spent all the same: the night's training time counts it
    assert any(line.startswith("refit: cut by its time budget after 1 of 1 epoch(s)") for line in lines)


def finished(*, stopped_by=train.STOP_CONVERGED, best_epoch=3, epoch_s=(10.0,) * 5, best_value=0.1, seconds=None):
    """A finished training's result as plan_refit reads it: its history's epoch times, best epoch, stop."""
    history = [{"time/epoch_s": s} for s in epoch_s]
    return train.TrainResult(
        model=None, history=history, best_value=best_value, best_epoch=best_epoch, device="cpu",
        n_transitions=100, seconds=sum(epoch_s) if seconds is None else seconds, config=None, stopped_by=stopped_by,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("refit", "max_minutes", "result", "runs", "why"),
    [
        # converged after 50 s of a 2-minute share: 3 epochs (30 s) x 1.25 fit in the 70 s left
        ("auto", 2.0, finished(), True, "3 epoch(s) on train + validation, about 30 s (converged; 70 s of"),
        ("auto", 0.0, finished(), True, "(converged; no time budget)"),
        ("auto", 0.0, finished(stopped_by=train.STOP_EPOCH_CAP), True, "(epoch cap; no time budget)"),
        # loading made the run longer than its epochs: the run's own seconds count
        ("auto", 2.0, finished(seconds=85.0), False, "would not fit 1.25 times in the 35 s"),
        ("auto", 1.0, finished(), False, "would not fit 1.25 times in the 10 s"),
        ("auto", 0.0, finished(stopped_by=train.STOP_BUDGET), False, "the time budget, 0 min, ended training"),
        ("auto", 0.0, finished(best_value=float("nan")), False, "no validation events"),
        (True, 1.0, finished(stopped_by=train.STOP_BUDGET), True, "train.refit true"),
        (False, 0.0, finished(), False, "train.refit false"),
    ],
)
def test_refit_auto_runs_when_the_model_has_validation_to_learn_and_the_budget_holds_it(
    tiny_config, refit, max_minutes, result, runs, why
):
    plan = train.plan_refit(tiny_config.replace(train={"refit": refit, "max_minutes": max_minutes}), result)

    assert plan.run is runs and why in plan.reason


def test_a_time_budget_stops_at_the_end_of_a_step_and_keeps_the_best_epoch(tiny_config, shop, monkeypatch):
    # A fake clock in which every gradient step takes one minute: 10 steps an epoch (40 windows of 4).
    minutes = [0.0]
    real_update = train.DQNAgent.update

    def one_minute_step(self, batch):
        minutes[0] += 1.0
        return real_update(self, batch)

    monkeypatch.setattr(train.DQNAgent, "update", one_minute_step)
    cfg = config(tiny_config, epochs=6, patience=10, max_minutes=25)
    result = run(cfg, shop, clock=lambda: 60.0 * minutes[0])

    assert minutes[0] == 25  # stopped at the end of the step where the budget ran out: epoch 3, step 5
    assert len(result.history) == 3 and result.stopped_by == train.STOP_BUDGET
    assert "time/epoch_share" not in result.history[1]
    assert result.history[2]["time/epoch_share"] == 0.5
    assert any(line.startswith("epoch 3/6 (cut at step 5/10) ") for line in result.lines)
    stop = [line for line in result.lines if line.startswith("time budget: ")]
    assert stop == [
        # planned at the first epoch's end (its checkpoint), at the rate so far
        "time budget: 15m00s left is 15 more steps at 60 s a step so far: training ends at step 25, also after a resume",
        f"time budget: train.max_minutes=25 spent at step 5/10 of epoch 3; keeping epoch {result.best_epoch} "
        f"(eval/ndcg@10={result.best_value:.4f})"
    ]
    # the best epoch's weights are the ones returned, the cut epoch competing like any other
    values = [row["eval/ndcg@10"] for row in result.history]
    assert result.best_value == max(values) and result.best_epoch == values.index(max(values)) + 1
    transitions, _ = shop
    val = data.load_transitions(transitions, max_len=MAX_LEN, split=schema.VALIDATION)
    masks = data.load_exclusions(transitions, exclude="none")
    again = evaluate_scorer(QNetworkScorer(result.model), val, exclude=masks)
    assert again["eval/ndcg@10"] == pytest.approx(result.best_value)
    # a line inside each epoch every PROGRESS_EVERY_S: steps, rate and the epoch's ETA (9 more minutes)
    assert any(
        line.startswith("training epoch 1/6 step 1/10 (10%) ") and line.endswith("transitions/s, epoch ETA 9m00s")
        for line in result.lines
    )


def test_a_resumed_run_ends_at_the_step_the_budget_planned_however_slow_its_machine(
    tiny_config, shop, monkeypatch
):
    # One fake minute a step, 10 steps an epoch, a checkpoint every 4 minutes inside an epoch: the
    # first (epoch 1, step 4) turns the 21 minutes left into 21 more steps; the run dies at the 4th
    # (minute 18: epoch 2, step 8) and is rerun on a machine twice as slow.
    minutes, minutes_a_step = [0.0], [1.0]
    real_update, real_point = train.DQNAgent.update, train.faults.point

    def timed_step(self, batch):
        minutes[0] += minutes_a_step[0]
        return real_update(self, batch)

    def die_at_the_4th(name):
        if name == "train:mid_epoch_checkpoint" and minutes[0] == 18:
            raise RuntimeError("killed")
        real_point(name)

    monkeypatch.setattr(train.DQNAgent, "update", timed_step)
    cfg = config(tiny_config, epochs=6, patience=10, max_minutes=25, checkpoint_minutes=4).replace(
        model={"dropout": 0.2}
    )
    uninterrupted = run(cfg, shop, clock=lambda: 60.0 * minutes[0])
    assert minutes[0] == 25
    # every transition of epoch 1 counts in its rate, the ones before its step checkpoints too
    assert uninterrupted.history[0]["throughput/transitions_per_s"] == uninterrupted.n_transitions / 600
    assert any(line.endswith("training ends at step 25, also after a resume") for line in uninterrupted.lines)

    minutes[0] = 0.0
    monkeypatch.setattr(train.faults, "point", die_at_the_4th)
    with pytest.raises(RuntimeError, match="killed"):
        run(cfg, shop, clock=lambda: 60.0 * minutes[0])

    minutes[0], minutes_a_step[0] = 0.0, 2.0  # a new process, its clock starting again, on a slower machine
    resumed = run(cfg, shop, clock=lambda: 60.0 * minutes[0])
    assert any(
        "(epoch 1 done, epoch 2 to step 8; 18m00s of the time budget spent, ends at step 25)" in line
        for line in resumed.lines
    )
    assert minutes[0] == 14  # 2 steps to end epoch 2 and 5 of epoch 3, at 2 minutes each
    assert any(line.startswith("epoch 3/6 (cut at step 5/10) ") for line in resumed.lines)
    assert len(resumed.history) == 3 and resumed.stopped_by == train.STOP_BUDGET
    assert [row["loss/total"] for row in resumed.history] == [row["loss/total"] for row in uninterrupted.history]
    for name, tensor in uninterrupted.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name


def test_the_planned_rate_leaves_out_the_loading_before_the_first_step(tiny_config, shop, monkeypatch):
    # The first step ends at minute 6 (5 of them loading), every other takes one: at epoch 1's end
    # (minute 15) the 12 minutes left of 27 are 12 steps at 1 a minute, not 8 at 15 minutes / 10 steps.
    minutes = [0.0]
    real_update = train.DQNAgent.update

    def step_after_loading(self, batch):
        minutes[0] += 6.0 if minutes[0] == 0 else 1.0
        return real_update(self, batch)

    monkeypatch.setattr(train.DQNAgent, "update", step_after_loading)
    result = run(config(tiny_config, epochs=6, patience=10, max_minutes=27), shop, clock=lambda: 60.0 * minutes[0])
    assert any(line.endswith("training ends at step 22, also after a resume") for line in result.lines)
    assert any(line.startswith("epoch 3/6 (cut at step 2/10) ") for line in result.lines) and minutes[0] == 27


def test_past_its_overrun_the_wall_clock_ends_a_planned_budget(tiny_config, shop, monkeypatch):
    # Planned at the first epoch's end (10 steps of a minute: step 25); then each step takes 5 minutes,
    # and the wall clock ends training at 1.5 x 25 = 37.5 minutes, 6 steps into epoch 2.
    minutes = [0.0]
    real_update = train.DQNAgent.update

    def slowing_step(self, batch):
        minutes[0] += 1.0 if minutes[0] < 10 else 5.0
        return real_update(self, batch)

    monkeypatch.setattr(train.DQNAgent, "update", slowing_step)
    result = run(config(tiny_config, epochs=6, patience=10, max_minutes=25), shop, clock=lambda: 60.0 * minutes[0])
    assert train.BUDGET_OVERRUN == 1.5 and minutes[0] == 40
    assert any(line.startswith("epoch 2/6 (cut at step 6/10) ") for line in result.lines)
    assert result.stopped_by == train.STOP_BUDGET


def test_a_tiny_budget_still_ends_with_a_model(tiny_config, shop):
    result = run(config(tiny_config, max_minutes=1e-9), shop)
    assert len(result.history) == 1 and result.best_epoch == 1 and result.stopped_by == train.STOP_BUDGET
    assert result.history[0]["time/epoch_share"] < 1
    assert not result.model.training


@pytest.mark.parametrize("batching", ["sequences", "transitions"])
def test_the_sampled_softmax_learns_the_shop_as_the_full_one_does(tiny_config, shop, batching):
    full = run(config(tiny_config, epochs=4, batching=batching), shop)
    sampled = run(config(tiny_config, epochs=4, batching=batching, full_loss_max_items=20, cql_negatives=8), shop)
    assert "loss: full softmax over 30 items; time budget: 30 min" in full.lines
    assert (
        "loss: sampled softmax: 8 negatives + the batch's actions of 30 items, log-Q corrected; time budget: 30 min"
        in sampled.lines
    )
    transitions, _ = shop
    val = data.load_transitions(transitions, max_len=MAX_LEN, split=schema.VALIDATION)
    popularity = evaluate_scorer(PopularityScorer.from_transitions(transitions, n_items=30), val)
    assert sampled.best_value > popularity["eval/ndcg@10"] + 0.3
    assert sampled.best_value > 0.9 * full.best_value


def test_a_sampled_run_returns_the_model_its_validation_ranked_with(tiny_config, shop, monkeypatch):
    # Sparse row updates (SparseAdam) and the lazy target keep moving item rows after the best epoch;
    # the model handed back must score validation as that epoch's evaluation did, bit for bit.
    real_evaluate = train._evaluate
    epoch_scores = []

    def evaluate_then_demote(model, val, masks, device, metric):
        row = real_evaluate(model, val, masks, device, metric)
        epoch_scores.append(QNetworkScorer(model)(val.state_items, val.state_events))
        if len(epoch_scores) > 2:
            row[metric] = -1.0  # epochs 3 to 5 never win: the weights returned are restored ones
        return row

    monkeypatch.setattr(train, "_evaluate", evaluate_then_demote)
    cfg = config(tiny_config, epochs=5, patience=5, full_loss_max_items=20, cql_negatives=8)
    result = run(cfg, shop)

    assert any(line.startswith("loss: sampled softmax: 8 negatives") for line in result.lines)
    assert len(result.history) == 5 and result.best_epoch in (1, 2)
    best_scores = epoch_scores[result.best_epoch - 1]
    assert not np.array_equal(epoch_scores[-1], best_scores)  # training moved on after the best epoch
    transitions, _ = shop
    val = data.load_transitions(transitions, max_len=MAX_LEN, split=schema.VALIDATION)
    assert np.array_equal(QNetworkScorer(result.model)(val.state_items, val.state_events), best_scores)
    masks = data.load_exclusions(transitions, exclude="none")
    again = evaluate_scorer(QNetworkScorer(result.model), val, exclude=masks)
    assert again["eval/ndcg@10"] == result.best_value == result.history[result.best_epoch - 1]["eval/ndcg@10"]


def test_a_sampled_run_resumes_from_its_checkpoint_and_ends_identically(tiny_config, shop, monkeypatch):
    # the split optimizer (Adam + SparseAdam) and the lazy target are saved and restored exactly
    cfg = config(tiny_config, epochs=2, patience=5, full_loss_max_items=20, cql_negatives=8)
    uninterrupted = run(cfg, shop)
    real_epoch = train._train_epoch
    calls = []

    def crash_in_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("worker lost")
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train, "_train_epoch", crash_in_epoch_2)
    with pytest.raises(RuntimeError, match="worker lost"):
        run(cfg, shop)
    monkeypatch.setattr(train, "_train_epoch", real_epoch)
    resumed = run(cfg, shop)
    assert any("resuming from checkpoint" in line for line in resumed.lines)
    assert [row["loss/total"] for row in resumed.history] == [row["loss/total"] for row in uninterrupted.history]
    for name, tensor in uninterrupted.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    assert not any(table.sparse for table in resumed.model.item_row_tables())
