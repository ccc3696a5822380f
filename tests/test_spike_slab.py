"""Spike-and-slab layers: joint KL, gates, PIPs, rebuild, decision rules, feature selection."""

import math

import pytest
import torch
from torch import nn

import bayesprune as bp
from bayesprune.compress.pip_rules import (
    bayesian_fdr,
    expected_fdr,
    expected_size,
    median_probability_model,
    select_by_pip,
    target_size,
)
from bayesprune.models import mlp
from bayesprune.nn import (
    BayesLinear,
    SpikeSlabConv2d,
    SpikeSlabEdgeConv2d,
    SpikeSlabEdgeLinear,
    SpikeSlabLinear,
    use_posterior_mean,
)
from bayesprune.nn.spike_slab import default_prior_inclusion, straight_through_bernoulli

Normal, Bernoulli = torch.distributions.Normal, torch.distributions.Bernoulli
ST = "straight_through"  # the estimators that sample gates give exact zeros


def _randomise(layer, seed=0):
    """Slab means ~N(0, .5²), sigmas around 0.2, gate probabilities spread over (0, 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
            if "rho" in name:
                p.copy_(noise * 0.3 - 1.5)
            elif "logit" in name:
                p.copy_(noise * 1.5)
            else:
                p.copy_(noise * 0.5)
    return layer


def _mc_joint_kl(layer, n, mask=None):
    """Monte-Carlo KL of the joint (gates, weights) posterior from the prior.

    q(w | effective gate 0) is the prior, so those weights contribute log q − log p = 0.
    Returns the estimate and its standard error.
    """
    w_shape = layer.weight_mu.shape
    s = layer.slab_scale

    def gate_terms(logit, lam):
        q = Bernoulli(logits=logit)
        z = q.sample((n,))
        return z, (q.log_prob(z) - Bernoulli(probs=torch.tensor(lam, dtype=z.dtype)).log_prob(z))

    def slab_terms(mu, sigma):
        w = mu + sigma * torch.randn(n, *mu.shape, dtype=mu.dtype)
        return Normal(mu, sigma).log_prob(w) - Normal(0.0, s).log_prob(w)

    total = torch.zeros(n, dtype=torch.float64)
    if isinstance(layer, SpikeSlabEdgeLinear | SpikeSlabEdgeConv2d):
        e, t = gate_terms(layer.weight_gate_logit, layer.prior_inclusion)
        zb, tb = gate_terms(layer.bias_gate_logit, layer.prior_inclusion)
        total += t.flatten(1).sum(1) + tb.sum(1)
    else:
        e = torch.ones(n, *w_shape, dtype=torch.float64)
        zb = torch.ones(n, w_shape[0], dtype=torch.float64)
        if layer.gate_logit is not None:
            z, t = gate_terms(layer.gate_logit, layer.prior_inclusion)
            e = e * z.view(n, -1, *(1,) * (len(w_shape) - 1))
            zb, total = z, total + t.sum(1)
        if layer.input_gate_logit is not None:
            z, t = gate_terms(layer.input_gate_logit, layer.input_prior_inclusion)
            e = e * z.view(n, 1, -1, *(1,) * (len(w_shape) - 2))
            total += t.sum(1)
    slab = e * slab_terms(layer.weight_mu, layer.weight_sigma)
    if mask is not None:
        slab = slab * mask
    total += slab.flatten(1).sum(1) + (zb * slab_terms(layer.bias_mu, layer.bias_sigma)).sum(1)
    return total.mean(), total.std() / math.sqrt(n)


@pytest.mark.parametrize(
    "make",
    [
        lambda: SpikeSlabLinear(3, 2, prior_inclusion=0.2),
        lambda: SpikeSlabLinear(3, 2, input_gates=True, prior_inclusion=0.2, slab_scale=0.7),
        lambda: SpikeSlabLinear(3, 2, node_gates=False, input_gates=True),
        lambda: SpikeSlabConv2d(2, 2, 2, input_gates=True, slab_scale=1.3),
        lambda: SpikeSlabEdgeLinear(3, 2, prior_inclusion=0.1),
        lambda: SpikeSlabEdgeConv2d(2, 2, 2),
    ],
    ids=["node", "node+inputs", "inputs-only", "conv+inputs", "edge", "edge-conv"],
)
def test_kl_is_nonnegative_and_equals_monte_carlo_joint_kl(make):
    layer = _randomise(make().double(), seed=1)
    closed = layer.kl()
    assert closed.item() >= 0
    mc, se = _mc_joint_kl(layer, 100_000)
    assert abs(closed.item() - mc.item()) <= 5 * se.item() + 1e-3


def test_kl_with_a_weight_mask_counts_only_the_kept_weights():
    layer = _randomise(SpikeSlabLinear(3, 2, input_gates=True).double(), seed=2)
    mask = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    layer.set_weight_mask(mask)
    mc, se = _mc_joint_kl(layer, 100_000, mask=mask)
    assert abs(layer.kl().item() - mc.item()) <= 5 * se.item() + 1e-3


def test_kl_is_zero_when_the_posterior_is_the_prior():
    layer = SpikeSlabLinear(4, 3, input_gates=True, prior_inclusion=0.3, slab_scale=0.7).double()
    with torch.no_grad():
        layer.weight_mu.zero_()
        layer.bias_mu.zero_()
        layer.weight_rho.fill_(math.log(math.expm1(0.7)))
        layer.bias_rho.fill_(math.log(math.expm1(0.7)))
        layer.gate_logit.fill_(math.log(0.3 / 0.7))
        layer.input_gate_logit.fill_(
            math.log(layer.input_prior_inclusion / (1 - layer.input_prior_inclusion))
        )
    assert layer.kl().item() == pytest.approx(0.0, abs=1e-10)


def test_straight_through_sample_is_an_exact_bernoulli_draw_with_the_relaxed_gradient():
    probs = torch.tensor([0.02, 0.3, 0.5, 0.9], dtype=torch.float64)
    n = 200_000
    z = straight_through_bernoulli(torch.logit(probs), 0.5, (n, 4))
    assert set(z.unique().tolist()) <= {0.0, 1.0}
    se = (probs * (1 - probs) / n).sqrt()
    assert ((z.mean(0) - probs).abs() <= 5 * se).all()

    # the value is 1[u < γ] and the gradient that of the binary Concrete sample from the same u
    logits = torch.logit(probs).requires_grad_()
    weights = torch.randn(500, 4, dtype=torch.float64)
    z = straight_through_bernoulli(logits, 0.5, (500, 4), torch.Generator().manual_seed(7))
    (z * weights).sum().backward()
    u = 1 - torch.rand((500, 4), generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    ref_logits = logits.detach().clone().requires_grad_()
    soft = torch.sigmoid((ref_logits + torch.log1p(-u) - torch.log(u)) / 0.5)
    (soft * weights).sum().backward()
    assert torch.equal(z.detach(), (u < probs).double())
    assert torch.equal(z.detach(), (soft > 0.5).double())
    assert torch.allclose(logits.grad, ref_logits.grad)
    relaxed = straight_through_bernoulli(
        logits.detach(), 0.5, (500, 4), torch.Generator().manual_seed(7), hard=False
    )
    torch.testing.assert_close(relaxed, soft.detach())  # "relaxed": the Concrete sample itself


@pytest.mark.parametrize(
    "make",
    [
        lambda e: SpikeSlabLinear(3, 2, input_gates=True, gate_estimator=e),
        lambda e: SpikeSlabEdgeLinear(3, 2, gate_estimator=e),
    ],
    ids=["node", "edge"],
)
def test_marginal_forward_has_the_mean_and_variance_of_sampled_gates(make):
    """ "marginal" draws from a Gaussian with the exact moments of gates × slabs."""
    torch.manual_seed(0)
    marginal = _randomise(make("marginal")).double()
    sampled = make(ST).double()
    sampled.load_state_dict(marginal.state_dict())
    x = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    edge = isinstance(sampled, SpikeSlabEdgeLinear)
    n = 8_000 if edge else 40_000
    with torch.no_grad():  # edge gates: one draw per call
        repeat = [sampled(x) for _ in range(n)] if edge else [sampled(x.expand(n, 3))]
        draws_st = torch.cat(repeat)
        draws_m = marginal(x.expand(n, 3))
    se = draws_st.std(0) / math.sqrt(n)
    assert ((draws_m.mean(0) - draws_st.mean(0)).abs() <= 6 * se).all()
    rtol = 0.12 if edge else 0.06  # about 5 standard errors of a sample variance
    torch.testing.assert_close(draws_m.var(0), draws_st.var(0), rtol=rtol, atol=1e-6)


def test_marginal_conv_gate_is_shared_by_a_channels_positions():
    """A conv's channel gate is one draw per example: "marginal" keeps the per-position
    moments of sampled gates and also their correlation across positions (the variance
    of a channel's spatial mean), which independent noise per position would shrink."""
    torch.manual_seed(0)
    marginal = _randomise(SpikeSlabConv2d(2, 3, 3, gate_estimator="marginal")).double()
    sampled = SpikeSlabConv2d(2, 3, 3, gate_estimator=ST).double()
    sampled.load_state_dict(marginal.state_dict())
    x = torch.randn(1, 2, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    n = 20_000
    with torch.no_grad():
        draws_m, draws_st = marginal(x.expand(n, -1, -1, -1)), sampled(x.expand(n, -1, -1, -1))
    se = draws_st.std(0) / math.sqrt(n)
    assert ((draws_m.mean(0) - draws_st.mean(0)).abs() <= 6 * se).all()
    torch.testing.assert_close(draws_m.var(0), draws_st.var(0), rtol=0.15, atol=1e-6)
    spatial_m, spatial_st = draws_m.mean((2, 3)).var(0), draws_st.mean((2, 3)).var(0)
    torch.testing.assert_close(spatial_m, spatial_st, rtol=0.1, atol=1e-6)


def test_marginal_conv_gate_gradient_is_finite_at_a_saturated_gate():
    conv = SpikeSlabConv2d(1, 2, 3, gate_estimator="marginal")
    with torch.no_grad():
        conv.gate_logit.copy_(torch.tensor([40.0, -40.0]))  # γ(1 − γ) underflows to 0
    conv(torch.randn(4, 1, 5, 5)).sum().backward()
    assert torch.isfinite(conv.gate_logit.grad).all()


@pytest.mark.parametrize("sampling", ["local", "shared"])
def test_layer_gates_fire_with_frequency_gamma(sampling):
    layer = SpikeSlabLinear(3, 2, gate_sampling=sampling, gate_estimator="straight_through")
    layer = layer.double()
    gamma = torch.tensor([0.3, 0.8], dtype=torch.float64)
    with torch.no_grad():
        layer.gate_logit.copy_(torch.logit(gamma))
    calls, batch = (20, 2000) if sampling == "local" else (2000, 4)
    x = torch.randn(batch, 3, dtype=torch.float64)
    with torch.no_grad():  # pre-activations are nonzero almost surely: output ≠ 0 iff gate on
        on = torch.stack([(layer(x) != 0).double() for _ in range(calls)])
    if sampling == "shared":  # one draw per call: every example sees the same gates
        assert (on == on[:, :1]).all()
    n = calls * batch if sampling == "local" else calls  # independent draws per unit
    assert ((on.mean((0, 1)) - gamma).abs() <= 5 * (gamma * (1 - gamma) / n).sqrt()).all()


@pytest.mark.parametrize(
    "layer, shape",
    [
        (SpikeSlabLinear(4, 3, input_gates=True, gate_estimator=ST), (16, 4)),
        (SpikeSlabConv2d(2, 3, 3, padding=1, gate_estimator=ST), (4, 2, 5, 5)),
        (SpikeSlabEdgeLinear(4, 3, gate_estimator=ST), (16, 4)),
    ],
    ids=["linear", "conv", "edge"],
)
def test_a_gate_at_gamma_zero_makes_the_output_exactly_zero(layer, shape):
    _randomise(layer)
    with torch.no_grad():
        if isinstance(layer, SpikeSlabEdgeLinear):  # every edge of unit 1 and its bias off
            layer.weight_gate_logit[1] = -100.0
            layer.bias_gate_logit[1] = -100.0
        else:
            layer.gate_logit[1] = -100.0
    x = torch.randn(*shape)
    with torch.no_grad():
        outs = torch.stack([layer(x) for _ in range(300)])
        assert (outs[:, :, 1] == 0).all() and (outs[:, :, 0] != 0).any()
        with use_posterior_mean(layer):
            assert (layer(x)[:, 1] == 0).all()
        assert (layer.to_deterministic()(x)[:, 1] == 0).all()
    if isinstance(layer, SpikeSlabEdgeLinear):
        assert layer.posterior().unit_inclusion[1] < 1e-30


def test_an_input_gate_at_gamma_zero_removes_the_feature():
    layer = _randomise(SpikeSlabLinear(4, 3, input_gates=True, gate_estimator=ST))
    with torch.no_grad():
        layer.input_gate_logit[2] = -100.0
    x = torch.randn(8, 4)
    x_changed = x.clone()
    x_changed[:, 2] = 1e3 * torch.randn(8)
    outs = []
    for inputs in (x, x_changed):
        torch.manual_seed(3)  # the same noise for both passes
        outs.append(layer(inputs))
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("estimator", ["marginal", "straight_through", "relaxed"])
def test_gradients_reach_the_gate_logits(estimator):
    model = mlp(4, [5], 2, family="spike_slab", input_gates=True, gate_estimator=estimator)
    edge = SpikeSlabEdgeLinear(4, 3, gate_estimator=estimator)
    x = torch.randn(64, 4)
    (model(x).square().mean() + edge(x).square().mean()).backward()  # likelihood path only
    for logit in (model[0].gate_logit, model[0].input_gate_logit, edge.weight_gate_logit):
        assert logit.grad is not None and torch.isfinite(logit.grad).all()
        assert logit.grad.abs().sum() > 0
    assert model[2].gate_logit is None  # an output unit cannot be pruned: no gate


@pytest.mark.parametrize("mean_gates", ["median", "expected"])
@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda **k: SpikeSlabLinear(5, 4, input_gates=True, **k), (3, 5)),
        (lambda **k: SpikeSlabConv2d(3, 4, 3, input_gates=True, **k), (2, 3, 6, 6)),
        (lambda **k: SpikeSlabEdgeLinear(5, 4, **k), (3, 5)),
        (lambda **k: SpikeSlabEdgeConv2d(3, 4, 3, **k), (2, 3, 6, 6)),
    ],
    ids=["linear", "conv", "edge", "edge-conv"],
)
def test_select_equals_the_masked_layer_for_kept_units(make, shape, mean_gates):
    layer = _randomise(make(mean_gates=mean_gates), seed=4)
    out_idx, in_idx = torch.tensor([0, 2, 3]), torch.tensor([0, 2])
    small = layer.select(out_idx, in_idx)
    x = torch.randn(*shape)
    x_masked = torch.zeros_like(x)
    x_masked[:, in_idx] = x[:, in_idx]
    with use_posterior_mean(layer), use_posterior_mean(small), torch.no_grad():
        assert torch.allclose(small(x[:, in_idx]), layer(x_masked)[:, out_idx], atol=1e-6)
    full, cut = layer.posterior(), small.posterior()
    assert torch.equal(cut.weight_mean, full.weight_mean[out_idx][:, in_idx])
    if isinstance(layer, SpikeSlabLinear | SpikeSlabConv2d):  # gates sliced with their units
        assert torch.equal(cut.unit_inclusion, full.unit_inclusion[out_idx])
        assert torch.equal(cut.input_inclusion, full.input_inclusion[in_idx])
    else:
        gates = layer.weight_gate_logit[out_idx][:, in_idx]
        assert torch.equal(small.weight_gate_logit, gates)
        assert torch.equal(small.bias_gate_logit, layer.bias_gate_logit[out_idx])
    assert small(x[:, in_idx]).shape[1] == len(out_idx)  # the sampling path runs too


def test_pruning_by_the_median_model_leaves_the_mean_network_unchanged():
    model = _randomise(mlp(6, [7], 2, family="spike_slab", input_gates=True), seed=5)
    first, last = model[0], model[2]
    keep_in = median_probability_model(first.posterior().input_inclusion).nonzero().flatten()
    keep_h = median_probability_model(first.posterior().unit_inclusion).nonzero().flatten()
    assert 0 < len(keep_in) < 6 and 0 < len(keep_h) < 7
    small = nn.Sequential(first.select(keep_h, keep_in), nn.ReLU(), last.select(None, keep_h))
    x = torch.randn(10, 6)
    with use_posterior_mean(model), use_posterior_mean(small), torch.no_grad():
        reference = model(x)
        assert torch.allclose(small(x[:, keep_in]), reference, atol=1e-6)
    assert torch.allclose(bp.to_deterministic(model)(x), reference, atol=1e-6)


def test_posterior_is_the_mean_and_std_of_the_effective_weights():
    layer = _randomise(SpikeSlabLinear(3, 2, input_gates=True).double(), seed=6)
    post = layer.posterior()
    n = 200_000
    z_out = Bernoulli(logits=layer.gate_logit).sample((n,))
    z_in = Bernoulli(logits=layer.input_gate_logit).sample((n,))
    w = layer.weight_mu + layer.weight_sigma * torch.randn(n, 2, 3, dtype=torch.float64)
    effective = (z_out[:, :, None] * z_in[:, None, :] * w).detach()
    se = effective.std(0) / math.sqrt(n)
    assert ((post.weight_mean - effective.mean(0)).abs() <= 5 * se).all()
    _assert_variance_matches(post.weight_std.square(), effective)
    bias = layer.bias_mu + layer.bias_sigma * torch.randn(n, 2, dtype=torch.float64)
    _assert_variance_matches(post.bias_std.square(), (z_out * bias).detach())


def _assert_variance_matches(var, samples):
    """The closed-form variance is within 5 standard errors of the sample variance."""
    centred_sq = (samples - samples.mean(0)).square()
    se = centred_sq.std(0) / math.sqrt(samples.shape[0])
    assert ((var - centred_sq.mean(0)).abs() <= 5 * se).all()


def test_pips_are_probabilities_and_edge_aggregates_match_brute_force():
    node = SpikeSlabLinear(4, 3, input_gates=True)
    edge = SpikeSlabEdgeLinear(4, 3)
    with torch.no_grad():
        for layer in (node, edge):
            for name, p in layer.named_parameters():
                if "logit" in name:
                    p.copy_(torch.randn(p.shape) * 30)  # includes saturated gates
    for layer in (node, edge):
        post = layer.posterior()
        for pip in (post.unit_inclusion, post.input_inclusion):
            assert ((pip >= 0) & (pip <= 1)).all()
    phi = torch.sigmoid(edge.weight_gate_logit.double()).detach()
    phi_b = torch.sigmoid(edge.bias_gate_logit.double()).detach()
    unit = 1 - (1 - phi).prod(1) * (1 - phi_b)
    inputs = 1 - (1 - phi).prod(0)
    post = edge.posterior()
    assert torch.allclose(post.unit_inclusion.double(), unit, atol=1e-6)
    assert torch.allclose(post.input_inclusion.double(), inputs, atol=1e-6)


def test_builders_register_both_families():
    assert {"spike_slab", "spike_slab_edge"} <= set(bp.nn.families())
    model = bp.mlp(784, [400, 400], 10, family="spike_slab")
    assert [type(m) for m in model if not isinstance(m, nn.ReLU)] == [SpikeSlabLinear] * 3
    assert model[0].prior_inclusion == pytest.approx(default_prior_inclusion(400))
    edge = bp.mlp(6, [4], 2, family="spike_slab_edge", prior_inclusion=1e-4)
    assert isinstance(edge[2], SpikeSlabEdgeLinear) and edge[2].prior_inclusion == 1e-4
    cnn = bp.convert(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4, 2)), "spike_slab")
    assert isinstance(cnn[0], SpikeSlabConv2d) and cnn[0].gate_logit.shape == (4,)
    ss = mlp(8, [5, 4], 1, family="spike_slab", input_gates=True)
    assert ss[0].input_gate_logit is not None and ss[2].input_gate_logit is None
    assert ss[4].gate_logit is None and ss[2].gate_logit is not None
    assert mlp(8, [5], 1, family="spike_slab", output_gates=True)[2].gate_logit is not None


def test_bad_options_raise_clear_errors():
    with pytest.raises(ValueError, match="valid"):
        SpikeSlabLinear(3, 2, gate_sampling="per-batch")
    with pytest.raises(ValueError, match="valid"):
        SpikeSlabLinear(3, 2, mean_gates="mode")
    with pytest.raises(ValueError, match="gate_estimator"):
        SpikeSlabEdgeLinear(3, 2, gate_estimator="reinforce")
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        SpikeSlabLinear(3, 2, prior_inclusion=1.5)
    with pytest.raises(ValueError, match="slab_scale"):
        SpikeSlabEdgeLinear(3, 2, slab_scale=0.0)
    with pytest.raises(ValueError, match="groups=1"):
        SpikeSlabConv2d(4, 4, 3, groups=2, input_gates=True)
    with pytest.raises(ValueError, match="valid families"):
        mlp(3, [2], 1, family="spike_slab_node")
    with pytest.raises(ValueError, match="takes no option"):
        mlp(3, [2], 1, family="spike_slab_edge", input_gates=True)
    with pytest.raises(ValueError, match="gate_sampling applies to node-level"):
        SpikeSlabEdgeLinear(3, 2, gate_sampling="local")
    with pytest.raises(TypeError, match="valid"):
        SpikeSlabLinear(3, 2, gate_int=0.5)
    with pytest.raises(ValueError, match="units along dim"):
        SpikeSlabLinear(3, 2, input_gates=True)(torch.randn(4, 5))


def test_gaussian_family_is_unchanged_by_the_shared_code():
    layer = BayesLinear(3, 2)
    x = torch.randn(4, 3)
    with use_posterior_mean(layer):
        assert torch.allclose(layer(x), nn.functional.linear(x, layer.weight_mu, layer.bias_mu))
    assert not isinstance(SpikeSlabLinear(3, 2), BayesLinear)


# -- decision rules --------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.2])
def test_bayesian_fdr_keeps_the_largest_top_set_with_expected_fdr_below_alpha(seed, alpha):
    g = torch.Generator().manual_seed(seed)
    pip = torch.rand(30, generator=g) ** 0.3  # many PIPs near 1
    keep = bayesian_fdr(pip, alpha)
    assert expected_fdr(pip, keep) <= alpha + 1e-9
    if keep.any() and (~keep).any():
        assert pip[keep].min() >= pip[~keep].max()  # a top set
    # brute force: no larger top-k set is admissible
    ordered = pip.sort(descending=True).values
    admissible = [k for k in range(1, 31) if (1 - ordered[:k]).mean() <= alpha + 1e-9]
    assert int(keep.sum()) == max(admissible, default=0)


def test_expected_size_keeps_a_redundant_layer_the_median_model_drops():
    pip = torch.tensor([0.4, 0.3, 0.45, 0.35, 0.05, 0.9])  # Σ = 2.45: keep the top 2
    keep = expected_size(pip)
    assert keep.tolist() == [False, False, True, False, False, True]
    assert median_probability_model(pip).sum() == 1
    assert torch.equal(select_by_pip(pip, "expected_size"), keep)
    assert expected_size(torch.full((4,), 0.1)).sum() == 0  # Σ = 0.4 rounds to none
    assert expected_size(torch.ones(3)).all()


def test_median_and_target_size_rules():
    pip = torch.tensor([0.9, 0.2, 0.5, 0.51, 0.7])
    assert median_probability_model(pip).tolist() == [True, False, False, True, True]
    assert target_size(pip, 2).tolist() == [True, False, False, False, True]
    assert select_by_pip(pip, "target_size", k=0).sum() == 0
    assert torch.equal(select_by_pip(pip, "fdr", alpha=0.2), bayesian_fdr(pip, 0.2))
    with pytest.raises(ValueError, match="valid"):
        select_by_pip(pip, "bic")
    with pytest.raises(ValueError, match="needs k"):
        select_by_pip(pip, "target_size")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        median_probability_model(torch.tensor([0.5, 1.2]))


# -- learning ------------------------------------------------------------------------------
def test_input_gates_select_the_true_features():
    g = torch.Generator().manual_seed(0)
    n = 500
    x = torch.randn(n, 8, generator=g)  # x0, x1 matter; x2..x7 are noise
    y = x[:, 0] + 2 * x[:, 1] + 0.5 * torch.randn(n, generator=g)
    model = mlp(8, [8], 1, family="spike_slab", input_gates=True)
    history = bp.fit(
        model, (x, y), likelihood="gaussian", epochs=60, batch_size=100, lr=0.02, progress=False
    )
    assert history.epochs[-1]["loss"] < history.epochs[0]["loss"]
    pip = model[0].posterior().input_inclusion
    assert (pip[:2] > 0.9).all(), pip
    assert (pip[2:] < 0.5).all(), pip
    assert median_probability_model(pip).tolist() == [True, True] + [False] * 6
