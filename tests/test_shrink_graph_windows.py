"""Swin's windows: shifted windows (`torch.roll` over the positions), padding of the
positions (`F.pad`), slices of the positions with sizes of the forward, an opaque
window-reverse function (a library's `register_notrace_function`, proven to act on each
channel apart) and patch merging (2 × 2 positions merged into the channels): the
residual stream's channels follow all of them."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from _torchvision import import_torchvision_models
from torch import Tensor, fx, nn

from bayesprune import convert
from bayesprune.compress import (
    ZeroCountingLayerNorm,
    activation_scores,
    keep_units,
    shrink_graph,
)
from bayesprune.compress.graph_trace import analyse
from bayesprune.nn import use_posterior_mean

WIDTH, WINDOW = 8, 2


def window_reverse(windows: Tensor, window: int, h: int, w: int) -> Tensor:
    """Windows (B·nW × window × window × C) back to B × h × w × C."""
    c = windows.shape[-1]
    x = windows.view(-1, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def channel_cumsum(x: Tensor, window: int, h: int, w: int) -> Tensor:
    """Reverses the windows and mixes the channels: no channel can go through it."""
    return torch.cumsum(window_reverse(x, window, h, w), -1)


fx.wrap("window_reverse")  # kept whole by tracing, as timm registers its own
fx.wrap("channel_cumsum")


class Block(nn.Module):
    def __init__(self, c: int, shift: int, reverse: str = "window_reverse") -> None:
        super().__init__()
        self.norm, self.mix = nn.LayerNorm(c), nn.Linear(c, c)
        self.fc1, self.fc2, self.norm2 = nn.Linear(c, 2 * c), nn.Linear(2 * c, c), nn.LayerNorm(c)
        self.shift, self.reverse = shift, reverse

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        y = torch.roll(self.norm(x), shifts=(-self.shift, -self.shift), dims=(1, 2))
        pad = (WINDOW - h % WINDOW) % WINDOW
        y = F.pad(y, (0, 0, 0, pad, 0, pad))
        hp, wp = y.shape[1], y.shape[2]
        windows = y.view(b, hp // WINDOW, WINDOW, wp // WINDOW, WINDOW, c)
        windows = windows.permute(0, 1, 3, 2, 4, 5).reshape(-1, WINDOW * WINDOW, c)
        windows = self.mix(windows - windows.mean(1, keepdim=True))  # a stand-in for attention
        windows = windows.view(-1, WINDOW, WINDOW, c)
        reverse = window_reverse if self.reverse == "window_reverse" else channel_cumsum
        y = reverse(windows, WINDOW, hp, wp)[:, :h, :w, :]
        x = x + torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class PatchMerging(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm, self.reduction = nn.LayerNorm(4 * c), nn.Linear(4 * c, 2 * c)

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = x.reshape(b, x.shape[1] // 2, 2, x.shape[2] // 2, 2, c)
        return self.reduction(self.norm(x.permute(0, 1, 3, 4, 2, 5).flatten(3)))


class TinySwin(nn.Module):
    def __init__(self, reverse: str = "window_reverse") -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, WIDTH, 2, stride=2)
        self.blocks = nn.Sequential(Block(WIDTH, 0, reverse), Block(WIDTH, 1, reverse))
        self.merge = PatchMerging(WIDTH)
        self.head = nn.Linear(2 * WIDTH, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.merge(self.blocks(self.embed(x).permute(0, 2, 3, 1)))
        return self.head(x.mean((1, 2)))


STREAM = ["embed", "blocks.0.mix", "blocks.0.fc2", "blocks.1.mix", "blocks.1.fc2"]


def _model(reverse: str = "window_reverse") -> nn.Module:
    torch.manual_seed(0)
    plain = TinySwin(reverse)
    for m in plain.modules():
        if isinstance(m, nn.LayerNorm):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
    return convert(plain.double(), "gaussian").double().eval()


def _x() -> Tensor:  # 10 × 10 → 5 × 5 tokens: windows of 2 need padding
    return torch.randn(3, 3, 10, 10, generator=torch.Generator().manual_seed(1)).double()


def _out(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad(), use_posterior_mean(model):
        return model.eval()(x)


def test_a_swin_stream_narrows_through_windows_and_patch_merging():
    model, x = _model(), _x()
    scores = activation_scores(model, x)
    assert all(torch.isfinite(scores[n]).all() for n in STREAM)
    keep = torch.ones(WIDTH, dtype=torch.bool)
    keep[[0, 3]] = False
    result = shrink_graph(model, x, prune_units=dict.fromkeys(STREAM, keep))
    assert result.max_abs_difference < 1e-10
    small = result.model
    assert small.embed.out_channels == WIDTH - 2
    merged = small.merge.norm  # 4 positions × 6 channels of 4 × 8, counting the zeros
    assert isinstance(merged, ZeroCountingLayerNorm)
    assert (merged.kept, merged.total) == (4 * (WIDTH - 2), 4 * WIDTH)
    assert small.merge.reduction.in_features == 4 * (WIDTH - 2)
    reference = _model()
    with torch.no_grad():
        for name in STREAM:
            layer = reference.get_submodule(name)
            layer.weight_mu[[0, 3]], layer.bias_mu[[0, 3]] = 0.0, 0.0
        for m in reference.modules():
            if isinstance(m, nn.LayerNorm):
                rows = (
                    [0, 3]
                    if m.weight.numel() == WIDTH
                    else [p * WIDTH + c for p in range(4) for c in (0, 3)]
                )
                m.weight[rows], m.bias[rows] = 0.0, 0.0
    torch.testing.assert_close(_out(small, x), _out(reference, x), rtol=0, atol=1e-10)


def test_an_opaque_function_that_mixes_channels_pins_them():
    model, x = _model("channel_cumsum"), _x()
    cg = analyse(model, (x,))
    assert any("channel_cumsum" in why for why in cg.pinned_at.values())
    keep = torch.ones(WIDTH, dtype=torch.bool)
    keep[[0, 3]] = False
    result = shrink_graph(model, x, prune_units=dict.fromkeys(STREAM, keep))
    assert result.model.embed.out_channels == WIDTH


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm (bench extra)")
def test_timm_swin_streams_are_scored_and_shrunk():
    import_torchvision_models()  # timm imports torchvision, whose compiled ops may not load
    from timm.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    net = SwinTransformer(img_size=32, patch_size=4, window_size=4, embed_dim=16, depths=(2, 2),
                          num_heads=(2, 4), num_classes=3)  # fmt: skip
    model = convert(net.double(), "gaussian").double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    scores = activation_scores(model, x)
    assert torch.isfinite(scores["patch_embed.proj"]).all()
    result = shrink_graph(model, x, prune_units=keep_units(scores, sparsity=0.25))
    assert result.max_abs_difference < 1e-10
    assert result.model.patch_embed.proj.out_channels == 12
