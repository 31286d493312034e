"""``rkd-search train``: a front student trained to the end, as a long job must behave: it continues
after kill -9 to the weights of an uninterrupted run, Ctrl-C, SIGTERM and --timeout stop it cleanly,
a second one is refused, and what it logs is an MLflow model that loads and a registry alias."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import torch

from .helpers import SHARED, mlflow_runs, run_here, start_cli

pytestmark = pytest.mark.xdist_group(SHARED)

MODEL_NAME = "digits-champion"


def _uri(out: Path) -> str:
    return f"sqlite:///{out}/mlflow.db"


def _train_runs(out: Path) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(_uri(out))
    experiment = client.get_experiment_by_name("rkd-search")
    return client.search_runs([experiment.experiment_id], "tags.`rkd.role` = 'train'", max_results=100)


def _weights(out: Path, run_id: str) -> dict[str, torch.Tensor]:
    from mlflow import MlflowClient

    path = MlflowClient(_uri(out)).download_artifacts(run_id, "student/weights.pt")
    return torch.load(path, weights_only=True)


def _expected_best(out: Path):
    """The front's most accurate learned, fully trained student (fewer MACs, then the earlier trial, first on a
    tie), read from the tags."""
    _, _, _, children = mlflow_runs(out)
    front = [c for c in children if c.data.tags["rkd.pareto"] == "true" and c.data.tags["rkd.state"] == "complete"
             and c.data.tags.get("rkd.learned") != "false"]
    return max(front, key=lambda c: (c.data.metrics["val_acc"], -c.data.metrics["macs"], -int(c.data.tags["rkd.trial"])))


@pytest.fixture(scope="module")
def trained(digits_search):
    """``train --best --register`` on the session's digits search, 2 epochs, in this process."""
    out = digits_search.out
    result = run_here("train", "--best", "--epochs", "2", "--register", MODEL_NAME, "--output", str(out),
                      "--tracking-uri", _uri(out), "--no-progress", cwd=digits_search.root)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = _train_runs(out)
    assert len(runs) == 1
    return digits_search, result, runs[0]


def test_best_trains_the_most_accurate_learned_front_student_and_logs_its_own_run(trained):
    search, result, run = trained
    best = _expected_best(search.out)
    tags, metrics = run.data.tags, run.data.metrics
    assert tags["rkd.trial_run"] == best.info.run_id
    assert tags["rkd.search_run"] == best.data.tags["mlflow.parentRunId"]
    assert "mlflow.parentRunId" not in tags  # not a trial: the front and the pareto command never see it
    assert tags["rkd.state"] == "complete" and tags["rkd.epochs"] == "2" and tags["rkd.train_on"] == "train"
    assert run.info.status == "FINISHED"
    assert {"test_acc", "val_acc", "teacher_agreement", "teacher_kl", "onnx_test_acc", "int8_test_acc", "int8_drop"} <= set(metrics)
    from mlflow import MlflowClient

    history = MlflowClient(_uri(search.out)).get_metric_history(run.info.run_id, "epoch.val_acc")
    assert [m.step for m in history] == [1, 2]
    assert f"trained {best.info.run_name.split('-', 1)[1]}" in result.stdout or best.data.params["student.name"] in result.stdout
    assert f"rkd-search export {run.info.run_id}" in result.stdout
    # the search's own summary names the step
    assert "rkd-search train" in search.first.stdout


def test_the_logged_model_loads_and_gives_the_students_logits_and_the_alias_points_at_it(trained):
    import mlflow
    from mlflow import MlflowClient

    from rkd_search.trainer import ModelSpec, build_model, load_dataset
    from rkd_search.trainer.batches import normalize

    search, _, run = trained
    client = MlflowClient(_uri(search.out))
    version = client.get_model_version_by_alias(MODEL_NAME, "champion")
    assert version.run_id == run.info.run_id
    assert run.data.tags["rkd.registered"] == f"{MODEL_NAME}@champion"
    mlflow.set_tracking_uri(_uri(search.out))
    loaded = mlflow.pytorch.load_model(f"models:/{MODEL_NAME}@champion")
    import json

    card = json.loads(Path(client.download_artifacts(run.info.run_id, "student/spec.json")).read_text())
    student = build_model(ModelSpec.from_dict(card["spec"])).eval()
    student.load_state_dict(_weights(search.out, run.info.run_id))
    data = load_dataset("digits")
    images = normalize(data.test_images[:8], tuple(card["preprocessing"]["mean"]), tuple(card["preprocessing"]["std"]))
    with torch.no_grad():
        expected = student(images)
    got = loaded(images)  # a batch of 8: the batch dimension stays free
    assert got.shape == (8, 10)
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()
    requirements = mlflow.artifacts.download_artifacts(f"models:/{MODEL_NAME}@champion/requirements.txt")
    assert f"torch=={torch.__version__.split('+')[0]}" in Path(requirements).read_text().split()


def test_export_takes_the_trained_run_and_says_which_weights_it_exports(trained, tmp_path):
    search, _, run = trained
    result = run_here("export", run.info.run_id, "--output", str(tmp_path), "--tracking-uri", _uri(search.out), cwd=search.root)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "trained by `rkd-search train` for 2 epochs on train (--recipe kd+graph)" in result.stdout
    trial = run_here("export", run.data.tags["rkd.trial_run"], "--output", str(tmp_path / "trial"), "--tracking-uri",
                     _uri(search.out), cwd=search.root)
    assert trial.returncode == 0 and "weights of the search's trial itself" in trial.stdout


def test_the_same_command_again_trains_nothing_and_train_of_a_trained_run_is_refused(trained):
    search, _, run = trained
    again = run_here("train", "--best", "--epochs", "2", "--output", str(search.out), "--tracking-uri", _uri(search.out),
                     "--no-progress", cwd=search.root)
    assert again.returncode == 0 and "already trained" in again.stdout, again.stderr[-2000:]
    assert len(_train_runs(search.out)) == 1
    refused = run_here("train", run.info.run_id, "--tracking-uri", _uri(search.out), cwd=search.root)
    assert refused.returncode == 2 and "already a final training" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("state, reason", [("infeasible", "never trained"), ("pruned", "stopped at 1 epochs"), ("failed", "failed"),
                                           ("search", "parent run")])
def test_a_run_without_a_trained_student_is_refused_in_one_line(digits_search, tmp_path, state, reason):
    from mlflow import MlflowClient

    out = digits_search.out
    client = MlflowClient(_uri(out))
    best = _expected_best(out)
    tags = ({"rkd.role": "search"} if state == "search" else
            {"mlflow.parentRunId": best.data.tags["mlflow.parentRunId"], "rkd.state": state, "rkd.epochs": "1"})
    run = client.create_run(best.info.experiment_id, run_name=f"t099-{state}", tags=tags)
    try:
        result = run_here("train", run.info.run_id, "--output", str(tmp_path), "--tracking-uri", _uri(out), cwd=digits_search.root)
        assert result.returncode == 2 and reason in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "train").exists()
    finally:
        client.delete_run(run.info.run_id)
    neither = run_here("train", "--tracking-uri", _uri(out), cwd=digits_search.root)
    assert neither.returncode == 2 and "RUN_ID or --best" in neither.stderr


def _checkpoint_epoch(folder: Path) -> int:
    from rkd_search.trainer import TrainState

    path = folder / "checkpoint.pt"
    try:
        return TrainState.load(path).epoch if path.exists() else 0
    except ValueError:
        return 0


def _wait_for_epoch(process, folder: Path, epoch: int, timeout: float = 240) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reached = _checkpoint_epoch(folder)
        if reached >= epoch:
            return reached
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint of epoch {epoch} within {timeout} s")


def test_kill_9_then_the_same_command_gives_the_weights_of_an_uninterrupted_run(digits_search, tmp_path):
    out, root = digits_search.out, digits_search.root
    trial = _expected_best(out).info.run_id
    args = lambda folder: ["train", trial, "--epochs", "2", "--no-int8", "--output", str(folder), "--tracking-uri", _uri(out),  # noqa: E731
                           "--no-progress"]
    whole = run_here(*args(tmp_path / "whole"), cwd=root)  # in this process: the same threads (one per xdist worker)
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = tmp_path / "killed"
    folder = killed / "train"
    process = start_cli(*args(killed), cwd=root)
    try:
        train_folder = _wait_for_folder(folder)
        _wait_for_epoch(process, train_folder, 1)
    finally:
        process.kill()
        process.communicate()
    resumed = run_here(*args(killed), cwd=root)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout
    runs = {r.data.tags["rkd.train_key"].rsplit(":", 1)[1]: r for r in _train_runs(out) if r.data.tags["rkd.trial_run"] == trial
            and str(tmp_path) in r.data.tags["rkd.train_key"]}
    assert len(runs) == 2, list(runs)
    first, second = (_weights(out, run.info.run_id) for run in runs.values())
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first), "resumed weights differ from the uninterrupted run's"
    assert len({r.data.metrics["test_acc"] for r in runs.values()}) == 1


def _wait_for_folder(parent: Path, timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in parent.glob("*") if p.is_dir()] if parent.exists() else []
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"{parent} never got a training folder")


def test_ctrl_c_sigterm_and_timeout_stop_cleanly_and_a_second_train_is_refused(digits_search, tmp_path):
    from mlflow import MlflowClient

    out, root = digits_search.out, digits_search.root
    trial = _expected_best(out).info.run_id
    args = ["train", trial, "--epochs", "40", "--no-int8", "--output", str(tmp_path), "--tracking-uri", _uri(out), "--no-progress"]
    process = start_cli(*args, cwd=root)
    folder = _wait_for_folder(tmp_path / "train")
    reached = _wait_for_epoch(process, folder, 1)
    second = run_here(*args, cwd=root)  # no signal to take: in this process, as every call below that needs none
    assert second.returncode == 2 and "in use by another rkd-search" in second.stderr, second.stderr[-2000:]
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    stopped = _checkpoint_epoch(folder)
    assert stopped >= reached and f"stopped after {stopped} of 40 epochs" in stdout and "rerun the same command" in stdout
    run = next(r for r in _train_runs(out) if str(tmp_path) in r.data.tags["rkd.train_key"])
    assert run.data.tags["rkd.state"] == "paused" and run.info.status == "KILLED"

    process = start_cli(*args, cwd=root)
    _wait_for_epoch(process, folder, stopped + 1)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "stopped by SIGTERM" in stdout, stderr[-2000:]
    assert "resuming" in stdout
    after_term = _checkpoint_epoch(folder)

    timed = run_here(*args, "--timeout", "1s", cwd=root)
    assert timed.returncode == 0, timed.stderr[-2000:]
    assert _checkpoint_epoch(folder) == after_term + 1 and "--timeout" in timed.stdout
    runs = [r for r in _train_runs(out) if str(tmp_path) in r.data.tags["rkd.train_key"]]
    assert len(runs) == 1 and runs[0].data.tags["rkd.state"] == "paused"
    history = MlflowClient(_uri(out)).get_metric_history(runs[0].info.run_id, "epoch.val_acc")
    assert {m.step for m in history} == set(range(1, after_term + 2))


def test_on_train_and_val_trains_on_both_splits_and_reports_no_validation_figure(digits_search, tmp_path):
    from mlflow import MlflowClient

    out = digits_search.out
    trial = _expected_best(out)
    result = run_here("train", trial.info.run_id, "--epochs", "1", "--on", "train+val", "--no-int8", "--output", str(tmp_path),
                      "--tracking-uri", _uri(out), "--no-progress", cwd=digits_search.root)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "no validation figure" in result.stdout
    run = next(r for r in _train_runs(out) if r.data.tags["rkd.train_on"] == "train+val")
    train, val, _ = (int(n) for n in MlflowClient(_uri(out)).get_run(trial.data.tags["mlflow.parentRunId"]).data.params["dataset.sizes"].split("/"))
    assert int(run.data.params["train.images"]) == train + val
    assert "val_acc" not in run.data.metrics and "test_acc" in run.data.metrics
    client = MlflowClient(_uri(out))
    assert not client.get_metric_history(run.info.run_id, "epoch.val_acc")
    assert len(client.get_metric_history(run.info.run_id, "epoch.train_loss")) == 1


def test_recipe_sets_what_the_final_training_changes_and_logs_what_ran(digits_search, tmp_path):
    """``--recipe kd+graph`` (the default) keeps the trial's graph term and trains with the usual optimiser and
    Hinton KD at weight 1 (SGD lr 0.1, Nesterov, weight decay 5e-4, cosine); ``--recipe kd`` drops the
    relational terms; ``--recipe trial`` keeps the trial's recipe. Each run's params and its student's stored
    config say what ran, and the trainings keep separate checkpoint folders."""
    import json

    from mlflow import MlflowClient

    out = digits_search.out
    trial = _expected_best(out)
    client = MlflowClient(_uri(out))
    ran = {}
    for recipe in ("kd+graph", "kd", "trial"):
        flags = ["--recipe", recipe] if recipe != "kd+graph" else []  # kd+graph: the default
        result = run_here("train", trial.info.run_id, "--epochs", "1", *flags, "--no-int8", "--output", str(tmp_path),
                          "--tracking-uri", _uri(out), "--no-progress", cwd=digits_search.root)
        assert result.returncode == 0, result.stderr[-2000:]
        assert f"--recipe {recipe})" in result.stdout
        run = next(r for r in _train_runs(out) if r.data.params.get("train.recipe") == recipe
                   and r.data.tags["rkd.train_key"].startswith(trial.info.run_id) and r.data.params["train.epochs"] == "1")
        card = json.loads(Path(client.download_artifacts(run.info.run_id, "student/spec.json", str(tmp_path / recipe))).read_text())
        ran[recipe] = (run.data.params, card["config"])
    searched = trial.data.params
    graph = float(searched["loss.graph_weight"])
    assert graph > 0  # the digits search's best trial distils the graph: the recipes differ
    for recipe in ("kd+graph", "kd"):
        params, config = ran[recipe]
        assert (config["lr"], config["momentum"], config["nesterov"], config["weight_decay"], config["schedule"]) == \
            (0.1, 0.9, True, 5e-4, "cosine")
        assert (config["loss"]["kd_weight"], config["loss"]["temperature"]) == (1.0, 4.0)
        assert float(params["optim.weight_decay"]) == 5e-4 and params["optim.nesterov"] == "True" and float(params["loss.kd_weight"]) == 1
        assert config["loss"]["graph_weight"] == (graph if recipe == "kd+graph" else 0)
        assert float(params["loss.graph_weight"]) == (graph if recipe == "kd+graph" else 0)
    params, as_trial = ran["trial"]
    assert as_trial["weight_decay"] == float(searched["optim.weight_decay"]) and as_trial["nesterov"] is False
    assert as_trial["lr"] == float(searched["optim.lr"]) and as_trial["loss"]["graph_weight"] == graph
    assert {k: params[k] for k in ("optim.weight_decay", "optim.lr", "loss.graph_weight", "loss.kd_weight")} == \
        {k: searched[k] for k in ("optim.weight_decay", "optim.lr", "loss.graph_weight", "loss.kd_weight")}
    assert sorted(p.name.split("-e1-", 1)[-1] for p in (tmp_path / "train").iterdir()) == ["kd", "kd+graph", "trial"]


@pytest.mark.parametrize("flags, said", [(["--best", "--epochs", "0"], "--epochs must be at least 1"),
                                         (["--best", "--recipe", "long"], "--recipe"),
                                         ([], "pass a trial's RUN_ID or --best"),
                                         (["abc", "--best"], "pass a trial's RUN_ID or --best"),
                                         (["--best", "--register", " "], "--register needs a model name")])
def test_wrong_flags_are_said_before_any_store_is_looked_for(tmp_path, flags, said):
    """One line, exit 2, before the store: nothing is created in the working folder."""
    result = run_here("train", *flags, cwd=tmp_path)
    assert result.returncode == 2 and said in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not any(tmp_path.iterdir())
