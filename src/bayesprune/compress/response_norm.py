"""Global response normalisation (ConvNeXt-V2's GRN) over channels some of which were
removed: a mean that still counts them.

GRN scales each channel by its spatial L2 norm divided by the mean of those norms over
the channels, then adds a per-channel scale and shift (Woo et al. 2023):

    g_c = ‖x_c‖₂ over the positions,   y = x + β + γ · x · g_c / (mean_c g + ε)

The mean reads every channel, so a channel cannot simply go: over C − k channels it
divides by C − k, not C. A removed channel that is exactly 0 adds 0 to the sum, and its
output is then β there (a constant the next layer folds, or 0 once zeroed), so the
layer over the kept channels is exact when its mean divides by the original count.
`ZeroCountingResponseNorm` computes that. A module is read as GRN when a probe shows it
computes the formula above (timm's `GlobalResponseNorm`, channels last or first, and
any module of the same two parameters that does).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..nn.base import Config, SerializableLayer
from .norm_probe import computes

__all__ = ["ZeroCountingResponseNorm", "response_norm_layout"]

_NOT_PROBED = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, SerializableLayer)
"""Modules with a scale, a shift and an eps that are known to be something else."""


def _response_norm(
    x: Tensor, weight: Tensor, bias: Tensor, eps: float, dim: int, total: int
) -> Tensor:
    """GRN of `x` with its channels on `dim` (1 or -1), the mean over `total` channels."""
    spatial = (2, 3) if dim == 1 else (1, 2)
    shape = (1, -1, 1, 1) if dim == 1 else (1, 1, 1, -1)
    g = x.norm(p=2, dim=spatial, keepdim=True)
    n = g / (g.sum(dim=dim, keepdim=True) / total + eps)
    return x + bias.view(shape) + weight.view(shape) * (x * n)


class ZeroCountingResponseNorm(SerializableLayer):
    """GRN over `kept` channels of `total` (on `channel_dim`, 1 or -1), the others zeros."""

    def __init__(self, kept: int, total: int, eps: float = 1e-6, channel_dim: int = -1) -> None:
        super().__init__()
        if not 0 < kept <= total or channel_dim not in (1, -1):
            raise ValueError(f"kept ({kept}) must be in 1..total ({total}), channel_dim 1 or -1")
        self.kept, self.total, self.eps, self.channel_dim = kept, total, eps, channel_dim
        self.weight = nn.Parameter(torch.zeros(kept))
        self.bias = nn.Parameter(torch.zeros(kept))

    @classmethod
    def of(cls, norm: nn.Module, idx: Tensor, channel_dim: int) -> ZeroCountingResponseNorm:
        """The channels `idx` of a GRN module (or of a ZeroCountingResponseNorm)."""
        total = norm.total if isinstance(norm, cls) else int(norm.weight.numel())
        new = cls(len(idx), total, float(norm.eps), channel_dim)
        for name in ("weight", "bias"):
            t = getattr(norm, name)
            cut = t.detach().index_select(0, idx.to(t.device)).clone()
            setattr(new, name, nn.Parameter(cut, t.requires_grad))
        return new

    def forward(self, x: Tensor) -> Tensor:
        return _response_norm(x, self.weight, self.bias, self.eps, self.channel_dim, self.total)

    def config(self) -> Config:
        return {"kept": self.kept, "total": self.total, "eps": self.eps,
                "channel_dim": self.channel_dim}  # fmt: skip

    def extra_repr(self) -> str:
        return f"{self.kept} of {self.total}, eps={self.eps}, channel_dim={self.channel_dim}"


def response_norm_layout(module: nn.Module) -> int | None:
    """Where a module computes GRN (module docstring) over 4-d inputs: -1 (channels last)
    or 1 (channels first); None when it is not one. Only a module with no children and
    exactly the parameters `weight` and `bias` (one value per channel) and an `eps` is
    probed, on random inputs in eval mode."""
    if isinstance(module, ZeroCountingResponseNorm):
        return module.channel_dim
    if isinstance(module, _NOT_PROBED) or next(module.children(), None) is not None:
        return None
    params = dict(module.named_parameters(recurse=False))
    weight, bias, eps = params.get("weight"), params.get("bias"), getattr(module, "eps", None)
    if set(params) != {"weight", "bias"} or not isinstance(eps, float):
        return None
    if weight.ndim != 1 or bias.shape != weight.shape or not weight.is_floating_point():
        return None
    if weight.is_meta:
        return None
    c, gen = weight.numel(), torch.Generator().manual_seed(0)
    probe_w = torch.rand(c, generator=gen).to(weight) + 0.5
    probe_b = torch.randn(c, generator=gen).to(weight)
    for dim, shape in ((-1, (2, 3, 4, c)), (1, (2, c, 3, 4))):
        x = torch.randn(shape, generator=gen).to(weight)
        expected = _response_norm(x, probe_w, probe_b, eps, dim, c)
        if _computes_with(module, probe_w, probe_b, x, expected):
            return dim
    return None


def _computes_with(
    module: nn.Module, weight: Tensor, bias: Tensor, x: Tensor, expected: Tensor
) -> bool:
    """Whether `module(x)`, its parameters set to `weight` and `bias` for the call (its
    own zeros would hide the scale), is `expected`; the module is put back."""
    atol = 1e-4 if x.dtype == torch.float32 else 1e-8
    return computes(module, x, expected, atol, rtol=1e-4, values={"weight": weight, "bias": bias})
