"""Mean-field Gaussian layers and their training-time gradient estimators.

q(w) = N(mu, sigma²) per weight with sigma = softplus(rho). In training a layer
draws its output by one of three estimators (`GradientEstimator`, the `estimator`
option), all unbiased for the output of a weight sample w ~ q:

- "shared" (default): one weight sample w = mu + sigma·ε for the whole batch (Bayes
  by Backprop). One linear map, as a deterministic layer, plus a pass over the
  weights; the examples of a batch share their weight noise, so its gradient variance
  does not shrink with the batch.
- "lrt", local reparameterisation (Kingma et al. 2015): for an input x the
  pre-activation is Gaussian with mean op(x, mu) and variance op(x², sigma²), where op
  is the layer's linear map (matmul or convolution); the layer samples that
  pre-activation directly, independently per example and unit. Two linear maps
  forward and two weight gradients backward, the lowest-variance gradients.
- "flipout" (Wen et al. 2018): one weight perturbation Δ = sigma·ε, decorrelated
  across examples by random signs: op(x, mu) + s_out ⊙ op(x ⊙ s_in, Δ), with s_in /
  s_out ±1 per example and input / output unit (per channel for convolutions). Two
  linear maps, like "lrt", and a weight sample, like "shared".

The default is chosen by time to accuracy, not step cost (docs/speed.md): on MNIST
LeNet-300-100 at batch 128 "shared" reached 97 % validation accuracy in 13 % less
CPU time than "lrt" (97.5 %: 2 % less), and the scale-mixture network of record
ended at 1.93 ± 0.09 % test error against 1.96 ± 0.06 % (40 epochs, 3 seeds); its
step costs 1.9× a deterministic step at batch 128 and 1.2× at 1024, against 2.5× and
2.2× for "lrt".

With "shared", a training forward pass draws the weight and bias samples and computes
the layer's KL in one autograd node (`nn.weight_sample`), which `kl()` then returns:
a Monte-Carlo KL is evaluated at the forward pass's own sample. The other estimators
compute σ and σ² once per training step and share them with the KL
(`_GaussianLayer._scales`).
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..options import Choice
from .base import Posterior, VariationalLayer, conv_geometry
from .family import (
    PLAIN_CONVOLUTIONS,
    Family,
    conv_factories,
    keyword_options,
    register_family,
    twin_factory,
)
from .fused import VAR_FLOOR, eager, sample_normal, softplus_scales
from .priors import GaussianPrior, Prior, make_prior
from .weight_sample import DrawState, sample_weights


class GradientEstimator(Choice):
    """How a Gaussian layer samples its output in training (see the module docstring)."""

    SHARED = "shared"
    LRT = "lrt"
    FLIPOUT = "flipout"


def channels_last_on_cpu(out: Tensor) -> Tensor:
    """A CPU feature map in channels-last layout, where the max pooling after a
    convolution runs several times faster than in torch's default layout (LeNet-5's
    first pooling: 13 ms against 2.7 ms for 256 images); other outputs as they are.
    The values are the same, only the memory order differs; a forward that calls
    `.view` on the feature map refuses it, hence opt-in (`nn.layout`)."""
    if out.dim() == 4 and out.device.type == "cpu":
        return out.contiguous(memory_format=torch.channels_last)
    return out


def inverse_softplus(sigma: Tensor) -> Tensor:
    """The ρ with softplus(ρ) = σ: σ + log(−expm1(−σ)), stable for small and large σ."""
    return sigma + torch.log(-torch.expm1(-sigma))


class _ScalesCache(dict):
    """(σ, σ²) per ρ parameter name, valid while that parameter is unchanged.

    Copies and pickles of a layer start empty: a cached σ carries autograd history,
    which cannot be copied, and is cheap to recompute.
    """

    def __deepcopy__(self, memo: dict) -> _ScalesCache:
        return _ScalesCache()

    def __reduce__(self) -> tuple[type, tuple]:
        return (_ScalesCache, ())


@dataclass
class _Shared:
    """What a training forward pass leaves for the step's KL: σ, σ² and the weight noise."""

    rho: weakref.ref
    key: tuple[int, int]  # ρ's version and storage when σ was computed
    scales: tuple[Tensor, Tensor]
    token: object  # what the backward hooks hold, instead of the tensors (no cycle)
    noise: Tensor | None = None  # ε of a weight sample μ + σε ("shared", "flipout")


@dataclass
class _Draw:
    """The KL a shared-draw forward pass computed, and what it was computed from."""

    params: tuple[weakref.ref, ...]
    keys: tuple[tuple[int, int], ...]  # each parameter's version and storage then
    kl: Tensor
    state: DrawState  # used once a backward pass went through the draw


_DRAW = "draw"  # the `_ScalesCache` key of a shared-draw forward pass's `_Draw`


def _forget(cache: dict, name: str, token: object, grad: Tensor) -> None:
    """Backward hook of shared scales: a backward pass through them ends the sharing."""
    if name in cache and cache[name].token is token:
        del cache[name]


def _random_signs(shape: tuple[int, ...], like: Tensor) -> Tensor:
    """±1 with probability ½ each, of `like`'s dtype and device."""
    return torch.empty(shape, dtype=like.dtype, device=like.device).bernoulli_(0.5).mul_(2).sub_(1)


class _GaussianLayer(VariationalLayer):
    """Parameters, KL and forward maths shared by the dense and conv variants.

    Subclasses only say which linear map they apply (`_linear_map`) and how to make
    their deterministic twin; `_LinearMap` / `_ConvMap` below supply both, so other
    families (e.g. spike-and-slab) reuse them with their own parameters on top.
    """

    weight_mask: Tensor | None
    # Sparse VD keeps the local reparameterisation; BayesLinear / BayesConv2d: an option
    estimator: GradientEstimator = GradientEstimator.LRT
    sliced: ClassVar[dict[str, tuple[int | None, int | None]]] = {
        "weight_mu": (0, 1),
        "weight_rho": (0, 1),
        "weight_mask": (0, 1),
        "bias_mu": (0, None),
        "bias_rho": (0, None),
    }

    def _init_variational(
        self,
        weight_shape: tuple[int, ...],
        bias: bool,
        prior: Prior | dict | None,
        prior_scale: float,
        rho_init: float,
    ) -> None:
        self.prior: Prior = (
            make_prior(prior) if isinstance(prior, dict) else (prior or GaussianPrior(prior_scale))
        )
        self.rho_init = float(rho_init)
        self.weight_mu = nn.Parameter(torch.empty(weight_shape))
        self.weight_rho = nn.Parameter(torch.empty(weight_shape))
        if bias:
            self.bias_mu = nn.Parameter(torch.empty(weight_shape[0]))
            self.bias_rho = nn.Parameter(torch.empty(weight_shape[0]))
        else:
            self.register_parameter("bias_mu", None)
            self.register_parameter("bias_rho", None)
        self.register_buffer("weight_mask", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Means as torch initialises nn.Linear / nn.ConvNd; small equal sigmas."""
        nn.init.kaiming_uniform_(self.weight_mu, a=math.sqrt(5))
        nn.init.constant_(self.weight_rho, self.rho_init)
        if self.bias_mu is not None:
            fan_in = self.weight_mu[0].numel()
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias_mu, -bound, bound)
            nn.init.constant_(self.bias_rho, self.rho_init)

    # -- the linear map of the subclass -------------------------------------------------
    def _linear_map(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        raise NotImplementedError

    def _plain_twin(self) -> nn.Module:
        raise NotImplementedError

    # -- posterior ------------------------------------------------------------------
    @property
    def weight_sigma(self) -> Tensor:
        return F.softplus(self.weight_rho)

    @property
    def bias_sigma(self) -> Tensor | None:
        return None if self.bias_rho is None else F.softplus(self.bias_rho)

    def _scales(self, name: str) -> tuple[Tensor, Tensor]:
        """(σ, σ²) of the ρ parameter `name` for a training forward pass, left for the KL.

        The step's KL (`_taken`) takes them if ρ is unchanged since, else computes its
        own: one softplus per step instead of two. The sharing ends when the KL takes
        them, when a backward pass reaches them, and when ρ changes in place (its
        version: optimizer steps, `load_state_dict`, `copy_`) or is replaced (`.to`, a
        new tensor), so a KL computed after an optimizer step is never stale.
        """
        rho = getattr(self, name)
        scales = softplus_scales(rho)
        if self._shares(rho) and rho.requires_grad:
            token = object()
            cache = self.__dict__.setdefault("_scales_cache", _ScalesCache())
            cache[name] = _Shared(weakref.ref(rho), (rho._version, rho.data_ptr()), scales, token)
            for t in scales:
                t.register_hook(functools.partial(_forget, cache, name, token))
        return scales

    def _taken(self, name: str) -> tuple[tuple[Tensor, Tensor], Tensor | None]:
        """(σ, σ²) and the weight noise the forward pass left (see `_scales`), or fresh σ."""
        rho = getattr(self, name)
        if self._shares(rho):
            hit = self.__dict__.setdefault("_scales_cache", _ScalesCache()).pop(name, None)
            if hit is not None and hit.rho() is rho and hit.key == (rho._version, rho.data_ptr()):
                return hit.scales, hit.noise
        return softplus_scales(rho), None

    def _leave_noise(self, name: str, noise: Tensor) -> None:
        """Leave ε of this forward pass's weight sample for the KL (a Monte-Carlo KL uses it)."""
        hit = self.__dict__.get("_scales_cache", {}).get(name)
        if hit is not None:
            hit.noise = noise

    @staticmethod
    def _shares(rho: Tensor) -> bool:
        """Whether forward and KL share σ: a parameter in eager grad mode (not under
        torch.func transforms, which substitute tensors)."""
        return eager() and torch.is_grad_enabled() and isinstance(rho, nn.Parameter)

    def _masked(self, t: Tensor) -> Tensor:
        return t if self.weight_mask is None else t * self.weight_mask

    def set_weight_mask(self, mask: Tensor | None) -> None:
        """Fix a 0/1 mask on the weights (pruned weights: mean and variance zero)."""
        if mask is not None and mask.shape != self.weight_mu.shape:
            raise ValueError(
                f"mask shape {tuple(mask.shape)} != weight shape {tuple(self.weight_mu.shape)}"
            )
        self.weight_mask = None if mask is None else mask.to(self.weight_mu)

    def fold_into_bias(self, mean: Tensor, var: Tensor | None = None) -> None:
        """Bias N(b, s²) → N(b + mean, s² + var): exact for a constant input (used by shrink)."""
        if self.bias_mu is None:
            raise NotImplementedError("a layer without bias cannot absorb a constant input")
        with torch.no_grad():
            self.bias_mu.add_(mean.to(self.bias_mu))
            if var is not None and self.bias_rho is not None:
                sigma = (self.bias_sigma.square() + var.to(self.bias_rho)).sqrt()
                self.bias_rho.copy_(inverse_softplus(sigma))

    @property
    def merges_input_columns(self) -> bool:
        """Independent Gaussian weights: a sum of scaled columns is again one column."""
        return True

    def merge_input_columns(self, into: int, ratios: Tensor) -> None:
        """Column `into` ← Σ_j r_j · column j: mean Σ r_j μ_j, variance Σ r_j² σ_j² (the
        sum of independent Gaussians, exact for constant inputs; see the base class)."""
        if not self.merges_input_columns:
            raise NotImplementedError(f"{type(self).__name__} cannot merge input columns")
        shape = (1, -1, *(1,) * (self.weight_mu.ndim - 2))
        r = ratios.to(self.weight_mu).view(shape)
        with torch.no_grad():
            mean = (self._masked(self.weight_mu) * r).sum(1)
            var = (self._masked(self.weight_sigma.square()) * r.square()).sum(1)
            self.weight_mu[:, into] = mean
            self.weight_rho[:, into] = inverse_softplus(var.clamp_min(VAR_FLOOR).sqrt())
            if self.weight_mask is not None:  # entries fed only by masked weights stay masked
                self.weight_mask[:, into] = ((var > 0) | (mean != 0)).to(self.weight_mask)

    def forward(self, x: Tensor) -> Tensor:
        if not self.sample:
            return self._linear_map(x, *self._deterministic_weights())
        if self.estimator == GradientEstimator.LRT:
            weight_var = self._masked(self._scales("weight_rho")[1])
            bias_var = None if self.bias_rho is None else self._scales("bias_rho")[1]
            return self._lrt(x, self._masked(self.weight_mu), self.bias_mu, weight_var, bias_var)
        if self.estimator == GradientEstimator.SHARED:
            held = self.__dict__.get("_held_draw")
            if held is not None:
                return self._linear_map(x, *held)
            return self._linear_map(x, *(self._fused_draw() or self._weight_sample()))
        return self._flipout(x)

    def hold_draw(self) -> None:
        """Draw the weights now and use this draw in every shared-estimator forward pass
        until `release_draw` (one network per Monte-Carlo pass: `nn.pass_draws`)."""
        with torch.no_grad():
            self.__dict__["_held_draw"] = self._weight_sample()

    def release_draw(self) -> None:
        """Back to a fresh draw per forward pass."""
        self.__dict__.pop("_held_draw", None)

    def _variational_params(self) -> list[Tensor]:
        """μ, ρ of the weights, then of the bias if any."""
        pairs = [self.weight_mu, self.weight_rho]
        return pairs if self.bias_mu is None else [*pairs, self.bias_mu, self.bias_rho]

    def _fused_draw(self, centred: bool = False) -> tuple[Tensor, Tensor | None] | None:
        """The weight and bias samples (`centred`: their noise σ·ε only) and the layer's KL
        from one node (`nn.weight_sample`), the KL left for `kl()`; None where the node
        does not apply (a weight mask, no gradient, torch.func transforms, a prior without
        `sample_terms`)."""
        sample_terms = getattr(self.prior, "sample_terms", None)
        rho = self.weight_rho
        if sample_terms is None or self.weight_mask is not None:
            return None
        if not (self._shares(rho) and rho.requires_grad):
            return None
        params = self._variational_params()
        state = DrawState()
        *drawn, kl = sample_weights(sample_terms(), state, *params, centred=centred)
        cache = self.__dict__.setdefault("_scales_cache", _ScalesCache())
        refs = tuple(weakref.ref(p) for p in params)
        cache[_DRAW] = _Draw(refs, tuple((p._version, p.data_ptr()) for p in params), kl, state)
        return drawn[0], (drawn[1] if len(drawn) > 1 else None)

    def _drawn_kl(self) -> Tensor | None:
        """The KL of the last shared-draw forward pass, once, if still valid: no backward
        pass through it yet and every parameter unchanged (the same tensor, version)."""
        hit = self.__dict__.get("_scales_cache", {}).pop(_DRAW, None)
        if hit is None or hit.state.used:
            return None
        params = self._variational_params()
        if len(params) != len(hit.params) or any(
            ref() is not p or key != (p._version, p.data_ptr())
            for ref, p, key in zip(hit.params, params, hit.keys, strict=False)
        ):
            return None
        return hit.kl

    def _weight_sample(self, centred: bool = False) -> tuple[Tensor, Tensor | None]:
        """One draw of q for the weights (masked) and the bias; `centred`: its noise σ·ε only.

        ε is left for the step's KL: a Monte-Carlo KL then reads q at this same draw, as
        in Bayes by Backprop, instead of drawing its own.
        """
        drawn = []
        for name, mean in (("weight_rho", self.weight_mu), ("bias_rho", self.bias_mu)):
            if mean is None:
                drawn.append(None)
                continue
            sigma = self._scales(name)[0]
            eps = torch.randn_like(sigma)
            self._leave_noise(name, eps)
            drawn.append(sigma * eps if centred else torch.addcmul(mean, sigma, eps))
        return self._masked(drawn[0]), drawn[1]

    def _flipout(self, x: Tensor) -> Tensor:
        """op(x, μ) + s_out ⊙ op(x ⊙ s_in, Δ): one perturbation Δ, signs per example and unit."""
        noise = self._fused_draw(centred=True) or self._weight_sample(centred=True)
        mean = self._linear_map(x, self._masked(self.weight_mu), self.bias_mu)
        s_in = _random_signs(self._unit_shape(x), x)
        s_out = _random_signs(self._unit_shape(mean), mean)
        return mean + s_out * self._linear_map(x * s_in, *noise)

    def _unit_shape(self, t: Tensor) -> tuple[int, ...]:
        """`t`'s shape up to its units' dim, then 1s (a conv's positions share a sign)."""
        ch = self.channel_dim % t.ndim  # type: ignore[attr-defined]
        return (*t.shape[: ch + 1], *(1,) * (t.ndim - ch - 1))

    def _lrt(
        self,
        x: Tensor,
        weight_mean: Tensor,
        bias_mean: Tensor | None,
        weight_var: Tensor,
        bias_var: Tensor | None,
    ) -> Tensor:
        """Sample the pre-activation N(op(x, mean), op(x², var)) (local reparameterisation).

        Shared by every family whose weights are Gaussian given the rest (e.g. the
        spike-and-slab layers pass gated means and variances).
        """
        mean = self._linear_map(x, weight_mean, bias_mean)
        var = self._linear_map(x * x, weight_var, bias_var)
        return sample_normal(mean, var)  # a variance of exactly 0 is a point mass

    def _deterministic_weights(self) -> tuple[Tensor, Tensor | None]:
        """Weight and bias of the posterior-mean forward pass and of `to_deterministic`."""
        return self._masked(self.weight_mu), self.bias_mu

    def kl(self) -> Tensor:
        drawn = self._drawn_kl()
        if drawn is not None:
            return drawn
        (sigma, _), noise = self._taken("weight_rho")
        mu = self.weight_mu
        if self.weight_mask is not None:  # pruned weights no longer carry a posterior
            keep = self.weight_mask.bool()
            mu, sigma = mu[keep], sigma[keep]
            noise = None if noise is None else noise[keep]
        total = self.prior.kl(mu, sigma, noise=noise)
        if self.bias_mu is not None:
            (sigma, _), noise = self._taken("bias_rho")
            total = total + self.prior.kl(self.bias_mu, sigma, noise=noise)
        return total

    def posterior(self) -> Posterior:
        return Posterior(
            weight_mean=self._masked(self.weight_mu).detach(),
            weight_std=self._masked(self.weight_sigma).detach(),
            bias_mean=None if self.bias_mu is None else self.bias_mu.detach(),
            bias_std=None if self.bias_rho is None else self.bias_sigma.detach(),
        )

    # -- rebuild / export / serialize -------------------------------------------------
    def _init_config(self) -> dict[str, Any]:
        return {**self._shape_config(), "bias": self.bias_mu is not None, "rho_init": self.rho_init}

    def _shape_config(self) -> dict[str, Any]:  # pragma: no cover - supplied by the map mixin
        raise NotImplementedError

    def load_means_from(self, plain: nn.Module) -> None:
        """Initialise the posterior means from a trained deterministic layer."""
        with torch.no_grad():
            self.weight_mu.copy_(plain.weight)
            if self.bias_mu is not None and getattr(plain, "bias", None) is not None:
                self.bias_mu.copy_(plain.bias)


class _LinearMap:
    """The dense map, its nn.Linear twin and its sizes: shared by every dense family."""

    in_features: int
    out_features: int
    bias_mu: Tensor | None
    channel_dim = -1  # the axis of inputs and outputs that indexes units

    def _init_linear(self, in_features: int, out_features: int) -> tuple[int, int]:
        self.in_features, self.out_features = in_features, out_features
        return (out_features, in_features)

    def _linear_map(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(x, weight, bias)

    def _plain_twin(self) -> nn.Module:
        return nn.Linear(self.in_features, self.out_features, bias=self.bias_mu is not None)

    def _set_sizes(self, out_units: int, in_units: int) -> None:
        self.out_features, self.in_features = out_units, in_units

    def _shape_config(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features}


_CONV_FUNCTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class _ConvMap:
    """The convolution, its torch twin and its sizes: shared by every conv family.

    `spatial_dims` (1, 2 or 3) is the one thing a family's Conv1d / Conv2d / Conv3d
    layers differ in; everything else (noise, KL, gates, scores) reads the weight's
    first two axes and flattens the rest."""

    spatial_dims: ClassVar[int] = 2
    in_channels: int
    out_channels: int
    bias_mu: Tensor | None
    channel_dim = 1  # the axis of inputs and outputs that indexes units

    def _init_conv(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...],
        padding: int | tuple[int, ...] | str,
        dilation: int | tuple[int, ...],
        groups: int,
        padding_mode: str,
    ) -> tuple[int, ...]:
        """Validate and store the conv settings; return the weight shape."""
        if padding_mode != "zeros":
            raise ValueError(
                f"{type(self).__name__} supports padding_mode='zeros' only, got {padding_mode!r}"
            )
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must be "
                f"divisible by groups ({groups})"
            )
        ks = (kernel_size,) * self.spatial_dims if isinstance(kernel_size, int) else kernel_size
        if len(ks) != self.spatial_dims:
            raise ValueError(
                f"{type(self).__name__} needs a kernel_size of {self.spatial_dims} number(s), "
                f"got {kernel_size!r}"
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size: tuple[int, ...] = tuple(ks)
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        return (out_channels, in_channels // groups, *ks)

    def _linear_map(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        conv = _CONV_FUNCTIONS[self.spatial_dims]
        return conv(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def _plain_twin(self) -> nn.Module:
        return PLAIN_CONVOLUTIONS[self.spatial_dims](
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            bias=self.bias_mu is not None,
        )

    def _set_sizes(self, out_units: int, in_units: int) -> None:
        self.out_channels, self.in_channels = out_units, in_units

    def _shape_config(self) -> dict[str, Any]:
        return {**conv_geometry(self), "groups": self.groups}

    def _conv_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}"
        )


class _PriorGaussianLayer(_GaussianLayer):
    """The Gaussian family's layers: a prior object and a choice of gradient estimator."""

    lr_multipliers: ClassVar[Mapping[str, float]] = {"_rho": 1 / 3}
    """σ at a third of the rate. Adam moves every parameter about `lr` per step, and at
    fit's 3e-3 the σ's travel far enough to leave the predictive under-confident (MC
    ECE above the deterministic net's); chosen on a validation split (docs/speed.md):
    MC ECE 0.0116 → 0.0046 on LeNet-300-100, and sooner to 98 % MNIST validation."""

    def _init_options(self, estimator: GradientEstimator | str) -> None:
        self.estimator = GradientEstimator(estimator)

    def _init_config(self) -> dict[str, Any]:
        return {
            **super()._init_config(),
            "prior": self.prior.config(),
            "estimator": self.estimator.value,
        }

    def _options_repr(self) -> str:
        return f"prior={self.prior.config()}, estimator={self.estimator.value}"

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> VariationalLayer:
        """As `VariationalLayer.from_config`; a config written before the `estimator`
        option (which trained with the local reparameterisation) keeps it."""
        return super().from_config({"estimator": GradientEstimator.LRT.value, **config})


class BayesLinear(_LinearMap, _PriorGaussianLayer):
    """Drop-in for `nn.Linear` with a mean-field Gaussian posterior over weights and bias."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        prior: Prior | dict | None = None,
        prior_scale: float = 1.0,
        rho_init: float = -6.0,
        estimator: GradientEstimator | str = GradientEstimator.SHARED,
    ) -> None:
        super().__init__()
        shape = self._init_linear(in_features, out_features)
        self._init_variational(shape, bias, prior, prior_scale, rho_init)
        self._init_options(estimator)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias_mu is not None}, {self._options_repr()}"
        )


class _BayesConv(_ConvMap, _PriorGaussianLayer):
    """A convolution with a mean-field Gaussian posterior (the Conv1d / 2d / 3d below)."""

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
        prior: Prior | dict | None = None,
        prior_scale: float = 1.0,
        rho_init: float = -6.0,
        estimator: GradientEstimator | str = GradientEstimator.SHARED,
    ) -> None:
        super().__init__()
        shape = self._init_conv(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, padding_mode
        )
        self._init_variational(shape, bias, prior, prior_scale, rho_init)
        self._init_options(estimator)

    def extra_repr(self) -> str:
        return f"{self._conv_repr()}, {self._options_repr()}"


class BayesConv1d(_BayesConv):
    """Drop-in for `nn.Conv1d` (zero padding) with a mean-field Gaussian posterior."""

    spatial_dims = 1


class BayesConv2d(_BayesConv):
    """Drop-in for `nn.Conv2d` (zero padding) with a mean-field Gaussian posterior."""

    spatial_dims = 2


class BayesConv3d(_BayesConv):
    """Drop-in for `nn.Conv3d` (zero padding) with a mean-field Gaussian posterior."""

    spatial_dims = 3


register_family(
    Family(
        "gaussian",
        factories={
            nn.Linear: twin_factory(BayesLinear),
            **conv_factories(twin_factory, BayesConv1d, BayesConv2d, BayesConv3d),
        },
        layer_options=keyword_options(BayesLinear, BayesConv2d),
        prior_keys=("kind", "scale", "pi", "scale1", "scale2", "kl"),
        prior_options=lambda prior: {"prior": dict(prior)} if prior else {},
        prior_layer_options=("prior", "prior_scale"),
        default_score="snr",
        description="mean-field Gaussian (Bayes by Backprop; a shared weight draw, local "
        "reparameterisation or flipout)",
    )
)
