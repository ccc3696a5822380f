"""Pruning rules: turn importance scores into 0/1 masks (higher score = keep).

Every rule takes a dict {module name: scores} of any shapes (per weight, per unit,
per input) and returns masks of the same shapes, so one rule serves all three
granularities; `masks.unit_weight_masks` / `input_weight_masks` then expand unit
and input masks to weights. Ties are broken by position (stable sort), so a target
sparsity is hit exactly: round(sparsity · n) entries go.

- `global_sparsity_masks`: one ranking over all layers (scores must be comparable
  across layers, as SNR and |μ| are).
- `layer_sparsity_masks`: the same fraction (or one per layer) within each layer.
- `threshold_masks`: keep score > threshold (e.g. Sparse VD's log α < 3 is
  threshold −3 on the "log_alpha" score; the median-probability model is PIP > 0.5).
- `search_sparsity`: the largest pruning whose validation accuracy stays within
  `delta` of the unpruned model, or, given `tolerances`, whose every named metric
  (accuracy, NLL, ECE, OOD AUROC, ...) stays within its own tolerance; returns the
  curve it walked. It scores networks through a callable it is given
  (`bayesprune.evaluation.scorer`), never by itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..options import Choice
from ..validation import check_scores
from .adapters import copy_model
from .masks import apply_masks, combine_masks, input_weight_masks, unit_weight_masks, weight_masks
from .tolerances import Tolerance, ToleranceSpec, all_hold, held_tolerances

Evaluate = Callable[[nn.Module], Mapping[str, float]]
"""model → {metric: value}, e.g. `bayesprune.evaluation.scorer(val, likelihood)`."""


class PruneLevel(Choice):
    """What a score ranks: single weights, output units (kernels), or input units."""

    WEIGHT = "weight"
    UNIT = "unit"
    INPUT = "input"


class SearchRule(Choice):
    """How `search_sparsity` spreads a sparsity: one global ranking, or per layer."""

    GLOBAL = "global"
    LAYER = "layer"


LEVELS = PruneLevel.values()
SEARCH_RULES = SearchRule.values()
DEFAULT_GRID = (0.5, 0.7, 0.8, 0.85, 0.9, 0.925, 0.95, 0.96, 0.97, 0.98, 0.985, 0.99, 0.995)


def _check_fraction(value: float, what: str = "sparsity") -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{what} must be in [0, 1], got {value}")
    return float(value)


def _drop_lowest(flat: Tensor, n_remove: int) -> Tensor:
    keep = torch.ones(flat.shape, dtype=torch.float32, device=flat.device)
    if n_remove:
        keep[torch.argsort(flat, stable=True)[:n_remove]] = 0.0
    return keep


def global_sparsity_masks(scores: Mapping[str, Tensor], sparsity: float) -> dict[str, Tensor]:
    """Remove the `sparsity` fraction of all entries with the lowest score, across layers."""
    _check_fraction(sparsity)
    check_scores(scores)
    if not scores:
        return {}
    flat = torch.cat([s.detach().reshape(-1).float() for s in scores.values()])
    keep = _drop_lowest(flat, round(sparsity * flat.numel()))
    masks, start = {}, 0
    for name, s in scores.items():
        masks[name] = keep[start : start + s.numel()].reshape(s.shape)
        start += s.numel()
    return masks


def layer_sparsity_masks(
    scores: Mapping[str, Tensor], sparsity: float | Mapping[str, float]
) -> dict[str, Tensor]:
    """Remove the lowest-scoring fraction within each layer.

    `sparsity` is one fraction for every layer or a {name: fraction} dict (layers not
    named keep everything).
    """
    check_scores(scores)
    per_layer = sparsity if isinstance(sparsity, Mapping) else dict.fromkeys(scores, sparsity)
    unknown = sorted(set(per_layer) - set(scores))
    if unknown:
        raise ValueError(f"sparsity given for unknown layers {unknown}; scored: {sorted(scores)}")
    masks = {}
    for name, s in scores.items():
        frac = _check_fraction(per_layer.get(name, 0.0), f"sparsity of {name!r}")
        flat = s.detach().reshape(-1).float()
        masks[name] = _drop_lowest(flat, round(frac * flat.numel())).reshape(s.shape)
    return masks


def threshold_masks(scores: Mapping[str, Tensor], threshold: float) -> dict[str, Tensor]:
    """Keep the entries whose score is strictly above `threshold`."""
    if math.isnan(threshold):
        raise ValueError("threshold must be a number, got NaN")
    check_scores(scores)
    return {name: (s.detach() > threshold).float() for name, s in scores.items()}


def weight_masks_for(
    model: nn.Module, masks: Mapping[str, Tensor], level: str = "weight"
) -> dict[str, Tensor]:
    """Weight masks from masks at `level` ("weight", "unit" or "input"), combined with the
    masks already in force on those layers (pruned weights stay pruned)."""
    level = PruneLevel(level)
    if level == "unit":
        masks = unit_weight_masks(model, masks)
    elif level == "input":
        masks = input_weight_masks(model, masks)
    current = weight_masks(model)
    return combine_masks({n: current[n] for n in masks if n in current}, masks)


@dataclass
class SearchResult:
    """Outcome of `search_sparsity`: the chosen masks and every point evaluated."""

    sparsity: float  # chosen fraction of the scored entries removed
    threshold: float | None  # global rule: keep score > threshold gives the same masks
    accuracy: float  # the primary metric (validation accuracy by default) at the chosen sparsity
    baseline: float  # the primary metric of the unpruned model
    delta: float  # the primary metric's tolerance
    masks: dict[str, Tensor]  # weight masks, ready for apply_masks
    curve: list[dict[str, Any]] = field(default_factory=list)  # sparsity, metric(s), within
    metric: str = "accuracy"  # the primary key of the evaluation's dict that was compared
    values: dict[str, float] = field(default_factory=dict)  # every held metric, chosen point
    baselines: dict[str, float] = field(default_factory=dict)  # every held metric, unpruned
    tolerances: list[Tolerance] = field(default_factory=list)  # what had to hold

    def as_dict(self) -> dict[str, Any]:
        """JSON-able summary (without the masks)."""
        return {
            "sparsity": self.sparsity,
            "threshold": self.threshold,
            "accuracy": self.accuracy,
            "baseline": self.baseline,
            "delta": self.delta,
            "metric": self.metric,
            "values": self.values,
            "baselines": self.baselines,
            "tolerances": [t.as_dict() for t in self.tolerances],
            "curve": self.curve,
        }


def metric_of(evaluate: Any, metric: str, caller: str) -> Callable[[nn.Module], float]:
    """model → `evaluate(model)[metric]`, with errors that say what `evaluate` must be."""
    values = metrics_of(evaluate, (metric,), caller)
    return lambda model: values(model)[metric]


def metrics_of(
    evaluate: Any, metrics: Sequence[str], caller: str
) -> Callable[[nn.Module], dict[str, float]]:
    """model → {name: `evaluate(model)[name]`} for `metrics`, from one call of `evaluate`,
    with errors that say what `evaluate` must be."""
    metric = metrics[0]
    if not callable(evaluate):
        raise TypeError(
            f"{caller} takes evaluate=, a callable model -> {{metric: value}}, not data "
            f"({type(evaluate).__name__}); build one with "
            "bayesprune.evaluation.scorer(val, likelihood)"
        )

    def values(model: nn.Module) -> dict[str, float]:
        scores = evaluate(model)
        if not isinstance(scores, Mapping):
            raise TypeError(
                f"{caller}: evaluate(model) must return a dict of metrics (e.g. "
                f"{{{metric!r}: 0.97}}), got {type(scores).__name__}"
            )
        missing = [name for name in metrics if name not in scores]
        if missing:
            raise KeyError(
                f"{caller}: metric {missing[0]!r} is not among evaluate's {sorted(scores)}; "
                "pass metric= naming one it reports (metric is held beside any tolerances=), "
                "or build the scorer with them"
            )
        return {name: float(scores[name]) for name in metrics}

    return values


def _cut(scores: Mapping[str, Tensor], sparsity: float) -> float | None:
    flat = torch.cat([s.detach().reshape(-1).float() for s in scores.values()])
    n_remove = round(sparsity * flat.numel())
    if n_remove == 0:
        return None
    return float(torch.sort(flat, stable=True).values[n_remove - 1])


def search_sparsity(
    model: nn.Module,
    scores: Mapping[str, Tensor],
    evaluate: Evaluate,
    *,
    metric: str = "accuracy",
    delta: float = 0.01,
    tolerances: ToleranceSpec | None = None,
    rule: str = "global",
    level: str = "weight",
    grid: Sequence[float] = DEFAULT_GRID,
    refine_steps: int = 4,
) -> SearchResult:
    """The largest sparsity whose `metric` is ≥ (the unpruned model's − `delta`) and
    whose every metric in `tolerances` stays within its tolerance.

    `evaluate(model) -> {metric: value}` scores a network, e.g.
    `bayesprune.evaluation.scorer((x_val, y_val), likelihood)` (posterior-mean
    accuracy). `metric` names the key compared and `delta` its allowed drop (direction
    from `bayesprune.metrics.METRIC_DIRECTIONS`, higher-is-better for a name the table
    does not know). `tolerances`, e.g. ``{"ece": "1.5x", "nll": 0.02}`` or `Tolerance`
    records, adds further metrics, each an allowed worsening against the unpruned model
    in the metric's own direction; all must hold. `metric` stays held by `delta` unless
    `tolerances` name it (then their value rules), so a search on ECE alone cannot give
    up accuracy unseen; a scorer without `metric` (e.g. regression) needs `metric=`
    naming one it reports. `metric` is the one reported as `accuracy` / `baseline`.
    Every sparsity in `grid` is tried on a copy of the model; then `refine_steps`
    bisection steps between the largest passing point and the next grid point. Metrics
    need not worsen monotonically, so the chosen point is the largest passing one seen,
    and `curve` records every point in sparsity order. `rule` is "global" or "layer"
    (same fraction in each layer); `level` says what the scores rank ("weight", "unit"
    or "input").
    """
    rule = SearchRule(rule)
    PruneLevel(level)
    if delta < 0:
        raise ValueError(f"delta must be >= 0, got {delta}")
    check_scores(scores)
    held = held_tolerances(metric, delta, tolerances)
    make = global_sparsity_masks if rule == "global" else layer_sparsity_masks
    values_of = metrics_of(evaluate, [t.metric for t in held], "search_sparsity")
    baselines = values_of(model)
    points: dict[float, dict[str, float]] = {}

    def masks_at(s: float) -> dict[str, Tensor]:
        return weight_masks_for(model, make(scores, s), level)

    def try_point(s: float) -> bool:
        if s not in points:
            points[s] = values_of(apply_masks(copy_model(model), masks_at(s)))
        return all_hold(held, points[s], baselines)

    passing = [s for s in sorted({_check_fraction(g) for g in grid}) if try_point(s)]
    best = max(passing, default=0.0)
    above = [s for s in points if s > best]
    if above:
        lo, hi = best, min(above)
        for _ in range(refine_steps):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if try_point(mid) else (lo, mid)
        best = lo

    def row(s: float) -> dict[str, Any]:
        shown = {"accuracy": points[s][metric]} if tolerances is None else points[s]
        return {"sparsity": s, **shown, "within": all_hold(held, points[s], baselines)}

    chosen = points.get(best, baselines)
    return SearchResult(
        sparsity=best,
        threshold=_cut(scores, best) if rule == "global" else None,
        accuracy=chosen[metric],
        baseline=baselines[metric],
        delta=next(t.tolerance for t in held if t.metric == metric),
        masks=masks_at(best),
        curve=[row(s) for s in sorted(points)],
        metric=metric,
        values=dict(chosen),
        baselines=dict(baselines),
        tolerances=list(held),
    )
