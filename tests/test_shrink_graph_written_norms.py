"""LayerNorms written out as modules of their own (Segment Anything's and Hugging Face's
LayerNorm2d, Hugging Face's ConvNeXt norm) are read as LayerNorms by what they compute."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_shrink_graph_layer_norm import (
    DROPPED,
    NORMS,
    STREAM,
    WIDTH,
    TinyConvNeXt,
    _drop_stream,
    _masked_out,
    _out,
    _x,
)
from torch import Tensor, nn

from bayesprune import convert
from bayesprune.compress import activation_scores, load_shrunk, save_shrunk
from bayesprune.compress.graph import shrink_graph
from bayesprune.compress.layer_norm import ZeroCountingLayerNorm, layer_norm_layout
from bayesprune.nn import GatedLayer


class _Affine(nn.Module):
    """What every norm below holds: a scale and a shift per channel and an eps."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps


class WrittenLayerNorm2d(_Affine):
    """Segment Anything's LayerNorm2d: the statistics over dim 1 written out."""

    def forward(self, x: Tensor) -> Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class ChannelsLastNorm(_Affine):
    """Hugging Face's ConvNeXt norm in its channels-last form: F.layer_norm, not a module."""

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class RootMeanSquare(_Affine):
    """A norm with a weight, a bias and an eps that is no LayerNorm: not taken for one."""

    def forward(self, x: Tensor) -> Tensor:
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) + self.bias


def _written(plain: TinyConvNeXt) -> TinyConvNeXt:
    plain.stem_norm, plain.down_norm = WrittenLayerNorm2d(WIDTH), WrittenLayerNorm2d(WIDTH)
    for block in plain.blocks:
        block.norm = ChannelsLastNorm(WIDTH)
    return plain


def _model(family: str = "gaussian") -> nn.Module:
    torch.manual_seed(0)
    plain = _written(TinyConvNeXt())
    for name in NORMS:
        with torch.no_grad():
            plain.get_submodule(name).weight.uniform_(0.5, 1.5)
            plain.get_submodule(name).bias.normal_()
    model = convert(plain.double(), family).double().eval()
    for m in model.modules():
        if isinstance(m, GatedLayer) and m.unit_inclusion() is not None:
            m.set_inclusion(units=torch.full_like(m.unit_inclusion(), 0.9))
    return model


def test_written_norms_are_read_by_what_they_compute():
    assert layer_norm_layout(WrittenLayerNorm2d(4)) == 1
    assert layer_norm_layout(ChannelsLastNorm(4)) == -1
    assert layer_norm_layout(RootMeanSquare(4)) is None


@pytest.mark.parametrize("family", ["gaussian", "spike_slab"])
def test_stream_channels_go_through_written_norms(family):
    model, x = _model(family), _x()
    scores = activation_scores(model, x)
    assert all(torch.isfinite(scores[n]).all() for n in STREAM)  # the stream is scored
    result = shrink_graph(model, x, prune_units=_drop_stream())
    for name in NORMS:
        norm = result.model.get_submodule(name)
        assert isinstance(norm, ZeroCountingLayerNorm), name
        assert (norm.kept, norm.total) == (WIDTH - len(DROPPED), WIDTH)
    masked = _model(family)
    torch.testing.assert_close(_out(result.model, x), _masked_out(masked, x), rtol=0, atol=1e-10)


def test_a_stream_narrowed_through_written_norms_saves_and_loads(tmp_path):
    model, x = _model(), _x()
    small = shrink_graph(model, x, prune_units=_drop_stream()).model
    path = save_shrunk(small, tmp_path / "written.safetensors")
    loaded = load_shrunk(path, lambda: convert(_written(TinyConvNeXt()).double(), "gaussian"))
    assert isinstance(loaded.stem_norm, ZeroCountingLayerNorm)
    torch.testing.assert_close(_out(loaded, x), _out(small, x), rtol=0, atol=0)
