"""Shipping a student: ONNX export, its latency on this CPU, int8 quantization, and its accuracy there.

- ``export_onnx`` writes the model with a dynamic batch axis; with ``raw_input`` the dataset's
  normalisation is baked in, so the model takes uint8 RGB images (N, C, H, W) as they are decoded.
- ``measure_latency_ms``: the median batch-1 latency of the exported model on this machine's CPU
  with ONNX Runtime (one thread: the conservative figure for a small device), cached per
  architecture, runtime version and CPU, since it does not depend on the weights.
- ``quantize_int8``: post-training static quantization with ONNX Runtime (QDQ format, per-channel
  int8 weights, int8 activations calibrated on training images).
- ``onnx_predict``: the logits ONNX Runtime computes, to measure the exported models' accuracy.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .data import default_cache_dir
from .ops import Resolution, input_hw
from .files import atomic_write, atomic_write_text
from .models import ModelSpec, build_model

log = logging.getLogger(__name__)

OPSET = 17


class RawImageInput(nn.Module):
    """A model that takes uint8 images and normalises them itself: (x / 255 - mean) / std."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(std, dtype=torch.float32)).view(1, -1, 1, 1))
        self.register_buffer("shift", (torch.tensor(mean, dtype=torch.float32) / torch.tensor(std)).view(1, -1, 1, 1))

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images.float() * self.scale - self.shift)


def export_onnx(model: nn.Module, input_shape: Sequence[int], path: str | os.PathLike, *,
                raw_input: bool = False, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> Path:
    """Write ``model`` as ONNX (input ``images``, output ``logits``, dynamic batch). With
    ``raw_input`` the model takes uint8 images and applies ``mean`` and ``std`` itself."""
    path = Path(path)
    model = model.eval()
    example = torch.zeros(1, *input_shape)
    if raw_input:
        if mean is None or std is None:
            raise ValueError("raw_input needs the mean and std the student was trained with")
        model = RawImageInput(model, mean, std).eval()
        example = torch.zeros(1, *input_shape, dtype=torch.uint8)

    def write(temporary: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notes
            torch.onnx.export(model, (example,), str(temporary), dynamo=False, opset_version=OPSET, input_names=["images"],
                              output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})

    return atomic_write(path, write)


def onnx_session(path: str | os.PathLike, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_predict(path: str | os.PathLike, images: np.ndarray | Tensor, batch_size: int = 256) -> np.ndarray:
    """Logits of the ONNX model at ``path`` for ``images`` (in the dtype the model takes)."""
    session = onnx_session(path)
    name = session.get_inputs()[0].name
    array = images.numpy() if isinstance(images, Tensor) else images
    return np.concatenate([session.run(None, {name: array[i:i + batch_size]})[0] for i in range(0, len(array), batch_size)])


def _median_latency_ms(path: Path, input_shape: Sequence[int], threads: int, warmup: int, runs: int) -> float:
    session = onnx_session(path, threads)
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((1, *input_shape)).astype(np.float32)
    for _ in range(warmup):
        session.run(None, {name: x})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {name: x})
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def machine_key(threads: int) -> str:
    """What a latency depends on besides the architecture: the CPU, the runtime and its threads."""
    import onnxruntime as ort

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}|onnxruntime {ort.__version__}|{threads} thread(s)"


class LatencyCache:
    """Batch-1 latencies measured on this machine, kept in ``CACHE/latency.json`` per architecture."""

    def __init__(self, cache_dir: str | os.PathLike | None = None, threads: int = 1, warmup: int = 10, runs: int = 50) -> None:
        self.path = (Path(cache_dir) if cache_dir else default_cache_dir()) / "latency.json"
        self.threads, self.warmup, self.runs = threads, warmup, runs
        self.machine = machine_key(threads)
        self.memory: dict[str, float] = {}

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def __call__(self, spec: ModelSpec, resolution: Resolution = 32) -> float:
        height, width = input_hw(resolution)
        key = f"{spec.name}|{spec.in_channels}x{height}x{width}|{spec.num_classes}"
        if key in self.memory:
            return self.memory[key]
        stored = self._read().get(self.machine, {})
        if key not in stored:
            with torch.device("cpu"):
                model = build_model(spec)
            shape = (spec.in_channels, height, width)
            with tempfile.TemporaryDirectory() as folder:
                stored[key] = _median_latency_ms(export_onnx(model, shape, Path(folder) / "m.onnx"), shape,
                                                 self.threads, self.warmup, self.runs)
            everything = self._read()  # merge: another search may have written meanwhile
            everything.setdefault(self.machine, {})[key] = stored[key]
            atomic_write_text(self.path, json.dumps(everything, indent=1, sort_keys=True))
        self.memory[key] = float(stored[key])
        return self.memory[key]


def measure_latency_ms(model_path: str | os.PathLike, input_shape: Sequence[int], threads: int = 1,
                       warmup: int = 10, runs: int = 50) -> float:
    """Median batch-1 latency of an exported float-input model on this CPU, in milliseconds."""
    return _median_latency_ms(Path(model_path), input_shape, threads, warmup, runs)


def quantize_int8(model_path: str | os.PathLike, out_path: str | os.PathLike, calibration: Iterator[np.ndarray] | Sequence[np.ndarray]) -> Path:
    """Post-training static int8 quantization of an ONNX model with ONNX Runtime.

    ``calibration`` yields input batches in the model's own input format (uint8 images for a
    raw-input model); activations' ranges are calibrated on them (MinMax), weights quantized per
    channel, in QDQ format, after ONNX Runtime's pre-processing (shape inference, optimisation).
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = list(calibration)
    name = onnx_session(model_path).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(batches)

        def get_next(self):
            batch = next(self.items, None)
            return None if batch is None else {name: batch}

    out_path = Path(out_path)
    with tempfile.TemporaryDirectory() as folder:
        prepared = Path(folder) / "prepared.onnx"
        quant_pre_process(str(model_path), str(prepared))
        return atomic_write(out_path, lambda temporary: quantize_static(
            str(prepared), str(temporary), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8))
