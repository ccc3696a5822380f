"""A small Vision Transformer for images: the builder `vit` of configs and the CLI.

Patch embedding (a `patch`×`patch` convolution of stride `patch`), a class token and
learned position embeddings, `depth` pre-norm encoder blocks (LayerNorm → multi-head
self-attention → residual add; LayerNorm → Linear → GELU → Linear → residual add), a
final LayerNorm and a linear head on the class token (Dosovitskiy et al. 2021, sized for
small images). Attention is `bayesprune.nn.MultiheadAttention`, so its projections are
Bayesian in every family and whole heads can go; the MLP hidden units are units of the
graph. The run's `compress` step shrinks it with `compress.shrink_graph`; the residual
stream narrows too (its channels go where they are exactly 0 at every LayerNorm, the
class token, the positions and the attention's projections sliced with them).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .nn import convert
from .nn.attention import MultiheadAttention

Attention = type[MultiheadAttention] | type[nn.MultiheadAttention]


class EncoderBlock(nn.Module):
    """Pre-norm: x + attention(norm(x)), then x + MLP(norm(x))."""

    def __init__(
        self, width: int, heads: int, hidden: int, attention: Attention = MultiheadAttention
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attention = attention(width, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(width)
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm1(x)
        x = x + self.attention(y, y, y, need_weights=False)[0]
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    """Patches of `patch`×`patch` pixels as tokens, a class token, `depth` blocks.

    `attention`: bayesprune's split `MultiheadAttention` (heads can go), or torch's
    fused `nn.MultiheadAttention` (what a user's model usually holds)."""

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        image_size: int,
        patch: int,
        width: int,
        depth: int,
        heads: int,
        hidden: int,
        attention: Attention = MultiheadAttention,
    ) -> None:
        super().__init__()
        if patch < 1 or image_size % patch:
            raise ValueError(f"patch ({patch}) must divide image_size ({image_size})")
        if min(width, depth, heads, hidden) < 1 or width % heads:
            raise ValueError(
                f"width ({width}) must be a multiple of heads ({heads}); depth and hidden "
                f"must be positive, got depth={depth}, hidden={hidden}"
            )
        tokens = (image_size // patch) ** 2
        self.patch = nn.Conv2d(in_channels, width, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.position = nn.Parameter(0.02 * torch.randn(1, tokens + 1, width))
        blocks = (EncoderBlock(width, heads, hidden, attention) for _ in range(depth))
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)  # B × tokens × width
        cls = self.cls.expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens], dim=1) + self.position
        return self.head(self.norm(self.blocks(x))[:, 0])


def vit(
    in_channels: int = 1,
    n_classes: int = 10,
    image_size: int = 28,
    *,
    patch: int = 7,
    width: int = 64,
    depth: int = 4,
    heads: int = 4,
    hidden: int = 256,
    family: str = "gaussian",
    **layer_kwargs: Any,
) -> nn.Module:
    """A ViT (module docstring) whose patch embedding, projections, MLPs and head are
    made Bayesian by `family` (LayerNorm, the class token and positions stay point
    estimates)."""
    model = ViT(in_channels, n_classes, image_size, patch, width, depth, heads, hidden)
    return convert(model, family, inplace=True, **layer_kwargs)
