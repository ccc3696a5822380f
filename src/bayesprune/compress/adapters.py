"""One view of every prunable layer: variational layers as they are, plain ones adapted.

Compression code reads and rebuilds layers through `as_prunable(module)`, which
returns the variational layer itself or a `PlainLayer` that gives a plain
`nn.Linear` / `nn.Conv1d` / `2d` / `3d` the same few methods (a posterior with zero spread,
`select`, `fold_into_bias`, `set_weight_mask`, `to_deterministic`). So the
deterministic baseline goes through exactly the same code as the Bayesian models.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize, prune

from ..nn.base import Posterior, VariationalLayer
from ..nn.family import CONVOLUTIONS  # nn.Conv1d / 2d / 3d: read like any layer

TRANSPOSED: tuple[type[nn.Module], ...] = (
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
"""Transposed convolutions: read and sliced by shrink_graph (`TransposedLayer`)."""
FROZEN_NORMS = {("torchvision.ops.misc", "FrozenBatchNorm2d")}
"""BatchNorms of other libraries (module, class name; not imported here) with fixed
statistics and affine buffers, computed as x · scale + shift per channel: torchvision's,
in every detector built on pretrained weights. Graph leaves and followers, sliced as a
BatchNorm (`shrink_graph`), described by a codec (`serialize`)."""


def is_frozen_norm(kind: type[nn.Module]) -> bool:
    """Whether `kind` is one of the `FROZEN_NORMS`."""
    return (kind.__module__, kind.__name__) in FROZEN_NORMS


SAME_PADDING_CONVS = {("timm.layers.conv2d_same", "Conv2dSame")}
"""nn.Conv2d subclasses of other libraries (module, class name; not imported here) that
pad their input as TensorFlow's "SAME" does, by an amount computed from its size
(`same_padding`), then convolve their own weight: timm's, in every `tf_` model ported
from TensorFlow (EfficientNet, MobileNetV3, MixNet). fx cannot trace that arithmetic, so
they are graph leaves, read as convolutions; they stay deterministic under `convert`
and keep their class when sliced."""


def is_same_padding_conv(kind: type[nn.Module]) -> bool:
    """Whether `kind` is one of the `SAME_PADDING_CONVS`."""
    return (kind.__module__, kind.__name__) in SAME_PADDING_CONVS


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """Zeros before and after one axis of `size` under TensorFlow's "SAME" padding: the
    output has ceil(size / stride) positions, the odd zero goes after."""
    total = max((-(-size // stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class Prunable(Protocol):
    """The part of `VariationalLayer`'s interface that compression uses."""

    def posterior(self) -> Posterior: ...

    def select(self, out_idx: Tensor | None = None, in_idx: Tensor | None = None) -> nn.Module: ...

    def fold_into_bias(self, mean: Tensor, var: Tensor | None = None) -> None: ...

    @property
    def merges_input_columns(self) -> bool: ...

    def merge_input_columns(self, into: int, ratios: Tensor) -> None: ...

    def set_weight_mask(self, mask: Tensor | None) -> None: ...

    def to_deterministic(self) -> nn.Module: ...


class PlainLayer:
    """A plain Linear / Conv1d / 2d / 3d seen through the variational interface (weights
    are exact).

    Works on layers pruned with `torch.nn.utils.prune` too: `.weight` is then the
    masked weight, and `select` returns a fresh layer without the pruning hooks.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def posterior(self) -> Posterior:
        w = self.module.weight.detach()
        b = None if self.module.bias is None else self.module.bias.detach()
        return Posterior(
            weight_mean=w,
            weight_std=torch.zeros_like(w),
            bias_mean=b,
            bias_std=None if b is None else torch.zeros_like(b),
        )

    def select(self, out_idx: Tensor | None = None, in_idx: Tensor | None = None) -> nn.Module:
        m = self.module
        w = m.weight.detach()
        out_idx = torch.arange(w.shape[0]) if out_idx is None else out_idx
        in_idx = torch.arange(w.shape[1]) if in_idx is None else in_idx
        out_idx, in_idx = out_idx.to(w.device), in_idx.to(w.device)
        if is_same_padding_conv(type(m)):  # its own forward pads: keep the class
            return self._sliced_copy(out_idx, in_idx)
        if isinstance(m, CONVOLUTIONS) and m.groups != 1:
            raise NotImplementedError("selecting channels of a grouped convolution")
        bias = None if m.bias is None else m.bias.detach()[out_idx]
        return self._rebuilt(w.index_select(0, out_idx).index_select(1, in_idx), bias)

    def plain_copy(self) -> nn.Module:
        """The layer rebuilt as its torch type (no subclass, hook or parametrization),
        groups included, holding the weight and bias it computes with now."""
        m = self.module
        bias = None if m.bias is None else m.bias.detach()
        return self._rebuilt(m.weight.detach(), bias, getattr(m, "groups", 1))

    def _rebuilt(self, weight: Tensor, bias: Tensor | None, groups: int = 1) -> nn.Module:
        """A fresh layer of the torch type (not a subclass: no own forward, hook or
        parametrization) holding `weight` (out × in / groups × k…) and `bias`, in the
        layer's train / eval mode."""
        m = self.module
        n_out, n_in = weight.shape[0], weight.shape[1] * groups
        if isinstance(m, CONVOLUTIONS):
            kind = next(c for c in CONVOLUTIONS if isinstance(m, c))
            new: nn.Module = kind(
                n_in, n_out, m.kernel_size, m.stride, m.padding, m.dilation, groups=groups,
                bias=bias is not None, padding_mode=m.padding_mode,
            )  # fmt: skip
        else:
            new = nn.Linear(n_in, n_out, bias=bias is not None)
        new = new.to(weight)
        with torch.no_grad():
            new.weight.copy_(weight)
            if bias is not None:
                new.bias.copy_(bias)
        new.train(m.training)
        return new

    def _sliced_copy(self, out_idx: Tensor, in_idx: Tensor) -> nn.Module:
        """A copy of the layer, its own class, with output units `out_idx` and input
        channels `in_idx` (ungrouped)."""
        m = self.module
        if m.groups != 1:
            raise NotImplementedError("selecting channels of a grouped convolution")
        new = copy.deepcopy(m)
        weight = m.weight.detach().index_select(0, out_idx).index_select(1, in_idx).clone()
        new.weight = nn.Parameter(weight, m.weight.requires_grad)
        if m.bias is not None:
            new.bias = nn.Parameter(m.bias.detach()[out_idx].clone(), m.bias.requires_grad)
        new.out_channels, new.in_channels = len(out_idx), len(in_idx)
        return new

    def fold_into_bias(self, mean: Tensor, var: Tensor | None = None) -> None:
        """Add `mean` to the bias (a plain weight is exact, so `var` is 0 and ignored)."""
        if self.module.bias is None:
            raise NotImplementedError("a layer without bias cannot absorb a constant input")
        with torch.no_grad():
            self.module.bias.add_(mean.to(self.module.bias))

    @property
    def merges_input_columns(self) -> bool:
        """An ungrouped layer without a torch.nn.utils.prune mask (which would re-mask the
        merged column)."""
        return getattr(self.module, "groups", 1) == 1 and not hasattr(self.module, "weight_orig")

    def merge_input_columns(self, into: int, ratios: Tensor) -> None:
        """Column `into` ← Σ_j ratios[j] · column j (see `VariationalLayer`)."""
        if not self.merges_input_columns:
            raise NotImplementedError("merging columns of a grouped or torch-pruned layer")
        w = self.module.weight
        r = ratios.to(w).view(1, -1, *(1,) * (w.ndim - 2))
        with torch.no_grad():
            w[:, into] = (w.detach() * r).sum(1)

    def set_weight_mask(self, mask: Tensor | None) -> None:
        """Zero the pruned weights in place (a plain layer has no separate mask)."""
        if mask is None:
            return
        w = self.module.weight
        if mask.shape != w.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} != weight shape {tuple(w.shape)}")
        target = getattr(self.module, "weight_orig", w)  # torch.nn.utils.prune keeps the original
        with torch.no_grad():
            target.mul_(mask.to(target))

    def to_deterministic(self) -> nn.Module:
        return copy_model(self.module)


class _TransposedWeights(nn.Module):
    """The weights of a transposed convolution as an ordinary layer holds them: out × in × k…"""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.weight = module.weight.detach().transpose(0, 1)
        self.bias = None if module.bias is None else module.bias.detach()


class TransposedLayer:
    """A plain nn.ConvTranspose1d / 2d / 3d seen through the variational interface, its
    weight (stored in × out × k…) turned to a layer's out × in × k…: graph compression then
    reads, masks and slices it like any convolution. Nothing folds into it (a constant
    through a strided transposed convolution is not a constant)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def posterior(self) -> Posterior:
        view = _TransposedWeights(self.module)
        bias = view.bias
        return Posterior(
            weight_mean=view.weight,
            weight_std=torch.zeros_like(view.weight),
            bias_mean=bias,
            bias_std=None if bias is None else torch.zeros_like(bias),
        )

    def select(self, out_idx: Tensor | None = None, in_idx: Tensor | None = None) -> nn.Module:
        m = self.module
        new = copy.deepcopy(m)
        w = m.weight.detach()
        in_idx = torch.arange(w.shape[0]) if in_idx is None else in_idx
        out_idx = torch.arange(w.shape[1]) if out_idx is None else out_idx
        in_idx, out_idx = in_idx.to(w.device), out_idx.to(w.device)
        weight = w.index_select(0, in_idx).index_select(1, out_idx).clone()
        new.weight = nn.Parameter(weight, m.weight.requires_grad)
        if m.bias is not None:
            new.bias = nn.Parameter(m.bias.detach()[out_idx].clone(), m.bias.requires_grad)
        new.in_channels, new.out_channels = len(in_idx), len(out_idx)
        return new

    def fold_into_bias(self, mean: Tensor, var: Tensor | None = None) -> None:
        raise NotImplementedError("a constant through a transposed convolution is not a bias")

    merges_input_columns = False  # nothing is merged into it either

    def merge_input_columns(self, into: int, ratios: Tensor) -> None:
        raise NotImplementedError("a constant through a transposed convolution is not merged")

    def set_weight_mask(self, mask: Tensor | None) -> None:
        """Zero the pruned weights in place; `mask` in the out × in × k… layout."""
        if mask is not None:
            with torch.no_grad():
                self.module.weight.mul_(mask.transpose(0, 1).to(self.module.weight))

    def to_deterministic(self) -> nn.Module:
        return _TransposedWeights(self.module)


PLAIN_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, *CONVOLUTIONS)
"""The torch layers `PlainLayer` adapts."""


def is_prunable(module: nn.Module) -> bool:
    """A layer with weights compression can score: variational, or plain Linear / Conv1d /
    2d / 3d."""
    return isinstance(module, (VariationalLayer, nn.Linear, *CONVOLUTIONS))


def as_prunable(module: nn.Module) -> Prunable:
    """The layer itself if variational, else a `PlainLayer` adapter for Linear / Conv1d /
    2d / 3d (a `TransposedLayer` for an ungrouped transposed convolution)."""
    if isinstance(module, VariationalLayer):
        return module  # type: ignore[return-value]
    if isinstance(module, (nn.Linear, *CONVOLUTIONS)):
        return PlainLayer(module)
    if isinstance(module, TRANSPOSED) and module.groups == 1:
        return TransposedLayer(module)  # read and sliced by shrink_graph only
    raise TypeError(
        f"{type(module).__name__} is not a prunable layer; compression handles variational "
        "layers (bayesprune.nn) and plain nn.Linear / nn.Conv1d / 2d / 3d"
    )


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every prunable layer in module order (variational layers not entered)."""
    found: list[tuple[str, nn.Module]] = []

    def walk(prefix: str, module: nn.Module) -> None:
        if is_prunable(module):
            found.append((prefix, module))
            return
        for name, child in module.named_children():
            walk(f"{prefix}.{name}" if prefix else name, child)

    walk("", model)
    return found


def copy_model(model: nn.Module) -> nn.Module:
    """`copy.deepcopy` that also works on layers pruned with torch.nn.utils.prune.

    torch stores such a layer's masked weight as a non-leaf tensor attribute, which
    deepcopy refuses; the attribute is recomputed by the pruning hook at every forward,
    so replacing it by its detached value (same numbers) first is harmless.
    """
    for module in model.modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, prune.BasePruningMethod):
                name = hook._tensor_name
                setattr(module, name, getattr(module, name).detach())
    return copy.deepcopy(model)


def bake_parametrizations(model: nn.Module) -> int:
    """Replace (in place) every plain Linear / Conv under a parametrization
    (`weight_norm`, `spectral_norm`, a user's `register_parametrization`) by a plain
    layer holding the weight it computes now; the number replaced. Shrinking slices and
    masks plain tensors (a weight norm would renormalise the rows it cuts, and is
    removed for inference anyway). torch's own `remove_parametrizations` is not used:
    a deep copy shares its parametrized class with the original, whose weight it would
    delete too."""
    found = [
        (name, module)
        for name, module in model.named_modules()
        if name and parametrize.is_parametrized(module) and isinstance(module, PLAIN_LAYERS)
    ]
    for name, module in found:
        parent, _, attr = name.rpartition(".")
        setattr(
            model.get_submodule(parent) if parent else model, attr, PlainLayer(module).plain_copy()
        )
    return len(found)


def mask_rows(model: nn.Module, name: str, rows: Sequence[int], columns: bool = False) -> None:
    """Zero the incoming weights of units `rows` of layer `name` (combined with its mask);
    with `columns`, zero its weights on inputs `rows` instead."""
    module = model.get_submodule(name)
    layer, current = as_prunable(module), getattr(module, "weight_mask", None)
    weight = layer.to_deterministic().weight.detach()
    mask = torch.ones_like(weight) if current is None else current.detach().clone()
    if columns:
        mask[:, list(rows)] = 0
    else:
        mask[list(rows)] = 0
    layer.set_weight_mask(mask)
