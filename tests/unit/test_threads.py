"""Thread counts: the CPUs a process may use (affinity, cgroup quota) and the config's cap."""

from __future__ import annotations

import os

import pytest

from dql_model.config import ConfigError
from dql_model.ops import threads


@pytest.mark.parametrize(
    ("content", "expected"),
    [("max 100000\n", None), ("150000 100000\n", 2), ("50000 100000\n", 1), ("200000 100000\n", 2), ("junk\n", None)],
)
def test_cgroup_v2_quota(tmp_path, content, expected):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text(content)
    assert threads.cgroup_cpu_limit(cpu_max, tmp_path / "none", tmp_path / "none") == expected


def test_cgroup_v1_quota(tmp_path):
    (tmp_path / "quota").write_text("250000\n")
    (tmp_path / "period").write_text("100000\n")
    assert threads.cgroup_cpu_limit(tmp_path / "absent", tmp_path / "quota", tmp_path / "period") == 3
    (tmp_path / "quota").write_text("-1\n")
    assert threads.cgroup_cpu_limit(tmp_path / "absent", tmp_path / "quota", tmp_path / "period") is None


def test_usable_cpus_follow_the_affinity_and_the_quota(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: None)
    assert threads.usable_cpus() == 4
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: 2)
    assert threads.usable_cpus() == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    assert threads.usable_cpus() == 1


def test_the_config_caps_but_never_raises_the_count(monkeypatch):
    monkeypatch.setattr(threads, "usable_cpus", lambda: 2)
    assert threads.torch_threads(0) == 2
    assert threads.torch_threads(1) == 1
    assert threads.torch_threads(8) == 2
    with pytest.raises(ConfigError, match="train.threads=-1"):
        threads.torch_threads(-1)


def test_set_torch_threads_sets_torch(monkeypatch):
    import torch

    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "usable_cpus", lambda: 1)
    try:
        assert threads.set_torch_threads(0) == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_the_torch_tasks_set_threads_from_the_config(monkeypatch, tiny_config):
    from dql_model.pipeline import tasks
    from dql_model.scoring import engines

    calls = []
    monkeypatch.setattr(threads, "set_torch_threads", lambda configured: calls.append(configured) or 1)
    monkeypatch.setattr("dql_model.learning.train.train_challenger", lambda cfg, run_date, progress: {"version": "v1", "device": "cpu", "seconds": 0.0, "epochs": 1, "best_epoch": 1, "stopped_by": "epoch cap"})
    monkeypatch.setattr("dql_model.learning.supervised_baseline.train_and_save", lambda cfg, run_date, progress: None)

    class Scored:
        users, model_version, engine, top_k, sources = 0, "v1", "torch", 5, {}

        def to_dict(self):
            return {}

        def masks_line(self):
            return ""

    monkeypatch.setattr(engines, "score", lambda cfg, run_date, version: Scored())
    cfg = tiny_config.replace(train={"threads": 1})
    tasks.train_model("2026-11-27", cfg=cfg)
    tasks.score_users("2026-11-27", {"scoring_version": "v1"}, cfg=cfg)
    assert calls == [1, 1]
