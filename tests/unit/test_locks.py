"""dql_model.warehouse.locks: one writer per run date; the second waits or is refused by name; stale locks are taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from dql_model.pipeline import tasks
from dql_model.warehouse import locks
from dql_model.warehouse.locks import RunDateLocked, run_date_lock

RUN_DATE = "2026-11-27"


def hold(path, *, wait_s=0.0, stale_s=3600.0, step="test"):
    return run_date_lock(path, run_date=RUN_DATE, step=step, wait_s=wait_s, stale_s=stale_s)


def test_a_second_writer_is_refused_with_the_holder_named(tmp_path):
    path = tmp_path / "_locks" / "run_date=2026-11-27.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from dql_model.warehouse.locks import run_date_lock\n"
         f"with run_date_lock({str(path)!r}, run_date='{RUN_DATE}', step='score_users', wait_s=0, stale_s=3600):\n"
         "    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ},
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDateLocked) as caught, hold(path, wait_s=0.6, step="publish_recommendations"):
            pass
        message = str(caught.value)
        assert f"step score_users (pid {holder.pid} on host {socket.gethostname()}, since 20" in message
        assert "run date 2026-11-27 is being written by another run" in message
        assert "Step publish_recommendations waited 1 s" in message
    finally:
        holder.kill()
        holder.wait()


def test_a_waiting_writer_gets_the_lock_when_the_holder_releases_it(tmp_path):
    path, marker = tmp_path / "run_date=2026-11-27.lock", tmp_path / "about-to-release"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import time; from dql_model.warehouse.locks import run_date_lock\n"
         f"with run_date_lock({str(path)!r}, run_date='{RUN_DATE}', step='train_model', wait_s=0, stale_s=3600):\n"
         "    print('held', flush=True); time.sleep(1.5)\n"
         f"    open({str(marker)!r}, 'w').close()  # last thing before the release"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    with hold(path, wait_s=30):
        assert marker.exists()  # this writer got the lock only after the holder was done
    assert holder.wait(5) == 0 and not path.exists()


def test_a_lock_of_a_dead_pid_on_this_host_is_taken_over(tmp_path, caplog):
    path = tmp_path / "run_date=2026-11-27.lock"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = {"token": "t0", "step": "train_model", "pid": int(dead.stdout), "host": socket.gethostname(),
             "started_at": "2026-11-28T01:00:00+00:00"}  # fmt: skip
    path.write_text(json.dumps(stale))
    with hold(path) as me:
        assert me.pid == os.getpid() and json.loads(path.read_text())["token"] == me.token
    assert "took over the stale lock" in caplog.text and f"pid {stale['pid']} is not running" in caplog.text
    assert not path.exists()


def test_an_old_lock_of_another_host_is_taken_over_and_a_young_one_is_not(tmp_path):
    path = tmp_path / "run_date=2026-11-27.lock"
    other = {"token": "t1", "step": "train_model", "pid": 1, "host": "another-host", "started_at": "x"}
    path.write_text(json.dumps(other))
    with pytest.raises(RunDateLocked, match="pid 1 on host another-host"), hold(path, stale_s=3600):
        pass
    old = time.time() - 7200
    os.utime(path, (old, old))
    with hold(path, stale_s=3600) as me:
        assert me.host == socket.gethostname()


def test_the_lock_is_released_when_the_task_fails_and_is_reentrant(tiny_config):
    path = tiny_config.layout.run_date_lock(RUN_DATE)
    with hold(path), hold(path, step="nested"):  # a step running another step in the same process
        assert os.path.exists(path)
    assert not os.path.exists(path)
    with pytest.raises(FileNotFoundError, match="build_training_data did not finish"):
        tasks.validate_training_data(RUN_DATE, cfg=tiny_config)
    assert not os.path.exists(path)


def test_a_child_process_runs_under_its_parents_lock(tmp_path):
    path = tmp_path / "run_date=2026-11-27.lock"
    with hold(path):
        child = subprocess.run(
            [sys.executable, "-c",
             "from dql_model.warehouse.locks import run_date_lock\n"
             f"with run_date_lock({str(path)!r}, run_date='{RUN_DATE}', step='child', wait_s=0, stale_s=3600) as h:\n"
             "    print(h.step)"],
            capture_output=True, text=True, env=locks.child_env(os.environ),
        )  # fmt: skip
        assert child.returncode == 0, child.stderr
        assert child.stdout.strip() == "test"  # the parent's holder, not a new lock
        assert os.path.exists(path)
