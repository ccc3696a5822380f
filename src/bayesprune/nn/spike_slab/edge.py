"""Edge-level spike-and-slab layers (Bai, Song, Cheng 2020): one gate per weight and bias.

Unit and input PIPs are aggregated from the edges (`unit_inclusion`,
`input_inclusion`). See the package docstring for the model and its KL.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..base import EdgeAggregate, Posterior
from ..gaussian import _ConvMap, _LinearMap
from .core import (
    GateSampling,
    SpikeSlabOptions,
    _check_probability,
    _SpikeSlabLayer,
    bernoulli_kl,
    default_prior_inclusion,
    straight_through_bernoulli,
)


class _EdgeSpikeSlab(_SpikeSlabLayer):
    """One gate per weight and per bias; unit and input PIPs aggregated from the edges."""

    bias_gate_logit: nn.Parameter | None
    sliced: ClassVar[dict[str, tuple[int | None, int | None]]] = {
        **_SpikeSlabLayer.sliced,
        "weight_gate_logit": (0, 1),
        "bias_gate_logit": (0, None),
    }

    @property
    def merges_input_columns(self) -> bool:
        """Each weight has its own gate: a sum of gated weights is not one gated weight."""
        return False

    def _init_edge(
        self,
        shape: tuple[int, ...],
        bias: bool,
        *,
        prior_inclusion: float | None,
        options: SpikeSlabOptions | None,
        option_values: dict[str, Any],
    ) -> None:
        if "gate_sampling" in option_values:
            raise ValueError(
                "edge gates are drawn once per call: gate_sampling applies to node-level "
                "layers only; remove it"
            )
        options = SpikeSlabOptions.merge(options, option_values)
        self._init_spike_slab(replace(options, gate_sampling=GateSampling.SHARED))
        if getattr(self, "groups", 1) != 1:
            raise ValueError("edge-level spike-and-slab convolutions need groups=1")
        n_gates = math.prod(shape) + (shape[0] if bias else 0)
        self.prior_inclusion = _check_probability(
            "prior_inclusion",
            default_prior_inclusion(n_gates) if prior_inclusion is None else prior_inclusion,
        )
        self.weight_gate_logit = nn.Parameter(torch.empty(shape))
        if bias:
            self.bias_gate_logit = nn.Parameter(torch.empty(shape[0]))
        else:
            self.register_parameter("bias_gate_logit", None)
        self._init_slabs(shape, bias)

    def _gate_logits(self) -> list[Tensor]:
        return [t for t in (self.weight_gate_logit, self.bias_gate_logit) if t is not None]

    def _edge_probs(self) -> Tensor:
        """q(z = 1) per weight (0 where the weight mask removed the weight), with grad."""
        return self._masked(torch.sigmoid(self.weight_gate_logit))

    def _log_off(self) -> Tensor:
        """log(1 − φ) per weight, 0 for masked weights (they can never be on)."""
        return self._masked(F.logsigmoid(-self.weight_gate_logit))

    # -- gate protocol --------------------------------------------------------------------
    def edge_inclusion(self) -> Tensor:
        """q(z = 1) per weight (0 where the weight mask removed the weight)."""
        return self._edge_probs().detach()

    def unit_inclusion(self, aggregate: EdgeAggregate | str = "any") -> Tensor:
        """Per unit, over its incoming edges and bias gate: 1 − Π(1 − φ) ("any") or max φ."""
        if EdgeAggregate(aggregate) is EdgeAggregate.MAX:
            phi = self.edge_inclusion().flatten(1).max(1).values
            if self.bias_gate_logit is not None:
                phi = torch.maximum(phi, torch.sigmoid(self.bias_gate_logit.detach()))
            return phi
        log_off = self._log_off().flatten(1).sum(1)
        if self.bias_gate_logit is not None:
            log_off = log_off + F.logsigmoid(-self.bias_gate_logit)
        return -torch.expm1(log_off).detach()

    def input_inclusion(self, aggregate: EdgeAggregate | str = "any") -> Tensor:
        """Per input, over its outgoing edges: 1 − Π(1 − φ) ("any") or max φ."""
        if EdgeAggregate(aggregate) is EdgeAggregate.MAX:
            return self.edge_inclusion().transpose(0, 1).flatten(1).max(1).values
        log_off = self._log_off().transpose(0, 1).flatten(1).sum(1)
        return -torch.expm1(log_off).detach()

    def gate_parameter_names(self) -> tuple[str, ...]:
        names = ("weight_gate_logit", "bias_gate_logit")
        return tuple(n for n in names if getattr(self, n) is not None)

    def prior_inclusions(self) -> dict[str, float]:
        return {"edges": self.prior_inclusion}

    def set_inclusion(self, units: Tensor | None = None, inputs: Tensor | None = None) -> None:
        raise ValueError(
            "edge-level layers have no unit or input gates to set (one gate per weight); "
            "use a node-level layer (family 'spike_slab')"
        )

    def pin_gates(self, units: Tensor | None = None, inputs: Tensor | None = None) -> None:
        edges = self.weight_gate_logit.detach() > 0  # each edge: its own median rule
        if units is not None:
            edges &= units.to(edges.device).view(-1, *(1,) * (edges.ndim - 1))
        if inputs is not None:
            edges &= inputs.to(edges.device).view(1, -1, *(1,) * (edges.ndim - 2))
        bias_on = None
        if self.bias_gate_logit is not None:
            bias_on = self.bias_gate_logit.detach() > 0
            if units is not None:
                bias_on &= units.to(bias_on.device)
        self._pin(self.weight_gate_logit, edges)
        if bias_on is not None:
            self._pin(self.bias_gate_logit, bias_on)

    def _init_config(self) -> dict[str, Any]:
        config = {
            **super()._init_config(),
            "prior_inclusion": self.prior_inclusion,
            **self._options_config(),
        }
        del config["gate_sampling"]
        return config

    def forward(self, x: Tensor) -> Tensor:
        if not self.sample:
            return self._linear_map(x, *self._deterministic_weights())
        weight_mean, weight_var = self._gated_moments(
            self.weight_gate_logit, self.weight_mu, self._scales("weight_rho")[1]
        )
        bias_mean = bias_var = None
        if self.bias_mu is not None:
            bias_mean, bias_var = self._gated_moments(
                self.bias_gate_logit, self.bias_mu, self._scales("bias_rho")[1]
            )
        return self._lrt(
            x, self._masked(weight_mean), bias_mean, self._masked(weight_var), bias_var
        )

    def _gated_moments(self, logit: Tensor, mu: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of z·w: exact marginals ("marginal") or given a gate sample."""
        if self.gate_estimator == "marginal":
            g = torch.sigmoid(logit)
            return g * mu, g * var + g * (1 - g) * mu.square()
        hard = self.gate_estimator == "straight_through"
        z = straight_through_bernoulli(logit, self.temperature, hard=hard)
        return z * mu, z.square() * var

    def _deterministic_weights(self) -> tuple[Tensor, Tensor | None]:
        weight = self._masked(self.weight_mu * self._mean_gate(self.weight_gate_logit))
        bias = self.bias_mu
        if bias is not None:
            bias = bias * self._mean_gate(self.bias_gate_logit)
        return weight, bias

    def kl(self) -> Tensor:
        phi = torch.sigmoid(self.weight_gate_logit)
        terms = phi * self._slab_kl() + bernoulli_kl(self.weight_gate_logit, self.prior_inclusion)
        if self.weight_mask is not None:
            terms = torch.where(self.weight_mask.bool(), terms, torch.zeros_like(terms))
        total = terms.sum()
        bias_kl = self._bias_slab_kl()
        if bias_kl is not None:
            phi_b = torch.sigmoid(self.bias_gate_logit)
            total = total + torch.dot(phi_b, bias_kl)
            total = total + bernoulli_kl(self.bias_gate_logit, self.prior_inclusion).sum()
        return total

    def posterior(self) -> Posterior:
        phi_b = None if self.bias_gate_logit is None else torch.sigmoid(self.bias_gate_logit)
        w_mean, w_std, b_mean, b_std = self._effective_posterior(self._edge_probs(), phi_b)
        return Posterior(
            weight_mean=w_mean,
            weight_std=w_std,
            bias_mean=b_mean,
            bias_std=b_std,
            unit_inclusion=self.unit_inclusion(),
            input_inclusion=self.input_inclusion(),
        )

    def _edge_repr(self) -> str:
        return f"prior_inclusion={self.prior_inclusion:.3g}, {self._spike_slab_repr()}"


class SpikeSlabEdgeLinear(_LinearMap, _EdgeSpikeSlab):
    """Drop-in for `nn.Linear` with a spike-and-slab gate on every weight and bias.

    Unit PIPs (`posterior().unit_inclusion`) are 1 − Π(1 − φ) over each unit's edges,
    input PIPs the same over each input's outgoing edges. `prior_inclusion` defaults
    to `default_prior_inclusion(number of gates)`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        prior_inclusion: float | None = None,
        options: SpikeSlabOptions | None = None,
        **option_values: Any,
    ) -> None:
        super().__init__()
        self._init_edge(
            self._init_linear(in_features, out_features),
            bias,
            prior_inclusion=prior_inclusion,
            options=options,
            option_values=option_values,
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias_mu is not None}, {self._edge_repr()}"
        )


class _SpikeSlabEdgeConv(_ConvMap, _EdgeSpikeSlab):
    """A convolution with a spike-and-slab gate on every weight (1d / 2d / 3d below)."""

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
        prior_inclusion: float | None = None,
        options: SpikeSlabOptions | None = None,
        **option_values: Any,
    ) -> None:
        super().__init__()
        shape = self._init_conv(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, padding_mode
        )
        self._init_edge(
            shape,
            bias,
            prior_inclusion=prior_inclusion,
            options=options,
            option_values=option_values,
        )

    def extra_repr(self) -> str:
        return f"{self._conv_repr()}, {self._edge_repr()}"


class SpikeSlabEdgeConv1d(_SpikeSlabEdgeConv):
    """Drop-in for `nn.Conv1d` (groups=1) with a spike-and-slab gate on every weight."""

    spatial_dims = 1


class SpikeSlabEdgeConv2d(_SpikeSlabEdgeConv):
    """Drop-in for `nn.Conv2d` (groups=1) with a spike-and-slab gate on every weight."""

    spatial_dims = 2


class SpikeSlabEdgeConv3d(_SpikeSlabEdgeConv):
    """Drop-in for `nn.Conv3d` (groups=1) with a spike-and-slab gate on every weight."""

    spatial_dims = 3
