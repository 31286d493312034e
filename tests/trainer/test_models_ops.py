"""Model families against the sizes in REFERENCE.md, and the operations count against torch's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rkd_search.trainer import ModelSpec, build_model, count_ops, count_spec_ops


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


def batchnorm_and_pooling_ops(model: nn.Module) -> int:
    """What thop counts beyond conv/linear MACs: 4 per BatchNorm element (eval mode) and pooling."""
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
    return sum(extra)


@pytest.mark.parametrize("name", ["wrn28_1", "wrn16_0.5", "resnet20"])
def test_thop_adds_only_batchnorm_and_pooling_to_torchs_count(name):
    """thop = conv/linear MACs (torch's FLOPs / 2) + 4 per BatchNorm element (eval mode) + pooling."""
    model = build_model(name).eval()
    ops = count_ops(model, (3, 32, 32))
    assert ops.macs == ops.flops // 2 + batchnorm_and_pooling_ops(model)


def test_counting_leaves_the_model_untouched():
    model = build_model("wrn16_1")
    keys = set(model.state_dict())
    count_ops(model, (3, 32, 32))
    assert set(model.state_dict()) == keys
    assert not any("total_ops" in vars(m) or m._forward_hooks for m in model.modules())


def test_spec_counts_are_memoised():
    spec = ModelSpec("wrn", 16, 0.75)
    assert count_spec_ops(spec, 32) is count_spec_ops(spec, 32)


MODELS = [
    ModelSpec("wrn", 28, 0.5, in_channels=1, num_classes=100),
    ModelSpec("wrn", 10, 1.25, stage_widths=(0.5, 1.0, 2.0)),
    ModelSpec("resnet", 8, 0.5, num_classes=4),
    ModelSpec("mbv2", 7, 0.5, stage_depths=(1, 2, 4), expansion=4, kernel=5),
    ModelSpec("mbv2", 6, 1.0, stage_widths=(1.0, 0.5, 1.5), kernel=3),
]


@pytest.mark.parametrize("spec", MODELS, ids=lambda s: s.name)
@pytest.mark.parametrize("resolution", [32, 48])
def test_a_students_flops_from_its_layers_equal_torchs_flop_counter(spec, resolution):
    """count_spec_ops counts FLOPs from the Conv2d and Linear layers' shapes; count_ops with
    torch's FlopCounterMode: the same numbers for every family."""
    assert count_spec_ops(spec, resolution) == count_ops(build_model(spec), (spec.in_channels, resolution, resolution))


@pytest.mark.parametrize("spec", MODELS, ids=lambda s: s.name)
def test_every_model_returns_logits_and_three_stage_features(spec):
    model = build_model(spec)
    logits, features = model.forward_with_features(torch.randn(2, spec.in_channels, 32, 32))
    assert logits.shape == (2, spec.num_classes)
    assert [f.dim() for f in features] == [4, 4, 2]
    assert [info["channels"] for info in model.feature_info] == [features[0].shape[1], features[1].shape[1], features[2].shape[1]]
    torch.testing.assert_close(model(torch.zeros(1, spec.in_channels, 32, 32)), model.forward_with_features(torch.zeros(1, spec.in_channels, 32, 32))[0])


@pytest.mark.parametrize("spec", MODELS, ids=lambda s: s.name)
def test_feature_info_describes_the_taps_at_the_teachers_resolutions(spec):
    """Stages 1 and 2 at full and half resolution (the WRN teacher's), stage 3 pooled to a vector."""
    model = build_model(spec)
    _, features = model.forward_with_features(torch.randn(1, spec.in_channels, 32, 32))
    for info, feature in zip(model.feature_info, features):
        assert feature.shape[1] == info["channels"]
        if info["pooled"]:
            assert feature.dim() == 2 and info["reduction"] is None
        else:
            assert feature.shape[-1] == 32 // info["reduction"]
    assert [i["pooled"] for i in model.feature_info] == [False, False, True]
    assert [i["reduction"] for i in model.feature_info[:2]] == [1, 2]


def test_mobile_blocks_are_inverted_residuals_with_depthwise_convolutions():
    from rkd_search.trainer.models.mobilenet import InvertedResidual

    model = build_model(ModelSpec("mbv2", 6, 1.0, stage_depths=(2, 2, 2), expansion=6, kernel=5))
    blocks = [m for m in model.modules() if isinstance(m, InvertedResidual)]
    assert len(blocks) == 6
    depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 6 and all(m.groups == m.in_channels == m.out_channels and m.kernel_size == (5, 5) for m in depthwise)
    # the stem keeps stage 1's width and resolution; stages 2 and 3 start with a stride-2 block
    assert [b.residual for b in blocks] == [True, True, False, True, False, True]
    expand = blocks[1].block[0]
    assert expand.kernel_size == (1, 1) and expand.out_channels == 6 * expand.in_channels


def test_depthwise_convolutions_are_counted_by_thop_and_torch_alike():
    """A depthwise kxk convolution costs H*W*C*k*k MACs (not H*W*C*C*k*k): both counters agree."""
    conv = nn.Conv2d(24, 24, 5, padding=2, groups=24, bias=False)
    ops = count_ops(conv, (24, 16, 16))
    assert ops.macs == ops.flops // 2 == 16 * 16 * 24 * 25


@pytest.mark.parametrize("name", ["mbv2-2-3-3_0.5_e6k3", "mbv2-1-2-1_1.5_e2k5"])
def test_mobile_students_are_counted_like_the_others(name):
    """thop = torch's conv/linear MACs + 4 per BatchNorm element + pooling, depthwise layers included."""
    model = build_model(name).eval()
    ops = count_ops(model, (3, 32, 32))
    assert ops.macs == ops.flops // 2 + batchnorm_and_pooling_ops(model)
    assert count_spec_ops(ModelSpec.parse(name), 32) == ops


def test_mobile_names_parse_and_round_trip():
    spec = ModelSpec.parse("mbv2-2-3-3_0.5_e6k3")
    assert (spec.stage_depths, spec.width, spec.expansion, spec.kernel, spec.depth) == ((2, 3, 3), 0.5, 6.0, 3, 8)
    assert ModelSpec.parse(spec.name) == spec and ModelSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="kernel"):
        ModelSpec("mbv2", 3, 1.0, kernel=7)
    with pytest.raises(ValueError, match="mobile"):
        ModelSpec("wrn", 16, 1.0, kernel=3)


def test_peak_activation_memory_counts_live_buffers_at_batch_1():
    """Hand count for wrn28_0.5 (stem 16 channels, stage 1 with 8): the first block's shortcut
    convolution runs while its input (16 x 32 x 32), the main branch's output and its own output
    (8 x 32 x 32 each) are alive: (16 + 8 + 8) x 1024 x 4 bytes."""
    from rkd_search.trainer.ops import peak_activation_bytes

    assert peak_activation_bytes(ModelSpec("wrn", 28, 0.5), 32) == (16 + 8 + 8) * 1024 * 4
    # an inverted residual block keeps its input (for the residual addition) while the expanded
    # tensor and the depthwise output are alive: 8 + 48 + 48 channels at 32 x 32 for this one
    assert peak_activation_bytes(ModelSpec("mbv2", 9, 0.5, expansion=6), 32) == (8 + 48 + 48) * 1024 * 4
    assert peak_activation_bytes(ModelSpec("mbv2", 9, 0.5, expansion=6), 32, 1) == (8 + 48 + 48) * 1024
    wider = peak_activation_bytes(ModelSpec("wrn", 28, 1.0), 32)
    assert wider > peak_activation_bytes(ModelSpec("wrn", 28, 0.5), 32)


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
