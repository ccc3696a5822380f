"""Tolerances: how far each validation metric may move from the unpruned model's.

A search that holds accuracy alone lets calibration and out-of-distribution
detection decay unseen (issue 18), so a search takes a set of tolerances, each an
*absolute* allowed worsening of one metric against the unpruned model, and accepts
a candidate only when all of them hold:

- higher-is-better (accuracy, OOD AUROC): value ≥ baseline − tolerance;
- lower-is-better (NLL, ECE, Brier): value ≤ baseline + tolerance.

The direction of a named metric comes from `bayesprune.metrics.METRIC_DIRECTIONS`;
a metric outside that table needs its direction given (`Tolerance(..., direction=)`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..metrics.directions import METRIC_DIRECTIONS, Direction, direction_of

_SLACK = 1e-12  # float noise: a metric equal to its bound holds


@dataclass(frozen=True)
class Tolerance:
    """One metric and the absolute worsening allowed against the unpruned model."""

    metric: str
    tolerance: float
    direction: Direction | str | None = None  # None: looked up in METRIC_DIRECTIONS

    def __post_init__(self) -> None:
        if not self.tolerance >= 0:
            raise ValueError(
                f"tolerance of {self.metric!r} must be >= 0 (an absolute worsening), "
                f"got {self.tolerance}"
            )
        direction = direction_of(self.metric) if self.direction is None else self.direction
        object.__setattr__(self, "direction", Direction(direction))

    def bound(self, baseline: float) -> float:
        """The worst value still accepted."""
        if self.direction == Direction.HIGHER:
            return baseline - self.tolerance
        return baseline + self.tolerance

    def holds(self, value: float, baseline: float) -> bool:
        """Whether `value` is within the tolerance of `baseline`."""
        if self.direction == Direction.HIGHER:
            return value >= self.bound(baseline) - _SLACK
        return value <= self.bound(baseline) + _SLACK

    def as_dict(self) -> dict[str, object]:
        return {"metric": self.metric, "tolerance": self.tolerance, "direction": self.direction}


ToleranceSpec = Mapping[str, float] | Sequence[Tolerance] | Tolerance
"""{metric: tolerance} (directions from the table), or `Tolerance` records."""


def as_tolerances(spec: ToleranceSpec) -> tuple[Tolerance, ...]:
    """`spec` as a non-empty tuple of `Tolerance`s, one per metric."""
    if isinstance(spec, Tolerance):
        items: tuple[Tolerance, ...] = (spec,)
    elif isinstance(spec, Mapping):
        items = tuple(Tolerance(name, float(tol)) for name, tol in spec.items())
    else:
        items = tuple(spec)
        wrong = [t for t in items if not isinstance(t, Tolerance)]
        if wrong:
            raise TypeError(
                "tolerances must be {metric: tolerance} or Tolerance records, got "
                f"{type(wrong[0]).__name__}"
            )
    if not items:
        raise ValueError("tolerances must name at least one metric, e.g. {'accuracy': 0.005}")
    names = [t.metric for t in items]
    if len(set(names)) != len(names):
        raise ValueError(f"a metric is given twice in tolerances: {names}")
    return items


def legacy_tolerance(metric: str, delta: float) -> Tolerance:
    """The single tolerance of the `metric=`, `delta=` call: the metric's direction from
    the table, higher-is-better for a name it does not know (as before tolerances)."""
    return Tolerance(metric, delta, METRIC_DIRECTIONS.get(metric, Direction.HIGHER))


def all_hold(
    tolerances: Sequence[Tolerance], values: Mapping[str, float], baselines: Mapping[str, float]
) -> bool:
    """Whether every tolerance holds for `values` against `baselines`."""
    return all(t.holds(values[t.metric], baselines[t.metric]) for t in tolerances)


__all__ = ["Tolerance", "ToleranceSpec", "all_hold", "as_tolerances", "legacy_tolerance"]
