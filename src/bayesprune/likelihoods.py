"""Observation models: the data term of the ELBO and the aleatoric part of the predictive.

A likelihood turns the network's raw output into a per-example negative
log-likelihood (for training) and into predictive moments (for `predict`).
Regression noise is either learned (homoscedastic, one parameter held here) or
heteroscedastic (the network's second output column is the pre-softplus std).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_STD_FLOOR = 1e-6


class Likelihood(nn.Module):
    """Base class; `task` tells metrics and `predict` what the output means."""

    task: str = ""

    def nll(self, output: Tensor, target: Tensor) -> Tensor:
        """Mean negative log-likelihood over the batch."""
        raise NotImplementedError

    def check_target(self, output: Tensor, target: Tensor) -> None:
        """Raise ValueError for targets that do not fit the output (shape, range)."""

    def point_prediction(self, output: Tensor) -> Tensor:
        """Class probabilities (classification) or the predictive mean (regression)."""
        raise NotImplementedError


class Categorical(Likelihood):
    """Softmax over logits; targets are integer class labels."""

    task = "classification"

    def nll(self, output: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(output, target)

    def point_prediction(self, output: Tensor) -> Tensor:
        return output.softmax(-1)

    def check_target(self, output: Tensor, target: Tensor) -> None:
        if target.dtype.is_floating_point or target.dtype == torch.bool:
            raise ValueError(
                f"classification labels must be integers, got dtype {target.dtype}; "
                "convert them with y.long() (or use likelihood='gaussian' for regression)"
            )
        if target.ndim != 1 or target.shape[0] != output.shape[0]:
            raise ValueError(
                f"labels must have shape ({output.shape[0]},), got {tuple(target.shape)}"
            )
        n_classes = output.shape[-1]
        lo, hi = int(target.min()), int(target.max())
        if lo < 0 or hi >= n_classes:
            raise ValueError(
                f"labels out of range: found {lo}..{hi} but the model has {n_classes} outputs "
                f"(valid labels 0..{n_classes - 1}); remap the labels or widen the output layer"
            )


class Gaussian(Likelihood):
    """y ~ N(f(x), noise²). One output column: learned (or fixed) homoscedastic noise.

    Two output columns: heteroscedastic, column 0 the mean and column 1 the
    pre-softplus standard deviation.
    """

    task = "regression"

    def __init__(self, noise_std: float | None = None, init_noise_std: float = 1.0) -> None:
        super().__init__()
        self.fixed_std = noise_std
        start = noise_std if noise_std is not None else init_noise_std
        # inverse softplus, so that softplus(noise_rho) == start
        self.noise_rho = nn.Parameter(
            torch.tensor(math.log(math.expm1(start))), requires_grad=noise_std is None
        )

    def mean_and_variance(self, output: Tensor) -> tuple[Tensor, Tensor]:
        """Predictive mean and aleatoric variance, each of shape (batch,)."""
        if output.ndim == 2 and output.shape[1] == 2:
            std = F.softplus(output[:, 1]) + _STD_FLOOR
            return output[:, 0], std.square()
        mean = output.reshape(output.shape[0], -1)
        if mean.shape[1] != 1:
            raise ValueError(
                f"a Gaussian likelihood needs 1 output (mean) or 2 (mean, scale), "
                f"got {mean.shape[1]}"
            )
        std = F.softplus(self.noise_rho) + _STD_FLOOR
        return mean[:, 0], std.square().expand(mean.shape[0])

    def point_prediction(self, output: Tensor) -> Tensor:
        return self.mean_and_variance(output)[0]

    def nll(self, output: Tensor, target: Tensor) -> Tensor:
        mean, var = self.mean_and_variance(output)
        return F.gaussian_nll_loss(mean, target.reshape(-1).to(mean), var, full=True)

    def check_target(self, output: Tensor, target: Tensor) -> None:
        if not target.dtype.is_floating_point:
            raise ValueError(
                f"regression targets must be floats, got {target.dtype}; convert with y.float()"
            )
        if target.reshape(target.shape[0], -1).shape[1] != 1 or target.shape[0] != output.shape[0]:
            raise ValueError(
                f"regression targets must have shape ({output.shape[0]},) or "
                f"({output.shape[0]}, 1), got {tuple(target.shape)}"
            )


_LIKELIHOODS: dict[str, type[Likelihood]] = {"categorical": Categorical, "gaussian": Gaussian}


def register_likelihood(name: str, cls: type[Likelihood]) -> None:
    """Make `make_likelihood(name)` build `cls` (the eVI likelihood registers as "evi")."""
    _LIKELIHOODS[name] = cls


def likelihood_names() -> list[str]:
    """Every name `make_likelihood` knows."""
    return sorted(_LIKELIHOODS)


def make_likelihood(spec: str | Likelihood) -> Likelihood:
    """A likelihood from its name ('categorical', 'gaussian', 'evi') or an instance."""
    if isinstance(spec, Likelihood):
        return spec
    if spec not in _LIKELIHOODS:
        raise ValueError(f"unknown likelihood {spec!r}; valid: {sorted(_LIKELIHOODS)}")
    return _LIKELIHOODS[spec]()
