"""Metrics: accuracy and calibration, uncertainty, regression, feature selection, model size.

Inputs are torch tensors or array-likes (numpy, lists); scalar results are Python
floats, per-example results float64 tensors. Probabilities are (N, C) and
Monte-Carlo probability samples (S, N, C); shapes that would silently broadcast
raise ValueError.
"""

from .classification import (
    CalibrationBins,
    EceFloor,
    accuracy,
    brier,
    calibration_bins,
    ece,
    ece_floor,
    nll,
    nll_per_row,
)
from .directions import METRIC_DIRECTIONS, Direction, direction_of
from .regression import gaussian_nll, rmse
from .selection import SelectionScores, selection_scores
from .size import (
    LayerSize,
    ModelSize,
    count_flops,
    dense_weight_count,
    example_flops,
    layer_sizes,
    layer_widths,
    model_size,
)
from .uncertainty import (
    entropy,
    expected_entropy,
    mutual_information,
    ood_auroc,
    predictive_entropy,
)

__all__ = [
    "METRIC_DIRECTIONS",
    "CalibrationBins",
    "Direction",
    "EceFloor",
    "LayerSize",
    "ModelSize",
    "SelectionScores",
    "accuracy",
    "brier",
    "calibration_bins",
    "count_flops",
    "dense_weight_count",
    "direction_of",
    "ece",
    "ece_floor",
    "entropy",
    "example_flops",
    "expected_entropy",
    "gaussian_nll",
    "layer_sizes",
    "layer_widths",
    "model_size",
    "mutual_information",
    "nll",
    "nll_per_row",
    "ood_auroc",
    "predictive_entropy",
    "rmse",
    "selection_scores",
]
