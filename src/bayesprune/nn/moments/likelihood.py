"""The eVI data term: a Gaussian likelihood of the one-hot label under the predictive moments.

    nll = ½ (y − μ)ᵀ (Σ + εI)⁻¹ (y − μ) + ½ log det(Σ + εI)

with μ, Σ the propagated softmax moments, y one-hot, averaged over the batch
(the constant ½ K log 2π is left out, as in the authors' code). The small
K × K systems are solved by Cholesky in float64, which costs nothing and keeps
the log-determinant accurate when Σ spans many orders of magnitude.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ...likelihoods import Categorical, Likelihood, register_likelihood
from .core import DIAG, Moments, as_moments, layout, symmetrize, variance


def predictive_variance(output: Tensor | Moments) -> Tensor:
    """Per-class predictive variance (the diagonal of Σ), (B, K); zeros for a plain tensor."""
    return variance(as_moments(output))


def _full_covariance(output: Moments) -> Tensor:
    kind = layout(output)
    if kind == DIAG:
        return torch.diag_embed(output.cov)
    return output.dense_covariance()


def cap_variance(cov: Tensor, max_variance: float) -> Tensor:
    """D Σ D with D = diag(min(1, √(cap / Σ_ii))): variances at most `cap`, still PSD.

    The first-order approximation can give probabilities variances far above
    the ¼ a [0, 1] quantity can have; clipping entries one by one (as the
    original code does) can break positive semi-definiteness, this cannot.
    """
    diag = cov.diagonal(dim1=-2, dim2=-1).clamp_min(0)
    shrink = (max_variance / diag.clamp_min(max_variance)).sqrt()  # 1 below the cap
    return cov * shrink.unsqueeze(-1) * shrink.unsqueeze(-2)


class EVILikelihood(Likelihood):
    """Gaussian likelihood of one-hot labels for moment networks (outputs `Moments`).

    `eps` is the ridge εI added to Σ (1e-3 in the authors' code); `max_variance`
    caps each predictive variance (see `cap_variance`). A plain tensor output is
    read as probabilities with zero covariance.
    """

    task = "classification"

    def __init__(self, eps: float = 1e-3, max_variance: float = 1e3) -> None:
        super().__init__()
        if not eps > 0 or not max_variance > 0:
            raise ValueError(f"eps and max_variance must be > 0, got {eps}, {max_variance}")
        self.eps, self.max_variance = float(eps), float(max_variance)

    def nll(self, output: Tensor | Moments, target: Tensor) -> Tensor:
        moments = as_moments(output)
        mean = moments.mean
        if mean.ndim != 2:
            raise ValueError(f"EVILikelihood needs (B, K) mean probabilities, got {mean.shape}")
        k = mean.shape[-1]
        cov = cap_variance(symmetrize(_full_covariance(moments)), self.max_variance)
        cov = cov.double() + self.eps * torch.eye(k, dtype=torch.float64, device=cov.device)
        chol = _cholesky(cov)
        resid = (F.one_hot(target.long(), k).double() - mean.double()).unsqueeze(-1)
        white = torch.linalg.solve_triangular(chol, resid, upper=False)
        quad = white.square().sum((-2, -1))
        logdet = 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        return (0.5 * (quad + logdet)).mean().to(mean.dtype)

    def point_prediction(self, output: Tensor | Moments) -> Tensor:
        return output.mean if isinstance(output, Moments) else output

    def predictive_variance(self, output: Tensor | Moments) -> Tensor:
        """Per-class predictive variance (B, K); the entry at the predicted class is what
        the authors report as "output variance"."""
        return predictive_variance(output)

    def check_target(self, output: Tensor | Moments, target: Tensor) -> None:
        mean = output.mean if isinstance(output, Moments) else output
        Categorical.check_target(self, mean, target)  # same rules: integer labels in range


def _cholesky(cov: Tensor, tries: int = 4) -> Tensor:
    """Cholesky factor; a matrix that rounding left indefinite gets a growing extra ridge."""
    chol, info = torch.linalg.cholesky_ex(cov)
    jitter = 1e-8 * cov.diagonal(dim1=-2, dim2=-1).abs().amax(-1).clamp_min(1.0)
    for _ in range(tries):
        if not bool((info > 0).any()):
            return chol
        bad = (info > 0).to(cov.dtype)[:, None, None]
        eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
        cov = cov + bad * jitter[:, None, None] * eye
        jitter = jitter * 100
        chol, info = torch.linalg.cholesky_ex(cov)
    if bool((info > 0).any()):
        raise FloatingPointError(
            "the predictive covariance is not positive definite even with jitter; it "
            "probably holds NaN or inf: lower the learning rate or check the inputs"
        )
    return chol


register_likelihood("evi", EVILikelihood)
