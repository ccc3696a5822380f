"""Predictive distributions: Monte-Carlo over the posterior, or the posterior mean.

Classification returns the mean of the per-sample class probabilities and splits the
uncertainty into total (predictive entropy), aleatoric (expected entropy) and
epistemic (mutual information). Regression returns the predictive mean and a
variance split into aleatoric (the likelihood's noise) and epistemic (the spread of
the per-sample means), by the law of total variance.

The model's raw output is read only through the likelihood: `point_prediction`
(probabilities) for classification, `mean_and_variance` for regression. A
moment-propagation network that returns (mean, cov) therefore works with a
likelihood that understands that tuple (e.g. the eVI likelihood). Such a network
is deterministic, so use mode="mean": extra MC passes would repeat the same output
and its mutual information would be 0; its own predictive covariance is not
folded in here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import metrics
from .inputs import Inputs, as_inputs, map_inputs, rows, take, tensors, to_device, without_targets
from .likelihoods import Likelihood, make_likelihood
from .nn import GradientEstimator, use_posterior_mean
from .nn.pass_draws import one_draw_per_pass
from .options import Choice
from .validation import (
    check_input_dtype,
    forward_checked,
    model_device,
    required_inputs,
    to_model_dtype,
)


class PredictMode(Choice):
    """Which predictive distribution: Monte Carlo ("mc") or the posterior-mean pass."""

    MC = "mc"
    """`samples` stochastic passes, per-sample predictions averaged (the Bayesian
    model average)."""
    MEAN = "mean"
    """One pass with every variational layer at its posterior mean. For an eVI network
    (which propagates moments and returns (mean, cov)) this is its moment predictive."""


MODES = PredictMode.values()


def describe_prediction(mode: str, samples: int, split: str, rows: int | None = None) -> str:
    """How a figure was predicted, for every printed number: e.g. "test (MC, 30 samples,
    450 rows)" or "validation (posterior mean, 200 rows)"."""
    how = f"MC, {samples} samples" if PredictMode(mode) == PredictMode.MC else "posterior mean"
    return f"{split} ({how}{'' if rows is None else f', {rows} rows'})"


@dataclass
class ClassificationPrediction:
    """Predictive class probabilities and their uncertainty (float64, on the CPU; nats)."""

    probs: Tensor  # (N, C) mean over samples of the class probabilities
    labels: Tensor  # (N,) arg-max class
    entropy: Tensor  # (N,) total uncertainty: entropy of probs
    expected_entropy: Tensor  # (N,) aleatoric part
    mutual_information: Tensor  # (N,) epistemic part = entropy − expected_entropy
    samples: Tensor | None = None  # (S, N, C) per-sample probabilities when keep_samples=True


@dataclass
class RegressionPrediction:
    """Predictive mean and variance = aleatoric + epistemic (float64, on the CPU)."""

    mean: Tensor  # (N,)
    variance: Tensor  # (N,) total
    aleatoric: Tensor  # (N,) mean over samples of the noise variance
    epistemic: Tensor  # (N,) variance over samples of the mean (population variance)
    samples: Tensor | None = None  # (S, N) per-sample means when keep_samples=True

    @property
    def std(self) -> Tensor:
        return self.variance.sqrt()


CPU_BATCH_ROWS = 256
ACCELERATOR_BATCH_ROWS = 1024


def default_batch_size(device: torch.device) -> int:
    """Rows per forward pass when the caller does not say.

    Smaller on CPU: a convolution's activations for 1,024 images (47 MB for LeNet-5's
    first layer) exceed glibc's mmap threshold, so every pass maps fresh pages and
    pays a page fault per 4 KiB; at 256 rows they are reused. Measured on LeNet-5,
    Monte-Carlo prediction of 4,096 images: 3.0 s user + 1.8 s system CPU at 1,024
    rows, 3.0 s + 0.0 s at 256. An accelerator wants large batches.
    """
    return CPU_BATCH_ROWS if device.type == "cpu" else ACCELERATOR_BATCH_ROWS


def predict(
    model: nn.Module,
    x: Any,
    *,
    samples: int = 30,
    mode: str = "mc",
    likelihood: str | Likelihood = "categorical",
    batch_size: int | None = None,
    seed: int | None = None,
    keep_samples: bool = False,
    progress: bool = False,
    sampling: str | None = None,
    channels_last: bool = False,
) -> ClassificationPrediction | RegressionPrediction:
    """Predict `x` (tensor or array, batch first) with the model's posterior.

    `x` may also be a DataLoader (or any re-iterable of batches) whose batches are
    inputs or (inputs, targets) pairs, as laplace-torch and Lightning take; the
    batches are predicted as they come (`batch_size` is then the loader's), so with
    the same batches and `seed` the result equals predicting the stacked inputs.

    mode="mc": `samples` stochastic forward passes (variational layers sample while
    their `sample` attribute is True, the default; a layer set to False stays at its
    mean); mode="mean": one pass with every variational layer at its posterior mean
    (`samples` is ignored). Runs in eval mode
    under no_grad and restores the model's train/eval state afterwards. The caller's
    global RNG state is left untouched; `seed` makes the draws repeatable (for a given
    `batch_size`). `progress` shows a bar over the forward passes (batches x samples).
    `batch_size=None` picks `default_batch_size(device)`.

    `sampling="shared"` makes every Gaussian layer draw one weight sample per pass (its
    `estimator` set to "shared" for the call; per batch and pass for a loader) instead
    of sampling each output (local reparameterisation): each example's predictive
    distribution is the same, at one linear map per layer instead of two and one weight
    draw per pass, so Monte Carlo costs about a deterministic pass per sample; only the
    examples of one pass share their network. None keeps each layer's own estimator.
    `channels_last=True` (with `sampling="shared"`, CPU) keeps the Gaussian convolutions'
    feature maps channels-last, where pooling is several times faster, for a network
    that flattens with `nn.Flatten` rather than `.view` (the package's builders do).
    """
    mode = PredictMode(mode).value
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    likelihood = make_likelihood(likelihood)
    reference = next(iter(model.parameters()), None)
    device = model_device(model)
    batch_size = default_batch_size(device) if batch_size is None else batch_size
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batches = _Batches(x, reference, batch_size, required_inputs(model))
    likelihood.to(device)
    reduce = _regression_parts if likelihood.task == "regression" else _class_probs
    passes = samples if mode == "mc" else 1
    was_training = model.training
    model.eval()
    try:
        with (
            torch.no_grad(),
            _forked_rng(device),
            # mc leaves each layer's `sample` flag as the caller set it
            use_posterior_mean(model) if mode == "mean" else nullcontext(),
            _estimators(model, sampling),
        ):
            if seed is not None:
                torch.manual_seed(seed)

            def reduced(out: Any) -> tuple[Tensor, ...]:
                return reduce(out, likelihood)

            per_pass = sampling == GradientEstimator.SHARED and mode == "mc" and not batches.loader
            held = one_draw_per_pass(model, channels_last) if per_pass else nullcontext()
            with held as redraw:
                parts = _run(model, batches, passes, device, reduced, progress, redraw)
    finally:
        model.train(was_training)
    _check_finite_output(parts, batches.largest)
    if likelihood.task == "regression":
        return _regression(parts[0], parts[1], keep_samples)
    return _classification(parts[0], keep_samples)


def _check_finite_output(parts: list[Tensor], largest: float) -> None:
    """Refuse NaN or inf predictions: returned silently they poison every metric downstream.

    Finite inputs of huge magnitude (|x| ≳ 1e19 in float32) overflow the sampled
    variances of the local reparameterisation, so this names the input scale.
    """
    if all(bool(torch.isfinite(p).all()) for p in parts):
        return
    raise ValueError(
        f"the model's predictions are NaN or inf for these inputs (largest |x| = {largest:.3g}); "
        "standardise or rescale the inputs to the range the model was trained on"
    )


def _as_inputs(x: Any, reference: Tensor | None, count: int) -> Inputs:
    """`_as_input` of each of a forward's `count` inputs (a tuple for several, a dict by
    name, checked by `inputs.as_inputs`)."""
    if isinstance(x, Mapping):
        return map_inputs(as_inputs(x, count, "x"), lambda t: _as_input(t, reference))
    if count == 1:
        return _as_input(x, reference)
    return tuple(_as_input(t, reference) for t in tensors(as_inputs(x, count, "x")))


def _as_input(x: Any, reference: Tensor | None) -> Tensor:
    """A tensor in the model's floating dtype; empty or non-finite inputs are refused."""
    several = isinstance(x, tuple) and len(x) > 1 and all(isinstance(t, Tensor) for t in x)
    if several and len({tuple(t.shape) for t in x}) > 1:  # not rows of one batch
        raise ValueError(
            f"x is a {type(x).__name__} of {len(x)} tensors of different shapes, but the "
            "model's forward takes one tensor"
        )
    if not isinstance(x, Tensor):
        try:
            x = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(
                f"x must be a tensor, a numeric array or a DataLoader, got {type(x)}"
            ) from err
    if x.ndim == 0 or len(x) == 0:
        raise ValueError(f"x must hold at least one example (batch first), got {tuple(x.shape)}")
    check_input_dtype(x)
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or inf; clean or impute the inputs first")
    return to_model_dtype(x, reference)


class _Batches:
    """The inputs as batches: slices of one tensor, or the batches of a loader."""

    def __init__(self, x: Any, reference: Tensor | None, batch_size: int, count: int) -> None:
        self.reference, self.largest, self.count = reference, 0.0, count
        if isinstance(x, DataLoader) or _is_batch_iterable(x):
            if iter(x) is x:
                raise ValueError(
                    "x is a one-shot iterator (a generator?); pass a DataLoader, a tensor or an "
                    "array"
                )
            self.source: Iterable[Any] = x
            self.loader = True
        else:
            whole = _as_inputs(x, reference, count)
            n = rows(whole)
            self.source = [take(whole, slice(i, i + batch_size)) for i in range(0, n, batch_size)]
            self.loader = False

    def __iter__(self) -> Iterator[Inputs]:
        count = 0
        for batch in self._drawn():
            if self.loader:
                batch = _as_inputs(_loader_inputs(batch, self.count), self.reference, self.count)
            for t in tensors(batch):
                if t.is_floating_point():
                    self.largest = max(self.largest, float(t.abs().max()))
            count += 1
            yield batch
        if not count:
            raise ValueError("x yields no batches; give it at least one example")

    def _drawn(self) -> Iterator[Any]:
        """The source's batches; a loader's own draws (its base seed, a shuffle) are made
        outside the model's noise stream, so `seed` gives the same draws as for a tensor."""
        if not self.loader:
            yield from self.source
            return
        with torch.random.fork_rng(devices=[]):
            batches = iter(self.source)
        while True:
            with torch.random.fork_rng(devices=[]):
                batch = next(batches, None)
            if batch is None:
                return
            yield batch


def _loader_inputs(batch: Any, count: int) -> Any:
    """The inputs of a loader's batch: x or (x, y); for a forward of `count` > 1 tensors
    ((a, b), y), (a, b, y) or (a, b); a dict by name without its targets ("labels"),
    or (dict, y)."""
    if isinstance(batch, Mapping):
        return without_targets(batch)
    sequence = isinstance(batch, tuple | list)
    if sequence and batch and isinstance(batch[0], Mapping):
        return batch[0]
    if count == 1:
        return batch[0] if sequence else batch
    if sequence and batch and isinstance(batch[0], tuple | list):
        return batch[0]
    return tuple(batch[:count]) if sequence and len(batch) >= count else batch


def _is_batch_iterable(x: Any) -> bool:
    """An iterable of batches, not an array-like of rows (tensor, array, list, tuple)."""
    return isinstance(x, Iterable) and not isinstance(
        x, Tensor | np.ndarray | list | tuple | str | bytes | Mapping
    )


@contextmanager
def _estimators(model: nn.Module, sampling: str | None) -> Iterator[None]:
    """Every layer with an `estimator` option set to `sampling` for the block, then back."""
    if sampling is None:
        yield
        return
    choice = GradientEstimator(sampling)
    layers = [
        m for m in model.modules() if isinstance(getattr(m, "estimator", None), GradientEstimator)
    ]
    before = [m.estimator for m in layers]
    try:
        for m in layers:
            m.estimator = choice
        yield
    finally:
        for m, e in zip(layers, before, strict=True):
            m.estimator = e


def _forked_rng(device: torch.device) -> Any:
    """Fork the CPU RNG, and the model's accelerator RNG when it lives on one."""
    if device.type == "cpu":
        return torch.random.fork_rng(devices=[])
    index = device.index if device.index is not None else 0
    return torch.random.fork_rng(devices=[index], device_type=device.type)


def _run(
    model: nn.Module,
    batches: Iterable[Tensor],
    passes: int,
    device: torch.device,
    reduce: Callable[[Any], tuple[Tensor, ...]],
    progress: bool = False,
    redraw: Callable[[], None] | None = None,
) -> list[Tensor]:
    """Each reduced part stacked over passes and concatenated over batches: (S, N, ...).

    Without `redraw` each batch is predicted `passes` times in turn (a loader is read
    once); with it (`one_draw_per_pass`) the passes are the outer loop, `redraw()`
    before each, so every batch of a pass sees the same network. Batches move to the
    device one at a time: it may not hold them all."""
    grid: list[list[tuple[Tensor, ...]]] = [[] for _ in range(passes)]  # [pass][batch]
    with tqdm(desc="predict", unit="pass", disable=not progress, leave=False) as bar:

        def one(k: int, batch: Tensor) -> None:
            grid[k].append(reduce(forward_checked(model, to_device(batch, device))))
            bar.update()

        if redraw is None:
            for batch in batches:
                for k in range(passes):
                    one(k, batch)
        else:
            inputs = list(batches)
            for k in range(passes):
                redraw()
                for batch in inputs:
                    one(k, batch)
    return [
        torch.stack([torch.cat([out[i] for out in row]) for row in grid])
        for i in range(len(grid[0][0]))
    ]


def _class_probs(output: Any, likelihood: Likelihood) -> tuple[Tensor]:
    try:
        probs = likelihood.point_prediction(output)
    except (AttributeError, TypeError) as err:
        if isinstance(output, Tensor):
            raise
        raise TypeError(
            f"the model returns a {type(output).__name__}, which "
            f"{type(likelihood).__name__}.point_prediction cannot read ({err}); pass the "
            "likelihood the model was trained with (e.g. the eVI likelihood for (mean, cov))"
        ) from err
    return (probs.detach().double().cpu(),)


def _regression_parts(output: Any, likelihood: Likelihood) -> tuple[Tensor, Tensor]:
    mean_and_variance = getattr(likelihood, "mean_and_variance", None)
    if mean_and_variance is None:
        raise TypeError(
            f"regression prediction needs a likelihood with mean_and_variance(output) "
            f"(e.g. Gaussian), got {type(likelihood).__name__}"
        )
    mean, var = mean_and_variance(output)
    return mean.detach().double().cpu(), var.detach().double().cpu()


def _classification(stacked: Tensor, keep: bool) -> ClassificationPrediction:
    probs = stacked.mean(0)
    return ClassificationPrediction(
        probs=probs,
        labels=probs.argmax(-1),
        entropy=metrics.predictive_entropy(stacked),
        expected_entropy=metrics.expected_entropy(stacked),
        mutual_information=metrics.mutual_information(stacked),
        samples=stacked if keep else None,
    )


def _regression(means: Tensor, noise: Tensor, keep: bool) -> RegressionPrediction:
    aleatoric = noise.mean(0)
    epistemic = means.var(0, unbiased=False)  # 0 for a single pass
    return RegressionPrediction(
        mean=means.mean(0),
        variance=aleatoric + epistemic,
        aleatoric=aleatoric,
        epistemic=epistemic,
        samples=means if keep else None,
    )
