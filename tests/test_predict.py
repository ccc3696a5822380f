"""predict(): Monte-Carlo and posterior-mean predictive, uncertainty split."""

import numpy as np
import pytest
import torch

import bayesprune as bp


def _model(rho=None):
    model = bp.mlp(3, [8], 4)
    if rho is not None:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "rho" in name:
                    p.fill_(rho)
    return model


def test_mean_mode_is_deterministic_and_mc_varies_with_seed():
    model, x = _model(rho=-1.0), torch.randn(20, 3)
    a = bp.predict(model, x, mode="mean")
    b = bp.predict(model, x, mode="mean")
    assert torch.equal(a.probs, b.probs)
    assert torch.allclose(a.mutual_information, torch.zeros(20, dtype=torch.float64))
    s1 = bp.predict(model, x, samples=10, seed=1)
    s2 = bp.predict(model, x, samples=10, seed=1)
    s3 = bp.predict(model, x, samples=10, seed=2)
    assert torch.equal(s1.probs, s2.probs) and not torch.equal(s1.probs, s3.probs)
    assert (s1.mutual_information > 0).all()
    assert torch.allclose(s1.probs.sum(-1), torch.ones(20, dtype=torch.float64))


def test_mc_matches_mean_when_the_posterior_is_a_point():
    model, x = _model(rho=-30.0), torch.randn(10, 3)
    mc = bp.predict(model, x, samples=5, keep_samples=True)
    mean = bp.predict(model, x, mode="mean")
    assert torch.allclose(mc.probs, mean.probs, atol=1e-6)
    assert mc.samples.shape == (5, 10, 4)


def test_regression_variance_adds_up():
    model = bp.mlp(2, [8], 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "rho" in name:
                p.fill_(-2.0)
    lik = bp.Gaussian(noise_std=0.5)
    x = torch.randn(30, 2)
    pred = bp.predict(model, x, samples=50, likelihood=lik, keep_samples=True)
    assert torch.allclose(pred.aleatoric, torch.full((30,), 0.25, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(pred.variance, pred.aleatoric + pred.epistemic)
    assert torch.allclose(pred.epistemic, pred.samples.var(0, unbiased=False))
    assert (pred.epistemic > 0).all()


def test_state_and_rng_are_restored_and_bad_mode_rejected():
    model, x = _model(), torch.randn(4, 3)
    model.train()
    torch.manual_seed(5)
    expected = torch.rand(2)
    torch.manual_seed(5)
    bp.predict(model, x, samples=3)
    assert torch.equal(torch.rand(2), expected)
    assert model.training and all(layer.sample for _, layer in bp.nn.variational_layers(model))
    with pytest.raises(ValueError, match=r"unknown PredictMode 'map'; valid: mc, mean"):
        bp.predict(model, torch.randn(4, 3), mode="map")


def test_batching_does_not_change_the_mean_prediction():
    model, x = _model(rho=-3.0), torch.randn(25, 3)
    whole = bp.predict(model, x, mode="mean", batch_size=100)
    parts = bp.predict(model, x, mode="mean", batch_size=7)
    assert torch.allclose(whole.probs, parts.probs)


class _MomentNet(torch.nn.Module):
    """Stands in for a moment-propagation network: returns (mean logits, covariance)."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(3, 4)

    def forward(self, x):
        mean = self.body(x)
        return mean, torch.eye(4).expand(len(x), 4, 4)


class _MomentLikelihood(bp.Categorical):
    def point_prediction(self, output):
        return output[0].softmax(-1)


def test_non_tensor_outputs_go_through_the_likelihood():
    model, x = _MomentNet(), torch.randn(6, 3)
    pred = bp.predict(model, x, mode="mean", likelihood=_MomentLikelihood())
    assert torch.allclose(pred.probs, model.body(x).softmax(-1).double().detach())
    with pytest.raises(TypeError, match="returns a tuple"):
        bp.predict(model, x, mode="mean")


def test_heteroscedastic_regression_with_a_point_posterior():
    model, x = bp.mlp(2, [8], 2), torch.randn(15, 2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "rho" in name:
                p.fill_(-30.0)
    pred = bp.predict(model, x, samples=4, likelihood="gaussian", seed=0)
    out = bp.to_deterministic(model)(x).double()
    noise = (torch.nn.functional.softplus(out[:, 1]) + 1e-6) ** 2
    assert torch.allclose(pred.mean, out[:, 0], atol=1e-5)
    assert torch.allclose(pred.aleatoric, noise, rtol=1e-4)
    assert torch.allclose(pred.epistemic, torch.zeros(15, dtype=torch.float64), atol=1e-10)


def test_inputs_are_cast_and_checked():
    model = _model(rho=-3.0)
    x = np.random.default_rng(0).normal(size=(5, 3))  # float64 array, float32 model
    pred = bp.predict(model, x, mode="mean")
    assert pred.probs.shape == (5, 4)
    assert torch.allclose(pred.probs, bp.predict(model, torch.tensor(x).float(), mode="mean").probs)
    x[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        bp.predict(model, x)
    with pytest.raises(ValueError, match="at least one example"):
        bp.predict(model, torch.zeros(0, 3))
    with pytest.raises(ValueError, match="batch_size"):
        bp.predict(model, torch.zeros(2, 3), batch_size=0)


def test_mc_respects_a_layer_held_at_its_mean():
    model, x = _model(rho=-1.0), torch.randn(8, 3)
    first, second = (layer for _, layer in bp.nn.variational_layers(model))
    first.sample = second.sample = False  # every layer held: mc collapses to the mean
    held = bp.predict(model, x, samples=4, seed=0)
    assert torch.allclose(held.probs, bp.predict(model, x, mode="mean").probs)
    assert torch.allclose(held.mutual_information, torch.zeros(8, dtype=torch.float64))
    assert not first.sample and not second.sample
    second.sample = True  # only the last layer samples
    assert (bp.predict(model, x, samples=4, seed=0).mutual_information > 0).all()


def test_shared_weight_sampling_gives_the_same_predictive_and_restores_the_layers():
    """One weight draw per batch and pass: each row's predictive is unchanged (it is
    the same posterior), only cheaper; the layers keep their own estimator afterwards."""
    torch.manual_seed(0)
    model = bp.models.mlp(6, [32], 3, family="gaussian", prior_scale=1.0, estimator="lrt")
    with torch.no_grad():
        for layer in model:
            if hasattr(layer, "weight_rho"):
                layer.weight_rho.fill_(-1.0)  # wide posteriors: a visible MC spread
    x = torch.randn(40, 6)
    lrt = bp.predict(model, x, samples=3000, seed=1, batch_size=8)
    shared = bp.predict(model, x, samples=3000, seed=1, batch_size=8, sampling="shared")
    assert torch.allclose(shared.probs, lrt.probs, atol=0.03)
    assert torch.allclose(shared.mutual_information, lrt.mutual_information, atol=0.03)
    assert not torch.allclose(shared.probs, lrt.probs, atol=1e-6)  # really another draw
    assert all(m.estimator == "lrt" for m in model if hasattr(m, "estimator"))
    with pytest.raises(ValueError, match="shared"):
        bp.predict(model, x, samples=2, sampling="per-weight")


def test_shared_sampling_draws_one_network_per_pass():
    """With sampling="shared" every batch of a pass uses the same weight draw: the
    result does not depend on the batch size, each pass is one network (a row predicted
    twice in a pass gets the same output), and no draw outlives the call."""
    torch.manual_seed(0)
    model = bp.models.lenet5_caffe(family="gaussian")
    x = torch.rand(12, 1, 28, 28)
    x[6:] = x[:6]  # every row twice, in different batches for batch_size=5
    small = bp.predict(model, x, samples=4, seed=3, batch_size=5, sampling="shared",
                       keep_samples=True)  # fmt: skip
    large = bp.predict(model, x, samples=4, seed=3, batch_size=12, sampling="shared",
                       keep_samples=True)  # fmt: skip
    assert torch.allclose(small.samples, large.samples, atol=1e-5)
    assert torch.allclose(small.samples[:, :6], small.samples[:, 6:], atol=1e-5)
    assert not torch.allclose(small.samples[0], small.samples[1], atol=1e-3)  # passes differ
    assert not any("_held_draw" in vars(m) for m in model.modules())
    mean = bp.predict(model, x, mode="mean", batch_size=5)
    with bp.nn.use_posterior_mean(model):  # grad on: the default layout, not channels-last
        reference = torch.softmax(model(x), dim=1).detach()
    assert torch.allclose(mean.probs.float(), reference, atol=1e-5)


class _ViewsItsFeatureMap(torch.nn.Module):
    """A user's CNN that flattens with `.view`, which a channels-last map refuses; two
    convolutions, so a layout passed on from one to the next would show."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.conv2 = torch.nn.Conv2d(4, 5, 3, padding=1)
        self.head = torch.nn.Linear(5 * 3 * 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)
        h = torch.relu(self.conv2(h))
        return self.head(h.view(h.size(0), -1))


def test_channels_last_is_opt_in_for_networks_that_view_their_feature_maps():
    torch.manual_seed(0)
    model = bp.convert(_ViewsItsFeatureMap(), "gaussian")
    x = torch.rand(10, 1, 8, 8)
    plain = bp.predict(model, x, samples=3, seed=0, sampling="shared")  # the default layout
    assert plain.probs.shape == (10, 3)
    with pytest.raises(ValueError, match="channels_last=False"):
        bp.predict(model, x, samples=3, seed=0, sampling="shared", channels_last=True)
    flat = bp.models.lenet5_caffe(family="gaussian")  # nn.Flatten: any layout
    images = torch.rand(6, 1, 28, 28)
    same = [
        bp.predict(flat, images, samples=3, seed=0, sampling="shared", channels_last=c).probs
        for c in (False, True)
    ]
    assert torch.allclose(same[0], same[1], atol=1e-5)
