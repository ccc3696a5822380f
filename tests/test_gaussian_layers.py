"""Mean-field Gaussian layers: KL, local reparameterisation, conversion, rebuild."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bayesprune as bp
from bayesprune.nn import (
    BayesConv2d,
    BayesLinear,
    GaussianPrior,
    GradientEstimator,
    MixtureKL,
    ScaleMixturePrior,
    evaluation_pass,
    make_prior,
    use_posterior_mean,
)
from bayesprune.nn.fused import sample_normal


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


def _mixture_kl_by_monte_carlo(prior, mu, sigma, n=400_000, seed=0):
    """Σ KL(N(μ, σ²) ‖ mixture) from n weight samples per element, and its standard error."""
    g = torch.Generator().manual_seed(seed)
    w = mu + sigma * torch.randn(n, *mu.shape, generator=g, dtype=mu.dtype)
    q = torch.distributions.Normal(mu, sigma)
    terms = (q.log_prob(w) - prior.log_prob(w)).sum(-1)
    return terms.mean().item(), (terms.std() / n**0.5).item()


@pytest.mark.parametrize(
    "mu, sigma",
    [
        ([0.3, -0.5, 0.05], [0.1, 0.01, 0.005]),  # slab weights
        ([0.0, 0.001, -0.002], [0.002, 0.001, 0.0005]),  # spike weights
        ([0.8, 0.0, -0.1], [0.02, 0.003, 0.03]),  # a trained net's mix
    ],
    ids=["slab", "spike", "mixed"],
)
def test_scale_mixture_kl_bound_agrees_with_monte_carlo_where_one_component_dominates(mu, sigma):
    prior = ScaleMixturePrior(0.5, 1.0, math.exp(-6), kl="bound")
    mu = torch.tensor(mu, dtype=torch.float64)
    sigma = torch.tensor(sigma, dtype=torch.float64)
    bound = prior.kl(mu, sigma).item()
    mc, se = _mixture_kl_by_monte_carlo(prior, mu, sigma)
    assert bound == pytest.approx(mc, abs=5 * se + 0.01)


def test_scale_mixture_kl_bound_is_an_upper_bound_and_exact_for_one_component():
    prior = ScaleMixturePrior(0.5, 1.0, math.exp(-6), kl="bound")
    # posteriors that straddle the switch from spike to slab (|w| ~ 0.01): the bound is loose
    mu = torch.tensor([0.01, 0.02, 0.008, -0.015], dtype=torch.float64)
    sigma = torch.tensor([0.003, 0.02, 0.002, 0.01], dtype=torch.float64)
    mc, se = _mixture_kl_by_monte_carlo(prior, mu, sigma)
    assert prior.kl(mu, sigma).item() >= mc - 5 * se
    # two equal components are one Gaussian: the bound is its closed-form KL
    same = ScaleMixturePrior(0.3, 0.7, 0.7, kl="bound")
    torch.manual_seed(0)
    mu, sigma = torch.randn(50, dtype=torch.float64), torch.rand(50, dtype=torch.float64) + 0.1
    assert same.kl(mu, sigma).item() == pytest.approx(GaussianPrior(0.7).kl(mu, sigma).item())


@pytest.mark.parametrize(
    "prior",
    [
        GaussianPrior(0.7),
        ScaleMixturePrior(0.3, 1.0, math.exp(-6), kl="bound"),
        ScaleMixturePrior(0.5, 0.1, 2.0, kl="bound"),
    ],
    ids=["gaussian", "mixture-bound", "mixture-bound-wide-spike"],
)
def test_closed_form_kls_have_exact_gradients(prior):
    torch.manual_seed(0)
    mu = (torch.randn(4, 3, dtype=torch.float64) * 0.02).requires_grad_()
    sigma = (torch.rand(4, 3, dtype=torch.float64) * 0.01 + 1e-3).requires_grad_()
    assert torch.autograd.gradcheck(prior.kl, (mu, sigma))


def test_mixture_kl_option_round_trips_and_rejects_unknown_values():
    layer = BayesLinear(3, 2, prior={"kind": "scale_mixture", "kl": "bound"})
    assert layer.config()["prior"]["kl"] == "bound"
    assert BayesLinear.from_config(layer.config()).prior.kl_estimator == MixtureKL.BOUND
    assert ScaleMixturePrior().kl_estimator == MixtureKL.MC  # the default
    with pytest.raises(ValueError, match="valid: mc, bound"):
        make_prior({"kind": "scale_mixture", "kl": "exact"})


def _moments_by_sampling_weights(layer, x, n=100_000):
    """Pre-activation mean and variance when whole weight tensors are sampled."""
    w = layer.weight_mu + layer.weight_sigma * torch.randn(n, *layer.weight_mu.shape, dtype=x.dtype)
    b = layer.bias_mu + layer.bias_sigma * torch.randn(n, *layer.bias_mu.shape, dtype=x.dtype)
    out = torch.stack([layer._linear_map(x, w[i], b[i]) for i in range(n)])
    return out.mean(0), out.var(0)


@pytest.mark.parametrize("estimator", GradientEstimator.values())
@pytest.mark.parametrize(
    "make, shape",
    [(lambda e: BayesLinear(4, 3, estimator=e), (5, 4)),
     (lambda e: BayesConv2d(2, 3, 3, padding=1, estimator=e), (2, 2, 4, 4))],
    ids=["linear", "conv"],
)  # fmt: skip
def test_every_estimator_matches_the_moments_of_sampled_weights(make, shape, estimator):
    """Each output's mean and variance are those of op(x, w) with w ~ q, for all estimators."""
    layer = make(estimator).double()
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


def test_evaluation_pass_reads_the_mean_network_and_puts_everything_back_on_error():
    net = nn.Sequential(BayesLinear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), BayesLinear(4, 2))
    net.train()
    seen = []
    hooks = [net[0].register_forward_hook(lambda *a: seen.append(torch.is_grad_enabled()))]
    x = torch.randn(5, 3)
    with evaluation_pass(net, hooks):
        assert not net.training and not net[2].training
        assert torch.equal(net(x), net(x))  # no weight draws, no dropout, running statistics
    assert net.training and net[0].sample and seen == [False, False]
    net(x)
    assert len(seen) == 2, "the pass removes its hooks"
    hooks = [net[0].register_forward_hook(lambda *a: seen.append(1))]
    with pytest.raises(RuntimeError), evaluation_pass(net, hooks):
        net(torch.randn(5, 7))  # the wrong width: the pass fails
    assert net.training and net[3].sample
    net(x)
    assert len(seen) == 2, "hooks go on an error too"


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
        bp.build("resnet50")


@pytest.mark.parametrize("estimator", GradientEstimator.values())
def test_every_estimator_is_unbiased_for_the_posterior_mean_output(estimator):
    layer = BayesConv2d(2, 3, 3, padding=1, estimator=estimator).double()
    _randomise(layer, seed=5)
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    n = 6000
    with torch.no_grad():
        outs = torch.stack([layer(x) for _ in range(n)])
        with use_posterior_mean(layer):
            mean_out = layer(x)
    se = outs.std(0) / n**0.5
    assert ((outs.mean(0) - mean_out).abs() <= 5 * se + 1e-9).all()


@pytest.mark.parametrize("estimator", GradientEstimator.values())
@pytest.mark.parametrize("cls", [BayesLinear, BayesConv2d])
def test_every_estimator_trains_and_round_trips(cls, estimator):
    layer = (
        cls(3, 4, 2, estimator=estimator) if cls is BayesConv2d else cls(3, 4, estimator=estimator)
    )
    x = torch.randn(5, 3, 6, 6) if cls is BayesConv2d else torch.randn(5, 3)
    (layer(x).square().mean() + layer.kl() / 100).backward()
    for p in layer.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    rebuilt = cls.from_config(layer.config())
    assert rebuilt.estimator == estimator and rebuilt.config() == layer.config()
    assert f"estimator={estimator}" in repr(layer)


def test_layer_configs_without_an_estimator_keep_the_local_reparameterisation():
    """Model files written before the option trained with the local reparameterisation."""
    config = BayesLinear(3, 2).config()
    del config["estimator"]
    assert BayesLinear.from_config(config).estimator == "lrt"
    assert BayesLinear(3, 2).estimator == "shared"  # a new layer takes the default


def test_estimator_is_a_family_option_and_rejects_unknown_values():
    model = bp.lenet_300_100(estimator="flipout")
    assert {m.estimator for m in model if isinstance(m, BayesLinear)} == {"flipout"}
    with pytest.raises(ValueError, match="valid: shared, lrt, flipout"):
        BayesLinear(2, 2, estimator="reinforce")


def test_lrt_noise_is_a_point_mass_with_no_gradient_where_the_variance_is_zero():
    mean = torch.randn(4, 3, requires_grad=True)
    var = torch.rand(4, 3)
    var[0] = 0.0
    var.requires_grad_()
    out = sample_normal(mean, var)
    assert torch.equal(out[0], mean[0])
    out.sum().backward()
    assert torch.equal(var.grad[0], torch.zeros(3)) and (var.grad[1:] != 0).all()
    assert torch.equal(mean.grad, torch.ones(4, 3))


def _reference_gradients(layer, x, seed):
    """Gradients of output + KL computed by plain autograd (no shared sigma, no custom nodes)."""
    torch.manual_seed(seed)
    sigma_w, sigma_b = F.softplus(layer.weight_rho), F.softplus(layer.bias_rho)
    if layer.estimator == "lrt":
        mean = F.linear(x, layer.weight_mu, layer.bias_mu)
        var = F.linear(x * x, sigma_w.square(), sigma_b.square())
        out = mean + var.sqrt() * torch.randn_like(mean)
    else:  # shared: the weights' draw, then the bias's
        eps_w, eps_b = torch.randn_like(sigma_w), torch.randn_like(sigma_b)
        out = F.linear(x, layer.weight_mu + sigma_w * eps_w, layer.bias_mu + sigma_b * eps_b)
    prior = layer.prior
    kl = sum(
        (torch.distributions.kl_divergence(
            torch.distributions.Normal(m, s),
            torch.distributions.Normal(torch.zeros_like(m), prior.scale))).sum()
        for m, s in ((layer.weight_mu, sigma_w), (layer.bias_mu, sigma_b))
    )  # fmt: skip
    grads = torch.autograd.grad(out.square().sum() + kl, list(layer.parameters()))
    return (out.square().sum() + kl).detach(), grads


@pytest.mark.parametrize("estimator", ["lrt", "shared"])
def test_forward_and_kl_share_sigma_with_exact_gradients_in_any_order(estimator):
    layer = BayesLinear(4, 3, prior_scale=0.5, estimator=estimator).double()
    _randomise(layer)
    x = torch.randn(6, 4, dtype=torch.float64)
    loss_ref, grads_ref = _reference_gradients(layer, x, seed=7)
    torch.manual_seed(7)
    loss = layer(x).square().sum() + layer.kl()  # the kl takes the forward's sigma
    grads = torch.autograd.grad(loss, list(layer.parameters()))
    assert torch.allclose(loss, loss_ref)
    assert all(torch.allclose(g, r) for g, r in zip(grads, grads_ref, strict=True))
    # the data term's graph freed first, the KL after: still exact
    torch.manual_seed(7)
    layer.zero_grad()
    layer(x).square().sum().backward()
    layer.kl().backward()
    assert all(
        torch.allclose(p.grad, r) for p, r in zip(layer.parameters(), grads_ref, strict=True)
    )


def test_kl_after_an_optimizer_step_reads_the_new_sigma():
    """A fused step does not advance the parameters' version: the backward ends the sharing."""
    layer = BayesLinear(4, 3)
    opt = torch.optim.Adam(layer.parameters(), lr=0.1, fused=True)
    x = torch.randn(6, 4)

    def fresh_kl():
        prior = GaussianPrior(1.0)
        weights = prior.kl(layer.weight_mu, layer.weight_sigma)
        return weights + prior.kl(layer.bias_mu, layer.bias_sigma)

    (layer(x).square().sum() + layer.kl()).backward()
    opt.step()
    assert torch.allclose(layer.kl(), fresh_kl())
    layer(x).square().sum().backward()  # a step without KL: the forward's sigma is left
    opt.step()
    assert torch.allclose(layer.kl(), fresh_kl())


def test_layers_copy_and_pickle_after_a_training_forward(tmp_path):
    layer = BayesConv2d(2, 3, 3)
    layer(torch.randn(1, 2, 5, 5))  # leaves sigma (with autograd history) for the KL
    clone = copy.deepcopy(layer)
    torch.save(layer, tmp_path / "layer.pt")
    assert torch.allclose(clone.kl(), layer.kl())
    assert torch.allclose(torch.load(tmp_path / "layer.pt", weights_only=False).kl(), layer.kl())


def test_fit_uses_the_fused_optimizer_where_it_can():
    from bayesprune.optim import make_optimizer

    params = [nn.Parameter(torch.randn(3)), nn.Parameter(torch.randn(2, dtype=torch.float64))]
    assert make_optimizer("adam", [{"params": params, "lr": 1e-3}], 1e-3, 0.0).defaults["fused"]
    huge = make_optimizer("sgd", [{"params": params, "lr": 1e300}], 1e300, 0.0)
    assert not huge.defaults["fused"]  # float32 cannot hold the rate: the loop reports it


@pytest.mark.parametrize("estimator", ["shared", "flipout"])
def test_a_monte_carlo_kl_reads_the_forward_passs_own_weight_sample(estimator):
    """Bayes by Backprop: with weight samples the sampled KL needs no draw of its own."""
    prior = {"kind": "scale_mixture", "pi": 0.5, "scale1": 1.0, "scale2": 0.05, "kl": "mc"}
    layer = BayesLinear(4, 3, prior=prior, estimator=estimator).double()
    _randomise(layer)
    torch.manual_seed(3)
    layer(torch.randn(5, 4, dtype=torch.float64))
    kl = layer.kl()
    torch.manual_seed(3)
    torch.randn(5, 4, dtype=torch.float64)  # the input
    eps_w = torch.randn(3, 4, dtype=torch.float64)  # the forward pass's draws, in its order
    eps_b = torch.randn(3, dtype=torch.float64)
    expected = 0.0
    for mu, rho, eps in (
        (layer.weight_mu, layer.weight_rho, eps_w),
        (layer.bias_mu, layer.bias_rho, eps_b),
    ):
        sigma = F.softplus(rho)
        w = mu + sigma * eps
        log_q = torch.distributions.Normal(mu, sigma).log_prob(w)
        expected = expected + (log_q - layer.prior.log_prob(w)).sum()
    assert torch.allclose(kl, expected)
    assert not torch.allclose(layer.kl(), expected)  # taken once: a later KL draws afresh
