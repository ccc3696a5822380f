"""Iterative unit pruning to a width schedule: narrow a dense chain round by round.

Weight-level pruning rarely empties a whole unit, so node-level compression prunes
units directly. One round (`prune_to_widths`) scores the first layer's inputs and
every hidden layer's units (`width_scores`), keeps the top ones to the round's
target widths and shrinks the network; the caller fine-tunes between rounds. The
targets come from `width_schedule`: a geometric path from the dense widths to the
final ones, optionally followed by rounds that scale every width by a constant.

A removed unit should lose only its variation, not its mean: a dropped input's mean
contribution is folded into the first layer's bias, and a dropped hidden unit is
made to emit its mean activation (its incoming weights are masked and its bias set
to that mean, which `shrink` then folds into the next layer). Setting the bias this
way assumes ReLU hidden units (relu(mean) = mean, as a mean of ReLU outputs is ≥ 0).

Layers are read through the compression interface only (`posterior`,
`fold_into_bias`, `set_weight_mask`), so any dense chain of prunable layers works.
Nothing here trains: the schedule around the rounds belongs to the caller.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..nn.base import VariationalLayer, evaluation_pass
from .adapters import as_prunable, copy_model, prunable_layers
from .masks import apply_masks
from .scores import UNIT_SCORES, input_scores, unit_scores
from .shrink import ShrinkResult, shrink

ACTIVATION = "activation"
WIDTH_SCORES = (ACTIVATION, *UNIT_SCORES)
"""Scores `width_scores` takes: "activation" (needs data) or any of `UNIT_SCORES`."""


def width_schedule(
    start: Sequence[int],
    final: Sequence[int],
    rounds: int,
    *,
    extra_rounds: int = 0,
    extra_factor: float = 0.9,
) -> list[tuple[int, ...]]:
    """Target widths per round: geometric from `start` (excluded) to `final` (reached at
    round `rounds`), then `extra_rounds` more rounds that each scale the previous widths
    by `extra_factor` (floored, at least 1), to probe past the planned end.

    Geometric steps remove the same share of each layer per round, so early rounds,
    which cut the most units, still leave every layer a fixed fraction of its width.
    """
    if len(start) != len(final):
        raise ValueError(f"start {tuple(start)} and final {tuple(final)} differ in length")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if min(*start, *final) < 1:
        raise ValueError("widths must be >= 1")
    targets = [
        tuple(round(s * (f / s) ** (r / rounds)) for s, f in zip(start, final, strict=True))
        for r in range(1, rounds + 1)
    ]
    for _ in range(extra_rounds):
        targets.append(tuple(max(1, math.floor(w * extra_factor)) for w in targets[-1]))
    return targets


def layer_inputs(model: nn.Module, x: Tensor) -> list[Tensor]:
    """What each prunable layer receives on `x` in the posterior-mean network, in order:
    the (flattened) input, then every hidden activation."""
    seen: list[Tensor] = []
    layers = [layer for _, layer in prunable_layers(model)]
    handles = [
        layer.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach()))
        for layer in layers
    ]
    with evaluation_pass(model, handles):
        model(x)
    return seen[: len(layers)]


def _activation_scores(model: nn.Module, inputs: list[Tensor]) -> list[Tensor]:
    """std of each feature over the data × the norm of its outgoing posterior-mean weights."""
    out = []
    for (name, layer), feature in zip(prunable_layers(model), inputs, strict=True):
        weight = as_prunable(layer).posterior().weight_mean
        if weight.dim() != 2:
            raise ValueError(f"score 'activation' needs dense layers; {name!r} is not")
        out.append(feature.std(0) * weight.norm(dim=0))
    return out


def width_scores(
    model: nn.Module, score: str = ACTIVATION, x: Tensor | None = None
) -> list[Tensor]:
    """Importance (higher = keep) of the first layer's inputs, then of every hidden layer's
    units: one tensor per width `prune_to_widths` cuts.

    "activation" (needs data `x`): how much the next layer's input moves when the unit
    is replaced by its mean, i.e. the standard deviation of its output over `x` times
    the norm of its outgoing weights. Other names are `UNIT_SCORES` for the units, with
    the inputs scored by "norm".
    """
    if score not in WIDTH_SCORES:
        raise ValueError(f"unknown width score {score!r}; valid: {list(WIDTH_SCORES)}")
    if score == ACTIVATION:
        if x is None:
            raise ValueError("score 'activation' needs data: pass x")
        return _activation_scores(model, layer_inputs(model, x))
    units = unit_scores(model, score)
    return [next(iter(input_scores(model, "norm").values())), *units.values()]


def _mask_in_force(layer: nn.Module) -> Tensor:
    """A copy of the layer's weight mask (all ones if it has none; a plain layer's zeros)."""
    if isinstance(layer, VariationalLayer):
        mask = layer.weight_mask
        weight = as_prunable(layer).posterior().weight_mean
        return torch.ones_like(weight) if mask is None else mask.clone()
    return (as_prunable(layer).posterior().weight_mean != 0).float()


def _set_bias_mean(layer: nn.Module, units: Tensor, value: Tensor) -> None:
    """Set the bias mean of `units` to `value` exactly, through `fold_into_bias`:
    b + (−b) = 0 and 0 + v = v are exact, while b + (v − b) is not."""
    prunable = as_prunable(layer)
    bias = prunable.posterior().bias_mean
    if bias is None:
        raise ValueError("a hidden layer without bias cannot keep a pruned unit's mean")
    shift = torch.zeros_like(bias)
    shift[units] = -bias[units]
    prunable.fold_into_bias(shift)
    shift = torch.zeros_like(shift)
    shift[units] = value
    prunable.fold_into_bias(shift)


def prune_to_widths(
    model: nn.Module,
    x: Tensor,
    widths: Sequence[int],
    score: str = ACTIVATION,
    *,
    keep_weights: Mapping[str, Tensor] | None = None,
) -> ShrinkResult:
    """One round: keep the top `widths` (inputs, then each hidden layer) of a dense chain,
    fold the rest's means (see the module docstring) and shrink. The model is not changed.

    `x` (inputs as the model takes them) gives the mean activations and the
    "activation" score. `keep_weights` = {layer name: 0/1 weight mask} drops further
    weights of the kept units, e.g. Sparse VD's noise (log α above a threshold).
    The result takes only the kept inputs (`result.input_features`, indices into the
    current ones), as it is fed in the next round.
    """
    net = copy_model(model)
    layers = prunable_layers(net)
    scores = width_scores(net, score, x)
    if len(widths) != len(scores):
        raise ValueError(
            f"{len(widths)} widths for {len(scores)} prunable widths (inputs and hidden layers)"
        )
    inputs = layer_inputs(net, x)
    masks: dict[str, Tensor] = {}
    for k, (importance, width) in enumerate(zip(scores, widths, strict=True)):
        drop = importance.argsort(descending=True)[width:]
        mean = inputs[k].mean(0)
        if k == 0:  # inputs: their mean contribution goes into the first bias now
            name, first = layers[0]
            weight = as_prunable(first).posterior().weight_mean
            as_prunable(first).fold_into_bias(weight[:, drop] @ mean[drop])
            masks[name] = _mask_in_force(first)
            masks[name][:, drop] = 0
        else:  # hidden unit: emits relu(bias) = its mean once its inputs are gone
            name, prev = layers[k - 1]
            _set_bias_mean(prev, drop, mean[drop])
            mask = masks.get(name, _mask_in_force(prev))
            mask[drop, :] = 0
            masks[name] = mask
    for name, keep in (keep_weights or {}).items():
        layer = dict(layers)[name]
        masks[name] = masks.get(name, _mask_in_force(layer)) * keep.float()
    apply_masks(net, masks)
    return shrink(net, gather_inputs=False)
