"""The three-stage residual network shared by the WRN and CIFAR-ResNet families.

Both families are the same graph: a 3x3 stem, three stages of post-activation basic blocks
(conv-BN-ReLU-conv-BN + shortcut, ReLU) with stride 2 at the start of stages 2 and 3, global
average pooling and a linear classifier. They differ only in how depth and width map to the
number of blocks and channels, which each family's module decides.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def stage_feature_info(stage_channels: tuple[int, int, int]) -> list[dict]:
    """What ``forward_with_features`` returns, stage by stage (as timm's ``feature_info``).

    Stages 1 and 2 are feature maps downsampled ``reduction`` times; stage 3 is read after
    global average pooling, a (batch, channels) tensor with no spatial extent (``reduction`` None).
    """
    info = [{"stage": i + 1, "channels": c, "reduction": 2**i, "pooled": False} for i, c in enumerate(stage_channels)]
    info[-1].update(reduction=None, pooled=True)
    return info


class ThreeStageNet(nn.Module):
    """Stem, three stages, a head (identity for the residual networks), pooled linear classifier:
    the forward passes every family shares. ``forward_with_features`` returns the logits and the
    stage 1 and 2 outputs and the pooled head output (stage 3), which the relational losses read."""

    stem: nn.Module
    stages: nn.ModuleList
    head: nn.Module
    pool: nn.Module
    fc: nn.Module
    channels_last_on_cpu = False
    """Train in channels_last on the CPU (where measured faster: ``bench/channels_last.py``)."""

    def forward_with_features(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        features = []
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        pooled = self.pool(self.head(x)).flatten(1)
        features[-1] = pooled
        return self.fc(pooled), features

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.fc(torch.flatten(self.pool(self.head(x)), 1))


def init_weights(model: nn.Module, linear_std: float | None = None) -> None:
    """He-normal convolutions (fan out), BatchNorm at identity, zero linear biases; the linear weights
    drawn from N(0, ``linear_std``) when given (MobileNetV2), else left at PyTorch's default (ResNets)."""
    if model.fc.weight.is_meta:  # built only to be measured: random init on the meta device is slow and pointless
        return
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(module.weight, 0, linear_std)
            nn.init.zeros_(module.bias)


class StagedResNet(ThreeStageNet):
    """Stem, three stages of basic blocks, pooled linear head.

    The default memory format on the CPU: channels_last made a trial's step 1.10x (WRN-28-0.5) and
    1.23x (ResNet-20) as long there (``bench/channels_last.py``).

    ``forward`` returns logits; ``forward_with_features`` returns the logits and the stage
    features the relational losses read: stages 1 and 2 as full (post-ReLU) feature maps,
    stage 3 after global average pooling, as in the graph-KD authors' code.
    """

    def __init__(
        self,
        stem_channels: int,
        stage_channels: tuple[int, int, int],
        blocks_per_stage: int,
        in_channels: int,
        num_classes: int,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(stem_channels),
            nn.ReLU(inplace=True),
        )
        stages = []
        previous = stem_channels
        for index, channels in enumerate(stage_channels):
            blocks = []
            for block in range(blocks_per_stage):
                stride = 2 if (index > 0 and block == 0) else 1
                blocks.append(BasicBlock(previous, channels, stride))
                previous = channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.head = nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(previous, num_classes)
        self.feature_info = stage_feature_info(stage_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        init_weights(self)
