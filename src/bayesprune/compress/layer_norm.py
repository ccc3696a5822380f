"""LayerNorm over channels some of which were removed: statistics that still count them.

A LayerNorm over the channels (ConvNeXt's blocks, its channels-first `LayerNorm2d`, a
transformer's residual stream) reads every channel in its mean and variance, so a
channel cannot simply go: LayerNorm over C − k channels divides by C − k, not C. When
the removed channels are exactly 0 at its input and its own scale and shift at them
are 0 (what `shrink_graph` checks, after zeroing them for the units `prune_units`
drops), the layer over the kept channels is exact if its statistics count the k zeros:

    μ = Σ x / C,   σ² = (Σ (x − μ)² + k μ²) / C

`ZeroCountingLayerNorm` computes that (C = `total`), over the last axis or, for a
channels-first map, over dim 1. It exports to ONNX as plain arithmetic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.base import Config, SerializableLayer

__all__ = ["ZeroCountingLayerNorm", "channels_first_layer_norm", "normalised_axes", "rebuilt"]


class ZeroCountingLayerNorm(SerializableLayer):
    """LayerNorm over `kept` channels of `total`, the `total − kept` others being zeros."""

    def __init__(
        self,
        kept: int,
        total: int,
        eps: float = 1e-5,
        affine: bool = True,
        bias: bool = True,
        channel_dim: int = -1,
    ) -> None:
        super().__init__()
        if not 0 < kept <= total:
            raise ValueError(f"kept ({kept}) must be in 1..total ({total})")
        self.kept, self.total, self.eps, self.channel_dim = kept, total, eps, channel_dim
        self.weight = nn.Parameter(torch.ones(kept)) if affine else None
        self.bias = nn.Parameter(torch.zeros(kept)) if affine and bias else None

    @classmethod
    def of(cls, norm: nn.Module, idx: Tensor, channel_dim: int) -> ZeroCountingLayerNorm:
        """The channels `idx` of a LayerNorm (or of a ZeroCountingLayerNorm)."""
        total = norm.total if isinstance(norm, cls) else int(norm.normalized_shape[-1])
        weight, bias = norm.weight, norm.bias
        affine = weight is not None
        new = cls(len(idx), total, float(norm.eps), affine, bias is not None, channel_dim)
        for name, t in (("weight", weight), ("bias", bias)):
            if t is not None:
                cut = t.detach().index_select(0, idx.to(t.device)).clone()
                setattr(new, name, nn.Parameter(cut, t.requires_grad))
        return new

    def forward(self, x: Tensor) -> Tensor:
        dim, last = self.channel_dim % x.ndim, x.ndim - 1  # ONNX wants positive dims
        moved = x.movedim(dim, last) if dim != last else x
        mean = moved.sum(-1, keepdim=True) / self.total
        centred = moved - mean
        zeros = self.total - self.kept
        var = ((centred * centred).sum(-1, keepdim=True) + zeros * mean * mean) / self.total
        y = centred * torch.rsqrt(var + self.eps)
        if self.weight is not None:
            y = y * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y.movedim(last, dim) if dim != last else y

    def config(self) -> Config:
        return {
            "kept": self.kept,
            "total": self.total,
            "eps": self.eps,
            "affine": self.weight is not None,
            "bias": self.bias is not None,
            "channel_dim": self.channel_dim,
        }

    def extra_repr(self) -> str:
        return f"{self.kept} of {self.total}, eps={self.eps}, channel_dim={self.channel_dim}"


def channels_first_layer_norm(module: nn.Module) -> bool:
    """A subclass of nn.LayerNorm with its own `forward` that normalises dim 1 of a map
    over one size, as torchvision's and timm's `LayerNorm2d` (a permute, the norm, a
    permute back): proven by running it on a random map against F.layer_norm over dim
    1. The graph reads such a module whole, as a LayerNorm over the channels."""
    if not isinstance(module, nn.LayerNorm) or type(module).forward is nn.LayerNorm.forward:
        return False
    shape = tuple(module.normalized_shape)
    ref = module.weight if module.weight is not None else None
    if len(shape) != 1 or (ref is not None and (ref.is_meta or not ref.is_floating_point())):
        return False
    kind = {"device": ref.device, "dtype": ref.dtype} if ref is not None else {}
    x = torch.randn(2, shape[0], 3, 4, generator=torch.Generator().manual_seed(0)).to(**kind)
    try:
        with torch.no_grad():
            was = module.training
            module.eval()
            out = module(x)
            module.train(was)
    except Exception:  # another signature, another rank: not a channels-first LayerNorm
        return False
    expected = F.layer_norm(x.movedim(1, -1), shape, module.weight, module.bias, module.eps)
    tolerance = 1e-4 if x.dtype == torch.float32 else 1e-2
    same = isinstance(out, Tensor) and out.shape == x.shape
    return bool(same and torch.allclose(out, expected.movedim(-1, 1), atol=tolerance))


def normalised_axes(module: nn.Module, ndim: int) -> set[int] | None:
    """The axes a LayerNorm (or a ZeroCountingLayerNorm) of an `ndim` input normalises
    over: its trailing ones, or dim 1 for a channels-first one; None for a subclass whose
    `forward` does something else."""
    if isinstance(module, ZeroCountingLayerNorm):
        return {module.channel_dim % ndim}
    if not isinstance(module, nn.LayerNorm):
        return None
    if type(module).forward is nn.LayerNorm.forward:
        return set(range(ndim - len(module.normalized_shape), ndim))
    return {1} if channels_first_layer_norm(module) else None


def rebuilt(module: nn.Module, idx: Tensor, axis: int, ndim: int) -> ZeroCountingLayerNorm:
    """`module` keeping the channels `idx`, counting the others as zeros."""
    dim = -1 if axis == ndim - 1 else axis
    return ZeroCountingLayerNorm.of(module, idx, dim)
