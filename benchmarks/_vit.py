"""A small Vision Transformer for 1×28×28 images with torch's own attention, as a user's
model holds it (the library's `bayesprune.vit.ViT` layout, built with nn.MultiheadAttention).

Patch embedding (a 7×7 stride-7 convolution: 16 tokens), a class token and learned
position embeddings, `depth` pre-norm encoder blocks (LayerNorm → nn.MultiheadAttention
→ residual add; LayerNorm → MLP `fc1` → GELU → `fc2` → residual add), a final LayerNorm
and a linear head on the class token. Traceable by torch.fx, so `bp.convert` and
`compress.shrink_graph` take it as any user's model: the MLP hidden units (`fc1`'s
outputs) are what the graph can prune; with the attention split into heads
(`split_attention`) the heads and the residual stream can go too.
"""

from __future__ import annotations

from torch import nn

from bayesprune.vit import ViT as _LibraryViT


class ViT(_LibraryViT):
    """ViT for 1×28×28 inputs: 4×4 patches of 7×7, `depth` blocks of `width` channels,
    with torch's fused nn.MultiheadAttention (`bayesprune.vit.ViT`'s layout)."""

    def __init__(
        self, width: int = 64, depth: int = 4, heads: int = 4, hidden: int = 256, classes: int = 10
    ) -> None:
        super().__init__(1, classes, 28, 7, width, depth, heads, hidden, nn.MultiheadAttention)


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


def stream_units(model: nn.Module) -> list[str]:
    """The layers that write the residual stream (one channel group): the patch
    embedding, every block's attention output and second MLP layer."""
    blocks = range(len(model.blocks))
    return ["patch", *(f"blocks.{i}.attention.out_proj" for i in blocks)] + [
        f"blocks.{i}.fc2" for i in blocks
    ]


def stream_width(model: nn.Module) -> int:
    """The residual stream's channels (the patch embedding's outputs)."""
    return int(model.patch.out_channels)
