"""A deployable network: raw rows in, probabilities or values in the original units out.

Training sees standardised tabular inputs and, for regression, standardised targets.
A deployed model must not ask its user to repeat that arithmetic, so `Deployable`
wraps the deterministic network (posterior means) with the scaling of its run:

    classification:  point_prediction(net((x_raw − x_mean) / x_scale))       (probabilities)
    regression:      point_prediction(net((x_raw − x_mean) / x_scale)) · y_std + y_mean

`point_prediction` is the run's likelihood's own: a softmax of logits for the
categorical likelihood, the output as it is for an eVI network (whose mean network
already ends in probabilities), the mean column for the Gaussian likelihood.

Feature selection needs nothing here: a shrunk model already starts with its
`SelectInputs` gather, so it takes every raw column in the original order. Image
data are not standardised by the library, so images go in as the model takes them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .likelihoods import Likelihood


class Deployable(nn.Module):
    """`net` with the input scaling in front and the output transform behind it."""

    def __init__(
        self,
        net: nn.Module,
        likelihood: Likelihood,
        *,
        x_mean: Sequence[float] | None = None,
        x_scale: Sequence[float] | None = None,
        y_mean: float = 0.0,
        y_std: float = 1.0,
    ) -> None:
        super().__init__()
        if (x_mean is None) != (x_scale is None):
            raise ValueError("give both x_mean and x_scale, or neither")
        if x_scale is not None and min(x_scale) <= 0:
            raise ValueError("x_scale must be positive (a constant column has scale 1)")
        self.net = net
        self.likelihood = likelihood
        dtype = next(net.parameters()).dtype
        self.scaled = x_mean is not None
        self.register_buffer("x_mean", torch.tensor(list(x_mean or []), dtype=dtype))
        self.register_buffer("x_scale", torch.tensor(list(x_scale or []), dtype=dtype))
        self.y_mean, self.y_std = float(y_mean), float(y_std)

    def forward(self, x: Tensor) -> Tensor:
        if self.scaled:
            x = (x - self.x_mean) / self.x_scale
        out = self.likelihood.point_prediction(self.net(x))
        if self.likelihood.task == "classification":
            return out
        return out * self.y_std + self.y_mean
