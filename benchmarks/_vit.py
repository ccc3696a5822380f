"""A small Vision Transformer for 1×28×28 images, in plain torch, as a user would write it.

Patch embedding (a 7×7 stride-7 convolution: 16 tokens), a class token and learned
position embeddings, `depth` pre-norm encoder blocks (LayerNorm → nn.MultiheadAttention
→ residual add; LayerNorm → MLP `fc1` → GELU → `fc2` → residual add), a final LayerNorm
and a linear head on the class token. Traceable by torch.fx, so `bp.convert` and
`compress.shrink_graph` take it as any user's model: the MLP hidden units (`fc1`'s
outputs) are what the graph can prune; attention and the normalised residual stream
keep their width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class EncoderBlock(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(width)
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm1(x)
        x = x + self.attention(y, y, y, need_weights=False)[0]
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    """ViT for 1×28×28 inputs: 4×4 patches of 7×7, `depth` blocks of `width` channels."""

    def __init__(
        self, width: int = 64, depth: int = 4, heads: int = 4, hidden: int = 256, classes: int = 10
    ) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, width, 7, 7)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.position = nn.Parameter(0.02 * torch.randn(1, 17, width))
        self.blocks = nn.Sequential(*(EncoderBlock(width, heads, hidden) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)  # B × 16 × width
        cls = self.cls.expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens], dim=1) + self.position
        return self.head(self.norm(self.blocks(x))[:, 0])


def hidden_units(model: nn.Module) -> list[str]:
    """The MLP layers whose outputs (hidden units) compression removes."""
    return [f"blocks.{i}.fc1" for i in range(len(model.blocks))]


def mlp_widths(model: nn.Module) -> list[int]:
    """Hidden units per block (deployed weights' rows)."""
    from bayesprune.compress.chain import deployed_weight

    return [int(deployed_weight(b.fc1).shape[0]) for b in model.blocks]


def attention_units(model: nn.Module) -> list[str]:
    """The attention modules whose heads compression removes (after `split_attention`)."""
    return [f"blocks.{i}.attention" for i in range(len(model.blocks))]


def head_counts(model: nn.Module) -> list[int]:
    """Attention heads per block (torch's fused module or bayesprune's split one)."""
    return [int(b.attention.num_heads) for b in model.blocks]
