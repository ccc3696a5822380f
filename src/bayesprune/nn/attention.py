"""Multi-head attention with one layer per projection, so that heads can be deleted.

torch's `nn.MultiheadAttention` keeps its query / key / value projections in one fused
matrix and ties the attention width to the embedding (`head_dim = embed_dim //
num_heads`), so it can neither become Bayesian under `convert` nor hold fewer heads
than its embedding has. `MultiheadAttention` here computes the same function with four
ordinary `nn.Linear` layers (`q_proj`, `k_proj`, `v_proj`, `out_proj`): `convert` turns
them into any family's layers, and a head is rows of the first three and columns of the
last, so removing it leaves a smaller module of the same class. The number of heads is
read from `q_proj`, never stored, so a model rebuilt with narrower projections (e.g. by
`compress.load_shrunk`) has the right count.

`split_attention(model)` swaps every `nn.MultiheadAttention` of a model for this class,
weights copied, outputs equal; `convert(..., split_attention=True)` does it first.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MultiheadAttention", "split_attention"]


class MultiheadAttention(nn.Module):
    """`nn.MultiheadAttention`'s call signature and results, with separate projections.

    `head_dim` is fixed at construction (embed_dim // num_heads); `num_heads` follows
    `q_proj`'s width, `embed_dim` / `kdim` / `vdim` its projections' inputs (a shrunk
    residual stream narrows them). Not supported (refused by `from_torch`): `add_bias_kv`,
    `add_zero_attn`. A 3-d `attn_mask` (one per batch row and head) needs every head.
    """

    # Read by torch's TransformerEncoderLayer before its fused fast path: without a fused
    # input projection that path is skipped and `forward` below is called.
    in_proj_weight = None
    in_proj_bias = None
    _qkv_same_embed_dim = False

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
    ) -> None:
        super().__init__()
        if num_heads < 1 or embed_dim % num_heads:
            raise ValueError(
                f"embed_dim ({embed_dim}) must be a positive multiple of num_heads ({num_heads})"
            )
        self.head_dim = embed_dim // num_heads
        self.dropout, self.batch_first = dropout, batch_first
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(kdim or embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(vdim or embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    @property
    def num_heads(self) -> int:
        return int(self.q_proj.out_features) // self.head_dim

    @property
    def embed_dim(self) -> int:
        """The width of the queries (and of the output): a narrowed residual stream's."""
        return int(self.q_proj.in_features)

    @property
    def kdim(self) -> int:
        return int(self.k_proj.in_features)

    @property
    def vdim(self) -> int:
        return int(self.v_proj.in_features)

    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention) -> MultiheadAttention:
        """The same attention (weights copied, on their device and dtype)."""
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError(
                "nn.MultiheadAttention with add_bias_kv or add_zero_attn cannot be split into "
                "heads: keep it whole (leave it out of split_attention)"
            )
        bias = mha.in_proj_bias is not None
        new = cls(
            mha.embed_dim, mha.num_heads, mha.dropout, bias, mha.kdim, mha.vdim, mha.batch_first
        )
        if mha._qkv_same_embed_dim:
            weights = mha.in_proj_weight.detach().chunk(3)
        else:
            weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
        biases = mha.in_proj_bias.detach().chunk(3) if bias else (None,) * 3
        new = new.to(weights[0])
        with torch.no_grad():
            projections = (new.q_proj, new.k_proj, new.v_proj)
            for layer, w, b in zip(projections, weights, biases, strict=True):
                layer.weight.copy_(w)
                if b is not None:
                    layer.bias.copy_(b)
            new.out_proj.weight.copy_(mha.out_proj.weight)
            if bias:
                new.out_proj.bias.copy_(mha.out_proj.bias)
        return new.train(mha.training)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query[None], key[None], value[None]
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask[None]
        elif not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        batch, targets, sources = query.shape[0], query.shape[1], key.shape[1]
        heads, size = self.num_heads, self.head_dim

        def split(x: Tensor, length: int) -> Tensor:
            return x.reshape(batch, length, heads, size).transpose(1, 2)

        q = split(self.q_proj(query), targets)
        k = split(self.k_proj(key), sources)
        v = split(self.v_proj(value), sources)
        logits = q @ k.transpose(-2, -1) / math.sqrt(size)
        bias = self._mask(attn_mask, key_padding_mask, is_causal, targets, sources, logits)
        if bias is not None:
            logits = logits + bias
        weights = torch.softmax(logits, dim=-1)
        dropped = F.dropout(weights, self.dropout, self.training) if self.dropout else weights
        out = (dropped @ v).transpose(1, 2).reshape(batch, targets, heads * size)
        out = self.out_proj(out)
        if unbatched:
            out = out[0]
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        shown = weights.mean(1) if average_attn_weights else weights
        return out, shown[0] if unbatched else shown

    def _mask(
        self,
        attn_mask: Tensor | None,
        key_padding_mask: Tensor | None,
        is_causal: bool,
        targets: int,
        sources: int,
        like: Tensor,
    ) -> Tensor | None:
        """The additive mask (−inf where attention is forbidden), broadcast to
        batch × heads × L × S."""
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(targets, sources, dtype=torch.bool, device=like.device).triu(1)
        total = None
        if attn_mask is not None:
            total = _additive(attn_mask, like)
            if total.dim() == 3:
                if total.shape[0] != like.shape[0] * self.num_heads:
                    raise ValueError(
                        f"attn_mask of shape {tuple(total.shape)} is not one mask per batch row "
                        f"and head for {self.num_heads} heads (heads may have been removed): "
                        "pass a 2-d (L, S) mask or one per remaining head"
                    )
                total = total.reshape(like.shape[0], self.num_heads, targets, sources)
        if key_padding_mask is not None:
            padding = _additive(key_padding_mask, like)[:, None, None, :]
            total = padding if total is None else total + padding
        return total

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
            f"batch_first={self.batch_first}"
        )


def _additive(mask: Tensor, like: Tensor) -> Tensor:
    """A boolean mask (True = forbidden) as 0 / −inf; a float mask as it is."""
    if mask.dtype == torch.bool:
        zeros = torch.zeros(mask.shape, dtype=like.dtype, device=like.device)
        return zeros.masked_fill(mask, float("-inf"))
    return mask.to(like.dtype)


def split_attention(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """`model` with every `nn.MultiheadAttention` replaced by `MultiheadAttention` (the same
    outputs), and torch's nested-tensor encoder fast path, which needs the fused
    attention, turned off. A model that is itself an nn.MultiheadAttention is returned
    converted."""
    if isinstance(model, nn.MultiheadAttention):
        return MultiheadAttention.from_torch(model)
    model = model if inplace else copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.MultiheadAttention):
                setattr(parent, name, MultiheadAttention.from_torch(child))
        if getattr(parent, "use_nested_tensor", False):
            parent.use_nested_tensor = False
    return model
