"""MobileNetV2-style students (Sandler et al., CVPR 2018) with CIFAR strides and three stages.

Inverted residual block: 1x1 expansion to ``expansion`` x the input channels (skipped at ratio 1),
depthwise kxk convolution (k = 3 or 5), 1x1 linear projection; the input is added back when the
block keeps the resolution and the channel count. ReLU6 after the expansion and the depthwise
convolution, none after the projection (the linear bottleneck).

For CIFAR the stem keeps the full 32x32 resolution (stride 1) and the three stages run at 1, 1/2
and 1/4 of it, the teacher's (WRN) three resolutions, so the graph losses tap them unchanged:
stage 1 and 2 outputs, and stage 3 after a 1x1 "head" convolution to 4x its channels (as
MobileNetV2's last 1x1 layer) and global average pooling. Stage channels are 16, 32, 64 times the
width multiplier (and per-stage multipliers), blocks per stage are the spec's ``stage_depths``.

Published figures for the full MobileNetV2 on CIFAR-10 (chenyaofo/pytorch-cifar-models): x0.5,
92.9% top-1 at 28 M MACs; depthwise-separable blocks lead accuracy per MAC at small budgets.
"""

from __future__ import annotations

from torch import Tensor, nn

from ._registry import ModelSpec, register_family, stage_channels
from ._staged import ThreeStageNet, init_weights, stage_feature_info

HEAD_RATIO = 4


def _conv_bn(in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return layers


class InvertedResidual(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: float, kernel: int) -> None:
        super().__init__()
        hidden = max(1, round(in_channels * expansion))
        layers: list[nn.Module] = []
        if hidden != in_channels:
            layers += _conv_bn(in_channels, hidden)
        layers += _conv_bn(hidden, hidden, kernel, stride, groups=hidden)
        layers += _conv_bn(hidden, out_channels, act=False)
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return x + out if self.residual else out


class MobileNetV2(ThreeStageNet):
    """Stem, three stages of inverted residual blocks, a 1x1 head, pooled linear classifier.

    Trained in channels_last on the CPU, where it made a trial's step 0.75-0.89x as long
    (``bench/channels_last.py``: oneDNN's depthwise convolutions prefer it).

    ``forward_with_features`` returns the logits and the stage 1 and 2 outputs and the pooled
    head output (stage 3), the same interface as the residual networks.
    """

    def __init__(self, channels: tuple[int, int, int], stage_depths: tuple[int, int, int], expansion: float, kernel: int,
                 in_channels: int, num_classes: int) -> None:
        super().__init__()
        stem = channels[0]
        self.stem = nn.Sequential(*_conv_bn(in_channels, stem, 3))
        stages = []
        previous = stem
        for index, (width, blocks) in enumerate(zip(channels, stage_depths)):
            stage = []
            for block in range(blocks):
                stride = 2 if (index > 0 and block == 0) else 1
                stage.append(InvertedResidual(previous, width, stride, expansion, kernel))
                previous = width
            stages.append(nn.Sequential(*stage))
        self.stages = nn.ModuleList(stages)
        self.channels_last_on_cpu = True
        head = HEAD_RATIO * channels[2]
        self.head = nn.Sequential(*_conv_bn(previous, head))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(head, num_classes)
        self.feature_info = stage_feature_info((channels[0], channels[1], head))
        self._init_weights()

    def _init_weights(self) -> None:
        init_weights(self, linear_std=0.01)


@register_family("mbv2", depths=lambda d: d >= 3, depth_rule="three stages of at least one block each",
                 mobile=True, kernels=(3, 5))
def build_mobilenet_v2(spec: ModelSpec) -> MobileNetV2:
    return MobileNetV2(stage_channels((16, 32, 64), spec), spec.stage_depths, spec.expansion, spec.kernel,
                       spec.in_channels, spec.num_classes)
