"""The chain `shrink` walks: the prunable layers of an nn.Sequential and what lies between.

`Chain` unrolls nested Sequentials into slots, runs a dummy batch to record every
module's input and output shapes, and checks that units pass through the modules
between two prunable layers one to one (activations, pooling; `PASSTHROUGH` or
layers that declare `channelwise = True`) or H·W to one across a flatten.
`SelectInputs` is the module `shrink` puts before the first layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..nn.base import evaluation_pass
from .adapters import as_prunable, is_prunable

PASSTHROUGH: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Softsign, nn.Hardtanh, nn.Hardswish,
    nn.Hardsigmoid, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.AlphaDropout, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d,
    nn.AvgPool3d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool3d,
)  # fmt: skip
"""Module types that act on each unit (channel) apart; extend with `shrink(passthrough=...)`.
bayesprune's own such layers say so themselves (`channelwise = True`).
(nn.PReLU must have a single shared parameter.) A passthrough type seen turning
(B, C, H, W) into (B, C·H·W) on the dummy input is taken as a channel-major flatten."""


class SelectInputs(nn.Module):
    """Keep the input features `index` along `dim` (what `shrink` puts before the first layer)."""

    def __init__(self, index: Sequence[int] | Tensor, dim: int = -1) -> None:
        super().__init__()
        self.dim = int(dim)
        self.register_buffer("index", torch.as_tensor(index, dtype=torch.long).clone())

    def forward(self, x: Tensor) -> Tensor:
        return x.index_select(self.dim, self.index)

    def extra_repr(self) -> str:
        return f"n={self.index.numel()}, dim={self.dim}"


@dataclass
class Slot:
    parent: nn.Module
    key: str
    name: str

    def get(self) -> nn.Module:
        return self.parent._modules[self.key]  # type: ignore[return-value]

    def set(self, module: nn.Module) -> None:
        self.parent._modules[self.key] = module


def leaves(model: nn.Module) -> list[Slot]:
    """The modules a Sequential chain applies, in order (nested Sequentials unrolled)."""
    if not isinstance(model, nn.Sequential):
        raise TypeError(
            f"shrink needs an nn.Sequential chain or example inputs, got "
            f"{type(model).__name__} without them; for a model with its own forward "
            "(residual additions, concatenations, BatchNorm) pass one batch: "
            "compress.shrink(model, example_inputs=x)"
        )
    slots: list[Slot] = []

    def walk(seq: nn.Sequential, prefix: str) -> None:
        for key, child in seq.named_children():
            name = f"{prefix}{key}"
            if isinstance(child, nn.Sequential):
                walk(child, f"{name}.")
            elif not is_prunable(child) and any(is_prunable(m) for m in child.modules()):
                raise TypeError(
                    f"module {name!r} ({type(child).__name__}) holds prunable layers but is not "
                    "an nn.Sequential, so shrink cannot follow units through it"
                )
            else:
                slots.append(Slot(seq, key, name))

    walk(model, "")
    return slots


def first_tensor(value: Any) -> Tensor:
    while isinstance(value, tuple | list):  # e.g. moment layers return (mean, cov)
        value = value[0]
    return value


def trace_shapes(model: nn.Module, slots: list[Slot], x: Tensor) -> dict[str, tuple[tuple, tuple]]:
    """(input shape, output shape) of every leaf on one dummy example."""
    shapes: dict[str, tuple[tuple, tuple]] = {}
    handles = []
    for slot in slots:

        def hook(module: nn.Module, args: tuple, out: Any, name: str = slot.name) -> None:
            shapes[name] = (tuple(first_tensor(args).shape), tuple(first_tensor(out).shape))

        handles.append(slot.get().register_forward_hook(hook))
    try:
        with evaluation_pass(model, handles):
            model(x)
    except RuntimeError as err:
        raise ValueError(
            f"a dummy input of shape {tuple(x.shape)} does not fit the model ({err}); pass "
            "input_shape as the shape of ONE example without the batch dimension, e.g. (1, 28, 28)"
        ) from err
    return shapes


def deployed_weight(layer: nn.Module) -> Tensor:
    plain = as_prunable(layer).to_deterministic()
    return plain.weight.detach()  # type: ignore[union-attr]


class Chain:
    """The prunable layers of a chain, the modules between them and the unit → column maps."""

    def __init__(
        self,
        model: nn.Module,
        input_shape: Sequence[int] | None,
        passthrough: tuple[type[nn.Module], ...],
    ) -> None:
        self.model = model
        self.slots = leaves(model)
        self.layer_pos = [i for i, s in enumerate(self.slots) if is_prunable(s.get())]
        if not self.layer_pos:
            raise ValueError("the model has no prunable layer (Linear, Conv2d or variational)")
        first = deployed_weight(self.slots[self.layer_pos[0]].get())
        if input_shape is None:
            if first.ndim != 2:
                raise ValueError(
                    "shrink needs input_shape (one example's shape, e.g. (1, 28, 28)) for a "
                    "network that starts with a convolution"
                )
            input_shape = (first.shape[1],)
        ref = next(iter(model.parameters()))
        self.example = torch.zeros(1, *input_shape, dtype=ref.dtype, device=ref.device)
        self.input_shape = tuple(input_shape)
        self.shapes = trace_shapes(model, self.slots, self.example)
        self.groups = [self._group(k, passthrough) for k in range(len(self.layer_pos) - 1)]

    def layer(self, k: int) -> nn.Module:
        return self.slots[self.layer_pos[k]].get()

    def set_layer(self, k: int, module: nn.Module) -> None:
        self.slots[self.layer_pos[k]].set(module)

    def name(self, k: int) -> str:
        return self.slots[self.layer_pos[k]].name

    def between(self, k: int) -> list[nn.Module]:
        return [s.get() for s in self.slots[self.layer_pos[k] + 1 : self.layer_pos[k + 1]]]

    def _group(self, k: int, passthrough: tuple[type[nn.Module], ...]) -> int:
        """How many consumer input columns each producer unit feeds (H·W across a Flatten)."""
        group = 1
        for slot in self.slots[self.layer_pos[k] + 1 : self.layer_pos[k + 1]]:
            module = slot.get()
            in_shape, out_shape = self.shapes[slot.name]
            if isinstance(module, nn.Flatten) and (module.start_dim, module.end_dim) != (1, -1):
                raise ValueError(f"shrink needs nn.Flatten(1, -1) at {slot.name!r}")
            flattens = len(in_shape) > 2 and len(out_shape) == 2  # (B, C, H, W) → (B, C·H·W)
            passes = isinstance(module, passthrough) or getattr(module, "channelwise", False)
            if isinstance(module, nn.Flatten) or (passes and flattens):
                group *= math.prod(in_shape[2:])  # channel-major, as torch flattens
            elif not passes and any(t.numel() for t in module.state_dict().values()):
                raise TypeError(  # per-channel tensors (a BatchNorm) must be sliced with it
                    f"shrink does not slice {type(module).__name__} at {slot.name!r} (it holds "
                    "per-unit tensors); pass one batch, compress.shrink(model, "
                    "example_inputs=x), which slices BatchNorm and other followers with "
                    "their producer"
                )
            elif not passes:
                raise TypeError(
                    f"shrink does not know how units pass through {type(module).__name__} at "
                    f"{slot.name!r}; if it acts on each unit/channel apart, pass "
                    f"passthrough=({type(module).__name__},), or pass one batch: "
                    "compress.shrink(model, example_inputs=x)"
                )
        out_units = deployed_weight(self.layer(k)).shape[0]
        in_next = deployed_weight(self.layer(k + 1)).shape[1]
        if out_units * group != in_next:
            raise ValueError(
                f"layer {self.name(k)!r} has {out_units} units × {group} positions but "
                f"{self.name(k + 1)!r} takes {in_next} inputs"
            )
        return group


def unit_columns(units: Tensor, group: int) -> Tensor:
    return (units.view(-1, 1) * group + torch.arange(group, device=units.device)).reshape(-1)
