"""Tolerances: how far each validation metric may move from the unpruned model's.

A search that holds accuracy alone lets calibration and out-of-distribution
detection decay unseen (issue 18), so a search takes a set of tolerances, each an
allowed worsening of one metric against the unpruned model, and accepts a candidate
only when all of them hold. A tolerance t is *absolute* (a number) or *relative* (a
share of the unpruned model's value, written "50%" or, as a factor, "1.5x"):

- higher-is-better (accuracy, OOD AUROC): value ≥ baseline − t, or baseline − t·|baseline|;
- lower-is-better (NLL, ECE, Brier): value ≤ baseline + t, or baseline + t·|baseline|.

Relative is what a calibration error asks for: an unpruned ECE of 0.005 and one of
0.03 call for different absolute slack, while "no more than 1.5x the unpruned
network's" (`{"ece": "1.5x"}`, issue 18's own target) means the same for both. A
factor is the bound over the baseline: "1.5x" is t = 0.5 on a lower-is-better metric,
"0.98x" is t = 0.02 on a higher-is-better one.

The direction of a named metric comes from `bayesprune.metrics.METRIC_DIRECTIONS`;
a metric outside that table needs its direction given (`Tolerance(..., direction=)`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..metrics.directions import METRIC_DIRECTIONS, Direction, direction_of

_SLACK = 1e-12  # float noise: a metric equal to its bound holds


_RELATIVE = re.compile(r"^\s*(?P<number>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?P<unit>%|x)\s*$")


@dataclass(frozen=True)
class Tolerance:
    """One metric and the worsening allowed against the unpruned model: absolute, or with
    `relative=True` a share of the unpruned model's value (0.5: up to 1.5x an ECE)."""

    metric: str
    tolerance: float
    direction: Direction | str | None = None  # None: looked up in METRIC_DIRECTIONS
    relative: bool = False

    def __post_init__(self) -> None:
        if not self.tolerance >= 0:
            kind = "a share of the unpruned value" if self.relative else "an absolute worsening"
            raise ValueError(
                f"tolerance of {self.metric!r} must be >= 0 ({kind}), got {self.tolerance}"
            )
        direction = direction_of(self.metric) if self.direction is None else self.direction
        object.__setattr__(self, "direction", Direction(direction))

    def slack(self, baseline: float) -> float:
        """The allowed worsening against `baseline`, in the metric's units."""
        return self.tolerance * abs(baseline) if self.relative else self.tolerance

    def bound(self, baseline: float) -> float:
        """The worst value still accepted."""
        if self.direction == Direction.HIGHER:
            return baseline - self.slack(baseline)
        return baseline + self.slack(baseline)

    def holds(self, value: float, baseline: float) -> bool:
        """Whether `value` is within the tolerance of `baseline`."""
        if self.direction == Direction.HIGHER:
            return value >= self.bound(baseline) - _SLACK
        return value <= self.bound(baseline) + _SLACK

    def as_dict(self) -> dict[str, object]:
        record: dict[str, object] = {
            "metric": self.metric,
            "tolerance": self.tolerance,
            "direction": self.direction,
        }
        if self.relative:
            record["relative"] = True
        return record


ToleranceSpec = Mapping[str, float | str] | Sequence[Tolerance] | Tolerance
"""{metric: tolerance} (a number: absolute; "50%" / "1.5x": relative; directions from the
table), or `Tolerance` records."""


def parse_tolerance(metric: str, value: float | str) -> Tolerance:
    """The `Tolerance` of one {metric: value} item: a number is absolute; "P%" is a share
    P/100 of the unpruned value; "Fx" a factor of it (F ≥ 1 for a lower-is-better metric,
    F ≤ 1 for a higher-is-better one)."""
    if isinstance(value, bool):
        raise TypeError(f"tolerance of {metric!r} must be a number, 'P%' or 'Fx', got {value!r}")
    if not isinstance(value, str):
        return Tolerance(metric, float(value))
    match = _RELATIVE.match(value)
    if match is None:
        raise ValueError(
            f"tolerance of {metric!r} is {value!r}; write a number (absolute, e.g. 0.005), a "
            "share of the unpruned value ('50%') or a factor of it ('1.5x')"
        )
    number = float(match["number"])
    direction = direction_of(metric)
    if match["unit"] == "%":
        return Tolerance(metric, number / 100, direction, relative=True)
    wrong_side = number < 1 if direction == Direction.LOWER else number > 1
    if wrong_side:
        side = "≥ 1 (lower is better)" if direction == Direction.LOWER else "≤ 1 (higher is better)"
        raise ValueError(
            f"tolerance {value!r} of {metric!r}: the factor bounds the worst value against "
            f"the unpruned one and must be {side}"
        )
    return Tolerance(metric, abs(number - 1), direction, relative=True)


def as_tolerances(spec: ToleranceSpec) -> tuple[Tolerance, ...]:
    """`spec` as a non-empty tuple of `Tolerance`s, one per metric."""
    if isinstance(spec, Tolerance):
        items: tuple[Tolerance, ...] = (spec,)
    elif isinstance(spec, Mapping):
        items = tuple(parse_tolerance(name, tol) for name, tol in spec.items())
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


def held_tolerances(metric: str, delta: float, spec: ToleranceSpec | None) -> tuple[Tolerance, ...]:
    """What a search or self-compression holds: `metric` within `delta`, plus every
    tolerance of `spec`. `metric` is held even when `spec` leaves it out (by `delta`),
    so naming only ECE cannot silently give up accuracy; a `spec` that names `metric`
    sets its tolerance itself."""
    if spec is None:
        return (legacy_tolerance(metric, delta),)
    named = as_tolerances(spec)
    if any(t.metric == metric for t in named):
        return named
    return (legacy_tolerance(metric, delta), *named)


def all_hold(
    tolerances: Sequence[Tolerance], values: Mapping[str, float], baselines: Mapping[str, float]
) -> bool:
    """Whether every tolerance holds for `values` against `baselines`."""
    return all(t.holds(values[t.metric], baselines[t.metric]) for t in tolerances)


__all__ = [
    "Tolerance",
    "ToleranceSpec",
    "all_hold",
    "as_tolerances",
    "held_tolerances",
    "legacy_tolerance",
    "parse_tolerance",
]
