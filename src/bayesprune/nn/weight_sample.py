"""One autograd node per layer for the shared weight draw and its KL (Bayes by Backprop).

With the "shared" estimator (and for flipout's noise) a training step of a Gaussian
layer needs, per weight, σ = softplus(ρ), a normal draw ε, the sample w = μ + σε for
the linear map and the KL term of the loss, then the gradients of both. Written with
autograd's own operations that was about twenty passes over weight-sized tensors with
the N(0, 1) prior (σ² and the slope of softplus that nothing needed, each gradient
accumulated separately), more for the mixture (w evaluated twice); this node makes
about thirteen, forward and backward, for the weight and the bias together, and
computes the KL from the same draw:

- closed-form KL (`GaussianTerms`, `MixtureBoundTerms`): exact, as before;
- the one-sample Monte-Carlo KL of the scale mixture (`MixtureSampledTerms`):
  log q(w) − log p(w) at the w of the forward pass, the estimate of Bayes by
  Backprop, unbiased.

d/dρ = (g_w ε + ∂KL/∂σ) · sigmoid(ρ) and d/dμ = g_w + ∂KL/∂μ, with g_w the gradient
that reaches w (for the Monte-Carlo KL, including ∂KL/∂w). The layer leaves the KL
output for its `kl()` (see `_GaussianLayer._fused_draw`); a backward pass through the
node marks it used, so a KL read after an optimiser step is computed afresh.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable


class KLTerms(Protocol):
    """A prior's KL to N(μ, σ²) as the node needs it: a value and its partial derivatives.

    `value` returns Σ KL over the elements and what `grads` needs again; `grads`
    returns factors f_w, f_μ with ∂/∂w = w·f_w and ∂/∂μ = μ·f_μ (numbers or tensors that
    broadcast, None for zero) and ∂/∂σ, each times the upstream gradient `g`, with
    w = μ + σε the forward pass's sample and ε held fixed.
    """

    def value(self, mu: Tensor, sigma: Tensor, eps: Tensor, w: Tensor) -> tuple[Tensor, Any]: ...

    def grads(
        self, saved: Any, mu: Tensor, sigma: Tensor, eps: Tensor, w: Tensor, g: Tensor
    ) -> tuple[Tensor | None, float | Tensor | None, Tensor]: ...

    def plain(self, mu: Tensor, sigma: Tensor, eps: Tensor, w: Tensor) -> Tensor:
        """The same Σ KL in plain autograd operations (the tests' reference)."""
        ...


def _minus_inv(sigma: Tensor, g: Tensor) -> Tensor:
    """−g / σ, the gradient of −g Σ log σ, in a fresh tensor (every KL has that term)."""
    return torch.div(-g, sigma)


def _number(g: Tensor) -> float | Tensor:
    """The upstream gradient of the KL as a Python number where reading it costs no device
    synchronisation (the CPU): element-wise operations take a number without wrapping it
    in a tensor each time. On other devices the 0-d tensor itself."""
    return g.item() if g.device.type == "cpu" else g


Z_FLOOR = -80.0
"""Where the mixture's z = (k1 − k2) w² + c2 − c1 is clamped: softplus(z) and sigmoid(z)
are below 2e-35 there (a change far below float32's resolution of the sum), and exp of a
smaller z is a denormal number, which costs a CPU about ten times a normal one."""


@dataclass(frozen=True)
class GaussianTerms:
    """KL(N(μ, σ²) ‖ N(0, s²)) = log s − log σ + (σ² + μ²) / (2s²) − ½, closed form."""

    scale: float

    def value(self, mu: Tensor, sigma: Tensor, eps: Tensor, w: Tensor) -> tuple[Tensor, Any]:
        flat_mu, flat_sigma = mu.reshape(-1), sigma.reshape(-1)
        value = torch.dot(flat_sigma, flat_sigma).add_(torch.dot(flat_mu, flat_mu))
        value.mul_(0.5 / self.scale**2).sub_(flat_sigma.log().sum())
        return value.add_(mu.numel() * (math.log(self.scale) - 0.5)), None

    def grads(
        self, saved: Any, mu: Tensor, sigma: Tensor, eps: Tensor, w: Tensor, g: Tensor
    ) -> tuple[Tensor | None, float | Tensor | None, Tensor]:
        # ∂/∂μ = μ / s² (the node adds g_w to it), ∂/∂σ = σ / s² − 1 / σ
        scaled = _number(g) / self.scale**2
        d_sigma = _minus_inv(sigma, g)
        if isinstance(scaled, Tensor):
            return None, scaled, d_sigma.addcmul_(sigma, scaled)
        return None, scaled, d_sigma.add_(sigma, alpha=scaled)

    def plain(self, mu: Tensor, sigma: Tensor, eps: Tensor, w: Tensor) -> Tensor:
        s2 = self.scale**2
        elem = (sigma.square() + mu.square()) / (2 * s2) - torch.log(sigma)
        return elem.sum() + mu.numel() * (math.log(self.scale) - 0.5)


def _log_sigma_softplus(sigma: Tensor, z: Tensor, z_max: float) -> Tensor:
    """Σ log σ + Σ softplus(z) for z ≤ `z_max`.

    As Σ log(σ + σ e^z): one logarithm per element, not two (softplus is exp and
    log1p); z ≥ `Z_FLOOR`, so e^z is never a denormal. Where e^z could overflow (a prior
    whose z can exceed 80) the two sums apart.
    """
    if z_max > 80.0:
        return torch.log(sigma).sum().add_(F.softplus(z).sum())
    return torch.addcmul(sigma, sigma, torch.exp(z)).log_().sum()


@dataclass(frozen=True)
class _MixtureConstants:
    """π N(0, s1²) + (1 − π) N(0, s2²): c_j = log π_j − log s_j, k_j = 1 / (2 s_j²),
    dk = k1 − k2, c = c2 − c1 and z_max, the largest z = dk·u + c over u ≥ 0 (unbounded
    where dk > 0); computed once."""

    pi: float
    scale1: float
    scale2: float
    c1: float = field(init=False)
    c: float = field(init=False)
    k1: float = field(init=False)
    dk: float = field(init=False)
    z_max: float = field(init=False)

    def __post_init__(self) -> None:
        c1 = math.log(self.pi) - math.log(self.scale1)
        c2 = math.log1p(-self.pi) - math.log(self.scale2)
        k1 = 0.5 / self.scale1**2
        dk = k1 - 0.5 / self.scale2**2
        z_max = c2 - c1 if dk <= 0 else math.inf
        for name, value in (("c1", c1), ("c", c2 - c1), ("k1", k1), ("dk", dk), ("z_max", z_max)):
            object.__setattr__(self, name, value)

    def _z(self, u: Tensor) -> Tensor:
        """z = dk·u + c, clamped at `Z_FLOOR`, in u's memory."""
        return u.mul_(self.dk).add_(self.c).clamp_min_(Z_FLOOR)

    def _z_of_square(self, w: Tensor) -> Tensor:
        """z at u = w², clamped at `Z_FLOOR`: two passes on the CPU (a 0-d constant
        there costs no copy to a device), three elsewhere."""
        if w.device.type == "cpu":
            return torch.addcmul(w.new_tensor(self.c), w, w, value=self.dk).clamp_min_(Z_FLOOR)
        return self._z(torch.mul(w, w))

    def _factor(self, z: Tensor, g: Tensor) -> Tensor:
        """2g (k1 − dk sigmoid(z)) in a fresh tensor: g · the derivative of
        k1 u − softplus(z) with respect to u, times 2 (u = w² or μ² + σ²)."""
        g2 = 2 * _number(g)
        if isinstance(g2, Tensor):
            return torch.sigmoid(z).mul_(-self.dk * g2).add_(self.k1 * g2)
        return torch.add(z.new_tensor(self.k1 * g2), torch.sigmoid(z), alpha=-self.dk * g2)


@dataclass(frozen=True)
class MixtureSampledTerms(_MixtureConstants):
    """One-sample Monte-Carlo KL to the scale mixture at the forward pass's w.

    Per element, with u = w² and z = (k1 − k2) u + c2 − c1:
    log q(w) − log p(w) = −ε²/2 − log σ − c1 + k1 u − softplus(z), ∂/∂w = 2w (k1 − (k1 −
    k2) sigmoid(z)), ∂/∂σ = −1/σ (with ε fixed; the path through w is the node's).
    """

    def value(self, mu: Tensor, sigma: Tensor, eps: Tensor, w: Tensor) -> tuple[Tensor, Any]:
        flat_w, flat_eps = w.reshape(-1), eps.reshape(-1)
        z = self._z_of_square(w)
        value = torch.dot(flat_w, flat_w).mul_(self.k1)
        value.sub_(torch.dot(flat_eps, flat_eps), alpha=0.5)
        value.sub_(_log_sigma_softplus(sigma, z, self.z_max))
        return value.sub_(mu.numel() * self.c1), z

    def grads(
        self, saved: Any, mu: Tensor, sigma: Tensor, eps: Tensor, w: Tensor, g: Tensor
    ) -> tuple[Tensor | None, float | Tensor | None, Tensor]:
        return self._factor(saved, g), None, _minus_inv(sigma, g)

    def plain(self, mu: Tensor, sigma: Tensor, eps: Tensor, w: Tensor) -> Tensor:
        u = w.square()
        z = self.dk * u + self.c
        elem = self.k1 * u - 0.5 * eps.square() - torch.log(sigma) - F.softplus(z)
        return (elem - self.c1).sum()


@dataclass(frozen=True)
class MixtureBoundTerms(_MixtureConstants):
    """The closed-form upper bound of the mixture KL (see `ScaleMixturePrior`).

    Per element, with t = μ² + σ² and z = (k1 − k2) t + c2 − c1: k1 t − log σ −
    softplus(z) − ½ − c1; ∂/∂t = k1 − (k1 − k2) sigmoid(z), ∂/∂μ = 2μ ∂/∂t, ∂/∂σ = 2σ
    ∂/∂t − 1/σ.
    """

    def value(self, mu: Tensor, sigma: Tensor, eps: Tensor, w: Tensor) -> tuple[Tensor, Any]:
        t = torch.mul(mu, mu).addcmul_(sigma, sigma)
        value = t.sum().mul_(self.k1)
        z = self._z(t)
        value.sub_(_log_sigma_softplus(sigma, z, self.z_max))
        return value.sub_(mu.numel() * (0.5 + self.c1)), z

    def grads(
        self, saved: Any, mu: Tensor, sigma: Tensor, eps: Tensor, w: Tensor, g: Tensor
    ) -> tuple[Tensor | None, float | Tensor | None, Tensor]:
        d_t = self._factor(saved, g)
        return None, d_t, _minus_inv(sigma, g).addcmul_(d_t, sigma)

    def plain(self, mu: Tensor, sigma: Tensor, eps: Tensor, w: Tensor) -> Tensor:
        t = mu.square() + sigma.square()
        z = self.dk * t + self.c
        elem = self.k1 * t - torch.log(sigma) - F.softplus(z) - (0.5 + self.c1)
        return elem.sum()


class DrawState:
    """Whether a draw's KL may still be used: a backward pass through the node ends it."""

    __slots__ = ("used",)

    def __init__(self) -> None:
        self.used = False


def _scaled_plus(base: Tensor | None, t: Tensor, factor: float | Tensor | None) -> Tensor | None:
    """base + t·factor in one pass and a fresh tensor (`base` may be autograd's own);
    None stands for zero."""
    if factor is None:
        return base
    if base is None:
        return t * factor
    if isinstance(factor, Tensor):
        return torch.addcmul(base, t, factor)
    return torch.add(base, t, alpha=factor)


class _WeightSample(torch.autograd.Function):
    """(w_1, …, w_k, Σ KL) from (μ_1, ρ_1, …, μ_k, ρ_k): w_i = μ_i + softplus(ρ_i) ε_i
    (`centred`: σ_i ε_i in place of w_i).

    Tensors are kept as ctx attributes (aliases without history), not saved tensors,
    so the node can be backpropagated through twice (the data term's graph freed
    first, the KL after), as `_SoftplusScales` can.
    """

    @staticmethod
    def forward(
        ctx: Any, terms: KLTerms, state: DrawState, centred: bool, *params: Tensor
    ) -> tuple[Tensor, ...]:
        ctx.set_materialize_grads(False)
        ctx.terms, ctx.state, ctx.centred = terms, state, centred
        kept, samples, total = [], [], None
        for mu, rho in zip(params[0::2], params[1::2], strict=True):
            sigma = F.softplus(rho)
            eps = torch.randn_like(sigma)
            w = torch.addcmul(mu, sigma, eps)
            value, saved = terms.value(mu, sigma, eps, w)
            total = value if total is None else total + value
            kept.append((mu.detach(), rho.detach(), sigma, eps, w.detach(), saved))
            samples.append(sigma * eps if centred else w)
        ctx.kept = kept
        return (*samples, total)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        ctx.state.used = True
        g_kl = grads[-1]
        out: list[Tensor | None] = [None, None, None]
        for i, (mu, rho, sigma, eps, w, saved) in enumerate(ctx.kept):
            g_out = grads[i]
            w_factor = mu_factor = d_sigma = None
            if g_kl is not None:
                w_factor, mu_factor, d_sigma = ctx.terms.grads(saved, mu, sigma, eps, w, g_kl)
            # the gradient that reaches w = μ + σε, and the one that reaches σε
            d_w = _scaled_plus(None if ctx.centred else g_out, w, w_factor)
            g_mu = _scaled_plus(d_w, mu, mu_factor)
            d_noise = d_w
            if ctx.centred and g_out is not None:
                d_noise = g_out if d_w is None else d_w + g_out
            if d_noise is not None:
                d_sigma = (
                    torch.mul(d_noise, eps) if d_sigma is None else d_sigma.addcmul_(d_noise, eps)
                )
            g_rho = None if d_sigma is None else d_sigma.mul_(torch.sigmoid(rho))
            out += [g_mu, g_rho]
        return tuple(
            g if needed else None for g, needed in zip(out, ctx.needs_input_grad, strict=True)
        )


def sample_weights(
    terms: KLTerms, state: DrawState, *params: Tensor, centred: bool = False
) -> tuple[Tensor, ...]:
    """(w_1, …, w_k, Σ KL) for (μ_1, ρ_1, …): one weight draw per pair and its KL.

    `centred`: return the noise σ_i ε_i instead of w_i (flipout perturbs the mean's
    output with it); the KL is the same, at w_i = μ_i + σ_i ε_i. `state.used` turns True
    once a backward pass has gone through the draw. The draws are made in the order of
    the pairs (the same normal numbers as drawing each weight with `torch.randn_like` in
    turn).
    """
    return _WeightSample.apply(terms, state, centred, *params)


def sample_weights_plain(
    terms: KLTerms, *params: Tensor, centred: bool = False
) -> tuple[Tensor, ...]:
    """What `sample_weights` computes, in plain autograd operations (the reference)."""
    samples, total = [], None
    for mu, rho in zip(params[0::2], params[1::2], strict=True):
        sigma = F.softplus(rho)
        eps = torch.randn_like(sigma)
        w = mu + sigma * eps
        value = terms.plain(mu, sigma, eps, w)
        total = value if total is None else total + value
        samples.append(sigma * eps if centred else w)
    return (*samples, total)
