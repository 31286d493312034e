"""A student exported as a user ships it: ONNX Runtime on the CIFAR-10 subset's own PNG files, fed
through the preprocessing that ``student.json`` records and nothing else; int8; refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from .helpers import SHARED, mlflow_runs, run_here

pytestmark = pytest.mark.xdist_group(SHARED)


def _front_run(out: Path):
    _, _, _, children = mlflow_runs(out)
    return max((c for c in children if c.data.tags["rkd.pareto"] == "true"), key=lambda c: c.data.metrics["test_acc"])


def _raw_test_images(root: Path, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The test PNGs decoded as a user would (torchvision.io), uint8 RGB (N, 3, H, W), labels by class name."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    images, labels = [], []
    for index, name in enumerate(classes):
        for path in sorted((root / "test" / name).iterdir()):
            images.append(decode_image(read_file(str(path)), mode=ImageReadMode.RGB).numpy())
            labels.append(index)
    return np.stack(images), np.array(labels)


def _accuracy(model: Path, images: np.ndarray, labels: np.ndarray) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    logits = np.concatenate([session.run(None, {name: images[i:i + 500]})[0] for i in range(0, len(images), 500)])
    return float((logits.argmax(1) == labels).mean())


@pytest.mark.slow
def test_exported_onnx_fed_raw_pngs_through_the_recorded_preprocessing_reproduces_the_test_accuracy(cifar_search, cifar_lite_dir):
    root, out = cifar_search
    chosen = _front_run(out)
    result = run_here("export", chosen.info.run_id, "--output", str(out / "float"), "--tracking-uri", f"sqlite:///{out}/mlflow.db", cwd=root)
    assert result.returncode == 0, result.stderr[-2000:]
    folder = out / "float" / "exports" / chosen.info.run_name
    card = json.loads((folder / "student.json").read_text())
    for key in ("macs", "params", "activation_bytes", "latency_ms"):
        assert card[key] and card[key] > 0, key
    assert card["input"]["channel_order"] == "RGB" and card["input"]["layout"] == "NCHW" and card["input"]["dtype"] == "float32"
    assert card["output"]["classes"] == sorted(p.name for p in (cifar_lite_dir / "train").iterdir())
    images, labels = _raw_test_images(cifar_lite_dir, card["output"]["classes"])
    mean = np.array(card["input"]["mean"], dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.array(card["input"]["std"], dtype=np.float32).reshape(1, -1, 1, 1)
    accuracy = _accuracy(folder / "student.onnx", ((images.astype(np.float32) / 255.0 - mean) / std).astype(np.float32), labels)
    assert abs(accuracy - chosen.data.metrics["test_acc"]) <= 0.005, (accuracy, chosen.data.metrics["test_acc"])

    # ONNX Runtime and PyTorch agree on the rebuilt student
    from mlflow import MlflowClient

    from rkd_search.trainer import ModelSpec, build_model

    model = build_model(ModelSpec.from_dict(card["spec"])).eval()
    weights = MlflowClient(f"sqlite:///{out}/mlflow.db").download_artifacts(chosen.info.run_id, "student/weights.pt", str(root))
    model.load_state_dict(torch.load(weights, weights_only=True))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(_logits(folder / "student.onnx", x.numpy()), model(x).numpy(), rtol=1e-4, atol=1e-4)
    scripted = torch.jit.load(str(folder / "student.torchscript.pt"))
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))


def _logits(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.slow
def test_raw_input_export_and_int8_accuracy_is_measured_and_logged(cifar_search, cifar_lite_dir):
    root, out = cifar_search
    chosen = _front_run(out)
    result = run_here("export", chosen.info.run_id, "--raw-input", "--int8", "--calibration-images", "256", "--output", str(out / "raw"),
                     "--tracking-uri", f"sqlite:///{out}/mlflow.db", cwd=root)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "test accuracy, onnx_int8:" in result.stdout
    folder = out / "raw" / "exports" / chosen.info.run_name
    card = json.loads((folder / "student.json").read_text())
    assert card["input"]["dtype"] == "uint8" and card["input"]["normalization_in_model"] is True
    images, labels = _raw_test_images(cifar_lite_dir, card["output"]["classes"])
    raw_accuracy = _accuracy(folder / "student.onnx", images, labels)  # uint8 pixels, nothing else
    assert abs(raw_accuracy - chosen.data.metrics["test_acc"]) <= 0.005
    int8_accuracy = _accuracy(folder / "student.int8.onnx", images, labels)
    assert int8_accuracy == pytest.approx(card["onnx_int8_test_acc"], abs=1e-6)
    assert int8_accuracy > 0.15, "the int8 model must still classify"
    _, _, _, children = mlflow_runs(out)
    logged = next(c for c in children if c.info.run_id == chosen.info.run_id).data.metrics
    assert logged["int8_test_acc"] == pytest.approx(int8_accuracy, abs=1e-6)
    assert logged["onnx_test_acc"] == pytest.approx(raw_accuracy, abs=1e-6)
    assert logged["int8_drop"] == pytest.approx(raw_accuracy - int8_accuracy, abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("state, reason", [("infeasible", "never trained"), ("pruned", "stopped at 1 epochs"),
                                           ("failed", "failed"), ("paused", "paused")])
def test_export_of_a_run_without_weights_is_refused_with_the_reason(cifar_search, state, reason, monkeypatch, capsys):
    """(In this process: a refusal needs no console script of its own.)"""
    from mlflow import MlflowClient

    from rkd_search.search.cli import main

    root, out = cifar_search
    monkeypatch.chdir(root)
    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    chosen = _front_run(out)
    run = client.create_run(chosen.info.experiment_id, run_name=f"t099-{state}",
                            tags={"mlflow.parentRunId": chosen.data.tags["mlflow.parentRunId"], "rkd.state": state, "rkd.epochs": "1"})
    code = main(["export", run.info.run_id, "--tracking-uri", f"sqlite:///{out}/mlflow.db"])
    error = capsys.readouterr().err
    assert code == 2 and reason in error and "no trained student" in error, error
    assert len(error.strip().splitlines()) == 1
    client.delete_run(run.info.run_id)


def readme_snippet() -> str:
    """The README's ONNX Runtime snippet, as written there."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = readme.index("Run it on one image with ONNX Runtime:")
    block = readme[readme.index("```python", start) + len("```python"):]
    return block[: block.index("```")]


def run_readme_snippet(folder: Path, image: Path, cwd: Path) -> str:
    import subprocess
    import sys

    code = readme_snippet().replace('"deploy/exports/t007-..."', repr(str(folder))).replace('"cat.png"', repr(str(image)))
    assert repr(str(folder)) in code and repr(str(image)) in code, "the README snippet changed: update this test"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


@pytest.mark.slow
def test_the_readme_snippet_runs_on_an_rgb_and_a_grayscale_export(digits_search, cifar_search, cifar_lite_dir, tmp_path):
    from PIL import Image

    for root, out, image in ((digits_search.root, digits_search.out, None), (*cifar_search, next((cifar_lite_dir / "test" / "cat").iterdir()))):
        chosen = _front_run(out)
        result = run_here("export", chosen.info.run_id, "--raw-input", "--int8", "--calibration-images", "64",
                         "--output", str(tmp_path / out.parent.name), "--tracking-uri", f"sqlite:///{out}/mlflow.db", cwd=root)
        assert result.returncode == 0, result.stderr[-2000:]
        folder = tmp_path / out.parent.name / "exports" / chosen.info.run_name
        card = json.loads((folder / "student.json").read_text())
        if image is None:  # digits: a grayscale image of the export's own size
            assert card["input"]["channel_order"] == "gray" and card["input"]["shape"][1] == 1
            image = tmp_path / "digit.png"
            Image.fromarray((np.arange(64, dtype=np.uint8).reshape(8, 8) * 4)).save(image)
        else:
            assert card["input"]["channel_order"] == "RGB"
        assert run_readme_snippet(folder, image, tmp_path) in card["output"]["classes"]


@pytest.mark.slow
def test_an_export_is_readable_by_others_and_a_read_only_output_is_one_line_exit_2(digits_search, tmp_path):
    import os
    import stat
    import subprocess

    from .helpers import RKD_SEARCH, env_for
    from .test_reliability import readonly_prefix

    root, out = digits_search.root, digits_search.out
    chosen = _front_run(out)
    result = run_here("export", chosen.info.run_id, "--output", str(tmp_path / "shared"), "--tracking-uri",
                     f"sqlite:///{out}/mlflow.db", cwd=root)
    assert result.returncode == 0, result.stderr[-2000:]
    folder = tmp_path / "shared" / "exports" / chosen.info.run_name
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask  # not the private 0700 of a temporary folder

    prefix, mount = readonly_prefix(tmp_path)
    refused = subprocess.run([*prefix, RKD_SEARCH, "export", chosen.info.run_id, "--output", str(mount / "exports"),
                              "--tracking-uri", f"sqlite:///{out}/mlflow.db"], cwd=root, capture_output=True,
                             text=True, timeout=300, env=env_for(root))
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert refused.stderr.strip().startswith("rkd-search: error: export --output") and "cannot be written" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def interpreter_accuracy(path: Path, images: np.ndarray, labels: np.ndarray) -> float:
    """The LiteRT interpreter on uint8 (N, C, H, W) raw images, fed as a device would: int8 pixels quantized with the
    input's own scale (about 1) and zero point (-128), NHWC."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert source["dtype"] == np.int8 and target["dtype"] == np.int8, "not a fully-integer model"
    scale, zero_point = source["quantization"]
    assert scale == pytest.approx(1.0, abs=1e-3) and zero_point == -128  # raw input: about pixel - 128
    correct = 0
    for image, label in zip(images, labels):
        q = np.clip(np.round(image.astype(np.float32) / scale + zero_point), -128, 127).astype(np.int8)
        interpreter.set_tensor(source["index"], q.transpose(1, 2, 0)[None])
        interpreter.invoke()
        correct += int(interpreter.get_tensor(target["index"])[0].argmax() == label)
    return correct / len(labels)


@pytest.mark.slow
def test_int8_litert_students_run_by_the_interpreter_on_raw_images_keep_their_accuracy(digits_search, cifar_search, cifar_lite_dir, tmp_path):
    """A grayscale digits student and an RGB CIFAR student, exported fully integer (int8 weights,
    activations, input and output) and run by the LiteRT interpreter on raw test images: within
    1.5 points of the PyTorch student's test accuracy."""
    from rkd_search.trainer import load_dataset

    for root, out in ((digits_search.root, digits_search.out), cifar_search):
        chosen = _front_run(out)
        result = run_here("export", chosen.info.run_id, "--format", "litert", "--int8", "--raw-input", "--calibration-images", "128",
                         "--output", str(tmp_path / root.name), "--tracking-uri", f"sqlite:///{out}/mlflow.db", cwd=root)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "test accuracy, litert_int8:" in result.stdout
        folder = tmp_path / root.name / "exports" / chosen.info.run_name
        card = json.loads((folder / "student.json").read_text())
        litert = card["litert"]
        assert litert["files"]["int8"]["input"]["dtype"] == "int8" and litert["files"]["int8"]["output"]["dtype"] == "int8"
        assert litert["fully_integer"] and litert["float_ops"] == [] and "not fully integer" not in result.stdout
        assert litert["flash_bytes"] == (folder / "student.int8.tflite").stat().st_size
        assert 0 < litert["sram_bytes"] == card["sram_bytes"]
        if root == digits_search.root:
            data = load_dataset("digits")
            images, labels = data.test_images.numpy(), data.test_labels.numpy()
        else:
            images, labels = _raw_test_images(cifar_lite_dir, card["output"]["classes"])
        accuracy = interpreter_accuracy(folder / "student.int8.tflite", images, labels)
        assert accuracy == pytest.approx(card["litert_int8_test_acc"], abs=1e-6)
        assert abs(accuracy - chosen.data.metrics["test_acc"]) <= 0.015, (accuracy, chosen.data.metrics["test_acc"])
        _, _, _, children = mlflow_runs(out)
        logged = next(c for c in children if c.info.run_id == chosen.info.run_id).data.metrics
        assert logged["litert_int8_test_acc"] == pytest.approx(accuracy, abs=1e-6) and "litert_test_acc" in logged


@pytest.mark.slow
def test_a_run_of_the_same_name_never_replaces_another_runs_export(digits_search, tmp_path):
    """Two runs named alike (two searches, or two stores, each with a t000-...) exported into one
    --output: both exports stay, the second beside the first; exporting the first again replaces its own."""
    from mlflow import MlflowClient

    out = digits_search.out
    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    _, _, _, children = mlflow_runs(out)
    complete = [c for c in children if c.data.tags["rkd.state"] == "complete"]
    first, second = complete[0], complete[1]
    export = lambda run: run_here("export", run.info.run_id, "--output", str(tmp_path), "--tracking-uri",  # noqa: E731
                                  f"sqlite:///{out}/mlflow.db", cwd=digits_search.root)
    assert export(first).returncode == 0
    folder = tmp_path / "exports" / first.info.run_name
    client.update_run(second.info.run_id, name=first.info.run_name)
    try:
        result = export(second)
    finally:
        client.update_run(second.info.run_id, name=second.info.run_name)
    assert result.returncode == 0, result.stderr[-2000:]
    beside = tmp_path / "exports" / f"{first.info.run_name}-{second.info.run_id[:8]}"
    assert json.loads((folder / "student.json").read_text())["run_id"] == first.info.run_id
    assert json.loads((beside / "student.json").read_text())["run_id"] == second.info.run_id
    assert str(beside) in result.stdout
    assert export(first).returncode == 0
    assert sorted(p.name for p in (tmp_path / "exports").iterdir()) == sorted([folder.name, beside.name])


@pytest.mark.slow
def test_an_export_format_of_one_module_is_picked_up_by_export_and_the_command_line(digits_search, tmp_path):
    from rkd_search.search.cli import _export_parser
    from rkd_search.search.formats import unregister_format

    from . import statedict_format

    statedict_format.register()
    try:
        assert "state_dict: the weights as a plain state_dict" in " ".join(_export_parser().format_help().split())
        chosen = _front_run(digits_search.out)
        result = run_here("export", chosen.info.run_id, "--format", "state_dict,onnx", "--output", str(tmp_path), "--tracking-uri",
                          f"sqlite:///{digits_search.out}/mlflow.db", cwd=digits_search.root)
        assert result.returncode == 0, result.stderr[-2000:]
    finally:
        unregister_format("state_dict")
    folder = tmp_path / "exports" / chosen.info.run_name
    card = json.loads((folder / "student.json").read_text())
    assert card["files"] == {"onnx": "student.onnx", "state_dict": "student.state_dict.pt"}
    weights = torch.load(folder / "student.state_dict.pt", weights_only=True)
    assert card["state_dict_tensors"] == len(weights) and all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
