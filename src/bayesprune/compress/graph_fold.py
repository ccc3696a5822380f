"""Where the constant of a removed channel goes: a reader's bias, or BatchNorms downstream.

A removed (dead) channel still carries a value that does not depend on the input.
At a reading layer its contribution W·c is read off the example run (`offset`). It
can be folded exactly only when it is the same number at every position, *for every
input size* — the contract of `shrink_graph` is "equal on any input":

- the constant itself must be the same at every position of the reader's input
  (a constant that met a zero-padded border upstream depends on the image size);
- a zero-padded convolution reading it gives a different sum where its kernel hangs
  over the border; the example run may not show it (a 1×1 feature map has no interior),
  so such a reader is probed on a map large enough to have both border and interior.

It then goes into the reader's bias (mean, and Σσ²c² for a random weight), or, for a
reader without bias, into the running mean of every BatchNorm its output reaches
through shift-equivariant ops only (identity, dropout, max / adaptive pooling, average
pooling without zero padding, concatenation along the channels): BN(y + δ) = BN(y) with
μ → μ − δ. That is DenseNet's transition (conv, average pool, then the next block's
concatenations feed only BatchNorms) as well as the plain conv → BatchNorm pair.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.func import functional_call

from .adapters import as_prunable
from .graph_trace import BATCHNORMS, ChannelGraph, Use

_SHIFT_MODULES: tuple[type[nn.Module], ...] = (
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.MaxPool1d,
    nn.MaxPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
)  # fmt: skip
"""y ↦ op(y) with op(y + δ) = op(y) + δ for a constant δ per channel (eval mode)."""
_SHIFT_FUNCTIONS = {
    F.max_pool1d, F.max_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d,
}  # fmt: skip
_CAT = {torch.cat, torch.concat}


@dataclass
class Fold:
    """One reader's offset from the removed constant channels, and where it goes."""

    use: Use
    mean: Tensor  # per output unit of the reader
    var: Tensor
    shifts: list[tuple[str, Tensor]] = field(default_factory=list)  # empty: into the bias
    """(BatchNorm, per channel the reader's unit whose offset it absorbs, or −1)."""


def _uniform(t: Tensor) -> bool:
    """Every (example, channel) row the same at each position."""
    flat = t.flatten(2)
    return torch.allclose(flat, flat[..., :1].expand_as(flat), rtol=1e-6, atol=1e-7)


def _offset(layer: nn.Module, c: Tensor) -> tuple[Tensor, Tensor]:
    """Per-position contribution W·c of input `c` to `layer`'s output (unit × position), Σσ²c²."""
    plain = as_prunable(layer).to_deterministic().eval()
    std = as_prunable(layer).posterior().weight_std.detach().to(c)
    with torch.no_grad():
        mean = plain(c) - plain(torch.zeros_like(c))
        var = functional_call(plain, {"weight": std.square(), "bias": None}, (c.square(),))
    if mean.ndim > 2:
        return mean[0].flatten(1), var[0].flatten(1)
    return mean.T, var.T


def _size_free(layer: nn.Module, c: Tensor, expected: Tensor) -> bool:
    """A padded convolution gives `expected` everywhere on a map with border and interior."""
    plain = as_prunable(layer).to_deterministic().eval()
    if not isinstance(plain, nn.Conv2d) or plain.padding in (0, (0, 0), "valid"):
        return True
    reach = [d * (k - 1) + 1 for d, k in zip(plain.dilation, plain.kernel_size, strict=True)]
    size = [3 * r + 2 * max(r, 1) for r in reach]  # border on both sides and an interior
    probe = c[:1, :, :1, :1].expand(1, c.shape[1], *size).contiguous()
    with torch.no_grad():
        out = (plain(probe) - plain(torch.zeros_like(probe)))[0].flatten(1)
    return torch.allclose(out, expected.view(-1, 1).expand_as(out), rtol=1e-6, atol=1e-7)


def _shift_ok(module: nn.Module) -> bool:
    if isinstance(module, (nn.AvgPool1d, nn.AvgPool2d)):
        padding = module.padding if isinstance(module.padding, tuple) else (module.padding,)
        return not module.count_include_pad or not any(padding)
    return isinstance(module, _SHIFT_MODULES)


def shift_targets(cg: ChannelGraph, use: Use) -> list[tuple[str, Tensor]] | None:
    """The BatchNorms that absorb a per-unit shift of `use`'s output, or None.

    Walks forward from the reader's output: every op the shift reaches must pass it
    unchanged (`_SHIFT_MODULES`, a concatenation) or be a BatchNorm follower with
    running statistics, which takes it; anything else (an activation, the output)
    and there is no exact place for it.
    """
    gm = cg.gm
    units = len(cg.values[use.node][0])
    carried: dict[fx.Node, Tensor] = {use.node: torch.arange(units)}
    followers = {f.name for f in cg.followers}
    targets: list[tuple[str, Tensor]] = []
    started = False
    for node in gm.graph.nodes:
        if node is use.node:
            started = True
            continue
        if not started or not any(a in carried for a in node.all_input_nodes):
            continue
        if node.op == "call_module":
            module = gm.get_submodule(str(node.target))
            source = node.args[0]
            if len(node.all_input_nodes) != 1 or source not in carried:
                return None
            if isinstance(module, BATCHNORMS) and str(node.target) in followers:
                if module.running_mean is None:
                    return None
                targets.append((str(node.target), carried[source]))
            elif _shift_ok(module):
                carried[node] = carried[source]
            else:
                return None
        elif node.op == "call_function" and node.target in _SHIFT_FUNCTIONS:
            if len(node.all_input_nodes) != 1:
                return None
            carried[node] = carried[node.args[0]]
        elif node.op == "call_function" and node.target in _CAT and node in cg.ids:
            parts = node.args[0] if node.args else node.kwargs["tensors"]
            carried[node] = torch.cat(
                [carried.get(p, torch.full((len(cg.ids[p]),), -1)) for p in parts]
            )
        else:
            return None
    return targets or None


def plan_fold(
    cg: ChannelGraph, use: Use, layer: nn.Module, columns: Tensor, rows: Tensor
) -> Fold | bool | None:
    """Fold input `columns` of the reader `use` (its outputs `rows` go too, so they do not count).

    Returns a Fold, True (nothing to fold) or None (no exact fold: the channels stay).
    """
    x = cg.input_value(use)
    c = x * columns.to(x.device).view(1, -1, *([1] * (x.ndim - 2))).to(x.dtype)
    if not c.any():
        return True
    if c.ndim > 2 and not _uniform(c):
        return None  # a constant that met a padded border: it depends on the input size
    mean, var = _offset(layer, c)
    mean[rows], var[rows] = 0.0, 0.0
    if not mean.any():
        return True
    if not torch.allclose(mean, mean[:, :1].expand_as(mean), rtol=1e-6, atol=1e-7):
        return None  # the constant meets a padded border: not a bias shift
    if c.ndim > 2 and not _size_free(layer, c, mean[:, 0]):
        return None  # would only hold at the example's size
    if as_prunable(layer).posterior().bias_mean is not None:
        return Fold(use, mean[:, 0], var.mean(1))
    shifts = shift_targets(cg, use)
    return None if shifts is None else Fold(use, mean[:, 0], var.mean(1), shifts)


def apply_fold(model: nn.Module, fold: Fold) -> bool:
    """Apply `fold` in place; True when a weight variance had to be dropped (a BatchNorm)."""
    if not fold.shifts:
        as_prunable(model.get_submodule(fold.use.name)).fold_into_bias(fold.mean, fold.var)
        return False
    for name, units in fold.shifts:
        bn = model.get_submodule(name)
        delta = torch.where(units >= 0, fold.mean[units.clamp(min=0)], 0.0)
        with torch.no_grad():
            bn.running_mean.sub_(delta.to(bn.running_mean))
    return bool(fold.var.any())
