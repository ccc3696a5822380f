"""`prune`: structured or unstructured pruning in one call.

The building blocks stay separate (scores in `scores.py`, rules in `rules.py` and
`pip_rules.py`, masks in `masks.py`, the surgery in `shrink.py`); this is the front
that picks them by name, as laplace-torch's `Laplace(...)` picks a class::

    prune(model, level="unit", score="norm", rule="global", sparsity=0.5)
    prune(model, level="unit", score="pip", rule="median")          # keep PIP > 0.5
    small = prune(model, level="unit", rule="layer", sparsity=0.3,
                  shrink=True, input_shape=(1, 28, 28))               # a smaller network

is the sequence `unit_scores` → `global_sparsity_masks` → `weight_masks_for` →
`apply_masks` (→ `shrink`). Masks already in force stay in force.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..options import Choice
from .graph import shrink_graph
from .masks import apply_masks
from .pip_rules import PIP_RULES, select_by_pip
from .rules import (
    PruneLevel,
    global_sparsity_masks,
    layer_sparsity_masks,
    threshold_masks,
    weight_masks_for,
)
from .scores import input_scores, unit_scores, weight_scores
from .shrink import shrink as shrink_model


class PruneRule(Choice):
    """How scores become a keep-mask (higher score = keep)."""

    GLOBAL = "global"
    """Remove the `sparsity` fraction with the lowest scores, ranked across layers."""
    LAYER = "layer"
    """Remove the `sparsity` fraction with the lowest scores within each layer."""
    THRESHOLD = "threshold"
    """Keep scores above `threshold`."""
    TARGET_SIZE = "target_size"
    """Keep the `k` highest scores per layer."""
    MEDIAN = "median"
    """PIPs: keep PIP > `threshold` (0.5 by default: the median-probability model)."""
    EXPECTED_SIZE = "expected_size"
    """PIPs: keep the round(Σ PIP) most probable units per layer."""
    FDR = "fdr"
    """PIPs: the largest set whose expected false-discovery rate is <= `alpha`."""


DEFAULT_SCORES = {PruneLevel.WEIGHT: "snr", PruneLevel.UNIT: "norm", PruneLevel.INPUT: "norm"}
"""The score each level uses unless told: weight SNR, unit (kernel) and input norms."""


def _scores(model: nn.Module, level: PruneLevel, score: str) -> dict[str, Tensor]:
    if level == PruneLevel.WEIGHT:
        return weight_scores(model, score)
    if level == PruneLevel.UNIT:
        return unit_scores(model, score)
    return input_scores(model, score)


def _top_k(scores: Mapping[str, Tensor], k: int) -> dict[str, Tensor]:
    """Keep the k highest entries of each layer (ties to the lower index)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be an integer >= 0 (entries kept per layer), got {k!r}")
    masks = {}
    for name, s in scores.items():
        flat = s.detach().reshape(-1)
        keep = torch.zeros(flat.shape, dtype=torch.float32, device=flat.device)
        keep[torch.argsort(-flat, stable=True)[:k]] = 1.0
        masks[name] = keep.reshape(s.shape)
    return masks


def _need(value: object, name: str, rule: PruneRule) -> None:
    if value is None:
        raise ValueError(f"rule={rule.value!r} needs {name}=")


def keep_masks(
    scores: Mapping[str, Tensor],
    rule: PruneRule | str,
    *,
    sparsity: float | Mapping[str, float] | None = None,
    k: int | None = None,
    threshold: float | None = None,
    alpha: float = 0.05,
) -> dict[str, Tensor]:
    """0/1 keep-masks shaped like `scores` by a named rule (see `PruneRule`)."""
    rule = PruneRule(rule)
    if rule in (PruneRule.GLOBAL, PruneRule.LAYER):
        _need(sparsity, "sparsity", rule)
        if rule == PruneRule.GLOBAL:
            if isinstance(sparsity, Mapping):
                raise ValueError("rule='global' takes one sparsity; per layer: rule='layer'")
            return global_sparsity_masks(scores, float(sparsity))  # type: ignore[arg-type]
        return layer_sparsity_masks(scores, sparsity)  # type: ignore[arg-type]
    if rule == PruneRule.THRESHOLD:
        _need(threshold, "threshold", rule)
        return threshold_masks(scores, float(threshold))  # type: ignore[arg-type]
    if rule == PruneRule.TARGET_SIZE:
        _need(k, "k", rule)
        return _top_k(scores, k)  # type: ignore[arg-type]
    cut = 0.5 if threshold is None else threshold
    return {
        name: select_by_pip(s, rule.value, threshold=cut, alpha=alpha).float()
        for name, s in scores.items()
    }


def prune(
    model: nn.Module,
    level: PruneLevel | str = "unit",
    rule: PruneRule | str = "global",
    score: str | None = None,
    *,
    sparsity: float | Mapping[str, float] | None = None,
    k: int | None = None,
    threshold: float | None = None,
    alpha: float = 0.05,
    shrink: bool = False,
    input_shape: Sequence[int] | None = None,
) -> nn.Module:
    """Score, rule and mask `model` in place; return it (or, with `shrink`, a smaller copy).

    `level`: "weight" (unstructured), "unit" (neurons / conv kernels) or "input"
    (input features / channels of the first layer). `score`: a name of
    `WEIGHT_SCORES`, `UNIT_SCORES` or `INPUT_SCORES` for that level (default
    `DEFAULT_SCORES[level]`). `rule`: a `PruneRule`, with the option it needs:
    `sparsity` (global, layer; a {layer: fraction} dict for layer), `k` (target_size),
    `threshold` (threshold; median's PIP cut, 0.5), `alpha` (fdr). PIP rules need
    `score="pip"`. `shrink=True` returns `shrink(model, input_shape).model`, a network
    without the dead units (`input_shape`: one example's shape, needed for convs); a
    model that is not a plain chain (BatchNorm, residual additions, any `forward`) goes
    through `shrink_graph` on a seeded random batch of that shape instead.
    """
    level = PruneLevel(level)
    rule = PruneRule(rule)
    score = DEFAULT_SCORES[level] if score is None else score
    if rule.value in PIP_RULES and rule != PruneRule.TARGET_SIZE and score != "pip":
        raise ValueError(f"rule={rule.value!r} ranks inclusion probabilities: pass score='pip'")
    scores = _scores(model, level, score)
    keep = keep_masks(scores, rule, sparsity=sparsity, k=k, threshold=threshold, alpha=alpha)
    apply_masks(model, weight_masks_for(model, keep, level.value))
    if not shrink:
        return model
    try:
        return shrink_model(model, input_shape).model
    except TypeError:  # not a chain `shrink` can read: the graph path reads any model
        if input_shape is None:
            raise ValueError(
                "shrink=True on a model that is not a plain nn.Sequential chain needs "
                "input_shape (one example's shape, e.g. (3, 32, 32))"
            ) from None
        example = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
        reference = next(model.parameters())
        return shrink_graph(model, example.to(reference)).model
