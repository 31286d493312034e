"""CIFAR ResNets (He et al., CVPR 2016, section 4.2): ResNet-8/14/20/32/44/56/110.

Stem conv3x3, three stages of n = (d - 2) / 6 basic blocks with 16w, 32w, 64w channels; unlike
WRN, the stem scales with the width multiplier w. Shortcuts that change shape are 1x1
convolutions (option B), as in RepDistiller.
"""

from __future__ import annotations

from ._registry import ModelSpec, register_family, stage_channels
from ._staged import StagedResNet


@register_family("resnet", depths=lambda d: d >= 8 and (d - 2) % 6 == 0, depth_rule="(depth - 2) must be a positive multiple of 6: 8, 14, 20, 32, 44, 56, 110")
def build_resnet(spec: ModelSpec) -> StagedResNet:
    channels = stage_channels((16, 32, 64), spec)
    return StagedResNet(
        stem_channels=channels[0],
        stage_channels=channels,
        blocks_per_stage=(spec.depth - 2) // 6,
        in_channels=spec.in_channels,
        num_classes=spec.num_classes,
    )
