"""A read of a layer's weight that asks only its dtype, device or shape converts the layer:
the Bayesian layer's `.weight` answers those and refuses its values."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from test_convert_reads import DeviceRead
from torch import Tensor, nn

import bayesprune as bp
from bayesprune.compress import activation_scores, keep_units, load_shrunk, save_shrunk
from bayesprune.compress.graph import shrink_graph
from bayesprune.nn import (
    KeptDeterministicWarning,
    VariationalLayer,
    WeightMetadata,
    WeightValuesError,
    layers_read_outside,
)


class CastingFeedForward(nn.Module):
    """Hugging Face's T5 feed-forward: the hidden units are cast to the output layer's
    dtype before it (for mixed precision)."""

    def __init__(self, width: int = 6, hidden: int = 16) -> None:
        super().__init__()
        self.wi, self.wo = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.wi(x))
        if isinstance(self.wo.weight, Tensor) and h.dtype != self.wo.weight.dtype:
            h = h.to(self.wo.weight.dtype)
        return self.wo(h)


class Regressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.ff, self.head = nn.Linear(4, 6), CastingFeedForward(), nn.Linear(6, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        return self.head(h + self.ff(h))


class ValueAndDtype(nn.Module):
    """One read asks the dtype, another computes with the weight: the layer stays plain."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x.to(self.proj.weight.dtype), self.proj.weight.abs())


@pytest.mark.parametrize("family", ["gaussian", "sparse_vd", "spike_slab"])
def test_a_dtype_read_converts_the_layer_and_the_model_learns(family):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", KeptDeterministicWarning)  # nothing kept plain
        model = bp.convert(Regressor(), family)
    assert all(
        isinstance(m, VariationalLayer) for m in (model.embed, model.ff.wi, model.ff.wo, model.head)
    )
    x = torch.randn(128, 4)
    y = x[:, :1] * 2 - x[:, 1:2]
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-2)
    losses = []
    for _ in range(80):
        loss = F.mse_loss(model(x), y) + bp.kl(model) / 100_000
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


def test_the_converted_reader_shrinks_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    model = bp.convert(Regressor(), "gaussian").double().eval()
    x = torch.randn(8, 4, dtype=torch.float64)
    scores = activation_scores(model, (x,))
    assert "ff.wi" in scores
    result = shrink_graph(model, (x,), prune_units=keep_units(scores, sparsity=0.5), check=True)
    small = result.model
    assert isinstance(small.ff.wo, VariationalLayer) and small.ff.wo.in_features < 16
    assert small.ff.wo.weight.shape == (small.ff.wo.out_features, small.ff.wo.in_features)
    assert result.max_abs_difference < 1e-10
    path = save_shrunk(small, tmp_path / "small.safetensors")
    loaded = load_shrunk(path, lambda: bp.convert(Regressor(), "gaussian").double())
    assert loaded.ff.wo.weight.shape == small.ff.wo.weight.shape
    with bp.nn.use_posterior_mean(loaded), bp.nn.use_posterior_mean(small):
        assert torch.allclose(loaded(x), small(x))


def test_a_read_of_the_values_keeps_the_layer_plain_even_beside_a_dtype_read():
    assert set(layers_read_outside(nn.Sequential(ValueAndDtype()))) == {"0.proj"}


def test_an_example_lets_convert_see_that_a_device_read_is_one():
    """DeviceRead's forward sizes a grid by its input, so only a trace with values
    reaches its end; without an example the read keeps the layer plain."""
    assert set(layers_read_outside(DeviceRead())) == {"proj"}
    x = torch.randn(3, 4)
    assert layers_read_outside(DeviceRead(), example_inputs=(x,)) == {}
    with warnings.catch_warnings():
        warnings.simplefilter("error", KeptDeterministicWarning)
        model = bp.convert(DeviceRead(), "gaussian", example_inputs=(x,))
    assert isinstance(model.proj, VariationalLayer)
    assert model(x).shape == (3, 2)


def test_the_weight_answers_what_it_is_and_refuses_its_values():
    layer = bp.convert(nn.Linear(4, 3, bias=False), "gaussian")
    weight = layer.weight
    assert isinstance(weight, WeightMetadata) and isinstance(weight, Tensor)
    assert (weight.shape, weight.dtype, weight.device.type) == ((3, 4), torch.float32, "cpu")
    assert (weight.ndim, weight.size(1), weight.numel(), len(weight)) == (2, 4, 12, 3)
    assert weight.is_floating_point() and weight.requires_grad  # as its posterior mean
    assert layer.bias is None  # as nn.Linear(bias=False)
    assert "shape=(3, 4)" in repr(weight) and "BayesLinear" in f"{weight}"
    assert bp.convert(nn.Linear(4, 3), "gaussian").double().bias.dtype == torch.float64
    refusals = {
        "linear": lambda: F.linear(torch.randn(2, 4), weight),
        "add": lambda: weight + 1,
        "data": lambda: weight.data,
        "normal_": lambda: nn.init.normal_(weight),
        "cat": lambda: torch.cat([weight, weight]),
    }
    for name, use in refusals.items():
        with pytest.raises(WeightValuesError, match=rf"`.weight` of this BayesLinear.*\({name} "):
            use()
