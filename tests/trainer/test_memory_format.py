"""channels_last on the CPU: used where it is faster and safe, never where oneDNN crashes.

oneDNN's weight gradient of a 1x1 stride-2 convolution with few input channels crashes the process
in channels_last at inputs of about 48 px and more (a segmentation fault, or "double free or
corruption"): a user's 48x48 ImageFolder killed every search. Each family's small students train
here at 48 and 64 px in a child process, so that a crash fails the test instead of killing pytest.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from rkd_search.trainer import ModelSpec, build_model
from rkd_search.trainer._device import unsafe_strided_pointwise, use_channels_last

STUDENTS = ["wrn10_0.25", "wrn28_0.5", "resnet8_0.25", "resnet20_0.5", "mbv2-1-1-1_0.25_e2k3", "mbv2-2-3-3_0.5_e6k5"]


def test_the_crashing_convolution_is_found_and_channels_last_left_off(monkeypatch):
    resnet = build_model(ModelSpec.parse("resnet8_0.25"))
    assert unsafe_strided_pointwise(resnet, (3, 64, 64)) == ["stages.1.0.shortcut.0"]
    assert unsafe_strided_pointwise(resnet, (3, 32, 32)) == []
    wide = build_model(ModelSpec.parse("wrn28_1"))  # 16 input channels: safe at any size
    assert unsafe_strided_pointwise(wide, (3, 64, 64)) == []
    # the residual networks measured slower in channels_last on the CPU, the mobile ones faster
    assert not use_channels_last(resnet, "cpu", (3, 32, 32)) and not use_channels_last(wide, "cpu", (3, 32, 32))
    mobile = build_model(ModelSpec.parse("mbv2-1-1-1_0.25_e2k3"))
    assert use_channels_last(mobile, "cpu", (3, 32, 32)) and use_channels_last(mobile, "cuda", (3, 32, 32))
    # a model that prefers channels_last but holds the crashing convolution keeps the default format
    monkeypatch.setattr(resnet, "channels_last_on_cpu", True, raising=False)
    assert use_channels_last(resnet, "cpu", (3, 32, 32)) and not use_channels_last(resnet, "cpu", (3, 48, 48))


@pytest.mark.parametrize("resolution", [48, 64])
def test_every_family_trains_at_48_and_64_px_without_a_native_crash(resolution):
    script = textwrap.dedent(f"""
        import torch
        import torch.nn.functional as F
        from rkd_search.trainer import LossConfig, ModelSpec, TrainConfig, dataset_from_tensors, fit
        from rkd_search.trainer.targets import LiveTeacher
        generator = torch.Generator().manual_seed(0)
        images = F.interpolate(torch.rand(150, 3, 8, 8, generator=generator) * 255, size={resolution}, mode="bilinear")
        images = images.round().clamp(0, 255).to(torch.uint8)
        labels = torch.arange(150) % 3
        data = dataset_from_tensors("px", (images[:135], labels[:135]), (images[135:], labels[135:]), ["a", "b", "c"])
        teacher = ModelSpec.parse("resnet8_0.25", 3, 3)
        from rkd_search.trainer import build_model
        teacher_model = build_model(teacher)
        for name in {STUDENTS!r}:
            config = TrainConfig(student=ModelSpec.parse(name), epochs=1, batch_size=64,
                                 loss=LossConfig(graph_weight=25.0))
            fit(config, data, teacher=teacher_model, device="cpu")
            print("trained", name, flush=True)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"exit {result.returncode}: {result.stdout[-500:]} {result.stderr[-1500:]}"
    assert result.stdout.count("trained") == len(STUDENTS)
