"""GroupNorm with one group over a stream (PoolFormer / MetaFormer): its statistics read
every channel and position, so a channel goes only where it is exactly 0 with the norm's
scale 0 there, and the norm becomes a `ZeroCountingGroupNorm` that counts the zeros."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from _torchvision import import_torchvision_models
from torch import Tensor, nn

from bayesprune import convert
from bayesprune.compress import (
    ZeroCountingGroupNorm,
    activation_scores,
    export_onnx,
    keep_units,
    load_shrunk,
    onnx_difference,
    save_shrunk,
    shrink_graph,
)
from bayesprune.compress.layer_norm import group_norm_layout
from bayesprune.nn import use_posterior_mean

WIDTH = 8
DROPPED = [1, 4]


class GroupNorm1(nn.GroupNorm):
    """As timm's: one group, its own forward (which may call a fused kernel)."""

    def __init__(self, channels: int) -> None:
        super().__init__(1, channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class Scale(nn.Module):
    """timm's MetaFormer layer scale: a parameter viewed with the shape an attribute holds."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.shape = (c, 1, 1)
        self.scale = nn.Parameter(torch.rand(c) + 0.5)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale.view(self.shape)


class Block(nn.Module):
    """PoolFormer's: x + pool(norm(x)) − norm(x), then x + scale · MLP(norm(x))."""

    def __init__(self, c: int, norm: type[nn.Module]) -> None:
        super().__init__()
        self.norm1, self.norm2 = norm(c), norm(c)
        self.pool = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.fc1, self.fc2 = nn.Conv2d(c, 2 * c, 1), nn.Conv2d(2 * c, c, 1)
        self.layer_scale = Scale(c)

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm1(x)
        x = x + self.pool(y) - y
        return x + self.layer_scale(self.fc2(F.gelu(self.fc1(self.norm2(x)))))


class TinyPoolFormer(nn.Module):
    def __init__(self, norm: type[nn.Module] = GroupNorm1) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, WIDTH, 3, stride=2, padding=1)
        self.blocks = nn.Sequential(Block(WIDTH, norm), Block(WIDTH, norm))
        self.norm = norm(WIDTH)
        self.head = nn.Linear(WIDTH, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.norm(self.blocks(self.stem(x))).mean((2, 3)))


STREAM = ["stem", "blocks.0.fc2", "blocks.1.fc2"]
NORMS = ["blocks.0.norm1", "blocks.0.norm2", "blocks.1.norm1", "blocks.1.norm2", "norm"]


def _model(norm: type[nn.Module] = GroupNorm1) -> nn.Module:
    torch.manual_seed(0)
    plain = TinyPoolFormer(norm)
    for m in plain.modules():
        if isinstance(m, nn.GroupNorm):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
    return convert(plain.double(), "gaussian").double().eval()


def _x() -> Tensor:
    return torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1)).double()


def _out(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad(), use_posterior_mean(model):
        return model.eval()(x)


def _drop_stream() -> dict[str, Tensor]:
    keep = torch.ones(WIDTH, dtype=torch.bool)
    keep[DROPPED] = False
    return dict.fromkeys(STREAM, keep)


def test_zero_counting_group_norm_equals_group_norm_over_the_zero_padded_channels():
    torch.manual_seed(0)
    norm = nn.GroupNorm(1, 6).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    kept = torch.tensor([0, 2, 3, 5])
    x = torch.randn(2, 6, 4, 5, dtype=torch.float64) * 3 + 1
    x[:, [1, 4]] = 0.0
    counted = ZeroCountingGroupNorm.of(norm, kept)
    torch.testing.assert_close(counted(x[:, kept]), norm(x)[:, kept])
    alone = F.group_norm(x[:, kept], 1, norm.weight[kept], norm.bias[kept])
    assert not torch.allclose(alone, norm(x)[:, kept])  # over the kept ones alone it differs
    assert ZeroCountingGroupNorm.from_config(counted.config()).total == 6


def test_group_norm_subclasses_are_read_by_what_they_compute():
    assert group_norm_layout(GroupNorm1(4))
    assert not group_norm_layout(nn.GroupNorm(1, 4))  # torch's own forward: read as it is


@pytest.mark.parametrize("norm", [GroupNorm1, lambda c: nn.GroupNorm(1, c)])
def test_a_poolformer_stream_narrows_through_one_group_norms(norm):
    model, x = _model(norm), _x()
    scores = activation_scores(model, x)
    assert all(torch.isfinite(scores[n]).all() for n in STREAM)
    result = shrink_graph(model, x, prune_units=_drop_stream())
    assert result.max_abs_difference < 1e-10
    kept = [u for u in range(WIDTH) if u not in DROPPED]
    assert next(r for r in result.layers if r.name == "stem").kept_units == kept
    for name in NORMS:
        norm_module = result.model.get_submodule(name)
        assert isinstance(norm_module, ZeroCountingGroupNorm), name
        assert (norm_module.kept, norm_module.total) == (len(kept), WIDTH)
    for block in result.model.blocks:  # the scale's parameter and its view's attribute
        assert block.layer_scale.scale.shape == (len(kept),)
        assert block.layer_scale.shape == (len(kept), 1, 1)
    assert result.attributes["blocks.0.layer_scale"] == {"shape": (len(kept), 1, 1)}
    reference = _model(norm)
    with torch.no_grad():
        for name in STREAM:
            layer = reference.get_submodule(name)
            layer.weight_mu[DROPPED], layer.bias_mu[DROPPED] = 0.0, 0.0
        for name in NORMS:
            reference.get_submodule(name).weight[DROPPED] = 0.0
            reference.get_submodule(name).bias[DROPPED] = 0.0
    torch.testing.assert_close(_out(result.model, x), _out(reference, x), rtol=0, atol=1e-10)


def test_a_group_norm_with_several_groups_still_takes_its_groups_whole():
    """GroupNorm(2, 8): a channel's statistics are its group's; a lone channel stays."""
    model, x = _model(lambda c: nn.GroupNorm(2, c)), _x()
    result = shrink_graph(model, x, prune_units=_drop_stream())
    assert result.model.stem.out_channels == WIDTH
    torch.testing.assert_close(_out(result.model, x), _out(model, x))


def test_a_narrowed_poolformer_saves_loads_and_exports(tmp_path):
    model, x = _model(), _x()
    result = shrink_graph(model, x, prune_units=_drop_stream())
    path = save_shrunk(result.model, tmp_path / "pool.safetensors")
    loaded = load_shrunk(path, lambda: convert(TinyPoolFormer().double(), "gaussian"))
    assert isinstance(loaded.norm, ZeroCountingGroupNorm)
    assert loaded.blocks[1].layer_scale.shape == (WIDTH - len(DROPPED), 1, 1)
    torch.testing.assert_close(_out(loaded, x), _out(result.model, x), rtol=0, atol=0)
    onnx = export_onnx(loaded.float(), tmp_path / "pool.onnx", input_shape=(3, 8, 8))
    assert onnx_difference(onnx, loaded, x.float()) < 1e-5


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm (bench extra)")
def test_timm_poolformer_streams_are_scored_and_shrunk():
    import_torchvision_models()  # timm imports torchvision, whose compiled ops may not load
    import timm

    torch.manual_seed(0)
    net = timm.create_model("poolformer_s12", pretrained=False, num_classes=3)
    model = convert(net.double(), "gaussian").double().eval()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    scores = activation_scores(model, x)
    assert torch.isfinite(scores["stem.conv"]).all()
    result = shrink_graph(model, x, prune_units=keep_units(scores, sparsity=0.25))
    assert result.max_abs_difference < 1e-8
    assert result.model.stem.conv.out_channels < 64
