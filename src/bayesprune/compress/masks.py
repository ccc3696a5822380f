"""Masks: expand unit / input masks to weight masks, apply them, and talk to torch's prune.

A mask dict maps a module name (as in `model.named_modules()`) to a 0/1 float tensor.
Weight masks have the layer's weight shape; unit masks have shape (out,) and input
masks shape (in,), and `unit_weight_masks` / `input_weight_masks` turn them into
weight masks (a pruned unit loses all its incoming weights; a pruned input all its
outgoing ones). Combine several with `combine_masks` (element-wise product).

torch.nn.utils.prune interop: our masks are its masks. `torch_prune_importance`
turns our scores into the `importance_scores` argument of
`prune.global_unstructured`, so

    plain = to_deterministic(model)
    prune.global_unstructured(list(params), prune.L1Unstructured, amount=k,
                              importance_scores=torch_prune_importance(plain, scores))

prunes exactly the weights `global_sparsity_masks(scores, k / n)` prunes (all our
scores are ≥ 0 except "log_alpha" and "variance"; shift those by their minimum first,
since L1Unstructured ranks by absolute value). `apply_torch_prune` installs our
masks as torch prune masks on plain layers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from ..nn.base import VariationalLayer
from .adapters import as_prunable, prunable_layers
from .heads import head_layout


def _module(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules:
        raise ValueError(
            f"no module named {name!r} in the model; mask keys must be module names such as "
            f"{[n for n in modules if n][:5]}"
        )
    return modules[name]


def _weight_shape(model: nn.Module, name: str) -> torch.Size:
    return as_prunable(_module(model, name)).posterior().weight_mean.shape


def unit_weight_masks(model: nn.Module, unit_masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Weight masks that remove every incoming weight of the pruned output units (of an
    attention module's heads: their value rows, what `shrink_graph` deletes them by)."""
    out = {}
    for name, keep in unit_masks.items():
        module = _module(model, name)
        layout = head_layout(module)
        if layout is not None:  # a head's incoming weights: its values
            rows = layout.value_rows(module, (~keep.bool()).nonzero().flatten())
            name = f"{name}.{layout.value}"
            keep = torch.ones(_weight_shape(model, name)[0], dtype=torch.bool)
            keep[rows] = False
        shape = _weight_shape(model, name)
        if keep.shape != shape[:1]:
            raise ValueError(
                f"unit mask of {name!r} has shape {tuple(keep.shape)}, need ({shape[0]},)"
            )
        out[name] = keep.float().view(-1, *([1] * (len(shape) - 1))).expand(shape).clone()
    return out


def input_weight_masks(model: nn.Module, input_masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Weight masks that remove every outgoing weight of the pruned input units."""
    out = {}
    for name, keep in input_masks.items():
        shape = _weight_shape(model, name)
        if keep.shape != shape[1:2]:
            raise ValueError(
                f"input mask of {name!r} has shape {tuple(keep.shape)}, need ({shape[1]},)"
            )
        out[name] = keep.float().view(1, -1, *([1] * (len(shape) - 2))).expand(shape).clone()
    return out


def combine_masks(*masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Element-wise product of mask dicts (a weight survives only if every dict keeps it)."""
    out: dict[str, Tensor] = {}
    for group in masks:
        for name, m in group.items():
            out[name] = m.float() if name not in out else out[name] * m.float()
    return out


def apply_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> nn.Module:
    """Fix weight masks on the model's layers, in place; returns the model.

    Variational layers keep the mask (pruned weights leave the output and the KL);
    plain layers get their pruned weights zeroed.
    """
    for name, mask in masks.items():
        layer = as_prunable(_module(model, name))
        try:
            layer.set_weight_mask(mask)
        except NotImplementedError as err:
            raise TypeError(
                f"layer {name!r} ({type(layer).__name__}) does not support weight masks; prune "
                "its units with shrink(model, keep_units=...) instead"
            ) from err
    return model


def sparsity(masks: Mapping[str, Tensor]) -> float:
    """Fraction of masked (zero) entries over all masks."""
    total = sum(m.numel() for m in masks.values())
    if total == 0:
        return 0.0
    return 1.0 - sum(float(m.sum()) for m in masks.values()) / total


def weight_masks(model: nn.Module) -> dict[str, Tensor]:
    """The masks in force now: 1 where the deployed weight (posterior mean) is non-zero."""
    return {
        name: (as_prunable(m).posterior().weight_mean != 0).float()
        for name, m in prunable_layers(model)
    }


def torch_prune_importance(
    model: nn.Module, scores: Mapping[str, Tensor]
) -> dict[tuple[nn.Module, str], Tensor]:
    """`importance_scores` for `prune.global_unstructured` from our score dict."""
    out = {}
    for name, s in scores.items():
        module = _module(model, name)
        if isinstance(module, VariationalLayer):
            raise TypeError(
                f"{name!r} is a variational layer; torch's prune works on plain layers: pass "
                "bayesprune.to_deterministic(model)"
            )
        out[(module, "weight")] = s
    return out


def apply_torch_prune(model: nn.Module, masks: Mapping[str, Tensor]) -> nn.Module:
    """Install our masks on plain layers as torch.nn.utils.prune masks (in place)."""
    for (module, param), score in torch_prune_importance(model, masks).items():
        prune.custom_from_mask(module, param, score.to(module.weight))
    return model


@contextlib.contextmanager
def hold_pruned(model: nn.Module) -> Iterator[nn.Module]:
    """Keep every pruned weight at zero while the block trains `model`.

    Variational layers hold their masks as buffers: a masked weight gets no gradient
    and no KL, so training cannot bring it back. Plain layers have no mask, so every
    weight that is exactly zero gets a zero gradient (a hook on the weight, removed
    again on exit): with no gradient, SGD, Adam and decoupled weight decay all leave a
    zero where it is. (torch.nn.utils.prune's masks are recomputed by a forward hook
    that never runs when a parent reads the weight itself, as nn.MultiheadAttention
    reads `out_proj.weight`; a gradient hook holds there too.)
    """
    handles = []
    for _, m in prunable_layers(model):
        if isinstance(m, VariationalLayer) or prune.is_pruned(m):
            continue
        weight = m.weight
        keep = (weight.detach() != 0).to(weight.dtype)
        if weight.requires_grad and not bool(keep.all()):
            handles.append(weight.register_hook(lambda grad, keep=keep: grad * keep))
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()
