"""Evidence screen: an interaction-only feature is found, noise columns are not."""

import copy
import math

import numpy as np
import pytest
import torch

from bayesprune.likelihoods import make_likelihood
from bayesprune.models import mlp
from bayesprune.nn import kl as model_kl
from bayesprune.nn.gaussian import inverse_softplus
from bayesprune.screen import screen_features
from bayesprune.screen_batched import StackedMLP, Training, paired_gains


def _interaction_data(n: int, p: int, seed: int, task: str):
    """x1 acts only with x0 (no main effect: its effect is odd in x0); the rest is noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, p, generator=g) * 2 - 1
    if task == "regression":
        y = 6 * x[:, 0] * x[:, 1].abs() + 2 * x[:, 0] + 0.3 * torch.randn(n, generator=g)
        return x, y
    return x, (x[:, 0] * x[:, 1] > 0).long()  # XOR: neither feature alone predicts y


@pytest.mark.parametrize(
    ("task", "likelihood"), [("regression", "gaussian"), ("classification", "categorical")]
)
def test_screen_adds_the_interacting_feature_and_no_noise(task, likelihood):
    x, y = _interaction_data(600, 16, seed=0, task=task)
    result = screen_features(
        (x, y), [0], likelihood=likelihood, hidden=(8,), epochs=60, min_steps=0, lr=2e-2, seed=0
    )
    assert result.candidates == list(range(1, 16))
    assert result.gains.shape == (15,) and np.isfinite(result.gains).all()
    assert int(np.argmax(result.gains)) == 0  # candidate x1 has the largest evidence gain
    assert result.added == [1]  # and is the only one added
    assert result.features == [0, 1]
    assert result.gains[0] > result.min_gain and result.z[0] > result.z_critical
    record = result.as_dict()
    assert record["top"][0]["feature"] == 1 and record["added"] == [1]


def test_screen_with_nothing_selected_finds_main_effects():
    x, y = _interaction_data(600, 16, seed=1, task="regression")
    result = screen_features((x, y), [], hidden=(8,), epochs=60, min_steps=0, lr=2e-2, seed=0)
    assert 0 in result.added  # x0 has a main effect: found from an empty start
    assert not set(result.added) - {0, 1}


def test_screen_rejects_bad_requests():
    x, y = _interaction_data(50, 4, seed=0, task="regression")
    with pytest.raises(ValueError, match="both selected and candidates"):
        screen_features((x, y), [0], candidates=[0, 1])
    with pytest.raises(ValueError, match="out of range"):
        screen_features((x, y), [7])
    with pytest.raises(ValueError, match="no candidate"):
        screen_features((x, y), [0, 1, 2, 3])
    with pytest.raises(ValueError, match="tabular"):
        screen_features((x.reshape(50, 2, 2), y), [0])
    with pytest.raises(ValueError, match="alpha"):
        screen_features((x, y), [0], alpha=1.5)
    with pytest.raises(ValueError, match="rounds"):
        screen_features((x, y), [0], rounds=0)


def test_a_later_round_finds_the_feature_that_needs_an_added_one():
    """y = 3·x0 + 8·x0·|x1| + 5·x1·x2: from S = {x0}, x2 has no effect until x1 is in."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1200, 12, generator=g) * 2 - 1
    y = 3 * x[:, 0] + 8 * x[:, 0] * x[:, 1].abs() + 5 * x[:, 1] * x[:, 2]
    y = y + 0.3 * torch.randn(1200, generator=g)
    kwargs = {"hidden": (16,), "epochs": 60, "min_steps": 0, "lr": 2e-2, "seed": 0}
    one = screen_features((x, y), [0], rounds=1, **kwargs)
    assert one.added == [1] and one.rounds == [[1]]
    two = screen_features((x, y), [0], rounds=2, **kwargs)
    assert two.rounds == [[1], [2]] and two.features == [0, 1, 2]


def test_small_data_gets_enough_steps_to_see_a_main_effect():
    """120 rows are one batch: 20 epochs are 20 steps, too few for the extra weights to
    leave their initial KL; min_steps trains on until x1's main effect shows."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(120, 10, generator=g) * 2 - 1
    y = 3 * x[:, 0] + x[:, 1] + 0.3 * torch.randn(120, generator=g)
    kwargs = {"hidden": (16,), "epochs": 20, "lr": 2e-2, "seed": 0}
    short = screen_features((x, y), [0], min_steps=0, **kwargs)
    assert short.added == [] and short.gains[0] < 0  # x1's gain is still the KL it costs
    assert screen_features((x, y), [0], **kwargs).added == [1]


def test_the_callers_random_state_is_left_alone():
    x, y = _interaction_data(200, 6, seed=0, task="regression")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    screen_features((x, y), [0], hidden=(4,), epochs=2, min_steps=0, seed=5)
    assert torch.equal(torch.rand(3), expected)


# -- the batched implementation against one network at a time ---------------------------


def _member_reference_forward(template, w_row, shapes, x):
    """The template's own layers, posterior mean set to one member's weight draw."""
    from bayesprune.nn import use_posterior_mean

    net = copy.deepcopy(template)
    layers = [m for m in net if hasattr(m, "weight_mu")]
    start = 0
    with torch.no_grad():
        for layer, (w_shape, b_shape) in zip(
            layers, zip(shapes[::2], shapes[1::2], strict=True), strict=True
        ):
            for param, shape in ((layer.weight_mu, w_shape), (layer.bias_mu, b_shape)):
                size = math.prod(shape)
                param.copy_(w_row[start : start + size].view(shape))
                start += size
        with use_posterior_mean(net):
            return net(x)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_batched_forward_equals_each_members_own_forward(activation):
    torch.manual_seed(0)
    templates = [mlp(4, (6, 5), 1, activation=activation) for _ in range(2)]  # two groups
    model = StackedMLP(templates, 5, make_likelihood("gaussian"), 1.0)
    with torch.no_grad():  # members that differ, with sigmas well away from zero
        model.flat.add_(0.3 * torch.randn_like(model.flat))
    eps = torch.randn(2, model.size)
    w, kl = model.draw(eps)
    x_s, x_c = torch.randn(2, 3, 11), torch.randn(10, 1, 11)  # 3 columns of S + one extra
    out = model.forward(x_s, x_c, w)
    assert out.shape == (10, 1, 11)
    for r in range(10):
        g = r // 5
        x = torch.cat([x_s[g].t(), x_c[r].t()], 1)  # [rows, |S| + 1]
        expected = _member_reference_forward(templates[g], w[r], model.shapes, x)
        torch.testing.assert_close(out[r, 0], expected[:, 0], atol=1e-5, rtol=1e-5)
        mu, rho = model.flat[r, : model.size], model.flat[r, model.size : 2 * model.size]
        sigma = torch.nn.functional.softplus(rho)
        torch.testing.assert_close(w[r], mu + sigma * eps[g])
        closed_form = (torch.log(1 / sigma) + (sigma**2 + mu**2) / 2 - 0.5).sum()
        torch.testing.assert_close(kl[r], closed_form, atol=1e-4, rtol=1e-5)


def _one_network_at_a_time(x, y, selected, candidates, how, seed, held_out=None):
    """The paired algorithm run member by member with the library's own layers.

    Every member is seeded alike, so its layers draw the same weight noise from the
    global stream and its rows come in the same order: the pairing of the batched run.
    """
    train_rows = torch.arange(len(x)) if held_out is None else torch.nonzero(~held_out).flatten()
    n = len(train_rows)
    scores = []
    for c in [*candidates, None]:  # None: the baseline (extra column zero, weights at the prior)
        torch.manual_seed(seed)
        net = mlp(len(selected) + 1, how.hidden, how.out_features, activation=how.activation)
        lik = make_likelihood("gaussian")
        if c is None:
            with torch.no_grad():
                net[0].weight_mu[:, -1] = 0.0
                net[0].weight_rho[:, -1] = inverse_softplus(torch.tensor(1.0))
        cols = [*selected, c if c is not None else 0]

        def inputs(rows, c=c, cols=cols):
            xb = x[rows][:, cols].clone()
            if c is None:
                xb[:, -1] = 0.0
            return xb

        optimizer = torch.optim.Adam([*net.parameters(), *lik.parameters()], lr=how.lr)
        order = torch.Generator().manual_seed(seed)
        for _ in range(how.epochs):
            perm = train_rows[torch.randperm(n, generator=order)]
            for start in range(0, n, how.batch_size):
                rows = perm[start : start + how.batch_size]
                loss = lik.nll(net(inputs(rows)), y[rows]) + model_kl(net) / n
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        with torch.no_grad():
            rows = train_rows if held_out is None else torch.nonzero(held_out).flatten()
            log_lik = []
            for _ in range(how.mc_samples):
                mean, var = lik.mean_and_variance(net(inputs(rows)))
                log_lik.append(-0.5 * (torch.log(2 * math.pi * var) + (y[rows] - mean) ** 2 / var))
            log_lik = torch.stack(log_lik)
            if held_out is None:
                scores.append(float(log_lik.sum(1).mean() - model_kl(net)))  # ELBO
            else:
                lpd = torch.logsumexp(log_lik, 0) - math.log(how.mc_samples)
                scores.append(float(lpd.sum()))
    return np.array(scores[:-1]) - scores[-1]


def test_batched_gains_equal_one_network_at_a_time():
    """Stage 1 (ELBO gains) and stage 2 (held-out gains, three folds as groups of one
    run) of the batched implementation equal the paired algorithm run one network at a
    time with the library's own Bayesian layers, to float rounding."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(241, 5, generator=g) * 2 - 1  # folds of 81, 80, 80 rows: two schedules
    y = 2 * x[:, 0] + 3 * x[:, 0] * x[:, 2].abs() + 0.3 * torch.randn(241, generator=g)
    how = Training(
        likelihood=make_likelihood("gaussian"), out_features=1, hidden=(6, 4),
        activation="relu", epochs=4, min_steps=0, lr=2e-2, batch_size=64, mc_samples=3,
    )  # fmt: skip
    selected, candidates = [0], [1, 2, 3, 4]
    gains = paired_gains(x, y, selected, candidates, how, [5])[0].numpy()
    expected = _one_network_at_a_time(x, y, selected, candidates, how, 5)
    np.testing.assert_allclose(gains, expected, atol=2e-3 * np.abs(expected).max())
    fold = torch.arange(241) % 3
    masks, seeds = [fold == k for k in range(3)], [11, 12, 13]
    held = paired_gains(x, y, selected, candidates, how, seeds, masks).numpy()
    for k in range(3):
        expected = _one_network_at_a_time(x, y, selected, candidates, how, seeds[k], masks[k])
        np.testing.assert_allclose(held[k], expected, atol=2e-3 * np.abs(expected).max())
