"""RMSNorm over channels some of which were removed: a mean square that still counts them.

RMSNorm (Zhang & Sennrich 2019; Llama's, Mistral's, Qwen's and T5's residual streams,
torch's `nn.RMSNorm`) scales each token by the root mean square of its channels:

    y = w · x / sqrt(Σ x² / C + ε)

The mean reads every channel, so a channel cannot simply go: over C − k channels it
divides by C − k, not C. A removed channel that is exactly 0 adds 0 to the sum, so the
layer over the kept channels is exact when it divides by the original count.
`ZeroCountingRMSNorm` computes that, as torch's RMSNorm over the kept channels padded
with the k zeros (it exports as a Pad, the norm and a Slice). A module is read as an
RMSNorm when it is torch's or a probe shows that it computes the formula above over the
last axis: a module of one `weight` of C values and an `eps` or `variance_epsilon`
(Hugging Face's `LlamaRMSNorm`, `T5LayerNorm`), or one that scales by 1 + w (Gemma's),
which becomes a `ZeroCountingRMSNorm` with the scale 1 + w.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.base import Config, SerializableLayer
from .norm_probe import computes

__all__ = ["ZeroCountingRMSNorm", "is_rms_norm", "rms_norm_offset"]

_EPS_NAMES = ("eps", "variance_epsilon")
"""Where a written RMSNorm keeps its ε (torch and Mistral: `eps`; Llama, T5: the other)."""


class ZeroCountingRMSNorm(SerializableLayer):
    """RMSNorm over `kept` channels of `total` on the last axis, the others zeros."""

    def __init__(
        self, kept: int, total: int, eps: float | None = None, affine: bool = True
    ) -> None:
        super().__init__()
        if not 0 < kept <= total:
            raise ValueError(f"kept ({kept}) must be in 1..total ({total})")
        self.kept, self.total, self.eps = kept, total, eps
        self.weight = nn.Parameter(torch.ones(kept)) if affine else None

    @classmethod
    def of(cls, norm: nn.Module, idx: Tensor) -> ZeroCountingRMSNorm:
        """The channels `idx` of an RMSNorm (torch's, one a probe proved, or this); a
        norm that scales by 1 + w (Gemma's) gives the scale 1 + w here."""
        total = norm.total if isinstance(norm, cls) else int(norm.weight.numel())
        weight, offset = norm.weight, rms_norm_offset(norm)
        new = cls(len(idx), total, _eps(norm), weight is not None)
        if weight is not None:
            cut = weight.detach().index_select(0, idx.to(weight.device)).clone() + offset
            new.weight = nn.Parameter(cut, weight.requires_grad)
        return new

    def forward(self, x: Tensor) -> Tensor:
        zeros = (0, self.total - self.kept)
        weight = None if self.weight is None else F.pad(self.weight, zeros)
        return F.rms_norm(F.pad(x, zeros), (self.total,), weight, self.eps)[..., : self.kept]

    def config(self) -> Config:
        return {"kept": self.kept, "total": self.total, "eps": self.eps,
                "affine": self.weight is not None}  # fmt: skip

    def extra_repr(self) -> str:
        return f"{self.kept} of {self.total}, eps={self.eps}"


def _eps(module: nn.Module) -> float | None:
    for name in _EPS_NAMES:
        value = getattr(module, name, None)
        if isinstance(value, float | int) and not isinstance(value, bool):
            return float(value)
    return None


def is_rms_norm(module: nn.Module) -> bool:
    """Whether `module` is an RMSNorm over the last axis (module docstring)."""
    return rms_norm_offset(module) is not None


def rms_norm_offset(module: nn.Module) -> float | None:
    """0 for an RMSNorm over the last axis that scales by its weight w: torch's, a
    ZeroCountingRMSNorm, or a module of one `weight` (C values) and an ε, no children,
    that computes it on random inputs in eval mode with its weight set to random values;
    1 for one that scales by 1 + w (Gemma's); None for any other module."""
    if isinstance(module, ZeroCountingRMSNorm):
        return 0.0
    if isinstance(module, nn.RMSNorm):
        plain = type(module).forward is nn.RMSNorm.forward and len(module.normalized_shape) == 1
        return 0.0 if plain else None
    if isinstance(module, SerializableLayer) or next(module.children(), None) is not None:
        return None
    params = dict(module.named_parameters(recurse=False))
    weight, eps = params.get("weight"), _eps(module)
    if set(params) != {"weight"} or eps is None or weight.ndim != 1 or weight.is_meta:
        return None
    if not weight.is_floating_point():
        return None
    c, gen = weight.numel(), torch.Generator().manual_seed(0)
    probe = (torch.rand(c, generator=gen) + 0.5).to(weight)
    x = torch.randn(2, 3, c, generator=gen).to(weight)
    for offset in (0.0, 1.0):  # the formula, not the precision: Llama's computes in float32
        expected = F.rms_norm(x, (c,), probe + offset, eps)
        if computes(module, x, expected, atol=1e-4, rtol=1e-4, values={"weight": probe}):
            return offset
    return None
