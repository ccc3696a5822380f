"""How much the network moves when a unit is replaced by its mean: a unit score for any graph.

A removed unit's mean output is folded into its readers (`shrink`, `shrink_graph`), so
what pruning loses is the unit's *variation*. The activation score measures it where it
acts, at every layer that reads the unit:

    score(u)² = Σ over readers r, over the columns j of r that carry u:  sd(x_j)² · ‖W_r[:, j]‖²

with sd(x_j) the standard deviation of r's input column j over the data (and over the
positions of a feature map) in the posterior-mean network, and W_r the reader's
posterior-mean weights (all outputs and kernel positions of column j). A unit whose
output does not vary, or that no reader weighs, scores 0. On a chain this is the
"activation" width score (`schedules.width_scores`): the sd of the next layer's input
times the norm of its outgoing weights.

On a graph the readers come from `graph_trace.analyse`: a residual addition makes one
channel of several producers (they all get the channel's score, so the same units are
kept on both branches), a concatenation or flatten maps columns to their producer, and
BatchNorm, activations, pooling and depthwise convolutions between producer and reader
are part of what the sd sees. Channels the graph pins (model outputs, ops it does not
understand) score +inf: they are not for removal. The data pass uses forward pre-hooks
on the readers, so it streams any number of batches in constant memory.

`keep_units` turns scores into the `prune_units` masks of `shrink_graph`, one fraction
of every layer (`scope="layer"`) or ranked across layers (`scope="global"`, each layer's
scores over their mean; a residual group ranked as one); the width schedule of
iterative pruning is `schedules.width_schedule`.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..example_inputs import Call, taking_by_position
from ..inputs import without_targets
from ..nn.base import evaluation_pass
from ..validation import model_device, required_inputs
from .adapters import as_prunable
from .graph_parts import find_parts
from .graph_trace import ChannelGraph, analyse
from .heads import attention_modules, head_layout, head_scores, prove_heads

Batches = Tensor | Iterable[Any]


def _batches(data: Batches, inputs: int = 1) -> Iterable[Call]:
    """The forward's call for each batch of `data`: its first `inputs` tensors, or the
    batch itself by keyword.

    `data` is one batch (a tensor, a tuple of tensors starting with the inputs, as
    `fit` reads ``(x, y)``, or a mapping of the forward's arguments by name) or an
    iterable of batches (a list, a DataLoader), each a tensor, a tuple / list starting
    with the inputs, e.g. ``(x, y)`` or ``(x, mask, y)``, or a mapping (a tokenizer's
    output, a collated dict: ``{"input_ids": ..., "attention_mask": ...}``; its targets,
    "labels", are left out as `predict` leaves them)."""
    if isinstance(data, Tensor | Mapping):
        data = [data]
    elif isinstance(data, tuple) and all(isinstance(t, Tensor) for t in data):
        data = [data]  # one batch: (x, y), or several inputs (and labels)
    for batch in data:
        if isinstance(batch, Mapping):
            call = Call.of((), without_targets(batch))  # as `predict` reads it
            if not call.keywords or not all(isinstance(t, Tensor) for t in call.keywords.values()):
                got = {k: type(v).__name__ for k, v in call.keywords.items()}
                raise TypeError(f"a batch by name must hold the forward's tensors, got {got}")
            yield call
            continue
        args = tuple(batch[:inputs]) if isinstance(batch, tuple | list) else (batch,)
        if len(args) < inputs or not all(isinstance(t, Tensor) for t in args):
            got = [type(t).__name__ for t in args]
            raise TypeError(
                f"a batch must start with the forward's {inputs} input tensor(s), got {got}"
            )
        yield Call(args)


def _same_form(call: Call, first: Call) -> tuple[Tensor, ...]:
    """`call`'s inputs as the model takes them while bound to the first batch's form."""
    if list(call.keywords) != list(first.keywords) or call.constants != first.constants:
        raise ValueError(
            f"every batch must name the same arguments: the first gave "
            f"{[*first.keywords, *first.constants]}, a later one "
            f"{[*call.keywords, *call.constants]}"
        )
    return call.inputs


def _column_norms(weight: Tensor, groups: int = 1) -> Tensor:
    """The norm of the weights that read each input column (channel): a grouped
    convolution's weight (out × in / groups × k…) reads column j only in j's group."""
    out, per_group = weight.shape[:2]
    w = weight.double().reshape(groups, out // groups, per_group, -1)
    return w.transpose(1, 2).reshape(groups * per_group, -1).norm(dim=1)


class _ColumnMoments:
    """Running mean and variance of each column of a layer's input (Chan et al.): dim 1,
    or the last axis (-1) for a Linear that reads tokens."""

    def __init__(self, axis: int = 1) -> None:
        self.axis = axis
        self.n = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def __call__(self, _module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0].detach().double()
        cols = x.movedim(self.axis, 0).reshape(x.shape[self.axis], -1)
        n = cols.shape[1]
        if n == 0:  # a call on no rows (everything filtered away) adds nothing
            mean = m2 = cols.new_zeros(cols.shape[0])
        else:
            mean = cols.mean(1)
            m2 = (cols - mean[:, None]).square().sum(1)
        if self.mean is None or self.m2 is None or self.n == 0:
            self.n, self.mean, self.m2 = n, mean, m2
            return
        if n == 0:
            return
        total = self.n + n
        delta = mean - self.mean
        self.mean = self.mean + delta * n / total
        self.m2 = self.m2 + m2 + delta.square() * self.n * n / total
        self.n = total

    def sd(self) -> Tensor:
        if self.m2 is None:
            raise ValueError("the data gave no batch")
        if self.n == 0:
            raise ValueError(
                "a scored layer never received a row from the data (the forward filtered "
                "them all away): give data that reaches it"
            )
        return (self.m2 / self.n).sqrt()


def activation_scores(
    model: nn.Module,
    data: Batches,
    *,
    max_batches: int | None = None,
    passthrough: Sequence[type[nn.Module]] = (),
    leaf_modules: Sequence[type[nn.Module]] = (),
    inputs: int | None = None,
) -> dict[str, Tensor]:
    """Per output unit of every prunable layer of the graph: sd × outgoing-norm (see above).

    `data`: one batch (a tensor, a tuple ``(x, y)`` as `fit` takes, or a mapping of the
    forward's arguments by name: a tokenizer's output), or an iterable of batches (a
    DataLoader; a batch may be `(x, y)` or a dict), read up to `max_batches`; a model
    whose `forward` takes several tensors reads the first `inputs` of each batch
    (``(x, mask, y)`` with ``inputs=2``, or one batch ``(x, mask)``); by default as many
    as `forward` requires (its positional parameters without a default, at least 1). `passthrough` /
    `leaf_modules` as for `shrink_graph`. Higher = keep; +inf for pinned channels.
    Depthwise convolutions (which follow their input's channels) get no entry; a layer
    called several times (ALBERT's shared layer) is scored over all its calls; a
    grouped convolution's group goes whole, so its input and output channels share the
    group's score. A `bayesprune.nn.MultiheadAttention` gets
    one score per head under its own name (the same formula, its heads' outputs as the
    columns of `out_proj`). The model is run in eval mode with posterior means; its mode
    is put back. Batches move to the model's device one at a time. A model whose whole
    `forward` torch.fx cannot trace is scored in parts, as `shrink_graph` shrinks it
    (`graph_parts`): the layers of its traceable submodules, their outputs pinned; a
    part the data never reaches with a row is left unscored, with a warning.
    """
    inputs = required_inputs(model) if inputs is None else inputs
    if inputs < 1:
        raise ValueError(f"inputs counts the forward's tensors, at least 1, got {inputs}")
    calls = iter(_batches(data, inputs))
    form = next(calls, None)
    if form is None:
        raise ValueError("activation_scores needs data: the iterable gave no batch")
    device = model_device(model)
    batches = (
        tuple(t.to(device) for t in _same_form(call, form))
        for call in itertools.chain([form], calls)
    )
    with taking_by_position(model, form):  # a batch by name: its tensors by position
        return _scores(model, batches, max_batches, passthrough, leaf_modules)


def _scores(
    model: nn.Module,
    batches: Iterator[tuple[Tensor, ...]],
    max_batches: int | None,
    passthrough: Sequence[type[nn.Module]],
    leaf_modules: Sequence[type[nn.Module]],
) -> dict[str, Tensor]:
    """`activation_scores` of batches that the model takes by position."""
    first = next(batches)
    options = {"passthrough": tuple(passthrough), "leaf_modules": tuple(leaf_modules)}
    found = find_parts(model, tuple(t[:2] for t in first), options["leaf_modules"])
    prove_heads(model, tuple(t[:2] for t in first))  # each on its own call, before the hooks
    graphs = []
    for part in found.parts:
        with part.bound():  # called with the constants its call in the model passed
            graphs.append((part.prefix, analyse(part.module, part.inputs, **options)))
    moments = {  # a convolution reads dim 1, a Linear the last (in every call of it)
        pre + use.name: _ColumnMoments(1 if hasattr(layer, "in_channels") else -1)
        for pre, cg in graphs
        for use in cg.sinks
        for layer in [model.get_submodule(pre + use.name)]
    }
    handles = [model.get_submodule(n).register_forward_pre_hook(m) for n, m in moments.items()]
    attention = [name for name in attention_modules(model) if found.owner(name) is not None]
    heads = {name: _ColumnMoments(-1) for name in attention}  # the output projection's inputs
    outs = {n: f"{n}.{_output_projection(model.get_submodule(n))}" for n in heads}
    handles += [model.get_submodule(outs[n]).register_forward_pre_hook(m) for n, m in heads.items()]
    with evaluation_pass(model, handles):
        model(*first)
        for i, args in enumerate(batches, start=2):
            if max_batches is not None and i > max_batches:
                break
            model(*args)
    scores = {}
    for prefix, cg in graphs:
        if not found.traced and any(moments[prefix + u.name].n == 0 for u in cg.sinks):
            warnings.warn(
                f"the data never gave part {prefix[:-1]!r} a row (a detector's mask head "
                "when no box passed its filter?): its layers are not scored and keep "
                "their units",
                UserWarning,
                stacklevel=3,
            )
            continue
        scores.update(_graph_scores(model, cg, prefix, moments))
    return {**scores, **head_scores(model, {n: m.sd() for n, m in heads.items()})}


def _output_projection(module: nn.Module) -> str:
    """The name, in an attention module, of the layer whose columns read its heads."""
    layout = head_layout(module)
    assert layout is not None  # `attention_modules` found it
    return layout.out


def _graph_scores(
    model: nn.Module, cg: ChannelGraph, prefix: str, moments: Mapping[str, _ColumnMoments]
) -> dict[str, Tensor]:
    """The scores of one traced graph's producers (`prefix`: where it sits in `model`)."""
    squared: dict[int, float] = {}
    for use in cg.sinks:
        layer = model.get_submodule(prefix + use.name)
        weight = as_prunable(layer).posterior().weight_mean.detach()
        norm = _column_norms(weight, use.groups)
        part = (moments[prefix + use.name].sd().to(norm) * norm).square().cpu()
        for col, i in enumerate(use.ids):
            g = cg.find(i)
            squared[g] = squared.get(g, 0.0) + float(part[col])
    pinned = cg.pinned_groups()
    scores = {}
    for use in cg.producers:
        groups = [cg.find(i) for i in use.ids]
        values = [float("inf") if g in pinned else squared.get(g, 0.0) ** 0.5 for g in groups]
        scores[prefix + use.name] = torch.tensor(values, dtype=torch.float64)
    return scores


def keep_units(
    scores: Mapping[str, Tensor],
    sparsity: float | None = None,
    *,
    widths: Mapping[str, int] | None = None,
    scope: str = "layer",
) -> dict[str, Tensor]:
    """Boolean keep-masks per layer for `shrink_graph(prune_units=...)`, highest scores kept.

    Either `sparsity` (a fraction of the removable units, those with a finite score, to
    drop) or `widths` ({layer: units to keep}; layers not named keep all). Units scoring
    +inf are always kept, and every layer keeps at least one. Ties are broken by unit
    index (stable), so layers that share channels through a residual addition, which get
    equal scores, keep the same channels.

    `scope` (with `sparsity`): "layer" drops that fraction of every layer; "global" drops
    that fraction of all layers' removable units together, ranked across layers, so a
    layer whose units matter evenly keeps more of them than one with a long tail of
    weak units. Raw activation scores of different layers are on different scales (a
    residual channel sums the variance it sends to every reader; BatchNorm after each
    reader undoes the reader's scale), so each layer's scores are divided by the mean of
    its finite scores first, as Torch-Pruning's global ranking does with its group
    importance. Layers with identical score vectors are a residual group (see
    `activation_scores`): they are ranked as one, a channel of the group counting once
    per layer toward the fraction, so a global cut can never split a group. Measured on
    validation (`benchmarks/resnet_fashion.py`, trained 8-16-32 ResNet, 30 % of the FLOPs
    removed, 2-epoch fine-tune, 3 seeds): "layer" 0.870, "global" 0.866, and scaling a
    group by its member count (residual streams kept whole, as Torch-Pruning's global
    ranking does) 0.865 (better in one seed), so "layer" stays the default.
    """
    if (sparsity is None) == (widths is None):
        raise ValueError("give either sparsity (a fraction) or widths ({layer: units to keep})")
    if sparsity is not None and not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    if scope == "global" and widths is not None:
        raise ValueError("scope='global' allocates a sparsity; widths are per layer already")
    unknown = sorted(set(widths or {}) - set(scores))
    if unknown:
        raise ValueError(f"widths names layers without scores: {unknown}; scored: {list(scores)}")
    if scope == "global":
        assert sparsity is not None
        return _keep_global({k: v.detach().cpu() for k, v in scores.items()}, sparsity)
    masks = {}
    for name, score in scores.items():
        score = score.detach().cpu()
        finite = torch.isfinite(score)
        removable = int(finite.sum())
        if widths is not None:
            drop = 0 if name not in widths else max(0, len(score) - max(1, int(widths[name])))
        else:
            drop = int(sparsity * removable)  # type: ignore[operator]
        drop = min(drop, removable, len(score) - 1)
        order = torch.argsort(score, stable=True)  # lowest first; +inf last
        keep = torch.ones(len(score), dtype=torch.bool)
        keep[order[:drop]] = False
        masks[name] = keep
    return masks


def score_groups(scores: Mapping[str, Tensor]) -> dict[tuple[float, ...], list[str]]:
    """Layers with identical score vectors (a residual group under activation scores),
    keyed by those scores, in first-seen order."""
    groups: dict[tuple[float, ...], list[str]] = {}
    for name, score in scores.items():
        groups.setdefault(tuple(score.double().tolist()), []).append(name)
    return groups


def _keep_global(
    scores: dict[str, Tensor], sparsity: float, *, by_members: bool = False
) -> dict[str, Tensor]:
    """`keep_units(..., scope="global")`: residual groups (identical score vectors) ranked
    as one; scores over their group's mean finite score; lowest dropped first until the
    fraction of all removable layer-units is reached (a candidate that would overshoot
    is skipped), each group keeping at least one unit. `by_members` (for the benchmark's
    comparison only) multiplies a group's normalised scores by its number of layers,
    which keeps residual streams wide as Torch-Pruning's global ranking did."""
    groups = score_groups(scores)
    candidates = []  # (normalised score, group, unit)
    limits, members = [], []
    for g, (values, names) in enumerate(groups.items()):
        score = torch.tensor(values, dtype=torch.float64)
        finite = torch.isfinite(score)
        scale = float(score[finite].mean()) if bool(finite.any()) else 1.0
        normalised = score / scale if scale > 0 else score
        if by_members:
            normalised = normalised * len(names)
        candidates += [(float(normalised[u]), g, u) for u in range(len(score)) if finite[u]]
        limits.append(min(int(finite.sum()), len(score) - 1))
        members.append(names)
    total = sum(int(torch.isfinite(s).sum()) for s in scores.values())
    budget = int(sparsity * total)
    dropped = [0] * len(members)
    masks = {name: torch.ones(len(s), dtype=torch.bool) for name, s in scores.items()}
    for _, g, u in sorted(candidates):
        weight = len(members[g])
        if budget <= 0:
            break
        if dropped[g] >= limits[g] or weight > budget:
            continue
        for name in members[g]:
            masks[name][u] = False
        dropped[g] += 1
        budget -= weight
    return masks
