"""One evaluation scorer: data and a likelihood in, a function model → metrics out.

Training's validation pass, the compression schedules, the compression report, the
run pipeline, model selection and the benchmarks all score a network the same way:
the predictive distribution of `bayesprune.predict` on held-out (X, y), read by
the functions of `bayesprune.metrics`. `scorer` fixes the data and the settings
once and returns a callable, so a schedule that scores many candidate networks
receives one argument and never needs to know about data, likelihoods or modes.

Metrics are looked up by name in a table per task (`METRICS`); `DEFAULT_METRICS`
are what a user expects to see, `VALIDATION_METRICS` the two that training records
after every epoch. Given out-of-distribution inputs (`ood=`), a classification
scorer also reads `OOD_METRICS`: how well the predictive's entropy / mutual
information tells those inputs from the evaluation data (AUROC), so a pruning
search can hold out-of-distribution detection as it holds accuracy. Which way each
metric is better is `METRIC_DIRECTIONS` (kept in `bayesprune.metrics` so that
`compress` can read it without importing prediction code).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from . import metrics as m
from .data.xy import DataLike, as_xy
from .inputs import Inputs, as_inputs
from .likelihoods import Likelihood, make_likelihood
from .metrics.directions import METRIC_DIRECTIONS, Direction
from .predict import ClassificationPrediction, PredictMode, RegressionPrediction, predict
from .validation import required_inputs

Scorer = Callable[[nn.Module], dict[str, float]]


EvalMode = PredictMode
"""The predictive a scorer reads (`bayesprune.predict.PredictMode`)."""


_Class = Callable[[ClassificationPrediction, Tensor, int], float]
_Reg = Callable[[RegressionPrediction, Tensor, int], float]

CLASSIFICATION_METRICS: dict[str, _Class] = {
    "accuracy": lambda p, y, bins: m.accuracy(p.probs, y),
    "error_pct": lambda p, y, bins: 100 * (1 - m.accuracy(p.probs, y)),
    "nll": lambda p, y, bins: m.nll(p.probs, y),
    "ece": lambda p, y, bins: m.ece(p.probs, y, n_bins=bins),
    "brier": lambda p, y, bins: m.brier(p.probs, y),
    "mean_entropy": lambda p, y, bins: float(p.entropy.mean()),
    "mean_mutual_information": lambda p, y, bins: float(p.mutual_information.mean()),
}
"""Classification: accuracy, error in percent, log score, calibration, Brier, uncertainty."""

REGRESSION_METRICS: dict[str, _Reg] = {
    "rmse": lambda p, y, bins: m.rmse(p.mean, y),
    "nll": lambda p, y, bins: m.gaussian_nll(p.mean, p.variance, y),
    "mean_aleatoric_variance": lambda p, y, bins: float(p.aleatoric.mean()),
    "mean_epistemic_variance": lambda p, y, bins: float(p.epistemic.mean()),
}
"""Regression (in the units of y): RMSE, Gaussian log score, the two variance parts."""

_Ood = Callable[[ClassificationPrediction, ClassificationPrediction], float]

OOD_METRICS: dict[str, _Ood] = {
    "ood_auroc_entropy": lambda p_in, p_out: m.ood_auroc(p_in.entropy, p_out.entropy),
    "ood_auroc_mi": lambda p_in, p_out: m.ood_auroc(
        p_in.mutual_information, p_out.mutual_information
    ),
}
"""Classification with out-of-distribution inputs: AUROC of flagging them (positives)
by predictive entropy, or by mutual information (epistemic part; Monte-Carlo
predictive only, since one pass has none)."""

# METRIC_DIRECTIONS (imported above, re-exported): metric name → `Direction`, higher or
# lower is better, for every metric of these tables except the descriptive ones (mean
# entropy, mean mutual information, the variance parts); a test keeps it complete.

METRICS: dict[str, dict[str, Any]] = {
    "classification": CLASSIFICATION_METRICS,
    "regression": REGRESSION_METRICS,
}

DEFAULT_METRICS: dict[str, tuple[str, ...]] = {
    "classification": (
        "accuracy",
        "nll",
        "ece",
        "brier",
        "mean_entropy",
        "mean_mutual_information",
    ),
    "regression": ("rmse", "nll", "mean_aleatoric_variance", "mean_epistemic_variance"),
}

VALIDATION_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("nll", "accuracy"),
    "regression": ("nll", "rmse"),
}
"""What `fit` records per epoch on its validation data (as val_nll, val_accuracy / val_rmse)."""


def ood_metric_names(mode: EvalMode | str) -> tuple[str, ...]:
    """The OOD metrics a classification scorer in `mode` can compute (MI needs samples)."""
    return tuple(OOD_METRICS) if EvalMode(mode) == EvalMode.MC else ("ood_auroc_entropy",)


def metric_names(
    names: Sequence[str] | None, task: str, ood: Sequence[str] = ()
) -> tuple[str, ...]:
    """`names` checked against the task's table and the OOD metrics available (`ood`);
    None: `DEFAULT_METRICS` followed by `ood`."""
    if task not in METRICS:
        raise ValueError(f"cannot evaluate a likelihood of task {task!r}; valid: {list(METRICS)}")
    if names is None:
        return (*DEFAULT_METRICS[task], *ood)
    if isinstance(names, str):
        names = (names,)
    valid = [*METRICS[task], *ood]
    unknown = [name for name in names if name not in valid]
    if unknown or not names:
        hint = ""
        if any(name in OOD_METRICS for name in unknown):
            hint = (
                " (OOD AUROC needs scorer(..., ood=x_ood) on a classification likelihood; "
                "ood_auroc_mi also mode='mc')"
            )
        raise ValueError(
            f"unknown {task} metrics {unknown}; valid: {valid}{hint}"
            if unknown
            else "metrics must name at least one metric"
        )
    return tuple(names)


def scorer(
    data: DataLike,
    likelihood: str | Likelihood = "categorical",
    *,
    mode: EvalMode | str | None = None,
    samples: int | None = None,
    batch_size: int | None = None,
    seed: int | None = 0,
    metrics: Sequence[str] | None = None,
    bins: int = 15,
    ood: Any = None,
    inputs: int = 1,
) -> Scorer:
    """A function model → {metric: value} on `data` ((X, y), a Dataset or a DataLoader).

    `mode`: "mean" (one deterministic pass, what the compression schedules compare) or
    "mc" (`samples` passes, default 30, drawn from `seed` so that a score repeats). Left
    out, it is "mc" when `samples` is given (`evaluate(model, data, samples=8)` scores
    eight draws) and "mean" otherwise.
    `metrics`: names from `METRICS[likelihood.task]`, in the order wanted (None:
    `DEFAULT_METRICS`); `bins`: ECE's bins. The data is read once, here; the model
    is scored by `predict` (eval mode, no_grad, its train/eval state and the caller's
    RNG left as they were) on the device its parameters live on.

    `ood`: out-of-distribution inputs (a tensor / array, or data whose labels are
    ignored), classification only. They add `OOD_METRICS`: "ood_auroc_entropy" and,
    in mode "mc", "ood_auroc_mi" (by default both follow `DEFAULT_METRICS`), computed
    by `metrics.ood_auroc` with the evaluation data as in-distribution.
    """
    mode = EvalMode(mode) if mode is not None else EvalMode.MEAN if samples is None else EvalMode.MC
    samples = 30 if samples is None else samples
    lik = make_likelihood(likelihood)
    x_ood = None if ood is None else _ood_inputs(ood, lik.task, inputs)
    names = metric_names(metrics, lik.task, ood_metric_names(mode) if ood is not None else ())
    if samples < 1 or (batch_size is not None and batch_size < 1) or bins < 1:
        raise ValueError(
            f"samples, batch_size and bins must be >= 1, got {samples}, {batch_size}, {bins}"
        )
    x, y = as_xy(data, "evaluation data", inputs, ragged=True)  # batches padded apart: kept
    table = METRICS[lik.task]

    def predictive(model: nn.Module, features: Any) -> Any:
        return predict(
            model,
            features,
            samples=samples,
            mode=mode.value,
            likelihood=lik,
            batch_size=batch_size,
            seed=seed,
        )

    def score(model: nn.Module) -> dict[str, float]:
        pred = predictive(model, x)
        result = {name: float(table[name](pred, y, bins)) for name in names if name in table}
        if any(name in OOD_METRICS for name in names):
            pred_ood = predictive(model, x_ood)
            result |= {n: float(OOD_METRICS[n](pred, pred_ood)) for n in names if n in OOD_METRICS}
        return {name: result[name] for name in names}

    return score


def _ood_inputs(ood: Any, task: str, inputs: int = 1) -> Inputs:
    """The inputs of `ood` (a tensor or array, or data whose labels are ignored; for a
    forward of several tensors a tuple of them, or such data)."""
    if task != "classification":
        raise ValueError(
            f"ood= (OOD AUROC) needs a classification likelihood, not one of task {task!r}"
        )
    if isinstance(ood, Tensor):
        return ood
    bare = isinstance(ood, tuple | list) and len(ood) == inputs
    if inputs > 1 and bare and not isinstance(ood[0], tuple | list):  # not ((X_a, X_b), y)
        return as_inputs(ood, inputs, "out-of-distribution data")
    if inputs > 1:
        return as_xy(ood, "out-of-distribution data", inputs)[0]
    try:
        return as_xy(ood, "out-of-distribution data")[0]
    except (TypeError, ValueError):
        return torch.as_tensor(np.asarray(ood))


def score_prediction(
    pred: ClassificationPrediction | RegressionPrediction,
    y: Tensor,
    task: str,
    metrics: Sequence[str] | None = None,
    bins: int = 15,
) -> dict[str, float]:
    """The metrics of a prediction already made (e.g. when its probabilities are also
    plotted), by the same table `scorer` uses."""
    table = METRICS[task]
    return {name: float(table[name](pred, y, bins)) for name in metric_names(metrics, task)}


def evaluate(
    model: nn.Module,
    data: DataLike,
    likelihood: str | Likelihood = "categorical",
    **options: Any,
) -> dict[str, float]:
    """Score `model` on `data` once: `scorer(data, likelihood, **options)(model)`, reading
    as many inputs per example as the model's `forward` requires (`inputs`)."""
    options.setdefault("inputs", required_inputs(model))
    return scorer(data, likelihood, **options)(model)


__all__ = [
    "CLASSIFICATION_METRICS",
    "DEFAULT_METRICS",
    "METRICS",
    "METRIC_DIRECTIONS",
    "OOD_METRICS",
    "REGRESSION_METRICS",
    "VALIDATION_METRICS",
    "Direction",
    "EvalMode",
    "Scorer",
    "evaluate",
    "metric_names",
    "ood_metric_names",
    "score_prediction",
    "scorer",
]
