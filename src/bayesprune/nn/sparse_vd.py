"""Sparse Variational Dropout (Molchanov, Ashukha, Vetrov 2017): the reference Bayesian pruner.

Each weight has q(w) = N(θ, σ²) in the *additive* parameterisation: θ and
σ = softplus(ρ) are free parameters, and the dropout rate α = σ² / θ² is derived,
not learned, which keeps gradients low-variance when α is large. The prior is the
improper log-uniform p(|w|) ∝ 1/|w|; its KL has no closed form, so the layer uses
the paper's fitted approximation

    −KL(q ‖ p) ≈ k1 σ(k2 + k3 log α) − ½ log(1 + 1/α) − k1,
    k1 = 0.63576, k2 = 1.87320, k3 = 1.48695,

which tends to 0 as α → ∞ (a weight that is pure noise costs nothing, so it can be
pruned). log α is clipped to [LOG_ALPHA_MIN, LOG_ALPHA_MAX] inside the KL, as in the
authors' code. Weights with log α > 3 (α > 20, i.e. a "dropout rate" above ~95 %)
are the ones the paper prunes: `compress.threshold_masks(weight_scores(model,
"log_alpha"), -3.0)` does that here, since the score is −log α (higher = keep).

Forward pass: the Gaussian layers' local reparameterisation trick, unchanged (these
layers are `_GaussianLayer`s with another KL). The bias has a flat prior (no KL
term), the limit of the paper's deterministic bias.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .family import Family, conv_factories, keyword_options, register_family, twin_factory
from .gaussian import _ConvMap, _GaussianLayer, _LinearMap

K1, K2, K3 = 0.63576, 1.87320, 1.48695
LOG_ALPHA_MIN, LOG_ALPHA_MAX = -10.0, 10.0
_EPS = 1e-16


def log_alpha(mu: Tensor, sigma: Tensor) -> Tensor:
    """log α = log σ² − log θ², clipped to [LOG_ALPHA_MIN, LOG_ALPHA_MAX]."""
    raw = torch.log(sigma.square() + _EPS) - torch.log(mu.square() + _EPS)
    return raw.clamp(LOG_ALPHA_MIN, LOG_ALPHA_MAX)


def log_uniform_kl(log_alpha: Tensor) -> Tensor:
    """Molchanov et al.'s approximation of KL(N(θ, αθ²) ‖ log-uniform), element-wise.

    ½ log(1 + 1/α) is written softplus(−log α) so that it stays finite for any log α.
    """
    neg_kl = K1 * torch.sigmoid(K2 + K3 * log_alpha) - 0.5 * F.softplus(-log_alpha) - K1
    return -neg_kl


class LogUniformPrior:
    """The improper log-uniform prior p(|w|) ∝ 1/|w| with the approximate KL above."""

    def kl(
        self, mu: Tensor, sigma: Tensor, sample: Tensor | None = None, noise: Tensor | None = None
    ) -> Tensor:
        """Σ of the approximate KL over all elements (`sample`, `noise` unused)."""
        return log_uniform_kl(log_alpha(mu, sigma)).sum()

    def log_prob(self, w: Tensor) -> Tensor:
        """Unnormalised log-density −log|w| (the prior is improper)."""
        return -torch.log(w.abs() + _EPS)

    def config(self) -> dict[str, float | str]:
        return {"kind": "log_uniform"}


class _SparseVDLayer(_GaussianLayer):
    """A Gaussian LRT layer whose weights carry the log-uniform prior; the bias has none."""

    def _init_sparse_vd(self, shape: tuple[int, ...], bias: bool, rho_init: float) -> None:
        self._init_variational(shape, bias, LogUniformPrior(), 1.0, rho_init)  # type: ignore[arg-type]

    def log_alpha(self) -> Tensor:
        """Clipped log α per weight (pruned weights: LOG_ALPHA_MAX)."""
        la = log_alpha(self.weight_mu, self.weight_sigma)
        if self.weight_mask is None:
            return la
        return torch.where(self.weight_mask.bool(), la, torch.full_like(la, LOG_ALPHA_MAX))

    def kl(self) -> Tensor:
        """Approximate KL of the kept weights (a pruned weight leaves the model and its KL)."""
        la = log_alpha(self.weight_mu, self._taken("weight_rho")[0][0])
        if self.weight_mask is not None:
            la = la[self.weight_mask.bool()]
        return log_uniform_kl(la).sum()

    def _sparse_vd_repr(self) -> str:
        return f"rho_init={self.rho_init}, prior=log_uniform"


class SparseVDLinear(_LinearMap, _SparseVDLayer):
    """Drop-in for `nn.Linear` with Sparse Variational Dropout (log-uniform prior)."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, *, rho_init: float = -5.0
    ) -> None:
        super().__init__()
        shape = self._init_linear(in_features, out_features)
        self._init_sparse_vd(shape, bias, rho_init)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias_mu is not None}, {self._sparse_vd_repr()}"
        )


class _SparseVDConv(_ConvMap, _SparseVDLayer):
    """A convolution with Sparse Variational Dropout (the Conv1d / 2d / 3d below)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] = 1,
        padding: int | tuple[int, ...] | str = 0,
        dilation: int | tuple[int, ...] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        rho_init: float = -5.0,
    ) -> None:
        super().__init__()
        shape = self._init_conv(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, padding_mode
        )
        self._init_sparse_vd(shape, bias, rho_init)

    def extra_repr(self) -> str:
        return f"{self._conv_repr()}, {self._sparse_vd_repr()}"


class SparseVDConv1d(_SparseVDConv):
    """Drop-in for `nn.Conv1d` (zero padding) with Sparse Variational Dropout."""

    spatial_dims = 1


class SparseVDConv2d(_SparseVDConv):
    """Drop-in for `nn.Conv2d` (zero padding) with Sparse Variational Dropout."""

    spatial_dims = 2


class SparseVDConv3d(_SparseVDConv):
    """Drop-in for `nn.Conv3d` (zero padding) with Sparse Variational Dropout."""

    spatial_dims = 3


register_family(
    Family(
        "sparse_vd",
        factories={
            nn.Linear: twin_factory(SparseVDLinear),
            **conv_factories(twin_factory, SparseVDConv1d, SparseVDConv2d, SparseVDConv3d),
        },
        layer_options=keyword_options(SparseVDLinear, SparseVDConv2d),
        default_score="snr",
        description="Sparse Variational Dropout (log-uniform prior; Molchanov et al. 2017)",
    )
)
