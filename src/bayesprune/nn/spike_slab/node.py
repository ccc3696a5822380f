"""Node-level spike-and-slab layers: one gate per output unit, optionally per input.

See the package docstring for the model and its KL.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..base import EdgeAggregate, Posterior
from ..fused import sample_normal, unit_noise
from ..gaussian import _ConvMap, _LinearMap
from .core import (
    SpikeSlabOptions,
    _check_probability,
    _SpikeSlabLayer,
    bernoulli_kl,
    default_prior_inclusion,
)


class _NodeSpikeSlab(_SpikeSlabLayer):
    """One gate per output unit (and optionally one per input unit) over a Gaussian slab."""

    gate_logit: nn.Parameter | None
    input_gate_logit: nn.Parameter | None
    sliced: ClassVar[dict[str, tuple[int | None, int | None]]] = {
        **_SpikeSlabLayer.sliced,
        "gate_logit": (0, None),
        "input_gate_logit": (None, 0),
    }

    def _init_node(
        self,
        shape: tuple[int, ...],
        bias: bool,
        *,
        node_gates: bool,
        input_gates: bool,
        prior_inclusion: float | None,
        input_prior_inclusion: float | None,
        options: SpikeSlabOptions,
    ) -> None:
        self._init_spike_slab(options)
        n_out, n_in = shape[0], shape[1]
        if input_gates and getattr(self, "groups", 1) != 1:
            raise ValueError("input_gates need groups=1 (one gate per input channel)")
        if prior_inclusion is None:
            prior_inclusion = default_prior_inclusion(n_out)
        if input_prior_inclusion is None:
            input_prior_inclusion = default_prior_inclusion(n_in)
        self.prior_inclusion = _check_probability("prior_inclusion", prior_inclusion)
        self.input_prior_inclusion = _check_probability(
            "input_prior_inclusion", input_prior_inclusion
        )
        if node_gates:
            self.gate_logit = nn.Parameter(torch.empty(n_out))
        else:
            self.register_parameter("gate_logit", None)
        if input_gates:
            self.input_gate_logit = nn.Parameter(torch.empty(n_in))
        else:
            self.register_parameter("input_gate_logit", None)
        self._init_slabs(shape, bias)

    def _gate_logits(self) -> list[Tensor]:
        return [t for t in (self.gate_logit, self.input_gate_logit) if t is not None]

    @property
    def merges_input_columns(self) -> bool:
        """Unit gates scale whole rows; an input gate is shared by a column's weights."""
        return self.input_gate_logit is None

    @property
    def gamma(self) -> Tensor | None:
        """q(z_j = 1) per output unit: the unit PIPs (None without node gates)."""
        return None if self.gate_logit is None else torch.sigmoid(self.gate_logit)

    @property
    def input_gamma(self) -> Tensor | None:
        """q(z_i = 1) per input unit: the feature PIPs (None without input gates)."""
        return None if self.input_gate_logit is None else torch.sigmoid(self.input_gate_logit)

    def _weight_gate_product(self, out_g: Tensor | None, in_g: Tensor | None) -> Tensor:
        """Per-weight gate product broadcast to the weight shape (ones without gates)."""
        w = self.weight_mu
        g = torch.ones((), dtype=w.dtype, device=w.device)
        if out_g is not None:
            g = g * out_g.view(-1, *(1,) * (w.ndim - 1))
        if in_g is not None:
            g = g * in_g.view(1, -1, *(1,) * (w.ndim - 2))
        return g.expand_as(w)

    def forward(self, x: Tensor) -> Tensor:
        if not self.sample:
            return self._linear_map(x, *self._deterministic_weights())
        if self.gate_estimator == "marginal":
            return self._marginal_forward(x)
        if self.input_gate_logit is not None:
            x = x * self._unit_gates(self.input_gate_logit, x)
        weight_var = self._masked(self._scales("weight_rho")[1])
        bias_var = None if self.bias_rho is None else self._scales("bias_rho")[1]
        out = self._lrt(x, self._masked(self.weight_mu), self.bias_mu, weight_var, bias_var)
        if self.gate_logit is not None:
            out = out * self._unit_gates(self.gate_logit, out)
        return out

    def _marginal_forward(self, x: Tensor) -> Tensor:
        """Sample the pre-activation from the exact mean and variance of gates × slabs.

        Input gates: E[z_i w] = γ_i μ, Var = γ_i σ² + γ_i (1 − γ_i) μ² per weight (the
        terms of one unit are independent, so the unit's moments are exact); a node gate
        then maps the unit's (m, v) to (γ m, γ v + γ (1 − γ) m²). The gates' gradients are
        analytic, so a unit the likelihood needs feels the noise its doubtful gate adds.

        A convolution's channel gate is one draw for all positions of an example, so its
        noise must be shared by them: there the slabs' pre-activation is sampled per
        position and multiplied by one z ~ N(γ, γ (1 − γ)) per example and channel (the
        same mean and variance per position). Independent noise per position would
        average out in the next layer's sum, and every channel's gate could then drift
        shut while the weights grow to make up for it.
        """
        w_mu = self._masked(self.weight_mu)
        w_var = self._masked(self._scales("weight_rho")[1])
        if self.input_gate_logit is not None:
            self._channel_dim(self.input_gate_logit, x)
            g = self._weight_gate_product(None, self.input_gamma)
            w_var = g * w_var + g * (1 - g) * w_mu.square()
            w_mu = g * w_mu
        bias_var = None if self.bias_rho is None else self._scales("bias_rho")[1]
        mean = self._linear_map(x, w_mu, self.bias_mu)
        var = self._linear_map(x * x, w_var, bias_var)
        if self.gate_logit is None:
            return sample_normal(mean, var)  # a variance of exactly 0 is a point mass
        ch = self._channel_dim(self.gate_logit, mean)
        trailing = (1,) * (mean.ndim - ch - 1)  # a conv's positions share their channel's gate
        g = torch.sigmoid(self.gate_logit).view(-1, *trailing)
        if trailing:
            logit = self.gate_logit.view(-1, *trailing)
            gate_sd = torch.exp(-0.5 * (F.softplus(logit) + F.softplus(-logit)))  # √(γ(1−γ))
            return sample_normal(mean, var) * (g + gate_sd * unit_noise(mean, ch))
        return sample_normal(g * mean, g * var + g * (1 - g) * mean.square())

    def _deterministic_weights(self) -> tuple[Tensor, Tensor | None]:
        out_g = None if self.gate_logit is None else self._mean_gate(self.gate_logit)
        in_g = None if self.input_gate_logit is None else self._mean_gate(self.input_gate_logit)
        weight = self._masked(self.weight_mu) * self._weight_gate_product(out_g, in_g)
        bias = self.bias_mu
        if bias is not None and out_g is not None:
            bias = bias * out_g
        return weight, bias

    def kl(self) -> Tensor:
        slab = self._slab_kl()
        if self.input_gate_logit is not None:
            slab = slab * self._weight_gate_product(None, self.input_gamma)
        per_unit = slab.flatten(1).sum(1)
        bias_kl = self._bias_slab_kl()
        if bias_kl is not None:
            per_unit = per_unit + bias_kl
        if self.gate_logit is None:
            total = per_unit.sum()
        else:
            total = torch.dot(self.gamma, per_unit)
            total = total + bernoulli_kl(self.gate_logit, self.prior_inclusion).sum()
        if self.input_gate_logit is not None:
            total = total + bernoulli_kl(self.input_gate_logit, self.input_prior_inclusion).sum()
        return total

    def posterior(self) -> Posterior:
        w_mean, w_std, b_mean, b_std = self._effective_posterior(
            self._weight_gate_product(self.gamma, self.input_gamma), self.gamma
        )
        return Posterior(
            weight_mean=w_mean,
            weight_std=w_std,
            bias_mean=b_mean,
            bias_std=b_std,
            unit_inclusion=None if self.gamma is None else self.gamma.detach(),
            input_inclusion=None if self.input_gamma is None else self.input_gamma.detach(),
        )

    # -- gate protocol --------------------------------------------------------------------
    def unit_inclusion(self, aggregate: EdgeAggregate | str = "any") -> Tensor | None:
        """γ_j per output unit (None without node gates)."""
        return None if self.gamma is None else self.gamma.detach()

    def input_inclusion(self, aggregate: EdgeAggregate | str = "any") -> Tensor | None:
        """γ_i per input unit (None without input gates)."""
        return None if self.input_gamma is None else self.input_gamma.detach()

    def gate_parameter_names(self) -> tuple[str, ...]:
        names = ("gate_logit", "input_gate_logit")
        return tuple(n for n in names if getattr(self, n) is not None)

    def prior_inclusions(self) -> dict[str, float]:
        kinds = {"units": (self.gate_logit, self.prior_inclusion)}
        kinds["inputs"] = (self.input_gate_logit, self.input_prior_inclusion)
        return {kind: lam for kind, (logit, lam) in kinds.items() if logit is not None}

    def set_inclusion(self, units: Tensor | None = None, inputs: Tensor | None = None) -> None:
        for logit, probs, what in (
            (self.gate_logit, units, "unit"),
            (self.input_gate_logit, inputs, "input"),
        ):
            if probs is None:
                continue
            if logit is None:
                raise ValueError(f"this layer has no {what} gates to set")
            p = torch.as_tensor(probs, dtype=logit.dtype, device=logit.device)
            p = p.clamp(1e-6, 1 - 1e-6).expand_as(logit)
            with torch.no_grad():
                logit.copy_(torch.log(p) - torch.log1p(-p))

    def pin_gates(self, units: Tensor | None = None, inputs: Tensor | None = None) -> None:
        if self.gate_logit is not None:
            keep = torch.ones_like(self.gate_logit, dtype=torch.bool)
            self._pin(self.gate_logit, keep if units is None else units)
        if self.input_gate_logit is not None:
            keep = torch.ones_like(self.input_gate_logit, dtype=torch.bool)
            self._pin(self.input_gate_logit, keep if inputs is None else inputs)

    def _init_config(self) -> dict[str, Any]:
        return {
            **super()._init_config(),
            "node_gates": self.gate_logit is not None,
            "input_gates": self.input_gate_logit is not None,
            "prior_inclusion": self.prior_inclusion,
            "input_prior_inclusion": self.input_prior_inclusion,
            **self._options_config(),
        }

    def _node_repr(self) -> str:
        gates = []
        if self.gate_logit is not None:
            gates.append(f"prior_inclusion={self.prior_inclusion:.3g}")
        if self.input_gate_logit is not None:
            gates.append(f"input_prior_inclusion={self.input_prior_inclusion:.3g}")
        return ", ".join([*gates, self._spike_slab_repr(), f"gate_sampling={self.gate_sampling!r}"])


class SpikeSlabLinear(_LinearMap, _NodeSpikeSlab):
    """Drop-in for `nn.Linear` with a spike-and-slab gate on each output unit.

    `input_gates=True` adds a gate per input feature (feature selection);
    `node_gates=False` leaves the outputs ungated (e.g. a network's output layer).
    `prior_inclusion` / `input_prior_inclusion` default to `default_prior_inclusion`
    of the number of outputs / inputs. The other options are `SpikeSlabOptions`
    (pass `options=` or its fields as keywords, e.g. `gate_init=0.9`). See the
    package docstring for the maths.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        node_gates: bool = True,
        input_gates: bool = False,
        prior_inclusion: float | None = None,
        input_prior_inclusion: float | None = None,
        options: SpikeSlabOptions | None = None,
        **option_values: Any,
    ) -> None:
        super().__init__()
        self._init_node(
            self._init_linear(in_features, out_features),
            bias,
            node_gates=node_gates,
            input_gates=input_gates,
            prior_inclusion=prior_inclusion,
            input_prior_inclusion=input_prior_inclusion,
            options=SpikeSlabOptions.merge(options, option_values),
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias_mu is not None}, {self._node_repr()}"
        )


class _SpikeSlabConv(_ConvMap, _NodeSpikeSlab):
    """A convolution with one spike-and-slab gate per output channel (1d / 2d / 3d below).

    `input_gates=True` gates each input channel (needs groups=1). Options as
    `SpikeSlabLinear`.
    """

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
        node_gates: bool = True,
        input_gates: bool = False,
        prior_inclusion: float | None = None,
        input_prior_inclusion: float | None = None,
        options: SpikeSlabOptions | None = None,
        **option_values: Any,
    ) -> None:
        super().__init__()
        shape = self._init_conv(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, padding_mode
        )
        self._init_node(
            shape,
            bias,
            node_gates=node_gates,
            input_gates=input_gates,
            prior_inclusion=prior_inclusion,
            input_prior_inclusion=input_prior_inclusion,
            options=SpikeSlabOptions.merge(options, option_values),
        )

    def extra_repr(self) -> str:
        return f"{self._conv_repr()}, {self._node_repr()}"


class SpikeSlabConv1d(_SpikeSlabConv):
    """Drop-in for `nn.Conv1d` with one spike-and-slab gate per output channel."""

    spatial_dims = 1


class SpikeSlabConv2d(_SpikeSlabConv):
    """Drop-in for `nn.Conv2d` with one spike-and-slab gate per output channel."""

    spatial_dims = 2


class SpikeSlabConv3d(_SpikeSlabConv):
    """Drop-in for `nn.Conv3d` with one spike-and-slab gate per output channel."""

    spatial_dims = 3
