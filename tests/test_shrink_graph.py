"""shrink_graph(): on residual, concat, depthwise and custom-forward graphs, shrunk == masked."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bayesprune import convert
from bayesprune.compress import apply_masks, unit_weight_masks
from bayesprune.compress.graph import GraphShrinkError, GraphTraceError, shrink_graph
from bayesprune.nn import use_posterior_mean

TOL = 1e-5
FAMILIES = ["deterministic", "gaussian", "sparse_vd", "sparse_vd_group", "spike_slab"]


def _out(model: nn.Module, x: Tensor) -> Tensor:
    model.eval()
    with torch.no_grad(), use_posterior_mean(model):
        return model(x)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _bn(c: int) -> nn.BatchNorm2d:
    """A BatchNorm with non-trivial statistics, so dead channels give non-zero constants."""
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(0.2, 0.8)  # β > 0: relu(β − γμ/σ) is often non-zero
        bn.running_mean.uniform_(-0.3, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
    return bn


def _kill(model: nn.Module, layer: str, units: list[int]) -> None:
    """Mask every incoming weight of `units` of `layer` (they emit their bias only)."""
    target = model.get_submodule(layer)
    n = (target.weight_mu if hasattr(target, "weight_mu") else target.weight).shape[0]
    keep = torch.ones(n)
    keep[units] = 0.0
    apply_masks(model, unit_weight_masks(model, {layer: keep}))


class Residual(nn.Module):
    """stem conv-BN-ReLU, then conv-BN-ReLU-conv-BN + identity, ReLU; pool; linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(2, 6, 3, padding=1, bias=False), _bn(6)
        self.conv1, self.bn1 = nn.Conv2d(6, 5, 1, bias=False), _bn(5)
        self.conv2, self.bn2 = nn.Conv2d(5, 6, 1, bias=False), _bn(6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn0(self.stem(x)))
        y = F.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(y)) + x)
        return self.head(x.mean((2, 3)))


class Concat(nn.Module):
    """Two branches concatenated, a 1×1 conv, flatten into a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(2, 4, 3), nn.Conv2d(2, 3, 3)
        self.mix = nn.Conv2d(7, 5, 1)
        self.head = nn.Linear(5 * 4 * 4, 2)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.cat([F.relu(self.a(x)), torch.sigmoid(self.b(x))], dim=1)
        return self.head(torch.flatten(F.relu(self.mix(y)), 1))


class Separable(nn.Module):
    """conv-BN-ReLU, depthwise 3×3-BN-ReLU, pointwise 1×1, global pool, linear head."""

    def __init__(self, padding: int = 0) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(2, 6, 3), _bn(6)
        self.dw, self.dw_bn = nn.Conv2d(6, 6, 3, padding=padding, groups=6), _bn(6)
        self.pw = nn.Conv2d(6, 4, 1)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn(self.conv(x)))
        x = F.relu(self.dw_bn(self.dw(x)))
        x = F.adaptive_avg_pool2d(F.relu(self.pw(x)), 1)
        return self.head(x.view(x.size(0), -1))


def _build(cls: type[nn.Module], family: str, *args) -> nn.Module:
    torch.manual_seed(0)
    return convert(cls(*args).double(), family).double()


@pytest.mark.parametrize("family", FAMILIES)
def test_residual_block(family):
    model = _build(Residual, family)
    _kill(model, "conv1", [1, 3])  # inside the block: folded into conv2's BatchNorm
    _kill(model, "stem", [2, 4])  # dead on both sides of the add: the channel goes
    _kill(model, "conv2", [0, 2, 4])  # 0 is dead in one branch only: kept
    x = torch.randn(4, 2, 6, 6, dtype=torch.float64)
    result = shrink_graph(model, x)
    torch.testing.assert_close(_out(result.model, x), _out(model, x), atol=TOL, rtol=TOL)
    by_name = {r.name: r for r in result.layers}
    assert by_name["conv1"].kept_units == [0, 2, 4]
    assert by_name["stem"].kept_units == by_name["conv2"].kept_units == [0, 1, 3, 5]
    assert result.followers["bn0"] == result.followers["bn2"] == [0, 1, 3, 5]
    assert by_name["head"].units_after == 3 and by_name["head"].inputs_after == 4
    assert _params(result.model) < _params(model)
    assert result.max_abs_difference < TOL


@pytest.mark.parametrize("family", FAMILIES)
def test_concat_block(family):
    model = _build(Concat, family)
    _kill(model, "a", [1])  # relu(bias) folded into mix
    _kill(model, "b", [0, 2])  # sigmoid(bias) ≠ 0 folded into mix
    _kill(model, "mix", [3])  # relu(bias) over its 16 flattened columns of the head
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64)
    result = shrink_graph(model, x)
    torch.testing.assert_close(_out(result.model, x), _out(model, x), atol=TOL, rtol=TOL)
    by_name = {r.name: r for r in result.layers}
    assert by_name["a"].kept_units == [0, 2, 3] and by_name["b"].kept_units == [1]
    assert by_name["mix"].inputs_after == 4 and by_name["mix"].kept_units == [0, 1, 2, 4]
    assert by_name["head"].inputs_after == 4 * 16
    assert sum(r.folded_units for r in result.layers) >= 3
    assert _params(result.model) < _params(model)


@pytest.mark.parametrize("family", FAMILIES)
def test_depthwise_separable_block(family):
    model = _build(Separable, family)
    _kill(model, "conv", [1, 4])
    _kill(model, "pw", [2])
    x = torch.randn(3, 2, 7, 7, dtype=torch.float64)
    result = shrink_graph(model, x)
    torch.testing.assert_close(_out(result.model, x), _out(model, x), atol=TOL, rtol=TOL)
    assert result.followers["dw"] == result.followers["dw_bn"] == [0, 2, 3, 5]
    assert result.model.dw.groups == result.model.dw.in_channels == 4
    assert {r.name: r for r in result.layers}["pw"].kept_units == [0, 1, 3]
    assert _params(result.model) < _params(model)


def test_padded_depthwise_keeps_a_constant_it_cannot_fold():
    model = _build(Separable, "gaussian", 1)  # the constant meets the dw conv's zero border
    _kill(model, "conv", [1, 3])
    with torch.no_grad():
        model.conv.bias_mu[1] = 1.0  # relu(BN(1)) > 0: a constant the pw conv cannot absorb
        model.conv.bias_mu[3] = -9.0  # relu(BN(−9)) = 0: nothing to fold, it goes
    x = torch.randn(2, 2, 7, 7, dtype=torch.float64)
    result = shrink_graph(model, x)
    torch.testing.assert_close(_out(result.model, x), _out(model, x), atol=TOL, rtol=TOL)
    record = {r.name: r for r in result.layers}["conv"]
    assert record.kept_units == [0, 1, 2, 4, 5] and record.kept_dead_units == 1
    assert any("kept" in note for note in result.notes)


def test_prune_units_and_the_check():
    model = _build(Concat, "gaussian")
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    result = shrink_graph(model, x, prune_units={"a": [0, 1], "mix": [0, 2, 4]})
    by_name = {r.name: r for r in result.layers}
    assert by_name["a"].kept_units == [0, 1] and by_name["mix"].kept_units == [0, 2, 4]
    assert result.max_abs_difference < TOL and result.notes  # equals the masked model
    with pytest.raises(ValueError, match="unknown module"):
        shrink_graph(model, x, prune_units={"nope": [0]})


class Flip(nn.Module):
    """Reverses the channels: NOT channelwise, so declaring it passthrough is a lie."""

    def forward(self, x: Tensor) -> Tensor:
        return x.flip(1)


class Flipped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.flip, self.b = nn.Conv2d(1, 4, 1), Flip(), nn.Conv2d(4, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(self.flip(torch.sigmoid(self.a(x))))


def test_check_raises_when_the_equivalence_fails():
    model = _build(Flipped, "deterministic")
    _kill(model, "a", [0])
    x = torch.randn(2, 1, 1, 1, dtype=torch.float64)  # 1×1: the fold check cannot see it
    result = shrink_graph(model, x, leaf_modules=(Flip,))  # unknown op: channels kept
    assert result.layers[0].units_after == 4
    with pytest.raises(GraphShrinkError, match="differs"):
        shrink_graph(model, x, leaf_modules=(Flip,), passthrough=(Flip,))


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        if x.sum() > 0:
            return self.a(x)
        return -self.a(x)


def test_untraceable_forward_names_the_op_and_the_fix():
    with pytest.raises(GraphTraceError, match=r"x.sum\(\) > 0.*leaf_modules"):
        shrink_graph(Branchy(), torch.randn(2, 3))


class Detector(nn.Module):
    """A detector's shape: a traceable backbone, a forward that loops over its images."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())

    def forward(self, images: Tensor) -> list[Tensor]:
        return [self.backbone(image[None]) for image in images]


def test_an_untraceable_detector_is_shrunk_in_its_backbone():
    result = shrink_graph(Detector(), torch.randn(2, 3, 6, 6))  # tests/test_shrink_graph_parts
    assert result.parts == ["backbone"] and result.max_abs_difference == 0
    assert "for image in images" in result.notes[0]


class Block(nn.Module):
    """A ResNet basic block; a 1×1 conv + BN shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False)
        self.bn1 = _bn(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = _bn(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _bn(cout))

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNetish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1, bias=False), _bn(6), nn.ReLU())
        self.layer1 = Block(6, 6)
        self.layer2 = Block(6, 8, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(self.layer2(self.layer1(self.stem(x)))), 1))


def _silence(model: nn.Module, bn: str, channels: list[int]) -> None:
    """β ≪ 0 on these channels: after the ReLU a dead channel is exactly 0 (nothing to fold)."""
    with torch.no_grad():
        model.get_submodule(bn).bias[channels] = -50.0


@pytest.mark.parametrize("family", FAMILIES)
def test_resnetish_two_stages_with_a_downsampling_shortcut(family):
    model = _build(ResNetish, family)
    # stage 1: the residual stream is read by padded 3×3 convs, so only zero constants go
    _kill(model, "stem.0", [1, 4])
    _kill(model, "layer1.conv2", [1, 4])
    _silence(model, "stem.1", [1, 4])
    _silence(model, "layer1.bn2", [1, 4])
    _kill(model, "layer1.conv1", [2])
    _silence(model, "layer1.bn1", [2])
    # stage 2: the stream is read by the head only: non-zero constants fold into fc
    _kill(model, "layer2.conv2", [0, 5, 7])
    _kill(model, "layer2.shortcut.0", [0, 5])  # 7 lives in the shortcut: kept
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    result = shrink_graph(model, x)
    torch.testing.assert_close(_out(result.model, x), _out(model, x), atol=TOL, rtol=TOL)
    kept = {r.name: r.kept_units for r in result.layers}
    assert kept["stem.0"] == kept["layer1.conv2"] == [0, 2, 3, 5]
    assert kept["layer1.conv1"] == [0, 1, 3, 4, 5]
    assert kept["layer2.conv2"] == kept["layer2.shortcut.0"] == [1, 2, 3, 4, 6, 7]
    assert result.followers["layer2.shortcut.1"] == [1, 2, 3, 4, 6, 7]
    assert result.model.layer2.conv1.in_channels == 4
    assert _params(result.model) < _params(model)


class PaddedAfterBN(nn.Module):
    """conv-BN-ReLU into a padded 3×3 conv: a dropped channel's BatchNorm constant
    would meet the zero border, where no bias can absorb it exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(2, 6, 3, padding=1, bias=False), _bn(6)
        self.conv2 = nn.Conv2d(6, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(F.relu(self.bn1(self.conv1(x))))
        return self.head(y.mean((2, 3)))


@pytest.mark.parametrize("family", FAMILIES)
def test_prune_units_deletes_the_channel_through_its_batchnorm(family):
    """Units dropped by prune_units are deleted (BatchNorm scale and shift zeroed with
    the weights), so they go even before a padded conv, and the shrunk net equals the
    input model with those channels deleted by hand."""
    model = _build(PaddedAfterBN, family)
    x = torch.randn(3, 2, 7, 7, dtype=torch.float64)
    result = shrink_graph(model, x, prune_units={"conv1": [0, 2, 5]})
    record = {r.name: r for r in result.layers}["conv1"]
    assert record.units_after == 3 and record.kept_dead_units == 0
    assert result.model.bn1.num_features == 3 and result.model.conv2.in_channels == 3
    by_hand = _build(PaddedAfterBN, family)
    _kill(by_hand, "conv1", [1, 3, 4])
    with torch.no_grad():
        by_hand.bn1.weight[[1, 3, 4]] = 0.0
        by_hand.bn1.bias[[1, 3, 4]] = 0.0
    assert torch.allclose(_out(result.model, x), _out(by_hand, x), atol=TOL)
    assert model.bn1.weight.ne(0).all()  # the input model is not modified


@pytest.mark.parametrize("cls", [Residual, Concat])
def test_input_scales_fold_and_slice_on_a_graph(cls):
    """Group Sparse VD with scales on every layer's inputs: a removed channel's constant
    is folded through the reader's scaled weights, and the readers' scales are cut with
    their input channels."""
    torch.manual_seed(0)
    model = convert(cls().double(), "sparse_vd_group", scale_on="in").double()
    with torch.no_grad():
        for layer in model.modules():
            if hasattr(layer, "scale_on"):
                layer.unit_mu.uniform_(0.5, 1.5)
    first, second = ("stem", "conv1") if cls is Residual else ("a", "b")
    _kill(model, first, [2, 4] if cls is Residual else [1])
    _kill(model, second, [1, 3] if cls is Residual else [0, 2])
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64)
    result = shrink_graph(model, x)
    torch.testing.assert_close(_out(result.model, x), _out(model, x), atol=TOL, rtol=TOL)
    assert _params(result.model) < _params(model)
    for layer in result.model.modules():
        if hasattr(layer, "scale_on"):
            assert layer.unit_mu.shape == (layer.weight_mu.shape[1],)
