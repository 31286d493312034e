"""ONNX, checked against PyTorch with ONNX Runtime; with ``--int8`` also a statically quantized model
(QDQ, per-channel weights, calibrated on training images) and both models' test accuracy."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import torch

from rkd_search.trainer import accuracy
from rkd_search.trainer.deploy import export_onnx, onnx_predict, quantize_int8

from ..errors import SearchError
from ._registry import ExportFormat, ExportJob, calibration_images, feed, register_format


def write(job: ExportJob) -> None:
    preprocessing = job.preprocessing
    path = export_onnx(job.model, job.input_shape, job.folder / "student.onnx", raw_input=job.raw_input,
                       mean=preprocessing and preprocessing["mean"], std=preprocessing and preprocessing["std"])
    job.files["onnx"] = path
    job.summary["onnx_max_abs_difference"] = check_onnx(job.model, path, job.input_shape, job.raw_input, preprocessing)
    if job.int8 and job.data is not None:
        measured, job.files["onnx_int8"] = int8(path, job.data, job.folder, job.raw_input, preprocessing, job.calibration_images)
        job.accuracy.update(measured)
        job.summary.update({f"{kind}_test_acc": value for kind, value in measured.items()})
        job.summary["int8_drop"] = measured["onnx"] - measured["onnx_int8"]
        job.metrics.update(onnx_test_acc=measured["onnx"], int8_test_acc=measured["onnx_int8"], int8_drop=job.summary["int8_drop"])


def check_onnx(model, path: Path, input_shape, raw_input: bool, preprocessing: dict | None) -> float:
    """ONNX Runtime's logits against PyTorch's on random images; refuses a model that differs."""
    images = torch.randint(0, 256, (8, *input_shape), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    if preprocessing is None:
        noise = torch.randn(8, *input_shape, generator=torch.Generator().manual_seed(0))
        expected = model(noise).detach().numpy()
        got = onnx_predict(path, noise.numpy())
    else:
        with torch.no_grad():
            expected = model(torch.from_numpy(feed(images, False, preprocessing))).numpy()
        got = onnx_predict(path, feed(images, raw_input, preprocessing))
    difference = float(np.abs(expected - got).max())
    if not math.isfinite(difference) or difference > 1e-3 * max(1.0, float(np.abs(expected).max())):
        raise SearchError(f"the ONNX export of {path.name} differs from PyTorch by {difference:g}: not written correctly")
    return difference


def int8(onnx_path: Path, data, folder: Path, raw_input: bool, preprocessing: dict, count: int) -> tuple[dict[str, float], Path]:
    """Quantize, calibrating on ``count`` training images, and measure fp32 and int8 test accuracy."""
    calibration = feed(torch.from_numpy(calibration_images(data, count)), raw_input, preprocessing)
    batches = [calibration[i:i + 64] for i in range(0, len(calibration), 64)]
    int8_path = quantize_int8(onnx_path, folder / "student.int8.onnx", batches)
    test = feed(data.test_images.cpu(), raw_input, preprocessing)
    labels = data.test_labels.cpu().numpy()
    measured = {kind: accuracy(onnx_predict(path, test), labels)
                for kind, path in (("onnx", onnx_path), ("onnx_int8", int8_path))}
    return measured, int8_path


def int8_accuracy(model, input_shape, data, preprocessing: dict, calibration_images: int = 512) -> dict[str, float]:
    """The test accuracy of ``model`` exported to ONNX, fp32 and int8 (static, QDQ, calibrated on
    training images as ``export --int8`` does), measured with ONNX Runtime; nothing kept on disk."""
    with tempfile.TemporaryDirectory() as folder:
        onnx_path = export_onnx(model, input_shape, Path(folder) / "student.onnx", mean=preprocessing["mean"],
                                std=preprocessing["std"])
        accuracy, _ = int8(onnx_path, data, Path(folder), False, preprocessing, calibration_images)
    return accuracy


register_format(ExportFormat("onnx", "ONNX, checked with ONNX Runtime (with --int8 also a quantized model)", write, quantizes=True,
                             needs_data=lambda int8: int8))
