"""Shipping a student to a microcontroller: LiteRT (TensorFlow Lite) models, fully integer, checked
by the LiteRT interpreter.

- ``export_litert`` converts with Google's maintained PyTorch converter (``litert-torch``): the
  float model as is, and with ``int8`` a fully-integer model through PyTorch 2 export
  quantization (``torchao``'s ``prepare_pt2e``/``convert_pt2e`` with litert-torch's
  ``PT2EQuantizer``: int8 weights per channel, int8 activations per tensor, calibrated on training
  images). The int8 model's input and output are int8, as TFLite Micro expects; the input is
  channels-last (N, H, W, C), the layout a C program holds pixels in.
- With ``raw_input`` the normalisation is inside the model and its input is the pixels
  themselves: calibration always sees 0 and 255, so the int8 input has scale 1 (stored as
  0.9995) and zero point -128 (feed ``pixel - 128``).
- ``litert_predict`` runs a ``.tflite`` file with the LiteRT interpreter (batch 1, as a device
  does) on uint8 images, quantizing the input and dequantizing the output with the model's own
  parameters.

Needs the optional extra: ``pip install 'rkd-search[litert]'``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .batches import normalize
from .deploy import RawImageInput
from .files import atomic_write


class LiteRTMissing(ImportError):
    """litert-torch (and its interpreter) are not installed."""


def _modules():
    try:
        import litert_torch
        from ai_edge_litert.interpreter import Interpreter
        from litert_torch.quantize import pt2e_quantizer
        from litert_torch.quantize.quant_config import QuantConfig
        from torchao.quantization.pt2e import quantize_pt2e
    except ImportError as error:
        raise LiteRTMissing(f"the LiteRT export needs litert-torch ({error.name} is missing): pip install 'rkd-search[litert]'") from None
    return litert_torch, Interpreter, pt2e_quantizer, QuantConfig, quantize_pt2e


@dataclass(frozen=True)
class TensorFormat:
    """A LiteRT model's input or output as a C programmer sees it."""

    shape: list[int]
    dtype: str
    scale: float
    zero_point: int

    def to_dict(self) -> dict:
        return {"shape": self.shape, "dtype": self.dtype, "scale": self.scale, "zero_point": self.zero_point}


class ChannelsLastInput(nn.Module):
    """Takes (N, H, W, C) images and hands the model (N, C, H, W): the device's layout at the input."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images.permute(0, 3, 1, 2))


def export_litert(model: nn.Module, input_shape: Sequence[int], path: str | os.PathLike, *, int8: bool = False,
                  calibration: Sequence[np.ndarray] = (), raw_input: bool = False, mean: Sequence[float] | None = None,
                  std: Sequence[float] | None = None) -> Path:
    """Write ``model`` as a ``.tflite`` file with an (1, H, W, C) input.

    ``calibration``: batches of uint8 (N, C, H, W) training images, required with ``int8``. With
    ``raw_input`` the model takes pixel values (0-255); otherwise ``(pixels / 255 - mean) / std``.
    """
    litert_torch, _, pt2e_quantizer, QuantConfig, quantize_pt2e = _modules()
    model = model.eval()
    if raw_input:
        model = RawImageInput(model, mean, std).eval()
    wrapped = ChannelsLastInput(model).eval()
    channels, height, width = input_shape
    example = (torch.zeros(1, height, width, channels),)

    def feed(images: np.ndarray) -> Tensor:
        x = torch.from_numpy(images)
        x = x.float() if raw_input else normalize(x, tuple(mean), tuple(std))
        return x.permute(0, 2, 3, 1).contiguous()

    if not int8:
        converted = litert_torch.convert(wrapped, example)
    else:
        if not len(calibration):
            raise ValueError("an int8 LiteRT export needs calibration images")
        quantizer = _int8_quantizer(pt2e_quantizer)
        prepared = quantize_pt2e.prepare_pt2e(torch.export.export(wrapped, example).module(), quantizer)
        with torch.no_grad():
            if raw_input:  # the whole pixel range, so that the input's int8 scale is exactly 1
                prepared(torch.zeros(1, height, width, channels))
                prepared(torch.full((1, height, width, channels), 255.0))
            for batch in calibration:
                for image in feed(batch):
                    prepared(image[None])
        quantized = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
        converted = litert_torch.convert(quantized, example, quant_config=QuantConfig(pt2e_quantizer=quantizer))
    return atomic_write(path, lambda temporary: converted.export(str(temporary)))


def _int8_quantizer(pt2e_quantizer):
    """litert-torch's PT2E quantizer, per-channel int8 weights and int8 activations, that also
    quantizes every residual addition.

    litert-torch finds additions by their source partitions, which ``torch.export`` no longer
    records (``source_fn_stack`` is empty), so it annotates none, and the converter leaves in float
    every addition whose output feeds another one: each chain of residual blocks in a stage (ADD x 3
    for four MobileNetV2 blocks, x 6 for WRN-16 and ResNet-14, between DEQUANTIZE and QUANTIZE;
    ``tests/trainer/test_litert.py``). Each addition of two tensors left unannotated gets the
    configuration's int8 activation specs, so the converter emits integer ADDs."""
    from litert_torch.quantize.pt2e_quantizer_utils import get_input_act_qspec, get_output_act_qspec
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    class EveryAddQuantizer(pt2e_quantizer.PT2EQuantizer):
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            model = super().annotate(model)
            config = self.global_config
            if config is None or not config.input_activation or config.is_dynamic:
                return model
            for node in model.graph.nodes:
                inputs = [a for a in node.args[:2] if isinstance(a, torch.fx.Node)]
                if (node.op == "call_function" and node.target in (torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor)
                        and len(inputs) == 2 and "quantization_annotation" not in node.meta):
                    node.meta["quantization_annotation"] = QuantizationAnnotation(
                        input_qspec_map={a: get_input_act_qspec(config) for a in inputs},
                        output_qspec=get_output_act_qspec(config), _annotated=True)
            return model

    return EveryAddQuantizer().set_global(pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True))


def _interpreter(path: str | os.PathLike):
    _, Interpreter, *_ = _modules()
    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    return interpreter


def tensor_formats(path: str | os.PathLike) -> tuple[TensorFormat, TensorFormat]:
    """The model's input and output: shape, dtype and quantization (scale 0 for a float tensor)."""
    interpreter = _interpreter(path)

    def describe(detail) -> TensorFormat:
        scale, zero_point = detail["quantization"]
        return TensorFormat([int(v) for v in detail["shape"]], np.dtype(detail["dtype"]).name, float(scale), int(zero_point))

    return describe(interpreter.get_input_details()[0]), describe(interpreter.get_output_details()[0])


def float_ops(path: str | os.PathLike) -> list[str]:
    """The operators of a ``.tflite`` model that read or write a float32 tensor, as "NAME x count":
    empty for a fully-integer model (``export_litert`` annotates the residual additions that
    litert-torch's quantizer skips; this is the check that nothing else stayed float)."""
    interpreter = _interpreter(path)
    tensors = {t["index"]: np.dtype(t["dtype"]) for t in interpreter.get_tensor_details()}
    found: dict[str, int] = {}
    for op in interpreter._get_ops_details():  # the interpreter's only listing of operators
        if any(i >= 0 and tensors.get(i) == np.float32 for i in [*op["inputs"], *op["outputs"]]):
            found[op["op_name"]] = found.get(op["op_name"], 0) + 1
    return [f"{name} x {count}" for name, count in sorted(found.items())]


def litert_predict(path: str | os.PathLike, images: np.ndarray, *, raw_input: bool, mean: Sequence[float] | None = None,
                   std: Sequence[float] | None = None) -> np.ndarray:
    """Logits of the ``.tflite`` model for uint8 (N, C, H, W) ``images``, one image at a time, fed as
    the recorded preprocessing says and quantized with the model's own input parameters."""
    interpreter = _interpreter(path)
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    x = torch.from_numpy(images)
    x = (x.float() if raw_input else normalize(x, tuple(mean), tuple(std))).permute(0, 2, 3, 1).numpy()
    scale, zero_point = source["quantization"]
    if np.dtype(source["dtype"]) != np.float32:
        info = np.iinfo(source["dtype"])
        x = np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(source["dtype"])
    out_scale, out_zero = target["quantization"]
    logits = []
    for image in x:
        interpreter.set_tensor(source["index"], image[None])
        interpreter.invoke()
        value = interpreter.get_tensor(target["index"])[0]
        logits.append((value.astype(np.float32) - out_zero) * out_scale if np.dtype(target["dtype"]) != np.float32 else value)
    return np.stack(logits)
