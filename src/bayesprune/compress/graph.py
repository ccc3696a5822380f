"""Physically remove dead channels from any traceable network, keeping its output exactly.

(Over 400 lines on purpose: which channels go, how their constants are folded and the
surgery that slices the modules share one group record and must agree; the graph
analysis itself is `graph_trace`.)

`shrink_graph(model, example_inputs)` works on a model with its own `forward`
(torchvision's ResNets, MobileNetV3, VGG-BN and DenseNets are tested: residual sums,
concatenations, squeeze-excitation, BatchNorm / GroupNorm, depthwise and grouped
convolutions, chunk and channel slices, flatten, global pooling); `shrink` remains the
tool for plain nn.Sequential chains. Channels coupled by the graph form groups
(`graph_trace`, which lists what is followed and what is pinned); each round:

- a group is removed when it is *dead* in every producer (the deployed network gives
  the unit no incoming weight, its PIP is ≤ `inclusion_threshold`, or `prune_units`
  drops it) or *orphaned* (every layer that reads it has zero weights for it), and it
  reaches neither the model's inputs, outputs nor an op that is not understood;
- a dead group carries values that do not depend on the input (a bias, pushed through
  BatchNorm, activations, pooling, residual sums, products). At each reading layer
  their contribution W·c is folded where that is exact at every input size
  (`graph_fold`): into the reader's bias (mean, and for a random weight variance
  Σσ²c²), or, for a reader without bias, into the running mean of every BatchNorm its
  output reaches through pooling and concatenations (BN(y + δ) = BN(y) with μ → μ − δ;
  the variance of a Bayesian weight is then dropped, which only changes sampling
  mode). A constant that meets a zero-padded border (a padded convolution reading it,
  or a constant made non-uniform upstream) is not a bias. Of several such groups read
  by the same layers, one is kept and carries the others' constants in its input
  columns (`graph_merge`: Σ (c_k / c_0) · column k, exact at every input size); the
  groups that stay are recorded;
- producers lose those output units (`select(out_idx=…)`), readers the input columns
  (H·W of them per channel across a flatten), grouped convolutions whole groups,
  BatchNorm / InstanceNorm / GroupNorm their affine parameters and statistics,
  depthwise convolutions their kernels, per-channel parameters (a layer scale) their
  entries (`channel_parameters`);
- a LayerNorm over the channels reads every channel in its statistics: a group goes
  through it only where it is exactly 0 at its input and the norm's scale there is 0
  (for units `prune_units` drops, the norm's scale and shift and the producers' and
  depthwise kernels' biases are zeroed first, as for BatchNorm), never as an orphan,
  and the norm becomes a `ZeroCountingLayerNorm` whose statistics count the zeros
  (`layer_norm`): ConvNeXt's residual streams narrow exactly.

Attention heads (`bayesprune.nn.MultiheadAttention`, whose inputs and outputs the
graph pins) are removed first, by `heads`: those `prune_units` drops and dead ones.

It repeats until nothing changes (a unit whose only inputs were folded constants is dead
in the next round). Before the rounds, `prune_inputs` removes input features from every
layer that reads them (`kept_inputs` records which stay). Moment (eVI) networks are
followed through their means; their variance counts too (a unit is silent only without
mean and variance, and no constant is folded into an eVI reader). Units dropped by
`prune_units` or the threshold that still had weights are first masked (their incoming
weights set to zero), so the contract is: the shrunk model equals the input model with
those masks, in posterior-mean mode, on any input (for eVI: mean and covariance).
`check=True` verifies it on the example inputs and raises otherwise.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from ..example_inputs import Example, by_position
from ..nn.base import GatedLayer, evaluation_pass
from ..nn.moments import Factored, Moments
from .adapters import (
    CONVOLUTIONS,
    as_prunable,
    bake_parametrizations,
    copy_model,
    is_frozen_norm,
    is_prunable,
    mask_rows,
)
from .chain import deployed_weight
from .channel_parameters import (
    PARAMETER_SHAPES,
    parameter_shapes,
    slice_parameter,
    zero_entries,
)
from .graph_fold import (
    Fold,
    Reader,
    apply_fold,
    dense_weight,
    depthwise_size_bound,
    group_folds,
)
from .graph_merge import Merge, apply_merge, plan_merges
from .graph_parts import Parts, find_parts
from .graph_sizes import (
    SHAPE_ATTRIBUTES,
    keep_a_channel_per_piece,
    merged,
    rewrite_sizes,
    shape_attributes,
    with_prefix,
)
from .graph_trace import (
    NORMS,
    ChannelGraph,
    GraphTraceError,
    Use,
    analyse,
    propagates_variance,
    trace,
)
from .heads import (
    HeadLayout,
    attention_modules,
    dead_heads,
    head_count,
    head_layout,
    prove_heads,
    remove_heads,
)
from .layer_norm import rebuilt
from .shrink import LayerRecord

__all__ = [
    "GraphShrinkError",
    "GraphShrinkResult",
    "GraphTraceError",
    "kept_inputs",
    "module_shape",
    "shrink_graph",
]


class GraphShrinkError(RuntimeError):
    """The shrunk model does not compute what the (masked) input model computes."""


@dataclass
class GraphShrinkResult:
    """The smaller model, what was kept per prunable layer and per follower (BatchNorm…)."""

    model: nn.Module
    layers: list[LayerRecord]
    followers: dict[str, list[int]]  # BatchNorm / depthwise conv → kept channels (original)
    rounds: int = 0
    max_abs_difference: float | None = None  # shrunk vs masked input, example inputs
    notes: list[str] = field(default_factory=list)
    shapes: dict[str, dict[str, int]] = field(default_factory=dict)
    """Every resized module → its new size attributes (`module_shape`), e.g. to rebuild
    the user's class with these widths before loading the shrunk weights."""
    kept_inputs: dict[str, list[int]] = field(default_factory=dict)
    """Per pruned input (forward argument name): the kept features / channels, original
    indices; the shrunk model takes `x[:, kept_inputs["x"]]`. Also `kept_inputs(model)`."""
    inputs_before: dict[str, int] = field(default_factory=dict)
    heads: dict[str, list[int]] = field(default_factory=dict)
    """Per attention module that lost heads (`bayesprune.nn.MultiheadAttention`): the
    kept heads, original indices."""
    parts: list[str] = field(default_factory=list)
    """When torch.fx cannot trace the whole forward: the submodules shrunk one by one
    (`graph_parts`); [] when the whole model was traced."""
    attributes: dict[str, dict[str, Any]] = field(default_factory=dict)
    """{module name: {attribute: value}} of the split sizes rewritten with the channels
    (`graph_sizes`: `torch.split(x, self.splits, 1)`); also `shape_attributes(model)`."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-able record (without the model)."""
        return {
            "layers": [asdict(r) for r in self.layers],
            "kept_inputs": self.kept_inputs,
            "heads": self.heads,
            "inputs_before": self.inputs_before,
            "followers": self.followers,
            "rounds": self.rounds,
            "max_abs_difference": self.max_abs_difference,
            "notes": self.notes,
            "shapes": self.shapes,
            "parts": self.parts,
            "attributes": self.attributes,
        }


SIZE_ATTRIBUTES = (
    "in_channels", "out_channels", "groups", "in_features", "out_features", "num_features",
    "num_groups", "num_channels", "num_heads",
)  # fmt: skip


def module_shape(module: nn.Module) -> dict[str, int]:
    """The size attributes a module has (of `SIZE_ATTRIBUTES`): what shrinking changes."""
    return {a: int(getattr(module, a)) for a in SIZE_ATTRIBUTES if hasattr(module, a)}


def _as_keep(spec: Tensor | Sequence[int], n: int, name: str, what: str = "prune_units") -> Tensor:
    t = torch.as_tensor(spec)
    if t.dtype == torch.bool:
        if t.shape != (n,):
            raise ValueError(f"{what}[{name!r}] needs shape ({n},), got {tuple(t.shape)}")
        return t.clone()
    if t.numel() and (int(t.min()) < -n or int(t.max()) >= n):
        raise ValueError(f"{what}[{name!r}] holds indices outside 0..{n - 1}")
    keep = torch.zeros(n, dtype=torch.bool)
    keep[t.long()] = True
    return keep


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put `module` where `name` is, and under every other name of the module there (a
    layer registered twice, as T5's shared embedding, stays one module)."""
    old = model.get_submodule(name)
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)
    for owner in model.modules():
        for key, child in list(owner._modules.items()):
            if child is old:
                setattr(owner, key, module)


def _bias(layer: nn.Module) -> Tensor | None:
    """The tensor holding a layer's bias (its posterior mean for a variational layer)."""
    bias = getattr(layer, "bias_mu", None)
    bias = getattr(layer, "bias", None) if bias is None else bias
    return bias if isinstance(bias, Tensor) else None


def _tensor_input(x: Any) -> bool:
    return isinstance(x, Tensor) and x.ndim >= 2


class _GraphShrinker:
    def __init__(
        self,
        model: nn.Module,
        reference: nn.Module,
        inputs: tuple[Tensor, ...],
        threshold: float,
        forced: dict[str, Tensor],
        options: dict[str, Any],
    ) -> None:
        self.model, self.reference, self.inputs = model, reference, inputs
        self.threshold, self.forced, self.options = threshold, forced, options
        self.head_folds: dict[str, Tensor] = {}  # output projection → bias added per row
        self.kept: dict[str, Tensor] = {}  # producer / follower → kept original channels
        self.kept_inputs: dict[str, list[int]] = {}
        self.inputs_before: dict[str, int] = {}
        self.masked_inputs = 0  # input columns masked because their PIP is low
        self.before: dict[str, tuple[int, int]] = {}
        self.folded: dict[str, int] = {}
        self.merged: dict[str, int] = defaultdict(int)
        self.kept_dead: dict[str, int] = {}
        self.attributes: dict[str, dict[str, Any]] = {}  # size attributes rewritten
        self.parameters: dict[str, list[int]] = {}  # per-channel parameters sliced: shapes
        self.kept_entries: dict[str, Tensor] = {}  # per-channel parameter → kept entries
        self.masked = 0
        self.silenced = 0  # normalisation channels zeroed after dropped units
        self.zeroed = 0  # biases of dropped units whose constant could not be folded
        self.offsets_zeroed: dict[str, int] = {}  # class token / position entries zeroed
        self.bn_variance_dropped: set[str] = set()
        self._cache: dict[tuple[str, str], Any] = {}  # this round's posterior-mean layers

    def _deployed(self, name: str) -> nn.Module:
        """The posterior-mean twin of layer `name`, built once per state of the model."""
        key = ("plain", name)
        if key not in self._cache:
            self._cache[key] = as_prunable(self.model.get_submodule(name)).to_deterministic()
        return self._cache[key]

    # -- deadness --------------------------------------------------------------------
    def _dead_units(self, name: str) -> Tensor:
        if ("dead", name) in self._cache:
            return self._cache[("dead", name)]
        layer = self.model.get_submodule(name)
        w = self._deployed(name).weight.detach()
        dead = (w.flatten(1) == 0).all(1).cpu()
        pip = layer.unit_inclusion() if isinstance(layer, GatedLayer) else None
        if pip is not None:
            dead |= pip.cpu() <= self.threshold
        if name in self.forced:
            dead |= ~self.forced[name][self.kept[name]]
        self._cache[("dead", name)] = dead
        return dead

    def _spread(self, name: str) -> Tensor | None:
        """A moment layer's weight standard deviations (its variance reaches its output in
        the deterministic pass), None for other layers."""
        layer = self.model.get_submodule(name)
        if not propagates_variance(layer):
            return None
        return as_prunable(layer).posterior().weight_std.detach()

    def _zero_columns(self, use: Use) -> Tensor:
        w = dense_weight(self._deployed(use.name).weight.detach(), use.groups)
        spread = self._spread(use.name)
        if spread is not None:
            w = w.abs() + dense_weight(spread, use.groups)
        return (w.transpose(0, 1).flatten(1) == 0).all(1).cpu()

    def _removable(self, cg: ChannelGraph) -> tuple[set[int], set[int]]:
        """Groups that may go: (dead ones, orphaned ones), before folding is checked."""
        pinned = cg.pinned_groups()
        members = cg.members()
        dead_units = {p.name: self._dead_units(p.name) for p in cg.producers}
        dead = {
            g
            for g, owners in members.items()
            if g not in pinned and all(bool(dead_units[n][u]) for n, u in owners)
        }
        read_live: set[int] = set()
        for use in cg.sinks:
            zero = self._zero_columns(use)
            read_live |= {cg.find(i) for i, z in zip(use.ids, zero.tolist(), strict=True) if not z}
        normalised = {cg.find(i) for use in cg.layer_norms for i in use.ids}
        kept = pinned | read_live | normalised  # once: a union per group was quadratic
        orphan = {g for g in members if g not in kept}
        return dead - orphan, orphan

    # -- folding (graph_fold) ---------------------------------------------------------
    def _size_bound(self, cg: ChannelGraph, groups: set[int]) -> set[int]:
        """The `groups` whose constant a padded depthwise convolution (or an average pooling
        that counts its zero padding) makes depend on the input size: neither a bias fold
        nor a merge can carry them."""
        bound: set[int] = set()
        for f in cg.followers:
            if groups - bound and is_prunable(self.model.get_submodule(f.name)):
                bound |= depthwise_size_bound(cg, f, self._deployed(f.name), groups - bound)
        for use, depthwise in cg.pools:
            if groups - bound:
                bound |= depthwise_size_bound(cg, use, depthwise, groups - bound)
        return bound

    def _layer_norm_bound(self, cg: ChannelGraph, groups: set[int]) -> set[int]:
        """The `groups` a LayerNorm over the channels reads where they are not exactly 0
        or its scale is not 0: their removal would change its statistics or its output."""
        bound: set[int] = set()
        for use in cg.layer_norms:
            column_groups = [g if (g := cg.find(i)) in groups else None for i in use.ids]
            if all(g is None for g in column_groups):
                continue
            bound |= _nonzero_groups(cg, use, column_groups)
            weight = getattr(self.model.get_submodule(use.name), "weight", None)
            for j, g in enumerate(column_groups):
                if g is not None and (weight is None or bool(weight.detach()[j] != 0)):
                    bound.add(g)
        return bound

    def _plan_folds(self, cg: ChannelGraph, dead: set[int]) -> list[Fold]:
        """Folds for every reader; dead groups whose fold is impossible leave `dead`."""
        readers: dict[str, Reader] = {}
        own = {p.name: p.ids for p in cg.producers}
        dead -= self._size_bound(cg, dead) | self._layer_norm_bound(cg, dead)
        while True:
            planned, before = [], len(dead)
            folded: dict[str, dict[int, Tensor]] = {}  # a layer called twice folds once
            for use in cg.sinks:
                column_groups = [g if (g := cg.find(i)) in dead else None for i in use.ids]
                if all(g is None for g in column_groups):
                    continue
                if use.transposed:  # nothing folds into it: only exact zeros may go
                    dead -= _nonzero_groups(cg, use, column_groups)
                    continue
                if use.name not in readers:
                    layer = self.model.get_submodule(use.name)
                    readers[use.name] = Reader.of(cg, use, layer, self._deployed(use.name))
                reader = readers[use.name]
                rows = torch.tensor([cg.find(i) in dead for i in own[use.name]], dtype=torch.bool)
                means, variances, bad = group_folds(cg, use, reader, column_groups, rows)
                dead -= bad
                if use.name in folded:  # another call: its constants must be the first's
                    dead -= _differing(folded[use.name], means)
                    continue
                folded[use.name] = means
                if means:
                    shifts = [] if reader.has_bias else reader.shifts or []
                    mean, var = sum(means.values()), sum(variances.values())
                    planned.append(Fold(use, mean, var, shifts))
            if len(dead) == before:
                return planned

    def _plan_merges(
        self, cg: ChannelGraph, removed: set[int], candidates: set[int]
    ) -> tuple[set[int], list[Merge]]:
        """(groups that go, the merges that carry their constants) among `candidates`,
        dead groups that would stay (`graph_merge`); a layer keeps at least one channel."""
        bound = self._size_bound(cg, candidates) | self._layer_norm_bound(cg, candidates)
        candidates = candidates - bound
        while True:
            merged, merges = plan_merges(cg, candidates, self.model.get_submodule)
            gone = removed | merged
            emptied = [u for u in _channel_uses(cg) if _emptied(cg, u, gone)]
            if not emptied:
                return merged, merges
            # `removed` alone empties no layer (`_keep_one`): each emptied one has a merged group
            candidates = candidates - {
                next(cg.find(i) for i in u.ids if cg.find(i) in merged) for u in emptied
            }

    def _apply_fold(self, fold: Fold) -> None:
        if apply_fold(self.model, fold):
            self.bn_variance_dropped.add(fold.use.name)

    # -- surgery ---------------------------------------------------------------------
    def _keep_one(self, cg: ChannelGraph, removed: set[int]) -> None:
        """Every producer, reader and follower keeps at least one channel, and so does
        every piece of a split whose sizes an attribute holds."""
        for use in _channel_uses(cg):
            if _emptied(cg, use, removed):
                removed.discard(cg.find(use.ids[0]))
        keep_a_channel_per_piece(cg, removed)

    def _slice(self, cg: ChannelGraph, removed: set[int]) -> None:
        def keep(use: Use) -> Tensor:
            return torch.tensor([i for i, j in enumerate(use.ids) if cg.find(j) not in removed])

        outs = {p.name: keep(p) for p in cg.producers}
        ins = {s.name: keep(s) for s in cg.sinks}
        cut = {p.name for p in cg.producers if len(outs[p.name]) < len(p.ids)}
        cut |= {s.name for s in cg.sinks if len(ins[s.name]) < len(s.ids)}
        for name in cut:  # a layer that loses nothing stays itself (a tied weight stays tied)
            layer = self.model.get_submodule(name)
            out_idx, in_idx = outs.get(name), ins.get(name)
            if getattr(layer, "groups", 1) > 1:
                new = _slice_grouped(layer, out_idx, len(in_idx))
            else:
                new = as_prunable(layer).select(out_idx=out_idx, in_idx=in_idx)
            set_module(self.model, name, new)
            if out_idx is not None:
                self.kept[name] = self.kept[name][out_idx]
        norms = {u.name for u in cg.layer_norms}
        for f in cg.followers:
            idx, module = keep(f), self.model.get_submodule(f.name)
            if len(idx) == len(f.ids):
                continue
            if f.name not in norms:
                set_module(self.model, f.name, _slice_follower(module, idx))
            else:  # counts the removed channels' zeros
                set_module(self.model, f.name, rebuilt(module, idx, f.axis, cg.values[f.node].ndim))
            self.kept[f.name] = self.kept[f.name][idx]
        for p in cg.parameters:
            idx = keep(p)
            if len(idx) < len(p.ids):
                self.parameters[p.name] = slice_parameter(self.model, p.name, idx, p.axis)
                self.kept_entries[p.name] = self.kept_entries[p.name][idx]
        self.attributes = merged(self.attributes, rewrite_sizes(self.model, cg, removed))
        _retie(self.model, cg.ties, self.parameters)

    def _start(self, cg: ChannelGraph) -> None:
        for use in cg.parameters:
            self.kept_entries.setdefault(use.name, torch.arange(len(use.ids)))
        for use in [*cg.producers, *cg.followers]:
            if use.name not in self.kept:
                self.kept[use.name] = torch.arange(len(use.ids))
        for use in cg.producers:
            w = self._deployed(use.name).weight.detach()
            self.before.setdefault(use.name, (w.shape[0], w.shape[1] * use.groups))
            self.folded.setdefault(use.name, 0)
        for name in self.forced:
            if name not in self.kept:
                raise ValueError(
                    f"prune_units names {name!r}, which is not a prunable layer of the graph; "
                    f"layers: {[p.name for p in cg.producers]}"
                )

    def _forced_groups(self, cg: ChannelGraph, dead: set[int]) -> set[int]:
        """The dead groups holding a unit that `prune_units` drops."""
        groups: set[int] = set()
        for p in cg.producers:
            if p.name in self.forced:
                drop = ~self.forced[p.name][self.kept[p.name]]
                groups |= {cg.find(i) for u, i in enumerate(p.ids) if drop[u]}
        return groups & dead

    def _silence_followers(self, cg: ChannelGraph, groups: set[int]) -> None:
        """Zero the affine scale and shift of normalisations after dropped channels, here
        and in the reference: a dropped channel is deleted, not left at BatchNorm's
        constant β − γμ/σ, which a padded convolution downstream could not fold."""
        for f in cg.followers:
            module = self.model.get_submodule(f.name)
            if is_prunable(module) or getattr(module, "weight", None) is None:
                continue
            bias = getattr(module, "bias", None)
            live = module.weight.detach() != 0
            if bias is not None:
                live |= bias.detach() != 0
            rows = [u for u, i in enumerate(f.ids) if cg.find(i) in groups and live[u]]
            if rows:
                original = self.kept[f.name][rows].tolist()
                for model, idx in ((self.model, rows), (self.reference, original)):
                    norm = model.get_submodule(f.name)
                    with torch.no_grad():
                        norm.weight[idx] = 0.0
                        if getattr(norm, "bias", None) is not None:
                            norm.bias[idx] = 0.0
                self.silenced += len(rows)

    def _zero_biases(self, cg: ChannelGraph, groups: set[int]) -> bool:
        """Zero the bias of units `prune_units` drops whose constant output cannot be
        folded (a padded convolution or a LayerNorm over the channels reads it), of the
        depthwise kernels that follow them and the entries of parameters added into them
        (a ViT's class token and position embedding), here and in the reference: asked
        to delete them, delete them, as `_silence_followers` does with BatchNorm's shift."""
        before = self.zeroed, sum(self.offsets_zeroed.values())
        for p in cg.offsets:
            rows = [u for u, i in enumerate(p.ids) if cg.find(i) in groups]
            if rows and zero_entries(self.model, p.name, rows, p.axis):
                original = self.kept_entries[p.name][rows].tolist()
                zero_entries(self.reference, p.name, original, p.axis)
                self.offsets_zeroed[p.name] = self.offsets_zeroed.get(p.name, 0) + len(rows)
        depthwise = [f for f in cg.followers if is_prunable(self.model.get_submodule(f.name))]
        for p in [*cg.producers, *depthwise]:
            rows = [u for u, i in enumerate(p.ids) if cg.find(i) in groups]
            if not rows:
                continue
            original = self.kept[p.name][rows].tolist()
            for model, at in ((self.model, rows), (self.reference, original)):
                bias = _bias(model.get_submodule(p.name))
                if bias is not None and bool(bias.detach()[at].any()):
                    with torch.no_grad():
                        bias[at] = 0.0
                    self.zeroed += len(at) if model is self.model else 0
        self._cache.clear()
        return (self.zeroed, sum(self.offsets_zeroed.values())) != before

    def _unfold_heads(self, name: str, rows: list[int]) -> None:
        """Take back from masked rows of an attention's output projection the constant
        of its removed heads folded into their bias (`heads.remove_heads`): the masked
        model has those rows' weights zero, so no head reaches them there (their mean;
        the variance folded with it stays, on rows that are deleted)."""
        fold = self.head_folds.get(name)
        if fold is None:
            return
        layer = as_prunable(self.model.get_submodule(name))
        undo = torch.zeros(len(self.kept[name]), dtype=fold.dtype, device=fold.device)
        undo[rows] = -fold[self.kept[name][rows].to(fold.device)]
        if bool(undo.any()):
            layer.fold_into_bias(undo)

    def _mask_dead(self, cg: ChannelGraph, dead: set[int]) -> bool:
        """Mask the dead units that still have weights, here and in the reference."""
        before = self.masked + self.silenced
        self._silence_followers(cg, self._forced_groups(cg, dead))
        for p in cg.producers:
            w = self._deployed(p.name).weight.detach()
            spread = self._spread(p.name)  # a moment layer's zero-mean unit still adds variance
            w = w if spread is None else w.abs() + spread
            live = ~(w.flatten(1) == 0).all(1).cpu()
            rows = [u for u, i in enumerate(p.ids) if cg.find(i) in dead and live[u]]
            if rows:
                mask_rows(self.model, p.name, rows)
                mask_rows(self.reference, p.name, self.kept[p.name][rows].tolist())
                self._unfold_heads(p.name, rows)
                self.masked += len(rows)
        self._cache.clear()
        return self.masked + self.silenced > before

    def round(self) -> bool:
        """One analysis, fold and cut; False when nothing could be removed."""
        self._cache.clear()
        cg = analyse(self.model, self.inputs, **self.options)
        self._start(cg)
        dead, orphan = self._removable(cg)
        if dead and self._mask_dead(cg, dead):
            cg = analyse(self.model, self.inputs, **self.options)  # values with the masks
            dead, orphan = self._removable(cg)
        wanted, unfoldable = self._forced_groups(cg, dead), set()
        while True:
            removed = dead | orphan
            self._keep_one(cg, removed)
            dead, orphan = dead & removed, orphan & removed
            planned = set(dead)
            folds = self._plan_folds(cg, dead)  # drops the dead groups that cannot fold
            unfoldable |= planned - dead
            if dead | orphan == removed:
                break
        if self._zero_biases(cg, unfoldable & wanted):
            return True  # the next round sees those units emit act(0) instead
        merged, merges = self._plan_merges(cg, removed, unfoldable - wanted - removed)
        removed |= merged
        self._record_kept_dead(cg, removed)
        if not removed:
            return False
        self._count_folded(cg, dead)
        for fold in folds:
            self._apply_fold(fold)
        for merge in merges:
            apply_merge(self.model, merge)
        members = cg.members()
        for g in merged:
            for name, _ in members[g]:
                self.merged[name] += 1
        self._slice(cg, removed)
        return True

    # -- inputs (before the rounds) ------------------------------------------------------
    def prune_inputs(self, spec: Mapping[str, Any] | bool) -> None:
        """Remove input features: those `spec` does not keep, or (spec True) those no layer
        reads (zero weights, or an input PIP at most the threshold, masked first)."""
        graph = trace(self.model, self.options["leaf_modules"], self.inputs)
        places = [str(n.target) for n in graph.graph.nodes if n.op == "placeholder"]
        taking = {n for n, x in zip(places, self.inputs, strict=False) if _tensor_input(x)}
        explicit = spec if isinstance(spec, Mapping) else {}
        unknown = sorted(set(explicit) - taking)
        if unknown:
            raise ValueError(
                f"prune_inputs names {unknown}, which are not inputs of the model with "
                f"features on dim 1; inputs: {sorted(taking)}"
            )
        free = set(explicit) if explicit else taking
        cg = analyse(self.model, self.inputs, free_inputs=free, **self.options)
        self._start(cg)
        removed: set[int] = set()
        unread = self._unread_input_groups(cg) if not explicit else set()
        for name, ids in cg.inputs.items():
            if explicit:
                keep = _as_keep(explicit[name], len(ids), name, "prune_inputs")
                if not keep.any():
                    raise ValueError(f"prune_inputs[{name!r}] keeps no feature: keep at least one")
                drop = {cg.find(i) for i, k in zip(ids, keep.tolist(), strict=True) if not k}
                self._check_sliceable(cg, name, ids, keep, drop)
            else:
                drop = {g for i in ids if (g := cg.find(i)) in unread}
                if len(drop) == len({cg.find(i) for i in ids}):
                    drop.discard(cg.find(ids[0]))  # an input keeps one feature
            removed |= drop
        asked = set(removed)
        keep_a_channel_per_piece(cg, removed)
        if explicit and removed != asked:
            raise ValueError(
                "prune_inputs drops every feature of one piece of a torch.split whose sizes "
                "an attribute holds (its layer would get no input): keep one feature per piece"
            )
        if not removed:
            return
        self._mask_input_columns(cg, removed)
        self._slice(cg, removed)
        for position, name in enumerate(places):
            if name not in cg.inputs or position >= len(self.inputs):
                continue
            ids = cg.inputs[name]
            keep = torch.tensor([j for j, i in enumerate(ids) if cg.find(i) not in removed])
            self.inputs_before[name] = len(ids)
            self.kept_inputs[name] = keep.tolist()
            x = self.inputs[position]
            self.inputs = (
                *self.inputs[:position],
                x.index_select(1, keep.to(x.device)),
                *self.inputs[position + 1 :],
            )
        self._cache.clear()

    def _check_sliceable(
        self, cg: ChannelGraph, name: str, ids: list[int], keep: Tensor, drop: set[int]
    ) -> None:
        """An input feature goes only where every op it reaches can be sliced."""
        pinned, members = cg.pinned_groups(), cg.members()
        for j, i in enumerate(ids):
            g = cg.find(i)
            if g not in drop:
                continue
            why = None
            if g in pinned:
                why = f"reaches {cg.why_pinned(g)}, which shrink_graph cannot slice"
            elif g in members:
                layer = members[g][0][0]
                why = f"is tied to the outputs of {layer!r} (an addition, or a grouped convolution)"
            elif any(cg.find(k) == g and keep[m] for m, k in enumerate(ids)):
                why = "is tied to a kept feature (an addition or chunk of the input)"
            if why:
                raise ValueError(
                    f"prune_inputs: feature {j} of input {name!r} {why}. Only features that "
                    "reach prunable layers (nn.Linear / nn.ConvNd / Bayesian layers, through "
                    "activations, pooling, flatten, BatchNorm or concatenation) can be removed: "
                    "keep that feature, or drop it from your data and build the model narrower"
                )

    def _unread_input_groups(self, cg: ChannelGraph) -> set[int]:
        """Free input groups that every reading layer ignores (zero weights or low PIP)."""
        candidates = {cg.find(i) for ids in cg.inputs.values() for i in ids}
        candidates -= cg.pinned_groups() | set(cg.members())
        read: set[int] = set()
        for use in cg.sinks:
            unread = self._zero_columns(use)
            layer = self.model.get_submodule(use.name)
            pip = as_prunable(layer).posterior().input_inclusion
            if pip is not None and len(pip) == len(use.ids):
                unread = unread | (pip.detach().cpu() <= self.threshold)
            read |= {cg.find(i) for i, u in zip(use.ids, unread.tolist(), strict=True) if not u}
        return candidates - read

    def _mask_input_columns(self, cg: ChannelGraph, removed: set[int]) -> None:
        """Mask the readers' columns of removed inputs, here and in the reference, so the
        reference is the model that does not read those features."""
        for use in cg.sinks:
            zero = self._zero_columns(use)
            cols = [j for j, i in enumerate(use.ids) if cg.find(i) in removed]
            live = [j for j in cols if not zero[j]]
            if live:
                for model in (self.model, self.reference):
                    mask_rows(model, use.name, live, columns=True)
                self.masked_inputs += len(live)
        self._cache.clear()

    def _count_folded(self, cg: ChannelGraph, dead: set[int]) -> None:
        nonzero: set[int] = set()
        for use in cg.sinks:
            x = cg.input_value(use)
            for col, i in enumerate(use.ids):
                g = cg.find(i)
                if g in dead and g not in nonzero and x[:, col].any():
                    nonzero.add(g)
        for g, owners in cg.members().items():
            if g in nonzero:
                for name, _ in owners:
                    self.folded[name] += 1

    def _record_kept_dead(self, cg: ChannelGraph, removed: set[int]) -> None:
        pinned = cg.pinned_groups()
        dead_units = {p.name: self._dead_units(p.name) for p in cg.producers}
        self.kept_dead = {p.name: 0 for p in cg.producers}
        for g, owners in cg.members().items():
            if g in pinned or g in removed:
                continue
            if all(bool(dead_units[n][u]) for n, u in owners):
                for name, _ in owners:
                    self.kept_dead[name] += 1

    def records(self) -> list[LayerRecord]:
        out = []
        for name, (units, inputs) in self.before.items():
            layer = self.model.get_submodule(name)
            w = deployed_weight(layer)
            out.append(
                LayerRecord(
                    name=name,
                    kind=type(self.model.get_submodule(name)).__name__,
                    units_before=units,
                    units_after=w.shape[0],
                    inputs_before=inputs,
                    inputs_after=w.shape[1] * getattr(layer, "groups", 1),
                    kept_units=self.kept[name].tolist(),
                    folded_units=self.folded[name],
                    kept_dead_units=self.kept_dead.get(name, 0),
                    merged_units=self.merged[name],
                )
            )
        return out


def _channel_uses(cg: ChannelGraph) -> list[Use]:
    """Every producer, reader and follower of the graph's channels."""
    return [*cg.producers, *cg.sinks, *cg.followers]


def _on_kept_heads(
    expected: list[Tensor], got: list[Tensor], kept_heads: Mapping[str, list[int]]
) -> tuple[list[Tensor], int]:
    """The masked model's outputs, each that holds one entry per head of an attention
    module that lost heads (a cache of its keys and values, B × heads × T × d) reduced
    to that module's kept heads, where the shrunk output is exactly that (so a per-head
    output narrows with its heads, compared value by value); how many were reduced."""
    reduced, narrowed = list(expected), 0
    if len(expected) != len(got):
        return reduced, narrowed
    for k, (e, g) in enumerate(zip(expected, got, strict=True)):
        if e.shape == g.shape or e.ndim != g.ndim:
            continue
        axes = [a for a in range(e.ndim) if e.shape[a] != g.shape[a]]
        if len(axes) != 1:
            continue
        for kept in kept_heads.values():
            if len(kept) != g.shape[axes[0]] or max(kept, default=0) >= e.shape[axes[0]]:
                continue
            candidate = e.index_select(axes[0], torch.tensor(kept, device=e.device))
            if torch.allclose(candidate, g, rtol=1e-4, atol=1e-5 * max(1.0, _largest(e))):
                reduced[k], narrowed = candidate, narrowed + 1
                break
    return reduced, narrowed


def _retie(model: nn.Module, ties: Mapping[str, str], shapes: dict[str, list[int]]) -> None:
    """The modules that share an embedding table's weight (`graph_trace.embedding_ties`:
    other tables, which held the very tensor the table's was sliced from, and a tied
    output layer, sliced apart along the same columns) hold the table's weight again;
    `shapes` gets the other tables' new weight shapes (for `save_shrunk`)."""
    for name, table in ties.items():
        holder, source = model.get_submodule(name), model.get_submodule(table).weight
        if holder.weight is source:
            continue
        cut = holder.weight.shape != source.shape or not torch.equal(holder.weight, source)
        if not isinstance(holder, nn.Embedding) and cut:  # a Linear's columns were sliced
            raise GraphShrinkError(
                f"{name!r} and {table!r} share a weight, and shrinking cut them apart "
                "differently; please report this model"
            )
        holder.weight = source
        if isinstance(holder, nn.Embedding):
            holder.embedding_dim = source.shape[1]
            if f"{table}.weight" in shapes:
                shapes[f"{name}.weight"] = list(source.shape)


def _emptied(cg: ChannelGraph, use: Use, gone: set[int]) -> bool:
    """Whether `use` would lose every channel if the groups `gone` went."""
    return bool(use.ids) and all(cg.find(i) in gone for i in use.ids)


def _cut(module: nn.Module, new: nn.Module, names: tuple[str, ...], idx: Tensor) -> None:
    """Give `new` the channels `idx` of `module`'s per-channel tensors `names`."""
    for name in names:
        t = getattr(module, name, None)
        if t is None:
            continue
        cut = t.detach().index_select(0, idx.to(t.device)).clone()
        if isinstance(t, nn.Parameter):
            cut = nn.Parameter(cut, t.requires_grad)
        setattr(new, name, cut)


def _slice_grouped(module: nn.Module, out_idx: Tensor, inputs: int) -> nn.Module:
    """A grouped convolution keeping the output channels `out_idx` (whole groups)."""
    per_group = module.out_channels // module.groups
    if isinstance(module, CONVOLUTIONS):
        new = copy.deepcopy(module)
        _cut(module, new, ("weight", "bias"), out_idx)
    else:
        new = as_prunable(module).select(out_idx=out_idx)
    new.out_channels, new.in_channels = len(out_idx), inputs
    new.groups = len(out_idx) // per_group
    return new


def _nonzero_groups(cg: ChannelGraph, use: Use, column_groups: list[int | None]) -> set[int]:
    """The dead groups `use` reads that are not exactly 0 on the example."""
    x = cg.input_value(use)[0]
    return {g for j, g in enumerate(column_groups) if g is not None and bool(x[j].any())}


def _slice_follower(module: nn.Module, idx: Tensor) -> nn.Module:
    """A norm layer or depthwise convolution keeping channels `idx` (one per channel)."""
    new = copy.deepcopy(module)
    if isinstance(module, NORMS) or is_frozen_norm(type(module)):
        if hasattr(module, "num_features"):
            new.num_features = len(idx)
        _cut(module, new, ("weight", "bias", "running_mean", "running_var"), idx)
        return new
    if isinstance(module, nn.GroupNorm):  # whole groups go (graph_trace unites them)
        size = module.num_channels // module.num_groups
        new.num_channels, new.num_groups = len(idx), len(idx) // size
        _cut(module, new, ("weight", "bias"), idx)
        return new
    # depthwise: in = out = groups; its kernels are its "output units"
    if isinstance(module, CONVOLUTIONS):
        _cut(module, new, ("weight", "bias"), idx)
    else:
        new = as_prunable(module).select(out_idx=idx)
    new.in_channels = new.out_channels = new.groups = len(idx)
    return new


def _tensors(value: Any) -> list[Tensor]:
    """Every tensor of an output (a moment network's mean and covariance, a tuple...)."""
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, tuple | list):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def _outputs(model: nn.Module, inputs: tuple[Tensor, ...]) -> list[Tensor]:
    with evaluation_pass(model):
        out = model(*inputs)
    if isinstance(out, Moments) and isinstance(out.cov, Factored):
        out = (out.mean, out.variance())  # eVI: a low-rank covariance by its marginals
    return _tensors(out)


KEPT_INPUTS = "bayesprune_kept_inputs"
"""The attribute of a shrunk model holding its kept input features (`kept_inputs`)."""


def kept_inputs(model: nn.Module) -> dict[str, list[int]]:
    """{input name: kept features} of a model shrunk with `prune_inputs` (or loaded by
    `load_shrunk`); {} when its inputs are whole. Slice data with `x[:, kept["x"]]`."""
    return dict(getattr(model, KEPT_INPUTS, None) or {})


def _remove_heads(
    work: nn.Module,
    reference: nn.Module,
    attention: Mapping[str, nn.Module],
    keep: Mapping[str, Tensor],
    threshold: float,
    folds: dict[str, Tensor],
    shapes: dict[str, list[int]],
) -> tuple[dict[str, list[int]], dict[str, dict[str, Any]]]:
    """Remove the heads `keep` drops and the dead ones (`heads`); kept heads per module
    that lost any, and the size attributes rewritten (a fused module's head count);
    `folds` gets what each output projection's bias received per row."""
    kept, attributes = {}, {}
    for name, module in attention.items():
        before = head_count(module)
        wanted = keep.get(name, torch.ones(before, dtype=torch.bool))
        drop = wanted & ~dead_heads(module, threshold)
        survivors, changed = remove_heads(work, name, drop, reference, folds, shapes)
        if len(survivors) < before:
            kept[name] = survivors.tolist()
        for path, value in changed.items():  # "self.num_attention_heads": its module's
            owner, _, attribute = f"{name}.{path}".rpartition(".")
            attributes.setdefault(owner, {})[attribute] = value
    return kept, attributes


def _head_projection(layouts: Mapping[str, HeadLayout], name: str) -> bool:
    """`name` is a layer whose rows hold an attention module's heads (q, k, v; the output
    projection's rows are the residual stream's units, which the channel rounds take)."""
    return any(
        name.startswith(f"{module}.") and name[len(module) + 1 :] in layout.projections
        for module, layout in layouts.items()
    )


def shrink_graph(
    model: nn.Module,
    example_inputs: Example,
    *,
    prune_units: Mapping[str, Tensor | Sequence[int]] | None = None,
    inclusion_threshold: float = 0.5,
    passthrough: Sequence[type[nn.Module]] = (),
    leaf_modules: Sequence[type[nn.Module]] = (),
    prune_inputs: Mapping[str, Tensor | Sequence[int]] | bool | None = None,
    check: bool = True,
    tolerance: float = 1e-4,
    max_rounds: int = 20,
) -> GraphShrinkResult:
    """A genuinely smaller copy of `model` without its dead channels (module docstring).

    `example_inputs`: one batch for `model(*example_inputs)` (a tensor or a tuple), or
    for `model(**example_inputs)` (a mapping: a tokenizer's output, T5's
    `decoder_input_ids`; settings such as `return_dict=False` are passed as given);
    its spatial size fixes where folding is checked. `prune_units` = {layer name: units
    to KEEP (indices or boolean mask)} deletes the others: their incoming weights are
    masked and the scale and shift of a normalisation after them (BatchNorm…) zeroed,
    so the channel is 0 rather than BatchNorm's constant, which a padded convolution
    downstream could not absorb (the check compares against that model); where no layer
    can absorb a dropped unit's own constant (a padded convolution reads it) its bias is
    zeroed too, so it is deleted rather than kept. For a
    `bayesprune.nn.MultiheadAttention` the units are its heads (`compress.heads`: their
    value rows masked, the constant folded into `out_proj`'s bias); dead heads go too.
    `passthrough`: extra module types that act on each channel apart; `leaf_modules`:
    module types kept whole (their channels are kept). `prune_inputs` = {forward argument
    name: features / channels (dim 1) to KEEP} removes the others from every layer that
    reads them, or True removes the features no layer reads (all-zero weights, or input
    inclusion probability ≤ `inclusion_threshold`, masked first); the shrunk model then
    takes `x[:, result.kept_inputs["x"]]` and equals the model that does not read the
    dropped features. A feature that reaches an op that cannot be sliced (a reshape with
    constant sizes, an addition to a layer's output, the output) is a ValueError naming
    the op; with True such features are kept. `check` compares the shrunk and
    the masked input model on the example inputs in posterior-mean mode and raises
    GraphShrinkError beyond `tolerance` (relative to the output's scale; for a bfloat16 or
    float16 model at least 4 × its machine epsilon). Layers under a parametrization
    (`weight_norm`…) hold its current value as plain weights in the result. The input
    model is not modified.

    A model whose whole `forward` torch.fx cannot trace (a detector, a forward that
    branches on a tensor's value) is shrunk in parts (`graph_parts`): its largest
    submodules that trace, each on the arguments it receives from the example, with
    their inputs and outputs kept; `result.parts` names them, a note says why, and
    `prune_units` may name layers inside them only. `check` then compares every call
    of every part, and the model's outputs with the masked model's parts handing on the
    shrunk parts' outputs (so code outside the parts that reads a changed width is
    caught); the example may hold non-tensors (a detector's list of images).
    """
    if not 0.0 <= inclusion_threshold < 1.0:
        raise ValueError(f"inclusion_threshold must be in [0, 1), got {inclusion_threshold}")
    settings = _Settings(
        inclusion_threshold, tuple(passthrough), tuple(leaf_modules), check, tolerance,
        max_rounds,
    )  # fmt: skip
    with by_position(model, example_inputs) as (inputs, cls):
        found = find_parts(model, inputs, settings.leaf_modules)
        if found.traced:
            result = _shrink_traced(model, inputs, prune_units, prune_inputs, settings)[0]
            if found.reason:  # traced with the example's values
                result.notes.append(found.reason)
        elif prune_inputs:
            raise ValueError(
                f"prune_inputs needs the whole forward traced, and {found.reason}; shrink "
                "without prune_inputs, or make the forward traceable"
            )
        else:
            result = _shrink_parts(model, inputs, found, prune_units or {}, settings)
    result.model.__class__ = cls  # a copy made while it took a keyword example by position
    return result


@dataclass(frozen=True)
class _Settings:
    """shrink_graph's options that every part is shrunk with."""

    inclusion_threshold: float
    passthrough: tuple[type[nn.Module], ...]
    leaf_modules: tuple[type[nn.Module], ...]
    check: bool
    tolerance: float
    max_rounds: int


def _shrink_traced(
    model: nn.Module,
    inputs: tuple[Tensor, ...],
    prune_units: Mapping[str, Tensor | Sequence[int]] | None,
    prune_inputs: Mapping[str, Tensor | Sequence[int]] | bool | None,
    settings: _Settings,
) -> tuple[GraphShrinkResult, nn.Module]:
    """`shrink_graph` of a model torch.fx traces whole; also the masked model it was
    checked against (the reference a model shrunk in parts is assembled from)."""
    inclusion_threshold, max_rounds = settings.inclusion_threshold, settings.max_rounds
    passthrough, leaf_modules = settings.passthrough, settings.leaf_modules
    check, tolerance = settings.check, settings.tolerance
    work, reference = copy_model(model), copy_model(model)
    baked = bake_parametrizations(work)
    bake_parametrizations(reference)
    forced: dict[str, Tensor] = {}
    prove_heads(work, inputs)  # each attention probed on its own call in the model
    attention = attention_modules(work)
    layouts = {n: layout for n, m in attention.items() if (layout := head_layout(m)) is not None}
    for name, spec in (prune_units or {}).items():
        try:
            layer = work.get_submodule(name)
        except AttributeError as err:
            raise ValueError(f"prune_units names unknown module {name!r}") from err
        units = head_count(layer) if name in attention else deployed_weight(layer).shape[0]
        forced[name] = _as_keep(spec, units, name)
    heads = {n: forced.pop(n) for n in list(forced) if n in attention}
    for name in [n for n in forced if _head_projection(layouts, n)]:
        dropped = (~forced.pop(name)).nonzero().flatten().tolist()  # a projection's units:
        for target in (work, reference):  # masked; heads left without values go below
            mask_rows(target, name, dropped)
    options = {"passthrough": tuple(passthrough), "leaf_modules": tuple(leaf_modules)}
    worker = _GraphShrinker(work, reference, inputs, inclusion_threshold, forced, options)
    if prune_inputs:
        worker.prune_inputs(prune_inputs)
    kept_heads, head_attributes = _remove_heads(
        work, reference, attention, heads, inclusion_threshold, worker.head_folds,
        worker.parameters,
    )  # fmt: skip
    rounds = 0
    while rounds < max_rounds and worker.round():
        rounds += 1
    followers = {n: k.tolist() for n, k in worker.kept.items() if n not in worker.before}
    result = GraphShrinkResult(work, worker.records(), followers, rounds)
    result.kept_inputs, result.inputs_before = worker.kept_inputs, worker.inputs_before
    result.heads = kept_heads
    worker.attributes = merged(head_attributes, worker.attributes)
    result.attributes = worker.attributes
    if worker.attributes:  # travels with the model (save_shrunk), after any earlier shrink
        setattr(work, SHAPE_ATTRIBUTES, merged(shape_attributes(model), worker.attributes))
    if worker.parameters:
        setattr(work, PARAMETER_SHAPES, {**parameter_shapes(model), **worker.parameters})
    if worker.kept_inputs:  # relative to the data: composed with an earlier pruning
        before = kept_inputs(model)
        composed = {
            k: [before[k][i] for i in v] if k in before else list(v)
            for k, v in worker.kept_inputs.items()
        }
        setattr(work, KEPT_INPUTS, {**before, **composed})
    projections = [
        f"{n}.{p}"
        for n in kept_heads
        for layout in [layouts[n]]
        for p in (*layout.projections, layout.out)
    ]  # fmt: skip
    for name in [*worker.before, *followers, *kept_heads, *projections]:
        shape = module_shape(work.get_submodule(name))
        if shape != module_shape(model.get_submodule(name)):
            result.shapes[name] = shape
    if baked:
        result.notes.append(
            f"{baked} layers under a parametrization (weight_norm, spectral_norm…) hold its "
            "current value as a plain weight in the result"
        )
    if worker.masked:
        result.notes.append(
            f"{worker.masked} units dropped by prune_units / the inclusion threshold still had "
            "weights (or, in an eVI layer, weight variance): they were masked first (the result "
            "equals the masked model)"
        )
    if worker.silenced:
        result.notes.append(
            f"{worker.silenced} normalisation channels after units dropped by prune_units had "
            "their scale and shift zeroed: the result equals the model with those channels "
            "deleted, not only masked"
        )
    if worker.zeroed:
        result.notes.append(
            f"{worker.zeroed} units dropped by prune_units emitted a constant that no layer "
            "could absorb (a padded convolution or a LayerNorm over the channels reads it): "
            "their bias was zeroed too, so the result equals the model with those units "
            "deleted"
        )
    if worker.offsets_zeroed:
        zeroed = ", ".join(f"{n} ({k})" for n, k in sorted(worker.offsets_zeroed.items()))
        result.notes.append(
            f"the entries of parameters added into the channels of units dropped by "
            f"prune_units were zeroed too: {zeroed}; a class token, a position embedding "
            "or an embedding table makes a channel nonzero, so this is what deleting the "
            "units means"
        )
    for name in sorted(worker.bn_variance_dropped):
        result.notes.append(
            f"{name!r} has no bias: folded constants went into the next BatchNorm's running "
            "mean, without their weight variance (sampling mode changes slightly)"
        )
    if worker.masked_inputs:
        result.notes.append(
            f"{worker.masked_inputs} weight columns on removed input features were not zero: "
            "they were masked first (the result equals the model that ignores those features)"
        )
    kept_dead = sum(r.kept_dead_units for r in result.layers)
    if kept_dead:
        result.notes.append(
            f"{kept_dead} dead units were kept: their constant output meets a padded border, "
            "a layer without bias or BatchNorm, or a moment (eVI) layer, so it cannot be "
            "folded exactly (where several share their readers, one is kept and carries "
            "the others: merged_units)"
        )
    expected, got = _outputs(reference, inputs), _outputs(work, worker.inputs)
    expected, narrowed = _on_kept_heads(expected, got, kept_heads)
    shapes = [(tuple(e.shape), tuple(g.shape)) for e, g in zip(expected, got, strict=True)]
    if any(e != g for e, g in shapes):
        raise GraphShrinkError(
            "the shrunk model's outputs have other shapes than the masked model's "
            f"({[s for s in shapes if s[0] != s[1]][:3]}): an output carries units that "
            "were removed; keep the module that writes it whole (leave it out of "
            "prune_units) or return no such output"
        )
    if narrowed:
        result.notes.append(
            f"{narrowed} outputs hold one entry per attention head (a cache of keys and "
            "values): they have the kept heads only, checked against the masked model's "
            "entries of those heads"
        )
    diff = max(_largest(e - g) for e, g in zip(expected, got, strict=True))
    result.max_abs_difference = diff
    scale = max(_largest(e) for e in expected)
    if check and diff > _tolerance(tolerance, model) * max(1.0, scale):
        raise GraphShrinkError(
            f"shrunk output differs from the masked model by up to {diff:.3g}: a module in "
            "passthrough= may mix channels, or a layer's to_deterministic/posterior may not "
            "reflect its gates; pass check=False to inspect result.model"
        )
    return result, reference


def _shrink_parts(
    model: nn.Module,
    inputs: tuple[Any, ...],
    found: Parts,
    prune_units: Mapping[str, Tensor | Sequence[int]],
    settings: _Settings,
) -> GraphShrinkResult:
    """`shrink_graph` of a model torch.fx cannot trace whole: each part shrunk on its own
    (with its own check) and put back into a copy; then the whole model checked in one
    forward of the example (`_part_differences`)."""
    for name in prune_units:
        try:
            model.get_submodule(name)
        except AttributeError as err:
            raise ValueError(f"prune_units names unknown module {name!r}") from err
        if found.owner(name) is None:
            raise ValueError(
                f"prune_units names {name!r}, which lies outside every part of "
                f"{type(model).__name__} that torch.fx can trace "
                f"({', '.join(p.name for p in found.parts)}), so its units cannot be "
                "removed; leave it out of prune_units, or make the code around it traceable"
            )
    work, reference = copy_model(model), copy_model(model)
    result = GraphShrinkResult(work, [], {}, parts=[p.name for p in found.parts])
    sliced = parameter_shapes(model)
    for part in found.parts:
        prefix = part.prefix
        units = {n[len(prefix) :]: v for n, v in prune_units.items() if n.startswith(prefix)}
        with part.bound() as cls:  # called with the constants its call in the model passed
            shrunk, masked = _shrink_traced(part.module, part.inputs, units, None, settings)
        shrunk.model.__class__ = masked.__class__ = cls  # copies made while it was bound
        set_module(work, part.name, shrunk.model)
        set_module(reference, part.name, masked)
        result.layers += [replace(r, name=prefix + r.name) for r in shrunk.layers]
        result.followers.update({prefix + n: k for n, k in shrunk.followers.items()})
        result.shapes.update({prefix + n: v for n, v in shrunk.shapes.items()})
        result.heads.update({prefix + n: v for n, v in shrunk.heads.items()})
        result.attributes = merged(result.attributes, with_prefix(shrunk.attributes, prefix))
        sliced.update({prefix + n: v for n, v in parameter_shapes(shrunk.model).items()})
        result.rounds = max(result.rounds, shrunk.rounds)
        result.notes += [f"{part.name}: {note}" for note in shrunk.notes]
    if result.attributes:
        setattr(work, SHAPE_ATTRIBUTES, merged(shape_attributes(model), result.attributes))
    if sliced:
        setattr(work, PARAMETER_SHAPES, sliced)
    outside = (
        f"; the prunable layers outside them keep every unit: {', '.join(found.outside)}"
        if found.outside
        else ""
    )
    result.notes.insert(
        0,
        f"{found.reason}: it was shrunk in parts, the submodules that trace "
        f"({', '.join(result.parts)}), each with its inputs and outputs kept{outside}",
    )
    diff, scale = _part_differences(reference, work, inputs, result.parts, result.heads)
    result.max_abs_difference = diff
    if settings.check and diff > _tolerance(settings.tolerance, model) * max(1.0, scale):
        raise GraphShrinkError(
            f"the shrunk model differs from the masked one by up to {diff:.3g} in the "
            "example's forward (inf: another shape or number of outputs): at a part's "
            "output, or at the model's although both models' parts handed on the same "
            "values, so code outside the parts reads something shrinking changed (a "
            "layer's width or weights); pass check=False to inspect result.model"
        )
    return result


def _part_differences(
    reference: nn.Module,
    work: nn.Module,
    inputs: tuple[Any, ...],
    parts: Sequence[str],
    kept_heads: Mapping[str, list[int]],
) -> tuple[float, float]:
    """Largest |shrunk − masked| in one forward of `inputs` (inf where shapes or counts
    differ), and the largest |masked value| compared: over every output of every call of
    every part, and over the model's outputs when the masked model's parts hand on the
    shrunk parts' outputs. The code outside the parts then reads the same values in both
    models, so its outputs differ only if it reads something shrinking changed; a
    threshold or a sort in it cannot turn a rounding difference into a large one. An
    output with one entry per head narrows with the heads (`_on_kept_heads`)."""
    shrunk: list[Any] = []
    work_handles = [
        work.get_submodule(name).register_forward_hook(lambda _m, _a, out: shrunk.append(out))
        for name in parts
    ]
    try:
        work_out = _outputs(work, inputs)
    finally:
        for handle in work_handles:
            handle.remove()
    masked: list[Any] = []

    def hand_on(_module: nn.Module, _args: Any, out: Any) -> Any:
        masked.append(out)
        return shrunk[len(masked) - 1] if len(masked) <= len(shrunk) else out

    handles = [reference.get_submodule(name).register_forward_hook(hand_on) for name in parts]
    try:
        reference_out = _outputs(reference, inputs)
    finally:
        for handle in handles:
            handle.remove()
    if len(masked) != len(shrunk):
        return float("inf"), 0.0
    expected = [t for out in masked for t in _tensors(out)] + reference_out
    got = [t for out in shrunk for t in _tensors(out)] + work_out
    expected = _on_kept_heads(expected, got, kept_heads)[0]  # a part's per-head cache
    diff, scale = 0.0, 0.0
    if len(expected) != len(got):
        return float("inf"), scale
    for e, g in zip(expected, got, strict=True):
        if e.shape != g.shape:
            return float("inf"), scale
        diff, scale = max(diff, _largest(e - g)), max(scale, _largest(e))
    return diff, scale


def _differing(first: Mapping[int, Tensor], other: Mapping[int, Tensor]) -> set[int]:
    """The groups whose constant offsets differ between two calls of one reader (a layer
    the graph calls twice folds one offset into its bias: it must serve both calls)."""
    differ = set()
    for g in {*first, *other}:
        a, b = first.get(g), other.get(g)
        same = a is not None and b is not None and a.shape == b.shape
        if not (same and torch.allclose(a, b, rtol=1e-5, atol=1e-7)):
            differ.add(g)
    return differ


def _tolerance(tolerance: float, model: nn.Module) -> float:
    """`tolerance`, or 4 × the machine epsilon of the model's coarsest floating dtype where
    that is larger: a bfloat16 or float16 network summing in another order (fewer terms,
    a folded bias) moves its outputs by more than 1e-4 of their scale."""
    eps = {torch.finfo(p.dtype).eps for p in model.parameters() if p.is_floating_point()}
    return max([tolerance, *(4 * e for e in eps)])


def _largest(t: Tensor) -> float:
    """max |t|, 0 for an empty tensor (a part the example reached with no rows)."""
    return float(t.abs().max()) if t.numel() else 0.0
