"""Spike-and-slab variational layers: inclusion probabilities for nodes, features and edges.

Model (node level, Jantre et al. 2021). Unit j of a layer has a gate z_j ~ Bern(λ)
that multiplies all its incoming weights and its bias; every weight has a slab
w ~ N(0, s²). With `input_gates=True` each input feature i has its own gate
z_i ~ Bern(λ_in) on its outgoing weights (feature selection). The effective weight
of edge (j, i) is z_j z_i w_ji and the effective bias z_j b_j.

Variational family. q(z_j) = Bern(γ_j) with γ = sigmoid(logit), q(w | gates on) =
N(μ, σ²) with σ = softplus(ρ), and q(w | a gate off) = p(w): a weight whose gate is
off is unidentified, so its posterior is its prior. The KL of the joint (z, w)
posterior is then closed form and summed (never averaged) over the layer:

    Σ_j KL(Bern(γ_j) ‖ Bern(λ)) + Σ_i KL(Bern(γ_i) ‖ Bern(λ_in))
      + Σ_j γ_j [ Σ_i γ_i KL(N(μ_ji, σ_ji²) ‖ N(0, s²)) + KL(N(μ_bj, σ_bj²) ‖ N(0, s²)) ]

(without input gates γ_i ≡ 1, which is the per-node formula of the design notes).
Edge level (Bai, Song, Cheng 2020): one gate per weight and per bias, the same KL
with γ per edge.

Training forward pass (`gate_estimator`). "marginal" (default): the pre-activation is
sampled from a Gaussian with the exact mean and variance of gates × slabs given the
input (per weight E[z w] = γ μ, Var = γ σ² + γ (1 − γ) μ²; a node gate maps a unit's
(m, v) to (γ m, γ v + γ (1 − γ) m²)), so the gates' gradients are analytic: a unit the
likelihood needs pays in predictive noise when its gate becomes doubtful. The sampling
estimators draw gates: "straight_through" (`straight_through_bernoulli`: the value is
an exact Bernoulli(γ) draw, the gradient that of the binary Concrete relaxation at
`temperature`) and "relaxed" (the Concrete sample itself). The straight-through
gradient of the likelihood is dL/dz at the drawn z = 1, which is about 0 once the
slabs fit (a unit's scale is a symmetry of its weights), so under the full KL it
switches whole layers off (measured in docs/spike_slab.md); it is kept as an option.
Given the gates the weights are Gaussian, so the pre-activation is sampled by the
Gaussian family's local reparameterisation (`_GaussianLayer._lrt`). Sampled node gates
are drawn per example (`gate_sampling="local"`, default: each example gets its own
draw, which keeps every example's marginal exact and lowers gradient variance) or once
per call (`"shared"`). Sampled edge gates are drawn once per call: per-example edge
gates would cost batch × out × in.

Posterior-mean mode (`sample=False`) and `to_deterministic` use the posterior means
of the slabs with gates set by `mean_gates`: "median" (default) = 1[γ > 0.5], the
median-probability model (Barbieri & Berger 2004), so the mean-mode network is
exactly the network that pruning by the default rule produces; "expected" = γ.

Compression interface. `posterior()` gives the exact posterior mean and standard
deviation of the *effective* weights (E[z w] = γ μ; Var = γ σ² + γ (1−γ) μ²), so
norm- and SNR-based scores see gated-off units as small. PIPs: `unit_inclusion` is
γ_j (node level) or 1 − Π(1 − φ) over the unit's incoming edges and its bias gate
(edge level); `input_inclusion` is γ_i (input gates) or 1 − Π(1 − φ) over the
input's outgoing edges (edge level).

Prior inclusion λ. Set per layer with `prior_inclusion`; the default is
`default_prior_inclusion(m) = 1 / (m + 1)` for a layer with m gates of that kind.
It is the multiplicity-adjusting "one unit expected a priori" choice: the prior
log-odds against a unit is log m, so a unit is kept only if it improves the log
likelihood by about log m nats beyond its slab's KL: the risk-inflation penalty of
Foster & George (1994). It shrinks with layer size as the theory of Bai et al. and
Jantre et al. requires (their published settings are of the same order:
Jantre ≈ 1.5e-3 / 2.3e-3 for 784-400-400-10, where this gives 2.5e-3).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Posterior
from .convert import _gaussian_factory, register_family
from .gaussian import _VAR_FLOOR, _constructor_args, _Conv2dMap, _GaussianLayer, _LinearMap
from .priors import GaussianPrior

GATE_SAMPLING = ("local", "shared")
GATE_ESTIMATORS = ("marginal", "straight_through", "relaxed")
MEAN_GATES = ("median", "expected")
LEVELS = ("node", "edge")


def default_prior_inclusion(n_gates: int) -> float:
    """λ = 1 / (n_gates + 1): about one gate of the layer on a priori (see module doc)."""
    if n_gates < 1:
        raise ValueError(f"a layer needs at least one gate, got n_gates={n_gates}")
    return 1.0 / (n_gates + 1)


def straight_through_bernoulli(
    logits: Tensor,
    temperature: float = 0.5,
    shape: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    hard: bool = True,
) -> Tensor:
    """A Bernoulli(sigmoid(logits)) sample with the binary Concrete gradient.

    One uniform u drives both parts: the value is hard = 1[u < γ], an exact Bernoulli(γ)
    draw, and the gradient is that of soft = sigmoid((logit γ + log((1−u)/u)) / T), the
    relaxed sample whose threshold soft > 0.5 is the same event. `shape` (default
    `logits.shape`) must broadcast with `logits`; e.g. (batch, units) for per-example gates.
    `hard=False` returns the relaxed sample itself (value and gradient of `soft`).
    """
    shape = tuple(logits.shape if shape is None else shape)
    u = 1.0 - torch.rand(shape, dtype=logits.dtype, device=logits.device, generator=generator)
    hard_sample = (u < torch.sigmoid(logits)).to(logits.dtype)  # u ∈ (0, 1]: γ = 0 never on
    finfo = torch.finfo(logits.dtype)
    uc = u.clamp(finfo.tiny, 1.0 - finfo.eps)
    soft = torch.sigmoid((logits + torch.log1p(-uc) - torch.log(uc)) / temperature)
    if not hard:
        return soft
    return hard_sample + (soft - soft.detach())


def bernoulli_kl(logits: Tensor, prior_inclusion: float) -> Tensor:
    """Element-wise KL(Bern(sigmoid(logits)) ‖ Bern(λ)), computed from logits (stable)."""
    gamma = torch.sigmoid(logits)
    log_on, log_off = F.logsigmoid(logits), F.logsigmoid(-logits)
    lam = prior_inclusion
    return gamma * (log_on - math.log(lam)) + (1 - gamma) * (log_off - math.log1p(-lam))


def normal_kl(mu: Tensor, sigma: Tensor, scale: float) -> Tensor:
    """Element-wise KL(N(mu, sigma²) ‖ N(0, scale²)); `GaussianPrior.kl` is its sum."""
    return (
        (sigma.square() + mu.square()) / (2 * scale**2) - torch.log(sigma) + (math.log(scale) - 0.5)
    )


def _check_probability(name: str, value: float) -> float:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value}")
    return float(value)


class _SpikeSlabLayer(_GaussianLayer):
    """Options, gate sampling and gate summaries shared by node- and edge-level layers.

    The slab parameters (weight_mu, weight_rho, bias_mu, bias_rho), the weight mask,
    the local reparameterisation and `select` come from `_GaussianLayer`.
    """

    channel_dim: int

    def _init_spike_slab(
        self,
        slab_scale: float,
        gate_init: float,
        temperature: float,
        gate_sampling: str,
        mean_gates: str,
        gate_estimator: str,
    ) -> None:
        if not slab_scale > 0:
            raise ValueError(f"slab_scale must be > 0, got {slab_scale}; e.g. slab_scale=1.0")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}; e.g. 0.5")
        if gate_sampling not in GATE_SAMPLING:
            raise ValueError(f"unknown gate_sampling {gate_sampling!r}; valid: {GATE_SAMPLING}")
        if mean_gates not in MEAN_GATES:
            raise ValueError(f"unknown mean_gates {mean_gates!r}; valid: {MEAN_GATES}")
        if gate_estimator not in GATE_ESTIMATORS:
            raise ValueError(f"unknown gate_estimator {gate_estimator!r}; valid: {GATE_ESTIMATORS}")
        self.gate_estimator = gate_estimator
        self.slab_scale = float(slab_scale)
        self.gate_init = _check_probability("gate_init", gate_init)
        self.temperature = float(temperature)
        self.gate_sampling = gate_sampling
        self.mean_gates = mean_gates

    def _gate_logits(self) -> list[Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def reset_parameters(self) -> None:
        """Slabs as the Gaussian family; every gate at γ = `gate_init` (start dense)."""
        super().reset_parameters()
        start = math.log(self.gate_init / (1 - self.gate_init))
        with torch.no_grad():
            for logit in self._gate_logits():
                logit.fill_(start)

    def _init_slabs(self, shape: tuple[int, ...], bias: bool, rho_init: float) -> None:
        self._init_variational(shape, bias, GaussianPrior(self.slab_scale), 1.0, rho_init)

    # -- gates --------------------------------------------------------------------------
    def _mean_gate(self, logit: Tensor) -> Tensor:
        """Gate of the posterior-mean network: 1[γ > 0.5] ("median") or γ ("expected")."""
        if self.mean_gates == "median":
            return (logit > 0).to(logit.dtype)
        return torch.sigmoid(logit)

    def _channel_dim(self, logit: Tensor, like: Tensor) -> int:
        """The units' dim of `like` (an input or output activation), checked against `logit`."""
        ch = self.channel_dim % like.ndim
        if like.shape[ch] != logit.numel():
            raise ValueError(
                f"expected {logit.numel()} units along dim {ch} of the input, got shape "
                f"{tuple(like.shape)}"
            )
        return ch

    def _unit_gates(self, logit: Tensor, like: Tensor) -> Tensor:
        """Sampled gates (straight-through or relaxed) for the units of `like`."""
        ch = self._channel_dim(logit, like)
        trailing = (1,) * (like.ndim - ch - 1)  # spatial dims of a conv share the gate
        logit = logit.view(-1, *trailing)
        shape = (*like.shape[: ch + 1], *trailing) if self.gate_sampling == "local" else None
        hard = self.gate_estimator != "relaxed"
        return straight_through_bernoulli(logit, self.temperature, shape, hard=hard)

    def _gaussian_sample(self, mean: Tensor, var: Tensor) -> Tensor:
        """mean + sd · ε, a point mass where the variance is exactly 0 (as `_lrt`)."""
        std = torch.where(var > 0, var.clamp_min(_VAR_FLOOR).sqrt(), torch.zeros_like(var))
        return mean + std * torch.randn_like(mean)

    def _slab_kl(self) -> Tensor:
        """Element-wise slab KL of the weights (0 where the weight mask removed a weight)."""
        elem = normal_kl(self.weight_mu, self.weight_sigma, self.slab_scale)
        if self.weight_mask is not None:
            elem = torch.where(self.weight_mask.bool(), elem, torch.zeros_like(elem))
        return elem

    def _bias_slab_kl(self) -> Tensor | None:
        if self.bias_mu is None:
            return None
        return normal_kl(self.bias_mu, self.bias_sigma, self.slab_scale)

    def _effective_posterior(
        self, inclusion: Tensor, bias_inclusion: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """Mean and std of z·w when z ~ Bern(inclusion) and w ~ N(μ, σ²) given z = 1."""

        def moments(g: Tensor, mu: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
            std = (g * var + g * (1 - g) * mu.square()).clamp_min(0).sqrt()
            return (g * mu).detach(), std.detach()

        w_mean, w_std = moments(
            inclusion, self._masked(self.weight_mu), self._masked(self.weight_sigma.square())
        )
        if self.bias_mu is None:
            return w_mean, w_std, None, None
        g = torch.ones_like(self.bias_mu) if bias_inclusion is None else bias_inclusion
        b_mean, b_std = moments(g, self.bias_mu, self.bias_sigma.square())
        return w_mean, w_std, b_mean, b_std

    def _spike_slab_repr(self) -> str:
        return (
            f"slab_scale={self.slab_scale}, temperature={self.temperature}, "
            f"mean_gates={self.mean_gates!r}, gate_estimator={self.gate_estimator!r}"
        )


# ---------------------------------------------------------------------------------------
# node level
# ---------------------------------------------------------------------------------------
class _NodeSpikeSlab(_SpikeSlabLayer):
    """One gate per output unit (and optionally one per input unit) over a Gaussian slab."""

    gate_logit: nn.Parameter | None
    input_gate_logit: nn.Parameter | None

    def _init_node(
        self,
        shape: tuple[int, ...],
        bias: bool,
        *,
        node_gates: bool,
        input_gates: bool,
        prior_inclusion: float | None,
        input_prior_inclusion: float | None,
        gate_init: float,
        slab_scale: float,
        rho_init: float,
        temperature: float,
        gate_sampling: str,
        mean_gates: str,
        gate_estimator: str,
    ) -> None:
        self._init_spike_slab(
            slab_scale, gate_init, temperature, gate_sampling, mean_gates, gate_estimator
        )
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
        self._init_slabs(shape, bias, rho_init)

    def _gate_logits(self) -> list[Tensor]:
        return [t for t in (self.gate_logit, self.input_gate_logit) if t is not None]

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
        weight_var = self._masked(self.weight_sigma.square())
        bias_var = None if self.bias_rho is None else self.bias_sigma.square()
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
        """
        w_mu = self._masked(self.weight_mu)
        w_var = self._masked(self.weight_sigma.square())
        if self.input_gate_logit is not None:
            self._channel_dim(self.input_gate_logit, x)
            g = self._weight_gate_product(None, self.input_gamma)
            w_var = g * w_var + g * (1 - g) * w_mu.square()
            w_mu = g * w_mu
        bias_var = None if self.bias_rho is None else self.bias_sigma.square()
        mean = self._linear_map(x, w_mu, self.bias_mu)
        var = self._linear_map(x * x, w_var, bias_var)
        if self.gate_logit is not None:
            ch = self._channel_dim(self.gate_logit, mean)
            g = torch.sigmoid(self.gate_logit).view(-1, *(1,) * (mean.ndim - ch - 1))
            var = g * var + g * (1 - g) * mean.square()
            mean = g * mean
        return self._gaussian_sample(mean, var)

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

    def select(self, out_idx: Tensor | None = None, in_idx: Tensor | None = None) -> _NodeSpikeSlab:
        """A copy keeping units `out_idx` / inputs `in_idx`, their gates and slabs (λ kept)."""
        new = cast(_NodeSpikeSlab, super().select(out_idx, in_idx))
        if self.gate_logit is not None and out_idx is not None:
            idx = out_idx.to(self.gate_logit.device)
            new.gate_logit = nn.Parameter(self.gate_logit.detach()[idx].clone())
        if self.input_gate_logit is not None and in_idx is not None:
            idx = in_idx.to(self.input_gate_logit.device)
            new.input_gate_logit = nn.Parameter(self.input_gate_logit.detach()[idx].clone())
        return new

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
    of the number of outputs / inputs. See the module docstring for the maths.
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
        gate_init: float = 0.99,
        slab_scale: float = 1.0,
        rho_init: float = -6.0,
        temperature: float = 0.5,
        gate_sampling: str = "local",
        mean_gates: str = "median",
        gate_estimator: str = "marginal",
    ) -> None:
        super().__init__()
        self._init_node(
            self._init_linear(in_features, out_features),
            bias,
            node_gates=node_gates,
            input_gates=input_gates,
            prior_inclusion=prior_inclusion,
            input_prior_inclusion=input_prior_inclusion,
            gate_init=gate_init,
            slab_scale=slab_scale,
            rho_init=rho_init,
            temperature=temperature,
            gate_sampling=gate_sampling,
            mean_gates=mean_gates,
            gate_estimator=gate_estimator,
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias_mu is not None}, {self._node_repr()}"
        )


class SpikeSlabConv2d(_Conv2dMap, _NodeSpikeSlab):
    """Drop-in for `nn.Conv2d` with one spike-and-slab gate per output channel.

    `input_gates=True` gates each input channel (needs groups=1). Options as
    `SpikeSlabLinear`.
    """

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
        node_gates: bool = True,
        input_gates: bool = False,
        prior_inclusion: float | None = None,
        input_prior_inclusion: float | None = None,
        gate_init: float = 0.99,
        slab_scale: float = 1.0,
        rho_init: float = -6.0,
        temperature: float = 0.5,
        gate_sampling: str = "local",
        mean_gates: str = "median",
        gate_estimator: str = "marginal",
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
            gate_init=gate_init,
            slab_scale=slab_scale,
            rho_init=rho_init,
            temperature=temperature,
            gate_sampling=gate_sampling,
            mean_gates=mean_gates,
            gate_estimator=gate_estimator,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, {self._node_repr()}"
        )


# ---------------------------------------------------------------------------------------
# edge level
# ---------------------------------------------------------------------------------------
class _EdgeSpikeSlab(_SpikeSlabLayer):
    """One gate per weight and per bias; unit and input PIPs aggregated from the edges."""

    bias_gate_logit: nn.Parameter | None

    def _init_edge(
        self,
        shape: tuple[int, ...],
        bias: bool,
        *,
        prior_inclusion: float | None,
        gate_init: float,
        slab_scale: float,
        rho_init: float,
        temperature: float,
        mean_gates: str,
        gate_estimator: str,
    ) -> None:
        self._init_spike_slab(
            slab_scale, gate_init, temperature, "shared", mean_gates, gate_estimator
        )
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
        self._init_slabs(shape, bias, rho_init)

    def _gate_logits(self) -> list[Tensor]:
        return [t for t in (self.weight_gate_logit, self.bias_gate_logit) if t is not None]

    @property
    def edge_inclusion(self) -> Tensor:
        """q(z = 1) per weight (0 where the weight mask removed the weight)."""
        return self._masked(torch.sigmoid(self.weight_gate_logit))

    def _log_off(self) -> Tensor:
        """log(1 − φ) per weight, 0 for masked weights (they can never be on)."""
        return self._masked(F.logsigmoid(-self.weight_gate_logit))

    def unit_inclusion(self) -> Tensor:
        """P(unit used) = 1 − Π(1 − φ) over its incoming edges and its bias gate."""
        log_off = self._log_off().flatten(1).sum(1)
        if self.bias_gate_logit is not None:
            log_off = log_off + F.logsigmoid(-self.bias_gate_logit)
        return -torch.expm1(log_off)

    def input_inclusion(self) -> Tensor:
        """P(input used) = 1 − Π(1 − φ) over its outgoing edges."""
        log_off = self._log_off().transpose(0, 1).flatten(1).sum(1)
        return -torch.expm1(log_off)

    def forward(self, x: Tensor) -> Tensor:
        if not self.sample:
            return self._linear_map(x, *self._deterministic_weights())
        weight_mean, weight_var = self._gated_moments(
            self.weight_gate_logit, self.weight_mu, self.weight_sigma.square()
        )
        bias_mean = bias_var = None
        if self.bias_mu is not None:
            bias_mean, bias_var = self._gated_moments(
                self.bias_gate_logit, self.bias_mu, self.bias_sigma.square()
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
        w_mean, w_std, b_mean, b_std = self._effective_posterior(self.edge_inclusion, phi_b)
        return Posterior(
            weight_mean=w_mean,
            weight_std=w_std,
            bias_mean=b_mean,
            bias_std=b_std,
            unit_inclusion=self.unit_inclusion().detach(),
            input_inclusion=self.input_inclusion().detach(),
        )

    def select(self, out_idx: Tensor | None = None, in_idx: Tensor | None = None) -> _EdgeSpikeSlab:
        """A copy keeping units `out_idx` / inputs `in_idx` with their edge gates (λ kept)."""
        new = cast(_EdgeSpikeSlab, super().select(out_idx, in_idx))
        dev = self.weight_gate_logit.device
        out_idx = torch.arange(self.weight_mu.shape[0]) if out_idx is None else out_idx
        in_idx = torch.arange(self.weight_mu.shape[1]) if in_idx is None else in_idx
        out_idx, in_idx = out_idx.to(dev), in_idx.to(dev)
        cut = self.weight_gate_logit.detach().index_select(0, out_idx).index_select(1, in_idx)
        new.weight_gate_logit = nn.Parameter(cut.clone())
        if self.bias_gate_logit is not None:
            new.bias_gate_logit = nn.Parameter(self.bias_gate_logit.detach()[out_idx].clone())
        return new

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
        gate_init: float = 0.99,
        slab_scale: float = 1.0,
        rho_init: float = -6.0,
        temperature: float = 0.5,
        mean_gates: str = "median",
        gate_estimator: str = "marginal",
    ) -> None:
        super().__init__()
        self._init_edge(
            self._init_linear(in_features, out_features),
            bias,
            prior_inclusion=prior_inclusion,
            gate_init=gate_init,
            slab_scale=slab_scale,
            rho_init=rho_init,
            temperature=temperature,
            mean_gates=mean_gates,
            gate_estimator=gate_estimator,
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias_mu is not None}, {self._edge_repr()}"
        )


class SpikeSlabEdgeConv2d(_Conv2dMap, _EdgeSpikeSlab):
    """Drop-in for `nn.Conv2d` (groups=1) with a spike-and-slab gate on every weight."""

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
        prior_inclusion: float | None = None,
        gate_init: float = 0.99,
        slab_scale: float = 1.0,
        rho_init: float = -6.0,
        temperature: float = 0.5,
        mean_gates: str = "median",
        gate_estimator: str = "marginal",
    ) -> None:
        super().__init__()
        shape = self._init_conv(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, padding_mode
        )
        self._init_edge(
            shape,
            bias,
            prior_inclusion=prior_inclusion,
            gate_init=gate_init,
            slab_scale=slab_scale,
            rho_init=rho_init,
            temperature=temperature,
            mean_gates=mean_gates,
            gate_estimator=gate_estimator,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, {self._edge_repr()}"
        )


register_family(
    "spike_slab",
    {nn.Linear: _gaussian_factory(SpikeSlabLinear), nn.Conv2d: _gaussian_factory(SpikeSlabConv2d)},
)
register_family(
    "spike_slab_edge",
    {
        nn.Linear: _gaussian_factory(SpikeSlabEdgeLinear),
        nn.Conv2d: _gaussian_factory(SpikeSlabEdgeConv2d),
    },
)


def spike_slab_mlp(
    in_features: int,
    hidden: Sequence[int],
    out_features: int,
    *,
    activation: str = "relu",
    level: str = "node",
    input_gates: bool = False,
    output_gates: bool = False,
    **layer_kwargs: Any,
) -> nn.Sequential:
    """A spike-and-slab MLP with gates where they mean something.

    Node level: gates on every hidden unit, on the input features if `input_gates`
    (first layer only: later layers' inputs are already gated as the previous layer's
    outputs) and on the outputs only if `output_gates` (an output unit cannot be
    pruned). Edge level: a gate on every weight; the input PIPs are then the edge
    aggregates, so `input_gates` must stay False. `models.mlp(..., family="spike_slab")`
    instead gates every layer's outputs and no inputs. `layer_kwargs` go to every layer.
    """
    from ..models import DETERMINISTIC, mlp  # builders import nn: import here, not at the top

    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; valid: {LEVELS}")
    if level == "edge" and input_gates:
        raise ValueError(
            "edge-level layers have no input gates (input PIPs are aggregated from the "
            "edges); use level='node' for input gates or drop input_gates=True"
        )
    model = mlp(in_features, hidden, out_features, activation=activation, family=DETERMINISTIC)
    linear_idx = [i for i, m in enumerate(model) if isinstance(m, nn.Linear)]
    for i in linear_idx:
        kwargs = dict(layer_kwargs)
        if level == "node":
            kwargs["input_gates"] = input_gates and i == linear_idx[0]
            kwargs["node_gates"] = output_gates or i != linear_idx[-1]
            cls: type[nn.Module] = SpikeSlabLinear
        else:
            cls = SpikeSlabEdgeLinear
        model[i] = cls(**_constructor_args(model[i]), **kwargs)
    return model
