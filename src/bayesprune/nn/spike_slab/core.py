"""Spike-and-slab maths, options and the base shared by node- and edge-level layers.

See the package docstring for the model. Here: the closed-form KL pieces, the
straight-through Bernoulli sample, the default prior inclusion, the frozen
`SpikeSlabOptions` every spike-and-slab layer takes, and `_SpikeSlabLayer`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ...options import Choice
from ..base import GatedLayer
from ..gaussian import _GaussianLayer
from ..priors import GaussianPrior

PIN = 1000.0  # |logit| of a pinned gate: sigmoid(±1000) is exactly 1 / 0 in float32 and 64


class GateSampling(Choice):
    """How sampled node gates are drawn: per example ("local") or once per call."""

    LOCAL = "local"
    SHARED = "shared"


class GateEstimator(Choice):
    """How the training pass treats the gates (see the package docstring)."""

    MARGINAL = "marginal"
    STRAIGHT_THROUGH = "straight_through"
    RELAXED = "relaxed"


class MeanGates(Choice):
    """Gates of the posterior-mean network: 1[γ > 0.5] ("median") or γ ("expected")."""

    MEDIAN = "median"
    EXPECTED = "expected"


def _check_probability(name: str, value: float) -> float:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value}")
    return float(value)


@dataclass(frozen=True)
class SpikeSlabOptions:
    """The options every spike-and-slab layer shares, validated once.

    slab_scale: s of the slab N(0, s²). gate_init: γ at the start (dense start).
    rho_init: ρ of the slabs at the start (σ = softplus(ρ)). temperature: of the
    binary Concrete relaxation. mean_gates, gate_estimator, gate_sampling: see
    `MeanGates`, `GateEstimator`, `GateSampling` (gate_sampling: node gates only;
    edge gates are drawn once per call).
    """

    slab_scale: float = 1.0
    gate_init: float = 0.99
    rho_init: float = -6.0
    temperature: float = 0.5
    mean_gates: MeanGates = MeanGates.MEDIAN
    gate_estimator: GateEstimator = GateEstimator.MARGINAL
    gate_sampling: GateSampling = GateSampling.LOCAL

    def __post_init__(self) -> None:
        if not self.slab_scale > 0:
            raise ValueError(f"slab_scale must be > 0, got {self.slab_scale}; e.g. slab_scale=1.0")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}; e.g. 0.5")
        _check_probability("gate_init", self.gate_init)
        for name, kind in (
            ("mean_gates", MeanGates),
            ("gate_estimator", GateEstimator),
            ("gate_sampling", GateSampling),
        ):
            try:
                object.__setattr__(self, name, kind(getattr(self, name)))
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None
        for name in ("slab_scale", "gate_init", "rho_init", "temperature"):
            object.__setattr__(self, name, float(getattr(self, name)))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def merge(
        cls, options: SpikeSlabOptions | None, overrides: Mapping[str, Any]
    ) -> SpikeSlabOptions:
        """`options` (default: the defaults) with keyword `overrides` applied and checked."""
        unknown = sorted(set(overrides) - set(cls.names()))
        if unknown:
            raise TypeError(
                f"unknown spike-and-slab option(s) {unknown}; valid: {list(cls.names())}"
            )
        return replace(options or cls(), **overrides)

    def as_config(self) -> dict[str, Any]:
        """JSON-able values (enum members as their strings)."""
        return {k: (v.value if isinstance(v, Choice) else v) for k, v in asdict(self).items()}


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


class _SpikeSlabLayer(_GaussianLayer, GatedLayer):
    """Options, gate sampling, gate summaries and pinning shared by node and edge layers.

    The slab parameters (weight_mu, weight_rho, bias_mu, bias_rho), the weight mask,
    the local reparameterisation and `select` come from `_GaussianLayer`.
    """

    channel_dim: int

    def _init_spike_slab(self, options: SpikeSlabOptions) -> None:
        self.options = options
        self.gate_estimator = options.gate_estimator
        self.slab_scale = options.slab_scale
        self.gate_init = options.gate_init
        self.temperature = options.temperature
        self.gate_sampling = options.gate_sampling
        self.mean_gates = options.mean_gates

    def _options_config(self) -> dict[str, Any]:
        return self.options.as_config()

    @staticmethod
    def _pin(logit: Tensor | None, keep: Tensor) -> None:
        """Fix `logit` to ±PIN by `keep` and freeze it."""
        if logit is None:
            return
        with torch.no_grad():
            on = torch.full_like(logit, PIN)
            logit.copy_(torch.where(keep.to(logit.device), on, -on))
        logit.requires_grad_(False)

    def _gate_logits(self) -> list[Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def reset_parameters(self) -> None:
        """Slabs as the Gaussian family; every gate at γ = `gate_init` (start dense)."""
        super().reset_parameters()
        start = math.log(self.gate_init / (1 - self.gate_init))
        with torch.no_grad():
            for logit in self._gate_logits():
                logit.fill_(start)

    def _init_slabs(self, shape: tuple[int, ...], bias: bool) -> None:
        rho = self.options.rho_init
        self._init_variational(shape, bias, GaussianPrior(self.slab_scale), 1.0, rho)

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

    def _slab_kl(self) -> Tensor:
        """Element-wise slab KL of the weights (0 where the weight mask removed a weight)."""
        # σ as the training forward pass left it (`_GaussianLayer._scales`), else fresh
        elem = normal_kl(self.weight_mu, self._taken("weight_rho")[0][0], self.slab_scale)
        if self.weight_mask is not None:
            elem = torch.where(self.weight_mask.bool(), elem, torch.zeros_like(elem))
        return elem

    def _bias_slab_kl(self) -> Tensor | None:
        if self.bias_mu is None:
            return None
        return normal_kl(self.bias_mu, self._taken("bias_rho")[0][0], self.slab_scale)

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
