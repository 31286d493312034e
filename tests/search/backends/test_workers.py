"""Training in worker processes: a native crash fails one job, named, and the pool goes on."""

from __future__ import annotations

import os
import signal

import pytest

from rkd_search.search.backends.local.jobs import Done, Epoch, Failed, Job
from rkd_search.search.backends.local.pool import WorkerPool
from rkd_search.search.backends.local.worker import describe_exit
from rkd_search.search.trial_loop import SharedFiles
from rkd_search.trainer import LossConfig, ModelSpec, TrainConfig


def job(number: int, width: float, epochs: int = 2, until: int | None = None, checkpoint=None, resume=None) -> Job:
    config = TrainConfig(student=ModelSpec("wrn", 10, width), loss=LossConfig(), epochs=epochs, batch_size=32)
    return Job(number, config.to_dict(), until or epochs, resume=resume, checkpoint=checkpoint)


@pytest.fixture()
def files(tmp_path, synthetic):
    data = synthetic.save(tmp_path / "data.pt")
    return lambda train: SharedFiles(str(data), None, 2, "cpu", 1, f"tests.search.backends.crashing:{train}")


def collect(pool: WorkerPool) -> list:
    events = []
    while pool.running:
        pool.wait(events.append)
    return events


def test_a_segfaulting_job_fails_with_the_signal_named_and_the_next_job_trains(files):
    pool = WorkerPool(files("segfault_on_wide_students"), capacity=1)
    try:
        pool.submit(job(0, 1.5))
        events = collect(pool)
        assert len(events) == 1 and isinstance(events[0], Failed) and events[0].crashed
        assert "SIGSEGV" in events[0].message and "segmentation fault" in events[0].message
        pool.submit(job(1, 0.5))  # a new worker takes the next job
        events = collect(pool)
        assert [type(e) for e in events] == [Epoch, Epoch, Done] and events[-1].result.epochs_done == 2
    finally:
        pool.close()


def test_two_workers_train_two_jobs_at_once_and_a_paused_job_writes_its_checkpoint(files, tmp_path):
    pool = WorkerPool(files("segfault_on_wide_students"), capacity=2)
    try:
        pool.submit(job(0, 0.5, epochs=3, until=1, checkpoint=str(tmp_path / "t0.pt")))
        pool.submit(job(1, 0.75))
        assert set(pool.running) == {0, 1} and len(pool.workers) == 2
        done = {e.number: e.result for e in collect(pool) if isinstance(e, Done)}
        assert done[0].paused and done[0].epochs_done == 1 and (tmp_path / "t0.pt").exists()
        assert not done[1].paused and done[1].test_acc is not None
        pool.submit(job(0, 0.5, epochs=3, resume=str(tmp_path / "t0.pt")))  # continued from the checkpoint
        [result] = [e.result for e in collect(pool) if isinstance(e, Done)]
        assert result.epochs_done == 3 and [h.epoch for h in result.history] == [1, 2, 3]
    finally:
        pool.close()


def test_a_worker_killed_from_outside_fails_its_job_as_killed(files):
    pool = WorkerPool(files("segfault_on_wide_students"), capacity=1)
    try:
        pool.submit(job(0, 0.5, epochs=50))
        events = []
        pool.wait(events.append)  # the first epoch arrived: the worker is training
        os.kill(pool.workers[0].process.pid, signal.SIGKILL)
        events += collect(pool)
        assert isinstance(events[-1], Failed) and "SIGKILL" in events[-1].message
    finally:
        pool.close()


def test_exit_codes_are_described():
    assert "SIGABRT" in describe_exit(-6) and "abort" in describe_exit(-6)
    assert "out-of-memory" in describe_exit(-9)
    assert "exit code 3" in describe_exit(3)


FORKED_THEN_FROM_THE_FORK_SERVER = """
import json, os, sys, torch
from rkd_search.search.backends.local.jobs import Done
from rkd_search.search.backends.local.pool import WorkerPool
from rkd_search.search.backends.local.worker import fresh_process
from rkd_search.search.trial_loop import SharedFiles
from tests.search.backends.test_workers import job

def started(pool):
    worker = pool.workers[0].process
    with open(f"/proc/{worker.pid}/stat") as stat:
        parent = int(stat.read().rpartition(")")[2].split()[1])
    if parent == os.getpid():
        return "forked"
    with open(f"/proc/{parent}/cmdline", "rb") as server:
        return "fork server" if b"multiprocessing.forkserver" in server.read() else "other"

def train(pool):
    pool.configure(SharedFiles(sys.argv[1], None, 2, "cpu", 2, "tests.search.backends.crashing:segfault_on_wide_students"))
    pool.submit(job(0, 0.5, epochs=1))
    events = []
    while pool.running:
        pool.wait(events.append)
    pool.close()
    return [type(e).__name__ for e in events]

fresh_process()
pool = WorkerPool(capacity=1).prewarm()
how = [started(pool)]
done = [train(pool)]
torch.nn.functional.conv2d(torch.randn(8, 16, 64, 64), torch.randn(16, 16, 3, 3))  # this process computes now
again = WorkerPool(capacity=1).prewarm()
how.append(started(again))
done.append(train(again))
print(json.dumps({"how": how, "done": done}))
"""


def test_a_fresh_process_forks_its_first_workers_then_the_fork_server_starts_them_and_both_train(tmp_path, synthetic):
    """``fresh_process`` (the command's entry point): the first pool's workers are forked from this
    process; once it has computed with PyTorch (whose OpenMP thread pool a forked child inherits
    broken: its first parallel operation hangs), they come from the fork server. Both kinds train
    on two threads (a hang here would time out)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    data = synthetic.save(tmp_path / "data.pt")
    root = Path(__file__).resolve().parents[3]
    result = subprocess.run([sys.executable, "-c", FORKED_THEN_FROM_THE_FORK_SERVER, str(data)], cwd=root, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"how": ["forked", "fork server"], "done": [["Epoch", "Done"], ["Epoch", "Done"]]}
