"""Group Sparse VD: one log-uniform scale per output unit on top of Sparse VD weights.

Sparse VD prunes weights one by one, so a channel or unit dies only when each of its
weights happens to. Structured pruning needs a prior on the group. Here, as in the
group priors of Bayesian Compression (Louizos, Ullrich, Welling 2017) and structured
Bayesian pruning (Neklyudov et al. 2017), each output unit j (a channel of a
convolution) has a multiplicative scale z_j on its pre-activation:

    out_j = z_j · (w_j · x + b_j),   q(z_j) = N(μ_j, α_j μ_j²),   p(|z_j|) ∝ 1 / |z_j|,

with the weights w the Sparse VD posterior of `sparse_vd.py`. The log-uniform prior is
scale-free, so a unit cannot buy a cheaper KL by growing its weights while shrinking
z_j; its KL is Molchanov's approximation in log α_j alone, which tends to 0 as the
unit becomes pure noise (α_j → ∞). A unit with log α_j > 3 is noise and can be
removed (`unit_log_alpha`; `compress.shrink(..., prune_units=...)`).

Training forward pass: the weights' local reparameterisation, then one z_j draw per
example and unit, shared by every position of a convolution's channel (as the model
says). Posterior-mean pass and `to_deterministic`: weights and bias × E[z_j] = μ_j.
`posterior()` gives the moments of the effective weight z_j w_ji, so every weight
score ("snr", "log_alpha") sees a noisy unit's weights as noisy.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Posterior
from .family import Family, keyword_options, register_family, twin_factory
from .fused import sample_normal, unit_noise
from .gaussian import _Conv2dMap, _LinearMap
from .sparse_vd import LOG_ALPHA_MAX, _SparseVDLayer, log_alpha, log_uniform_kl


class _GroupSparseVDLayer(_SparseVDLayer):
    """A Sparse VD layer whose output units carry a log-uniform multiplicative scale."""

    sliced: ClassVar[dict[str, tuple[int | None, int | None]]] = {
        **_SparseVDLayer.sliced,
        "unit_mu": (0, None),
        "unit_rho": (0, None),
    }

    def _init_units(self, n_out: int, unit_rho_init: float) -> None:
        self.unit_rho_init = float(unit_rho_init)
        self.unit_mu = nn.Parameter(torch.ones(n_out))
        self.unit_rho = nn.Parameter(torch.full((n_out,), self.unit_rho_init))

    def reset_parameters(self) -> None:
        """The weights as Sparse VD; every unit scale back to 1 with a small σ."""
        super().reset_parameters()
        if getattr(self, "unit_mu", None) is not None:  # not yet built on the first call
            nn.init.ones_(self.unit_mu)
            nn.init.constant_(self.unit_rho, self.unit_rho_init)

    @property
    def unit_sigma(self) -> Tensor:
        return F.softplus(self.unit_rho)

    def unit_log_alpha(self) -> Tensor:
        """Clipped log α_j = log σ_j² − log μ_j² of each unit's scale (high: prune)."""
        return log_alpha(self.unit_mu, self.unit_sigma).detach()

    def _unit_view(self, t: Tensor, ndim: int) -> Tensor:
        return t.view(-1, *(1,) * (ndim - 1))

    def forward(self, x: Tensor) -> Tensor:
        if not self.sample:
            return self._linear_map(x, *self._deterministic_weights())
        weight_var = self._masked(self._scales("weight_rho")[1])
        bias_var = None if self.bias_rho is None else self._scales("bias_rho")[1]
        mean = self._linear_map(x, self._masked(self.weight_mu), self.bias_mu)
        pre = sample_normal(mean, self._linear_map(x * x, weight_var, bias_var))
        ch = self.channel_dim % pre.ndim  # type: ignore[attr-defined]
        noise = unit_noise(pre, ch)
        mu, sigma = (t.view(-1, *noise.shape[ch + 1 :]) for t in (self.unit_mu, self.unit_sigma))
        return pre * (mu + sigma * noise)  # one z per example and unit (a conv: per channel)

    def _deterministic_weights(self) -> tuple[Tensor, Tensor | None]:
        weight = self._masked(self.weight_mu)
        scale = self._unit_view(self.unit_mu, weight.ndim)
        bias = None if self.bias_mu is None else self.bias_mu * self.unit_mu
        return weight * scale, bias

    def kl(self) -> Tensor:
        """Sparse VD KL of the kept weights plus each unit scale's log-uniform KL."""
        units = log_uniform_kl(log_alpha(self.unit_mu, self.unit_sigma)).sum()
        return super().kl() + units

    def posterior(self) -> Posterior:
        """Mean and sd of the effective weights z_j w_ji (and biases z_j b_j)."""
        w_mu, w_sd = self._masked(self.weight_mu), self._masked(self.weight_sigma)
        z_mu, z_var = self.unit_mu, self.unit_sigma.square()

        def product(mu: Tensor, sd: Tensor) -> tuple[Tensor, Tensor]:
            m, v = self._unit_view(z_mu, mu.ndim), self._unit_view(z_var, mu.ndim)
            var = (mu.square() + sd.square()) * (m.square() + v) - (mu * m).square()
            return (mu * m).detach(), var.clamp_min(0).sqrt().detach()

        weight_mean, weight_std = product(w_mu, w_sd)
        bias_mean = bias_std = None
        if self.bias_mu is not None:
            bias_mean, bias_std = product(self.bias_mu, self.bias_sigma)
        return Posterior(
            weight_mean, weight_std, bias_mean, bias_std, unit_log_alpha=self.unit_log_alpha()
        )

    def log_alpha(self) -> Tensor:
        """Per weight: log α of the effective weight z_j w_ji (pruned weights: the max)."""
        post = self.posterior()
        la = log_alpha(post.weight_mean, post.weight_std)
        if self.weight_mask is None:
            return la
        return torch.where(self.weight_mask.bool(), la, torch.full_like(la, LOG_ALPHA_MAX))

    def fold_into_bias(self, mean: Tensor, var: Tensor | None = None) -> None:
        """A constant input reaches the bias before the unit's scale: divide it out."""
        scale = self.unit_mu.detach()
        super().fold_into_bias(mean / scale, None if var is None else var / scale.square())

    def _init_config(self) -> dict[str, Any]:
        return {**super()._init_config(), "unit_rho_init": self.unit_rho_init}

    def _group_repr(self) -> str:
        return f"{self._sparse_vd_repr()}, unit_rho_init={self.unit_rho_init}"


class GroupSparseVDLinear(_LinearMap, _GroupSparseVDLayer):
    """Drop-in for `nn.Linear`: Sparse VD weights and a log-uniform scale per output unit."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        rho_init: float = -5.0,
        unit_rho_init: float = -3.0,
    ) -> None:
        super().__init__()
        shape = self._init_linear(in_features, out_features)
        self._init_sparse_vd(shape, bias, rho_init)
        self._init_units(out_features, unit_rho_init)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias_mu is not None}, {self._group_repr()}"
        )


class GroupSparseVDConv2d(_Conv2dMap, _GroupSparseVDLayer):
    """Drop-in for `nn.Conv2d` (zero padding): Sparse VD weights, one scale per channel."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        rho_init: float = -5.0,
        unit_rho_init: float = -3.0,
    ) -> None:
        super().__init__()
        shape = self._init_conv(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, padding_mode
        )
        self._init_sparse_vd(shape, bias, rho_init)
        self._init_units(out_channels, unit_rho_init)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, {self._group_repr()}"
        )


register_family(
    Family(
        "sparse_vd_group",
        factories={
            nn.Linear: twin_factory(GroupSparseVDLinear),
            nn.Conv2d: twin_factory(GroupSparseVDConv2d),
        },
        layer_options=keyword_options(GroupSparseVDLinear, GroupSparseVDConv2d),
        default_score="snr",
        description="Sparse VD weights with a log-uniform scale per unit / channel "
        "(structured pruning; Louizos et al. 2017, Neklyudov et al. 2017)",
    )
)
