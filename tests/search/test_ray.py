"""The Ray back-end with real Ray processes: a two-node cluster started with `ray start` (as the
README tells a user), one per pytest worker that runs these tests, Ctrl-C and resume, and multi-fidelity's early stops
kept off the Pareto front. The cluster's processes, and only they, are stopped after these tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from .helpers import SHARED, add_decoy_packages, check_search_store, communicate_or_dump, env_for, free_ports, mlflow_runs, run_cli, search_args, start_cli
from .test_reliability import check_every_trial_failed, digits, ray_session_processes, space_file

RAY_CLUSTER = "ray-cluster"
"""The xdist group of the tests that need only the cluster; the two-node test compares its runs with
the session's digits search, so it runs with that search (``SHARED``), on a cluster of its own
worker's (this module's fixture): the two groups run side by side."""

RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A head and a worker node, one CPU each, on loopback, with the cluster's token in a file of
    its own (RAY_AUTH_TOKEN_PATH), as on a fresh machine. Yields (address, environment)."""
    import secrets

    folder = tmp_path_factory.mktemp("ray-cluster")
    token = folder / "auth_token"
    token.write_text(secrets.token_hex(32))
    temp_dir = Path(f"/tmp/rkd-ray-{os.getpid()}")  # Ray's socket paths must stay short
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats", "--temp-dir", str(temp_dir)]
    # Explicit, distinct free ports for each node's services whose default port is fixed or picked late
    # (another worker's cluster may start at the same moment: two clusters left to Ray's defaults
    # made one head time out). A start that fails anyway is retried once on new ports.
    services = ("--dashboard-agent-listen-port", "--metrics-export-port", "--runtime-env-agent-port")
    failures = []
    try:
        for _ in range(2):
            port, *chosen = free_ports(1 + 2 * len(services))
            head_ports = [item for flag, number in zip(services, chosen) for item in (flag, str(number))]
            worker_ports = [item for flag, number in zip(services, chosen[len(services):]) for item in (flag, str(number))]
            head = subprocess.run([RAY, "start", "--head", "--port", str(port), "--include-dashboard=false", *head_ports, *common],
                                  capture_output=True, text=True, env=env, timeout=180)
            worker = None
            if head.returncode == 0:
                worker = subprocess.run([RAY, "start", "--address", f"127.0.0.1:{port}", *worker_ports, *common],
                                        capture_output=True, text=True, env=env, timeout=180)
                if worker.returncode == 0:
                    break
            failures.append((worker or head).stderr[-2000:])
            kill_session(temp_dir)
        else:
            raise AssertionError("the test cluster did not start, twice:\n" + "\n---\n".join(failures))
        if failures:  # said in the run's warnings summary
            warnings.warn(f"the test cluster started at the second try; the first failed with: {failures[0][-800:]}")
        client_env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}  # rkd-search sets it itself
        yield f"127.0.0.1:{port}", {**client_env, "RAY_AUTH_TOKEN_PATH": str(token)}
    finally:
        kill_session(temp_dir)
        assert not ray_session_processes(str(temp_dir)), "the test cluster's Ray processes outlived it"


def kill_session(temp_dir: Path) -> None:
    """This cluster's processes only: never `ray stop`, which stops every Ray on the machine. Until
    none is left: a raylet being killed may have just started an agent (one outlived a single pass)."""
    deadline = time.monotonic() + 60
    while (left := ray_session_processes(str(temp_dir))) and time.monotonic() < deadline:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.5)


def child_keys(out: Path) -> tuple[set, set, set]:
    """The param, metric and tag names of the completed trials' runs (names only: values differ by run).

    Left out: params that only some configurations have (``graph.bandwidth`` exists for the Gaussian
    similarity only, ``loss.temperature`` with KD), the node tag, ``rkd.exported`` (a later export
    adds it, as it adds the exported model's accuracies) and ``rkd.prescreen``.
    """
    _, _, _, children = mlflow_runs(out)
    done = [c for c in children if c.data.tags["rkd.state"] == "complete"]
    assert done, "no completed trial"
    params = set().union(*(c.data.params for c in done)) - {"graph.bandwidth", "loss.temperature"}
    exported = {"onnx_test_acc", "int8_test_acc", "int8_drop", "litert_test_acc", "litert_int8_test_acc"}  # an export adds them
    metrics = set().union(*(c.data.metrics for c in done)) - exported
    tags = {t for c in done for t in c.data.tags if not t.startswith("mlflow.")} - {"rkd.node", "rkd.exported", "rkd.history"}
    return params, metrics, tags


@pytest.mark.slow
@pytest.mark.xdist_group(SHARED)
def test_search_on_a_two_node_cluster_uses_both_nodes_and_logs_like_the_embedded_back_end(tmp_path, ray_cluster, digits_search):
    address, env = ray_cluster
    out = tmp_path / "out"
    result = run_cli(*search_args(out, 3, "--dataset", "digits", "--backend", "ray", "--address", address,
                                  "--trial-resources", "cpu=1"),
                     cwd=tmp_path, timeout=900, env={**env, "RKD_CACHE_DIR": env_for(tmp_path)["RKD_CACHE_DIR"]})
    assert result.returncode == 0, result.stderr[-3000:]
    check_search_store(out, 3)
    _, parents, _, children = mlflow_runs(out)
    nodes = {c.data.tags.get("rkd.node") for c in children}
    assert None not in nodes and len(nodes) == 2, nodes
    assert parents[0].data.tags["rkd.ray_nodes"] == "2" and parents[0].data.params["backend"] == "ray"
    # the same runs, names, params, metrics and tags as the embedded back-end's
    assert child_keys(out) == child_keys(digits_search.out)


@pytest.mark.slow
@pytest.mark.xdist_group(RAY_CLUSTER)
def test_an_interrupted_ray_search_resumes_its_trial_without_duplicate_runs(tmp_path, ray_cluster):
    address, env = ray_cluster
    out = tmp_path / "out"
    add_decoy_packages(tmp_path)  # a user's own search/, spaces/, trainer/ in the working folder
    args = search_args(out, 2, "--dataset", "digits", "--backend", "ray", "--address", address, epochs=2)
    env = {**env, "RKD_CACHE_DIR": env_for(tmp_path)["RKD_CACHE_DIR"]}
    process = start_cli(*args, cwd=tmp_path, env=env)
    deadline = time.monotonic() + 300
    running = None
    while running is None and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.5)
        try:
            client, _, _, children = mlflow_runs(out)
        except Exception:  # no store yet
            continue
        running = next((c for c in children if c.data.tags.get("rkd.state") == "running"
                        and client.get_metric_history(c.info.run_id, "epoch.val_acc")), None)
    assert running is not None, "no trial reported an epoch"
    process.send_signal(signal.SIGINT)
    stdout, stderr = communicate_or_dump(process, timeout=180)
    assert process.returncode == 130, stderr[-3000:]
    _, parents, _, children = mlflow_runs(out)
    assert parents[0].info.status == "KILLED"
    unfinished = [c for c in children if c.data.tags["rkd.state"] != "complete"]  # one per node at most
    assert running.info.run_id in {c.info.run_id for c in unfinished} and len(unfinished) <= 2
    assert all(c.data.tags.get("rkd.failure") == "interrupted" and c.info.status == "KILLED" for c in unfinished)

    rerun = run_cli(*args, cwd=tmp_path, timeout=900, env=env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    _, parents, _, children = mlflow_runs(out)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sum(c.data.tags["rkd.state"] == "complete" for c in children) == 2 and len(children) == 2
    numbers = [int(c.data.tags["rkd.trial"]) for c in children]
    assert len(numbers) == len(set(numbers)), "a trial was logged twice"
    assert next(c for c in children if c.info.run_id == running.info.run_id).data.tags["rkd.state"] == "complete"


@pytest.mark.slow
@pytest.mark.xdist_group(RAY_CLUSTER)
def test_trials_stopped_at_a_rung_keep_their_fidelity_and_stay_off_the_front(tmp_path, ray_cluster):
    import optuna

    address, env = ray_cluster
    out = tmp_path / "out"
    args = search_args(out, 4, "--dataset", "digits", "--backend", "ray", "--address", address, "--multi-fidelity",
                       "--seed", "3", epochs=3)
    result = run_cli(*args, cwd=tmp_path, timeout=900, env={**env, "RKD_CACHE_DIR": env_for(tmp_path)["RKD_CACHE_DIR"]})
    assert result.returncode == 0, result.stderr[-3000:]
    _, _, _, children = mlflow_runs(out)
    stopped = [c for c in children if c.data.tags["rkd.state"] == "pruned"]
    assert stopped, "the promotion rule stopped no trial: the test needs a seed where it does"
    for child in stopped:
        assert int(child.data.tags["rkd.epochs"]) < 3 and child.data.tags["rkd.pareto"] == "false"
        assert "val_acc" in child.data.metrics and "test_acc" not in child.data.metrics
    study = optuna.load_study(study_name="rkd-search", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / "study.journal"))))
    pruned = {t.number for t in study.trials if t.state == optuna.trial.TrialState.PRUNED}
    assert pruned == {int(c.data.tags["rkd.trial"]) for c in stopped}
    assert all(t.number not in pruned for t in study.best_trials)


@pytest.mark.slow
@pytest.mark.xdist_group(RAY_CLUSTER)
def test_a_ray_search_where_every_trial_failed_exits_1(tmp_path, ray_cluster):
    address, env = ray_cluster
    out = tmp_path / "out"
    result = run_cli(*digits(out, 2, "--space", space_file(tmp_path, "1.0e+6"), "--backend", "ray", "--address", address),
                     cwd=tmp_path, timeout=900, env={**env, "RKD_CACHE_DIR": env_for(tmp_path)["RKD_CACHE_DIR"]})
    check_every_trial_failed(result, out)
