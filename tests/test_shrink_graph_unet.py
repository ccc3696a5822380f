"""shrink_graph on a U-Net: an nn.ConvTranspose2d reads and writes channels like a layer.

The transposed convolution stays deterministic (`convert` leaves it); the encoder
channels it reads are scored and deleted with their producer, and its own output
channels (the decoder's upsampled half of the skip concatenation) are scored and
deleted like any layer's units. A constant through a strided transposed convolution is
not a constant, so a dead channel it reads goes only where it is exactly 0 (deleted
with its BatchNorm).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_shrink_graph import TOL, _bn, _kill, _out
from torch import Tensor, nn

from bayesprune import convert
from bayesprune.compress import (
    activation_scores,
    export_onnx,
    keep_units,
    load_shrunk,
    onnx_difference,
    save_shrunk,
    shrink_graph,
)

FAMILIES = ["deterministic", "gaussian", "sparse_vd", "spike_slab"]


class UNet(nn.Module):
    """Two encoder stages, a transposed-convolution upsampling, a skip concatenation."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1, self.bn1 = nn.Conv2d(1, 6, 3, padding=1), _bn(6)
        self.enc2, self.bn2 = nn.Conv2d(6, 10, 3, padding=1), _bn(10)
        self.up = nn.ConvTranspose2d(10, 6, 2, stride=2)
        self.dec, self.bn3 = nn.Conv2d(12, 6, 3, padding=1), _bn(6)
        self.out = nn.Conv2d(6, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        skip = F.relu(self.bn1(self.enc1(x)))
        deep = F.relu(self.bn2(self.enc2(F.max_pool2d(skip, 2))))
        up = self.up(deep)
        return self.out(F.relu(self.bn3(self.dec(torch.cat([up, skip], 1)))))


def _unet(family: str) -> nn.Module:
    torch.manual_seed(0)
    return convert(UNet().double(), family).double().eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_the_channels_a_transposed_convolution_reads_are_scored_and_go(family):
    model = _unet(family)
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    scores = activation_scores(model, x)
    assert torch.isfinite(scores["enc2"]).all()  # read by the transposed convolution
    assert torch.isfinite(scores["up"]).all()  # its own outputs are units too
    keep = keep_units(scores, sparsity=0.5)
    result = shrink_graph(model, x, prune_units=keep)  # checks shrunk == masked itself
    small = result.model
    assert isinstance(small.up, nn.ConvTranspose2d)
    assert small.up.in_channels == int(keep["enc2"].sum()) == 5
    assert small.up.out_channels == 3 and small.up.weight.shape[:2] == (5, 3)
    assert small.bn2.num_features == 5
    assert small.dec.in_channels == 3 + int(keep["enc1"].sum())  # the concatenation's halves
    assert result.max_abs_difference < TOL
    other = torch.randn(2, 1, 12, 12, dtype=torch.float64)  # another size: still equal
    reference = shrink_graph(model, x, prune_units=keep, check=False)  # deterministic
    torch.testing.assert_close(_out(small, other), _out(reference.model, other))


def test_a_dead_channel_with_a_constant_stays_before_a_transposed_convolution():
    model = _unet("gaussian")
    _kill(model, "enc2", [1, 4])  # their BatchNorm still emits a non-zero constant
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    result = shrink_graph(model, x)
    torch.testing.assert_close(_out(result.model, x), _out(model, x), atol=TOL, rtol=TOL)
    by_name = {r.name: r for r in result.layers}
    assert by_name["enc2"].units_after == 10 and by_name["enc2"].kept_dead_units == 2
    with torch.no_grad():  # the same channels emitting exactly 0 (no shift, ReLU'd away)
        model.bn2.bias[[1, 4]] = -50.0
    result = shrink_graph(model, x)
    assert result.model.up.in_channels == 8
    torch.testing.assert_close(_out(result.model, x), _out(model, x), atol=TOL, rtol=TOL)


def test_a_shrunk_unet_saves_loads_and_exports(tmp_path):
    model = _unet("gaussian")
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    keep = keep_units(activation_scores(model, x), sparsity=0.4)
    small = shrink_graph(model, x, prune_units=keep).model
    path = save_shrunk(small, tmp_path / "unet.safetensors")
    loaded = load_shrunk(path, convert(UNet().double(), "gaussian").double())
    assert loaded.up.in_channels == small.up.in_channels < 10
    torch.testing.assert_close(_out(loaded, x), _out(small, x))
    pytest.importorskip("onnxruntime")
    plain = small.float()
    onnx = export_onnx(plain, tmp_path / "unet.onnx", (1, 8, 8))
    assert onnx_difference(onnx, plain, x.float()) < 1e-5


def test_dropped_upsampled_channels_are_deleted_with_their_bias():
    """The decoder's upsampled channels meet a padded convolution, which cannot absorb a
    constant: asked to drop them, shrink_graph deletes them (bias zeroed too), and the
    result equals the U-Net with those channels' weights and bias set to 0."""
    model = _unet("deterministic")
    with torch.no_grad():
        model.up.bias.copy_(torch.linspace(-1.0, 1.0, 6, dtype=torch.float64))
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    result = shrink_graph(model, x, prune_units={"up": [0, 2, 5]})
    assert result.model.up.out_channels == 3 and result.model.dec.in_channels == 9
    assert any("bias was zeroed" in note for note in result.notes)
    deleted = _unet("deterministic")
    deleted.load_state_dict(model.state_dict())
    with torch.no_grad():
        deleted.up.weight[:, [1, 3, 4]] = 0.0
        deleted.up.bias[[1, 3, 4]] = 0.0
    torch.testing.assert_close(_out(result.model, x), _out(deleted, x), atol=TOL, rtol=TOL)
    assert not torch.allclose(_out(result.model, x), _out(model, x), atol=1e-3)
