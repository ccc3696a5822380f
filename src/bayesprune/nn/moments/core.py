"""The (mean, covariance) pair that eVI layers pass to each other, and its layouts.

A moment network never samples: every layer maps the first two moments of its
input to those of its output. Covariances come in four layouts, told apart by
shape so that `Moments` stays a plain pair:

- ``"diag"``: `cov` has the shape of `mean` and holds variances (any tensor rank).
- ``"full"``: `mean` is (B, D) and `cov` is (B, D, D).
- ``"block"``: one P×P covariance per channel, none across channels. `cov` is
  (B, C, P, P); `mean` is a map (B, C, H, W) with H·W = P, or its flattened
  vector (B, C·P) in torch's channel-major order (index c·P + h·W + w), which is
  also the order inside each block. This is the one flatten order of the package.
- ``"factored"``: the block layout kept as a low-rank product (`Factored`), so the
  first convolution never builds a P×P matrix (P = 576 for a 24×24 map).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

DIAG, FULL, BLOCK, FACTORED = "diag", "full", "block", "factored"
LAYOUTS = (DIAG, FULL, BLOCK, FACTORED)


class Factored(NamedTuple):
    """Per-channel covariance Σ_c = diag(g_c) F_c diag(s_c) F_cᵀ diag(g_c).

    `factor` F is (B, C, P, r), or (B, 1, P, r) when shared by all channels (the
    patch matrix X of a first convolution: Σ_k = σ_k² X Xᵀ); `gain` g is (B, C, P)
    or None (all ones) and collects the Jacobians of element-wise activations;
    `scale` s is (C, 1) (one weight variance per kernel) or (C, r) (one per
    weight, zero where a weight is masked). Max-pooling gathers rows of F and g,
    so the covariance of a pooled map costs P·r per channel, not P².
    """

    factor: Tensor
    gain: Tensor | None
    scale: Tensor

    @property
    def channels(self) -> int:
        return self.scale.shape[0]

    def rows(self) -> Tensor:
        """diag(g_c) F_c for every channel, (B, C, P, r) (the scale left out)."""
        batch, _, positions, rank = self.factor.shape
        factor = self.factor.expand(batch, self.channels, positions, rank)
        return factor if self.gain is None else factor * self.gain.unsqueeze(-1)

    def dense(self) -> Tensor:
        """The per-channel blocks as a (B, C, P, P) tensor."""
        rows = self.rows()
        return (rows * self.scale.unsqueeze(-2)) @ rows.transpose(-1, -2)

    def diagonal(self) -> Tensor:
        """The variances, (B, C, P), without building any block."""
        if self.scale.shape[1] == 1:  # one pass over the factor
            var = torch.linalg.vector_norm(self.factor, dim=-1).square() * self.scale
        else:
            var = torch.einsum("bcpr,cr->bcp", self.factor.square(), self.scale)
        return var if self.gain is None else var * self.gain.square()

    def gather_rows(self, index: Tensor) -> Factored:
        """Keep rows `index` (B, C, Q) of every channel: one row copy each, no element gather."""
        batch, shared, positions, rank = self.factor.shape
        channels = index.shape[1]
        start = torch.arange(batch * shared, device=index.device).view(batch, shared, 1)
        rows = (start * positions + index).reshape(-1)  # shared factor: channel offset 0
        factor = self.factor.reshape(-1, rank).index_select(0, rows)
        gain = None if self.gain is None else self.gain.gather(2, index)
        return Factored(factor.view(batch, channels, -1, rank), gain, self.scale)


class Moments(NamedTuple):
    """Mean and covariance of a layer's output; see the module docstring for layouts."""

    mean: Tensor
    cov: Tensor | Factored

    @property
    def layout(self) -> str:
        return layout(self)

    def variance(self) -> Tensor:
        """Variances shaped like `mean`, whatever the layout."""
        return variance(self)

    def dense_covariance(self) -> Tensor:
        """The full (B, D, D) covariance of the flattened mean (small networks only)."""
        return dense_covariance(self)

    def __add__(self, other: object) -> Moments:
        # a tuple's + would concatenate (mean, cov, mean, cov) and fail far from here
        raise TypeError(
            "Moments cannot be added with +: use bayesprune.nn.moments.EVIAdd()(a, b) for a "
            "residual sum, or EVICat()(a, b) to concatenate channels"
        )

    __radd__ = __add__


def _bad(moments: Moments, why: str) -> ValueError:
    cov = moments.cov
    cov_shape = (
        f"Factored(factor={tuple(cov.factor.shape)}, scale={tuple(cov.scale.shape)})"
        if isinstance(cov, Factored)
        else tuple(cov.shape)
    )
    return ValueError(
        f"moments with mean {tuple(moments.mean.shape)} and covariance {cov_shape}: {why}. "
        "Valid layouts: diag (cov shaped like mean), full (B, D) + (B, D, D), block "
        "(B, C, H, W) or (B, C*P) + (B, C, P, P), or a Factored covariance."
    )


def layout(moments: Moments) -> str:
    """Name the covariance layout of `moments` (one of LAYOUTS); ValueError if none fits."""
    mean, cov = moments
    if mean.ndim < 2:
        raise _bad(moments, "the mean needs a batch dimension and at least one feature")
    batch, per_example = mean.shape[0], mean[0].numel()
    if isinstance(cov, Factored):
        f, channels = cov.factor, cov.channels
        if (
            cov.scale.ndim != 2
            or f.ndim != 4
            or cov.scale.shape[1] not in (1, f.shape[-1])
            or f.shape[0] != batch
            or f.shape[1] not in (1, channels)
            or channels * f.shape[2] != per_example
            or (mean.ndim == 4 and mean.shape[1] != channels)
        ):
            raise _bad(moments, "the factor does not fit the mean")
        return FACTORED
    if cov.shape == mean.shape:
        return DIAG
    if mean.ndim == 2 and cov.shape == (batch, per_example, per_example):
        return FULL
    if cov.ndim == 4 and cov.shape[0] == batch and cov.shape[-1] == cov.shape[-2]:
        channels, positions = cov.shape[1], cov.shape[2]
        if channels * positions == per_example and (mean.ndim == 2 or mean.shape[1] == channels):
            return BLOCK
    raise _bad(moments, "the covariance fits no layout")


def variance(moments: Moments) -> Tensor:
    """The marginal variances, shaped like the mean."""
    kind = layout(moments)
    mean, cov = moments
    if kind == DIAG:
        return cov
    if kind == FULL:
        return cov.diagonal(dim1=-2, dim2=-1)
    if kind == BLOCK:
        return cov.diagonal(dim1=-2, dim2=-1).reshape(mean.shape)
    return cov.diagonal().reshape(mean.shape)


def to_diagonal(moments: Moments) -> Moments:
    """The same marginals with every covariance between entries dropped."""
    return Moments(moments.mean, variance(moments))


def block_covariance(moments: Moments) -> Tensor:
    """The per-channel (B, C, P, P) blocks of a block or factored layout."""
    kind = layout(moments)
    if kind == BLOCK:
        return moments.cov
    if kind == FACTORED:
        return moments.cov.dense()
    raise ValueError(f"block_covariance needs a block or factored layout, got {kind!r}")


def dense_covariance(moments: Moments) -> Tensor:
    """The full (B, D, D) covariance over the flattened mean (channel-major order)."""
    kind = layout(moments)
    mean, cov = moments
    if kind == FULL:
        return cov
    if kind == DIAG:
        return torch.diag_embed(cov.reshape(mean.shape[0], -1))
    blocks = block_covariance(moments)
    batch, channels, positions, _ = blocks.shape
    eye = torch.eye(channels, dtype=blocks.dtype, device=blocks.device)
    full = torch.einsum("bcpq,cd->bcpdq", blocks, eye)
    return full.reshape(batch, channels * positions, channels * positions)


def channels_of(moments: Moments) -> int:
    """Number of covariance blocks of a block or factored layout."""
    cov = moments.cov
    return cov.channels if isinstance(cov, Factored) else cov.shape[1]


def as_moments(x: Tensor | Moments) -> Moments:
    """Moments as they are; a (mean, cov) pair as Moments; a tensor as a point mass."""
    if isinstance(x, Moments):
        return x
    if isinstance(x, tuple) and len(x) == 2:
        return Moments(*x)
    return Moments(x, torch.zeros_like(x))


def symmetrize(cov: Tensor) -> Tensor:
    """(Σ + Σᵀ)/2: removes the rounding asymmetry of products like J Σ Jᵀ."""
    return 0.5 * (cov + cov.transpose(-1, -2))
