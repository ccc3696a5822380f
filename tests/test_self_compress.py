"""Self-compression loop, eVI serialisation and export: tiny nets, few steps."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from _images import bars
from torch import nn

import bayesprune as bp
from bayesprune.compress import (
    export_onnx,
    load_model,
    save_model,
    self_compress,
    shrink,
)
from bayesprune.compress.self_compress import importances
from bayesprune.evaluation import scorer
from bayesprune.nn.moments import EVILikelihood, evi_cnn, to_torch

DT = torch.float64
SHAPE = (1, 8, 8)


def _evi(n: int = 6) -> nn.Sequential:
    torch.manual_seed(0)
    return evi_cnn(n, image_size=8, kernel_size=3, n_classes=3)


def _gaussian(n: int = 6) -> nn.Sequential:
    torch.manual_seed(0)
    plain = nn.Sequential(
        nn.Conv2d(1, n, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(n * 9, 3)
    )
    return bp.convert(plain, "gaussian")


def _zero_kernels(model: nn.Module, kernels: list[int]) -> None:
    with torch.no_grad():
        model[0].weight_mu[kernels] = 0.0


@pytest.mark.parametrize(
    ("build", "likelihood"),
    [(_evi, EVILikelihood()), (_gaussian, "categorical")],
    ids=["evi", "gaussian"],
)
def test_removes_the_kernels_zeroed_on_purpose(build, likelihood):
    model = build()
    _zero_kernels(model, [1, 4])
    val = bars(60, seed=1)
    result = self_compress(
        model, scorer(val, likelihood), input_shape=SHAPE, rel_threshold=0.01, tolerance=1.0
    )
    first = result.history[1]
    assert first.removed == {"0": 2} and first.units == {"0": 4} and first.accepted
    assert result.stopped == "no near-zero units" and len(result.history) == 2
    assert result.model[0].weight_mu.shape[0] == 4
    assert result.model[-2 if build is _evi else -1].in_features == 4 * 9
    assert model[0].weight_mu.shape[0] == 6  # the input model is untouched


def test_shrunk_evi_output_equals_the_masked_output():
    model = _evi().double()
    _zero_kernels(model, [0, 3])
    result = self_compress(
        model, scorer(bars(30), EVILikelihood()), input_shape=SHAPE, rel_threshold=0.01,
        tolerance=1.0,
    )  # fmt: skip
    mask = torch.ones_like(model[0].weight_mu)
    mask[[0, 3]] = 0  # mean AND variance of those kernels leave the network
    model[0].set_weight_mask(mask)
    x = torch.rand(4, *SHAPE, dtype=DT)
    with torch.no_grad():
        want, got = model(x), result.model(x)
    torch.testing.assert_close(got.mean, want.mean)
    torch.testing.assert_close(got.cov, want.cov)


def test_stops_on_tolerance_and_returns_the_last_accepted_model():
    model = _evi(8)

    def fake_accuracy(m: nn.Module) -> dict[str, float]:  # falls with every kernel removed
        return {"accuracy": m[0].weight_mu.shape[0] / 8}

    result = self_compress(model, fake_accuracy, input_shape=SHAPE, fraction=0.25, tolerance=0.3)
    kernels = [r.units["0"] for r in result.history]
    assert kernels == [8, 6, 4]
    assert [r.accepted for r in result.history] == [True, True, False]
    assert result.stopped == "tolerance" and result.baseline_accuracy == 1.0
    assert result.model[0].weight_mu.shape[0] == 6 and result.accepted.round == 1
    for before, after in zip(result.history, result.history[1:], strict=False):
        assert after.units["0"] == before.units["0"] - after.removed["0"]
        assert after.accuracy_pruned == after.accuracy  # no fine-tuning
    record = result.as_dict()
    assert record["final_units"] == {"0": 6} and len(record["history"]) == 3


def test_reference_holds_the_rounds_against_an_earlier_model_not_the_input():
    model = _evi(8)

    def fake(m: nn.Module) -> dict[str, float]:  # ECE grows by 0.01 per kernel removed
        return {"accuracy": 1.0, "ece": 0.01 * (8 - m[0].weight_mu.shape[0])}

    kwargs = dict(input_shape=SHAPE, fraction=0.25, max_rounds=3)
    own = self_compress(model, fake, tolerances={"accuracy": 0.1, "ece": 0.02}, **kwargs)
    assert [r.accepted for r in own.history] == [True, True, False]  # 0.02, then 0.04
    # held against an unpruned model whose ECE was 0.01 lower: the pipeline's total slack
    held = self_compress(
        model, fake, tolerances={"accuracy": 0.1, "ece": 0.02}, reference={"ece": -0.01}, **kwargs
    )
    assert [r.accepted for r in held.history] == [True, False]  # 0.02 > -0.01 + 0.02
    assert held.held_against == {"accuracy": 1.0, "ece": -0.01}
    assert held.as_dict()["held_against"]["ece"] == -0.01
    assert held.history[0].values["ece"] == 0.0  # round 0 records the input's own value
    with pytest.raises(ValueError, match=r"reference names \['nll'\]"):
        self_compress(model, fake, tolerances={"ece": 0.02}, reference={"nll": 0.1}, **kwargs)


def test_greedy_rounds_prune_the_layer_that_tolerates_it_and_spare_the_other():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    model = bp.convert(mlp, "gaussian")

    def fake_accuracy(m: nn.Module) -> dict[str, float]:  # layer "0" matters, "2" barely
        return {"accuracy": 1 - 0.1 * (8 - m[0].out_features) - 0.01 * (8 - m[2].out_features)}

    kwargs = dict(fraction=0.25, tolerance=0.1, max_rounds=10)
    plain = self_compress(model, fake_accuracy, **kwargs)
    assert plain.accepted.round == 0  # every round cuts both layers: the first one fails
    result = self_compress(model, fake_accuracy, greedy=True, **kwargs)
    widths = [(r.units["0"], r.units["2"]) for r in result.history]
    assert widths[: result.accepted.round + 1] == [(8, 8), (8, 6), (8, 4), (8, 3), (8, 2), (8, 1)]
    assert result.stopped == "tolerance" and widths[-1] == (6, 1)  # then only "0" was left
    assert (result.model[0].out_features, result.model[2].out_features) == (8, 1)


def test_fine_tuning_runs_and_history_is_consistent():
    model = _evi()
    train, val = bars(120), bars(60, seed=1)
    bp.fit(model, train, likelihood=EVILikelihood(), epochs=2, lr=1e-2, progress=False)
    likelihood = EVILikelihood()
    tuned = []

    def finetune(m: nn.Module) -> None:
        tuned.append(m[0].weight_mu.shape[0])
        bp.finetune(m, train, epochs=1, likelihood=likelihood, lr=1e-3, batch_size=32,
                    progress=False)  # fmt: skip

    result = self_compress(
        model, scorer(val, likelihood), finetune, input_shape=SHAPE, fraction=0.34,
        max_rounds=2, tolerance=1.0,
    )  # fmt: skip
    assert tuned == [3, 1]  # each round's shrunk model was fine-tuned
    assert result.stopped == "max_rounds" and len(result.history) == 3
    assert [r.units["0"] for r in result.history] == [6, 3, 1]
    assert all(0.0 <= r.accuracy <= 1.0 for r in result.history)
    assert result.history[0].accuracy == result.baseline_accuracy


def test_variance_score_removes_the_kernel_whose_posterior_stayed_wide():
    model = _evi()
    with torch.no_grad():
        model[0].weight_rho[2] = 5.0  # variance ~5 against ~2.5e-3 for the others
    imp = importances(model, "variance")["0"]
    assert int(imp.argmin()) == 2
    result = self_compress(
        model, scorer(bars(20), EVILikelihood()), input_shape=SHAPE, score="variance",
        rel_threshold=0.01, tolerance=1.0, max_rounds=1,
    )  # fmt: skip
    assert result.history[1].removed == {"0": 1}
    assert result.model[0].weight_mu.shape[0] == 5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rel_threshold": 0.1, "fraction": 0.2}, "not both"),
        ({"fraction": 1.5}, "fraction must be in"),
        ({"rel_threshold": 0.0}, "rel_threshold must be in"),
        ({"score": "pip"}, "valid: \\['activation', 'norm', 'snr', 'unit_log_alpha', 'var"),
        ({"tolerance": -0.1}, "tolerance must be >= 0"),
        ({"max_rounds": 0}, "max_rounds >= 1"),
    ],
)
def test_bad_arguments_give_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        self_compress(_evi(), scorer(bars(10), EVILikelihood()), input_shape=SHAPE, **kwargs)


def test_data_instead_of_callables_is_refused_with_the_fix():
    data = bars(10)
    with pytest.raises(TypeError, match="evaluate=.*scorer"):
        self_compress(_evi(), data, data, input_shape=SHAPE)
    with pytest.raises(TypeError, match="finetune=.*bayesprune.finetune"):
        self_compress(_evi(), scorer(data, EVILikelihood()), data, input_shape=SHAPE)
    with pytest.raises(TypeError, match="must return a dict"):
        self_compress(_evi(), lambda m: 0.5, input_shape=SHAPE, rel_threshold=0.01)


def test_a_net_with_only_an_output_layer_is_refused():
    data = (torch.randn(10, 4), torch.randint(0, 2, (10,)))
    with pytest.raises(ValueError, match="no hidden prunable layer"):
        self_compress(nn.Sequential(nn.Linear(4, 2)), scorer(data))


# -- serialisation and export of (self-compressed) eVI nets ---------------------------------------
def _compressed_evi() -> nn.Sequential:
    model = _evi()
    _zero_kernels(model, [2, 5])
    keep = torch.tensor([True, True, False, True, True, False])
    small = shrink(model, SHAPE, prune_units={"0": keep}).model
    assert small[0].weight_mu.shape[0] == 4
    return small


def test_evi_round_trip_keeps_moments_and_masks(tmp_path):
    model = _compressed_evi().double()
    mask = torch.ones_like(model[4].weight_mu)
    mask[:, :5] = 0
    model[4].set_weight_mask(mask)
    loaded = load_model(save_model(model, tmp_path / "evi.safetensors"))
    x = torch.rand(3, *SHAPE, dtype=DT)
    with torch.no_grad():
        want, got = model(x), loaded(x)
    assert torch.equal(got.mean, want.mean) and torch.equal(got.cov, want.cov)
    assert loaded[0].out_channels == 4 and loaded[0].covariance == model[0].covariance
    assert torch.equal(loaded[4].weight_mask, mask)


def test_evi_to_torch_and_onnx_give_the_mean_network(tmp_path):
    model = _compressed_evi()
    plain = to_torch(model)
    assert all(type(m).__module__.startswith("torch.nn") for m in plain)
    x = torch.rand(5, *SHAPE)
    with torch.no_grad():
        mean = model(x).mean
        torch.testing.assert_close(plain(x), mean)
        reloaded = load_model(save_model(plain, tmp_path / "plain.safetensors"))
        torch.testing.assert_close(reloaded(x), mean)
    path = export_onnx(model, tmp_path / "evi.onnx", SHAPE)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, mean.numpy(), atol=1e-5, rtol=1e-5)


def test_cli_compresses_shrinks_and_exports_an_evi_run(tmp_path):
    import yaml
    from click.testing import CliRunner

    from bayesprune.cli import main

    config = {
        "data": {"name": "mnist", "limit": 200, "test_limit": 100, "val_fraction": 0.25},
        "model": {"builder": "evi_cnn", "family": "evi", "kwargs": {"n_kernels": 4}},
        "train": {"epochs": 1, "batch_size": 50, "lr": 0.01},
        "compress": {"score": "norm", "rule": "global", "sparsity": 0.5, "shrink": True},
    }
    path = tmp_path / "evi.yaml"
    path.write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    for args in (["train", str(path), "--out", str(run), "--quiet"], ["compress", str(run),
                 "--quiet"], ["export", str(run)]):  # fmt: skip
        result = CliRunner().invoke(main, [*args, "--threads", "1"])
        assert result.exit_code == 0, result.output
    compressed = load_model(run / "compressed" / "model.safetensors")
    assert compressed[0].weight_mu.shape[0] == 2  # half the kernels left, physically
    plain = load_model(run / "export" / "model.safetensors")
    x = torch.rand(3, 1, 28, 28)
    session = ort.InferenceSession(str(run / "export" / "model.onnx"))
    with torch.no_grad():
        want = compressed(x).mean
        torch.testing.assert_close(plain(x), want)
    # the eVI mean network ends in probabilities: the deployed ONNX returns them as they are
    np.testing.assert_allclose(session.run(None, {"input": x.numpy()})[0], want.numpy(), atol=1e-5)
