"""Group Sparse VD: a log-uniform scale per unit / channel over Sparse VD weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bayesprune import convert, fit, kl, to_deterministic
from bayesprune.compress import (
    apply_masks,
    input_scores,
    load_model,
    save_model,
    self_compress,
    shrink,
    unit_scores,
)
from bayesprune.nn import (
    GroupSparseVDConv2d,
    GroupSparseVDLinear,
    SparseVDLinear,
    use_posterior_mean,
)
from bayesprune.nn.sparse_vd import LOG_ALPHA_MAX, log_alpha, log_uniform_kl


def _randomise_units(model: nn.Module, seed: int = 0) -> nn.Module:
    """Unit scales away from 1 and noisy, so the tests see them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, (GroupSparseVDLinear, GroupSparseVDConv2d)):
                n = layer.unit_mu.numel()
                layer.unit_mu.copy_(0.5 + torch.rand(n, generator=g, dtype=layer.unit_mu.dtype))
                layer.unit_rho.copy_(-3 + torch.rand(n, generator=g, dtype=layer.unit_rho.dtype))
    return model


def _lenet(**options) -> nn.Module:
    torch.manual_seed(0)
    plain = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 5, 3), nn.ReLU(),
        nn.Flatten(), nn.Linear(5 * 3 * 3, 6), nn.ReLU(), nn.Linear(6, 3),
    )  # fmt: skip
    return _randomise_units(convert(plain.double(), "sparse_vd_group", **options).double())


def test_conv_training_pass_shares_one_scale_per_example_and_channel():
    conv = _randomise_units(GroupSparseVDConv2d(2, 3, 3).double())
    with torch.no_grad():
        conv.weight_rho.fill_(-40.0)  # weights without noise: only the unit scales vary
        conv.bias_rho.fill_(-40.0)
        conv.unit_rho.fill_(0.0)
    x = torch.randn(64, 2, 7, 7, dtype=torch.float64)
    with torch.no_grad():
        ratio = conv(x) / to_deterministic(conv)(x) * conv.unit_mu.view(1, -1, 1, 1)
    flat = ratio.flatten(2)
    torch.testing.assert_close(flat, flat[..., :1].expand_as(flat))  # one z per channel
    assert flat[..., 0].std(0).min() > 0.3  # and a fresh one per example


def test_training_pass_has_the_moments_of_scale_times_pre_activation():
    layer = _randomise_units(GroupSparseVDLinear(3, 2).double())
    with torch.no_grad():
        layer.weight_rho.fill_(-1.5)
    x = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64).expand(100_000, 3)
    with torch.no_grad():
        draws = layer(x)
    mean = x[0] @ layer.weight_mu.T + layer.bias_mu
    var = (x[0] ** 2) @ layer.weight_sigma.square().T + layer.bias_sigma.square()
    mu, s2 = layer.unit_mu.detach(), layer.unit_sigma.detach().square()
    torch.testing.assert_close(draws.mean(0), (mean * mu).detach(), rtol=0.02, atol=0.01)
    expected_var = ((mean.square() + var) * (mu.square() + s2) - (mean * mu).square()).detach()
    torch.testing.assert_close(draws.var(0), expected_var, rtol=0.03, atol=1e-4)


def test_posterior_mean_pass_equals_the_plain_twin_and_the_effective_means():
    model = _lenet()
    x = torch.randn(5, 1, 12, 12, dtype=torch.float64)
    with use_posterior_mean(model):
        ours = model(x)
    torch.testing.assert_close(to_deterministic(model)(x), ours)
    fc = model[6]
    post = fc.posterior()
    torch.testing.assert_close(post.weight_mean, (fc.weight_mu * fc.unit_mu[:, None]).detach())
    assert (post.weight_std > fc.weight_sigma.detach() * fc.unit_mu.detach()[:, None]).all()


def test_kl_adds_each_unit_scale_and_a_pure_noise_unit_costs_nothing():
    layer = GroupSparseVDLinear(4, 3).double()
    plain = SparseVDLinear(4, 3).double()
    plain.load_state_dict({k: v for k, v in layer.state_dict().items() if "unit" not in k})
    units = log_uniform_kl(log_alpha(layer.unit_mu, layer.unit_sigma)).sum()
    torch.testing.assert_close(layer.kl(), plain.kl() + units)
    with torch.no_grad():
        layer.unit_rho[0] = 30.0  # α_0 huge: that unit's scale is noise
    per_unit = log_uniform_kl(log_alpha(layer.unit_mu, layer.unit_sigma))
    assert per_unit[0] < 1e-3 < per_unit[1]
    assert layer.unit_log_alpha()[0] > 3 > layer.unit_log_alpha()[1]


def test_shrink_of_noisy_units_equals_the_masked_model_and_round_trips(tmp_path):
    model = _lenet()
    masks = {}
    for name, idx in (("0", [1]), ("3", [0, 3]), ("6", [2, 5])):
        layer = model.get_submodule(name)
        with torch.no_grad():
            layer.unit_rho[idx] = 10.0
        mask = torch.ones_like(layer.weight_mu)
        mask[layer.unit_log_alpha() > 3] = 0
        masks[name] = mask
    apply_masks(model, masks)
    result = shrink(model, (1, 12, 12))
    x = torch.randn(6, 1, 12, 12, dtype=torch.float64)
    with use_posterior_mean(model), use_posterior_mean(result.model):
        torch.testing.assert_close(result.model(x), model(x), atol=1e-10, rtol=1e-8)
    assert result.architecture[1:4] == [3, 3, 4]
    small_fc = result.model[6]
    assert small_fc.unit_mu.shape == (4,) and small_fc.weight_mu.shape == (4, 27)
    path = save_model(result.model, tmp_path / "small.safetensors")
    back = load_model(path)
    with use_posterior_mean(back), use_posterior_mean(result.model):
        torch.testing.assert_close(back(x), result.model(x))


def test_training_makes_an_unused_unit_pure_noise():
    """A hidden unit the output never reads gains nothing from a precise scale: the KL
    drives its log α up, while the units the likelihood needs stay precise."""
    torch.manual_seed(0)
    x = torch.randn(512, 4)
    y = (x[:, 0] + x[:, 1] > 0).long()
    model = convert(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)), "sparse_vd_group")
    mask = torch.ones_like(model[2].weight_mu)
    mask[:, 5] = 0  # unit 5 of the hidden layer is never read
    model[2].set_weight_mask(mask)
    before = model[0].unit_log_alpha().clone()
    kl_before = float(kl(model).detach())
    fit(model, (x, y), epochs=40, lr=1e-2, batch_size=128, seed=0, progress=False)
    after = model[0].unit_log_alpha()
    assert after[5] > before[5] + 4  # pushed towards noise
    assert float(kl(model).detach()) < kl_before
    with use_posterior_mean(model):
        accuracy = (model(x).argmax(1) == y).double().mean()
    assert accuracy > 0.9


@pytest.mark.parametrize("cls", [GroupSparseVDLinear, GroupSparseVDConv2d])
def test_gradients_finite_at_extreme_scales(cls):
    layer = cls(3, 2) if cls is GroupSparseVDLinear else cls(3, 2, 1)
    layer = layer.double()
    with torch.no_grad():
        layer.unit_rho.copy_(torch.tensor([-40.0, 30.0]))
        layer.unit_mu[1] = 0.0
    x = torch.randn(4, 3, dtype=torch.float64)
    x = x if cls is GroupSparseVDLinear else x[:, :, None, None]
    (layer(x).sum() + layer.kl()).backward()
    assert torch.isfinite(layer.unit_mu.grad).all() and torch.isfinite(layer.unit_rho.grad).all()


def test_weight_log_alpha_reads_the_unit_noise_and_pruned_weights_read_the_maximum():
    layer = GroupSparseVDLinear(4, 3).double()
    quiet = layer.log_alpha().clone()
    with torch.no_grad():
        layer.unit_rho[1] = 5.0  # unit 1's scale turns noisy: so do its weights
    noisy = layer.log_alpha()
    # α of z·w is (1 + α_w)(1 + α_z) − 1 ≥ α_z: a weight is at least as noisy as its unit
    assert (noisy[1] >= layer.unit_log_alpha()[1] - 1e-9).all() and (noisy[1] > quiet[1]).all()
    assert layer.unit_log_alpha()[1] > 3
    torch.testing.assert_close(noisy[[0, 2]], quiet[[0, 2]])
    mask = torch.ones(3, 4, dtype=torch.float64)
    mask[2, :2] = 0
    layer.set_weight_mask(mask)
    assert (layer.log_alpha()[2, :2] == LOG_ALPHA_MAX).all()


def test_unit_score_reads_each_unit_scale_and_leaves_out_layers_without_one():
    model = _lenet()
    model[0] = nn.Conv2d(1, 4, 3).double()  # a plain layer has no unit scale
    with torch.no_grad():
        model[3].unit_rho[2] = 10.0  # channel 2 of conv2: pure noise
    scores = unit_scores(model, "unit_log_alpha")
    assert set(scores) == {"3", "6"}  # not the plain conv, not the output layer
    torch.testing.assert_close(scores["3"], -model[3].unit_log_alpha())
    assert int(scores["3"].argmin()) == 2
    with pytest.raises(ValueError, match="sparse_vd_group"):
        unit_scores(convert(nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)), "sparse_vd"),
                    "unit_log_alpha")  # fmt: skip


def test_self_compression_by_unit_scale_removes_the_noisy_units_first():
    model = _lenet()
    with torch.no_grad():
        model[3].unit_rho[[1, 4]] = 10.0  # conv2 channels 1 and 4: noise
        model[6].unit_rho[0] = 10.0  # fc unit 0: noise
    before = {"3": model[3].unit_mu[[0, 2, 3]].clone(), "6": model[6].unit_mu[1:].clone()}
    result = self_compress(
        model,
        lambda m: {"accuracy": 1.0},
        input_shape=(1, 12, 12),
        score="unit_log_alpha",
        rel_threshold=0.5,  # 1 / (1 + α): about 1 for a kept unit, about 0 for noise
        max_rounds=1,
    )
    small = result.model
    assert result.accepted.removed == {"0": 0, "3": 2, "6": 1}
    torch.testing.assert_close(small[3].unit_mu, before["3"])
    torch.testing.assert_close(small[6].unit_mu, before["6"])


# -- scales on the inputs (scale_on="in"; Bayesian Compression's layout for dense layers)


def _lenet_bc() -> nn.Module:
    """The small LeNet with convs scaled per output channel and linears per input."""
    return _lenet(scale_on={"conv": "out", "linear": "in"})


def test_scale_mapping_puts_conv_scales_on_outputs_and_linear_scales_on_inputs():
    model = _lenet_bc()
    assert [model[i].scale_on for i in (0, 3, 6, 8)] == ["out", "out", "in", "in"]
    assert model[6].unit_mu.shape == (45,) and model[8].unit_mu.shape == (6,)
    assert model[6].unit_log_alpha() is None  # no scale of its own units
    assert set(unit_scores(model, "unit_log_alpha")) == {"0", "3"}
    with pytest.raises(ValueError, match="'conv' and / or 'linear'"):
        convert(nn.Sequential(nn.Linear(3, 2)), "sparse_vd_group", scale_on={"dense": "in"})
    with pytest.raises(ValueError, match="scale_on must be one of"):
        GroupSparseVDLinear(3, 2, scale_on="both")
    with pytest.raises(ValueError, match="ungrouped convolution"):
        GroupSparseVDConv2d(4, 4, 3, groups=4, scale_on="in")


def test_input_scale_training_pass_has_the_moments_of_the_effective_weights():
    layer = _randomise_units(GroupSparseVDLinear(3, 2, scale_on="in").double())
    with torch.no_grad():
        layer.weight_rho.fill_(-1.5)
        layer.unit_rho.fill_(-1.0)
    x = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64).expand(100_000, 3)
    with torch.no_grad():
        draws = layer(x)
    post = layer.posterior()
    mean = x[0] @ post.weight_mean.T + post.bias_mean
    var = x[0].square() @ post.weight_std.square().T + post.bias_std.square()
    torch.testing.assert_close(draws.mean(0), mean, rtol=0.02, atol=0.01)
    torch.testing.assert_close(draws.var(0), var, rtol=0.03, atol=1e-4)
    # the bias is not scaled, the weights are scaled along their input axis
    torch.testing.assert_close(post.bias_mean, layer.bias_mu.detach())
    torch.testing.assert_close(post.weight_mean, (layer.weight_mu * layer.unit_mu).detach())


def test_conv_input_scale_is_one_draw_per_example_and_input_channel():
    conv = _randomise_units(GroupSparseVDConv2d(1, 3, 3, scale_on="in").double())
    with torch.no_grad():
        conv.weight_rho.fill_(-40.0)  # only the input channel's scale varies
        conv.bias_rho.fill_(-40.0)
        conv.unit_rho.fill_(0.0)
    x = torch.rand(64, 1, 7, 7, dtype=torch.float64) + 0.5
    with torch.no_grad():
        y = conv(x)
        plain = to_deterministic(conv)(x)
        bias = conv.bias_mu.view(1, -1, 1, 1)
    ratio = ((y - bias) / (plain - bias) * conv.unit_mu).flatten(1)  # = z / μ per example
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))
    assert ratio[:, 0].std() > 0.3


def test_noisy_input_scales_orphan_channels_and_units_and_shrink_round_trips(tmp_path):
    model = _lenet_bc()
    with torch.no_grad():
        model[6].unit_rho[9:18] = 10.0  # every flattened position of conv2's channel 1
        model[6].unit_rho[30] = 10.0  # one position of channel 3: the channel stays
        model[8].unit_rho[[0, 4]] = 10.0  # the output layer's inputs 0, 4: fc units 0, 4
    masks = {}
    for name in ("6", "8"):
        mask = torch.ones_like(model.get_submodule(name).weight_mu)
        mask[model.get_submodule(name).log_alpha() > 3] = 0
        masks[name] = mask
    assert masks["6"][:, 9:18].sum() == 0 and masks["8"][:, [0, 4]].sum() == 0
    apply_masks(model, masks)
    result = shrink(model, (1, 12, 12))
    x = torch.randn(6, 1, 12, 12, dtype=torch.float64)
    with use_posterior_mean(model), use_posterior_mean(result.model):
        torch.testing.assert_close(result.model(x), model(x), atol=1e-10, rtol=1e-8)
    assert result.architecture[1:4] == [4, 4, 4]
    assert result.model[6].unit_mu.shape == (36,) and result.model[8].unit_mu.shape == (4,)
    back = load_model(save_model(result.model, tmp_path / "small.safetensors"))
    assert back[6].scale_on == "in" and back[3].scale_on == "out"
    with use_posterior_mean(back), use_posterior_mean(result.model):
        torch.testing.assert_close(back(x), result.model(x))


def test_input_scales_of_a_first_layer_turn_irrelevant_features_to_noise():
    """Scales on the first layer's inputs select features: the columns that carry no
    signal lose their precision, the two that decide the label keep it."""
    torch.manual_seed(0)
    x = torch.randn(1024, 6)
    y = (x[:, 0] - x[:, 1] > 0).long()
    model = convert(
        nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2)),
        "sparse_vd_group",
        scale_on={"linear": "in"},
    )
    fit(model, (x, y), epochs=80, lr=1e-2, batch_size=128, seed=0, progress=False)
    noise = model[0].scale_log_alpha()
    assert noise[:2].max() < -3 and noise[2:].min() > 3  # kept / pruned at log α 3
    with use_posterior_mean(model):
        assert (model(x).argmax(1) == y).double().mean() > 0.95


def test_input_score_reads_the_first_layer_input_scales():
    model = convert(
        nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2)),
        "sparse_vd_group",
        scale_on={"linear": "in"},
    )
    with torch.no_grad():
        model[0].unit_rho[3] = 10.0
    ((name, score),) = input_scores(model, "log_alpha").items()
    assert name == "0" and int(score.argmin()) == 3
    torch.testing.assert_close(score, -model[0].scale_log_alpha())
    outputs = convert(nn.Sequential(nn.Linear(5, 2)), "sparse_vd_group")
    with pytest.raises(ValueError, match="no input scales"):
        input_scores(outputs, "log_alpha")
