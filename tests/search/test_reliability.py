"""Nothing lost, nothing faked: the faults a hostile user found, each reproduced and checked.

Every search here is the installed command where it is signalled, killed or run beside another,
else ``cli.main`` in this process (``run_here``; ``run_search`` where a test-only training function
must reach the workers), on digits with one or a few epochs, a real Optuna journal and a real
MLflow SQLite store; trials train in worker processes either way. docs/reliability.md lists each case with its test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from rkd_search.search.backends.local.worker import WORKER_NAME
from rkd_search.search.cli import main
from rkd_search.search.pareto import compute_front
from rkd_search.search.tracking import Tracker, TrackingSettings

from .helpers import BUDGET_FLAG, RKD_SEARCH, default_sigint, env_for, mlflow_runs, run_cli, run_here, start_cli

DIVERGING_SPACE = """
name: diverging
student:
  family: [wrn, resnet]
  depth: {wrn: [10, 16], resnet: [8, 14]}
  width: {low: 0.25, high: 1.0, step: 0.125}
optim:
  lr: LR
  weight_decay: 0.0
enqueue:
  - {family: wrn, depth: 16, width: 0.25}
"""


ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # two processes on two cores: no oversubscription


def digits(out: Path, trials: int, *extra: str, epochs: int = 1, budget: str = BUDGET_FLAG) -> list[str]:
    return ["--budget", budget, "--trials", str(trials), "--dataset", "digits", "--epochs", str(epochs),
            "--teacher-epochs", "1", "--output", str(out), "--tracking-uri", f"sqlite:///{out}/mlflow.db", "--no-progress", *extra]


def records(out: Path):
    tracker = Tracker(TrackingSettings(f"sqlite:///{out}/mlflow.db", "rkd-search"))
    parent = tracker.latest_search(str(out.resolve()))
    return tracker.trial_records(parent)


def study_of(out: Path):
    import optuna

    return optuna.load_study(study_name="rkd-search", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / "study.journal"))))


def space_file(folder: Path, lr: str) -> str:
    path = folder / f"space-lr{lr}.yaml"
    path.write_text(DIVERGING_SPACE.replace("LR", lr))
    return str(path)


def finite_weights(out: Path, run_id: str) -> bool:
    from mlflow import MlflowClient

    local = MlflowClient(f"sqlite:///{out}/mlflow.db").download_artifacts(run_id, "student/weights.pt", str(out / "dl" / run_id))
    state = torch.load(local, weights_only=True)
    return all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def wait_for_a_trial_mid_training(out: Path, process: subprocess.Popen, timeout: float = 300):
    """Poll the store until a trial is running and has logged an epoch (so a kill lands mid-trial)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
        try:
            client, _, _, children = mlflow_runs(out)
            for child in children:
                if child.data.tags.get("rkd.state") == "running" and client.get_metric_history(child.info.run_id, "epoch.val_acc"):
                    return child
        except Exception:  # no store yet, or being written
            continue
    return None


def check_listens_on_loopback_only(pid: int) -> None:
    """Every socket that ``pid`` and its descendants listen on (a local Ray's raylet among them) is on loopback."""
    import psutil

    family = {pid} | {child.pid for child in psutil.Process(pid).children(recursive=True)}
    listening = {f"{c.laddr.ip}:{c.laddr.port}": psutil.Process(c.pid).name()
                 for c in psutil.net_connections("inet") if c.status == "LISTEN" and c.pid in family}
    assert any("raylet" in name for name in listening.values()), f"no raylet was seen listening: {listening}"
    public = {address: name for address, name in listening.items()
              if address.rsplit(":", 1)[0] not in ("127.0.0.1", "::ffff:127.0.0.1", "::1")}
    assert not public, f"listening beyond loopback: {public}"


def check_nothing_lost(out: Path, trials: int) -> None:
    """Exactly ``trials`` trials finished, none RUNNING in the study or MLflow, one run each, front right."""
    from optuna.trial import TrialState as OptunaState

    study = study_of(out)
    finished = [t for t in study.trials if t.state in (OptunaState.COMPLETE, OptunaState.PRUNED)]
    assert len(finished) == trials
    assert not [t for t in study.trials if t.state == OptunaState.RUNNING]
    _, parents, _, children = mlflow_runs(out)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert not [c for c in children if c.info.status in ("RUNNING", "SCHEDULED")]
    numbers = [int(c.data.tags["rkd.trial"]) for c in children]
    assert len(numbers) == len(set(numbers)), "a trial has two child runs"
    assert sum(c.data.tags["rkd.state"] in ("complete", "infeasible", "pruned") for c in children) == trials
    found = records(out)
    assert {r.run_id for r in found if r.pareto} == {r.run_id for r in compute_front(found)}


# -- students that fail -------------------------------------------------------------------------------

@pytest.mark.slow
def test_diverged_students_fail_or_stay_off_the_front(tmp_path):
    out = tmp_path / "out"
    result = run_here(*digits(out, 4, "--space", space_file(tmp_path, "50")), cwd=tmp_path)
    assert result.returncode in (0, 1), result.stderr[-2000:]
    trials = records(out)
    for record in trials:
        if record.state == "complete":
            assert finite_weights(out, record.run_id), f"{record.name} completed with NaN/inf weights"
            if record.metrics["val_acc"] < 0.16:  # at chance on digits: marked, and never on the front
                assert not record.learned and not record.pareto
    _, _, _, children = mlflow_runs(out)
    failed = [c for c in children if c.data.tags["rkd.state"] == "failed"]
    assert all("finite" in c.data.tags["rkd.error"] or "became" in c.data.tags["rkd.error"] for c in failed)
    assert failed or all(not r.learned for r in trials if r.state == "complete"), "lr 50 trained a student"
    for record in failed[:1]:  # refused, with the reason
        exported = run_here("export", record.info.run_id, "--output", str(out), "--tracking-uri", f"sqlite:///{out}/mlflow.db", cwd=tmp_path)
        assert exported.returncode == 2 and "no trained student" in exported.stderr and "Traceback" not in exported.stderr


def check_every_trial_failed(result, out: Path) -> None:
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("rkd-search:")]
    assert lines and "failed" in lines[-1] and "rkd.error" in lines[-1], result.stderr[-2000:]
    _, parents, _, children = mlflow_runs(out)
    assert parents[0].info.status == "FAILED"
    assert children and all(c.data.tags["rkd.state"] == "failed" for c in children)
    assert any("lower the learning rate" in c.data.tags.get("rkd.error", "") for c in children)


@pytest.mark.slow
def test_a_search_where_every_trial_failed_exits_1(tmp_path):
    """(The Ray back-end's case is in test_ray.py, on the shared cluster.)"""
    out = tmp_path / "out"
    result = run_here(*digits(out, 2, "--space", space_file(tmp_path, "1.0e+6")), cwd=tmp_path)
    check_every_trial_failed(result, out)


@pytest.mark.slow
def test_a_trial_that_crashes_natively_fails_with_its_signal_and_the_search_goes_on(tmp_path, monkeypatch):
    """os.abort() in a test-only training function (SIGABRT, as glibc's "double free or corruption"
    ends a process) for the first trial, the enqueued CIFAR-ResNet: that trial fails with the signal
    named, the search trains the others in a new worker and finishes with exit 0."""
    from rkd_search.search import parse_budget
    from rkd_search.search.driver import run_search
    from rkd_search.search.options import SearchOptions

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RKD_CACHE_DIR", env_for(tmp_path)["RKD_CACHE_DIR"])
    out = tmp_path / "out"
    options = SearchOptions(budget=parse_budget(BUDGET_FLAG), trials=2, dataset="digits", epochs=2, teacher_epochs=1,
                            output=out, tracking_uri=f"sqlite:///{out}/mlflow.db", progress=False,
                            train="tests.search.backends.crashing:abort_the_first_trial")
    front = run_search(options)
    assert front
    _, parents, _, children = mlflow_runs(out)
    assert parents[0].info.status == "FINISHED"
    crashed = [c for c in children if c.data.tags["rkd.state"] == "failed"]
    assert len(crashed) == 1 and crashed[0].data.tags["rkd.trial"] == "0" and crashed[0].data.params["student.family"] == "resnet"
    assert crashed[0].data.tags["rkd.failure"] == "crash" and "SIGABRT" in crashed[0].data.tags["rkd.error"]
    assert sum(c.data.tags["rkd.state"] == "complete" for c in children) == 2


# -- one output folder, one store -----------------------------------------------------------------------

@pytest.mark.slow
def test_a_second_search_on_the_same_output_is_refused_and_the_first_is_untouched(tmp_path):
    out = tmp_path / "out"
    env = {**env_for(tmp_path), **ONE_THREAD}
    assert run_here(*digits(tmp_path / "warm", 1), cwd=tmp_path).returncode == 0  # teacher cached, so both start at once
    first = start_cli(*digits(out, 3), cwd=tmp_path, env=env)
    second = start_cli(*digits(out, 3), cwd=tmp_path, env=env)
    results = [(p.wait(timeout=600), *p.communicate()) for p in (first, second)]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], [(code, err[-1500:]) for code, _, err in results]
    refused = next(err for code, _, err in results if code == 2)
    assert "is in use by another rkd-search" in refused and len(refused.strip().splitlines()) == 1
    _, parents, _, children = mlflow_runs(out)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(int(c.data.tags["rkd.trial"]) for c in children) == list(range(3))
    assert all(c.data.tags["rkd.state"] in ("complete", "infeasible") for c in children)


@pytest.mark.slow
def test_two_searches_on_one_fresh_store_create_it_once(tmp_path):
    store = f"sqlite:///{tmp_path}/shared.db"
    env = {**env_for(tmp_path), **ONE_THREAD}
    assert run_here(*digits(tmp_path / "warm", 1), cwd=tmp_path).returncode == 0  # teacher and targets cached
    args = [digits(tmp_path / name, 1, "--tracking-uri", store) for name in ("a", "b")]
    processes = [subprocess.Popen([RKD_SEARCH, *a], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, preexec_fn=default_sigint) for a in args]
    results = [(p.wait(timeout=600), p.communicate()[1]) for p in processes]
    assert [code for code, _ in results] == [0, 0], [err[-1500:] for _, err in results]


@pytest.mark.slow
def test_a_torn_journal_is_repaired_a_damaged_one_refused_and_an_empty_one_restarts(tmp_path):
    out = tmp_path / "out"
    assert run_here(*digits(out, 2), cwd=tmp_path).returncode == 0
    journal = out / "study.journal"
    journal.write_bytes(journal.read_bytes() + b'{"op_code": 6, "worker_id": "a1b2", "trial_id": 1, "sta')  # a crash mid-write
    rerun = run_here(*digits(out, 3), cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert journal.read_bytes().endswith(b"\n")
    assert sum(r.state == "complete" or r.state == "infeasible" for r in records(out)) == 3

    lines = journal.read_bytes().split(b"\n")
    lines[3] = lines[3][: len(lines[3]) // 2]  # damage in the middle: only a backup can fix it
    journal.write_bytes(b"\n".join(lines))
    before = journal.read_bytes()
    refused = run_here(*digits(out, 4), cwd=tmp_path)
    assert refused.returncode == 2 and "is damaged at line 4" in refused.stderr, refused.stderr[-2000:]
    assert len(refused.stderr.strip().splitlines()) == 1 and journal.read_bytes() == before

    # a process killed before its first write leaves an empty journal (and its lock file): not a bricked folder
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "study.journal").write_bytes(b"")
    (fresh / ".rkd-search.lock").write_text("pid 1 on nowhere")
    started = run_here(*digits(fresh, 1), cwd=tmp_path)
    assert started.returncode == 0, started.stderr[-2000:]
    assert sum(t.state.name == "COMPLETE" for t in study_of(fresh).trials) == 1


@pytest.mark.slow
def test_a_rerun_against_another_store_is_refused_before_anything_is_overwritten(tmp_path):
    out = tmp_path / "out"
    assert run_here(*digits(out, 2), cwd=tmp_path).returncode == 0
    front = (out / "pareto.csv").read_bytes()
    other = digits(out, 2)
    other[other.index("--tracking-uri") + 1] = f"sqlite:///{tmp_path}/other.db"
    refused = run_here(*other, cwd=tmp_path)
    assert refused.returncode == 2 and "holds a search logged to" in refused.stderr, refused.stderr[-2000:]
    assert (out / "pareto.csv").read_bytes() == front and not (tmp_path / "other.db").exists()


def readonly_prefix(tmp_path: Path) -> tuple[list[str], Path]:
    """A command prefix that runs a command with a read-only filesystem at MOUNT, and MOUNT."""
    mount = tmp_path / "readonly"
    mount.mkdir()
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o ro none {mount}"], capture_output=True)
    if probe.returncode == 0:
        return ["unshare", "-rm", "sh", "-c", f'mount -t tmpfs -o ro none {mount} && exec "$0" "$@"'], mount
    return [], Path("/sys/rkd-search")  # no mount namespace here: a folder nobody may write into


@pytest.mark.slow
def test_an_output_on_a_read_only_filesystem_is_one_line_exit_2(tmp_path):
    prefix, mount = readonly_prefix(tmp_path)
    args = digits(mount / "out", 1)
    args[args.index("--tracking-uri") + 1] = f"sqlite:///{tmp_path}/mlflow.db"
    result = subprocess.run([*prefix, RKD_SEARCH, *args], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env=env_for(tmp_path))
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().startswith("rkd-search: error: --output") and "cannot be written" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "mlflow.db").exists()


# -- kill -9 ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_kill_9_mid_trial_five_times_then_a_rerun_loses_nothing(tmp_path):
    """SIGKILL five times, each once a trial has trained an epoch (a multi-fidelity digits search),
    then a rerun to the end: exactly --trials trials, none RUNNING, one run each, every enqueued
    student trained, no checkpoint left."""
    out = tmp_path / "out"
    args = digits(out, 3, "--multi-fidelity", "--min-epochs", "1", epochs=3)
    killed_mid_trial = []
    for kill in range(5):
        process = start_cli(*args, cwd=tmp_path, stdout=subprocess.DEVNULL)
        running = wait_for_a_trial_mid_training(out, process)
        if running is None:  # the search finished before a fifth kill: nothing left to interrupt
            process.wait(timeout=120)
            break
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        killed_mid_trial.append(running.info.run_name)
    assert len(killed_mid_trial) >= 3, killed_mid_trial
    final = run_here(*args, cwd=tmp_path)
    assert final.returncode == 0, final.stderr[-3000:]
    check_nothing_lost(out, 3)
    _, _, _, children = mlflow_runs(out)
    enqueued = [c for c in children if int(c.data.tags["rkd.trial"]) < 2]  # the hand-picked students that fit 4 M MACs
    assert {c.data.params["student.family"] for c in enqueued} == {"resnet", "mbv2"}
    assert all(c.data.tags["rkd.state"] in ("complete", "pruned") and int(c.data.tags["rkd.epochs"]) >= 1 for c in enqueued)
    assert not list((out / "checkpoints").glob("*.pt")), "checkpoints of finished trials are deleted"


@pytest.mark.slow
def test_kill_9_of_one_of_two_jobs_and_of_the_search_then_a_rerun_loses_nothing(tmp_path):
    """--jobs 2: two workers train at once; a second search on the output is still refused; kill -9
    of one worker fails its trial (the search goes on); kill -9 of the search, then a rerun with
    --jobs 2, finishes exactly --trials trials with no duplicate or RUNNING run."""
    import psutil

    out = tmp_path / "out"
    args = digits(out, 4, "--jobs", "2", epochs=2)
    process = start_cli(*args, cwd=tmp_path, stdout=subprocess.DEVNULL)
    assert wait_for_a_trial_mid_training(out, process) is not None
    refused = run_here(*args, cwd=tmp_path)
    assert refused.returncode == 2 and "is in use by another rkd-search" in refused.stderr
    workers = [p for p in psutil.Process(process.pid).children() if p.name() == WORKER_NAME]
    assert len(workers) == 2, [p.cmdline() for p in psutil.Process(process.pid).children()]
    # the command's workers were forked from it (they share its command line), not spawned
    assert all(w.cmdline() == psutil.Process(process.pid).cmdline() for w in workers)
    workers[0].kill()
    time.sleep(2)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    time.sleep(1)
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers), "workers outlived the search"
    final = run_here(*args, cwd=tmp_path)
    assert final.returncode == 0, final.stderr[-3000:]
    check_nothing_lost(out, 4)


# -- Ray ---------------------------------------------------------------------------------------------------

def ray_session_processes(session: str) -> list[int]:
    """Processes of a Ray session: named in their command line, or holding a file of its folder open
    (Ray's agents rename themselves but keep their logs open)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            if session.encode() in Path(f"/proc/{pid}/cmdline").read_bytes() or any(
                    session in os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")):
                found.append(int(pid))
        except OSError:
            pass
    return found


@pytest.mark.slow
def test_kill_9_of_a_ray_driver_leaves_no_ray_process_and_the_rerun_reuses_the_killed_trial(tmp_path):
    """Also: the driver's local Ray, seen mid-trial, listens on loopback only."""
    import psutil

    out = tmp_path / "out"
    # one CPU, so one training thread, as every test's training (tests/conftest.py): the local Ray
    # would give the trial both cores, and two threads beside the other pytest worker thrash
    args = digits(out, 1, "--backend", "ray", "--trial-resources", "cpu=1", epochs=2)
    started = time.time()
    process = start_cli(*args, cwd=tmp_path, stdout=subprocess.DEVNULL, start_new_session=True)
    running = wait_for_a_trial_mid_training(out, process)
    assert running is not None
    # the driver's own Ray session: the one its child processes belong to (another test's cluster may
    # run beside it, under the same /tmp/ray)
    family = {child.pid for child in psutil.Process(process.pid).children(recursive=True)}
    sessions = {p.name for p in Path("/tmp/ray").glob("session_2*")
                if p.stat().st_mtime >= started - 1 and family & set(ray_session_processes(p.name))}
    assert sessions, "the driver's local Ray was not found"
    check_listens_on_loopback_only(process.pid)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    deadline = time.monotonic() + 30
    left = [1]
    while left and time.monotonic() < deadline:
        time.sleep(1)
        left = [pid for session in sessions for pid in ray_session_processes(session)]
    assert not left, f"Ray processes outlived their driver: {left}"
    rerun = run_cli(*args, cwd=tmp_path, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"unfinished trial(s) continue: {running.info.run_name[:4]}" in rerun.stdout
    assert "1 trial: 1 trained" in rerun.stdout
    check_nothing_lost(out, 1)
    _, _, _, children = mlflow_runs(out)
    again = next(c for c in children if c.info.run_id == running.info.run_id)  # the killed trial's run, reused
    assert again.data.tags["rkd.state"] == "complete" and "rkd.failure" not in again.data.tags


# -- defaults and stopping ----------------------------------------------------------------------------------

def test_the_cards_command_defaults_the_data_folder_under_the_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RKD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("RKD_DATA_DIR", raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # no network, as in CI: the download fails fast
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    assert main(["--budget", "20MFLOPs", "--trials", "200", "--no-progress", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and f"{tmp_path / 'cache' / 'data' / 'cifar10'}" in error and "could not be downloaded" in error
    assert not (tmp_path / "cache" / "data").exists() and not (tmp_path / "m.db").exists()


@pytest.mark.slow
def test_timeout_stops_new_work_finishes_cleanly_and_a_rerun_continues(tmp_path):
    """--timeout 1s: the deadline passes before the second trial can start on any machine (a trial
    takes seconds), so the search stops early, cleanly, and the rerun finishes it; a rerun whose
    --max-student-epochs is spent stops too, and says which limit stopped it."""
    out = tmp_path / "out"
    args = digits(out, 3, "--multi-fidelity", epochs=2)
    stopped = run_here(*args, "--timeout", "1s", cwd=tmp_path)
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    assert "stopped after --timeout" in stopped.stdout and "Rerun the same command to continue" in stopped.stdout
    _, parents, _, children = mlflow_runs(out)
    assert parents[0].info.status == "FINISHED" and parents[0].data.tags["rkd.stopped"] == "timeout"
    assert len(children) < 3
    # a compute budget smaller than three trials: stopped by it, said so, and how to continue
    spent = run_here(*args, "--max-student-epochs", "1", cwd=tmp_path)
    assert spent.returncode == 0, spent.stderr[-2000:]
    assert "stopped after --max-student-epochs 1 (" in spent.stdout and "Rerun with a larger --max-student-epochs" in spent.stdout
    assert "cover all 1 trial that --max-student-epochs 1 allows" in spent.stdout, "TPE's startup is scaled to the compute limit"
    _, parents, _, _ = mlflow_runs(out)
    assert parents[0].data.tags["rkd.stopped"] == "max-student-epochs"
    rerun = run_here(*args, cwd=tmp_path)
    assert rerun.returncode == 0 and "resuming the search in" in rerun.stdout, rerun.stderr[-2000:]
    trials = records(out)
    assert sum(r.state.finished for r in trials) == 3 and len({r.number for r in trials}) == len(trials)
