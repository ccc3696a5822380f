"""A small residual network for images: the builder `resnet` of configs and the CLI.

ResNet-20-style (He et al. 2016, the CIFAR variant): a 3×3 stem convolution with
BatchNorm, stages of basic blocks (two 3×3 convolutions with BatchNorm and a
residual addition; a strided 1×1 projection where a stage changes width or size),
global average pooling and a linear head. It is not an `nn.Sequential` chain, so
the run's `compress` step shrinks it with `compress.shrink_graph` (the residual
additions tie the channels of a stage together) and saves the user-class format of
`compress.save_shrunk`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from .nn import convert


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the input (projected when the shape changes), then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """Stem, one stage per entry of `widths` (`blocks` each, stride 2 from the second
    stage on), global average pooling, linear head."""

    def __init__(
        self, in_channels: int, n_classes: int, widths: Sequence[int], blocks: int
    ) -> None:
        super().__init__()
        if not widths or any(w <= 0 for w in widths) or blocks < 1:
            raise ValueError(
                f"widths must be positive and blocks >= 1, got widths={list(widths)}, "
                f"blocks={blocks}"
            )
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        )
        stages: list[nn.Module] = []
        previous = widths[0]
        for i, width in enumerate(widths):
            for j in range(blocks):
                stride = 2 if i > 0 and j == 0 else 1
                stages.append(BasicBlock(previous, width, stride))
                previous = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(previous, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.flatten(self.pool(self.stages(self.stem(x)))))


def resnet(
    in_channels: int = 1,
    n_classes: int = 10,
    *,
    widths: Sequence[int] = (16, 32, 64),
    blocks: int = 3,
    family: str = "gaussian",
    **layer_kwargs: Any,
) -> nn.Module:
    """ResNet-20 (`widths=(16, 32, 64), blocks=3`) or a narrower / shallower one, its
    convolutions and head made Bayesian by `family` (BatchNorm stays deterministic)."""
    model = ResNet(in_channels, n_classes, tuple(widths), blocks)
    return convert(model, family, inplace=True, **layer_kwargs)
