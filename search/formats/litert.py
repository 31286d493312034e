"""LiteRT (TensorFlow Lite) for microcontrollers: fp32, and with ``--int8`` fully integer (int8
weights and activations, int8 input and output), each run by the LiteRT interpreter on the test
images; ``student.json``'s ``litert`` section holds what a C programmer needs to feed them."""

from __future__ import annotations

from typing import Any

import numpy as np

from rkd_search.trainer import accuracy

from ..errors import UsageError
from ._registry import ExportFormat, ExportJob, calibration_images, register_format


def check() -> None:
    try:
        import ai_edge_litert  # noqa: F401
        import litert_torch  # noqa: F401
    except ImportError:
        raise UsageError("--format litert needs the LiteRT converter and interpreter: pip install 'rkd-search[litert]'") from None


def write(job: ExportJob) -> None:
    job.summary["litert"] = section(job)
    logged = {f"{kind}_test_acc": value for kind, value in job.accuracy.items() if kind.startswith("litert")}
    job.summary.update(logged)
    job.metrics.update(logged)


def section(job: ExportJob) -> dict[str, Any]:
    """The LiteRT models (fp32, and fully-integer int8 with ``int8``), checked with the LiteRT
    interpreter on the run's test images; what a C programmer needs to feed them."""
    from rkd_search.trainer.litert import export_litert, float_ops, litert_predict, tensor_formats
    from rkd_search.trainer.ops import int8_flash_bytes, int8_sram_bytes

    data, raw_input, input_shape, spec = job.data, job.raw_input, job.input_shape, job.spec
    mean, std = job.preprocessing["mean"], job.preprocessing["std"]
    test, labels = data.test_images.cpu().numpy(), data.test_labels.cpu().numpy()
    section: dict[str, Any] = {"layout": "NHWC", "files": {}}
    kinds = [("litert", "student.tflite", False)] + ([("litert_int8", "student.int8.tflite", True)] if job.int8 else [])
    calibration = calibration_images(data, job.calibration_images) if job.int8 else np.zeros((0,))
    batches = [calibration[i:i + 64] for i in range(0, len(calibration), 64)]
    for kind, name, quantized in kinds:
        path = export_litert(job.model, input_shape, job.folder / name, int8=quantized, calibration=batches, raw_input=raw_input,
                             mean=mean, std=std)
        job.files[kind] = path
        logits = litert_predict(path, test, raw_input=raw_input, mean=mean, std=std)
        job.accuracy[kind] = accuracy(logits, labels)
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


register_format(ExportFormat("litert", "LiteRT (TensorFlow Lite), fully integer with --int8, for microcontrollers", write,
                             quantizes=True, needs_data=lambda int8: True, check=check))
