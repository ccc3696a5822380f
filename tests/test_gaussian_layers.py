"""Mean-field Gaussian layers: KL, local reparameterisation, conversion, rebuild."""

import math

import pytest
import torch
from torch import nn

import bayesprune as bp
from bayesprune.nn import (
    BayesConv2d,
    BayesLinear,
    GaussianPrior,
    ScaleMixturePrior,
    make_prior,
    use_posterior_mean,
)


def _randomise(layer, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if "rho" in name:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5 - 1.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)


@pytest.mark.parametrize("scale", [0.1, 1.0, 2.5])
def test_gaussian_kl_is_nonnegative_and_matches_monte_carlo(scale):
    layer = BayesLinear(3, 2, prior_scale=scale).double()
    _randomise(layer)
    closed = layer.kl()
    assert closed >= 0
    mu = torch.cat([layer.weight_mu.flatten(), layer.bias_mu])
    sigma = torch.cat([layer.weight_sigma.flatten(), layer.bias_sigma])
    q = torch.distributions.Normal(mu, sigma)
    p = torch.distributions.Normal(torch.zeros_like(mu), scale)
    w = q.sample((200_000,))
    mc = (q.log_prob(w) - p.log_prob(w)).sum(-1).mean()
    assert closed.item() == pytest.approx(mc.item(), rel=0.02, abs=0.02)


def test_kl_is_zero_when_posterior_equals_prior():
    layer = BayesLinear(4, 3, prior_scale=0.7).double()
    with torch.no_grad():
        layer.weight_mu.zero_()
        layer.bias_mu.zero_()
        rho = math.log(math.expm1(0.7))
        layer.weight_rho.fill_(rho)
        layer.bias_rho.fill_(rho)
    assert layer.kl().item() == pytest.approx(0.0, abs=1e-10)


def test_scale_mixture_kl_estimate_is_unbiased():
    prior = ScaleMixturePrior(0.5, 1.0, 0.05, kl="mc")
    mu = torch.tensor([0.3, -0.2, 0.0], dtype=torch.float64)
    sigma = torch.tensor([0.1, 0.2, 0.05], dtype=torch.float64)
    torch.manual_seed(1)
    estimates = torch.stack([prior.kl(mu, sigma) for _ in range(20_000)])
    q = torch.distributions.Normal(mu, sigma)
    w = q.sample((200_000,))
    reference = (q.log_prob(w) - prior.log_prob(w)).sum(-1).mean()
    assert estimates.mean().item() == pytest.approx(reference.item(), rel=0.03, abs=0.03)


def test_make_prior_rejects_unknown_kind():
    with pytest.raises(ValueError, match="valid kinds"):
        make_prior({"kind": "laplace"})
    with pytest.raises(ValueError, match="> 0"):
        GaussianPrior(0.0)


def _moments_by_sampling_weights(layer, x, n=100_000):
    """Pre-activation mean and variance when whole weight tensors are sampled."""
    w = layer.weight_mu + layer.weight_sigma * torch.randn(n, *layer.weight_mu.shape, dtype=x.dtype)
    b = layer.bias_mu + layer.bias_sigma * torch.randn(n, *layer.bias_mu.shape, dtype=x.dtype)
    out = torch.stack([layer._linear_map(x, w[i], b[i]) for i in range(n)])
    return out.mean(0), out.var(0)


@pytest.mark.parametrize(
    "layer, shape",
    [(BayesLinear(4, 3), (5, 4)), (BayesConv2d(2, 3, 3, padding=1), (2, 2, 4, 4))],
    ids=["linear", "conv"],
)
def test_local_reparameterisation_matches_sampled_weights(layer, shape):
    layer = layer.double()
    _randomise(layer, seed=3)
    x = torch.randn(*shape, dtype=torch.float64)
    n = 4000 if isinstance(layer, BayesConv2d) else 20_000
    ref_mean, ref_var = _moments_by_sampling_weights(layer, x, n)
    with torch.no_grad():
        lrt = torch.stack([layer(x) for _ in range(n)])
    # two independent Monte-Carlo estimates: means agree to ~5 standard errors
    se = (ref_var / n).sqrt() * 2**0.5
    assert ((lrt.mean(0) - ref_mean).abs() <= 5 * se + 1e-9).all()
    assert torch.allclose(lrt.var(0), ref_var, rtol=0.15, atol=1e-6)


def test_posterior_mean_mode_is_deterministic_and_restores_sampling():
    layer = BayesLinear(3, 2)
    x = torch.randn(4, 3)
    assert not torch.equal(layer(x), layer(x))
    with use_posterior_mean(layer):
        assert torch.equal(layer(x), layer(x))
        assert torch.allclose(layer(x), nn.functional.linear(x, layer.weight_mu, layer.bias_mu))
    assert layer.sample


def test_convert_and_back_keeps_the_means():
    plain = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    bayes = bp.convert(plain, init_from_weights=True, prior_scale=0.5)
    assert isinstance(bayes[0], BayesConv2d) and isinstance(bayes[3], BayesLinear)
    assert isinstance(plain[0], nn.Conv2d), "convert must not modify its input by default"
    x = torch.randn(2, 1, 8, 8)
    with use_posterior_mean(bayes):
        assert torch.allclose(bayes(x), plain(x), atol=1e-6)
    back = bp.to_deterministic(bayes)
    assert not any(isinstance(m, bp.nn.VariationalLayer) for m in back.modules())
    assert torch.allclose(back(x), plain(x), atol=1e-6)
    assert bayes[3].prior.scale == 0.5


def test_convert_rejects_unknown_family():
    with pytest.raises(ValueError, match="valid families"):
        bp.convert(nn.Linear(2, 2), family="nonsense")


@pytest.mark.parametrize(
    "layer, shape", [(BayesLinear(5, 4), (3, 5)), (BayesConv2d(3, 4, 3), (2, 3, 6, 6))]
)
def test_select_keeps_the_chosen_units_exactly(layer, shape):
    _randomise(layer)
    x = torch.randn(*shape)
    out_idx, in_idx = torch.tensor([0, 2]), torch.tensor([1, 2, 4]) if shape[1] == 5 else None
    small = layer.select(out_idx, in_idx)
    if in_idx is not None:
        x_small = x[:, in_idx]
        with torch.no_grad():
            mask = torch.zeros_like(layer.weight_mu)
            mask[:, in_idx] = 1
        layer.set_weight_mask(mask)
    else:
        x_small = x
    with use_posterior_mean(layer), use_posterior_mean(small):
        assert torch.allclose(small(x_small), layer(x)[:, out_idx], atol=1e-6)
    assert small.weight_mu.shape[0] == 2


def test_masked_weights_leave_the_kl_and_the_output():
    layer = BayesLinear(3, 2).double()
    _randomise(layer)
    mask = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    full_kl = layer.kl()
    layer.set_weight_mask(mask)
    assert layer.kl() < full_kl
    x = torch.tensor([[0.0, 5.0, 0.0]], dtype=torch.float64)  # only pruned weights see it
    with torch.no_grad():
        outs = torch.stack([layer(x) for _ in range(200)])
    assert torch.allclose(outs.mean(0), layer.bias_mu.unsqueeze(0), atol=0.2)
    assert outs.var(0).max() < 1.0  # only the bias noise remains, not 5²·σ²
    with pytest.raises(ValueError, match="mask shape"):
        layer.set_weight_mask(torch.ones(2, 2))


def test_builders_have_the_published_shapes():
    lenet = bp.lenet_300_100()
    widths = [m.weight_mu.shape for m in lenet if isinstance(m, BayesLinear)]
    assert widths == [torch.Size([300, 784]), torch.Size([100, 300]), torch.Size([10, 100])]
    caffe = bp.lenet5_caffe(family="deterministic")
    assert caffe(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    n_weights = sum(m.weight.numel() for m in caffe if hasattr(m, "weight"))
    assert n_weights == 20 * 25 + 50 * 20 * 25 + 800 * 500 + 500 * 10
    with pytest.raises(ValueError, match="valid"):
        bp.mlp(3, [4], 2, activation="swish")
    with pytest.raises(ValueError, match="valid"):
        bp.build("resnet")
