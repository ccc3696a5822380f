"""Attention heads as units: which ones are dead, how much each moves the output, and
their removal with the constant they leave behind folded.

A head of `bayesprune.nn.MultiheadAttention` is a block of `head_dim` rows of `q_proj`,
`k_proj` and `v_proj` and the same block of `out_proj`'s columns. The module reads and
writes the residual stream, which the channel graph pins (`graph_trace`), so its heads
are units of their own that touch no channel group: `shrink_graph` removes them before
its channel rounds, `activation_scores` scores them under the attention module's name.

Removing a head means what removing a unit means elsewhere: its incoming (value)
weights are masked, so the head outputs its value bias, the same at every position
(attention weights sum to 1), and that constant, pushed through `out_proj`, is folded
into `out_proj`'s bias (its mean, and for a random weight the variance Σσ²c²). The
shrunk module then equals the input module with those value rows masked, on any input.
A head is dead (removed without being asked) when every one of its value units is dead
(zero deployed weights, or a unit inclusion probability at most the threshold) or
`out_proj` gives it zero weight.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ..nn.attention import MultiheadAttention
from ..nn.base import GatedLayer
from .adapters import as_prunable, mask_rows

__all__ = ["attention_modules", "dead_heads", "head_scores", "remove_heads"]


def attention_modules(model: nn.Module) -> dict[str, MultiheadAttention]:
    """{name: module} of every head-prunable attention module of `model`."""
    return {n: m for n, m in model.named_modules() if isinstance(m, MultiheadAttention)}


def head_units(module: MultiheadAttention, heads: Tensor) -> Tensor:
    """The projection units (rows of q/k/v, columns of out_proj) of `heads` (indices)."""
    size = module.head_dim
    offsets = torch.arange(size, device=heads.device)
    return (heads.long().view(-1, 1) * size + offsets).flatten()


def _per_head(values: Tensor, module: MultiheadAttention) -> Tensor:
    return values.reshape(module.num_heads, module.head_dim)


def dead_heads(module: MultiheadAttention, threshold: float = 0.5) -> Tensor:
    """Per head: True when its value units are all dead or out_proj ignores it."""
    v = as_prunable(module.v_proj).to_deterministic()
    dead_v = (v.weight.detach().flatten(1) == 0).all(1).cpu()
    if isinstance(module.v_proj, GatedLayer):
        pip = module.v_proj.unit_inclusion()
        if pip is not None:
            dead_v |= pip.detach().cpu() <= threshold
    out = as_prunable(module.out_proj).to_deterministic().weight.detach()
    unread = (out == 0).all(0).cpu()
    return _per_head(dead_v, module).all(1) | _per_head(unread, module).all(1)


def remove_heads(
    model: nn.Module, name: str, keep: Tensor, reference: nn.Module | None = None
) -> Tensor:
    """Delete the heads of attention `name` that `keep` (bool per head) drops, in place.

    Their value rows are masked (also in `reference`, the model the result must equal),
    the constant they then output is folded into out_proj's bias, and q/k/v lose those
    rows, out_proj those columns. Every module keeps at least one head (the first, when
    `keep` keeps none). Returns the indices of the heads it kept.
    """
    module = model.get_submodule(name)
    keep = keep.clone() if keep.any() else torch.arange(len(keep)) == 0
    kept_heads, drop = keep.nonzero().flatten(), (~keep).nonzero().flatten()
    if not len(drop):
        return kept_heads
    units = head_units(module, drop)
    for target in (model, reference):
        if target is not None:
            mask_rows(target, f"{name}.v_proj", units.tolist())
    _fold_value_bias(module, units)
    kept = head_units(module, kept_heads)
    module.q_proj = as_prunable(module.q_proj).select(out_idx=kept)
    module.k_proj = as_prunable(module.k_proj).select(out_idx=kept)
    module.v_proj = as_prunable(module.v_proj).select(out_idx=kept)
    module.out_proj = as_prunable(module.out_proj).select(in_idx=kept)
    return kept_heads


def _fold_value_bias(module: MultiheadAttention, units: Tensor) -> None:
    """out_proj's bias += W[:, units] · c for the masked heads' constant value output c."""
    value = as_prunable(module.v_proj).to_deterministic()
    if value.bias is None:
        return  # the heads output 0: nothing to fold
    units = units.to(value.bias.device)
    constant = value.bias.detach()[units]
    out = as_prunable(module.out_proj)
    weight = out.to_deterministic().weight.detach()[:, units]
    std = out.posterior().weight_std.detach()[:, units]
    mean = weight @ constant
    if bool(mean.any()):
        out.fold_into_bias(mean, std.square() @ constant.square())


def head_scores(model: nn.Module, spreads: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Per head: √Σ over its columns j of sd(x_j)² ‖W_out[:, j]‖², the unit score of
    `activation_scores` with the head's outputs as its columns; `spreads` holds, per
    attention module, the sd of each of out_proj's input columns over the data."""
    scores = {}
    for name, sd in spreads.items():
        module = model.get_submodule(name)
        weight = as_prunable(module.out_proj).posterior().weight_mean.detach().double()
        part = (sd.to(weight) * weight.norm(dim=0)).square().cpu()
        scores[name] = _per_head(part, module).sum(1).sqrt()
    return scores
