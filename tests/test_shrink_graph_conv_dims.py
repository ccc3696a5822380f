"""1-d and 3-d convolutions through convert, scores, shrink, save and export.

The residual, concat and depthwise graphs of test_shrink_graph.py built with Conv1d /
Conv3d shrink to the masked outputs for every family (and round-trip through
save_shrunk); a 1-d residual CNN learns a signal task, shrinks, reloads and exports;
Sequential chains shrink with `compress.shrink`; transposed 1-d / 3-d convolutions read
and produce channels; subclasses that keep torch's forward convert as their base, and
torchvision's video ResNet (built of them) shrinks and reloads."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_shrink_graph import FAMILIES, TOL, _kill, _out, _params
from torch import Tensor, nn

import bayesprune as bp
from bayesprune import convert
from bayesprune.compress import (
    activation_scores,
    export_onnx,
    keep_units,
    load_shrunk,
    onnx_difference,
    save_shrunk,
)
from bayesprune.compress.graph import shrink_graph

CONV = {1: nn.Conv1d, 3: nn.Conv3d}
NORM = {1: nn.BatchNorm1d, 3: nn.BatchNorm3d}
POOL = {1: nn.MaxPool1d, 3: nn.MaxPool3d}


def _bn(dims: int, c: int) -> nn.Module:
    """A BatchNorm with non-trivial statistics, so dead channels give non-zero constants."""
    bn = NORM[dims](c)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(0.2, 0.8)
        bn.running_mean.uniform_(-0.3, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
    return bn


class Residual(nn.Module):
    """stem conv-BN-ReLU, a residual block, max pooling, global mean, linear head."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        conv = CONV[dims]
        self.stem, self.bn0 = conv(2, 6, 3, padding=1, bias=False), _bn(dims, 6)
        self.conv1, self.bn1 = conv(6, 5, 1, bias=False), _bn(dims, 5)
        self.conv2, self.bn2 = conv(5, 6, 1, bias=False), _bn(dims, 6)
        self.pool = POOL[dims](2)
        self.head = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn0(self.stem(x)))
        y = F.relu(self.bn1(self.conv1(x)))
        x = self.pool(torch.relu(self.bn2(self.conv2(y)) + x))
        return self.head(x.flatten(2).mean(2))


class Concat(nn.Module):
    """Two branches concatenated, a pointwise conv, flatten into a linear head."""

    def __init__(self, dims: int, size: int) -> None:
        super().__init__()
        conv = CONV[dims]
        self.a, self.b = conv(2, 4, 3), conv(2, 3, 3)
        self.mix = conv(7, 5, 1)
        self.head = nn.Linear(5 * (size - 2) ** dims, 2)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.cat([F.relu(self.a(x)), torch.sigmoid(self.b(x))], dim=1)
        return self.head(torch.flatten(F.relu(self.mix(y)), 1))


class Separable(nn.Module):
    """conv-BN-ReLU, depthwise conv-BN-ReLU, pointwise conv, global pool, linear head."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        conv = CONV[dims]
        self.conv, self.bn = conv(2, 6, 3), _bn(dims, 6)
        self.dw, self.dw_bn = conv(6, 6, 3, groups=6), _bn(dims, 6)
        self.pw = conv(6, 4, 1)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn(self.conv(x)))
        x = F.relu(self.dw_bn(self.dw(x)))
        x = F.relu(self.pw(x)).flatten(2).amax(2)
        return self.head(x)


def _build(model: nn.Module, family: str) -> nn.Module:
    return convert(model.double(), family).double()


def _input(dims: int, batch: int, size: int) -> Tensor:
    return torch.randn(batch, 2, *(size,) * dims, dtype=torch.float64)


@pytest.mark.parametrize("dims", [1, 3])
@pytest.mark.parametrize("family", FAMILIES)
def test_residual_block(family, dims, tmp_path):
    torch.manual_seed(0)
    model = _build(Residual(dims), family)
    _kill(model, "conv1", [1, 3])  # inside the block: folded into conv2's BatchNorm
    _kill(model, "stem", [2, 4])  # dead on both sides of the add: the channel goes
    _kill(model, "conv2", [0, 2, 4])  # 0 is dead in one branch only: kept
    x = _input(dims, 4, 6)
    result = shrink_graph(model, x)
    torch.testing.assert_close(_out(result.model, x), _out(model, x), atol=TOL, rtol=TOL)
    by_name = {r.name: r for r in result.layers}
    assert by_name["conv1"].kept_units == [0, 2, 4]
    assert by_name["stem"].kept_units == by_name["conv2"].kept_units == [0, 1, 3, 5]
    assert result.followers["bn0"] == result.followers["bn2"] == [0, 1, 3, 5]
    assert by_name["head"].inputs_after == 4
    assert type(result.model.stem) is type(model.stem)
    assert _params(result.model) < _params(model)
    path = save_shrunk(result.model, tmp_path / "net.safetensors")  # plain or Bayesian
    loaded = load_shrunk(path, Residual(dims).double())
    assert loaded.bn0.num_features == 4 and type(loaded.stem) is type(model.stem)
    torch.testing.assert_close(_out(loaded, x), _out(result.model, x), rtol=0, atol=0)


@pytest.mark.parametrize("dims", [1, 3])
@pytest.mark.parametrize("family", FAMILIES)
def test_concat_block(family, dims):
    torch.manual_seed(0)
    size = 5
    model = _build(Concat(dims, size), family)
    _kill(model, "a", [1])  # relu(bias) folded into mix
    _kill(model, "b", [0, 2])  # sigmoid(bias) ≠ 0 folded into mix
    _kill(model, "mix", [3])  # relu(bias) over its flattened columns of the head
    x = _input(dims, 3, size)
    result = shrink_graph(model, x)
    torch.testing.assert_close(_out(result.model, x), _out(model, x), atol=TOL, rtol=TOL)
    by_name = {r.name: r for r in result.layers}
    assert by_name["a"].kept_units == [0, 2, 3] and by_name["b"].kept_units == [1]
    assert by_name["mix"].inputs_after == 4 and by_name["mix"].kept_units == [0, 1, 2, 4]
    assert by_name["head"].inputs_after == 4 * (size - 2) ** dims


@pytest.mark.parametrize("dims", [1, 3])
@pytest.mark.parametrize("family", FAMILIES)
def test_depthwise_separable_block(family, dims):
    torch.manual_seed(0)
    model = _build(Separable(dims), family)
    _kill(model, "conv", [1, 4])
    _kill(model, "pw", [2])
    x = _input(dims, 3, 7)
    result = shrink_graph(model, x)
    torch.testing.assert_close(_out(result.model, x), _out(model, x), atol=TOL, rtol=TOL)
    assert result.followers["dw"] == result.followers["dw_bn"] == [0, 2, 3, 5]
    assert result.model.dw.groups == result.model.dw.in_channels == 4
    assert {r.name: r for r in result.layers}["pw"].kept_units == [0, 1, 3]


def test_padded_depthwise_keeps_a_constant_it_cannot_fold_in_1d():
    torch.manual_seed(0)
    model = _build(Separable(1), "gaussian")
    model.dw.padding = (1,)  # the constant now meets the depthwise conv's zero border
    _kill(model, "conv", [1, 3])
    with torch.no_grad():
        model.conv.bias_mu[1] = 1.0  # relu(BN(1)) > 0: a constant the pw conv cannot absorb
        model.conv.bias_mu[3] = -9.0  # relu(BN(−9)) = 0: nothing to fold, it goes
    x = _input(1, 2, 9)
    result = shrink_graph(model, x)
    torch.testing.assert_close(_out(result.model, x), _out(model, x), atol=TOL, rtol=TOL)
    record = {r.name: r for r in result.layers}["conv"]
    assert record.kept_units == [0, 1, 2, 4, 5] and record.kept_dead_units == 1


class SignalNet(nn.Module):
    """A 1-d residual CNN for sequences (B × channels × time): what sensor data gets."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv1d(1, 12, 5, padding=2, bias=False), nn.BatchNorm1d(12)
        self.conv1, self.bn1 = nn.Conv1d(12, 12, 3, padding=1, bias=False), nn.BatchNorm1d(12)
        self.conv2, self.bn2 = nn.Conv1d(12, 12, 3, padding=1, bias=False), nn.BatchNorm1d(12)
        self.head = nn.Linear(12, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn0(self.stem(x)))
        y = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(y)) + x)
        return self.head(F.adaptive_avg_pool1d(F.max_pool1d(x, 2), 1).flatten(1))


def _signals(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """Class 1 hides a short burst of a sine in the noise; class 0 is noise only."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = 0.5 * torch.randn(n, 1, 48, generator=g)
    start = torch.randint(0, 32, (n,), generator=g)
    burst = torch.sin(torch.arange(16) * 1.3)
    for i in torch.nonzero(y).flatten().tolist():
        x[i, 0, start[i] : start[i] + 16] += burst
    return x, y


def test_a_trained_1d_cnn_learns_shrinks_saves_and_exports(tmp_path):
    torch.manual_seed(0)
    train, test = _signals(512, 0), _signals(256, 1)
    model = bp.convert(SignalNet(), "gaussian")
    assert type(model.stem).__name__ == "BayesConv1d"
    bp.fit(model, train, epochs=12, batch_size=64, lr=1e-2, progress=False, seed=0)
    model.eval()
    accuracy = (bp.predict(model, test[0], samples=8).probs.argmax(1) == test[1]).float().mean()
    assert accuracy > 0.85  # chance is 0.5

    scores = activation_scores(model, train, max_batches=2)
    assert {"stem", "conv1", "conv2"} <= set(scores)
    keep = keep_units(scores, sparsity=0.5)
    example = test[0][:8]
    result = shrink_graph(model, example, prune_units=keep)
    small = result.model
    assert small.conv1.out_channels < 12 and type(small.conv1) is type(model.conv1)
    assert result.max_abs_difference < 1e-4

    path = save_shrunk(small, tmp_path / "signal.safetensors")
    loaded = load_shrunk(path, SignalNet())
    assert type(loaded.conv1).__name__ == "BayesConv1d"
    torch.testing.assert_close(_out(loaded, example), _out(small, example), rtol=0, atol=0)
    onnx = export_onnx(loaded, tmp_path / "signal.onnx", input_shape=(1, 48))
    assert onnx_difference(onnx, loaded, test[0][:16]) < 1e-5


def test_scores_read_an_x_y_tuple_as_one_batch():
    torch.manual_seed(0)
    model = convert(SignalNet(), "gaussian").eval()
    x, y = _signals(32, 2)
    from_tuple = activation_scores(model, (x, y))  # as fit takes it: the labels are not read
    torch.testing.assert_close(from_tuple, activation_scores(model, x))
    assert set(from_tuple) == {"stem", "conv1", "conv2", "head"}


class TaggedConv(nn.Conv1d):
    """A subclass that keeps torch's forward (as torchvision's video Conv3DSimple)."""

    @staticmethod
    def tag() -> str:
        return "tagged"


class ScaledConv(nn.Conv1d):
    """A subclass with its own forward: it computes something else."""

    def forward(self, x: Tensor) -> Tensor:
        return 2 * super().forward(x)


def test_convert_replaces_subclasses_that_keep_torchs_forward_only():
    net = nn.Sequential(TaggedConv(2, 4, 3), nn.ReLU(), ScaledConv(4, 3, 3))
    model = convert(net, "gaussian")
    assert type(model[0]).__name__ == "BayesConv1d" and type(model[2]) is ScaledConv
    assert type(convert(TaggedConv(2, 4, 3), "sparse_vd")).__name__ == "SparseVDConv1d"
    attention = convert(nn.MultiheadAttention(8, 2), "gaussian")  # out_proj: torch's subclass
    assert type(attention.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear


@pytest.mark.parametrize("family", ["deterministic", "gaussian"])
def test_torchvision_video_resnet_shrinks_and_reloads(family, tmp_path):
    from _torchvision import import_torchvision_models

    import_torchvision_models()
    from torchvision.models.video import r3d_18

    torch.manual_seed(0)
    model = convert(r3d_18(num_classes=4).eval(), family)
    if family != "deterministic":  # every convolution, Conv3DSimple included, is Bayesian
        assert not any(isinstance(m, nn.Conv3d) for m in model.modules())
    x = torch.randn(2, 3, 4, 24, 24)
    scores = activation_scores(model.eval(), x)
    assert len(scores) == 21  # 20 convolutions (stem, blocks, shortcuts) and the head
    result = shrink_graph(model, x, prune_units=keep_units(scores, sparsity=0.25))
    assert result.max_abs_difference < 1e-5
    assert result.model.layer1[0].conv1[0].out_channels == 48
    path = save_shrunk(result.model, tmp_path / "r3d.safetensors")
    loaded = load_shrunk(path, r3d_18(num_classes=4))  # its Conv3DSimple layers get the file's
    torch.testing.assert_close(_out(loaded, x), _out(result.model, x), rtol=0, atol=0)


@pytest.mark.parametrize("dims", [1, 3])
def test_a_sequential_chain_shrinks_and_its_model_file_rebuilds_it(dims, tmp_path):
    from bayesprune.compress import load_model, save_model, shrink

    torch.manual_seed(0)
    conv, pool, size = CONV[dims], POOL[dims], 8
    net = nn.Sequential(
        conv(2, 8, 3), nn.ReLU(), pool(2), conv(8, 6, 1), nn.ReLU(),
        nn.Flatten(), nn.Linear(6 * 3**dims, 4),
    )  # fmt: skip
    model = convert(net, "gaussian")
    _kill(model, "0", [1, 5])
    result = shrink(model, (2, *(size,) * dims))
    assert result.model[0].out_channels == 6 and type(result.model[0]) is type(model[0])
    loaded = load_model(save_model(result.model, tmp_path / "chain.safetensors"))  # no class
    x = _input(dims, 3, size).float()
    torch.testing.assert_close(_out(loaded, x), _out(result.model, x), rtol=0, atol=0)
    torch.testing.assert_close(_out(result.model, x), _out(model, x), rtol=1e-5, atol=1e-5)


class UpSampler(nn.Module):
    """conv → transposed conv (upsampling, deterministic under convert) → conv."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        transposed = {1: nn.ConvTranspose1d, 3: nn.ConvTranspose3d}[dims]
        self.down = CONV[dims](2, 6, 3, stride=2, padding=1)
        self.up = transposed(6, 4, 2, stride=2)
        self.out = CONV[dims](4, 3, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(F.relu(self.up(F.relu(self.down(x)))))


@pytest.mark.parametrize("dims", [1, 3])
def test_transposed_convolutions_read_and_produce_channels(dims):
    torch.manual_seed(0)
    model = _build(UpSampler(dims), "gaussian")
    with torch.no_grad():
        model.down.bias_mu[[1, 4]] = -5.0  # relu(−5) = 0: exactly zero, so they may go
    _kill(model, "down", [1, 4])
    x = _input(dims, 2, 8)
    result = shrink_graph(model, x, prune_units={"up": torch.tensor([1, 1, 0, 1]).bool()})
    assert result.max_abs_difference < TOL  # against the model with up's unit 2 masked
    assert result.model.down.out_channels == 4 and result.model.up.in_channels == 4
    assert result.model.up.out_channels == 3 and result.model.out.in_channels == 3
