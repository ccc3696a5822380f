"""Moment layers that join branches: a residual sum (`EVIAdd`) and a concatenation (`EVICat`).

`a + b` on two `Moments` would concatenate the tuples, so a moment graph with a skip
connection or a concatenation needs these modules. Branches are treated as
independent, as eVI treats its kernels: the sum has mean m_a + m_b and covariance
Σ_a + Σ_b (the cross-covariance of branches that share an input, as in x + f(x), is
dropped: the same first-order approximation as the activations'); a concatenation
has a block-diagonal covariance. A plain tensor is a point mass (no covariance).

Layouts: operands of one layout stay in it (a factored one is made dense per block);
a diagonal operand joins a full or block one as its diagonal. Plain tensors in, plain
tensor out, so the deterministic twin of a moment network runs unchanged.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from ..base import SerializableLayer
from .core import BLOCK, DIAG, FACTORED, FULL, Moments, block_covariance, layout


def _operands(parts: tuple[Any, ...]) -> list[tuple[Tensor, Tensor | None, str | None]]:
    """(mean, covariance or None, layout) per operand; a factored covariance as blocks."""
    out: list[tuple[Tensor, Tensor | None, str | None]] = []
    for p in parts:
        if isinstance(p, Moments):
            kind = layout(p)
            cov = block_covariance(p) if kind == FACTORED else p.cov
            out.append((p.mean, cov, BLOCK if kind == FACTORED else kind))
        elif isinstance(p, Tensor):
            out.append((p, None, None))
        else:
            raise TypeError(f"moment ops take Moments or tensors, got {type(p).__name__}")
    return out


def _blocks(mean: Tensor, var: Tensor, channels: int) -> Tensor:
    """A diagonal (variances shaped like `mean`) as per-channel blocks (B, C, P, P)."""
    return torch.diag_embed(var.reshape(mean.shape[0], channels, -1))


def _common(ops: list[tuple[Tensor, Tensor | None, str | None]]) -> str:
    kinds = {k for _, _, k in ops if k is not None}
    if len(kinds) == 1:
        return kinds.pop()
    if kinds <= {DIAG, FULL}:
        return FULL
    if kinds <= {DIAG, BLOCK}:
        return BLOCK
    raise ValueError(
        f"cannot join moments of layouts {sorted(kinds)}; give every branch the same "
        "covariance= (or 'diag' everywhere)"
    )


def _as_layout(mean: Tensor, cov: Tensor | None, kind: str | None, target: str, channels: int):
    """The operand's covariance in layout `target` (zeros for a point mass)."""
    if target == DIAG:
        return torch.zeros_like(mean) if cov is None else cov
    if target == FULL:
        d = mean.shape[1]
        if cov is None:
            return mean.new_zeros(mean.shape[0], d, d)
        return torch.diag_embed(cov) if kind == DIAG else cov
    if cov is None:
        return _blocks(mean, torch.zeros_like(mean), channels)
    return _blocks(mean, cov, channels) if kind == DIAG else cov


class EVIAdd(SerializableLayer):
    """`EVIAdd()(a, b, ...)`: the sum of independent branches (moments or tensors)."""

    joins: ClassVar[str] = "add"  # shrink_graph: channel c of each operand goes together

    def forward(self, *parts: Tensor | Moments) -> Tensor | Moments:
        if len(parts) < 2:
            raise ValueError(f"EVIAdd needs at least two operands, got {len(parts)}")
        ops = _operands(parts)
        shapes = {tuple(m.shape) for m, _, _ in ops}
        if len(shapes) != 1:
            raise ValueError(f"EVIAdd needs operands of one shape, got {sorted(shapes)}")
        mean = sum(m for m, _, _ in ops[1:]) + ops[0][0]
        if all(k is None for _, _, k in ops):
            return mean
        target = _common(ops)
        channels = next(c.shape[1] for _, c, k in ops if k == BLOCK) if target == BLOCK else 0
        covs = [_as_layout(m, c, k, target, channels) for m, c, k in ops if c is not None]
        return Moments(mean, sum(covs[1:]) + covs[0])


class EVICat(SerializableLayer):
    """`EVICat()(a, b, ...)`: concatenation along the channel / feature axis (dim 1).

    Branches are independent, so the covariance is block-diagonal: diagonal layouts
    concatenate their variances, full ones (B, D, D) become one block-diagonal matrix,
    per-channel blocks (B, C, P, P) concatenate along the channels.
    """

    joins: ClassVar[str] = "cat"  # shrink_graph: the operands' channels, one after the other

    def forward(self, *parts: Tensor | Moments) -> Tensor | Moments:
        if not parts:
            raise ValueError("EVICat needs at least one operand")
        ops = _operands(parts)
        if all(k is None for _, _, k in ops):
            return torch.cat(parts, 1)
        target = _common(ops)
        mean = torch.cat([m for m, _, _ in ops], 1)
        if target == DIAG:
            return Moments(mean, torch.cat([_as_layout(m, c, k, DIAG, 0) for m, c, k in ops], 1))
        if target == FULL:
            if mean.ndim != 2:
                raise ValueError(f"EVICat of full covariances needs (B, D) means: {mean.ndim}-D")
            covs = [_as_layout(m, c, k, FULL, 0) for m, c, k in ops]
            return Moments(mean, _block_diagonal(covs))
        positions = {m[0].numel() // _channels(m, c, k) for m, c, k in ops}
        if len(positions) != 1 or mean.ndim != 4:
            raise ValueError("EVICat of block covariances needs (B, C, H, W) maps of one size")
        blocks = [_as_layout(m, c, k, BLOCK, m.shape[1]) for m, c, k in ops]
        return Moments(mean, torch.cat(blocks, 1))


def _channels(mean: Tensor, cov: Tensor | None, kind: str | None) -> int:
    return cov.shape[1] if kind == BLOCK and cov is not None else mean.shape[1]


def _block_diagonal(covs: list[Tensor]) -> Tensor:
    sizes = [c.shape[-1] for c in covs]
    out = covs[0].new_zeros(covs[0].shape[0], sum(sizes), sum(sizes))
    start = 0
    for c, n in zip(covs, sizes, strict=True):
        out[:, start : start + n, start : start + n] = c
        start += n
    return out
