"""The rkd-search command end to end: real training, a real Optuna journal, a real MLflow SQLite store.

The search runs as the installed console script, as a user runs it; the MLflow store is then read
back with MlflowClient and checked against what the issue promises (runs, metrics, tags, front).
"""

from __future__ import annotations

import csv
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from rkd_search.search.cli import main

from .helpers import SHARED, check_search_store, communicate_or_dump, mlflow_runs, run_cli, run_here, search_args, start_cli


@pytest.mark.slow
@pytest.mark.xdist_group(SHARED)
def test_search_logs_the_promised_mlflow_structure_and_resumes(digits_search):
    """The session's digits search: 3 trials, then the same command with --trials 4, which trains
    exactly one new trial and keeps the trained ones; the store, the table and pareto.csv agree."""
    first, out = digits_search.first, digits_search.out
    assert "MACs as counted by thop" in first.stdout
    lines = first.stdout.splitlines()
    assert lines[0].startswith("rkd-search: output") and lines[1].startswith("validation split: 143 images")
    assert "standard error" in lines[1] and "val_acc_se" in first.stdout
    startup = re.fullmatch(r"sampler tpe: (\d+) startup trials \(hand-picked or random\) cover all 3 trials; TPE models the "
                           r"results only in a longer search\.", lines[2])
    assert startup, lines[2]

    assert "resuming the search in" in digits_search.second.stdout and "3 of 4 trials done" in digits_search.second.stdout
    front = check_search_store(out, 4, epochs=2)
    _, parents, _, _ = mlflow_runs(out)
    assert parents[0].data.tags["rkd.sampler_startup"] == startup.group(1)
    _, _, _, after = mlflow_runs(out)
    new = [c for c in after if c.info.run_id not in digits_search.first_runs]
    assert len(new) == 1 and {int(c.data.tags["rkd.trial"]) for c in new} == {3}
    assert digits_search.trained_first <= {c.info.run_id for c in after}
    with open(out / "pareto.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert all(0 < float(row["val_acc_se"]) < 0.1 for row in rows)

    table = run_here("pareto", "--output", str(out), "--tracking-uri", f"sqlite:///{out}/mlflow.db", cwd=digits_search.root)
    assert table.returncode == 0, table.stderr
    printed = {line.split()[-1] for line in table.stdout.splitlines()[2:] if line.strip()}
    assert printed == {c.info.run_id for c in front}
    assert {row["run_id"] for row in rows} == printed


@pytest.mark.slow
@pytest.mark.xdist_group(SHARED)
def test_a_search_on_the_cifar_subset_logs_the_same_structure(cifar_search):
    """The same store on real CIFAR-10 images (the shared 3-trial search the export tests use too)."""
    root, out = cifar_search
    front = check_search_store(out, 3, epochs=3)
    table = run_here("pareto", "--output", str(out), "--tracking-uri", f"sqlite:///{out}/mlflow.db", cwd=root)
    assert table.returncode == 0, table.stderr
    printed = {line.split()[-1] for line in table.stdout.splitlines()[2:] if line.strip()}
    assert printed == {c.info.run_id for c in front}
    with open(out / "pareto.csv") as handle:
        assert {row["run_id"] for row in csv.DictReader(handle)} == printed


@pytest.mark.slow
@pytest.mark.xdist_group(SHARED)
def test_export_writes_a_torchscript_student_with_the_same_outputs(digits_search):
    root, out = digits_search.root, digits_search.out
    _, _, _, children = mlflow_runs(out)
    chosen = next(c for c in children if c.data.tags["rkd.pareto"] == "true")
    result = run_cli("export", chosen.info.run_id, "--output", str(out), "--tracking-uri", f"sqlite:///{out}/mlflow.db", cwd=root)
    assert result.returncode == 0, result.stderr
    folder = out / "exports" / chosen.info.run_name
    scripted = torch.jit.load(str(folder / "student.torchscript.pt"))

    import json

    from rkd_search.trainer import ModelSpec, build_model

    summary = json.loads((folder / "student.json").read_text())
    assert summary["macs"] == chosen.data.metrics["macs"] and summary["run_id"] == chosen.info.run_id
    model = build_model(ModelSpec.from_dict(summary["spec"])).eval()
    from mlflow import MlflowClient

    local = MlflowClient(f"sqlite:///{out}/mlflow.db").download_artifacts(chosen.info.run_id, "student/weights.pt", str(root))
    model.load_state_dict(torch.load(local, weights_only=True))
    x = torch.randn(4, *summary["input"]["shape"][1:])
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))


@pytest.mark.slow
@pytest.mark.xdist_group(SHARED)
def test_export_of_a_parent_run_is_refused(digits_search, monkeypatch, capsys):
    out = digits_search.out
    monkeypatch.chdir(digits_search.root)
    _, parents, _, _ = mlflow_runs(out)
    code = main(["export", parents[0].info.run_id, "--tracking-uri", f"sqlite:///{out}/mlflow.db"])
    error = capsys.readouterr().err
    assert code == 2 and "parent run" in error and "Traceback" not in error and len(error.strip().splitlines()) == 1


def wait_for_a_trial_after(out: Path, process: subprocess.Popen, completed: int):
    """The running trial that has trained an epoch once ``completed`` trials are complete (trials run
    one after another here, so it is the next one, training in this process), or None."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
        try:
            client, _, _, children = mlflow_runs(out)
        except Exception:  # no store yet, or being written
            continue
        if sum(c.data.tags.get("rkd.state") == "complete" for c in children) < completed:
            continue
        running = next((c for c in children if c.data.tags.get("rkd.state") == "running"
                        and client.get_metric_history(c.info.run_id, "epoch.val_acc")), None)
        if running is not None:
            return running
    return None


def check_stopped_by(sig: int, process: subprocess.Popen, out: Path, running) -> tuple[str, str]:
    """``sig`` sent to the search: exit 130, the running trial marked, the front so far tagged and written."""
    from rkd_search.search import compute_front
    from rkd_search.search.tracking import Tracker, TrackingSettings

    process.send_signal(sig)
    stdout, stderr = communicate_or_dump(process, timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert stdout.splitlines()[0].startswith("rkd-search: output") and "MLflow experiment" in stdout.splitlines()[0]
    why = "interrupted" if sig == signal.SIGINT else "stopped by SIGTERM"
    assert f"{why} after" in stdout and "rerun the same command to resume" in stdout
    assert "Traceback" not in stderr
    _, parents, _, children = mlflow_runs(out)
    assert len(parents) == 1 and parents[0].info.status == "KILLED"
    interrupted = [c for c in children if c.data.tags.get("rkd.failure") == "interrupted"]
    assert len(interrupted) == 1 and interrupted[0].info.status == "KILLED"
    assert interrupted[0].info.run_id == running.info.run_id
    tracker = Tracker(TrackingSettings(f"sqlite:///{out}/mlflow.db", "rkd-search"))
    trials = tracker.trial_records(parents[0].info.run_id)
    tagged = {r.run_id for r in trials if r.pareto}
    assert tagged and tagged == {r.run_id for r in compute_front(trials)}  # something to pick already
    with open(out / "pareto.csv") as handle:
        assert {row["run_id"] for row in csv.DictReader(handle)} == tagged
    assert (out / "pareto.png").exists()
    return stdout, stderr


@pytest.mark.slow
def test_ctrl_c_and_sigterm_each_mark_the_trial_end_the_parent_keep_a_front_and_a_rerun_resumes(tmp_path):
    """SIGINT (Ctrl-C) once a trial finished and another has trained an epoch of its two (SIGUSR1
    just before prints the command's threads and stops nothing); the same command again, then
    SIGTERM (docker stop, Kubernetes, SLURM) at the same point of the next trial; the same command
    to the end. Each signal: exit 130, the front so far tagged and written, the
    running trial marked. Each rerun says where it resumes, reuses the marked trial's run and clears
    its failure tags."""
    out = tmp_path / "out"
    args = search_args(out, 3, "--dataset", "digits", epochs=2)
    process = start_cli(*args, cwd=tmp_path)
    first = wait_for_a_trial_after(out, process, completed=1)
    assert first is not None, "no trial finished and another trained an epoch"
    process.send_signal(signal.SIGUSR1)  # prints its threads' stacks (a search that seems stuck), and goes on
    _, stderr = check_stopped_by(signal.SIGINT, process, out, first)
    assert "most recent call first" in stderr and "run_search" in stderr, stderr[-2000:]

    process = start_cli(*args, cwd=tmp_path)
    second = wait_for_a_trial_after(out, process, completed=2)
    assert second is not None and second.info.run_id != first.info.run_id, "the resumed search trained no further trial"
    stdout, _ = check_stopped_by(signal.SIGTERM, process, out, second)
    assert "resuming the search in" in stdout and "1 of 3 trials done" in stdout

    rerun = run_here(*args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming the search in" in rerun.stdout and "2 of 3 trials done" in rerun.stdout
    _, parents, _, children = mlflow_runs(out)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sum(c.data.tags["rkd.state"] == "complete" for c in children) == 3 and len(children) == 3
    for marked in (first, second):  # each run was reused
        resumed = next(c for c in children if c.info.run_id == marked.info.run_id)
        assert resumed.data.tags["rkd.state"] == "complete"
        assert "rkd.failure" not in resumed.data.tags and "rkd.error" not in resumed.data.tags
        assert resumed.data.tags["rkd.history"].startswith("interrupted:")


# -- bad input: one line, exit code 2, nothing created ---------------------------------------------------

def _corrupt_teacher(tmp: Path) -> str:
    path = tmp / "corrupt.pt"
    path.write_bytes(b"\x00not a checkpoint")
    return str(path)


def _teacher_for_100_classes(tmp: Path) -> str:
    from rkd_search.trainer import ModelSpec, build_model, save_checkpoint

    spec = ModelSpec("wrn", 10, 0.5, num_classes=100)
    return str(save_checkpoint(build_model(spec), spec, tmp / "cifar100-teacher.pt"))


def _bad_space(tmp: Path) -> str:
    path = tmp / "space.yaml"
    path.write_text("name: bad\nstudent:\n  family: wrn\n  depth: {wrn: [16]}\ngraph:\n  kk: 4\n")
    return str(path)


def _space_without_depths(tmp: Path) -> str:
    path = tmp / "no-depths.yaml"
    path.write_text("name: bad\nstudent:\n  family: [wrn, resnet]\n  depth: {wrn: [16], resnet: []}\n")
    return str(path)


def _binary_space(tmp: Path) -> str:
    path = tmp / "space.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    return str(path)


def _tree_with_an_empty_class(tmp: Path) -> str:
    from tests.trainer.test_data import write_tree

    return str(write_tree(tmp / "empty-class", empty=(("train", "dog"), ("test", "dog"))))


def _space_with_a_bad_schedule(tmp: Path) -> str:
    path = tmp / "schedule.yaml"
    path.write_text("name: bad\nstudent:\n  family: wrn\n  depth: {wrn: [16]}\noptim:\n  schedule: linear\n")
    return str(path)


BAD_INPUT = [
    (["--dataset", "mnist"], lambda t: [], "invalid choice: 'mnist'"),
    (["--dataset", "imagefolder", "--data-dir", "{tmp}/missing"], lambda t: [], "missing/train is not a folder"),
    (["--dataset", "cifar10", "--data-dir", "{tmp}/empty"], lambda t: (t / "empty").mkdir(), "could not be downloaded"),
    (["--budget", "20 parsecs"], lambda t: [], "malformed budget"),
    (["--budget", "100k"], lambda t: [], r"below the smallest student .* mbv2-1-1-1_0.25_e2k3 needs"),
    (["--seed", "-1"], lambda t: [], r"--seed -1 is out of range: pass a whole number from 0 to 4294967295"),
    (["--experiment", ""], lambda t: [], r"--experiment is empty"),
    (["--space", "{binary}"], lambda t: [], r"is not a text file"),
    (["--val-fraction", "1.5"], lambda t: [], r"--val-fraction 1.5 must be between 0 and 1"),
    (["--jobs", "0"], lambda t: [], r"--jobs must be between 1 and 256"),
    (["--prescreen", "0"], lambda t: [], r"--prescreen must be between 1 and 1000"),
    (["--max-activation-memory", "1KB"], lambda t: [], r"--max-activation-memory 1 kB is below the smallest student"),
    (["--max-latency-ms", "0.0001"], lambda t: [], r"--max-latency-ms 0.0001 is below the smallest student .* ms on this CPU"),
    (["--max-flash", "1KB"], lambda t: [], r"--max-flash 1 kB is below the smallest student .* of int8 weights"),
    (["--max-sram", "100"], lambda t: [], r"--max-sram 100 B is below the smallest student .* of int8 activations"),
    (["--dataset", "imagefolder", "--data-dir", "{emptyclass}"], lambda t: [], r"train/dog holds no images"),
    (["--space", "{space}"], lambda t: [], r"graph.kk: unknown key"),
    (["--teacher", "{tmp}/no-such-teacher.pt"], lambda t: [], "does not exist"),
    (["--teacher", "{corrupt}"], lambda t: [], "not a readable PyTorch file"),
    (["--teacher", "{t100}"], lambda t: [], "predicts 100 classes but digits has 10"),
    (["--tracking-uri", "http://127.0.0.1:9"], lambda t: [], "cannot reach the MLflow tracking server"),
    (["--trials", "0"], lambda t: [], "at least 1"),
    (["--sampler", "cmaes"], lambda t: [], "invalid choice: 'cmaes'"),
    # found by a hostile user (issue "Nothing lost, nothing faked", finding 6)
    (["--budget", "1e400"], lambda t: [], "budget '1e400' is too large"),
    (["--budget", "1e308M"], lambda t: [], "budget '1e308M' is too large"),
    (["--space", "{nodepths}"], lambda t: [], "depth lists no depth for family 'resnet'"),
    (["--space", "{schedule}"], lambda t: [], "optim.schedule: unknown schedule 'linear'"),
    (["--tracking-uri", "postgresql://user:secret@127.0.0.1:9/mlflow"], lambda t: [], "needs the database driver 'psycopg"),
    (["--output", "{tmp}/a-file"], lambda t: (t / "a-file").write_text("x"), "is a file, not a folder"),
    (["--max-params", "lots"], lambda t: [], "malformed --max-params 'lots'"),
    (["--max-params", "1k"], lambda t: [], "--max-params 1000 is below the smallest student"),
    (["--max-activation-memory", "12 parsecs"], lambda t: [], "malformed --max-activation-memory"),
    (["--max-latency-ms", "-1"], lambda t: [], "--max-latency-ms must be a positive number"),
    (["--timeout", "soon"], lambda t: [], "malformed --timeout 'soon'"),
    (["--multi-fidelity", "--min-epochs", "5"], lambda t: [], r"multi-fidelity needs 1 <= --min-epochs \(5\) <= --epochs \(1\)"),
    (["parteo"], lambda t: [], "unknown command 'parteo': did you mean `rkd-search pareto`"),
]


@pytest.mark.parametrize("flags, prepare, message", BAD_INPUT, ids=[" ".join(f[:2]) for f, _, _ in BAD_INPUT])
def test_bad_input_is_one_line_exit_2_and_creates_nothing(tmp_path, monkeypatch, capsys, flags, prepare, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RKD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RKD_DATA_DIR", raising=False)
    prepare(tmp_path)
    names = {"tmp": tmp_path, "space": _bad_space(tmp_path), "corrupt": _corrupt_teacher(tmp_path),
             "t100": _teacher_for_100_classes(tmp_path), "nodepths": _space_without_depths(tmp_path),
             "schedule": _space_with_a_bad_schedule(tmp_path), "binary": _binary_space(tmp_path / "bin") if (tmp_path / "bin").mkdir() is None else "",
             "emptyclass": _tree_with_an_empty_class(tmp_path)}
    flags = [f.format(**names) for f in flags]
    defaults = {"--budget": "20MFLOPs", "--dataset": "digits", "--trials": "2", "--epochs": "1", "--output": str(tmp_path / "out"),
                "--cache-dir": str(tmp_path / "cache")}
    argv = flags + [item for key, value in defaults.items() if key not in flags for item in (key, value)]
    argv += ["--no-progress"]
    before = {p for p in tmp_path.rglob("*") if "cache" not in p.parts}
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rkd-search: error: "), captured.err
    assert re.search(message, lines[0]), lines[0]
    assert "Traceback" not in captured.err + captured.out
    after = {p for p in tmp_path.rglob("*") if "cache" not in p.parts}
    assert after == before, f"created {sorted(map(str, after - before))}"


def test_a_reading_command_never_creates_or_migrates_a_store(tmp_path, monkeypatch, capsys):
    """``pareto`` pointed at another application's SQLite file named mlflow.db: refused in one line, the
    file left byte for byte as it was (MLflow would have added its 65 tables)."""
    import hashlib
    import sqlite3

    from rkd_search.search.cli import main

    path = tmp_path / "mlflow.db"
    with sqlite3.connect(path) as connection:
        connection.execute("create table notes (id integer primary key, text varchar)")
        connection.execute("insert into notes (text) values ('mine')")
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.chdir(tmp_path)
    for command in (["pareto"], ["train", "--best"], ["export", "0123456789abcdef"]):
        code = main([*command, "--tracking-uri", f"sqlite:///{path}"])
        error = capsys.readouterr().err
        assert code == 2 and "is not an MLflow store" in error, error
        assert len(error.strip().splitlines()) == 1
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
