"""The shared weight draw's autograd node (`nn.weight_sample`) against plain autograd."""

import math

import pytest
import torch

from bayesprune.nn import BayesConv2d, BayesLinear, GaussianPrior, ScaleMixturePrior, weight_sample
from bayesprune.nn.gaussian import _random_signs
from bayesprune.nn.weight_sample import (
    DrawState,
    GaussianTerms,
    MixtureBoundTerms,
    MixtureSampledTerms,
    sample_weights,
    sample_weights_plain,
)

TERMS = {
    "gaussian": GaussianTerms(0.7),
    "mixture_mc": MixtureSampledTerms(0.3, 1.0, 0.05),
    "mixture_bound": MixtureBoundTerms(0.3, 1.0, 0.05),
    # the second component wider than the first: z is unbounded, log σ and softplus apart
    "mixture_mc_wide_second": MixtureSampledTerms(0.3, 0.05, 1.0),
    "mixture_bound_wide_second": MixtureBoundTerms(0.3, 0.05, 1.0),
}


def _params(seed=0):
    """(μ_w, ρ_w, μ_b, ρ_b) in float64, small enough that both mixture components matter."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(4, 3), (4, 3), (4,), (4,)]
    out = []
    for i, shape in enumerate(shapes):
        t = torch.randn(shape, dtype=torch.float64, generator=g)
        t = t * 0.5 - 2.5 if i % 2 else t * 0.1  # ρ around -2.5 (σ ≈ 0.08), μ around 0
        out.append(t.requires_grad_())
    return out


def _seeded(fn, seed=1):
    """fn with the same normal draws at every call (gradcheck calls it many times)."""

    def call(*args):
        torch.manual_seed(seed)
        return fn(*args)

    return call


@pytest.mark.parametrize("number", [True, False], ids=["cpu-number", "tensor"])
@pytest.mark.parametrize("centred", [False, True])
@pytest.mark.parametrize("name", list(TERMS))
def test_node_matches_plain_autograd_in_value_and_gradients(name, centred, number, monkeypatch):
    """Also with the KL's upstream gradient kept a tensor, as on devices other than the CPU."""
    if not number:
        monkeypatch.setattr(weight_sample, "_number", lambda g: g)
    terms = TERMS[name]
    params = _params()
    weights = [torch.randn(4, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)]

    def loss(outputs):
        w, b, kl = outputs
        return (w * weights[0]).sum() + (b * weights[1]).sum() + 0.3 * kl, kl

    node = _seeded(lambda *p: sample_weights(terms, DrawState(), *p, centred=centred))
    plain = _seeded(lambda *p: sample_weights_plain(terms, *p, centred=centred))
    node_loss, node_kl = loss(node(*params))
    plain_loss, plain_kl = loss(plain(*params))
    assert torch.allclose(node_kl, plain_kl)
    node_grads = torch.autograd.grad(node_loss, params)
    plain_grads = torch.autograd.grad(plain_loss, params)
    for n, p in zip(node_grads, plain_grads, strict=True):
        assert torch.allclose(n, p)


@pytest.mark.parametrize("centred", [False, True])
@pytest.mark.parametrize("name", list(TERMS))
def test_node_passes_gradcheck_in_float64(name, centred):
    terms = TERMS[name]
    fn = _seeded(lambda *p: sample_weights(terms, DrawState(), *p, centred=centred))
    assert torch.autograd.gradcheck(fn, tuple(_params()))


@pytest.mark.parametrize("centred", [False, True])
@pytest.mark.parametrize("name", list(TERMS))
def test_data_term_and_kl_backpropagated_apart_sum_to_the_joint_gradient(name, centred):
    """The graph of the data term freed first, the KL's after: the same gradients."""
    terms = TERMS[name]
    params = _params()
    torch.manual_seed(2)
    w, b, kl = sample_weights(terms, state := DrawState(), *params, centred=centred)
    joint = torch.autograd.grad(w.sum() + b.square().sum() + kl, params, retain_graph=True)
    assert state.used
    first = torch.autograd.grad(w.sum() + b.square().sum(), params, allow_unused=True)
    second = torch.autograd.grad(kl, params)
    for j, f, s in zip(joint, first, second, strict=True):
        assert torch.allclose(j, (0 if f is None else f) + s)


@pytest.mark.parametrize(
    "terms", [MixtureSampledTerms(0.5, 1.0, 1e-3), MixtureSampledTerms(0.5, 1e-3, 1.0)]
)
def test_mixture_kl_of_far_out_weights_is_finite_and_exact(terms):
    """Weights far into the wide component (z at its floor, or beyond e^z's range)."""
    mu = torch.tensor([0.0, 1e-4, 2.0, 30.0], dtype=torch.float64)
    rho = torch.full((4,), -5.0, dtype=torch.float64)
    torch.manual_seed(0)
    *_, kl = sample_weights(terms, DrawState(), mu, rho)
    torch.manual_seed(0)
    *_, ref = sample_weights_plain(terms, mu, rho)
    assert torch.isfinite(kl) and kl.item() == pytest.approx(ref.item(), rel=1e-9)


def test_mu_without_gradient_gets_none():
    mu, rho = torch.randn(3, 2), torch.full((3, 2), -3.0, requires_grad=True)
    w, kl = sample_weights(GaussianTerms(1.0), DrawState(), mu, rho)
    (w.sum() + kl).backward()
    assert mu.grad is None and rho.grad is not None


def test_sampled_mixture_kl_is_unbiased():
    """The node's Monte-Carlo KL averages to the KL computed by brute force."""
    prior = ScaleMixturePrior(0.5, 1.0, 0.05)
    mu = torch.tensor([0.0, 0.02, 0.3], dtype=torch.float64)
    rho = torch.tensor([-3.0, -4.0, -2.0], dtype=torch.float64)
    torch.manual_seed(0)
    draws = torch.stack(
        [sample_weights(prior.sample_terms(), DrawState(), mu, rho)[-1] for _ in range(20000)]
    )
    sigma = torch.nn.functional.softplus(rho)
    w = mu + sigma * torch.randn(200000, 3, dtype=torch.float64)
    log_q = torch.distributions.Normal(mu, sigma).log_prob(w)
    brute = (log_q - prior.log_prob(w)).sum(-1).mean()
    assert abs(draws.mean() - brute) < 4 * draws.std() / math.sqrt(len(draws)) + 0.01


@pytest.mark.parametrize("estimator", ["shared", "flipout"])
@pytest.mark.parametrize(
    "prior",
    [
        GaussianPrior(0.5),
        ScaleMixturePrior(0.5, 1.0, 0.05, kl="mc"),
        ScaleMixturePrior(0.5, 1.0, 0.05, kl="bound"),
    ],
)
@pytest.mark.parametrize(
    "make",
    [
        lambda p, e: BayesLinear(4, 3, prior=p, estimator=e),
        lambda p, e: BayesConv2d(2, 3, 2, prior=p, estimator=e),
    ],
)
def test_layer_kl_is_the_draws_and_gradients_match_plain_autograd(prior, make, estimator):
    layer = make(prior, estimator).double()
    with torch.no_grad():
        for name, p in layer.named_parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (-2.5 if "rho" in name else 0.0))
    shape = (5, 4) if isinstance(layer, BayesLinear) else (5, 2, 4, 4)
    x = torch.randn(*shape, dtype=torch.float64)
    torch.manual_seed(4)
    loss = layer(x).square().sum() + layer.kl()
    grads = torch.autograd.grad(loss, list(layer.parameters()))
    torch.manual_seed(4)  # the reference: the same draws in the same order
    params = [layer.weight_mu, layer.weight_rho, layer.bias_mu, layer.bias_rho]
    w, b, kl = sample_weights_plain(prior.sample_terms(), *params, centred=estimator == "flipout")
    if estimator == "shared":
        out = layer._linear_map(x, w, b)
    else:
        mean = layer._linear_map(x, layer.weight_mu, layer.bias_mu)
        s_in = _random_signs(layer._unit_shape(x), x)
        s_out = _random_signs(layer._unit_shape(mean), mean)
        out = mean + s_out * layer._linear_map(x * s_in, w, b)
    ref = out.square().sum() + kl
    ref_grads = torch.autograd.grad(ref, params)
    assert torch.allclose(loss, ref)
    assert all(torch.allclose(g, r) for g, r in zip(grads, ref_grads, strict=True))


def test_a_draw_backpropagated_through_is_not_reused_by_kl():
    layer = BayesLinear(4, 3, prior=ScaleMixturePrior(0.5, 1.0, 0.05))
    layer(torch.randn(2, 4)).sum().backward()  # a step without KL
    assert layer._drawn_kl() is None  # the KL draws afresh
    layer(torch.randn(2, 4))
    with torch.no_grad():
        layer.weight_mu.add_(1.0)  # the parameters changed since the draw
    assert layer._drawn_kl() is None
    layer(torch.randn(2, 4))
    assert layer._drawn_kl() is not None
    assert layer._drawn_kl() is None  # taken once


def test_masked_layers_and_no_grad_keep_the_plain_path():
    layer = BayesLinear(4, 3)
    layer.set_weight_mask(torch.ones(3, 4))
    layer(torch.randn(2, 4))
    assert layer._drawn_kl() is None
    layer.set_weight_mask(None)
    with torch.no_grad():
        layer(torch.randn(2, 4))
    assert layer._drawn_kl() is None
