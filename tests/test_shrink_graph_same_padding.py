"""timm's Conv2dSame (TensorFlow's "SAME" padding, computed from the input's size) in
`shrink_graph`: a graph leaf read as a convolution, sliced keeping its class, its
border geometry right at every input size, saved and loaded with the shrunk model.

`Conv2dSame` below computes what timm's does and carries its module path, which is how
bayesprune knows the type without importing timm; the last test runs timm's own class
where timm is installed (the bench extra).
"""

from __future__ import annotations

import copy
import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F
from _torchvision import import_torchvision_models
from test_shrink_graph import TOL, _bn, _kill, _out
from torch import Tensor, nn

from bayesprune import convert
from bayesprune.compress import activation_scores, load_shrunk, save_shrunk
from bayesprune.compress.adapters import same_padding
from bayesprune.compress.graph import shrink_graph


def _same(size: int, k: int, s: int, d: int) -> int:
    return max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)


class Conv2dSame(nn.Conv2d):
    """timm.layers.conv2d_same.Conv2dSame's computation: pad as TensorFlow, then convolve."""

    def __init__(
        self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
        groups=1, bias=True,
    ) -> None:  # fmt: skip
        super().__init__(in_channels, out_channels, kernel_size, stride, 0, dilation, groups, bias)

    def forward(self, x: Tensor) -> Tensor:
        ph = _same(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
        pw = _same(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


Conv2dSame.__module__ = "timm.layers.conv2d_same"


class TfBlock(nn.Module):
    """A tf_efficientnet-like stem and block: SAME-padded strided convolutions, a
    depthwise one among them, BatchNorms, a pointwise projection and a linear head."""

    def __init__(self, conv: type[nn.Conv2d] = Conv2dSame) -> None:
        super().__init__()
        self.stem, self.bn0 = conv(3, 8, 3, 2, bias=False), _bn(8)
        self.dw, self.bn1 = conv(8, 8, 3, 2, groups=8, bias=False), _bn(8)
        self.pw, self.bn2 = nn.Conv2d(8, 6, 1, bias=False), _bn(6)
        self.down = conv(6, 5, 5, 2)
        self.head = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn0(self.stem(x)))
        x = F.relu(self.bn1(self.dw(x)))
        x = F.relu(self.bn2(self.pw(x)))
        return self.head(F.relu(self.down(x)).mean((2, 3)))


def _x(size: int, n: int = 3) -> Tensor:
    g = torch.Generator().manual_seed(size)
    return torch.randn(n, 3, size, size, generator=g, dtype=torch.float64)


def test_same_padding_matches_the_padded_convolution():
    for size in range(5, 12):
        for k, s, d in [(3, 2, 1), (5, 2, 1), (3, 1, 2), (4, 3, 1)]:
            before, after = same_padding(size, k, s, d)
            assert before + after == _same(size, k, s, d) and after - before in (0, 1)


KEEP = {"stem": [0, 2, 3, 6], "pw": [1, 4, 5]}


def _deleted_by_hand(model: nn.Module) -> nn.Module:
    """`model` with the units KEEP drops silenced: weights, and the scale and shift of
    every BatchNorm on their channels, zeroed (what prune_units deletes)."""
    ref = copy.deepcopy(model)
    for layer, norms, width in (("stem", ("bn0", "bn1"), 8), ("pw", ("bn2",), 6)):
        dropped = [u for u in range(width) if u not in KEEP[layer]]
        _kill(ref, layer, dropped)
        with torch.no_grad():
            for bn in norms:
                ref.get_submodule(bn).weight[dropped] = 0.0
                ref.get_submodule(bn).bias[dropped] = 0.0
    return ref


def _check_every_size(small: nn.Module, reference: nn.Module) -> None:
    for size in (15, 16, 9, 10):  # both remainders modulo the stride
        other = _x(size)
        torch.testing.assert_close(_out(small, other), _out(reference, other), atol=TOL, rtol=TOL)


@pytest.mark.parametrize("family", ["deterministic", "gaussian", "sparse_vd", "spike_slab"])
def test_units_go_and_every_input_size_still_matches(family):
    torch.manual_seed(0)
    model = convert(TfBlock().double(), family).double().eval()
    assert isinstance(model.stem, Conv2dSame), "convert keeps it deterministic"
    x = _x(15)
    assert {"stem", "pw", "down"} <= set(activation_scores(model, x)), "all are scored"
    result = shrink_graph(model, x, prune_units=KEEP)
    small = result.model
    assert type(small.stem) is Conv2dSame and type(small.dw) is Conv2dSame
    assert small.stem.out_channels == small.dw.groups == small.dw.out_channels == 4
    assert small.pw.in_channels == 4 and small.down.in_channels == 3
    _check_every_size(small, _deleted_by_hand(model))


class DeadBeforeSame(nn.Module):
    """1×1 conv-BN-ReLU (its dead channels emit BatchNorm's constant everywhere) read by a
    SAME-padded 5×5 stride-2 convolution, dense or depthwise."""

    def __init__(self, depthwise: bool) -> None:
        super().__init__()
        self.depthwise = depthwise
        self.conv, self.bn = nn.Conv2d(3, 6, 1), _bn(6)
        self.reader = Conv2dSame(6, 6, 5, 2, groups=6) if depthwise else Conv2dSame(6, 4, 5, 2)
        self.pw = nn.Conv2d(6, 4, 1)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn(self.conv(x)))
        x = self.reader(x)
        if self.depthwise:
            x = self.pw(F.relu(x))
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("depthwise", [False, True])
def test_a_constant_that_meets_only_an_even_sized_border_is_kept(depthwise):
    """Taps (1, −1, 0.7, 0, 0) along each axis sum to 0.7 at every position of an odd-sized
    map (two zeros before, two after) but not of an even-sized one (one before): folding
    the dead channel's constant on an odd-sized example would be wrong at even sizes."""
    torch.manual_seed(0)
    model = convert(DeadBeforeSame(depthwise).double(), "gaussian").double().eval()
    taps = torch.tensor([1.0, -1.0, 0.7, 0.0, 0.0], dtype=torch.float64)
    with torch.no_grad():
        kernel = model.reader.weight[:, 2] if not depthwise else model.reader.weight[2, 0]
        kernel.copy_(torch.outer(taps, taps).expand_as(kernel))
        model.conv.bias_mu[2] = 1.0  # relu(BN(1)) > 0: a constant to carry
    _kill(model, "conv", [2])
    x = _x(15)
    result = shrink_graph(model, x)
    record = {r.name: r for r in result.layers}["conv"]
    assert record.kept_dead_units == 1, "the constant meets a border: it cannot be folded"
    for size in (15, 16, 17, 18):
        other = _x(size)
        torch.testing.assert_close(
            _out(result.model, other), _out(model, other), atol=TOL, rtol=TOL
        )


def test_save_and_load_keep_the_class_and_the_shapes(tmp_path):
    torch.manual_seed(1)
    model = convert(TfBlock().double(), "gaussian").double().eval()
    result = shrink_graph(model, _x(15), prune_units=KEEP)
    save_shrunk(result.model, tmp_path / "small.safetensors")
    loaded = load_shrunk(tmp_path / "small.safetensors", lambda: convert(TfBlock(), "gaussian"))
    loaded = loaded.double().eval()
    assert type(loaded.down) is Conv2dSame
    assert loaded.down.in_channels == result.model.down.in_channels
    for size in (15, 16):
        other = _x(size)
        torch.testing.assert_close(_out(loaded, other), _out(result.model, other))


def test_timms_own_conv2d_same():
    if importlib.util.find_spec("timm") is None:
        pytest.skip("timm is not installed (it comes with the bench extra)")
    import_torchvision_models()  # timm imports torchvision
    from timm.layers import create_conv2d

    def timm_conv(c_in, c_out, k, stride, groups=1, bias=True):
        conv = create_conv2d(c_in, c_out, k, stride=stride, padding="same", groups=groups)
        assert type(conv).__module__ == "timm.layers.conv2d_same"
        if bias:
            conv.bias = nn.Parameter(torch.randn(c_out) * 0.1)
        return conv

    torch.manual_seed(2)
    model = convert(TfBlock(timm_conv).double(), "gaussian").double().eval()
    result = shrink_graph(model, _x(15), prune_units=KEEP)
    assert type(result.model.stem) is type(model.stem) and result.model.stem.out_channels == 4
    _check_every_size(result.model, _deleted_by_hand(model))
