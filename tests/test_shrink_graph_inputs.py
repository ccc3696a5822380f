"""shrink_graph(prune_inputs=...): input features leave every layer that reads them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bayesprune import compress, convert
from bayesprune.compress.graph import kept_inputs, shrink_graph
from bayesprune.io import load_tensors
from bayesprune.nn import SpikeSlabLinear, use_posterior_mean

TOL = 1e-5
FAMILIES = ["gaussian", "sparse_vd", "spike_slab"]
DT = torch.float64


def _out(model: nn.Module, x: Tensor) -> Tensor:
    model.eval()
    with torch.no_grad(), use_posterior_mean(model):
        return model(x)


def _zeroed(x: Tensor, keep: list[int]) -> Tensor:
    """x with every feature (dim 1) outside `keep` set to zero."""
    mask = torch.zeros(x.shape[1], dtype=x.dtype)
    mask[keep] = 1.0
    return x * mask.view(1, -1, *([1] * (x.ndim - 2)))


class TwoReaders(nn.Module):
    """x feeds a hidden layer and a skip layer; their outputs are summed (custom forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.skip = nn.Linear(7, 5), nn.Linear(5, 3), nn.Linear(7, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.tanh(self.fc1(x))) + self.skip(x)


class ConvReaders(nn.Module):
    """Two convolutions read the image's channels; concatenated, pooled, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(4, 3, 3, padding=1), nn.Conv2d(4, 2, 1)
        self.head = nn.Linear(5 * 4, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = F.max_pool2d(F.relu(torch.cat([self.a(x), self.b(x)], 1)), 2)
        return self.head(torch.flatten(y, 1))


def _build(cls: type[nn.Module], family: str) -> nn.Module:
    torch.manual_seed(0)
    return convert(cls().to(DT), family).to(DT)


@pytest.mark.parametrize("family", FAMILIES)
def test_both_readers_of_a_feature_lose_its_column(family):
    model = _build(TwoReaders, family)
    keep = [0, 2, 3, 6]
    x = torch.randn(6, 7, dtype=DT)
    result = shrink_graph(model, x, prune_inputs={"x": keep})
    small = result.model
    assert small.fc1.in_features == small.skip.in_features == 4
    assert result.kept_inputs == {"x": keep} and result.inputs_before == {"x": 7}
    assert kept_inputs(small) == {"x": keep} and kept_inputs(model) == {}
    torch.testing.assert_close(_out(small, x[:, keep]), _out(model, _zeroed(x, keep)), **_tol())
    assert result.max_abs_difference < TOL and result.notes  # the columns were masked first
    assert model.fc1.weight_mu.shape[1] == 7  # the input model is untouched


@pytest.mark.parametrize("family", FAMILIES)
def test_a_conv_model_drops_input_channels(family):
    model = _build(ConvReaders, family)
    keep = torch.tensor([True, False, True, False])
    x = torch.randn(3, 4, 4, 4, dtype=DT)
    result = shrink_graph(model, x, prune_inputs={"x": keep})
    assert result.model.a.in_channels == result.model.b.in_channels == 2
    assert result.kept_inputs == {"x": [0, 2]}
    got = _out(result.model, x[:, [0, 2]])
    torch.testing.assert_close(got, _out(model, _zeroed(x, [0, 2])), **_tol())


def _tol() -> dict[str, float]:
    return {"atol": TOL, "rtol": TOL}


def test_automatic_mode_drops_what_no_layer_reads():
    torch.manual_seed(0)
    model = TwoReaders().to(DT)
    with torch.no_grad():
        model.fc1.weight[:, [1, 4]] = 0.0
        model.skip.weight[:, 4] = 0.0  # feature 1 is still read by the skip layer
    x = torch.randn(5, 7, dtype=DT)
    result = shrink_graph(model, x, prune_inputs=True)
    assert result.kept_inputs == {"x": [0, 1, 2, 3, 5, 6]}
    torch.testing.assert_close(_out(result.model, x[:, result.kept_inputs["x"]]), _out(model, x))
    assert not result.notes  # nothing had to be masked
    untouched = shrink_graph(TwoReaders().to(DT), x, prune_inputs=True)
    assert untouched.kept_inputs == {} and untouched.model.fc1.in_features == 7


class Gated(nn.Module):
    """A spike-and-slab layer with input gates (feature selection) and a plain head."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = SpikeSlabLinear(6, 4, input_gates=True)
        self.out = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(F.relu(self.fc1(x)))


def test_automatic_mode_follows_the_input_inclusion_probabilities():
    torch.manual_seed(0)
    model = Gated().to(DT)
    with torch.no_grad():
        model.fc1.input_gate_logit.fill_(6.0)
        model.fc1.input_gate_logit[[1, 5]] = -6.0  # PIP 0.0025: not selected
    x = torch.randn(5, 6, dtype=DT)
    result = shrink_graph(model, x, prune_inputs=True)
    assert result.kept_inputs == {"x": [0, 2, 3, 4]}
    assert result.model.fc1.input_gate_logit.shape == (4,)
    torch.testing.assert_close(
        _out(result.model, x[:, [0, 2, 3, 4]]), _out(model, _zeroed(x, [0, 2, 3, 4])), **_tol()
    )


class AddedToOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.head = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.fc(x) + x)


class Viewed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.view(-1, 8))


def test_a_feature_that_cannot_be_sliced_is_one_clear_error():
    x = torch.randn(3, 4, dtype=DT)
    with pytest.raises(ValueError, match=r"feature 1 of input 'x' is tied to the outputs of 'fc'"):
        shrink_graph(AddedToOutput().to(DT), x, prune_inputs={"x": [0, 2, 3]})
    with pytest.raises(ValueError, match=r"reaches call_method 'view'.*keep that feature"):
        shrink_graph(Viewed().to(DT), torch.randn(3, 2, 4, dtype=DT), prune_inputs={"x": [0]})
    with pytest.raises(ValueError, match=r"not inputs of the model.*inputs: \['x'\]"):
        shrink_graph(AddedToOutput().to(DT), x, prune_inputs={"y": [0]})
    with pytest.raises(ValueError, match="keeps no feature"):
        shrink_graph(TwoReaders().to(DT), torch.randn(3, 7, dtype=DT), prune_inputs={"x": []})
    with pytest.raises(ValueError, match="outside 0..6"):
        shrink_graph(TwoReaders().to(DT), torch.randn(3, 7, dtype=DT), prune_inputs={"x": [9]})
    auto = shrink_graph(AddedToOutput().to(DT), x, prune_inputs=True)  # nothing to drop there
    assert auto.kept_inputs == {}


def test_kept_inputs_survive_save_and_load_and_onnx_takes_the_reduced_input(tmp_path):
    model = _build(ConvReaders, "gaussian")
    x = torch.randn(2, 4, 4, 4, dtype=DT)
    small = shrink_graph(model, x, prune_inputs={"x": [1, 3]}).model
    path = compress.save_shrunk(small, tmp_path / "small.safetensors")
    loaded = compress.load_shrunk(path, _build(ConvReaders, "gaussian"))
    assert kept_inputs(loaded) == {"x": [1, 3]} and loaded.a.in_channels == 2
    assert load_tensors(path)[1]["version"] == 2  # bayesprune without kept inputs refuses it
    torch.testing.assert_close(_out(loaded, x[:, [1, 3]]), _out(small, x[:, [1, 3]]))
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    plain = loaded.float()
    onnx_path = compress.export_onnx(plain, tmp_path / "small.onnx", input_shape=(2, 4, 4))
    assert compress.onnx_difference(onnx_path, plain, x[:, [1, 3]].float()) < 1e-5


def test_a_second_pruning_composes_the_kept_indices():
    model = TwoReaders().to(DT)
    x = torch.randn(4, 7, dtype=DT)
    first = shrink_graph(model, x, prune_inputs={"x": [1, 2, 4, 5, 6]})
    second = shrink_graph(first.model, x[:, [1, 2, 4, 5, 6]], prune_inputs={"x": [0, 3]})
    assert second.kept_inputs == {"x": [0, 3]}  # relative to the model it was given
    assert kept_inputs(second.model) == {"x": [1, 5]}  # relative to the data
    again = shrink_graph(second.model, x[:, [1, 5]])
    assert kept_inputs(again.model) == {"x": [1, 5]}


class NormedInput(nn.Module):
    """The image goes through BatchNorm and a depthwise convolution before a 1x1 reader."""

    def __init__(self) -> None:
        super().__init__()
        self.bn, self.dw = nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.mix, self.fc = nn.Conv2d(4, 3, 1), nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        y = self.mix(self.dw(self.bn(x)))
        return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))


def test_followers_on_the_input_lose_the_channel_with_its_readers():
    torch.manual_seed(0)
    model = convert(NormedInput().to(DT), "gaussian").to(DT).eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1.0, 1.0)  # a zeroed channel is not zero after it
    x = torch.randn(3, 4, 5, 5, dtype=DT)
    result = shrink_graph(model, x, prune_inputs={"x": [0, 3]})
    assert result.followers == {"bn": [0, 3], "dw": [0, 3]} and result.model.mix.in_channels == 2
    reference = convert(NormedInput().to(DT), "gaussian").to(DT).eval()
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():  # the model that ignores channels 1 and 2
        reference.mix.weight_mu[:, [1, 2]] = 0.0
    torch.testing.assert_close(_out(result.model, x[:, [0, 3]]), _out(reference, x), **_tol())
