"""Export a trained student from MLflow so it can be fed and shipped: ONNX (checked against PyTorch
with ONNX Runtime), TorchScript, optionally int8, and ``student.json`` with its preprocessing.

``student.json`` holds everything needed to feed the model: input shape and layout, channel
order, scale, mean and std (or that the model takes raw uint8 images, ``--raw-input``), the class
names in output order, and its costs (MACs, parameters, peak activation memory, latency).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rkd_search.trainer import ModelSpec, build_model
from rkd_search.trainer.data import normalize
from rkd_search.trainer.deploy import LatencyCache, export_onnx, onnx_predict, quantize_int8

from . import names
from .errors import SearchError, UsageError
from .setup import check_output_folder
from .students import dataset_of, load_student, search_of
from .tracking import Tracker


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@dataclass
class Exported:
    files: dict[str, Path] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    accuracy: dict[str, float] = field(default_factory=dict)
    weights: str = ""
    """Which weights were exported: a trial's own, or a final training's."""


def export_student(tracker: Tracker, run_id: str, folder: Path, formats: tuple[str, ...] = ("onnx", "torchscript"), *,
                   raw_input: bool = False, int8: bool = False, calibration_images: int = 512,
                   data_dir: str | None = None, cache_dir: str | Path | None = None) -> Exported:
    """Write the student of child run ``run_id`` into ``folder``.

    The weights are read with ``weights_only=True`` (no pickled code runs). The ONNX model is run
    with ONNX Runtime on a random batch and must give PyTorch's logits. With ``int8`` the dataset
    of the search is loaded to calibrate on training images and to measure the fp32 and int8 ONNX
    models' test accuracy, which are logged on the run.
    """
    student = load_student(tracker, run_id)
    run, meta, spec = student.run, student.meta, student.spec
    model = build_model(spec).eval()
    model.load_state_dict(student.state_dict)
    if (raw_input or int8 or "litert" in formats) and meta.get("preprocessing") is None:
        raise UsageError(f"run {run_id} records no preprocessing (made by an older rkd-search): export it to onnx or torchscript, "
                         "without --raw-input and --int8")
    if "litert" in formats:
        _check_litert()
    needs_data = int8 or "litert" in formats  # calibration images, and the test images the exports are checked on
    # refused before anything is written
    data = dataset_of(tracker, search_of(tracker, run), data_dir, cache_dir, "--int8") if needs_data else None
    check_output_folder(folder, "export --output")
    final, exported = own_folder(folder, run_id), Exported()
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=folder.parent))  # all or nothing: moved in place at the end
    except OSError as error:
        raise UsageError(f"export --output: {folder.parent} cannot be written ({error.strerror}): pass a writable --output") from None
    folder.chmod(0o777 & ~_umask())  # mkdtemp makes it private (0700); an export is meant to be shared like any folder
    try:
        _write(exported, tracker, run, run_id, meta, model, spec, folder, formats, raw_input, int8, data, calibration_images,
               cache_dir)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    folder.replace(final)
    exported.files = {kind: final / path.name for kind, path in exported.files.items()}
    exported.weights = student.describe_weights()
    tracker.set_tags(run_id, {names.EXPORTED: str(final)})
    return exported


def own_folder(folder: Path, run_id: str) -> Path:
    """Where run ``run_id`` is exported: ``folder``, unless another run's export (two runs of one name,
    from two searches or two stores) or anything else is there: then ``folder-RUNID``, never replacing it."""
    if not folder.exists():
        return folder
    try:
        owner = json.loads((folder / "student.json").read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        owner = None
    return folder if owner == run_id else folder.with_name(f"{folder.name}-{run_id[:8]}")


def _write(exported: Exported, tracker: Tracker, run, run_id: str, meta: dict, model, spec: ModelSpec, folder: Path,
           formats: tuple[str, ...], raw_input: bool, int8: bool, data, calibration_images: int, cache_dir) -> None:
    input_shape = tuple(meta.get("input_shape", (spec.in_channels, 32, 32)))
    preprocessing = meta.get("preprocessing")
    if "onnx" in formats:
        path = export_onnx(model, input_shape, folder / "student.onnx", raw_input=raw_input,
                           mean=preprocessing and preprocessing["mean"], std=preprocessing and preprocessing["std"])
        exported.files["onnx"] = path
        difference = _check_onnx(model, path, input_shape, raw_input, preprocessing)
    if "torchscript" in formats:
        path = folder / "student.torchscript.pt"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export, still a portable format
            torch.jit.trace(model, torch.zeros(1, *input_shape)).save(str(path))
        exported.files["torchscript"] = path

    metrics = run.data.metrics
    latency = metrics.get("latency_ms")
    if latency is None:
        latency = LatencyCache(cache_dir)(spec, tuple(input_shape[1:]))
    summary: dict[str, Any] = {
        "run_id": run_id,
        "run_name": run.info.run_name,
        "student": spec.name,
        "spec": spec.to_dict(),
        "input": {
            "shape": [1, *input_shape], "layout": "NCHW", "batch": "dynamic",
            "dtype": "uint8" if raw_input else "float32",
            "channel_order": (preprocessing or {}).get("channel_order", "RGB"),
            "normalization_in_model": raw_input,
            "preprocessing": "none: feed uint8 pixels (0-255)" if raw_input else "x = (pixels / 255 - mean) / std, per channel",
            "mean": (preprocessing or {}).get("mean"),
            "std": (preprocessing or {}).get("std"),
        },
        "output": {"name": "logits", "classes": meta.get("classes")},
        "macs": meta["macs"],
        "macs_unit": "multiply-accumulates per image, thop (what NAS papers call FLOPs)",
        "flops": meta["flops"],
        "params": meta["params"],
        "activation_bytes": int(metrics["activation_bytes"]) if "activation_bytes" in metrics else None,
        "activation_bytes_note": "peak live activations at batch 1, fp32 (int8: a quarter)",
        "latency_ms": latency,
        "latency_note": "median batch-1 latency on the search machine's CPU, ONNX Runtime, 1 thread",
        "val_acc": metrics.get("val_acc"),
        "test_acc": metrics.get("test_acc"),
    }
    if "onnx" in formats:
        summary["onnx_max_abs_difference"] = difference
    summary["flash_bytes"] = int(metrics["flash_bytes"]) if "flash_bytes" in metrics else None
    summary["sram_bytes"] = int(metrics["sram_bytes"]) if "sram_bytes" in metrics else None
    if data is not None and "onnx" in formats and int8:
        accuracy, exported.files["onnx_int8"] = _int8(exported.files["onnx"], data, folder, raw_input, preprocessing,
                                                      calibration_images)
        exported.accuracy.update(accuracy)
        summary.update({f"{kind}_test_acc": value for kind, value in accuracy.items()})
        summary["int8_drop"] = accuracy["onnx"] - accuracy["onnx_int8"]
        tracker.log_metrics(run_id, {"onnx_test_acc": accuracy["onnx"], "int8_test_acc": accuracy["onnx_int8"],
                                     "int8_drop": summary["int8_drop"]})
    if "litert" in formats:
        summary["litert"] = _litert(exported, model, spec, folder, data, raw_input, preprocessing, int8, calibration_images,
                                    input_shape)
        logged = {f"{kind}_test_acc": value for kind, value in exported.accuracy.items() if kind.startswith("litert")}
        summary.update(logged)
        tracker.log_metrics(run_id, logged)
    summary["files"] = {k: v.name for k, v in exported.files.items()}
    (folder / "student.json").write_text(json.dumps(summary, indent=2))
    exported.files["json"] = folder / "student.json"
    exported.summary = summary


def _check_litert() -> None:
    try:
        import ai_edge_litert  # noqa: F401
        import litert_torch  # noqa: F401
    except ImportError:
        raise UsageError("--format litert needs the LiteRT converter and interpreter: pip install 'rkd-search[litert]'") from None


def _calibration_images(data, count: int) -> np.ndarray:
    """``count`` training images (uint8, N C H W), the same draw for every exported format."""
    index = torch.randperm(len(data.train_labels), generator=torch.Generator().manual_seed(0))[:count]
    return data.train_images[index].cpu().numpy()


def _litert(exported: Exported, model, spec: ModelSpec, folder: Path, data, raw_input: bool, preprocessing: dict, int8: bool,
            calibration_images: int, input_shape) -> dict[str, Any]:
    """The LiteRT models (fp32, and fully-integer int8 with ``int8``), checked with the LiteRT
    interpreter on the run's test images; what a C programmer needs to feed them."""
    from rkd_search.trainer.litert import export_litert, float_ops, litert_predict, tensor_formats
    from rkd_search.trainer.ops import int8_flash_bytes, int8_sram_bytes

    mean, std = preprocessing["mean"], preprocessing["std"]
    test, labels = data.test_images.cpu().numpy(), data.test_labels.cpu().numpy()
    section: dict[str, Any] = {"layout": "NHWC", "files": {}}
    kinds = [("litert", "student.tflite", False)] + ([("litert_int8", "student.int8.tflite", True)] if int8 else [])
    calibration = _calibration_images(data, calibration_images) if int8 else np.zeros((0,))
    batches = [calibration[i:i + 64] for i in range(0, len(calibration), 64)]
    for kind, name, quantized in kinds:
        path = export_litert(model, input_shape, folder / name, int8=quantized, calibration=batches, raw_input=raw_input,
                             mean=mean, std=std)
        exported.files[kind] = path
        logits = litert_predict(path, test, raw_input=raw_input, mean=mean, std=std)
        exported.accuracy[kind] = float((logits.argmax(1) == labels).mean())
        source, target = tensor_formats(path)
        section["files"]["int8" if quantized else "fp32"] = {"file": name, "bytes": path.stat().st_size,
                                                             "input": source.to_dict(), "output": target.to_dict()}
        if quantized:  # int8 in and out, int8 weights; are all activations int8 too?
            section["float_ops"] = float_ops(path)
            section["fully_integer"] = not section["float_ops"]
    resolution = tuple(input_shape[1:])
    section["flash_bytes"] = section["files"].get("int8", section["files"]["fp32"])["bytes"]
    section["flash_note"] = ("the .tflite file's size (int8 weights, int32 biases, quantization parameters, the graph); "
                             f"weights and biases alone: {int8_flash_bytes(spec)} bytes")
    section["sram_bytes"] = int8_sram_bytes(spec, resolution)
    section["sram_note"] = ("peak int8 activations alive at once at batch 1, input and output included; TFLite Micro's "
                            "tensor arena adds some kernels' scratch buffers and alignment padding")
    section["feed"] = ("int8 input: q = clamp(round(x / scale) + zero_point, -128, 127) with x = "
                       + ("the pixel value (0-255): scale 1 (0.9995) and zero point -128 make it pixel - 128" if raw_input
                          else "(pixel / 255 - mean) / std per channel") + ", in (1, H, W, C) order; "
                       "logits = (q_out - zero_point) * scale")
    return section


def _feed(images: torch.Tensor, raw_input: bool, preprocessing: dict | None) -> np.ndarray:
    """uint8 images as the exported model takes them."""
    if raw_input:
        return images.numpy()
    return normalize(images, tuple(preprocessing["mean"]), tuple(preprocessing["std"])).numpy()


def _check_onnx(model, path: Path, input_shape, raw_input: bool, preprocessing: dict | None) -> float:
    """ONNX Runtime's logits against PyTorch's on random images; refuses a model that differs."""
    images = torch.randint(0, 256, (8, *input_shape), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    if preprocessing is None:
        feed = torch.randn(8, *input_shape, generator=torch.Generator().manual_seed(0))
        expected = model(feed).detach().numpy()
        got = onnx_predict(path, feed.numpy())
    else:
        with torch.no_grad():
            expected = model(torch.from_numpy(_feed(images, False, preprocessing))).numpy()
        got = onnx_predict(path, _feed(images, raw_input, preprocessing))
    difference = float(np.abs(expected - got).max())
    if not math.isfinite(difference) or difference > 1e-3 * max(1.0, float(np.abs(expected).max())):
        raise SearchError(f"the ONNX export of {path.name} differs from PyTorch by {difference:g}: not written correctly")
    return difference


def _int8(onnx_path: Path, data, folder: Path, raw_input: bool, preprocessing: dict, count: int) -> tuple[dict[str, float], Path]:
    """Quantize, calibrating on ``count`` training images, and measure fp32 and int8 test accuracy."""
    calibration = _feed(torch.from_numpy(_calibration_images(data, count)), raw_input, preprocessing)
    batches = [calibration[i:i + 64] for i in range(0, len(calibration), 64)]
    int8_path = quantize_int8(onnx_path, folder / "student.int8.onnx", batches)
    test = _feed(data.test_images.cpu(), raw_input, preprocessing)
    labels = data.test_labels.cpu().numpy()
    accuracy = {kind: float((onnx_predict(path, test).argmax(1) == labels).mean())
                for kind, path in (("onnx", onnx_path), ("onnx_int8", int8_path))}
    return accuracy, int8_path


def int8_accuracy(model, input_shape, data, preprocessing: dict, calibration_images: int = 512) -> dict[str, float]:
    """The test accuracy of ``model`` exported to ONNX, fp32 and int8 (static, QDQ, calibrated on
    training images as ``export --int8`` does), measured with ONNX Runtime; nothing kept on disk."""
    with tempfile.TemporaryDirectory() as folder:
        onnx_path = export_onnx(model, input_shape, Path(folder) / "student.onnx", mean=preprocessing["mean"],
                                std=preprocessing["std"])
        accuracy, _ = _int8(onnx_path, data, Path(folder), False, preprocessing, calibration_images)
    return accuracy
