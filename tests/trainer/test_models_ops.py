"""Model families against the sizes in REFERENCE.md, and the operations count against torch's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainer import ModelSpec, build_model, count_ops, count_spec_ops


@pytest.mark.parametrize(
    "name, params, macs",
    # conv + linear MACs (= FlopCounterMode / 2), from REFERENCE.md §1
    [("wrn28_10", 36.5e6, 5.24e9), ("wrn28_1", 370e3, 55.0e6), ("wrn28_0.5", 94e3, 14.8e6)],
)
def test_wrn_sizes_match_the_papers_counts(name, params, macs):
    model = build_model(name)
    ops = count_ops(model, (3, 32, 32))
    assert ops.params == pytest.approx(params, rel=0.01)
    assert ops.flops / 2 == pytest.approx(macs, rel=0.01)


def test_thop_counts_conv_and_linear_like_torch():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(8 * 16 * 16, 10, bias=False))
    ops = count_ops(model, (3, 16, 16))
    assert ops.macs * 2 == ops.flops


@pytest.mark.parametrize("name", ["wrn28_1", "wrn16_0.5", "resnet20"])
def test_thop_adds_only_batchnorm_and_pooling_to_torchs_count(name):
    """thop = conv/linear MACs (torch's FLOPs / 2) + 4 per BatchNorm element (eval mode) + pooling."""
    model = build_model(name).eval()
    extra = []

    def hook(module, inputs, output):
        if isinstance(module, nn.BatchNorm2d):
            extra.append(4 * output.numel())
        elif isinstance(module, nn.AdaptiveAvgPool2d):
            extra.append(inputs[0].numel() + output.numel())

    for module in model.modules():
        module.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    for module in model.modules():
        module._forward_hooks.clear()
    ops = count_ops(model, (3, 32, 32))
    assert ops.macs == ops.flops // 2 + sum(extra)


def test_counting_leaves_the_model_untouched():
    model = build_model("wrn16_1")
    keys = set(model.state_dict())
    count_ops(model, (3, 32, 32))
    assert set(model.state_dict()) == keys
    assert not any("total_ops" in vars(m) or m._forward_hooks for m in model.modules())


def test_spec_counts_are_memoised():
    spec = ModelSpec("wrn", 16, 0.75)
    assert count_spec_ops(spec, 32) is count_spec_ops(spec, 32)


@pytest.mark.parametrize("spec", [
    ModelSpec("wrn", 28, 0.5, in_channels=1, num_classes=100),
    ModelSpec("wrn", 10, 1.25, stage_widths=(0.5, 1.0, 2.0)),
    ModelSpec("resnet", 8, 0.5, num_classes=4),
])
def test_every_model_returns_logits_and_three_stage_features(spec):
    model = build_model(spec)
    logits, features = model.forward_with_features(torch.randn(2, spec.in_channels, 32, 32))
    assert logits.shape == (2, spec.num_classes)
    assert [f.dim() for f in features] == [4, 4, 2]
    assert [info["channels"] for info in model.feature_info] == [features[0].shape[1], features[1].shape[1], features[2].shape[1]]
    torch.testing.assert_close(model(torch.zeros(1, spec.in_channels, 32, 32)), model.forward_with_features(torch.zeros(1, spec.in_channels, 32, 32))[0])


def test_fractional_and_per_stage_widths():
    model = build_model(ModelSpec("wrn", 16, 0.5, stage_widths=(1.0, 1.5, 0.5)))
    assert [i["channels"] for i in model.feature_info] == [8, 24, 16]


def test_names_parse_and_round_trip():
    spec = ModelSpec.parse("wrn-28-0.5", in_channels=1, num_classes=10)
    assert (spec.family, spec.depth, spec.width, spec.name) == ("wrn", 28, 0.5, "wrn28_0.5")
    assert ModelSpec.parse("resnet20").name == "resnet20_1"
    assert ModelSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("text, message", [("wrn27_1", "multiple of 6"), ("vgg16", "unknown model"), ("resnet21", "multiple of 6")])
def test_bad_model_names_say_what_is_allowed(text, message):
    with pytest.raises(ValueError, match=message):
        ModelSpec.parse(text)
