"""Hand-written autograd nodes of the training step, and their plain-autograd twins.

A Bayesian layer's step spends most of its element-wise work on tensors the size of
its weights: σ = softplus(ρ) and σ², the KL and their gradients. Written as single
autograd nodes with hand-written backward passes they take a few passes and
allocations each instead of a dozen; on a machine where a fresh allocation costs page
faults that is most of the gain. Each function here picks the node in eager mode and
the same formula in plain autograd under `torch.func` transforms (`vmap`, `grad`),
which these nodes do not support; the tests check the two against each other.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

VAR_FLOOR = 1e-16  # bounds the gradient 1/(2·sd) of a variance that is tiny but not 0


def eager() -> bool:
    """Whether the hand-written nodes apply (no torch.func transform is active)."""
    return not torch._C._are_functorch_transforms_active()


class _SoftplusScales(torch.autograd.Function):
    """(σ, σ²) = (softplus(ρ), softplus(ρ)²) as one autograd node.

    The forward pass of a step reads σ² (local reparameterisation) or σ (weight
    samples) and the KL reads σ; with one node, ρ gets one gradient,
    (g_σ + 2σ g_σ²) · dσ/dρ with dσ/dρ = sigmoid(ρ) = 1 − e^−σ, computed in one
    allocation. The node keeps its tensors as attributes, not saved tensors, so it can
    be backpropagated through again after the graph of a first loss was freed: the
    forward pass and the KL of a step share it (`_GaussianLayer._scales`) whichever
    order the user calls them in.
    """

    @staticmethod
    def forward(ctx: Any, rho: Tensor) -> tuple[Tensor, Tensor]:
        ctx.set_materialize_grads(False)
        sigma = F.softplus(rho)
        # aliases without history (no reference cycle through the outputs)
        ctx.sigma = sigma.detach()
        ctx.slope = torch.neg(sigma).expm1_().neg_()  # 1 − e^−σ
        return sigma, sigma.square()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g_sigma: Tensor | None, g_var: Tensor | None) -> Tensor | None:
        if g_var is not None:
            grad = torch.mul(g_var, ctx.sigma).mul_(2)
            if g_sigma is not None:
                grad.add_(g_sigma)
        elif g_sigma is not None:
            grad = g_sigma.clone()
        else:
            return None
        return grad.mul_(ctx.slope)


def softplus_scales(rho: Tensor) -> tuple[Tensor, Tensor]:
    """(softplus(ρ), softplus(ρ)²), differentiable, as one node where possible."""
    if eager() and torch.is_grad_enabled() and rho.requires_grad:
        return _SoftplusScales.apply(rho)
    sigma = F.softplus(rho)
    return sigma, sigma.square()


class _SampleNormal(torch.autograd.Function):
    """mean + √var · ε in one node; a variance of exactly 0 is a point mass.

    d out / d var = ε √var / (2 max(var, VAR_FLOOR)): ε / (2 √var) where var ≥ the
    floor, bounded for a tiny variance, and exactly 0 where var = 0 (every contributing
    weight gated or masked off), where the output is the mean exactly. The variances
    are sums of non-negative terms. Backward costs one allocation.
    """

    @staticmethod
    def forward(ctx: Any, mean: Tensor, var: Tensor) -> Tensor:
        std = var.sqrt()
        eps = torch.randn_like(mean)
        out = torch.addcmul(mean, std, eps)
        if ctx.needs_input_grad[1]:  # ε is not needed again: its memory holds d out / d var
            ctx.save_for_backward(eps.mul_(std).div_(var.clamp_min(VAR_FLOOR)).mul_(0.5))
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor | None]:
        if not ctx.needs_input_grad[1]:
            return grad, None
        (slope,) = ctx.saved_tensors
        return grad, grad * slope


def unit_noise(like: Tensor, channel_dim: int) -> Tensor:
    """N(0, 1) noise, one value per example and unit of `like`, broadcast over the dims
    after `channel_dim` (a convolution's positions share their channel's draw)."""
    ch = channel_dim % like.ndim
    shape = (*like.shape[: ch + 1], *(1,) * (like.ndim - ch - 1))
    return torch.randn(shape, dtype=like.dtype, device=like.device)


def sample_normal(mean: Tensor, var: Tensor) -> Tensor:
    """A draw of N(mean, var) element-wise, differentiable in both (see `_SampleNormal`)."""
    if eager():
        return _SampleNormal.apply(mean, var)
    std = torch.where(var > 0, var.clamp_min(VAR_FLOOR).sqrt(), torch.zeros_like(var))
    return mean + std * torch.randn_like(mean)


class _GaussianKL(torch.autograd.Function):
    """Σ KL(N(μ, σ²) ‖ N(0, s²)) with a hand-written backward: two allocations, not ten.

    d/dμ = μ / s², d/dσ = σ / s² − 1 / σ. The value is dot products and one log.
    """

    @staticmethod
    def forward(ctx: Any, mu: Tensor, sigma: Tensor, scale: float) -> Tensor:
        ctx.save_for_backward(mu, sigma)
        ctx.inv_var = 1.0 / scale**2
        flat_mu, flat_sigma = mu.reshape(-1), sigma.reshape(-1)
        squares = torch.dot(flat_sigma, flat_sigma) + torch.dot(flat_mu, flat_mu)
        return (
            squares * (0.5 * ctx.inv_var)
            - torch.log(flat_sigma).sum()
            + mu.numel() * (math.log(scale) - 0.5)
        )

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        mu, sigma = ctx.saved_tensors
        scaled = grad * ctx.inv_var
        g_mu = mu * scaled if ctx.needs_input_grad[0] else None
        g_sigma = None
        if ctx.needs_input_grad[1]:
            g_sigma = torch.reciprocal(sigma).mul_(-grad).addcmul_(sigma, scaled)
        return g_mu, g_sigma, None


def gaussian_kl(mu: Tensor, sigma: Tensor, scale: float) -> Tensor:
    """Σ KL(N(μ, σ²) ‖ N(0, scale²)) over all elements."""
    if eager():
        return _GaussianKL.apply(mu, sigma, scale)
    return (
        (sigma.square() + mu.square()).sum() / (2 * scale**2)
        - torch.log(sigma).sum()
        + mu.numel() * (math.log(scale) - 0.5)
    )


def _mixture_constants(pi: float, scale1: float, scale2: float) -> tuple[float, ...]:
    """c_j = log π_j − log s_j and k_j = 1 / (2 s_j²) of the mixture bound."""
    c1 = math.log(pi) - math.log(scale1)
    c2 = math.log1p(-pi) - math.log(scale2)
    return c1, c2, 0.5 / scale1**2, 0.5 / scale2**2


class _MixtureBoundKL(torch.autograd.Function):
    """Σ of the scale-mixture KL bound (see `ScaleMixturePrior`), hand-written backward.

    Per element, with t = μ² + σ² and z = (k1 − k2) t + c2 − c1:
    value = k1 t − log σ − softplus(z) − ½ − c1, d value / d t = k1 − (k1 − k2) sigmoid(z),
    d/dμ = 2μ d/dt, d/dσ = 2σ d/dt − 1/σ.
    """

    @staticmethod
    def forward(
        ctx: Any, mu: Tensor, sigma: Tensor, pi: float, scale1: float, scale2: float
    ) -> Tensor:
        c1, c2, k1, k2 = _mixture_constants(pi, scale1, scale2)
        t = torch.mul(mu, mu).addcmul_(sigma, sigma)  # E_q[w²]
        t_sum = t.sum()
        z = t.mul_(k1 - k2).add_(c2 - c1)  # t is not needed again: reuse its memory
        value = k1 * t_sum - torch.log(sigma).sum() - F.softplus(z).sum() - mu.numel() * (0.5 + c1)
        ctx.save_for_backward(mu, sigma, z)
        ctx.k1, ctx.dk = k1, k1 - k2
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        mu, sigma, z = ctx.saved_tensors
        # 2·g·(k1 − (k1 − k2) sigmoid(z)), the shared factor of both gradients
        d_t = torch.sigmoid(z).mul_(-ctx.dk).add_(ctx.k1).mul_(2 * grad)
        g_mu = mu * d_t if ctx.needs_input_grad[0] else None
        g_sigma = None
        if ctx.needs_input_grad[1]:
            g_sigma = d_t.mul_(sigma).addcdiv_(grad.expand_as(sigma), sigma, value=-1.0)
        return g_mu, g_sigma, None, None, None


def mixture_kl_bound(mu: Tensor, sigma: Tensor, pi: float, scale1: float, scale2: float) -> Tensor:
    """Σ −log Σ_j π_j exp(−KL(N(μ, σ²) ‖ N(0, s_j²))) over all elements."""
    if eager():
        return _MixtureBoundKL.apply(mu, sigma, pi, scale1, scale2)
    c1, c2, k1, k2 = _mixture_constants(pi, scale1, scale2)
    t = mu.square() + sigma.square()
    elem = k1 * t - torch.log(sigma) - F.softplus((k1 - k2) * t + (c2 - c1)) - (0.5 + c1)
    return elem.sum()


class _MixtureSampledKL(torch.autograd.Function):
    """Σ of the one-sample Monte-Carlo KL to the scale mixture, hand-written backward.

    With w = μ + σε, u = w² and z = (k1 − k2) u + c2 − c1 (as in the bound, at the
    sample): log q(w) − log p(w) = −ε²/2 − log σ − c1 + k1 u − softplus(z);
    d/du = k1 − (k1 − k2) sigmoid(z), d/dμ = 2w d/du, d/dσ = 2wε d/du − 1/σ.
    """

    @staticmethod
    def forward(
        ctx: Any,
        mu: Tensor,
        sigma: Tensor,
        pi: float,
        scale1: float,
        scale2: float,
        noise: Tensor | None,
    ) -> Tensor:
        c1, c2, k1, k2 = _mixture_constants(pi, scale1, scale2)
        eps = torch.randn_like(mu) if noise is None else noise
        w = torch.addcmul(mu, sigma, eps)
        z = torch.mul(w, w)
        u_sum = z.sum()
        z.mul_(k1 - k2).add_(c2 - c1)
        flat_eps = eps.reshape(-1)
        value = (
            k1 * u_sum
            - 0.5 * torch.dot(flat_eps, flat_eps)
            - torch.log(sigma).sum()
            - F.softplus(z).sum()
            - mu.numel() * c1
        )
        ctx.save_for_backward(sigma, eps, w, z)
        ctx.k1, ctx.dk = k1, k1 - k2
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        sigma, eps, w, z = ctx.saved_tensors
        g_mu = torch.sigmoid(z).mul_(-ctx.dk).add_(ctx.k1).mul_(w).mul_(2 * grad)  # d/dw
        g_sigma = None
        if ctx.needs_input_grad[1]:
            g_sigma = torch.mul(g_mu, eps).addcdiv_(grad.expand_as(sigma), sigma, value=-1.0)
        return (g_mu if ctx.needs_input_grad[0] else None), g_sigma, None, None, None, None


def mixture_kl_sampled(
    mu: Tensor,
    sigma: Tensor,
    pi: float,
    scale1: float,
    scale2: float,
    noise: Tensor | None = None,
) -> Tensor:
    """Σ log q(w) − log p(w) at w = μ + σε per element (scale-mixture p); ε is `noise`
    (a forward pass's draw, as in Bayes by Backprop) or a fresh standard-normal draw."""
    if eager():
        return _MixtureSampledKL.apply(mu, sigma, pi, scale1, scale2, noise)
    c1, c2, k1, k2 = _mixture_constants(pi, scale1, scale2)
    eps = torch.randn_like(mu) if noise is None else noise
    u = (mu + sigma * eps).square()
    elem = k1 * u - 0.5 * eps.square() - torch.log(sigma) - F.softplus((k1 - k2) * u + (c2 - c1))
    return (elem - c1).sum()
