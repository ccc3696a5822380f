"""shrink_graph: dead channels whose constant meets a padded border share one kept channel.

conv → BatchNorm → ReLU → padded 3×3 conv: a dead channel of the first conv emits
BatchNorm's constant, which the padded conv cannot take as a bias (its border taps
differ). Of several such channels one stays and carries the others' constants in its
column of the padded conv (`compress.graph_merge`); the result must equal the masked
model at the example's size and at another, and a Bayesian reader's output variance
must be the masked model's too.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_shrink_graph import TOL, _bn, _kill, _out
from torch import Tensor, nn

from bayesprune import convert
from bayesprune.compress import export_onnx, load_shrunk, onnx_difference, save_shrunk
from bayesprune.compress.graph import shrink_graph
from bayesprune.nn import use_posterior_mean

DEAD = [1, 3, 6]


class Padded(nn.Module):
    """Two conv-BN-ReLU stages (3×3, zero padding), global pooling, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(2, 8, 3, padding=1), _bn(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 6, 3, padding=1), _bn(6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        return self.head(h.mean((2, 3)))


def _model(family: str, **options: object) -> nn.Module:
    torch.manual_seed(0)
    model = convert(Padded().double(), family, **options).double().eval()
    _kill(model, "conv1", DEAD)  # each emits relu(BatchNorm's constant) > 0 (β ≥ 0.2)
    return model


def _reader_input(model: nn.Module, x: Tensor) -> Tensor:
    seen: list[Tensor] = []
    hook = model.conv2.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    _out(model, x)
    hook.remove()
    return seen[0]


def _variance_map(model: nn.Module, x: Tensor) -> Tensor:
    """conv2's local-reparameterisation variance Σ x² σ² on its posterior-mean input."""
    std = model.conv2.posterior().weight_std.detach()
    return F.conv2d(_reader_input(model, x).square(), std.square(), padding=1)


@pytest.mark.parametrize(
    "family", ["deterministic", "gaussian", "sparse_vd", "sparse_vd_group", "spike_slab"]
)
def test_dead_channels_before_a_padded_conv_leave_one_carrier(family):
    model = _model(family)
    x = torch.randn(4, 2, 7, 7, dtype=torch.float64)
    assert (_reader_input(model, x)[:, DEAD] > 0).all()  # constants the conv cannot fold
    result = shrink_graph(model, x)  # checks shrunk == masked on x itself
    record = {r.name: r for r in result.layers}["conv1"]
    assert record.units_after == 8 - len(DEAD) + 1
    assert record.kept_dead_units == 1 and record.merged_units == len(DEAD) - 1
    small = result.model
    assert result.shapes["conv2"]["in_channels"] == record.units_after
    for size in (7, 12):  # another size: its borders and interior still add up exactly
        other = torch.randn(3, 2, size, size, dtype=torch.float64)
        torch.testing.assert_close(_out(small, other), _out(model, other), atol=TOL, rtol=TOL)
    if family in ("gaussian", "sparse_vd"):  # the sampled pre-activation's spread too
        torch.testing.assert_close(_variance_map(small, x), _variance_map(model, x))


def test_a_single_dead_channel_has_nothing_to_merge_with():
    torch.manual_seed(0)
    model = convert(Padded().double(), "gaussian").double().eval()
    _kill(model, "conv1", DEAD[:1])  # a positive constant (see the first test)
    result = shrink_graph(model, torch.randn(2, 2, 6, 6, dtype=torch.float64))
    record = {r.name: r for r in result.layers}["conv1"]
    assert record.units_after == 8 and record.kept_dead_units == 1 and record.merged_units == 0


def test_a_reader_with_a_weight_gate_per_entry_keeps_every_dead_channel():
    model = _model("spike_slab_edge")  # a sum of gated weights is not one gated weight
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    result = shrink_graph(model, x)
    record = {r.name: r for r in result.layers}["conv1"]
    assert record.kept_dead_units == len(DEAD) and record.merged_units == 0
    assert any("merged_units" in note for note in result.notes)


def test_merging_keeps_the_mean_network_under_sampling_mode_off():
    """The merged model still samples (it stays Bayesian) and its mean pass is exact."""
    model = _model("gaussian")
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    small = shrink_graph(model, x).model
    torch.manual_seed(1)
    draws = torch.stack([small(x) for _ in range(2)])
    assert not torch.equal(draws[0], draws[1])  # a Bayesian network still
    with torch.no_grad(), use_posterior_mean(small):
        torch.testing.assert_close(small(x), _out(model, x), atol=TOL, rtol=TOL)


class TwoReaders(nn.Module):
    """One conv-BN-ReLU stem read by two padded convolutions (summed) and, flattened, by a
    linear head: a dead stem channel has three readers, one of them per position."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(2, 8, 3, padding=1), _bn(8)
        self.left = nn.Conv2d(8, 4, 3, padding=1)
        self.right = nn.Conv2d(8, 4, 5, padding=2, bias=False)  # no bias: nothing to fold into
        self.head = nn.Linear(8 * 5 * 5, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn(self.stem(x)))
        mixed = self.left(h) + self.right(h)
        return self.head(h.flatten(1)) + mixed.mean((1, 2, 3)).unsqueeze(1)


@pytest.mark.parametrize("family", ["deterministic", "gaussian", "spike_slab"])
def test_a_carrier_serves_every_reader_including_a_flattened_one(family):
    torch.manual_seed(0)
    model = convert(TwoReaders().double(), family).double().eval()
    _kill(model, "stem", DEAD)
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    result = shrink_graph(model, x)
    record = {r.name: r for r in result.layers}["stem"]
    assert record.kept_dead_units == 1 and record.merged_units == len(DEAD) - 1
    kept = record.units_after
    assert result.shapes["left"]["in_channels"] == result.shapes["right"]["in_channels"] == kept
    assert result.shapes["head"]["in_features"] == kept * 25  # every position of each channel
    torch.testing.assert_close(_out(result.model, x), _out(model, x), atol=TOL, rtol=TOL)


class Concat(nn.Module):
    """Two conv-BN-ReLU branches concatenated and read by one padded convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(2, 4, 3, padding=1), _bn(4)
        self.b, self.bn_b = nn.Conv2d(2, 4, 3, padding=1), _bn(4)
        self.mix = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        a, b = F.relu(self.bn_a(self.a(x))), F.relu(self.bn_b(self.b(x)))
        return self.mix(torch.cat([a, b], 1)).mean((2, 3))


def test_merging_never_empties_a_layer():
    """Every channel of one branch dead: one of them stays even if the carrier is the
    other branch's, and the rest still merge."""
    torch.manual_seed(0)
    model = convert(Concat().double(), "gaussian").double().eval()
    with torch.no_grad():  # positive constants everywhere, so every dead channel counts
        model.bn_a.bias.fill_(1.0)
        model.bn_b.bias.fill_(1.0)
    _kill(model, "a", [0, 1, 2, 3])
    _kill(model, "b", [1, 2])
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    result = shrink_graph(model, x)
    records = {r.name: r for r in result.layers}
    assert records["a"].units_after >= 1 and records["b"].units_after >= 2
    kept = sum(r.kept_dead_units for r in result.layers)
    assert kept + sum(r.merged_units for r in result.layers) == 6 and kept <= 2
    torch.testing.assert_close(_out(result.model, x), _out(model, x), atol=TOL, rtol=TOL)
    other = torch.randn(2, 2, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(_out(result.model, other), _out(model, other), atol=TOL, rtol=TOL)


def test_a_merged_model_saves_loads_and_exports(tmp_path):
    """A carrier's merged column is an ordinary weight: the user-class file round trip and
    ONNX give the shrunk model's outputs."""
    model = _model("gaussian")
    x = torch.randn(2, 2, 7, 7, dtype=torch.float64)
    small = shrink_graph(model, x).model
    loaded = load_shrunk(
        save_shrunk(small, tmp_path / "padded.safetensors"),
        convert(Padded().double(), "gaussian").double(),
    )
    assert loaded.conv2.in_channels == small.conv2.in_channels == 8 - len(DEAD) + 1
    torch.testing.assert_close(_out(loaded, x), _out(model, x), atol=TOL, rtol=TOL)
    pytest.importorskip("onnxruntime")
    plain = small.float()
    onnx = export_onnx(plain, tmp_path / "padded.onnx", (2, 7, 7))
    assert onnx_difference(onnx, plain, x.float()) < 1e-5
