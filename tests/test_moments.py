"""eVI moment propagation: propagated moments vs Monte Carlo, layouts, loss, rebuild, learning."""

import math

import pytest
import torch
import torch.nn.functional as F
from _images import bars
from torch import nn

import bayesprune as bp
from bayesprune.nn.moments import (
    EVIELU,
    EVIConv2d,
    EVIFlatten,
    EVILikelihood,
    EVILinear,
    EVIMaxPool2d,
    EVIReLU,
    EVISigmoid,
    EVISoftmax,
    EVITanh,
    Factored,
    Moments,
    block_covariance,
    evi_cnn,
    evi_deep_cnn,
    layout,
    predictive_variance,
)

DT = torch.float64


def _spd(n, batch=(), scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(*batch, n, n, generator=g, dtype=DT)
    return scale * (a @ a.transpose(-1, -2) / n + 0.1 * torch.eye(n, dtype=DT))


def _randomise(layer, seed=0, log_var=(-3.0, -1.0)):
    """Random means; per-kernel variances between exp(log_var[0]) and exp(log_var[1])."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight_mu.copy_(torch.randn(layer.weight_mu.shape, generator=g, dtype=DT) * 0.5)
        lo, hi = log_var
        var = torch.exp(lo + (hi - lo) * torch.rand(layer.weight_rho.shape, generator=g, dtype=DT))
        layer.weight_rho.copy_(torch.log(torch.expm1(var)))  # softplus(ρ) = var
        if layer.bias is not None:
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=g, dtype=DT) * 0.3)
    return layer


def _weights(layer, n, seed=1):
    """n draws of the whole weight tensor from q: one variance per kernel, masks respected."""
    g = torch.Generator().manual_seed(seed)
    mu = layer.mean_weight.detach()
    std = layer.posterior().weight_std
    return mu + std * torch.randn(n, *mu.shape, generator=g, dtype=DT)


def _conv_samples(x, w, bias=None, stride=1, padding=0):
    """(n, B, C, H', W'): x convolved with each of n sampled weight tensors, in one call."""
    n, c = w.shape[:2]
    z = F.conv2d(x, w.flatten(0, 1), None, stride, padding)
    z = z.view(x.shape[0], n, c, *z.shape[-2:]).transpose(0, 1)
    return z if bias is None else z + bias.detach().view(c, 1, 1)


def _mc_cov(samples):
    """Empirical mean and covariance over dim 0 of (n, B, D) samples: (B, D), (B, D, D)."""
    mean = samples.mean(0)
    c = samples - mean
    return mean, torch.einsum("nbi,nbj->bij", c, c) / (samples.shape[0] - 1)


def _close(estimate, exact, tol):
    """Within tol of the largest entry of `exact` (Monte Carlo error is absolute)."""
    scale = exact.abs().max().clamp_min(1e-12)
    err = (estimate - exact).abs().max() / scale
    assert err < tol, f"relative max error {err:.4f} >= {tol}"


# -- dense layer ------------------------------------------------------------------------
def test_dense_moments_are_exact_for_gaussian_input():
    layer = _randomise(EVILinear(4, 3).double())
    m = torch.randn(2, 4, dtype=DT)
    cov = _spd(4, (2,), 0.5)
    out = layer(Moments(m, cov))
    n = 200_000
    x = m + torch.einsum("bij,nbj->nbi", torch.linalg.cholesky(cov), torch.randn(n, 2, 4, dtype=DT))
    w = _weights(layer, n)
    z = torch.einsum("noi,nbi->nbo", w, x) + layer.bias.detach()
    mc_mean, mc_cov = _mc_cov(z)
    _close(mc_mean, out.mean.detach(), 0.02)
    _close(mc_cov, out.cov.detach(), 0.02)


def test_dense_with_deterministic_input_and_diag_mode():
    layer = _randomise(EVILinear(5, 3).double())
    x = torch.randn(4, 5, dtype=DT)
    out = layer(x)
    w = _weights(layer, 200_000)
    z = torch.einsum("noi,bi->nbo", w, x) + layer.bias.detach()
    mc_mean, mc_cov = _mc_cov(z)
    _close(mc_mean, out.mean.detach(), 0.02)
    _close(mc_cov, out.cov.detach(), 0.02)
    layer.covariance = "diag"
    diag = layer(Moments(x, _spd(5, (4,), 0.3)))
    layer.covariance = "full"
    full = layer(Moments(x, _spd(5, (4,), 0.3)))
    torch.testing.assert_close(diag.cov, full.cov.diagonal(dim1=-2, dim2=-1))


# -- first convolution --------------------------------------------------------------------
@pytest.mark.parametrize("stride,padding,in_ch", [(1, 0, 1), (2, 1, 2)])
def test_first_conv_covariance_matches_monte_carlo(stride, padding, in_ch):
    conv = _randomise(EVIConv2d(in_ch, 3, 3, stride=stride, padding=padding).double())
    x = torch.rand(2, in_ch, 5, 5, dtype=DT)
    out = conv(x)
    assert layout(out) == "factored"
    z = _conv_samples(x, _weights(conv, 40_000), conv.bias, stride, padding)
    mc_mean, mc_cov = _mc_cov(z.flatten(2))  # covariance over all (channel, position) pairs
    _close(mc_mean, out.mean.detach().flatten(1), 0.03)
    _close(mc_cov, out.dense_covariance().detach(), 0.05)  # includes zero across kernels
    positions = z.shape[-1] * z.shape[-2]
    assert block_covariance(out).shape == (2, 3, positions, positions)


def test_first_conv_with_masked_weights_matches_monte_carlo():
    conv = _randomise(EVIConv2d(2, 2, 2, bias=False).double())
    mask = torch.rand(conv.weight_mu.shape, generator=torch.Generator().manual_seed(3)) > 0.4
    conv.set_weight_mask(mask.double())
    x = torch.rand(1, 2, 4, 4, dtype=DT)
    out = conv(x)
    z = _conv_samples(x, _weights(conv, 40_000))
    mc_mean, mc_cov = _mc_cov(z.flatten(2))
    _close(mc_mean, out.mean.detach().flatten(1), 0.03)
    _close(mc_cov, out.dense_covariance().detach(), 0.05)
    conv.covariance = "diag"
    torch.testing.assert_close(conv(x).cov, out.variance())


def test_later_conv_diagonal_variance_is_exact_for_independent_inputs():
    conv = _randomise(EVIConv2d(2, 3, 3, padding=1).double())
    m = torch.randn(2, 2, 4, 4, dtype=DT)
    v = torch.rand(2, 2, 4, 4, dtype=DT) * 0.3
    out = conv(Moments(m, v))
    assert layout(out) == "diag"
    n = 40_000
    x = m + v.sqrt() * torch.randn(n, *m.shape, dtype=DT)
    w = _weights(conv, n)
    z = F.conv2d(x.transpose(0, 1).flatten(1, 2), w.flatten(0, 1), padding=1, groups=n)
    z = z.view(2, n, 3, 4, 4).transpose(0, 1) + conv.bias.detach().view(3, 1, 1)
    _close(z.mean(0), out.mean.detach(), 0.03)
    _close(z.var(0), out.cov.detach(), 0.03)


def test_conv_diag_modes_agree_with_the_full_marginals():
    conv = _randomise(EVIConv2d(1, 3, 3).double())
    x = torch.rand(2, 1, 6, 6, dtype=DT)
    full = conv(x)
    point = conv(Moments(x, torch.zeros_like(x)))  # moment input: the diagonal rule
    conv.covariance = "diag"
    diag = conv(x)
    torch.testing.assert_close(diag.cov, full.variance())
    torch.testing.assert_close(point.cov, full.variance())
    # a second conv reads any layout through its marginals
    second = _randomise(EVIConv2d(3, 2, 3).double(), seed=3)
    torch.testing.assert_close(second(full).cov, second(diag).cov)


# -- activations ----------------------------------------------------------------------------
@pytest.mark.parametrize("act", [EVIReLU(), EVIELU(0.7), EVITanh(), EVISigmoid()])
def test_activations_match_monte_carlo_for_small_variance(act):
    g = torch.Generator().manual_seed(4)
    m = torch.randn(2, 5, generator=g, dtype=DT)
    m = m + 0.5 * m.sign()  # keep ReLU/ELU away from their kink
    cov = _spd(5, (2,), 1e-4, seed=5)
    out = act(Moments(m, cov))
    n = 200_000
    x = m + torch.einsum("bij,nbj->nbi", torch.linalg.cholesky(cov), torch.randn(n, 2, 5, dtype=DT))
    mc_mean, mc_cov = _mc_cov(act(x))
    _close(mc_mean, out.mean, 0.01)
    _close(mc_cov, out.cov, 0.03)
    # the same rule on every layout
    diag = act(Moments(m, cov.diagonal(dim1=-2, dim2=-1)))
    torch.testing.assert_close(diag.cov, out.cov.diagonal(dim1=-2, dim2=-1))
    assert torch.equal(act(m), out.mean)


# -- max-pool, flatten ------------------------------------------------------------------------
def _block_map(batch=2, channels=2, h=4, w=4, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(batch, channels, h, w, generator=g, dtype=DT) * 3
    cov = _spd(h * w, (batch, channels), scale, seed)
    return Moments(mean, cov)


def _sample_block_map(moments, n, seed=2):
    """Samples (n, B, C, H, W) from independent per-channel Gaussians."""
    mean, cov = moments
    chol = torch.linalg.cholesky(cov)
    eps = torch.randn(n, *cov.shape[:-1], generator=torch.Generator().manual_seed(seed), dtype=DT)
    return mean + torch.einsum("bcpq,nbcq->nbcp", chol, eps).reshape(n, *mean.shape)


def test_max_pool_gathers_the_winners_rows_and_columns():
    x = _block_map()
    pool = EVIMaxPool2d(2)
    out = pool(x)
    _, idx = F.max_pool2d(x.mean, 2, return_indices=True)
    idx = idx.flatten(2)
    for b in range(2):  # brute force, one example and kernel at a time
        for c in range(2):
            keep = idx[b, c]
            torch.testing.assert_close(out.cov[b, c], x.cov[b, c][keep][:, keep])
    # small variance: the winners do not change, so sampling agrees
    small = Moments(x.mean, x.cov * 1e-4)
    samples = F.max_pool2d(_sample_block_map(small, 100_000).flatten(0, 1), 2)
    samples = samples.view(100_000, 2, -1)
    mc_mean, mc_cov = _mc_cov(samples)
    pooled = pool(small)
    _close(mc_mean, pooled.mean.flatten(1), 0.01)
    _close(mc_cov, pooled.dense_covariance(), 0.03)
    # diag and factored layouts gather the same entries
    torch.testing.assert_close(pool(Moments(x.mean, x.variance())).cov, out.variance())


def test_factored_path_equals_dense_block_path():
    conv = _randomise(EVIConv2d(1, 3, 3, bias=False).double())
    x = torch.rand(2, 1, 8, 8, dtype=DT)
    relu, pool, flat = EVIReLU(), EVIMaxPool2d(2), EVIFlatten()
    dense = _randomise(EVILinear(3 * 9, 4).double(), seed=2)
    z = conv(x)
    dense_blocks = Moments(z.mean, block_covariance(z))
    a = dense(flat(pool(relu(z))))
    b = dense(flat(pool(relu(dense_blocks))))
    assert layout(flat(pool(relu(z)))) == "factored"
    assert layout(flat(pool(relu(dense_blocks)))) == "block"
    torch.testing.assert_close(a.mean, b.mean)
    torch.testing.assert_close(a.cov, b.cov)
    # and both equal the dense layer applied to the explicit (D, D) covariance
    v = flat(pool(relu(z)))
    c = dense(Moments(v.mean, v.dense_covariance()))
    torch.testing.assert_close(a.cov, c.cov)


def test_flatten_uses_one_order_for_mean_and_covariance():
    # channels with very different covariance structure, so any mismatch in order shows
    x = _block_map(batch=1, channels=2, h=2, w=3, seed=6)
    x = Moments(x.mean, x.cov * torch.tensor([1.0, 5.0], dtype=DT).view(1, 2, 1, 1))
    flat = EVIFlatten()(x)
    samples = _sample_block_map(x, 200_000).flatten(2)  # torch's own flatten of each sample
    mc_mean, mc_cov = _mc_cov(samples)
    _close(mc_mean, flat.mean, 0.01)
    _close(mc_cov, flat.dense_covariance(), 0.03)
    diag = EVIFlatten()(Moments(x.mean, x.variance()))
    torch.testing.assert_close(diag.cov, flat.variance())


# -- softmax -----------------------------------------------------------------------------------
def test_softmax_covariance_uses_the_softmax_jacobian():
    m = torch.randn(3, 4, dtype=DT)
    cov = _spd(4, (3,), 0.2)
    out = EVISoftmax()(Moments(m, cov))
    for b in range(3):
        jac = torch.autograd.functional.jacobian(lambda t: t.softmax(-1), m[b])
        torch.testing.assert_close(out.cov[b], jac @ cov[b] @ jac.T)
    torch.testing.assert_close(out.mean, m.softmax(-1))
    diag = EVISoftmax()(Moments(m, cov.diagonal(dim1=-2, dim2=-1)))
    expect = EVISoftmax()(Moments(m, torch.diag_embed(cov.diagonal(dim1=-2, dim2=-1))))
    torch.testing.assert_close(diag.cov, expect.cov)


# -- whole networks ----------------------------------------------------------------------------
def _tiny_net(**kwargs):
    return evi_cnn(3, image_size=8, kernel_size=3, n_classes=4, **kwargs).double()


def test_reference_network_output_is_symmetric_psd_probabilities():
    torch.manual_seed(0)
    model = evi_cnn(4).double()
    out = model(torch.rand(3, 1, 28, 28, dtype=DT))
    assert out.mean.shape == (3, 10) and out.cov.shape == (3, 10, 10)
    torch.testing.assert_close(out.mean.sum(-1), torch.ones(3, dtype=DT))
    torch.testing.assert_close(out.cov, out.cov.transpose(-1, -2))
    eig = torch.linalg.eigvalsh(out.cov)
    assert (eig > -1e-12 * eig.abs().max()).all()
    # J 1 = 0 for the softmax Jacobian: probabilities sum to one with certainty
    assert out.cov.sum(-1).abs().max() < 1e-10
    torch.testing.assert_close(predictive_variance(out), out.cov.diagonal(dim1=-2, dim2=-1))


def test_builders_are_registered():
    model = bp.build("evi_cnn", n_kernels=2, image_size=8, kernel_size=3, n_classes=3)
    assert isinstance(model[0], EVIConv2d) and model[4].in_features == 2 * 3 * 3
    assert isinstance(bp.build("evi_deep_cnn", channels=(2,), hidden=(), image_size=8), nn.Module)
    with pytest.raises(ValueError, match="do not fit"):
        evi_cnn(2, image_size=4, kernel_size=5)


def test_deep_diagonal_network_runs_and_is_psd():
    model = evi_deep_cnn((3, 4), (5,), image_size=12, n_classes=3).double()
    out = model(torch.rand(2, 1, 12, 12, dtype=DT))
    assert out.cov.shape == (2, 3, 3)
    assert torch.isfinite(out.cov).all()
    assert (torch.linalg.eigvalsh(out.cov) > -1e-12).all()
    loss = EVILikelihood().nll(out, torch.tensor([0, 2])) + bp.kl(model)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("rho", [-30.0, 30.0])
@pytest.mark.parametrize("regularizer", ["kl", "original"])
def test_gradients_are_finite_for_extreme_rho(rho, regularizer):
    model = evi_cnn(3, image_size=10, kernel_size=3, n_classes=3, regularizer=regularizer)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight_rho"):
                p.fill_(rho)
    out = model(torch.rand(4, 1, 10, 10))
    loss = EVILikelihood().nll(out, torch.tensor([0, 1, 2, 0])) + bp.kl(model) / 100
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert torch.isfinite(p.grad).all(), name


def test_mask_and_select_remove_kernels_exactly():
    model = _tiny_net()
    for i, layer in enumerate((model[0], model[4])):
        _randomise(layer, seed=i)
    x = torch.rand(3, 1, 8, 8, dtype=DT)
    keep = torch.tensor([0, 2])
    conv, dense = model[0], model[4]
    positions = dense.in_features // conv.out_channels
    in_idx = (keep[:, None] * positions + torch.arange(positions)).flatten()
    # masking kernel 1 (mean and variance zero) == removing it and its dense inputs
    mask = torch.ones_like(conv.weight_mu)
    mask[1] = 0
    conv.set_weight_mask(mask)
    masked = model(x)
    conv.set_weight_mask(None)
    small = nn.Sequential(conv.select(keep), *model[1:4], dense.select(None, in_idx), model[5])
    shrunk = small(x)
    torch.testing.assert_close(shrunk.mean, masked.mean)
    torch.testing.assert_close(shrunk.cov, masked.cov)
    # the kept kernels' own outputs are unchanged by select
    full_out, sel_out = conv(x), small[0](x)
    torch.testing.assert_close(sel_out.mean, full_out.mean[:, keep])
    torch.testing.assert_close(block_covariance(sel_out), block_covariance(full_out)[:, keep])
    dense_sel = dense.select(torch.tensor([3, 1]))
    v = nn.Sequential(*model[:4])(x)
    torch.testing.assert_close(dense_sel(v).cov, dense(v).cov[:, [3, 1]][:, :, [3, 1]])


def test_posterior_and_deterministic_export():
    model = _tiny_net()
    _randomise(model[0])
    post = model[0].posterior()
    assert post.weight_std.shape == model[0].weight_mu.shape
    torch.testing.assert_close(post.weight_std[:, 0, 0, 0], model[0].weight_var.detach().sqrt())
    assert isinstance(model[0].to_deterministic(), nn.Conv2d)
    plain = bp.to_deterministic(model)
    x = torch.rand(2, 1, 8, 8, dtype=DT)
    torch.testing.assert_close(plain(x), model(x).mean)  # first order: mean = mean network


# -- regularisers ----------------------------------------------------------------------------
def test_regularizers_match_their_formulas():
    layer = _randomise(EVIConv2d(2, 3, 2).double())
    d = 8
    var = layer.weight_var.detach()
    mu = layer.weight_mu.detach()
    q = torch.distributions.Normal(mu, layer.posterior().weight_std)
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    expected = torch.distributions.kl_divergence(q, p).sum()
    torch.testing.assert_close(layer.kl().detach(), expected)
    layer.regularizer, layer.l1 = "original", 0.5
    original = (d * (var - var.log() - 1) / 2).mean() + 0.5 * mu.abs().sum()
    torch.testing.assert_close(layer.kl().detach(), original)
    assert EVILinear(3, 2, regularizer="original").l1 == 0.5
    assert EVILinear(3, 2).l1 == 0.0
    with pytest.raises(ValueError, match="valid"):
        EVILinear(3, 2, regularizer="l2")
    with pytest.raises(ValueError, match="valid"):
        EVIConv2d(1, 2, 3, covariance="low-rank")


def test_masked_kernel_leaves_the_regularizer():
    layer = _randomise(EVILinear(4, 3).double())
    mask = torch.ones(3, 4, dtype=DT)
    mask[2] = 0
    layer.set_weight_mask(mask)
    small = layer.select(torch.tensor([0, 1]))
    small.set_weight_mask(None)
    torch.testing.assert_close(layer.kl(), small.kl())


# -- loss ----------------------------------------------------------------------------------------
def test_evi_loss_is_a_gaussian_negative_log_density():
    g = torch.Generator().manual_seed(7)
    p = torch.rand(3, 4, generator=g, dtype=DT).softmax(-1)
    cov = _spd(4, (3,), 0.05)
    y = torch.tensor([0, 3, 1])
    lik = EVILikelihood(eps=1e-3)
    loss = lik.nll(Moments(p, cov), y)
    mvn = torch.distributions.MultivariateNormal(p, cov + 1e-3 * torch.eye(4, dtype=DT))
    expected = -(mvn.log_prob(F.one_hot(y, 4).to(DT))).mean() - 2 * math.log(2 * math.pi)
    torch.testing.assert_close(loss, expected)
    # zero and singular covariances stay finite; a plain tensor is probabilities, no covariance
    assert torch.isfinite(lik.nll(Moments(p, torch.zeros(3, 4, 4, dtype=DT)), y))
    ones = torch.ones(3, 4, 4, dtype=DT)
    assert torch.isfinite(lik.nll(Moments(p, ones), y))
    torch.testing.assert_close(lik.nll(p, y), lik.nll(Moments(p, torch.zeros_like(p)), y))
    # huge variances are capped, not passed on
    huge = lik.nll(Moments(p, cov * 1e12), y)
    assert torch.isfinite(huge) and huge < 0.5 * 4 * math.log(1e3 + 1e-3) + 1
    assert torch.equal(lik.point_prediction(Moments(p, cov)), p)


def test_evi_loss_rejects_bad_labels():
    lik = EVILikelihood()
    out = Moments(torch.full((2, 3), 1 / 3), torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match="out of range"):
        lik.check_target(out, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="integers"):
        lik.check_target(out.mean, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="> 0"):
        EVILikelihood(eps=0)


def test_layout_errors_name_the_valid_layouts():
    with pytest.raises(ValueError, match="Valid layouts"):
        layout(Moments(torch.zeros(2, 3), torch.zeros(2, 4)))
    bad = Factored(torch.zeros(2, 1, 5, 3), None, torch.ones(2, 1))
    with pytest.raises(ValueError, match="factor does not fit"):
        layout(Moments(torch.zeros(2, 12), bad))
    with pytest.raises(ValueError, match="EVIFlatten"):
        EVILinear(4, 2)(Moments(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)))


# -- learning --------------------------------------------------------------------------------------
def test_evi_cnn_learns_a_tiny_image_problem():
    x, y = bars(240)
    xv, yv = bars(120, seed=1)
    model = evi_cnn(4, image_size=8, kernel_size=3, n_classes=3)
    hist = bp.fit(model, (x, y), (xv, yv), likelihood=EVILikelihood(), epochs=6,
                  batch_size=32, lr=1e-2, seed=0, progress=False)  # fmt: skip
    losses = hist.column("loss")
    assert losses[-1] < losses[0]
    assert hist.last()["val_accuracy"] > 0.8
