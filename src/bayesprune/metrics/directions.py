"""Which way is better, per metric name: the one table searches and tolerances read.

A pruning search that holds a metric must know whether a larger value is better
(accuracy, OOD AUROC) or worse (NLL, ECE, Brier, RMSE). The table lives here, in the
dependency-free `metrics` package, so that `bayesprune.compress` can read it without
importing prediction code; `bayesprune.evaluation` re-exports it beside its metric
tables, and a test checks that every metric a scorer can return has an entry.
"""

from __future__ import annotations

from ..options import Choice


class Direction(Choice):
    """Whether a larger value of a metric is better or worse."""

    HIGHER = "higher"
    LOWER = "lower"


METRIC_DIRECTIONS: dict[str, Direction] = {
    "accuracy": Direction.HIGHER,
    "error_pct": Direction.LOWER,
    "nll": Direction.LOWER,
    "ece": Direction.LOWER,
    "brier": Direction.LOWER,
    "rmse": Direction.LOWER,
    "ood_auroc_entropy": Direction.HIGHER,
    "ood_auroc_mi": Direction.HIGHER,
}
"""metric name → `Direction`. Every metric of `bayesprune.evaluation.METRICS` is here
except the descriptive ones (mean entropy, mean mutual information, the two variance
parts): more predictive uncertainty is neither better nor worse in itself, so a
search cannot hold them without a direction given explicitly."""


def direction_of(metric: str) -> Direction:
    """The direction of a named metric; a name not in the table raises ValueError."""
    if metric not in METRIC_DIRECTIONS:
        raise ValueError(
            f"no direction known for metric {metric!r} (known: {sorted(METRIC_DIRECTIONS)}); "
            "give it explicitly, e.g. Tolerance(metric, 0.01, direction='lower')"
        )
    return METRIC_DIRECTIONS[metric]


__all__ = ["METRIC_DIRECTIONS", "Direction", "direction_of"]
