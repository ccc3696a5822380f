"""`torch.split` with sizes a module's attribute holds (timm's MixedConv2d `self.splits`,
Res2Net's `self.width`): the channels it cuts are free, the attribute is rewritten with
the layers, and it travels with the shrunk model through save_shrunk / load_shrunk.
Sizes that no attribute is proven to hold still pin."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from _torchvision import import_torchvision_models
from test_shrink_graph import FAMILIES, TOL, _kill, _out
from torch import Tensor, nn

from bayesprune import convert
from bayesprune.compress import load_shrunk, save_shrunk, shape_attributes
from bayesprune.compress.graph import shrink_graph
from bayesprune.compress.graph_trace import analyse
from bayesprune.io import CheckpointError, load_tensors


class Mixed(nn.Module):
    """MixNet's mixed depthwise convolution: a kernel size per range of channels."""

    def __init__(self, splits: list[int]) -> None:
        super().__init__()
        self.splits = list(splits)
        self.convs = nn.ModuleList(
            nn.Conv2d(c, c, k, padding=k // 2, groups=c, bias=False)
            for c, k in zip(splits, (3, 5, 7), strict=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        pieces = torch.split(x, self.splits, 1)
        return torch.cat([conv(pieces[i]) for i, conv in enumerate(self.convs)], 1)


class MixNetish(nn.Module):
    """1×1 expansion (no bias: a dead unit is exactly 0), mixed depthwise, 1×1, head."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(3, 9, 1, bias=False)
        self.mix = Mixed([2, 3, 4])
        self.project = nn.Conv2d(9, 5, 1)
        self.head = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.mix(F.relu(self.expand(x)))
        return self.head(F.relu(self.project(F.relu(x))).mean((2, 3)))


def _x(size: int) -> Tensor:
    g = torch.Generator().manual_seed(size)
    return torch.randn(2, 3, size, size, generator=g, dtype=torch.float64)


def _model(cls: type[nn.Module], family: str) -> nn.Module:
    torch.manual_seed(0)
    return convert(cls().double(), family).double().eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_a_list_of_sizes_is_rewritten_with_the_channels(family):
    model = _model(MixNetish, family)
    _kill(model, "expand", [0, 3, 4, 8])  # one of the first piece, two of the second...
    result = shrink_graph(model, _x(9))
    small = result.model
    assert small.mix.splits == [1, 1, 3] and result.attributes == {"mix": {"splits": [1, 1, 3]}}
    assert [c.out_channels for c in small.mix.convs] == [1, 1, 3]
    assert small.expand.out_channels == 5 and small.project.in_channels == 5
    assert model.mix.splits == [2, 3, 4], "the input model keeps its sizes"
    assert shape_attributes(small) == {"mix": {"splits": [1, 1, 3]}}
    for size in (9, 12):
        torch.testing.assert_close(_out(small, _x(size)), _out(model, _x(size)), atol=TOL, rtol=TOL)


def test_a_piece_keeps_one_channel():
    model = _model(MixNetish, "gaussian")
    _kill(model, "expand", [2, 3, 4])  # the whole second piece
    result = shrink_graph(model, _x(9))
    assert result.model.mix.splits == [2, 1, 4]  # a size of 0 would leave its conv no input
    torch.testing.assert_close(_out(result.model, _x(9)), _out(model, _x(9)), atol=TOL, rtol=TOL)


class Res2(nn.Module):
    """Res2Net's bottleneck: `width`-channel pieces, each conv fed the last one's output."""

    def __init__(self) -> None:
        super().__init__()
        self.width, self.scale = 2, 3  # exactly one attribute holds the size
        self.conv1 = nn.Conv2d(3, 6, 1, bias=False)
        self.convs = nn.ModuleList(nn.Conv2d(2, 2, 3, padding=1) for _ in range(2))
        self.conv3 = nn.Conv2d(6, 4, 1)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        pieces = torch.split(F.relu(self.conv1(x)), self.width, 1)
        out, sp = [], pieces[0]
        for i, conv in enumerate(self.convs):
            sp = F.relu(conv(sp if i == 0 else sp + pieces[i]))
            out.append(sp)
        out.append(pieces[-1])
        return self.head(F.relu(self.conv3(torch.cat(out, 1))).mean((2, 3)))


def test_one_size_repeated_keeps_the_pieces_equal():
    model = _model(Res2, "gaussian")
    cg = analyse(model, (_x(8),))
    ids = next(p.ids for p in cg.producers if p.name == "conv1")
    assert cg.find(ids[1]) == cg.find(ids[3]) == cg.find(ids[5])  # position 1 of each piece
    assert not {cg.find(i) for i in ids} & cg.pinned_groups()
    _kill(model, "conv1", [1, 3, 5])  # position 1 of every piece, and what is added to it:
    for name in ("convs.0", "convs.1"):  # the convs' unit 1 (relu(−5) = 0: nothing to fold)
        _kill(model, name, [1])
        with torch.no_grad():
            model.get_submodule(name).bias_mu[1] = -5.0
    result = shrink_graph(model, _x(8))
    assert result.model.width == 1 and result.model.conv1.out_channels == 3
    for size in (8, 11):
        torch.testing.assert_close(
            _out(result.model, _x(size)), _out(model, _x(size)), atol=TOL, rtol=TOL
        )


class Literal(MixNetish):
    """The sizes written in forward (the attribute holds the same value but is not read)."""

    def forward(self, x: Tensor) -> Tensor:
        pieces = torch.split(F.relu(self.expand(x)), [2, 3, 4], 1)
        x = torch.cat([conv(pieces[i]) for i, conv in enumerate(self.mix.convs)], 1)
        return self.head(F.relu(self.project(F.relu(x))).mean((2, 3)))


class Computed(Res2):
    """The size computed in forward: no attribute holds it or the whole width."""

    def __init__(self) -> None:
        super().__init__()
        self.unit = 1
        del self.width

    def forward(self, x: Tensor) -> Tensor:
        pieces = torch.split(F.relu(self.conv1(x)), self.unit * 2, 1)
        return self.head(F.relu(self.conv3(torch.cat(pieces, 1))).mean((2, 3)))


class Twice(MixNetish):
    """One mixed convolution applied to two different tensors: one attribute, two splits."""

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.expand(x))
        x = self.mix(h) + self.mix(h.flip(1))
        return self.head(F.relu(self.project(F.relu(x))).mean((2, 3)))


@pytest.mark.parametrize("cls", [Literal, Computed, Twice])
def test_sizes_no_attribute_is_proven_to_hold_still_pin(cls):
    model = _model(cls, "gaussian")
    cg = analyse(model, (_x(8),))
    ids = next(p.ids for p in cg.producers if p.name in ("expand", "conv1"))
    assert {cg.find(i) for i in ids} <= cg.pinned_groups()
    assert not cg.sized
    if cls is not Twice:  # there the twice-called convolutions pin first
        assert "split" in cg.why_pinned(cg.find(ids[0]))


class SplitInputs(nn.Module):
    """Two groups of input features, each read by its own layer."""

    def __init__(self) -> None:
        super().__init__()
        self.groups = (4, 3)
        self.a, self.b = nn.Linear(4, 5), nn.Linear(3, 5)
        self.head = nn.Linear(10, 2)

    def forward(self, x: Tensor) -> Tensor:
        first, second = x.split(self.groups, dim=1)
        return self.head(torch.cat([F.relu(self.a(first)), F.relu(self.b(second))], 1))


def test_input_features_go_from_each_piece():
    model = _model(SplitInputs, "gaussian")
    x = torch.randn(5, 7, dtype=torch.float64)
    result = shrink_graph(model, x, prune_inputs={"x": [0, 2, 3, 5]})
    assert result.model.groups == (3, 1) and result.kept_inputs == {"x": [0, 2, 3, 5]}
    masked = _model(SplitInputs, "gaussian")
    with torch.no_grad():
        masked.a.weight_mu[:, 1] = 0.0
        masked.b.weight_mu[:, [0, 2]] = 0.0
    torch.testing.assert_close(_out(result.model, x[:, [0, 2, 3, 5]]), _out(masked, x))
    with pytest.raises(ValueError, match="one feature per piece"):
        shrink_graph(model, x, prune_inputs={"x": [0, 1, 2, 3]})


class CrossStage(nn.Module):
    """CSPNet's cross-stage split: halves of `expand_chs`, one through a block."""

    def __init__(self) -> None:
        super().__init__()
        self.expand_chs = 8
        self.conv_exp = nn.Conv2d(3, 8, 1, bias=False)
        self.block = nn.Conv2d(4, 4, 3, padding=1)
        self.transition = nn.Conv2d(8, 5, 1)
        self.head = nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        xs, xb = F.relu(self.conv_exp(x)).split(self.expand_chs // 2, dim=1)
        out = self.transition(torch.cat([xs, F.relu(self.block(xb))], dim=1))
        return self.head(F.relu(out).mean((2, 3)))


def test_a_width_attribute_halved_in_forward_is_rewritten():
    model = _model(CrossStage, "gaussian")
    cg = analyse(model, (_x(8),))
    assert [(s.attribute, s.total) for s in cg.sized] == [("expand_chs", True)]
    _kill(model, "conv_exp", [1, 5])  # position 1 of both halves
    result = shrink_graph(model, _x(8))
    assert result.attributes == {"": {"expand_chs": 6}} and result.model.expand_chs == 6
    for size in (8, 11):
        torch.testing.assert_close(
            _out(result.model, _x(size)), _out(model, _x(size)), atol=TOL, rtol=TOL
        )


def test_the_sizes_are_saved_and_loaded(tmp_path):
    model = _model(MixNetish, "gaussian")
    _kill(model, "expand", [0, 3, 4, 8])
    small = shrink_graph(model, _x(9)).model
    path = save_shrunk(small, tmp_path / "mix.safetensors")
    assert load_tensors(path)[1]["version"] == 3
    loaded = load_shrunk(path, lambda: convert(MixNetish(), "gaussian")).double()
    assert loaded.mix.splits == [1, 1, 3] and shape_attributes(loaded) == shape_attributes(small)
    torch.testing.assert_close(_out(loaded, _x(10)), _out(small, _x(10)))

    class Renamed(MixNetish):
        def __init__(self) -> None:
            super().__init__()
            self.mix.splits = 9  # another kind of value: not this model's attribute

    Renamed.__qualname__ = MixNetish.__qualname__
    with pytest.raises(CheckpointError, match="splits"):
        load_shrunk(path, lambda: convert(Renamed(), "gaussian"))


class Branching(nn.Module):
    """A forward fx cannot trace (a branch on a value) around a MixNet-like body."""

    def __init__(self) -> None:
        super().__init__()
        self.body = MixNetish()

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)
        return out if bool(out.sum() > -1e9) else -out


def test_inside_a_part_the_record_names_the_module_in_the_model(tmp_path):
    model = _model(Branching, "gaussian")
    _kill(model, "body.expand", [0, 3, 4, 8])
    result = shrink_graph(model, _x(9))
    assert result.parts == ["body"]
    assert result.attributes == {"body.mix": {"splits": [1, 1, 3]}}
    assert shape_attributes(result.model) == result.attributes
    path = save_shrunk(result.model, tmp_path / "branching.safetensors")
    loaded = load_shrunk(path, lambda: convert(Branching(), "gaussian")).double()
    assert loaded.body.mix.splits == [1, 1, 3]
    torch.testing.assert_close(_out(loaded, _x(12)), _out(model, _x(12)), atol=TOL, rtol=TOL)


def test_timms_mixed_conv2d():
    if importlib.util.find_spec("timm") is None:
        pytest.skip("timm is not installed (it comes with the bench extra)")
    import_torchvision_models()  # timm imports torchvision
    from timm.layers import MixedConv2d

    class TimmMix(MixNetish):
        def __init__(self) -> None:
            super().__init__()
            self.mix = MixedConv2d(9, 9, kernel_size=[3, 5, 7], depthwise=True)

    model = _model(TimmMix, "gaussian")
    _kill(model, "expand", [0, 3, 4, 8])
    result = shrink_graph(model, _x(9))
    assert result.attributes == {"mix": {"splits": [2, 1, 2]}}  # timm's split: [3, 3, 3]
    for size in (9, 12):
        torch.testing.assert_close(
            _out(result.model, _x(size)), _out(model, _x(size)), atol=TOL, rtol=TOL
        )


class Flat(nn.Module):
    """The tutorial LeNet's flatten, its width held in an attribute: x.view(-1, self.flat)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, bias=False)
        self.flat = 6 * 2 * 2
        self.fc = nn.Linear(self.flat, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.conv(x)), 2)
        return self.head(F.relu(self.fc(x.view(-1, self.flat))))


def test_a_view_whose_width_an_attribute_holds_is_rewritten(tmp_path):
    model = _model(Flat, "gaussian")
    cg = analyse(model, (_x(6),))
    assert [(s.attribute, s.position) for s in cg.sized] == [("flat", 1)]
    _kill(model, "conv", [1, 4])
    result = shrink_graph(model, _x(6))
    assert result.attributes == {"": {"flat": 16}} and result.model.fc.in_features == 16
    torch.testing.assert_close(_out(result.model, _x(6)), _out(model, _x(6)), atol=TOL, rtol=TOL)
    loaded = load_shrunk(save_shrunk(result.model, tmp_path / "flat.safetensors"), Flat)
    loaded = loaded.double()
    assert loaded.flat == 16
    torch.testing.assert_close(_out(loaded, _x(6)), _out(result.model, _x(6)))
