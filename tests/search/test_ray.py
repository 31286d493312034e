"""The Ray back-end with real Ray processes: a two-node cluster started with `ray start`, a local Ray,
Ctrl-C and resume, and multi-fidelity's early stops (the Pareto promotion rule) kept off the Pareto front."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .helpers import RKD_SEARCH, add_decoy_packages, check_search_store, free_port, mlflow_runs, run_cli, search_args

RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture()
def two_node_cluster(tmp_path, monkeypatch):
    """A head and a worker node, one CPU each, on loopback: the commands the README gives a user,
    with the cluster's token in a file of its own (RAY_AUTH_TOKEN_PATH), as on a fresh machine."""
    import secrets

    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    head = subprocess.run([RAY, "start", "--head", "--port", str(port), "--include-dashboard=false", *common],
                          capture_output=True, text=True, env=env, timeout=180)
    assert head.returncode == 0, head.stderr[-2000:]
    try:
        worker = subprocess.run([RAY, "start", "--address", f"127.0.0.1:{port}", *common],
                                capture_output=True, text=True, env=env, timeout=180)
        assert worker.returncode == 0, worker.stderr[-2000:]
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)


def child_keys(out: Path) -> tuple[set, set, set]:
    """The param, metric and tag names of the completed trials' runs (names only: values differ by run).

    Left out: params that only some configurations have (``graph.bandwidth`` exists for the Gaussian
    similarity only, so it depends on what was sampled), the node tag, and ``rkd.exported``, which a
    later ``rkd-search export`` adds (other tests export from the shared digits search).
    """
    _, _, _, children = mlflow_runs(out)
    done = [c for c in children if c.data.tags["rkd.state"] == "complete"]
    assert done, "no completed trial"
    params = set().union(*(c.data.params for c in done)) - {"graph.bandwidth"}
    metrics = set().union(*(c.data.metrics for c in done))
    tags = {t for c in done for t in c.data.tags if not t.startswith("mlflow.")} - {"rkd.node", "rkd.exported"}
    return params, metrics, tags


@pytest.mark.slow
def test_search_on_a_two_node_cluster_uses_both_nodes_and_logs_like_optuna(tmp_path, two_node_cluster, digits_search):
    out = tmp_path / "out"
    env_without_auth_mode = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}  # rkd-search sets it itself
    result = subprocess.run(
        [RKD_SEARCH, *search_args(out, 4, "--dataset", "digits", "--backend", "ray", "--address", two_node_cluster,
                                  "--trial-resources", "cpu=1")],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
        env={**env_without_auth_mode, "RKD_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    check_search_store(out, 4)
    _, parents, _, children = mlflow_runs(out)
    nodes = {c.data.tags.get("rkd.node") for c in children}
    assert None not in nodes and len(nodes) == 2, nodes
    assert parents[0].data.tags["rkd.ray_nodes"] == "2" and parents[0].data.params["backend"] == "ray"
    # the same runs, names, params, metrics and tags as the Optuna back-end's
    assert child_keys(out) == child_keys(digits_search / "out")


@pytest.mark.slow
def test_interrupted_local_ray_search_resumes_without_duplicate_runs(tmp_path):
    out = tmp_path / "out"
    add_decoy_packages(tmp_path)  # a user's own search/, spaces/, trainer/ in the working folder
    args = search_args(out, 3, "--dataset", "digits", "--backend", "ray")
    args[args.index("--epochs") + 1] = "3"
    process = subprocess.Popen([RKD_SEARCH, *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "RKD_CACHE_DIR": str(tmp_path / "cache")})
    deadline = time.monotonic() + 300
    epochs_logged = False
    while not epochs_logged and time.monotonic() < deadline and process.poll() is None:
        time.sleep(1)
        try:
            client, _, _, children = mlflow_runs(out)
        except Exception:  # no store yet
            continue
        running = [c for c in children if c.data.tags.get("rkd.state") == "running"]
        epochs_logged = any(client.get_metric_history(c.info.run_id, "epoch.val_acc") for c in running)
    assert epochs_logged, "no trial reported an epoch"
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=180)
    assert process.returncode == 130, stderr[-3000:]
    _, parents, _, children = mlflow_runs(out)
    assert parents[0].info.status == "KILLED"
    assert [c.data.tags.get("rkd.failure") for c in children if c.data.tags["rkd.state"] != "complete"] == ["interrupted"]

    rerun = run_cli(*args, cwd=tmp_path, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    _, parents, _, children = mlflow_runs(out)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sum(c.data.tags["rkd.state"] == "complete" for c in children) == 3
    numbers = [int(c.data.tags["rkd.trial"]) for c in children]
    assert len(numbers) == len(set(numbers)), "a trial was logged twice"


@pytest.mark.slow
def test_trials_stopped_at_a_rung_keep_their_fidelity_and_stay_off_the_front(tmp_path):
    import optuna

    out = tmp_path / "out"
    args = search_args(out, 8, "--dataset", "digits", "--backend", "ray", "--multi-fidelity", "--seed", "3")
    args[args.index("--epochs") + 1] = "4"
    result = run_cli(*args, cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    _, _, _, children = mlflow_runs(out)
    stopped = [c for c in children if c.data.tags["rkd.state"] == "pruned"]
    assert stopped, "the promotion rule stopped no trial: the test needs a seed where it does"
    for child in stopped:
        assert int(child.data.tags["rkd.epochs"]) < 4 and child.data.tags["rkd.pareto"] == "false"
        assert "val_acc" in child.data.metrics and "test_acc" not in child.data.metrics
    study = optuna.load_study(study_name="rkd-search", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / "study.journal"))))
    pruned = {t.number for t in study.trials if t.state == optuna.trial.TrialState.PRUNED}
    assert pruned == {int(c.data.tags["rkd.trial"]) for c in stopped}
    assert all(t.number not in pruned for t in study.best_trials)
