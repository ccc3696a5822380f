"""shrink_graph on the constructs of real models, each in a small graph, every family.

chunk / slices, squeeze-excitation products, GroupNorm, LayerNorm, grouped convolutions
(whole groups) and channel multipliers,
a reused activation module, a bias-free reader whose constant reaches BatchNorms through
pooling and a concatenation (DenseNet's transition), and a padded reader on a 1×1 map
(the example cannot show the border: the fold must still hold at every size), and a
`torch.fx.wrap`-ped function that mutates its list argument (torchvision's video Swin).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from test_shrink_graph import FAMILIES, TOL, _bn, _build, _kill, _out
from torch import Tensor, nn

from bayesprune.compress.graph import shrink_graph
from bayesprune.nn import VariationalLayer


def _shrunk(model: nn.Module, x: Tensor, *more: Tensor):
    """Shrink on `x`; the result must equal the masked model on `x` and on `more`."""
    result = shrink_graph(model, x)
    for batch in (x, *more):
        torch.testing.assert_close(
            _out(result.model, batch), _out(model, batch), atol=TOL, rtol=TOL
        )
    for name, module in model.named_modules():
        if isinstance(module, VariationalLayer):
            assert type(result.model.get_submodule(name)) is type(module)
    assert sum(p.numel() for p in result.model.parameters()) <= sum(
        p.numel() for p in model.parameters()
    )
    return result, {r.name: r for r in result.layers}


class ChunkGate(nn.Module):
    """A gated unit (GLU): half the channels gate the other half, `u * sigmoid(v)`."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(2, 8, 3), nn.Conv2d(4, 3, 1), nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        u, v = self.a(x).chunk(2, dim=1)
        return self.head(self.b(u * torch.sigmoid(v)).mean((2, 3)))


@pytest.mark.parametrize("family", FAMILIES)
def test_chunk_couples_the_same_position_of_every_piece(family):
    model = _build(ChunkGate, family)
    _kill(model, "a", [1, 5, 2])  # 1 and 5 are one pair: it goes; 2 without 6 stays
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    _, layers = _shrunk(model, x)
    assert layers["a"].kept_units == [0, 2, 3, 4, 6, 7]
    assert layers["b"].inputs_after == 3


class Slices(nn.Module):
    """`x[:, 2:]` and `x[:, :2]` (or torch.split with constant sizes) feed two convs."""

    def __init__(self, split: bool) -> None:
        super().__init__()
        self.split = split
        self.a, self.b, self.c = nn.Conv2d(2, 6, 3), nn.Conv2d(4, 3, 1), nn.Conv2d(2, 3, 1)
        self.head = nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.a(x))
        if self.split:
            low, high = torch.split(y, [2, 4], dim=1)
        else:
            low, high = y[:, :2], y[:, 2:]
        out = torch.cat([self.b(high), self.c(low)], dim=1)
        return self.head(out.mean((2, 3)))


@pytest.mark.parametrize("family", FAMILIES)
def test_channel_slices_pin_what_their_bounds_fix(family):
    model = _build(Slices, family, False)
    _kill(model, "a", [0, 3])  # 0 lies before the bound 2 (pinned), 3 after: it goes
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    _, layers = _shrunk(model, x)
    assert layers["a"].kept_units == [0, 1, 2, 4, 5]
    assert layers["b"].inputs_after == 3 and layers["c"].inputs_after == 2


def test_split_with_constant_sizes_is_pinned():
    model = _build(Slices, "gaussian", True)
    _kill(model, "a", [0, 3])
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    _, layers = _shrunk(model, x)
    assert layers["a"].units_after == 6  # the sizes [2, 4] are in the forward's code


class SqueezeExcite(nn.Module):
    """conv-BN-ReLU, x · sigmoid(fc2(relu(fc1(pool(x))))), pointwise conv, head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(2, 6, 3), _bn(6)
        self.fc1, self.fc2 = nn.Conv2d(6, 3, 1), nn.Conv2d(3, 6, 1)
        self.pw, self.head = nn.Conv2d(6, 4, 1), nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn(self.conv(x)))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return self.head(F.relu(self.pw(x * s)).mean((2, 3)))


@pytest.mark.parametrize("family", FAMILIES)
def test_squeeze_excitation_couples_the_feature_and_its_scale(family):
    model = _build(SqueezeExcite, family)
    _kill(model, "conv", [1, 4, 2])
    _kill(model, "fc2", [1, 4])  # channel 2 keeps a live scale: it stays
    _kill(model, "fc1", [0])  # relu(bias) folded into fc2's bias
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    result, layers = _shrunk(model, x)
    assert layers["conv"].kept_units == layers["fc2"].kept_units == [0, 2, 3, 5]
    assert result.followers["bn"] == [0, 2, 3, 5]
    assert layers["fc1"].kept_units == [1, 2] and layers["fc1"].inputs_after == 4
    assert layers["pw"].inputs_after == 4


class GroupNormed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.gn = nn.Conv2d(2, 8, 3), nn.GroupNorm(4, 8)
        with torch.no_grad():
            self.gn.weight.uniform_(0.5, 1.5)
            self.gn.bias.uniform_(0.2, 0.8)
        self.b, self.head = nn.Conv2d(8, 3, 1), nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.relu(self.b(F.relu(self.gn(self.a(x))))).mean((2, 3)))


@pytest.mark.parametrize("family", FAMILIES)
def test_group_norm_removes_whole_groups(family):
    model = _build(GroupNormed, family)
    _kill(model, "a", [2, 3, 5])  # GroupNorm group 1 = {2, 3} goes; 5 shares stats with 4
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    result, layers = _shrunk(model, x)
    assert layers["a"].kept_units == [0, 1, 4, 5, 6, 7]
    assert result.model.gn.num_groups == 3 and result.model.gn.num_channels == 6
    assert result.followers["gn"] == [0, 1, 4, 5, 6, 7]
    assert result.shapes["gn"] == {"num_groups": 3, "num_channels": 6}
    assert json.loads(json.dumps(result.as_dict()))["shapes"] == result.shapes


class LayerNormed(nn.Module):
    """LayerNorm over H×W acts on each channel apart; over the features it mixes them."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.ln_hw = nn.Conv2d(2, 4, 3), nn.LayerNorm([4, 4], elementwise_affine=False)
        self.b = nn.Conv2d(4, 6, 1)
        self.fc, self.ln, self.head = nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.b(self.ln_hw(self.a(x))))
        return self.head(self.ln(self.fc(y.mean((2, 3)))))


@pytest.mark.parametrize("family", FAMILIES)
def test_layer_norm_over_space_passes_over_features_pins(family):
    model = _build(LayerNormed, family)
    _kill(model, "a", [1])  # a constant map normalises to 0: nothing to fold, it goes
    _kill(model, "fc", [3])  # LayerNorm over the 5 features: removing one changes the rest
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    _, layers = _shrunk(model, x)
    assert layers["a"].kept_units == [0, 2, 3]
    assert layers["fc"].units_after == 5


class Grouped(nn.Module):
    """A grouped 3×3 convolution (2 groups of 4 → 4), or one with a channel multiplier."""

    def __init__(self, multiplier: bool) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 8, 1)
        groups, out = (8, 16) if multiplier else (2, 8)
        self.g = nn.Conv2d(8, out, 3, padding=1, groups=groups)
        self.b, self.head = nn.Conv2d(out, 3, 1), nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.b(F.relu(self.g(F.relu(self.a(x))))).mean((2, 3)))


@pytest.mark.parametrize("family", FAMILIES)
def test_grouped_convolution_loses_whole_groups(family):
    model = _build(Grouped, family, False)
    _kill(model, "a", [0, 1, 2, 3, 4])  # group 0's inputs ...
    _kill(model, "g", [0, 1, 2, 3])  # ... and outputs are dead: it goes; 4 stays
    with torch.no_grad():  # relu(1): a constant the padded conv cannot fold
        (model.a.bias_mu if hasattr(model.a, "bias_mu") else model.a.bias)[4] = 1.0
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    result, layers = _shrunk(model, x, torch.randn(1, 2, 9, 9, dtype=torch.float64))
    assert layers["a"].kept_units == layers["g"].kept_units == [4, 5, 6, 7]
    g = result.model.g
    assert (g.groups, g.in_channels, g.out_channels) == (1, 4, 4)
    assert result.shapes["g"] == {"in_channels": 4, "out_channels": 4, "groups": 1}
    assert layers["b"].inputs_after == 4 and layers["g"].inputs_after == 4


@pytest.mark.parametrize("family", FAMILIES)
def test_depthwise_multiplier_keeps_a_channel_with_both_its_outputs(family):
    model = _build(Grouped, family, True)  # groups = 8: channel c feeds outputs 2c, 2c + 1
    _kill(model, "a", [1, 5])
    _kill(model, "g", [2, 3, 10])  # channel 1 and both its outputs go; 5 keeps output 11
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    result, layers = _shrunk(model, x)
    assert layers["a"].kept_units == [0, 2, 3, 4, 5, 6, 7]
    assert layers["g"].kept_units == [0, 1, *range(4, 16)]
    assert result.model.g.groups == 7 and layers["b"].inputs_after == 14


class Transition(nn.Module):
    """DenseNet-like: a bias-free 1×1 conv, average pool, concatenation, BatchNorm.

    One nn.ReLU module is applied twice (as torchvision's ResNet blocks do).
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(2, 4, 3, bias=False), _bn(4)
        self.relu = nn.ReLU()
        self.conv_t, self.pool = nn.Conv2d(4, 3, 1, bias=False), nn.AvgPool2d(2)
        self.bn1, self.out = _bn(7), nn.Conv2d(7, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = self.relu(self.bn0(self.stem(x)))
        y = torch.cat([self.pool(self.conv_t(s)), F.max_pool2d(s, 2)], dim=1)
        return self.out(self.relu(self.bn1(y))).mean((2, 3))


@pytest.mark.parametrize("family", FAMILIES)
def test_constant_reaches_batchnorms_through_pool_and_concatenation(family):
    model = _build(Transition, family)
    _kill(model, "stem", [2])  # relu(BN(0)) > 0 into conv_t (bias-free): shifts bn1
    _kill(model, "conv_t", [1])  # 0 → bn1 → a constant folded into out's bias
    x = torch.randn(2, 2, 10, 10, dtype=torch.float64)
    result, layers = _shrunk(model, x, torch.randn(1, 2, 14, 14, dtype=torch.float64))
    assert layers["stem"].kept_units == [0, 1, 3] and layers["conv_t"].kept_units == [0, 2]
    assert result.followers["bn1"] == [0, 2, 3, 4, 6]
    assert any("running mean" in note for note in result.notes) or family == "deterministic"


class OneByOne(nn.Module):
    """A padded 3×3 reader; on a 1×1 example map only its centre tap is ever seen."""

    def __init__(self, padding: int) -> None:
        super().__init__()
        self.a, self.bn = nn.Conv2d(2, 4, 1, bias=False), _bn(4)
        self.b, self.head = nn.Conv2d(4, 3, 3, padding=padding), nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.relu(self.b(F.relu(self.bn(self.a(x))))).mean((2, 3)))


@pytest.mark.parametrize("family", FAMILIES)
def test_fold_holds_at_every_size_not_only_the_examples(family):
    padded = _build(OneByOne, family, 1)
    _kill(padded, "a", [1])
    x, big = (torch.randn(2, 2, s, s, dtype=torch.float64) for s in (1, 5))
    _, layers = _shrunk(padded, x, big)  # shrunk == masked on a 5×5 input as well
    assert layers["a"].units_after == 4 and layers["a"].kept_dead_units == 1
    unpadded = _build(OneByOne, family, 0)
    _kill(unpadded, "a", [1])
    x3, big = (torch.randn(2, 2, s, s, dtype=torch.float64) for s in (3, 7))
    _, layers = _shrunk(unpadded, x3, big)
    assert layers["a"].kept_units == [0, 2, 3]


class Viewed(nn.Module):
    """LeNet's `x.view(-1, 4 * 2 * 2)`, or a computed `x.view(x.size(0), -1)`; an upsample."""

    def __init__(self, constant: bool) -> None:
        super().__init__()
        self.constant = constant
        self.a, self.fc = nn.Conv2d(2, 4, 3), nn.Linear(4 * 4 * 4, 2)

    def forward(self, x: Tensor) -> Tensor:
        y = F.interpolate(F.relu(self.a(x)), scale_factor=2.0)
        return self.fc(y.view(-1, 4 * 4 * 4) if self.constant else y.view(y.size(0), -1))


@pytest.mark.parametrize("constant", [True, False])
def test_a_view_with_a_constant_size_pins_its_channels(constant):
    model = _build(Viewed, "gaussian", constant)
    _kill(model, "a", [2])
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    _, layers = _shrunk(model, x)
    assert layers["a"].units_after == (4 if constant else 3)
    assert layers["fc"].inputs_after == (64 if constant else 48)


class DepthwiseOnOneByOne(nn.Module):
    """1×1 conv, padded depthwise 3×3, pointwise: on a 1×1 map only the centre tap acts."""

    def __init__(self, pool: bool) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 4, 1)
        self.dw = nn.AvgPool2d(3, 1, 1) if pool else nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.pw, self.head = nn.Conv2d(4, 3, 1), nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.relu(self.pw(self.dw(F.relu(self.a(x))))).mean((2, 3)))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("pool", [False, True])
def test_padded_depthwise_or_pool_constant_is_judged_at_every_size(family, pool):
    model = _build(DepthwiseOnOneByOne, family, pool)
    _kill(model, "a", [1, 2])
    with torch.no_grad():
        bias = model.a.bias_mu if hasattr(model.a, "bias_mu") else model.a.bias
        bias[1], bias[2] = 1.0, -1.0  # relu: 1 meets the border, 0 has nothing to fold
    x, big = (torch.randn(2, 2, s, s, dtype=torch.float64) for s in (1, 5))
    _, layers = _shrunk(model, x, big)  # the pool averages zeros in at the border: it is
    assert layers["a"].kept_units == [0, 1, 3]  # judged as its depthwise twin, 1/9 per tap
    assert layers["a"].kept_dead_units == 1


class Unknown(nn.Module):
    """`x.flip(1)` and `torch.roll` move channels: ops the analysis does not know."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(2, 4, 1), nn.Conv2d(2, 4, 1), nn.Conv2d(8, 3, 1)
        self.head = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.cat([self.a(x).flip(1), torch.roll(self.b(x), 1, dims=1)], dim=1)
        return self.head(torch.relu(self.c(torch.sigmoid(y))).mean((2, 3)))


@pytest.mark.parametrize("family", FAMILIES)
def test_unknown_channel_ops_pin_instead_of_guessing(family):
    model = _build(Unknown, family)
    _kill(model, "a", [1])
    _kill(model, "b", [2])
    _kill(model, "c", [0])  # after the unknown ops: still removable
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    _, layers = _shrunk(model, x)
    assert layers["a"].units_after == layers["b"].units_after == 4
    assert layers["c"].kept_units == [1, 2]


def _window(size: list[int], window: list[int]) -> list[int]:
    """Clamps `window` to `size` in place, as torchvision's video Swin does with its
    `torch.fx.wrap`-ped `_get_window_and_shift_size`."""
    for i in range(len(size)):
        window[i] = min(window[i], size[i])
    return window


torch.fx.wrap("_window")


class MutatesItsArguments(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(2, 4, 1), nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        window = _window([x.shape[2], x.shape[3]], [8, 8])
        y = F.avg_pool2d(F.relu(self.conv(x)), window)
        return self.head(y.flatten(1))


def test_a_wrapped_function_may_mutate_the_list_it_is_given():
    torch.manual_seed(0)
    model = _build(MutatesItsArguments, "gaussian")
    _kill(model, "conv", [1])
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    result = shrink_graph(model, x)  # fx's immutable argument lists refused the mutation
    torch.testing.assert_close(_out(result.model, x), _out(model, x), atol=TOL, rtol=TOL)
    assert {r.name: r for r in result.layers}["conv"].units_after == 3


class Ghost(nn.Module):
    """GhostNet's module: a primary conv, a cheap depthwise conv on its output, both
    concatenated, then `[:, :out]` with `out` the whole width (a no-op that stays one
    when there are fewer channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.primary, self.cheap = nn.Conv2d(2, 4, 1), nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.out = 8
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x: Tensor) -> Tensor:
        x1 = F.relu(self.primary(x))
        y = torch.cat([x1, F.relu(self.cheap(x1))], dim=1)[:, : self.out]
        return self.head(y).mean((2, 3))


@pytest.mark.parametrize("family", ["gaussian", "spike_slab"])
def test_a_slice_past_the_last_channel_passes_them(family):
    model = _build(Ghost, family)
    x = torch.randn(2, 2, 5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    _kill(model, "primary", [1])  # dead after the relu (bias < 0 below): nothing to fold
    with torch.no_grad():
        bias = model.primary.bias_mu if hasattr(model.primary, "bias_mu") else model.primary.bias
        bias[1] = -1.0
    result = shrink_graph(model, x)
    assert result.model.primary.out_channels == 3 and result.model.head.in_channels == 6
    torch.testing.assert_close(_out(result.model, x), _out(model, x), atol=TOL, rtol=TOL)


class StarReLU(nn.Module):
    """MetaFormer's activation: s · relu(x)² + b, s and b one number each, then exp."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(2, 4, 1), nn.Conv2d(4, 3, 1), nn.Linear(3, 2)
        self.scale, self.shift = nn.Parameter(torch.ones(1) * 0.8), nn.Parameter(torch.ones(1))

    def forward(self, x: Tensor) -> Tensor:
        y = self.scale * F.relu(self.a(x)) ** 2 + self.shift
        return self.head(torch.exp(-self.b(y.sqrt())).mean((2, 3)))


@pytest.mark.parametrize("family", FAMILIES)
def test_powers_and_elementwise_functions_pass_the_channels(family):
    model = _build(StarReLU, family)
    _kill(model, "a", [1])  # its constant goes through the power, sqrt: folded into b
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    _, layers = _shrunk(model, x)
    assert layers["a"].kept_units == [0, 2, 3]
    assert layers["b"].inputs_after == 3


class CachesInEval(nn.Module):
    """As timm's LeViT / EfficientFormer attention: a bias computed once per device in
    eval mode and kept in a dict (while tracing, the cache would keep a proxy)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 2)
        self.table = nn.Parameter(torch.randn(6))
        self.index = [0, 1, 2, 3, 4, 5]
        self.cache: dict[str, Tensor] = {}

    def bias(self, device: torch.device) -> Tensor:
        if self.training:
            return self.table[self.index]
        if str(device) not in self.cache:
            self.cache[str(device)] = self.table[self.index]
        return self.cache[str(device)]

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.relu(self.fc1(x) + self.bias(x.device)))


def test_a_cache_filled_while_tracing_does_not_leak_into_the_next_trace():
    torch.manual_seed(0)
    model = CachesInEval().eval()
    x = torch.randn(5, 4)
    for _ in range(2):  # a second trace read the first trace's proxy from the cache
        result = shrink_graph(model, x)
        assert not model.cache  # emptied of the proxies tracing put there
    torch.testing.assert_close(result.model(x), model(x))
    assert model.cache  # and the model's own eval run fills it as before


class LinearNorm(nn.Module):
    """LeViT's: a Linear on tokens, BatchNorm over the tokens flattened with the batch,
    `reshape_as` back."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.bn, self.fc2 = nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        y = self.fc1(x)
        y = self.bn(y.flatten(0, 1)).reshape_as(y)
        return self.fc2(F.gelu(y)).mean(1)


def test_a_batch_norm_over_flattened_tokens_follows_them_back_through_reshape_as():
    torch.manual_seed(0)
    model = LinearNorm().eval()
    with torch.no_grad():
        model.bn.running_mean.normal_()
        model.bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(3, 5, 4)
    result = shrink_graph(model, x, prune_units={"fc1": [0, 1, 3, 4, 5]})
    assert result.model.fc1.out_features == result.model.bn.num_features == 5
    assert result.model.fc2.in_features == 5
    assert result.max_abs_difference < 1e-5
