"""LayerNorm over channels some of which were removed: statistics that still count them.

A LayerNorm over the channels (ConvNeXt's blocks, its channels-first `LayerNorm2d`, a
transformer's residual stream) reads every channel in its mean and variance, so a
channel cannot simply go: LayerNorm over C − k channels divides by C − k, not C. When
the removed channels are exactly 0 at its input and its own scale and shift at them
are 0 (what `shrink_graph` checks, after zeroing them for the units `prune_units`
drops), the layer over the kept channels is exact if its statistics count the k zeros:

    μ = Σ x / C,   σ² = (Σ (x − μ)² + k μ²) / C

`ZeroCountingLayerNorm` computes that (C = `total`), over the last axis or, for a
channels-first map, over dim 1, as torch's LayerNorm over the kept channels padded with
the k zeros: it exports to ONNX as a Pad, one LayerNormalization and a Slice.

A GroupNorm with one group (timm's `GroupNorm1`, PoolFormer's norm) normalises each
sample over its channels and positions together, and is the same case:
`ZeroCountingGroupNorm` pads the kept channels with the removed zeros before torch's
group norm. (With several groups a group's channels go together instead: `graph_trace`.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.base import Config, SerializableLayer
from .norm_probe import computes
from .response_norm import ZeroCountingResponseNorm, response_norm_layout
from .rms_norm import ZeroCountingRMSNorm, is_rms_norm

_NOT_WRITTEN = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, SerializableLayer)
"""Modules `layer_norm_layout` does not probe as a LayerNorm written out."""

__all__ = [
    "ZeroCountingGroupNorm",
    "ZeroCountingLayerNorm",
    "group_norm_layout",
    "layer_norm_layout",
    "normalised_axes",
    "rebuilt",
]


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
        total = norm.total if isinstance(norm, cls) else int(norm.weight.numel())
        weight, bias = norm.weight, norm.bias
        affine = weight is not None
        new = cls(len(idx), total, float(norm.eps), affine, bias is not None, channel_dim)
        for name, t in (("weight", weight), ("bias", bias)):
            if t is not None:
                cut = t.detach().index_select(0, idx.to(t.device)).clone()
                setattr(new, name, nn.Parameter(cut, t.requires_grad))
        return new

    def forward(self, x: Tensor) -> Tensor:
        """torch's LayerNorm over the kept channels and `total − kept` zeros after them
        (so it exports as one fused LayerNormalization between a Pad and a Slice, about
        twice as fast in onnxruntime as the statistics written out)."""
        dim, last = self.channel_dim % x.ndim, x.ndim - 1  # ONNX wants positive dims
        moved = x.movedim(dim, last) if dim != last else x
        zeros = (0, self.total - self.kept)
        weight = None if self.weight is None else F.pad(self.weight, zeros)
        bias = None if self.bias is None else F.pad(self.bias, zeros)
        y = F.layer_norm(F.pad(moved, zeros), (self.total,), weight, bias, self.eps)
        y = y[..., : self.kept]
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


class ZeroCountingGroupNorm(SerializableLayer):
    """GroupNorm with one group over `kept` channels of `total` (dim 1), the others zeros."""

    def __init__(self, kept: int, total: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        if not 0 < kept <= total:
            raise ValueError(f"kept ({kept}) must be in 1..total ({total})")
        self.kept, self.total, self.eps = kept, total, eps
        self.weight = nn.Parameter(torch.ones(kept)) if affine else None
        self.bias = nn.Parameter(torch.zeros(kept)) if affine else None

    @classmethod
    def of(cls, norm: nn.Module, idx: Tensor) -> ZeroCountingGroupNorm:
        """The channels `idx` of a one-group GroupNorm (or of a ZeroCountingGroupNorm)."""
        total = norm.total if isinstance(norm, cls) else int(norm.num_channels)
        new = cls(len(idx), total, float(norm.eps), norm.weight is not None)
        for name in ("weight", "bias"):
            t = getattr(norm, name)
            if t is not None:
                cut = t.detach().index_select(0, idx.to(t.device)).clone()
                setattr(new, name, nn.Parameter(cut, t.requires_grad))
        return new

    def forward(self, x: Tensor) -> Tensor:
        """torch's group norm over the kept channels and `total − kept` zeros after them."""
        zeros = (0, self.total - self.kept)
        padded = F.pad(x, (0, 0) * (x.ndim - 2) + zeros)  # dim 1: the channels
        weight = None if self.weight is None else F.pad(self.weight, zeros)
        bias = None if self.bias is None else F.pad(self.bias, zeros)
        return F.group_norm(padded, 1, weight, bias, self.eps)[:, : self.kept]

    def config(self) -> Config:
        return {
            "kept": self.kept,
            "total": self.total,
            "eps": self.eps,
            "affine": self.weight is not None,
        }

    def extra_repr(self) -> str:
        return f"{self.kept} of {self.total}, eps={self.eps}"


def one_group_norm(module: nn.Module) -> bool:
    """A GroupNorm with one group that computes torch's (its own `forward` proven by
    `group_norm_layout`), or a ZeroCountingGroupNorm."""
    if isinstance(module, ZeroCountingGroupNorm):
        return True
    if not isinstance(module, nn.GroupNorm) or module.num_groups != 1:
        return False
    return type(module).forward is nn.GroupNorm.forward or group_norm_layout(module)


def group_norm_layout(module: nn.Module) -> bool:
    """A subclass of nn.GroupNorm with its own `forward` (timm's GroupNorm1, which may
    call a fused kernel) that computes F.group_norm: proven on a random input. The graph
    then reads it whole, as a GroupNorm."""
    if not isinstance(module, nn.GroupNorm) or type(module).forward is nn.GroupNorm.forward:
        return False
    weight = module._parameters.get("weight")  # not through fx's patched attribute reads
    if weight is not None and (weight.is_meta or not weight.is_floating_point()):
        return False
    bias = module._parameters.get("bias")
    kind = {"device": weight.device, "dtype": weight.dtype} if weight is not None else {}
    x = torch.randn(2, module.num_channels, 3, 4, generator=torch.Generator().manual_seed(0))
    x = x.to(**kind)
    expected = F.group_norm(x, module.num_groups, weight, bias, module.eps)
    return _computes(module, x, expected)


def layer_norm_layout(module: nn.Module) -> int | None:
    """Where a subclass of nn.LayerNorm with its own `forward`, or a module of its own
    that holds exactly a `weight` and a `bias` of one value per channel and an `eps`,
    normalises: -1 (the last axis, as timm's LayerNorm, which may call a fused kernel,
    or Hugging Face's ConvNeXt norm) or 1 (dim 1 of a map, as torchvision's and timm's
    `LayerNorm2d`, or one written out as `(x - mean) / sqrt(var + eps)` over dim 1, as
    Segment Anything's and Hugging Face's); None when it computes something else.
    Proven by running it on random inputs against F.layer_norm. The graph then reads
    such a module whole, as a LayerNorm."""
    if isinstance(module, nn.LayerNorm):
        if type(module).forward is nn.LayerNorm.forward:
            return None
        shape = tuple(module.normalized_shape)
    else:
        shape = _written_norm_shape(module)
        if shape is None:
            return None
    weight = module._parameters.get("weight")  # not through fx's patched attribute reads
    if len(shape) != 1 or (
        weight is not None and (weight.is_meta or not weight.is_floating_point())
    ):
        return None
    bias = module._parameters.get("bias")
    kind = {"device": weight.device, "dtype": weight.dtype} if weight is not None else {}
    gen = torch.Generator().manual_seed(0)
    for layout, dims in ((-1, (2, 3, 5, shape[0])), (1, (2, shape[0], 3, 4))):
        x = torch.randn(dims, generator=gen).to(**kind)
        expected = F.layer_norm(x.movedim(layout, -1), shape, weight, bias, module.eps)
        if _computes(module, x, expected.movedim(-1, layout)):
            return layout
    return None


def _written_norm_shape(module: nn.Module) -> tuple[int] | None:
    """(C,) for a module that may be a LayerNorm written out: no children, exactly a
    `weight` and a `bias` of C values, a number `eps`, and none of torch's norms."""
    if isinstance(module, _NOT_WRITTEN) or next(module.children(), None) is not None:
        return None
    params = dict(module.named_parameters(recurse=False))
    weight, bias = params.get("weight"), params.get("bias")
    if set(params) != {"weight", "bias"} or weight.ndim != 1 or bias.shape != weight.shape:
        return None
    eps = getattr(module, "eps", None)
    if not isinstance(eps, float | int) or isinstance(eps, bool):
        return None
    return (weight.numel(),)


def _computes(module: nn.Module, x: Tensor, expected: Tensor) -> bool:
    """Whether `module(x)` (eval mode, no grad) is `expected`."""
    return computes(module, x, expected, atol=1e-4 if x.dtype == torch.float32 else 1e-2)


def normalised_axes(module: nn.Module, ndim: int) -> set[int] | None:
    """The axes a LayerNorm (or a ZeroCountingLayerNorm) of an `ndim` input normalises
    over: its trailing ones, or dim 1 for a channels-first one; None for a subclass whose
    `forward` does something else."""
    if isinstance(module, ZeroCountingLayerNorm):
        return {module.channel_dim % ndim}
    if isinstance(module, nn.LayerNorm) and type(module).forward is nn.LayerNorm.forward:
        return set(range(ndim - len(module.normalized_shape), ndim))
    layout = layer_norm_layout(module)
    return None if layout is None else {layout % ndim}


def rebuilt(module: nn.Module, idx: Tensor, axis: int, ndim: int) -> nn.Module:
    """`module` keeping the channels `idx`, counting the others as zeros."""
    if isinstance(module, nn.GroupNorm | ZeroCountingGroupNorm):
        return ZeroCountingGroupNorm.of(module, idx)
    dim = -1 if axis == ndim - 1 else axis
    if response_norm_layout(module) is not None:
        return ZeroCountingResponseNorm.of(module, idx, dim)
    if is_rms_norm(module):
        return ZeroCountingRMSNorm.of(module, idx)
    return ZeroCountingLayerNorm.of(module, idx, dim)
