"""A store or a disk that hiccups, and long work a stop must not lose: each reproduced with real
components (a second process holding the SQLite store, a full disk, a read-only cache, Ctrl-C
while the teacher trains). docs/reliability.md lists each case with its test."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from rkd_search.search import UsageError
from rkd_search.search.setup import validate

from .helpers import communicate_or_dump, env_for, mlflow_runs, run_cli, start_cli
from .test_reliability import ONE_THREAD, digits, records
from .test_setup import options


def _wait_for(condition, timeout: float, what: str, process=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the search ended before {what}: {process.communicate()[1][-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"no {what} within {timeout:.0f} s")


def _runs_in(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
            return connection.execute("select count(*) from runs").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_a_store_another_process_holds_locked_is_waited_out(tmp_path):
    """27 s of an exclusive lock on mlflow.db while trials train (MLflow gives up after 20: its SQLite
    busy timeout): the search waits, says so, and ends well."""
    out = tmp_path / "out"
    process = start_cli(*digits(out, 2, epochs=2), cwd=tmp_path, env=env_for(tmp_path, **ONE_THREAD))
    _wait_for(lambda: _runs_in(out / "mlflow.db") >= 3, 300, "first trial run", process)  # teacher, search, trial
    holder = sqlite3.connect(out / "mlflow.db", isolation_level=None, timeout=60)
    holder.execute("BEGIN EXCLUSIVE")
    time.sleep(27)
    holder.execute("COMMIT")
    holder.close()
    stdout, stderr = communicate_or_dump(process, 600)
    assert process.returncode == 0, stderr[-3000:]
    assert "locked by another process" in stderr and "Traceback" not in stderr
    _, (parent,), _, children = mlflow_runs(out)
    assert parent.info.status == "FINISHED" and len(children) == 2
    assert all(c.data.tags["rkd.state"] == "complete" and c.info.status == "FINISHED" for c in children)


@pytest.mark.slow
def test_a_full_disk_stops_the_search_cleanly_and_the_rerun_resumes(tmp_path):
    """--output on a 4 MB disk (tmpfs) filled up after the first trial: one line, exit 1, no run left
    RUNNING; once space is freed the same command finishes the search. Where no disk can be mounted,
    a folder put where pareto.csv goes makes the same write fail (EISDIR)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True).returncode == 0
    try:
        out = disk / "out"
        args = digits(out, 2)
        args[args.index("--tracking-uri") + 1] = f"sqlite:///{tmp_path}/mlflow.db"
        process = start_cli(*args, cwd=tmp_path, env=env_for(tmp_path, **ONE_THREAD))
        _wait_for(lambda: (out / "pareto.csv").exists(), 300, "pareto.csv", process)
        filler = disk / "filler"
        if mounted:
            with open(filler, "wb") as handle:
                try:
                    while True:
                        handle.write(b"\0" * 65536)
                        handle.flush()
                except OSError:
                    pass
        else:
            (out / "pareto.csv").unlink()
            (out / "pareto.csv").mkdir()
        stdout, stderr = communicate_or_dump(process, 600)
        assert process.returncode == 1, stderr[-3000:]
        message = stderr.strip().splitlines()
        assert len(message) == 1 and "cannot write" in message[0] and "rerun the same command to resume" in message[0], stderr
        from mlflow import MlflowClient

        client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
        runs = client.search_runs([client.get_experiment_by_name("rkd-search").experiment_id])
        assert not [r for r in runs if r.info.status == "RUNNING"]
        if mounted:
            filler.unlink()
        else:
            (out / "pareto.csv").rmdir()
        rerun = run_cli(*args, cwd=tmp_path, env=env_for(tmp_path, **ONE_THREAD))
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        done = [r for r in client.search_runs([runs[0].info.experiment_id], "tags.`rkd.state` = 'complete'")]
        assert len(done) == 2
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.mark.parametrize("home", ["/sys/fs", "a-file"])
def test_a_cache_folder_that_cannot_be_written_is_refused_before_the_teacher_trains(tmp_path, monkeypatch, home):
    """HOME read-only (sysfs refuses even root) or a file, RKD_CACHE_DIR unset: one line, nothing created."""
    if home == "a-file":
        (tmp_path / "a-file").write_text("")
        home = str(tmp_path / "a-file")
    monkeypatch.setenv("HOME", home)
    monkeypatch.delenv("RKD_CACHE_DIR", raising=False)
    with pytest.raises(UsageError, match="the cache folder .* (cannot be written|is a file).*set RKD_CACHE_DIR or pass --cache-dir"):
        validate(options(tmp_path, cache_dir=None))
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_ctrl_c_while_the_teacher_trains_then_the_rerun_resumes_it_at_the_epoch_it_reached(tmp_path):
    """The teacher is checkpointed every epoch beside its cache entry: the rerun says it resumes and
    ends with the weights of a teacher trained without a stop."""
    from rkd_search.trainer import TrainState, load_dataset, train_teacher, weights_digest

    cache = tmp_path / "cache"
    out = tmp_path / "out"
    args = digits(out, 1, "--teacher", "wrn10_1")  # the default WRN-28-1 resumes the same way, at thrice the cost
    args[args.index("--teacher-epochs") + 1] = "3"
    env = env_for(tmp_path, RKD_CACHE_DIR=str(cache), **ONE_THREAD)
    process = start_cli(*args, cwd=tmp_path, env=env)

    def partial_epoch() -> int:
        found = list((cache / "teachers").glob("*.partial.pt")) if (cache / "teachers").exists() else []
        try:
            return TrainState.load(found[0]).epoch if found else 0
        except ValueError:
            return 0

    _wait_for(lambda: partial_epoch() >= 1, 300, "teacher checkpoint at epoch 1", process)
    process.send_signal(signal.SIGINT)
    stdout, stderr = communicate_or_dump(process, 120)
    assert process.returncode == 130, stderr[-2000:]
    assert stdout.startswith(f"rkd-search: output {out}")  # where the results go is said before the teacher trains
    reached = partial_epoch()
    rerun = run_cli(*args, cwd=tmp_path, env=env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming the teacher wrn10_1 at epoch {reached} of 3" in rerun.stdout
    assert not list((cache / "teachers").glob("*.partial.pt"))
    _, (parent,), _, _ = mlflow_runs(out)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the search ran: the same sums in the same order
    try:
        straight, _, _, _ = train_teacher(load_dataset("digits"), "wrn10_1", epochs=3, seed=0, cache_dir=tmp_path / "straight")
    finally:
        torch.set_num_threads(threads)
    assert parent.data.params["teacher.digest"] == weights_digest(straight)
    assert [r.state for r in records(out)] == ["complete"]


@pytest.mark.slow
def test_a_fork_server_killed_while_it_replaces_a_dead_worker_is_replaced(tmp_path):
    """--jobs 2: a worker killed makes the search fork its replacement from a fork server, which
    is killed (as the out-of-memory killer may) while the search waits for it (EOFError, exit 1
    before): the search starts another server and ends well."""
    import os

    import psutil

    out = tmp_path / "out"
    process = start_cli(*digits(out, 4, "--jobs", "2", epochs=2), cwd=tmp_path, env=env_for(tmp_path, **ONE_THREAD))
    driver = psutil.Process(process.pid)

    def living(processes):
        for child in processes:
            try:
                if child.status() != psutil.STATUS_ZOMBIE:
                    yield child, child.name(), " ".join(child.cmdline())
            except psutil.Error:  # ended meanwhile
                continue

    def workers():
        return [child for child, name, _ in living(driver.children(recursive=True)) if name == "rkd-worker"]

    def server():
        found = [child for child, _, line in living(driver.children()) if "forkserver" in line]
        return found[0] if found else None


    _wait_for(lambda: len(workers()) == 2, 300, "two workers", process)
    _wait_for(lambda: _runs_in(out / "mlflow.db") >= 3, 300, "a training trial", process)
    workers()[0].kill()  # the search forks its replacement from a fork server, which first imports PyTorch
    _wait_for(lambda: server() is not None, 60, "the fork server", process)
    os.kill(server().pid, signal.SIGKILL)  # while the search waits for it to fork the replacement
    stdout, stderr = communicate_or_dump(process, 600)
    assert process.returncode == 0, stderr[-3000:]
    assert "fork server is gone" in stderr and "Traceback" not in stderr, stdout[-3000:]
    states = [r.state for r in records(out)]
    assert sum(state.finished for state in states) == 4 and states.count("failed") == 1  # the worker killed first
