"""Where the constant of a removed channel goes: a reader's bias, or BatchNorms downstream.

A removed (dead) channel still carries a value that does not depend on the input. At a
reading layer its contribution W·c is folded only where that is exact *at every input
size* (the contract of `shrink_graph` is "equal on any input"), judged per dead group
(contributions add up, so groups that fold alone fold together):

- the constant must be the same at every position of the reader's input (one that met
  a zero-padded border upstream depends on the image size);
- for a convolution, the contribution of a constant 1 in column d is the sum of the
  kernel taps inside the map at each position (`_tap_sums`); with zero padding it
  differs where the kernel hangs over the border. The example run may not show that
  (a 1×1 map has no interior), so a padded reader is also evaluated on a probe map with
  every kind of border position and an interior: the offset must be one number there
  and on the example's map. A zero-padded depthwise convolution (a follower) on the
  way is judged the same way (`depthwise_size_bound`).

It then goes into the reader's bias (mean, and Σσ²c² for a random weight), or, for a
reader without bias, into the running mean of every BatchNorm (a module, or
`F.batch_norm` on a BatchNorm's own tensors as in timm's BatchNormAct2d) its output reaches
through shift-equivariant ops only (identity, dropout, max / adaptive pooling, average
pooling without zero padding, concatenation along the channels): BN(y + δ) = BN(y) with
μ → μ − δ. That is DenseNet's transition (conv, average pool, then the next block's
concatenations feed only BatchNorms) as well as the plain conv → BatchNorm pair. A
grouped reader is seen through its dense block-diagonal weight.

A moment (eVI) reader adds σ²·E[x²] of every column to its output variance, and its
bias is a point estimate: there is no exact place for a constant's σ²c², so a dead
group with a non-zero constant that such a layer reads is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from .adapters import (
    CONVOLUTIONS,
    as_prunable,
    is_frozen_norm,
    is_same_padding_conv,
    same_padding,
)
from .graph_trace import (
    BATCHNORMS,
    ChannelGraph,
    Use,
    norm_owner,
    propagates_variance,
)

_SHIFT_MODULES: tuple[type[nn.Module], ...] = (
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)  # fmt: skip
"""y ↦ op(y) with op(y + δ) = op(y) + δ for a constant δ per channel (eval mode)."""
_SHIFT_FUNCTIONS = {
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
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


@dataclass
class Reader:
    """A reading layer's posterior-mean map, weight spread and shift targets (one round).

    A grouped convolution's weight is seen as the dense (block-diagonal) one, so that
    column j is input channel j for every kind of reader.
    """

    plain: nn.Module  # nn.Linear or nn.Conv1d / 2d / 3d
    weight: Tensor  # dense: (units, input channels, ...)
    weight_std: Tensor
    has_bias: bool
    shifts: list[tuple[str, Tensor]] | None  # where a bias-free reader's offset can go
    folds: bool = True  # False: a moment layer, whose variance term cannot absorb a constant

    @classmethod
    def of(cls, cg: ChannelGraph, use: Use, layer: nn.Module, plain: nn.Module) -> Reader:
        prunable = as_prunable(layer)
        posterior = prunable.posterior()
        has_bias = posterior.bias_mean is not None
        folds = not propagates_variance(layer)
        shifts = None if has_bias or not folds else shift_targets(cg, use)
        weight = dense_weight(plain.weight.detach(), use.groups)
        std = dense_weight(posterior.weight_std.detach(), use.groups).to(weight)
        return cls(plain, weight, std, has_bias, shifts, folds)


def dense_weight(weight: Tensor, groups: int) -> Tensor:
    """A grouped convolution's weight (O × C/G × k × k) as the dense O × C × k × k one."""
    if groups == 1:
        return weight
    out_units, per_group = weight.shape[:2]
    dense = weight.new_zeros(out_units, per_group * groups, *weight.shape[2:])
    m, k = out_units // groups, per_group
    for g in range(groups):
        dense[g * m : (g + 1) * m, g * k : (g + 1) * k] = weight[g * m : (g + 1) * m]
    return dense


def uniform_rows(t: Tensor) -> Tensor:
    """Per leading index: are all entries along the last axis equal (to tolerance)?"""
    return torch.isclose(t, t[..., :1].expand_as(t), rtol=1e-6, atol=1e-7).all(-1)


def _tap_masks(plain: nn.Module, axis: int, size: int) -> Tensor:
    """Which kernel taps along `axis` lie inside a map of `size`, one row per distinct case.

    Output position i reads input i·stride − pad + t·dilation for tap t; with zero
    padding the taps outside [0, size) add nothing. Positions with the same in-bounds
    taps give the same sum, so only the distinct cases (≤ 2·kernel + 1) are kept.
    """
    k, s, d = plain.kernel_size[axis], plain.stride[axis], plain.dilation[axis]
    if is_same_padding_conv(type(plain)):  # padded by the input's size, as TensorFlow does
        pad, out = same_padding(size, k, s, d)[0], -(-size // s)
    elif plain.padding == "same":  # stride 1; torch puts the odd one on the far side
        pad, out = d * (k - 1) // 2, size
    else:
        pad = 0 if plain.padding == "valid" else plain.padding[axis]
        out = (size + 2 * pad - d * (k - 1) - 1) // s + 1
    where = torch.arange(max(out, 0)).view(-1, 1) * s - pad + torch.arange(k).view(1, -1) * d
    inside = (where >= 0) & (where < size)
    if plain.padding_mode != "zeros":  # reflect / replicate / circular keep a constant
        inside = torch.ones_like(inside)
    return torch.unique(inside, dim=0)


def _tap_sums(plain: nn.Module, weight: Tensor, size: tuple[int, ...]) -> Tensor:
    """Σ over in-bounds taps of `weight` (O × D × k…), per column, on an all-ones map.

    (D, O, cases): what a constant 1 in column d adds to output unit o at each kind of
    position of a map of `size` (zero padding drops the taps that hang over the border).
    One spatial axis at a time: its taps are summed per case, the cases go last.
    """
    sums = weight
    for axis, n in enumerate(size):
        sums = torch.tensordot(sums, _tap_masks(plain, axis, n).to(weight), dims=([2], [1]))
    return sums.transpose(0, 1).reshape(weight.shape[1], weight.shape[0], -1)


def _probe_sizes(plain: nn.Module) -> list[tuple[int, ...]]:
    """Maps with interior positions and every kind of border position. A "SAME"-padded
    convolution pads by the size's remainder modulo the stride: one map per remainder."""
    reach = [d * (k - 1) + 1 for d, k in zip(plain.dilation, plain.kernel_size, strict=True)]
    probe = [2 * (r + s) + r for r, s in zip(reach, plain.stride, strict=True)]
    shifts = range(max(plain.stride)) if is_same_padding_conv(type(plain)) else range(1)
    return [tuple(n + j for n in probe) for j in shifts]


def _shift_ok(module: nn.Module) -> bool:
    if isinstance(module, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
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
    if cg.axis.get(use.node) != 1:
        return None  # a Linear on tokens, or in an attention: no BatchNorm on its axis
    units = len(cg.ids[use.node])
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
            norm = isinstance(module, BATCHNORMS) or is_frozen_norm(type(module))
            if norm and str(node.target) in followers:
                if module.running_mean is None:
                    return None
                targets.append((str(node.target), carried[source]))
            elif _shift_ok(module):
                carried[node] = carried[source]
            else:
                return None
        elif node.op == "call_function" and node.target is F.batch_norm:
            target = _functional_norm_target(cg, node, carried, followers)
            if target is None:
                return None
            targets.append(target)
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


def _functional_norm_target(
    cg: ChannelGraph, node: fx.Node, carried: dict[fx.Node, Tensor], followers: set[str]
) -> tuple[str, Tensor] | None:
    """An `F.batch_norm` call on a follower's own tensors (timm's BatchNormAct2d) takes
    the shift into that module's running mean, as a BatchNorm module does."""
    owner, source = norm_owner(node), node.args[0]
    others = [a for a in node.all_input_nodes if a is not source]
    if owner not in followers or source not in carried or any(a in carried for a in others):
        return None
    module = cg.root.get_submodule(owner) if cg.root is not None else None
    if not isinstance(module, BATCHNORMS) or module.running_mean is None:
        return None
    return owner, carried[source]


def depthwise_size_bound(cg: ChannelGraph, use: Use, plain: nn.Module, dead: set[int]) -> set[int]:
    """Dead groups whose constant a padded depthwise convolution makes size-dependent.

    A depthwise kernel on a constant v gives v·(sum of its in-bounds taps): one number at
    every position and every input size only when v = 0 or the border taps add nothing.
    (Downstream readers see the example's map only, which may hide it.)
    """
    x = cg.input_value(use)[0]
    cols = [j for j, i in enumerate(use.ids) if cg.find(i) in dead and x[j].any()]
    if not cols:
        return set()
    c = x[cols].flatten(1)
    weight = plain.weight.detach()[cols].transpose(0, 1)  # (1, D, k…): one "unit"
    sizes = [tuple(x.shape[1:]), *_probe_sizes(plain)]
    sums = torch.cat([_tap_sums(plain, weight, size)[:, 0] for size in sizes], dim=1)
    ok = uniform_rows(c) & uniform_rows(sums)
    return {cg.find(use.ids[j]) for j, good in zip(cols, ok.tolist(), strict=True) if not good}


def group_folds(
    cg: ChannelGraph,
    use: Use,
    reader: Reader,
    column_groups: list[int | None],
    removed_rows: Tensor,
) -> tuple[dict[int, Tensor], dict[int, Tensor], set[int]]:
    """Per dead group read by `use`: its offset W·c and Σσ²c² per output unit, or impossible.

    `column_groups[j]` is the dead group of input column j (None: a live column);
    `removed_rows` the reader's own outputs that go in the same round (not counted).
    Returns (offset mean by group, offset variance by group, groups that cannot fold).
    Each group is judged on its own: offsets add up, so groups that fold alone fold
    together.
    """
    x = cg.input_value(use)[0]
    flat = x.reshape(len(column_groups), -1)
    cols = [j for j, g in enumerate(column_groups) if g is not None and flat[j].any()]
    if not cols:  # every dead column is exactly 0 here: nothing to fold
        return {}, {}, set()
    groups = sorted({column_groups[j] for j in cols})
    slot = torch.tensor([groups.index(column_groups[j]) for j in cols], device=x.device)
    c = x[cols].reshape(len(cols), -1)  # (D, positions) of the constant columns
    weight = reader.weight[:, cols]
    var_w = reader.weight_std[:, cols].square()
    bad: set[int] = set()
    if isinstance(reader.plain, CONVOLUTIONS):
        uniform = uniform_rows(c)
        value = c[:, 0]
        sizes = [tuple(x.shape[1:]), *_probe_sizes(reader.plain)]  # any size
        sums = [_tap_sums(reader.plain, weight, size) for size in sizes]
        per_col = [value.view(-1, 1, 1) * t for t in sums]  # (D, O, positions)
        var_col = value.square().view(-1, 1) * var_w.flatten(2).sum(-1).T
        bad |= {groups[int(k)] for k in slot[~uniform].unique()}
    else:  # Linear: one position, or the same constant at every token / pixel it reads
        per_col = [(weight * c[:, 0]).T.unsqueeze(-1)]  # (D, O, 1)
        var_col = (var_w * c[:, 0].square()).T
        bad |= {groups[int(k)] for k in slot[~uniform_rows(c)].unique()}
    if len(groups) == len(cols):  # one column per group (the usual case): no sums
        mean_by, var_by = [t[slot.argsort()] for t in per_col], var_col[slot.argsort()]
    else:
        mean_by = [t.new_zeros(len(groups), *t.shape[1:]).index_add_(0, slot, t) for t in per_col]
        var_by = var_col.new_zeros(len(groups), var_col.shape[1]).index_add_(0, slot, var_col)
    for t in mean_by:
        t[:, removed_rows.to(t.device)] = 0.0
    var_by[:, removed_rows.to(var_by.device)] = 0.0
    means, variances = {}, {}
    for k, g in enumerate(groups):
        if g in bad:
            continue
        parts = [t[k] for t in mean_by]
        spread = not reader.folds and bool(var_by[k].any())  # σ²c² in a moment layer's variance
        if not spread and not any(p.any() for p in parts):
            continue  # nothing to fold (a zero constant, or zero weights)
        level = parts[0][:, :1]
        if not reader.folds:
            bad.add(g)
        elif not all(bool(uniform_rows(torch.cat([level, p], 1)).all()) for p in parts):
            bad.add(g)  # the constant meets a padded border: not a bias shift
        elif not reader.has_bias and reader.shifts is None:
            bad.add(g)  # no bias and no BatchNorm that takes the shift
        else:
            means[g], variances[g] = level[:, 0], var_by[k]
    return means, variances, bad


def apply_fold(model: nn.Module, fold: Fold) -> bool:
    """Apply `fold` in place; True when a weight variance had to be dropped (a BatchNorm)."""
    if not fold.shifts:
        as_prunable(model.get_submodule(fold.use.name)).fold_into_bias(fold.mean, fold.var)
        return False
    for name, units in fold.shifts:
        bn = model.get_submodule(name)
        units = units.to(fold.mean.device)
        delta = torch.where(units >= 0, fold.mean[units.clamp(min=0)], 0.0)
        with torch.no_grad():
            bn.running_mean.sub_(delta.to(bn.running_mean))
    return bool(fold.var.any())
