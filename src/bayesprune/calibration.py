"""Temperature scaling: one scalar T fitted on validation data restores calibration.

Pruning leaves the ranking of the classes mostly intact but changes how peaked the
predictive is, so a single temperature (Guo et al. 2017) divides the logits,
``p_s(y | x) ∝ exp(log p_s(y | x) / T)`` for every Monte-Carlo sample s (or the one
posterior-mean pass), and the predictive is the mean over samples. T is chosen to
minimise the validation NLL of that predictive; T > 1 softens an over-confident
network, T < 1 sharpens an under-confident one, T = 1 changes nothing. Dividing the
logits keeps every sample's arg-max, so a one-pass (posterior-mean) network keeps
its accuracy exactly; a Monte-Carlo mean of several samples may, rarely, change its
arg-max where samples disagree.

Log-probabilities are logits up to a constant per sample, which the softmax ignores,
so T is fitted from the probability samples `bayesprune.predict` returns.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .data.xy import DataLike, as_xy
from .evaluation import EvalMode
from .likelihoods import Likelihood, make_likelihood
from .predict import predict
from .validation import required_inputs

_TINY = 1e-300  # float64: log of an underflowed probability stays finite
LOG_T_BOUNDS = (math.log(0.05), math.log(20.0))
"""The search interval of log T: temperatures from 0.05 to 20."""


def tempered_probs(samples: Tensor, temperature: float) -> Tensor:
    """The mean over (S, N, C) probability samples of softmax(log p_s / T): (N, C)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = samples.double().clamp_min(_TINY).log()
    return torch.softmax(logits / temperature, dim=-1).mean(0)


def _nll(samples: Tensor, y: Tensor, temperature: float) -> float:
    probs = tempered_probs(samples, temperature)
    return float(-probs.gather(1, y.view(-1, 1)).clamp_min(_TINY).log().mean())


def fit_temperature_to_samples(samples: Tensor, y: Tensor, steps: int = 60) -> float:
    """The T minimising the NLL of `tempered_probs(samples, T)` on labels `y`.

    A golden-section search on log T within `LOG_T_BOUNDS` (the NLL of one sample is
    convex in 1/T; of a Monte-Carlo mean it is unimodal in practice), to about 1e-9
    in log T after 60 steps.
    """
    y = y.long().reshape(-1)
    if samples.ndim != 3 or samples.shape[1] != len(y):
        raise ValueError(
            f"samples must be (S, N, C) with N = len(y) = {len(y)}, got {tuple(samples.shape)}"
        )
    ratio = (math.sqrt(5) - 1) / 2
    lo, hi = LOG_T_BOUNDS

    def loss(log_t: float) -> float:
        return _nll(samples, y, math.exp(log_t))

    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(steps):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    best = (lo + hi) / 2
    return math.exp(best) if loss(best) <= loss(0.0) else 1.0


class TemperatureScaled(nn.Module):
    """`model` whose output log-probabilities (logits) are divided by `temperature`.

    Wraps a classifier that returns logits; its variational layers stay inside, so
    Monte-Carlo and posterior-mean prediction, `evaluation.scorer` and `predict` see
    them as before. T is a buffer: it is saved with the model and never trained.
    An eVI network's `Moments` output gets its mean probabilities tempered,
    softmax(log μ / T), the same map `fit_temperature` fits on its one-pass predictive;
    the propagated covariance is returned unchanged (it describes the untempered mean).
    """

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.model = model
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, *inputs: Any, **named: Any) -> Any:
        """The model called as given (one tensor, several, or inputs by name), its
        logits tempered: a tensor, a mapping's "logits" (Hugging Face's `ModelOutput`,
        returned as the same kind), or eVI moments."""
        out = self.model(*inputs, **named)
        if isinstance(out, Tensor):
            return out / self.temperature.to(out.dtype)
        if isinstance(out, Mapping) and isinstance(out.get("logits"), Tensor):
            tempered = copy.copy(out)
            tempered["logits"] = out["logits"] / self.temperature.to(out["logits"].dtype)
            return tempered
        if _is_moments(out):  # eVI: temper the mean probabilities, keep the covariance
            mean = out.mean
            logits = mean.clamp_min(torch.finfo(mean.dtype).tiny).log()
            tempered = torch.softmax(logits / self.temperature.to(mean.dtype), dim=-1)
            return out._replace(mean=tempered)
        raise TypeError(
            "TemperatureScaled needs a model that returns logits (a tensor, or a mapping with "
            f"'logits') or eVI moments (mean probabilities, cov), got {type(out).__name__}"
        )


def _is_moments(out: Any) -> bool:
    """An eVI `Moments` (a named (mean, cov) tuple), recognised without importing nn.moments."""
    return hasattr(out, "_replace") and isinstance(getattr(out, "mean", None), Tensor)


def fit_temperature(
    model: nn.Module,
    val: DataLike,
    likelihood: str | Likelihood = "categorical",
    *,
    mode: EvalMode | str = EvalMode.MC,
    samples: int = 30,
    seed: int | None = 0,
    batch_size: int | None = None,
) -> float:
    """The temperature minimising the validation NLL of `model`'s predictive in `mode`
    ("mc": `samples` Monte-Carlo passes from `seed`; "mean": the posterior-mean pass)."""
    lik = make_likelihood(likelihood)
    if lik.task != "classification":
        raise ValueError(f"temperature scaling needs a classification likelihood, not {lik.task}")
    x, y = as_xy(val, "validation data", required_inputs(model), ragged=True)
    pred = predict(
        model,
        x,
        samples=samples,
        mode=EvalMode(mode).value,
        likelihood=lik,
        batch_size=batch_size,
        seed=seed,
        keep_samples=True,
    )
    return fit_temperature_to_samples(pred.samples, y)


def temperature_scale(
    model: nn.Module,
    val: DataLike,
    likelihood: str | Likelihood = "categorical",
    **options: Any,
) -> TemperatureScaled:
    """`model` wrapped with the temperature fitted on `val` (`fit_temperature`'s options)."""
    return TemperatureScaled(model, fit_temperature(model, val, likelihood, **options))


__all__ = [
    "LOG_T_BOUNDS",
    "TemperatureScaled",
    "fit_temperature",
    "fit_temperature_to_samples",
    "temperature_scale",
    "tempered_probs",
]
