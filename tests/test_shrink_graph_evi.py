"""shrink_graph on eVI moment networks: mean AND covariance of the shrunk == the masked model."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from bayesprune import compress
from bayesprune.compress.graph import kept_inputs, shrink_graph
from bayesprune.nn.moments import (
    EVIAdd,
    EVICat,
    EVIConv2d,
    EVIFlatten,
    EVILinear,
    EVIMaxPool2d,
    EVIReLU,
    Moments,
    evi_cnn,
)

DT = torch.float64
TOL = {"atol": 1e-5, "rtol": 1e-5}


def _moments(model: nn.Module, x: Tensor) -> Moments:
    model.eval()
    with torch.no_grad():
        return model(x)


def _same(got: Moments, want: Moments) -> None:
    torch.testing.assert_close(got.mean, want.mean, **TOL)
    torch.testing.assert_close(got.cov, want.cov, **TOL)


def _mask_units(layer: nn.Module, units: list[int]) -> None:
    """Mask the kernels `units`: their mean and variance leave the network."""
    mask = torch.ones_like(layer.weight_mu) if layer.weight_mask is None else layer.weight_mask
    mask = mask.clone()
    mask[units] = 0.0
    layer.set_weight_mask(mask)


def test_an_evi_chain_loses_its_zero_mean_kernels_with_their_variance():
    torch.manual_seed(0)
    model = evi_cnn(6, image_size=8, kernel_size=3, n_classes=3, activation="tanh").to(DT)
    with torch.no_grad():
        model[0].weight_mu[[0, 3]] = 0.0  # zero mean, but σ² > 0: they still add variance
    x = torch.rand(4, 1, 8, 8, dtype=DT)
    result = shrink_graph(model, x)
    assert result.model[0].out_channels == 4 and result.model[4].in_features == 4 * 9
    masked = result.model  # compare with the model whose two kernels are masked
    reference = evi_cnn(6, image_size=8, kernel_size=3, n_classes=3, activation="tanh").to(DT)
    reference.load_state_dict(model.state_dict())
    _mask_units(reference[0], [0, 3])
    _same(_moments(masked, x), _moments(reference, x))
    unmasked = _moments(model, x).cov  # tanh'(0) = 1: their variance reaches the output
    assert not torch.allclose(_moments(masked, x).cov, unmasked, atol=0, rtol=1e-9)


class ResCat(nn.Module):
    """A stem, a residual block joined by EVIAdd, a side branch joined by EVICat, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = EVIConv2d(3, 6, 3, padding=1, covariance="diag")
        self.act = EVIReLU()
        self.c1 = EVIConv2d(6, 5, 1, covariance="diag")
        self.c2 = EVIConv2d(5, 6, 1, bias=False, covariance="diag")
        self.add = EVIAdd()
        self.side = EVIConv2d(6, 4, 1, covariance="diag")
        self.cat = EVICat()
        self.pool = EVIMaxPool2d(2)
        self.flat = EVIFlatten()
        self.fc = EVILinear(10 * 2 * 2, 3)

    def forward(self, x: Tensor) -> Moments:
        h = self.act(self.stem(x))
        r = self.add(h, self.c2(self.act(self.c1(h))))
        y = self.cat(r, self.act(self.side(h)))
        return self.fc(self.flat(self.pool(y)))


def _rescat(dead: dict[str, list[int]], bias: float = -1.0) -> nn.Module:
    torch.manual_seed(0)
    model = ResCat().to(DT)
    with torch.no_grad():
        for name, units in dead.items():
            layer = model.get_submodule(name)
            _mask_units(layer, units)
            if layer.bias is not None:
                layer.bias[units] = bias  # relu(bias): 0 for bias < 0
    return model


def test_residual_sum_and_concatenation_of_moments():
    model = _rescat({"stem": [1], "c2": [1], "c1": [0, 2], "side": [3]})
    x = torch.rand(3, 3, 4, 4, dtype=DT)
    result = shrink_graph(model, x)
    _same(_moments(result.model, x), _moments(model, x))
    by_name = {r.name: r for r in result.layers}
    assert by_name["stem"].kept_units == by_name["c2"].kept_units == [0, 2, 3, 4, 5]
    assert by_name["c1"].kept_units == [1, 3, 4] and by_name["c2"].inputs_after == 3
    assert by_name["side"].kept_units == [0, 1, 2]
    assert by_name["fc"].inputs_after == 8 * 4  # 5 + 3 channels, 2×2 each
    assert result.max_abs_difference < 1e-10


def test_a_dead_units_constant_is_kept_where_an_evi_layer_reads_it():
    model = _rescat({"c1": [0, 2]}, bias=0.5)  # relu(0.5): σ²·0.25 in c2's variance
    x = torch.rand(2, 3, 4, 4, dtype=DT)
    result = shrink_graph(model, x)
    _same(_moments(result.model, x), _moments(model, x))
    record = {r.name: r for r in result.layers}["c1"]
    assert record.units_after == 5 and record.kept_dead_units == 2
    assert any("moment (eVI) layer" in note for note in result.notes)


def test_a_column_with_zero_mean_is_still_read_through_its_variance():
    model = _rescat({})
    with torch.no_grad():
        model.fc.weight_mu[:, 24:28] = 0.0  # side channel 0 (cat channel 6, 2×2 columns)
    x = torch.rand(2, 3, 4, 4, dtype=DT)
    kept = shrink_graph(model, x)
    _same(_moments(kept.model, x), _moments(model, x))
    assert {r.name: r for r in kept.layers}["side"].units_after == 4  # σ²·E[x²] reaches fc
    mask = torch.ones_like(model.fc.weight_mu)
    mask[:, 24:28] = 0.0
    model.fc.set_weight_mask(mask)  # now mean and variance are gone: an orphan
    gone = shrink_graph(model, x)
    _same(_moments(gone.model, x), _moments(model, x))
    assert {r.name: r for r in gone.layers}["side"].kept_units == [1, 2, 3]


def test_evi_graph_inputs_save_and_load(tmp_path):
    model = _rescat({"c1": [0, 2]})
    x = torch.rand(2, 3, 4, 4, dtype=DT)
    result = shrink_graph(model, x, prune_inputs={"x": [0, 2]})
    assert result.model.stem.in_channels == 2 and result.kept_inputs == {"x": [0, 2]}
    zeroed = x.clone()
    zeroed[:, 1] = 0.0
    _same(_moments(result.model, x[:, [0, 2]]), _moments(model, zeroed))
    path = compress.save_shrunk(result.model, tmp_path / "evi.safetensors")
    loaded = compress.load_shrunk(path, ResCat)
    assert kept_inputs(loaded) == {"x": [0, 2]} and loaded.c1.out_channels == 3
    _same(_moments(loaded, x[:, [0, 2]]), _moments(result.model, x[:, [0, 2]]))


# -- the join layers themselves ------------------------------------------------------------
def _diag(*shape: int) -> Moments:
    return Moments(torch.randn(*shape, dtype=DT), torch.rand(*shape, dtype=DT))


def _full(b: int, d: int) -> Moments:
    a = torch.randn(b, d, d, dtype=DT)
    return Moments(torch.randn(b, d, dtype=DT), a @ a.transpose(1, 2))


def test_add_sums_means_and_covariances_of_independent_branches():
    a, b = _diag(2, 3, 4, 4), _diag(2, 3, 4, 4)
    s = EVIAdd()(a, b)
    torch.testing.assert_close(s.mean, a.mean + b.mean)
    torch.testing.assert_close(s.cov, a.cov + b.cov)
    f, d = _full(2, 5), _diag(2, 5)
    mixed = EVIAdd()(f, d, d.mean)  # a plain tensor is a point mass
    torch.testing.assert_close(mixed.mean, f.mean + 2 * d.mean)
    torch.testing.assert_close(mixed.cov, f.cov + torch.diag_embed(d.cov))
    x = torch.randn(2, 5, dtype=DT)
    assert isinstance(EVIAdd()(x, x), Tensor)
    conv = EVIConv2d(1, 2, 3)  # full covariance of a first layer: factored
    image = torch.rand(2, 1, 5, 5, dtype=DT)
    p, q = conv.to(DT)(image), conv(image.flip(-1))
    torch.testing.assert_close(EVIAdd()(p, q).cov, p.cov.dense() + q.cov.dense())
    with pytest.raises(ValueError, match="one shape"):
        EVIAdd()(a, _diag(2, 3, 4, 5))


def test_cat_is_block_diagonal():
    f, g = _full(2, 3), _full(2, 2)
    c = EVICat()(f, g)
    assert c.cov.shape == (2, 5, 5)
    torch.testing.assert_close(c.cov[:, :3, :3], f.cov)
    torch.testing.assert_close(c.cov[:, 3:, 3:], g.cov)
    assert not c.cov[:, :3, 3:].any()
    a, b = _diag(2, 3, 4, 4), _diag(2, 1, 4, 4)
    d = EVICat()(a, b.mean)  # a plain tensor has no variance
    torch.testing.assert_close(d.cov, torch.cat([a.cov, torch.zeros_like(b.cov)], 1))
    with pytest.raises(ValueError, match="layouts"):
        EVICat()(f, Moments(torch.randn(2, 4, dtype=DT), torch.rand(2, 1, 4, 4, dtype=DT)))


def test_plus_on_moments_names_the_join_layers():
    a = _diag(2, 3)
    with pytest.raises(TypeError, match="EVIAdd"):
        a + a  # a tuple's + would silently concatenate
