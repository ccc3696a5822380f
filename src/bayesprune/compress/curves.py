"""Pruning curves: a metric against the fraction pruned, each point on a pruned copy.

- `pruning_curve`: remove the globally lowest-scored weights at each fraction and
  score the copy; `bisect_sparsity` then narrows down the largest fraction whose
  metric is still acceptable (a budget on error, say), between two curve points.
- `unit_removal_curve`: remove a layer's lowest-scored units (kernels) in ascending
  order, without retraining, and score the physically smaller copy each time.

Networks are scored by an `evaluate` callable (`bayesprune.evaluation.scorer`), so
nothing here knows about data, likelihoods or predictive modes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from .adapters import copy_model
from .masks import apply_masks
from .rules import Evaluate, global_sparsity_masks, metric_of, metrics_of
from .scores import unit_scores
from .shrink import shrink


def pruned_copy(model: nn.Module, scores: Mapping[str, Tensor], sparsity: float) -> nn.Module:
    """A copy of `model` without the `sparsity` fraction of lowest-scored weights (global
    ranking, `global_sparsity_masks`); the masks already in force are replaced."""
    return apply_masks(copy_model(model), global_sparsity_masks(scores, sparsity))


def pruning_curve(
    model: nn.Module,
    scores: Mapping[str, Tensor],
    evaluate: Evaluate,
    fractions: Sequence[float],
    *,
    metric: str | Sequence[str] = "accuracy",
) -> list[dict[str, float]]:
    """{"sparsity": s, metric: value} for every fraction s, in the order given.

    `metric` may name several metrics (e.g. ``("accuracy", "ece", "ood_auroc_mi")``), each
    then a key of every row, so one curve shows what pruning does to the uncertainty
    too. At fraction 0 the copy keeps every weight, so the point is the unpruned metric.
    """
    names = (metric,) if isinstance(metric, str) else tuple(metric)
    values = metrics_of(evaluate, names, "pruning_curve")
    return [{"sparsity": s, **values(pruned_copy(model, scores, s))} for s in fractions]


def bisect_sparsity(
    model: nn.Module,
    scores: Mapping[str, Tensor],
    evaluate: Evaluate,
    curve: Sequence[Mapping[str, float]],
    accept: Callable[[float], bool],
    *,
    metric: str = "accuracy",
    steps: int = 5,
) -> tuple[list[dict[str, float]], float]:
    """The largest sparsity whose metric `accept`s, refined by `steps` bisection steps
    between the largest accepted point of `curve` and the next point above it (1.0 if
    none). Returns the curve with the new points (sorted by sparsity) and that sparsity
    (0.0 when no point is accepted). A metric need not fall monotonically, so this is
    the largest accepted point seen, not a guarantee about all larger fractions.
    """
    value = metric_of(evaluate, metric, "bisect_sparsity")
    points = [dict(p) for p in curve]
    accepted = [p["sparsity"] for p in points if accept(p[metric])]
    lo = max(accepted) if accepted else 0.0
    hi = min([p["sparsity"] for p in points if p["sparsity"] > lo] or [1.0])
    for _ in range(steps):
        mid = (lo + hi) / 2
        result = value(pruned_copy(model, scores, mid))
        points.append({"sparsity": mid, metric: result})
        lo, hi = (mid, hi) if accept(result) else (lo, mid)
    return sorted(points, key=lambda p: p["sparsity"]), lo


def unit_removal_curve(
    model: nn.Module,
    evaluate: Evaluate,
    layer: str,
    *,
    input_shape: Sequence[int] | None = None,
    score: str = "norm",
    steps: int = 10,
    metric: str = "accuracy",
) -> list[dict[str, float]]:
    """The metric with the k lowest-scored units of `layer` removed, without retraining.

    k runs over round(i · n / `steps`) for i < `steps`, capped at n − 1 so one unit
    always stays; each point is `shrink(prune_units=...)` of the model (a removed
    unit's constant output is folded into the next layer where possible). Rows:
    {"removed": k, "share": k / n, metric: value}.
    """
    value = metric_of(evaluate, metric, "unit_removal_curve")
    scores = unit_scores(model, score)
    if layer not in scores:
        raise ValueError(f"no unit scores for layer {layer!r}; hidden layers: {list(scores)}")
    importance = scores[layer]
    n = importance.numel()
    order = torch.argsort(importance).cpu()  # the keep masks are built on the CPU
    rows = []
    for k in sorted({min(round(i * n / steps), n - 1) for i in range(steps)}):
        keep = torch.ones(n, dtype=torch.bool)
        keep[order[:k]] = False
        small = shrink(model, input_shape, prune_units={layer: keep}).model
        rows.append({"removed": k, "share": k / n, metric: value(small)})
    return rows
