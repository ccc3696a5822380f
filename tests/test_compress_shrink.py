"""shrink(): the smaller model computes exactly what the masked model computes."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn

from bayesprune import convert, mlp, to_deterministic
from bayesprune.compress import (
    SelectInputs,
    apply_masks,
    global_sparsity_masks,
    input_weight_masks,
    prune,
    shrink,
    unit_weight_masks,
    weight_scores,
)
from bayesprune.nn import SpikeSlabLinear, use_posterior_mean, variational_layers

TOL = 1e-5


def _out(model: nn.Module, x: Tensor) -> Tensor:
    model.eval()
    with torch.no_grad(), use_posterior_mean(model):
        return model(x)


def _assert_same(masked: nn.Module, shrunk: nn.Module, x: Tensor) -> None:
    torch.testing.assert_close(_out(shrunk, x), _out(masked, x), atol=TOL, rtol=TOL)


def _weights(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(2, 6, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 5, 3),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(5 * 2 * 2, 7),
        nn.Sigmoid(),
        nn.Linear(7, 3),
    ).double()


def _kill_units(model: nn.Module, layer: str, units: list[int]) -> None:
    """Mask every incoming weight of `units` and give them a clearly non-zero bias."""
    target = model.get_submodule(layer)
    n = (target.weight_mu if hasattr(target, "weight_mu") else target.weight).shape[0]
    keep = torch.ones(n)
    keep[units] = 0.0
    apply_masks(model, unit_weight_masks(model, {layer: keep}))
    with torch.no_grad():
        bias = target.bias_mu if hasattr(target, "bias_mu") else target.bias
        bias[units] = torch.linspace(0.5, 1.5, len(units), dtype=bias.dtype)


@pytest.mark.parametrize("family", ["gaussian", "deterministic", "sparse_vd"])
@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_mlp_shrunk_equals_masked(family, activation):
    model = mlp(10, [12, 8], 3, family=family, activation=activation).double()
    apply_masks(model, global_sparsity_masks(weight_scores(model, "snr"), 0.8))
    _kill_units(model, "0", [1, 4])  # positive bias: sigmoid(b) ≠ 0 and relu(b) ≠ 0
    result = shrink(model)
    x = torch.randn(16, 10, dtype=torch.float64)
    _assert_same(model, result.model, x)
    assert not {1, 4} & set(result.layers[0].kept_units)
    assert result.layers[0].folded_units >= 1  # (a dead unit may also be orphaned: no fold)
    assert result.layers[-1].units_after == 3
    assert _weights(result.model) < _weights(model)
    assert result.max_abs_difference is not None and result.max_abs_difference < TOL
    assert result.architecture[-1] == 3


@pytest.mark.parametrize("bayesian", [True, False])
def test_cnn_shrunk_equals_masked_across_pool_and_flatten(bayesian):
    model = convert(_cnn()) if bayesian else _cnn()
    apply_masks(model, global_sparsity_masks(weight_scores(model, "snr"), 0.6))
    _kill_units(model, "0", [0, 3])  # dead kernels: relu(b) > 0 → folded into conv 3
    _kill_units(model, "3", [2])  # dead kernel before Flatten: tanh(b) over 4 columns
    _kill_units(model, "6", [5])
    result = shrink(model, (2, 10, 10))
    x = torch.randn(8, 2, 10, 10, dtype=torch.float64)
    _assert_same(model, result.model, x)
    by_name = {r.name: r for r in result.layers}
    assert [r.folded_units for r in result.layers] == [2, 1, 1, 0]
    assert by_name["0"].units_after <= 4 and by_name["3"].units_after <= 4
    assert by_name["6"].inputs_after == by_name["3"].units_after * 4  # H·W = 2·2 per channel
    assert _weights(result.model) < _weights(model)


def test_torch_pruned_plain_model_shrinks():
    from torch.nn.utils import prune

    model = mlp(8, [10, 6], 3, family="deterministic").double()
    params = [(model[i], "weight") for i in (0, 2, 4)]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=0.85)
    result = shrink(model)
    assert _weights(result.model) < _weights(model)
    _assert_same(model, result.model, torch.randn(6, 8, dtype=torch.float64))


def test_orphaned_units_go_and_inputs_are_selected():
    model = mlp(6, [5, 4], 2, family="gaussian").double()
    w0 = torch.ones(5, 6)
    w0[:, [1, 4]] = 0  # inputs 1 and 4 feed nothing
    w1 = torch.ones(4, 5)
    w1[:, 3] = 0  # unit 3 of layer 0 feeds nothing
    apply_masks(model, {"0": w0, "2": w1})
    result = shrink(model)
    assert result.input_features == [0, 2, 3, 5]
    assert result.layers[0].kept_units == [0, 1, 2, 4]
    assert result.architecture == [4, 4, 4, 2]
    assert isinstance(result.model[0], SelectInputs)  # still takes all 6 features
    x = torch.randn(5, 6, dtype=torch.float64)
    _assert_same(model, result.model, x)
    bare = shrink(model, gather_inputs=False).model
    torch.testing.assert_close(_out(bare, x[:, [0, 2, 3, 5]]), _out(model, x))


def test_posterior_is_kept_for_the_remaining_weights():
    model = mlp(5, [6], 2, family="gaussian").double()
    with torch.no_grad():
        model[0].weight_rho.uniform_(-5, -1)
        model[0].bias_rho.uniform_(-5, -1)
    _kill_units(model, "0", [2])
    result = shrink(model)
    kept = torch.tensor(result.layers[0].kept_units)
    assert kept.tolist() == [0, 1, 3, 4, 5]
    torch.testing.assert_close(result.model[0].weight_rho, model[0].weight_rho[kept])
    torch.testing.assert_close(result.model[0].bias_rho, model[0].bias_rho[kept])
    assert any(True for _ in variational_layers(result.model))
    plain = to_deterministic(result.model)
    assert not any(True for _ in variational_layers(plain))
    _assert_same(model, plain, torch.randn(4, 5, dtype=torch.float64))


def test_folding_moves_the_constant_mean_and_variance_into_the_next_bias():
    model = mlp(3, [2], 1, family="gaussian", activation="sigmoid").double()
    with torch.no_grad():
        model[2].weight_rho.fill_(-1.0)
    _kill_units(model, "0", [0])
    c = torch.sigmoid(model[0].bias_mu[0])
    w, s = model[2].weight_mu[0, 0], model[2].weight_sigma[0, 0]
    b, sb = model[2].bias_mu[0].clone(), model[2].bias_sigma[0].clone()
    out = shrink(model).model
    assert out[2].in_features == 1
    torch.testing.assert_close(out[2].bias_mu[0], b + w * c)
    torch.testing.assert_close(out[2].bias_sigma[0] ** 2, sb**2 + (s * c) ** 2)


def test_nested_sequentials():
    inner = nn.Sequential(nn.Linear(4, 6), nn.ReLU())
    model = nn.Sequential(
        nn.Flatten(), inner, nn.Sequential(nn.Linear(6, 5), nn.Sigmoid()), nn.Linear(5, 2)
    )
    model = convert(model).double()
    _kill_units(model, "1.0", [0, 5])
    _kill_units(model, "2.0", [1])
    result = shrink(model, (2, 2))
    assert [r.name for r in result.layers] == ["1.0", "2.0", "3"]
    _assert_same(model, result.model, torch.randn(3, 2, 2, dtype=torch.float64))


def test_padded_conv_keeps_a_dead_kernel_it_cannot_fold():
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Conv2d(3, 2, 3, padding=1), nn.Flatten(), nn.Linear(32, 2)
    ).double()  # fmt: skip
    _kill_units(model, "0", [1])  # relu(b) > 0 meets the zero padding of conv 2: not a bias
    result = shrink(model, (1, 6, 6))
    assert result.layers[0].units_after == 3 and result.layers[0].kept_dead_units == 1
    _assert_same(model, result.model, torch.randn(2, 1, 6, 6, dtype=torch.float64))
    with torch.no_grad():
        model[0].bias[1] = -1.0  # relu(b) = 0: nothing to fold, so it can go
    assert shrink(model, (1, 6, 6)).layers[0].units_after == 2


def test_spike_and_slab_gated_off_units_and_inputs_are_removed():
    torch.manual_seed(0)
    model = nn.Sequential(
        SpikeSlabLinear(6, 5, input_gates=True), nn.ReLU(), SpikeSlabLinear(5, 4), nn.ReLU(),
        nn.Linear(4, 2),
    ).double()  # fmt: skip
    with torch.no_grad():
        model[0].gate_logit[[1, 3]] = -5.0
        model[0].input_gate_logit[[0, 2]] = -5.0
        model[2].gate_logit[0] = -5.0
    result = shrink(model)
    assert result.input_features == [1, 3, 4, 5]
    assert result.layers[0].kept_units == [0, 2, 4]
    assert result.layers[1].kept_units == [1, 2, 3]
    _assert_same(model, result.model, torch.randn(7, 6, dtype=torch.float64))


def test_prune_units_removes_whole_kernels_on_request():
    model = _cnn()
    result = shrink(model, (2, 10, 10), prune_units={"0": [0, 2, 5]})
    assert result.layers[0].kept_units == [0, 2, 5]
    reference = _cnn()
    reference.load_state_dict(model.state_dict())
    apply_masks(reference, unit_weight_masks(reference, {"0": torch.tensor([1.0, 0, 1, 0, 0, 1])}))
    _assert_same(reference, result.model, torch.randn(4, 2, 10, 10, dtype=torch.float64))


def test_input_masks_shrink_conv_input_channels():
    model = convert(_cnn())
    apply_masks(model, input_weight_masks(model, {"0": torch.tensor([0.0, 1.0])}))
    result = shrink(model, (2, 10, 10))
    assert result.input_features == [1]
    _assert_same(model, result.model, torch.randn(3, 2, 10, 10, dtype=torch.float64))


def test_clear_errors_for_unsupported_structure():
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.fc(x) + x

    with pytest.raises(TypeError, match="nn.Sequential"):
        shrink(nn.Sequential(Block(), nn.Linear(3, 2)))
    with pytest.raises(TypeError, match="passthrough"):
        shrink(nn.Sequential(nn.Linear(3, 3), nn.Softmax(-1), nn.Linear(3, 2)))
    with pytest.raises(ValueError, match="input_shape"):
        shrink(_cnn())
    with_bn = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(TypeError, match=r"does not slice BatchNorm1d.*example_inputs=x"):
        shrink(with_bn)  # its running statistics must be cut with the layer: not a passthrough
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        shrink(
            nn.Sequential(nn.Linear(3, 3), nn.Softmax(-1), nn.Linear(3, 2)),
            passthrough=[nn.Softmax],
        )


def test_moment_propagation_cnn_kernels_pruned_on_request():
    moments = pytest.importorskip("bayesprune.nn.moments.builders")
    ops = pytest.importorskip("bayesprune.nn.moments.ops")
    model = moments.evi_cnn(8, image_size=12, kernel_size=3).double()
    passthrough = (ops.EVIReLU, ops.EVIMaxPool2d, ops.EVIFlatten)  # EVIFlatten: by its shapes
    result = shrink(model, (1, 12, 12), prune_units={"0": [0, 2, 3, 7]}, passthrough=passthrough)
    assert result.architecture == [1, 4, 10]
    assert result.layers[1].inputs_after == 4 * 5 * 5
    reference = moments.evi_cnn(8, image_size=12, kernel_size=3).double()
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        reference[0].weight_mu[[1, 4, 5, 6]] = 0.0  # the pruned kernels, zeroed
    x = torch.randn(3, 1, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x).mean, reference(x).mean)


def test_prune_with_shrink_takes_models_a_chain_cannot_read():
    """A BatchNorm in a Sequential: prune(shrink=True) goes through shrink_graph, and the
    result equals the masked model."""
    torch.manual_seed(0)
    bn_chain = nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3), nn.ReLU(),
        nn.Flatten(), nn.Linear(6 * 4 * 4, 4),
    ).eval()  # fmt: skip
    model = convert(bn_chain, "gaussian").eval()
    small = prune(model, "unit", "layer", "norm", sparsity=0.5, shrink=True, input_shape=(1, 8, 8))
    assert small[0].out_channels == 4 and small[1].num_features == 4
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad(), use_posterior_mean(model), use_posterior_mean(small):
        torch.testing.assert_close(small.eval()(x), model(x), atol=1e-5, rtol=1e-5)


def test_shrink_with_example_inputs_takes_any_model_through_the_graph():
    """One entry point: with a batch, `shrink` slices BatchNorm and residual graphs."""

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.bn, self.fc2 = nn.Linear(3, 6), nn.BatchNorm1d(6), nn.Linear(6, 3)
            self.head = nn.Linear(3, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.head(x + self.fc2(torch.relu(self.bn(self.fc1(x)))))

    torch.manual_seed(0)
    x = torch.randn(8, 3)
    for model in (
        nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)),
        Residual(),
    ):
        model.eval()
        first = next(m for m in model.modules() if isinstance(m, nn.Linear))
        with torch.no_grad():
            first.weight[1] = 0.0  # a dead unit: no incoming weight
        result = shrink(model, example_inputs=x)
        assert result.model(x).shape == model(x).shape
        torch.testing.assert_close(result.model(x), model(x), atol=1e-5, rtol=1e-5)
        shrunk_first = next(m for m in result.model.modules() if isinstance(m, nn.Linear))
        assert shrunk_first.out_features == first.out_features - 1
    with pytest.raises(ValueError, match="input_shape .* or example_inputs .*, not both"):
        shrink(Residual(), (3,), example_inputs=x)
