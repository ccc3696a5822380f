"""Attention heads as units: which ones are dead, how much each moves the output, and
their removal with the constant they leave behind folded.

A head is a block of `head_dim` rows of the query, key and value projections and the
same block of the output projection's columns. Two layouts are read (`HeadLayout`):
`bayesprune.nn.MultiheadAttention`, with one layer per projection (`q_proj`, `k_proj`,
`v_proj`, `out_proj`), and the fused layout of timm's `Attention` (one `qkv` layer whose
rows are q, k and v in turn, an output `proj`, the head count and width in the
attributes `num_heads`, `head_dim`, `attn_dim` that its forward reads). A fused module
is taken only when a probe proves it: a copy without its first head must compute what
the module computes with that head's output columns zeroed (a module whose forward
reads its width elsewhere, adds a per-head bias table or normalises over all heads
fails, and keeps its heads). Heads touch no channel group, so `shrink_graph` removes
them before its channel rounds and `activation_scores` scores them under the attention
module's name.

Removing a head means what removing a unit means elsewhere: its incoming (value)
weights are masked, so the head outputs its value bias, the same at every position
(attention weights sum to 1), and that constant, pushed through the output projection,
is folded into its bias (its mean, and for a random weight the variance Σσ²c²). The
shrunk module then equals the input module with those value rows masked, on any input.
A head is dead (removed without being asked) when every one of its value units is dead
(zero deployed weights, or a unit inclusion probability at most the threshold) or the
output projection gives it zero weight.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..nn.attention import MultiheadAttention
from ..nn.base import GatedLayer
from .adapters import as_prunable, is_prunable, mask_rows

__all__ = [
    "HeadLayout",
    "attention_modules",
    "dead_heads",
    "head_layout",
    "head_scores",
    "remove_heads",
]


@dataclass(frozen=True)
class HeadLayout:
    """Where the heads of one attention module are: the layer whose rows hold the values
    (`value`), the layers whose rows hold q, k and v (`projections`), the layer whose
    columns read the heads (`out`), and whether q, k and v share one layer (`fused`)."""

    value: str
    projections: tuple[str, ...]
    out: str
    fused: bool

    def value_rows(self, module: nn.Module, heads: Tensor) -> Tensor:
        """The rows of `value` that hold `heads`' values."""
        units = head_units(module, heads)
        return units + 2 * _attention_width(module) if self.fused else units

    def rows(self, module: nn.Module, heads: Tensor) -> Tensor:
        """The rows of each of `projections` that hold `heads` (q, k and v)."""
        units = head_units(module, heads)
        if not self.fused:
            return units
        width = _attention_width(module)
        return torch.cat([units + part * width for part in range(3)])

    def keep(self, module: nn.Module, heads: Tensor) -> dict[str, int]:
        """Slice `module` to `heads`, in place; the size attributes it rewrote."""
        rows, columns = self.rows(module, heads), head_units(module, heads)
        for name in self.projections:
            setattr(module, name, as_prunable(getattr(module, name)).select(out_idx=rows))
        setattr(module, self.out, as_prunable(getattr(module, self.out)).select(in_idx=columns))
        if not self.fused:
            return {}  # the head count is read from q_proj
        module.num_heads = len(heads)
        changed = {"num_heads": len(heads)}
        if hasattr(module, "attn_dim"):
            module.attn_dim = changed["attn_dim"] = len(heads) * int(module.head_dim)
        return changed


_SPLIT = HeadLayout("v_proj", ("q_proj", "k_proj", "v_proj"), "out_proj", fused=False)
_FUSED = HeadLayout("qkv", ("qkv",), "proj", fused=True)


def _attention_width(module: nn.Module) -> int:
    return int(module.num_heads) * int(module.head_dim)


_PROVEN: weakref.WeakKeyDictionary[nn.Module, tuple[Any, bool]] = weakref.WeakKeyDictionary()
"""Fused modules probed, with the shapes they were probed at (a module that lost heads
since is probed again)."""


def head_layout(module: nn.Module) -> HeadLayout | None:
    """The layout of `module`'s heads, or None when it is no head-prunable attention."""
    if isinstance(module, MultiheadAttention):
        return _SPLIT
    if not hasattr(module, "qkv"):
        return None
    state = (getattr(module, "num_heads", None), getattr(module, "head_dim", None))
    state += tuple(_shape(getattr(module, n, None)) for n in ("qkv", "proj"))
    known = _PROVEN.get(module)
    if known is None or known[0] != state:
        known = (state, _fused_attention(module))
        _PROVEN[module] = known
    return _FUSED if known[1] else None


def _shape(layer: Any) -> Any:
    return tuple(as_prunable(layer).posterior().weight_mean.shape) if is_prunable(layer) else None


def _fused_attention(module: nn.Module) -> bool:
    """timm's `Attention` layout (module docstring), proven by the probe."""
    heads, size = getattr(module, "num_heads", None), getattr(module, "head_dim", None)
    qkv, proj = getattr(module, "qkv", None), getattr(module, "proj", None)
    if not (isinstance(heads, int) and isinstance(size, int) and heads > 1 and size > 0):
        return False
    if not (is_prunable(qkv) and is_prunable(proj)):
        return False
    q_shape = as_prunable(qkv).posterior().weight_mean.shape
    p_shape = as_prunable(proj).posterior().weight_mean.shape
    if len(q_shape) != 2 or q_shape[0] != 3 * heads * size or p_shape[1:] != (heads * size,):
        return False
    return _probe_fused(module)


def _probe_fused(module: nn.Module) -> bool:
    """A deterministic copy without head 0 computes what the copy computes with head 0's
    output columns zeroed (on a few random tokens)."""
    try:
        probe = copy.deepcopy(module).eval()
        for name in ("qkv", "proj"):
            setattr(probe, name, as_prunable(getattr(probe, name)).to_deterministic())
        weight = probe.qkv.weight
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 5, weight.shape[1], generator=g).to(weight)
        silenced = copy.deepcopy(probe)
        with torch.no_grad():
            silenced.proj.weight[:, : int(module.head_dim)] = 0.0
            expected = silenced(x)
            _FUSED.keep(probe, torch.arange(1, int(module.num_heads)))
            got = probe(x)
    except Exception:  # any failure of the layout's assumptions: not this layout
        return False
    if not isinstance(got, Tensor) or got.shape != expected.shape:
        return False
    scale = float(expected.abs().max()) or 1.0
    return bool(torch.allclose(got, expected, rtol=0, atol=1e-5 * scale))


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """{name: module} of every head-prunable attention module of `model`."""
    return {n: m for n, m in model.named_modules() if head_layout(m) is not None}


def head_units(module: nn.Module, heads: Tensor) -> Tensor:
    """The units of `heads` (indices) in one projection: rows of q, k or v, columns of
    the output projection."""
    size = int(module.head_dim)
    offsets = torch.arange(size, device=heads.device)
    return (heads.long().view(-1, 1) * size + offsets).flatten()


def _per_head(values: Tensor, module: nn.Module) -> Tensor:
    return values.reshape(int(module.num_heads), int(module.head_dim))


def _layout(module: nn.Module) -> HeadLayout:
    layout = head_layout(module)
    if layout is None:
        raise ValueError(f"{type(module).__name__} is no head-prunable attention module")
    return layout


def dead_heads(module: nn.Module, threshold: float = 0.5) -> Tensor:
    """Per head: True when its value units are all dead or the output projection
    ignores it."""
    layout = _layout(module)
    value_layer = getattr(module, layout.value)
    v = as_prunable(value_layer).to_deterministic()
    dead = (v.weight.detach().flatten(1) == 0).all(1).cpu()
    if isinstance(value_layer, GatedLayer):
        pip = value_layer.unit_inclusion()
        if pip is not None:
            dead |= pip.detach().cpu() <= threshold
    rows = layout.value_rows(module, torch.arange(int(module.num_heads)))
    out = as_prunable(getattr(module, layout.out)).to_deterministic().weight.detach()
    unread = (out == 0).all(0).cpu()
    return _per_head(dead[rows], module).all(1) | _per_head(unread, module).all(1)


def remove_heads(
    model: nn.Module, name: str, keep: Tensor, reference: nn.Module | None = None
) -> tuple[Tensor, dict[str, int]]:
    """Delete the heads of attention `name` that `keep` (bool per head) drops, in place.

    Their value rows are masked (also in `reference`, the model the result must equal),
    the constant they then output is folded into the output projection's bias, and the
    projections lose those rows, the output projection those columns. Every module keeps
    at least one head (the first, when `keep` keeps none). Returns the indices of the
    heads it kept and the size attributes it rewrote (a fused module's head count).
    """
    module = model.get_submodule(name)
    layout = _layout(module)
    keep = keep.clone() if keep.any() else torch.arange(len(keep)) == 0
    kept_heads, drop = keep.nonzero().flatten(), (~keep).nonzero().flatten()
    if not len(drop):
        return kept_heads, {}
    values = layout.value_rows(module, drop)
    for target in (model, reference):
        if target is not None:
            mask_rows(target, f"{name}.{layout.value}", values.tolist())
    _fold_value_bias(module, layout, values, head_units(module, drop))
    return kept_heads, layout.keep(module, kept_heads)


def _fold_value_bias(module: nn.Module, layout: HeadLayout, rows: Tensor, columns: Tensor) -> None:
    """out's bias += W[:, columns] · c for the masked heads' constant value output c (the
    value bias at `rows`)."""
    value = as_prunable(getattr(module, layout.value)).to_deterministic()
    if value.bias is None:
        return  # the heads output 0: nothing to fold
    constant = value.bias.detach()[rows.to(value.bias.device)]
    out = as_prunable(getattr(module, layout.out))
    columns = columns.to(value.bias.device)
    weight = out.to_deterministic().weight.detach()[:, columns]
    std = out.posterior().weight_std.detach()[:, columns]
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
        out = getattr(module, _layout(module).out)
        weight = as_prunable(out).posterior().weight_mean.detach().double()
        part = (sd.to(weight) * weight.norm(dim=0)).square().cpu()
        scores[name] = _per_head(part, module).sum(1).sqrt()
    return scores
