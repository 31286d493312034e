"""Shared by the end-to-end tests: run the installed rkd-search, read back its MLflow store.

The end-to-end searches are as small as their assertions allow: scikit-learn's digits (or a
tenth of the CIFAR-10 subset), a 4 M MAC budget (students of a few million MACs train fast; at 4 M the default
space enqueues its CIFAR-ResNet and its MobileNetV2 student, at 3 M only the first),
one epoch, a one-epoch teacher. Every search gets its own MLflow store, copied from an empty one
made once per test session (creating MLflow's schema takes seconds).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

SHARED = "shared-searches"
"""The xdist group of the tests that share the session's searches (``digits_search``,
``cifar_search``) and the Ray cluster: one worker builds each of them once (``--dist loadgroup``)."""
BUDGET = 4e6
BUDGET_FLAG = "4MFLOPs"
RKD_SEARCH = str(Path(sys.executable).parent / "rkd-search")
CHILD_METRICS = {"val_acc", "test_acc", "macs", "flops", "params", "teacher_agreement", "teacher_kl", "train_seconds",
                 "flash_bytes", "sram_bytes", "score.params", "score.macs", "score.synflow", "score.graph", "score.naswot"}


def add_decoy_packages(folder: Path) -> None:
    """search/, spaces/ and trainer/ folders of a user's own project, importable from ``folder``:
    rkd-search must keep using its own (it installs them under the rkd_search namespace)."""
    for name in ("search", "spaces", "trainer"):
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "__init__.py").write_text(f"raise ImportError('the user project\'s own {name} package was imported')\n")


def default_sigint() -> None:
    """Children start with SIGINT at its default (a test run from a background job has it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def env_for(cwd: Path, **extra: str) -> dict[str, str]:
    """The environment of a search: the session's shared cache (teachers, targets, decoded data:
    keyed by what they depend on, written atomically), else one under ``cwd``."""
    cache = os.environ.get("RKD_TEST_SHARED_CACHE") or str(cwd / "cache")
    return {**os.environ, "RKD_CACHE_DIR": cache, **extra}


def run_cli(*args: str, cwd: Path, timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    prepare_store(args)
    return subprocess.run([RKD_SEARCH, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env or env_for(cwd), preexec_fn=default_sigint)


def run_here(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``rkd-search ARGS`` through ``cli.main`` in this process (its trials still train in worker
    processes), with ``run_cli``'s working folder, cache and result: for the tests whose search needs
    no process of its own (no signal, no second search beside it), this saves the command's start."""
    import contextlib
    import io

    from rkd_search.search.cli import main

    prepare_store(args)
    stdout, stderr = io.StringIO(), io.StringIO()
    previous, saved = os.getcwd(), os.environ.get("RKD_CACHE_DIR")
    os.environ["RKD_CACHE_DIR"] = env_for(cwd)["RKD_CACHE_DIR"]
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main(list(args))
    finally:
        os.chdir(previous)
        if saved is None:
            os.environ.pop("RKD_CACHE_DIR", None)
        else:
            os.environ["RKD_CACHE_DIR"] = saved
    return subprocess.CompletedProcess(["rkd-search", *args], code, stdout.getvalue(), stderr.getvalue())


def start_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, **popen) -> subprocess.Popen:
    prepare_store(args)
    return subprocess.Popen([RKD_SEARCH, *args], cwd=cwd, env=env or env_for(cwd), preexec_fn=default_sigint,
                            stdout=popen.pop("stdout", subprocess.PIPE), stderr=popen.pop("stderr", subprocess.PIPE),
                            text=True, **popen)


def communicate_or_dump(process: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """``process.communicate(timeout)``; past it, the command's threads' stacks (``kill -USR1``,
    ``rkd-search``'s faulthandler) in the failure, then the process killed."""
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGUSR1)
        try:
            _, stderr = process.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
        raise AssertionError(f"rkd-search did not end within {timeout:.0f} s; its threads:\n{(stderr or '')[-6000:]}") from None


def prepare_store(args) -> None:
    """A new search (its --output does not exist yet) with its SQLite store inside that folder gets
    the empty schema made once for the session (``RKD_TEST_EMPTY_STORE``) instead of creating it."""
    args = list(args)
    empty = Path(os.environ.get("RKD_TEST_EMPTY_STORE", "/nonexistent"))
    if "--tracking-uri" not in args or "--output" not in args or not empty.is_file():
        return
    uri, out = args[args.index("--tracking-uri") + 1], Path(args[args.index("--output") + 1])
    if uri.startswith("sqlite:///") and not out.exists():
        path = Path(uri[len("sqlite:///"):])
        if path.parent == out:
            out.mkdir(parents=True)
            shutil.copyfile(empty, path)


def imagefolder_subset(source: Path, root: Path, counts: dict[str, int]) -> Path:
    """The first ``counts[split]`` images of each class of ``source``'s splits, linked under ``root``."""
    for split, count in counts.items():
        for folder in sorted((source / split).iterdir()):
            target = root / split / folder.name
            target.mkdir(parents=True)
            for path in sorted(folder.iterdir())[:count]:
                (target / path.name).symlink_to(path.resolve())
    return root


def search_args(out: Path, trials: int, *extra: str, epochs: int = 1) -> list[str]:
    return ["--budget", BUDGET_FLAG, "--trials", str(trials), "--epochs", str(epochs), "--teacher-epochs", "1",
            "--output", str(out), "--tracking-uri", f"sqlite:///{out}/mlflow.db", "--no-progress", *extra]


def mlflow_runs(out: Path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out}/mlflow.db")
    experiment = client.get_experiment_by_name("rkd-search")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("rkd.role") == "search"]
    teachers = [r for r in runs if r.data.tags.get("rkd.role") == "teacher"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    return client, parents, teachers, children


def check_search_store(out: Path, trials: int, epochs: int = 1) -> list:
    """One parent, one un-nested teacher run, ``trials`` children with the promised metrics and tags."""
    client, parents, teachers, children = mlflow_runs(out)
    assert len(parents) == 1 and len(teachers) == 1
    parent, teacher = parents[0], teachers[0]
    assert "mlflow.parentRunId" not in teacher.data.tags
    assert parent.data.params["teacher.run_id"] == teacher.info.run_id
    assert parent.data.params["budget.unit"].startswith("MACs as counted by thop")
    assert int(parent.data.params["val.size"]) == int(parent.data.params["dataset.sizes"].split("/")[1])
    assert 0 < float(parent.data.params["val.stderr_at_teacher"]) < 0.1
    assert parent.info.status == "FINISHED"
    assert len(children) == trials
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    assert sorted(c.info.run_name for c in children) == sorted(f"t{int(c.data.tags['rkd.trial']):03d}-{c.data.params['student.name']}" for c in children)
    for child in children:
        tags, metrics, params = child.data.tags, child.data.metrics, child.data.params
        assert tags["rkd.state"] in ("complete", "infeasible", "pruned", "failed")
        assert tags["rkd.pareto"] in ("true", "false") and tags["rkd.feasible"] in ("true", "false")
        assert {"student.depth", "student.width", "loss.graph_weight", "optim.lr"} <= set(params)
        if tags["rkd.state"] == "complete":
            assert CHILD_METRICS <= set(metrics), CHILD_METRICS - set(metrics)
            assert metrics["macs"] <= BUDGET
            assert tags["rkd.epochs"] == str(epochs)
            assert len(client.get_metric_history(child.info.run_id, "epoch.val_acc")) == epochs
            artifacts = {a.path for a in client.list_artifacts(child.info.run_id, "student")}
            assert artifacts == {"student/spec.json", "student/weights.pt"}
    front = [c for c in children if c.data.tags["rkd.pareto"] == "true"]
    assert front and all(c.data.tags["rkd.state"] == "complete" for c in front)
    # the front is exactly the non-dominated set of the completed, learned trials
    done = [c for c in children if c.data.tags["rkd.state"] == "complete" and c.data.tags.get("rkd.learned") != "false"]
    for child in done:
        acc, macs = child.data.metrics["val_acc"], child.data.metrics["macs"]
        dominated = any(o.data.metrics["val_acc"] >= acc and o.data.metrics["macs"] <= macs
                        and (o.data.metrics["val_acc"] > acc or o.data.metrics["macs"] < macs) for o in done)
        assert (child.data.tags["rkd.pareto"] == "true") == (not dominated)
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"pareto.csv", "pareto.png", "space.yaml", "search.json"}
    return front


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free now (each held until all are chosen)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
