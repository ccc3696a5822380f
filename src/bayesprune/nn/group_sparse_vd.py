"""Group Sparse VD: one log-uniform scale per unit on top of Sparse VD weights.

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

`scale_on="in"` puts the scale on each *input* unit instead (a convolution: input
channel), as Bayesian Compression does for fully connected layers:

    out_j = Σ_i w_ji z_i x_i + b_j.

A noisy z_i then removes the whole column i: a flattened input position of a
convolution's output, a unit of the layer before (orphaned, so `shrink` removes it),
or, in the first layer, an input feature. `scale_on={"conv": "out", "linear": "in"}`
(a mapping by layer kind, read by `convert`) is Bayesian Compression's layout for a
LeNet: channels pruned by their own scales, the flattened features and the hidden
units by the scales of the layer that reads them.

Training forward pass: the weights' local reparameterisation with one z draw per
example and unit, shared by every position of a convolution's channel (as the model
says): on the output (× z_j) or on the input before the map (x_i z_i). Posterior-mean
pass and `to_deterministic`: the weights × E[z] = μ (and the bias × μ_j on outputs).
`posterior()` gives the moments of the effective weight z w, so every weight score
("snr", "log_alpha") sees a noisy unit's weights as noisy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Posterior, Role, VariationalLayer
from .family import (
    Family,
    LayerFactory,
    conv_factories,
    keyword_options,
    register_family,
    twin_factory,
)
from .fused import sample_normal, unit_noise
from .gaussian import _ConvMap, _LinearMap
from .sparse_vd import LOG_ALPHA_MAX, _SparseVDLayer, log_alpha, log_uniform_kl

SCALE_SIDES = ("out", "in")
"""Where a group layer's scales sit: one per output unit, or one per input unit."""


class _GroupSparseVDLayer(_SparseVDLayer):
    """A Sparse VD layer whose output (or input) units carry a log-uniform scale."""

    _SLICED_BY_SIDE: ClassVar[dict[str, dict[str, tuple[int | None, int | None]]]] = {
        side: {**_SparseVDLayer.sliced, "unit_mu": axes, "unit_rho": axes}
        for side, axes in (("out", (0, None)), ("in", (None, 0)))
    }

    @property  # type: ignore[override]
    def sliced(self) -> dict[str, tuple[int | None, int | None]]:
        """The scales are cut with the output units or with the input units."""
        return self._SLICED_BY_SIDE[self.scale_on]

    def _init_units(self, n_out: int, n_in: int, unit_rho_init: float, scale_on: str) -> None:
        if scale_on not in SCALE_SIDES:
            raise ValueError(f"scale_on must be one of {SCALE_SIDES}, got {scale_on!r}")
        if scale_on == "in" and getattr(self, "groups", 1) != 1:
            raise ValueError(
                "scale_on='in' needs an ungrouped convolution (a grouped one reads each input "
                "channel in one group only); use scale_on='out' for grouped / depthwise convs"
            )
        self.scale_on = scale_on
        self.unit_rho_init = float(unit_rho_init)
        n = n_out if scale_on == "out" else n_in
        self.unit_mu = nn.Parameter(torch.ones(n))
        self.unit_rho = nn.Parameter(torch.full((n,), self.unit_rho_init))

    def reset_parameters(self) -> None:
        """The weights as Sparse VD; every unit scale back to 1 with a small σ."""
        super().reset_parameters()
        if getattr(self, "unit_mu", None) is not None:  # not yet built on the first call
            nn.init.ones_(self.unit_mu)
            nn.init.constant_(self.unit_rho, self.unit_rho_init)

    @property
    def merges_input_columns(self) -> bool:
        """Scales on the outputs scale whole rows; one on an input is shared by its column."""
        return self.scale_on == "out"

    @property
    def unit_sigma(self) -> Tensor:
        return F.softplus(self.unit_rho)

    def scale_log_alpha(self) -> Tensor:
        """Clipped log α = log σ² − log μ² of every scale, on whichever side (high: prune)."""
        return log_alpha(self.unit_mu, self.unit_sigma).detach()

    def unit_log_alpha(self) -> Tensor | None:
        """log α of each output unit's own scale; None when the scales sit on the inputs."""
        return self.scale_log_alpha() if self.scale_on == "out" else None

    def _unit_view(self, t: Tensor, ndim: int) -> Tensor:
        """`t` broadcast along the weight's output axis (0) or input axis (1)."""
        if self.scale_on == "out":
            return t.view(-1, *(1,) * (ndim - 1))
        return t.view(1, -1, *(1,) * (ndim - 2))

    def _scale_draw(self, like: Tensor) -> Tensor:
        """One z per example and unit of `like` (a conv: per channel, shared by positions)."""
        ch = self.channel_dim % like.ndim  # type: ignore[attr-defined]
        noise = unit_noise(like, ch)
        mu, sigma = (t.view(-1, *noise.shape[ch + 1 :]) for t in (self.unit_mu, self.unit_sigma))
        return mu + sigma * noise

    def forward(self, x: Tensor) -> Tensor:
        if not self.sample:
            return self._linear_map(x, *self._deterministic_weights())
        if self.scale_on == "in":
            x = x * self._scale_draw(x)
        weight_var = self._masked(self._scales("weight_rho")[1])
        bias_var = None if self.bias_rho is None else self._scales("bias_rho")[1]
        mean = self._linear_map(x, self._masked(self.weight_mu), self.bias_mu)
        pre = sample_normal(mean, self._linear_map(x * x, weight_var, bias_var))
        return pre * self._scale_draw(pre) if self.scale_on == "out" else pre

    def _deterministic_weights(self) -> tuple[Tensor, Tensor | None]:
        weight = self._masked(self.weight_mu)
        scale = self._unit_view(self.unit_mu, weight.ndim)
        bias = self.bias_mu
        if bias is not None and self.scale_on == "out":
            bias = bias * self.unit_mu
        return weight * scale, bias

    def kl(self) -> Tensor:
        """Sparse VD KL of the kept weights plus each unit scale's log-uniform KL."""
        units = log_uniform_kl(log_alpha(self.unit_mu, self.unit_sigma)).sum()
        return super().kl() + units

    def posterior(self) -> Posterior:
        """Mean and sd of the effective weights z w (and biases z_j b_j on outputs)."""
        w_mu, w_sd = self._masked(self.weight_mu), self._masked(self.weight_sigma)
        z_mu, z_var = self.unit_mu, self.unit_sigma.square()

        def product(mu: Tensor, sd: Tensor) -> tuple[Tensor, Tensor]:
            m, v = self._unit_view(z_mu, mu.ndim), self._unit_view(z_var, mu.ndim)
            var = (mu.square() + sd.square()) * (m.square() + v) - (mu * m).square()
            return (mu * m).detach(), var.clamp_min(0).sqrt().detach()

        weight_mean, weight_std = product(w_mu, w_sd)
        bias_mean = bias_std = None
        if self.bias_mu is not None and self.scale_on == "out":
            bias_mean, bias_std = product(self.bias_mu, self.bias_sigma)
        elif self.bias_mu is not None:
            bias_mean, bias_std = self.bias_mu.detach(), self.bias_sigma.detach()
        inputs = self.scale_log_alpha() if self.scale_on == "in" else None
        return Posterior(
            weight_mean,
            weight_std,
            bias_mean,
            bias_std,
            unit_log_alpha=self.unit_log_alpha(),
            input_log_alpha=inputs,
        )

    def log_alpha(self) -> Tensor:
        """Per weight: log α of the effective weight z_j w_ji (pruned weights: the max)."""
        post = self.posterior()
        la = log_alpha(post.weight_mean, post.weight_std)
        if self.weight_mask is None:
            return la
        return torch.where(self.weight_mask.bool(), la, torch.full_like(la, LOG_ALPHA_MAX))

    def fold_into_bias(self, mean: Tensor, var: Tensor | None = None) -> None:
        """A constant input reaches the bias before an output unit's scale: divide it out.

        (Scales on the inputs are already in the effective weights that made `mean`.)
        """
        if self.scale_on == "in":
            super().fold_into_bias(mean, var)
            return
        scale = self.unit_mu.detach()
        super().fold_into_bias(mean / scale, None if var is None else var / scale.square())

    def _init_config(self) -> dict[str, Any]:
        return {
            **super()._init_config(),
            "unit_rho_init": self.unit_rho_init,
            "scale_on": self.scale_on,
        }

    def _group_repr(self) -> str:
        return (
            f"{self._sparse_vd_repr()}, unit_rho_init={self.unit_rho_init}, "
            f"scale_on={self.scale_on!r}"
        )


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
        scale_on: str = "out",
    ) -> None:
        super().__init__()
        shape = self._init_linear(in_features, out_features)
        self._init_sparse_vd(shape, bias, rho_init)
        self._init_units(out_features, in_features, unit_rho_init, scale_on)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias_mu is not None}, {self._group_repr()}"
        )


class _GroupSparseVDConv(_ConvMap, _GroupSparseVDLayer):
    """A convolution with Sparse VD weights and one scale per channel (1d / 2d / 3d below)."""

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
        unit_rho_init: float = -3.0,
        scale_on: str = "out",
    ) -> None:
        super().__init__()
        shape = self._init_conv(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, padding_mode
        )
        self._init_sparse_vd(shape, bias, rho_init)
        self._init_units(out_channels, in_channels, unit_rho_init, scale_on)

    def extra_repr(self) -> str:
        return f"{self._conv_repr()}, {self._group_repr()}"


class GroupSparseVDConv1d(_GroupSparseVDConv):
    """Drop-in for `nn.Conv1d` (zero padding): Sparse VD weights, one scale per channel."""

    spatial_dims = 1


class GroupSparseVDConv2d(_GroupSparseVDConv):
    """Drop-in for `nn.Conv2d` (zero padding): Sparse VD weights, one scale per channel."""

    spatial_dims = 2


class GroupSparseVDConv3d(_GroupSparseVDConv):
    """Drop-in for `nn.Conv3d` (zero padding): Sparse VD weights, one scale per channel."""

    spatial_dims = 3


def _group_factory(cls: type[_GroupSparseVDLayer], kind: str) -> LayerFactory:
    """`twin_factory(cls)`, with a `scale_on` mapping ({"conv": ..., "linear": ...}) read
    by `kind` first."""
    twin = twin_factory(cls)

    def build(plain: nn.Module, role: Role, options: dict[str, Any]) -> VariationalLayer:
        side = options.get("scale_on", "out")
        if isinstance(side, Mapping):
            unknown = sorted(set(side) - {"conv", "linear"})
            if unknown:
                raise ValueError(
                    f"scale_on mapping keys must be 'conv' and / or 'linear', got {unknown}"
                )
            options = {**options, "scale_on": side.get(kind, "out")}
        return twin(plain, role, options)

    return build


register_family(
    Family(
        "sparse_vd_group",
        factories={
            nn.Linear: _group_factory(GroupSparseVDLinear, "linear"),
            **conv_factories(
                lambda cls: _group_factory(cls, "conv"),
                GroupSparseVDConv1d,
                GroupSparseVDConv2d,
                GroupSparseVDConv3d,
            ),
        },
        layer_options=keyword_options(GroupSparseVDLinear, GroupSparseVDConv2d),
        default_score="snr",
        description="Sparse VD weights with a log-uniform scale per unit / channel, on the "
        "outputs or the inputs (structured pruning; Louizos et al. 2017, Neklyudov et al. 2017)",
    )
)
