"""The LiteRT int8 export on its own: every operator integer, residual additions included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rkd_search.trainer import ModelSpec, build_model
from rkd_search.trainer.deploy import RawImageInput
from rkd_search.trainer.litert import export_litert, float_ops, litert_predict

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


@pytest.mark.parametrize("student", ["mbv2-1-4-1_0.5_e2k5", "wrn16_0.5", "resnet14_0.5"])
def test_int8_export_is_fully_integer_and_computes_the_float_students_logits(student, tmp_path):
    """Residual blocks chained in a stage (four MobileNetV2 blocks; two WRN and two ResNet blocks)
    are where litert-torch's quantizer left additions in float (ADD x 3, x 6 and x 6 here without
    the annotation); the int8 model still computes the float student's logits (random weights,
    random pixels: close in correlation, not in accuracy)."""
    torch.manual_seed(0)
    model = build_model(ModelSpec.parse(student)).eval()
    generator = np.random.default_rng(0)
    calibration = [generator.integers(0, 256, (32, 3, 32, 32), dtype=np.uint8)]
    path = export_litert(model, (3, 32, 32), tmp_path / "student.int8.tflite", int8=True, calibration=calibration,
                         raw_input=True, mean=MEAN, std=STD)
    assert float_ops(path) == []
    images = generator.integers(0, 256, (32, 3, 32, 32), dtype=np.uint8)
    with torch.no_grad():
        expected = RawImageInput(model, MEAN, STD)(torch.from_numpy(images).float()).numpy()
    logits = litert_predict(path, images, raw_input=True)
    assert np.corrcoef(expected.ravel(), logits.ravel())[0, 1] > 0.9
