"""Wide residual networks WRN-d-k (Zagoruyko & Komodakis, BMVC 2016), as in the graph-KD code.

Stem conv3x3 with 16 channels, three stages of n = (d - 4) / 6 basic blocks with 16k, 32k and
64k channels. k may be fractional (WRN-28-0.5 has 8, 16, 32 channels).
"""

from __future__ import annotations

from ._registry import ModelSpec, register_family, stage_channels
from ._staged import StagedResNet


@register_family("wrn", depths=lambda d: d >= 10 and (d - 4) % 6 == 0, depth_rule="(depth - 4) must be a positive multiple of 6: 10, 16, 22, 28, 34, 40")
def build_wrn(spec: ModelSpec) -> StagedResNet:
    return StagedResNet(
        stem_channels=16,
        stage_channels=stage_channels((16, 32, 64), spec),
        blocks_per_stage=(spec.depth - 4) // 6,
        in_channels=spec.in_channels,
        num_classes=spec.num_classes,
    )
