"""ConvNeXt-V2's global response normalisation (GRN) between an MLP's layers: its mean
over the channels reads every hidden unit, so a unit goes only where it is exactly 0,
and the norm becomes a `ZeroCountingResponseNorm` whose mean counts the removed zeros."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from _torchvision import import_torchvision_models
from torch import Tensor, nn

from bayesprune import convert
from bayesprune.compress import (
    ZeroCountingResponseNorm,
    activation_scores,
    export_onnx,
    keep_units,
    load_shrunk,
    onnx_difference,
    save_shrunk,
    shrink_graph,
)
from bayesprune.compress.response_norm import response_norm_layout
from bayesprune.nn import use_posterior_mean

WIDTH, HIDDEN = 6, 8
DROPPED = [2, 5, 7]


class ResponseNorm(nn.Module):
    """GRN as ConvNeXt-V2 writes it, channels last or first."""

    def __init__(self, dim: int, channels_last: bool = True) -> None:
        super().__init__()
        self.eps, self.channels_last = 1e-6, channels_last
        self.weight, self.bias = nn.Parameter(torch.zeros(dim)), nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        spatial, channel = ((1, 2), -1) if self.channels_last else ((2, 3), 1)
        shape = (1, 1, 1, -1) if self.channels_last else (1, -1, 1, 1)
        g = torch.linalg.vector_norm(x, ord=2, dim=spatial, keepdim=True)
        n = g / (g.mean(dim=channel, keepdim=True) + self.eps)
        return x + self.bias.view(shape) + self.weight.view(shape) * (x * n)


class Block(nn.Module):
    """ConvNeXt-V2's: depthwise conv, LayerNorm, MLP with GRN after its activation."""

    def __init__(self, channels_last: bool) -> None:
        super().__init__()
        self.channels_last = channels_last
        self.dw = nn.Conv2d(WIDTH, WIDTH, 3, padding=1, groups=WIDTH)
        if channels_last:
            self.fc1, self.fc2 = nn.Linear(WIDTH, HIDDEN), nn.Linear(HIDDEN, WIDTH)
        else:
            self.fc1, self.fc2 = nn.Conv2d(WIDTH, HIDDEN, 1), nn.Conv2d(HIDDEN, WIDTH, 1)
        self.grn = ResponseNorm(HIDDEN, channels_last)

    def forward(self, x: Tensor) -> Tensor:
        y = self.dw(x)
        y = y.permute(0, 2, 3, 1) if self.channels_last else y
        y = self.fc2(self.grn(F.gelu(self.fc1(y))))
        return x + (y.permute(0, 3, 1, 2) if self.channels_last else y)


class Tiny(nn.Module):
    def __init__(self, channels_last: bool = True) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, WIDTH, 2, stride=2)
        self.block = Block(channels_last)
        self.head = nn.Linear(WIDTH, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.block(self.stem(x)).mean((2, 3)))


def _model(channels_last: bool = True) -> nn.Module:
    torch.manual_seed(0)
    plain = Tiny(channels_last)
    with torch.no_grad():
        plain.block.grn.weight.uniform_(0.5, 1.5)
        plain.block.grn.bias.normal_()
    return convert(plain.double(), "gaussian").double().eval()


def _x() -> Tensor:
    return torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1)).double()


def _out(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad(), use_posterior_mean(model):
        return model.eval()(x)


def _keep() -> Tensor:
    keep = torch.ones(HIDDEN, dtype=torch.bool)
    keep[DROPPED] = False
    return keep


@pytest.mark.parametrize("channels_last", [True, False])
def test_zero_counting_response_norm_equals_grn_over_the_zero_padded_channels(channels_last):
    torch.manual_seed(0)
    grn = ResponseNorm(HIDDEN, channels_last).double()
    with torch.no_grad():
        grn.weight.uniform_(0.5, 1.5)
        grn.bias.normal_()
    dim = -1 if channels_last else 1
    assert response_norm_layout(grn) == dim
    x = torch.randn(2, 4, 5, HIDDEN, dtype=torch.float64)
    x[..., DROPPED] = 0.0
    kept = _keep().nonzero().flatten()
    x = x if channels_last else x.movedim(-1, 1)
    counted = ZeroCountingResponseNorm.of(grn, kept, dim)
    torch.testing.assert_close(counted(x.index_select(dim, kept)), grn(x).index_select(dim, kept))
    assert ZeroCountingResponseNorm.from_config(counted.config()).total == HIDDEN


def test_modules_that_are_not_grn_are_not_read_as_grn():
    assert response_norm_layout(nn.BatchNorm2d(4)) is None
    assert response_norm_layout(nn.Linear(4, 4)) is None


@pytest.mark.parametrize("channels_last", [True, False])
def test_mlp_hidden_units_go_through_a_response_norm(channels_last):
    model, x = _model(channels_last), _x()
    scores = activation_scores(model, x)
    assert torch.isfinite(scores["block.fc1"]).all()  # the hidden units are scored
    result = shrink_graph(model, x, prune_units={"block.fc1": _keep()})
    assert result.max_abs_difference < 1e-10
    grn = result.model.block.grn
    assert isinstance(grn, ZeroCountingResponseNorm)
    assert (grn.kept, grn.total) == (HIDDEN - len(DROPPED), HIDDEN)
    reference = _model(channels_last)  # the units, their bias and the norm's β, γ zeroed
    with torch.no_grad():
        reference.block.fc1.weight_mu[DROPPED] = 0.0
        reference.block.fc1.bias_mu[DROPPED] = 0.0
        reference.block.grn.weight[DROPPED] = 0.0
        reference.block.grn.bias[DROPPED] = 0.0
    torch.testing.assert_close(_out(result.model, x), _out(reference, x), rtol=0, atol=1e-10)


def test_a_shrunk_response_norm_saves_loads_and_exports(tmp_path):
    model, x = _model(), _x()
    result = shrink_graph(model, x, prune_units={"block.fc1": _keep()})
    path = save_shrunk(result.model, tmp_path / "grn.safetensors")
    loaded = load_shrunk(path, lambda: convert(Tiny().double(), "gaussian"))
    assert isinstance(loaded.block.grn, ZeroCountingResponseNorm)
    torch.testing.assert_close(_out(loaded, x), _out(result.model, x), rtol=0, atol=0)
    onnx = export_onnx(loaded.float(), tmp_path / "grn.onnx", input_shape=(3, 8, 8))
    assert onnx_difference(onnx, loaded, x.float()) < 1e-5


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm (bench extra)")
def test_timm_convnext_v2_hidden_units_are_scored_and_shrunk():
    import_torchvision_models()  # timm imports torchvision, whose compiled ops may not load
    import timm

    torch.manual_seed(0)
    net = timm.create_model("convnextv2_atto", pretrained=False, num_classes=3)
    for m in net.modules():
        if response_norm_layout(m) is not None:
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
    model = convert(net.double(), "gaussian").double().eval()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    scores = activation_scores(model, x)
    assert torch.isfinite(scores["stages.0.blocks.0.mlp.fc1"]).all()
    result = shrink_graph(model, x, prune_units=keep_units(scores, sparsity=0.25))
    assert result.max_abs_difference < 1e-8
    assert isinstance(result.model.stages[0].blocks[0].mlp.grn, ZeroCountingResponseNorm)
