"""The evaluation scorer: brute-force numbers on tiny float64 nets, modes, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import bayesprune as bp
from bayesprune import metrics
from bayesprune.data import as_xy
from bayesprune.evaluation import DEFAULT_METRICS, EvalMode, evaluate, scorer
from bayesprune.nn.moments import EVILikelihood, evi_cnn

DT = torch.float64


def _classifier(rho: float = -2.0) -> nn.Module:
    torch.manual_seed(0)
    model = bp.mlp(3, [8], 4).to(DT)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "rho" in name:
                p.fill_(rho)
    return model


def _data(n: int = 50, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g, dtype=DT), torch.randint(0, 4, (n,), generator=g)


def test_mean_mode_equals_the_posterior_mean_network_by_hand():
    model, (x, y) = _classifier(), _data()
    with torch.no_grad():
        logits = bp.to_deterministic(model)(x)  # the network at its posterior means
    probs = logits.softmax(-1)
    onehot = F.one_hot(y, 4).to(DT)
    got = evaluate(model, (x, y), mode="mean", batch_size=7)
    assert list(got) == list(DEFAULT_METRICS["classification"])
    assert got["accuracy"] == pytest.approx(float((logits.argmax(-1) == y).double().mean()))
    assert got["nll"] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-12)
    assert got["brier"] == pytest.approx(float(((probs - onehot) ** 2).sum(-1).mean()), rel=1e-12)
    assert got["mean_mutual_information"] == pytest.approx(0.0, abs=1e-12)


def test_mc_mode_equals_predict_and_metrics_with_the_same_seed():
    model, (x, y) = _classifier(rho=-1.0), _data()
    score = scorer((x, y), mode="mc", samples=6, seed=3, batch_size=16, bins=5)
    pred = bp.predict(model, x, mode="mc", samples=6, seed=3, batch_size=16)
    want = {
        "accuracy": metrics.accuracy(pred.probs, y),
        "nll": metrics.nll(pred.probs, y),
        "ece": metrics.ece(pred.probs, y, n_bins=5),
        "brier": metrics.brier(pred.probs, y),
        "mean_entropy": float(pred.entropy.mean()),
        "mean_mutual_information": float(pred.mutual_information.mean()),
    }
    assert score(model) == want
    assert score(model) == want  # the seed makes every call repeat
    assert want["mean_mutual_information"] > 0  # and MC really sampled
    other = scorer((x, y), mode=EvalMode.MC, samples=6, seed=4, batch_size=16)(model)
    assert other["nll"] != want["nll"]


def test_regression_mean_mode_by_hand():
    torch.manual_seed(0)
    model = bp.mlp(3, [5], 1).to(DT)
    x, _ = _data(40)
    y = x[:, 0] * 2 - 1
    likelihood = bp.Gaussian(noise_std=0.5).to(DT)
    with torch.no_grad():
        f = bp.to_deterministic(model)(x)[:, 0]
    var = (F.softplus(likelihood.noise_rho) + 1e-6) ** 2
    got = evaluate(model, (x, y), likelihood, metrics=["rmse", "nll", "mean_epistemic_variance"])
    assert list(got) == ["rmse", "nll", "mean_epistemic_variance"]
    assert got["rmse"] == pytest.approx(float(((f - y) ** 2).mean().sqrt()), rel=1e-12)
    nll = 0.5 * (math.log(2 * math.pi) + var.log() + (y - f) ** 2 / var)
    assert got["nll"] == pytest.approx(float(nll.mean()), rel=1e-12)
    assert got["mean_epistemic_variance"] == 0.0  # one pass: no spread


def test_evi_mean_mode_scores_the_moment_predictive():
    torch.manual_seed(0)
    model = evi_cnn(3, image_size=8, kernel_size=3, n_classes=3)
    x, y = torch.rand(12, 1, 8, 8), torch.randint(0, 3, (12,))
    with torch.no_grad():
        mean_probs = model(x).mean  # the propagated mean of the softmax
    got = evaluate(model, (x, y), EVILikelihood(), metrics=["accuracy", "error_pct"])
    accuracy = float((mean_probs.argmax(-1) == y).double().mean())
    assert got == pytest.approx({"accuracy": accuracy, "error_pct": 100 * (1 - accuracy)})


def test_the_model_state_and_the_callers_rng_are_left_alone():
    model, data = _classifier(), _data()
    model.train()
    torch.manual_seed(5)
    before = torch.get_rng_state()
    scorer(data, mode="mc", samples=3)(model)
    assert model.training and torch.equal(torch.get_rng_state(), before)


def test_fit_records_what_the_scorer_gives_for_its_validation_data():
    model, train, val = _classifier(), _data(60), _data(30, seed=2)
    model.float()
    train = (train[0].float(), train[1])
    val = (val[0].float(), val[1])
    history = bp.fit(model, train, val, epochs=2, batch_size=20, progress=False)
    want = evaluate(model, val, metrics=["nll", "accuracy"])
    assert history.last()["val_nll"] == want["nll"]
    assert history.last()["val_accuracy"] == want["accuracy"]


def test_every_data_form_gives_the_same_scores():
    model, (x, y) = _classifier(), _data()

    class Items(Dataset):
        def __len__(self) -> int:
            return len(y)

        def __getitem__(self, i: int):
            return x[i], int(y[i])

    forms = [(x, y), (x.numpy(), y.numpy()), TensorDataset(x, y), Items(),
             DataLoader(TensorDataset(x, y), batch_size=8)]  # fmt: skip
    scores = [evaluate(model, form, metrics=["accuracy", "nll"]) for form in forms]
    assert all(s == scores[0] for s in scores[1:])


def test_as_xy_keeps_tensors_and_refuses_bad_data():
    x, y = _data(5)
    got = as_xy(TensorDataset(x, y))
    assert got[0] is x and got[1] is y
    assert as_xy((x, y))[0].dtype == DT  # no downcast: predict casts to the model's dtype
    with pytest.raises(ValueError, match="5 rows but y has 4"):
        as_xy((x, y[:4]))
    with pytest.raises(ValueError, match="NaN or inf"):
        as_xy((x.clone().fill_(float("nan")), y))
    with pytest.raises(ValueError, match="yields no batches"):
        as_xy(DataLoader(TensorDataset(x[:0], y[:0]), batch_size=2))


def test_bad_options_name_the_valid_choices():
    data = _data(5)
    with pytest.raises(ValueError, match=r"unknown PredictMode 'median'; valid: mc, mean"):
        scorer(data, mode="median")
    with pytest.raises(ValueError, match=r"unknown classification metrics \['rmse'\]; valid:"):
        scorer(data, metrics=["accuracy", "rmse"])
    with pytest.raises(ValueError, match="samples, batch_size and bins must be >= 1"):
        scorer(data, samples=0)
    assert EvalMode("mc") is EvalMode.MC and EvalMode.MEAN == "mean"
