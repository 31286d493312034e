"""Export a trained student from MLflow so it can be fed and shipped, in the formats of ``formats``'
registry (ONNX checked against PyTorch with ONNX Runtime, TorchScript, LiteRT; optionally int8),
and ``student.json`` with its preprocessing.

``student.json`` holds everything needed to feed the model: input shape and layout, channel
order, scale, mean and std (or that the model takes raw uint8 images, ``--raw-input``), the class
names in output order, and its costs (MACs, parameters, peak activation memory, latency).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from rkd_search.trainer import ModelSpec, build_model
from rkd_search.trainer.deploy import LatencyCache

from . import names
from .errors import UsageError
from .formats import ExportJob, chosen_formats
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


def export_student(tracker: Tracker, run_id: str, folder: Path, formats: str | tuple[str, ...] = ("onnx", "torchscript"), *,
                   raw_input: bool = False, int8: bool = False, calibration_images: int = 512,
                   data_dir: str | None = None, cache_dir: str | Path | None = None) -> Exported:
    """Write the student of run ``run_id`` (a trial, or a final training) into ``folder``, in each
    of ``formats`` (``formats``' registry: onnx, torchscript, litert, ...), with ``student.json``.

    The weights are read with ``weights_only=True`` (no pickled code runs). The ONNX model is run
    with ONNX Runtime on a random batch and must give PyTorch's logits. With ``int8`` the dataset
    of the search is loaded to calibrate on training images and to measure the fp32 and int8
    models' test accuracy, which are logged on the run. All of it is checked before anything is
    written, and written all or nothing.
    """
    chosen = chosen_formats(formats if isinstance(formats, str) else ",".join(formats))
    student = load_student(tracker, run_id)
    run, meta, spec = student.run, student.meta, student.spec
    model = build_model(spec).eval()
    model.load_state_dict(student.state_dict)
    needs_data = any(f.needs_data(int8) for f in chosen)  # calibration images, and the test images exports are checked on
    if (raw_input or int8 or needs_data) and meta.get("preprocessing") is None:
        raise UsageError(f"run {run_id} records no preprocessing (made by an older rkd-search): export it to onnx or torchscript, "
                         "without --raw-input and --int8")
    for export_format in chosen:
        export_format.check()
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
    input_shape = tuple(meta.get("input_shape", (spec.in_channels, 32, 32)))
    job = ExportJob(model, spec, input_shape, meta.get("preprocessing"), folder, raw_input, int8, data, calibration_images)
    try:
        for export_format in chosen:
            export_format.write(job)
        exported.summary = _card(run, run_id, meta, spec, job, cache_dir)
        (folder / "student.json").write_text(json.dumps(exported.summary, indent=2))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if job.metrics:
        tracker.log_metrics(run_id, job.metrics)
    if final.exists():
        shutil.rmtree(final)
    folder.replace(final)
    exported.files = {kind: final / path.name for kind, path in [*job.files.items(), ("json", folder / "student.json")]}
    exported.accuracy = job.accuracy
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


def _card(run, run_id: str, meta: dict, spec: ModelSpec, job: ExportJob, cache_dir) -> dict[str, Any]:
    """``student.json``: how to feed the model, what its outputs mean, its costs, and what the formats recorded."""
    metrics, preprocessing, input_shape, raw_input = run.data.metrics, job.preprocessing, job.input_shape, job.raw_input
    latency = metrics.get("latency_ms")
    if latency is None:
        latency = LatencyCache(cache_dir)(spec, tuple(input_shape[1:]))
    card: dict[str, Any] = {
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
        "flash_bytes": int(metrics["flash_bytes"]) if "flash_bytes" in metrics else None,
        "sram_bytes": int(metrics["sram_bytes"]) if "sram_bytes" in metrics else None,
    }
    card.update(job.summary)
    card["files"] = {kind: path.name for kind, path in job.files.items()}
    return card
