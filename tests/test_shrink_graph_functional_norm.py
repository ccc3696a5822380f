"""A BatchNorm subclass whose own forward calls F.batch_norm (timm's BatchNormAct2d)
follows its channels like a BatchNorm module: scored, sliced, constants folded."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_shrink_graph import TOL, _build, _kill, _out, _params
from torch import Tensor, nn

from bayesprune.compress import activation_scores, keep_units
from bayesprune.compress.graph import shrink_graph
from bayesprune.compress.graph_trace import analyse


class BatchNormAct(nn.BatchNorm2d):
    """timm's layout: the normalisation as a function call on the module's own tensors,
    then an activation, in one module."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.act = nn.ReLU()
        with torch.no_grad():  # statistics that give dead channels non-zero constants
            self.weight.uniform_(0.5, 1.5)
            self.bias.uniform_(0.2, 0.8)
            self.running_mean.uniform_(-0.3, 0.3)
            self.running_var.uniform_(0.5, 2.0)

    def forward(self, x: Tensor) -> Tensor:
        x = F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias,
            self.training, self.momentum, self.eps,
        )  # fmt: skip
        return self.act(x)


class TimmStyle(nn.Module):
    """conv → BatchNormAct → 1×1 conv → BatchNormAct, residual, a padded 3×3, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(2, 6, 3, padding=1, bias=False), BatchNormAct(6)
        self.conv1, self.bn1 = nn.Conv2d(6, 5, 1, bias=False), BatchNormAct(5)
        self.conv2, self.bn2 = nn.Conv2d(5, 6, 1), BatchNormAct(6)  # a bias to fold into
        self.conv3 = nn.Conv2d(6, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn0(self.stem(x))
        x = self.bn2(self.conv2(self.bn1(self.conv1(x)))) + x
        return self.head(self.conv3(x).mean((2, 3)))


def _x() -> Tensor:
    return torch.randn(3, 2, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_the_module_behind_the_call_is_a_follower():
    cg = analyse(_build(TimmStyle, "gaussian"), (_x(),))
    assert {f.name for f in cg.followers} == {"bn0", "bn1", "bn2"}
    stem = next(p for p in cg.producers if p.name == "stem")
    assert not cg.pinned_groups() & {cg.find(i) for i in stem.ids}  # F.batch_norm pinned them
    scores = activation_scores(_build(TimmStyle, "gaussian"), _x())
    assert torch.isfinite(scores["conv1"]).all() and torch.isfinite(scores["stem"]).all()


@pytest.mark.parametrize("family", ["gaussian", "sparse_vd", "spike_slab"])
def test_dead_units_before_it_fold_and_go(family):
    """conv1's dead units emit relu(β − γμ/σ) through bn1: a 1×1 reader (conv2) takes it
    into its bias, so they go; the shrunk model equals the masked one."""
    model, x = _build(TimmStyle, family), _x()
    _kill(model, "conv1", [1, 3])
    result = shrink_graph(model, x)
    assert result.model.conv1.out_channels == 3 and result.model.bn1.num_features == 3
    assert result.model.bn1.running_mean.shape == (3,) and type(result.model.bn1) is BatchNormAct
    # traced in training mode, the call normalised with batch statistics and updated the
    # running ones while it was recorded: now it records in eval mode and leaves them
    torch.testing.assert_close(result.model.bn0.running_mean, model.bn0.running_mean)
    torch.testing.assert_close(_out(result.model, x), _out(model, x), atol=TOL, rtol=TOL)


def test_scores_keep_and_shrink_through_it():
    model, x = _build(TimmStyle, "spike_slab"), _x()
    scores = activation_scores(model, x)
    result = shrink_graph(model, x, prune_units=keep_units(scores, 0.4))
    assert result.model.stem.out_channels == result.model.bn0.num_features < 6
    assert result.model.conv2.out_channels == result.model.stem.out_channels  # residual
    assert _params(result.model) < _params(model) and result.max_abs_difference < TOL


class SharedNorm(nn.Module):
    """One BatchNorm's tensors read by two calls: its channels are pinned."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(2, 4, 1), nn.Conv2d(2, 4, 1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        bn = self.bn
        y = [F.batch_norm(t, bn.running_mean, bn.running_var, bn.weight, bn.bias) for t in
             (self.a(x), self.b(x))]  # fmt: skip
        return self.head(y[0] + y[1])


def test_a_norm_read_by_two_calls_pins():
    scores = activation_scores(_build(SharedNorm, "gaussian"), _x())
    assert torch.isinf(scores["a"]).all() and torch.isinf(scores["b"]).all()


class StandardisedConv(nn.Conv2d):
    """timm's ScaledStdConv2d: the weights standardised per output channel by a
    batch_norm in training form without running statistics (it has no eval form)."""

    def forward(self, x: Tensor) -> Tensor:
        w = F.batch_norm(
            self.weight.reshape(1, self.out_channels, -1), None, None, training=True, eps=1e-5
        ).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class Standardised(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = StandardisedConv(2, 4, 3)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.relu(self.conv(x)).mean((2, 3)))


def test_a_batch_norm_without_statistics_keeps_its_training_form():
    torch.manual_seed(0)
    model, x = Standardised().double(), _x()
    result = shrink_graph(model, x)  # recorded with training=False it would raise
    assert result.max_abs_difference < TOL


class BiasFree(TimmStyle):
    """timm's usual pair: a convolution without bias, then BatchNormAct."""

    def __init__(self) -> None:
        super().__init__()
        self.conv2 = nn.Conv2d(5, 6, 1, bias=False)


@pytest.mark.parametrize("family", ["gaussian", "spike_slab"])
def test_a_constant_folds_into_its_running_mean_behind_a_bias_free_reader(family):
    """conv1's dead units are read by conv2, which has no bias: their offset goes into
    bn2's running mean (BN(y + δ) = BN(y) with μ → μ − δ), as with a BatchNorm module."""
    model, x = _build(BiasFree, family), _x()
    _kill(model, "conv1", [1, 3])
    result = shrink_graph(model, x)
    assert result.model.conv1.out_channels == 3
    assert any("'conv2' has no bias" in note for note in result.notes)
    assert not torch.equal(result.model.bn2.running_mean, model.bn2.running_mean)
    torch.testing.assert_close(_out(result.model, x), _out(model, x), atol=TOL, rtol=TOL)


class Dropping(nn.Module):
    """A functional dropout whose flag is `self.training`: fx writes the flag's value at
    tracing into the graph."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 3, 1)
        self.head = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = F.dropout(F.relu(self.conv1(x)), 0.5, self.training)
        return self.head(self.conv2(x).mean((2, 3)))


def test_a_model_traced_in_training_mode_is_recorded_without_dropout():
    """Traced in training mode, the recorded run dropped half the entries, and a dead
    unit's constant (relu of its bias) looked different at every position: it could not
    be folded into conv2's bias and stayed."""
    model, x = _build(Dropping, "gaussian"), _x()
    assert model.training
    with torch.no_grad():
        model.conv1.bias_mu[1] = 0.7  # its constant: relu(0.7) once its weights are masked
    _kill(model, "conv1", [1])
    result = shrink_graph(model, x)
    assert result.model.conv1.out_channels == 3
    torch.testing.assert_close(_out(result.model, x), _out(model, x), atol=TOL, rtol=TOL)


def _timm_style_linear() -> type[nn.Linear]:
    """A class as timm's `timm.layers.linear.Linear`: nn.Linear with its own forward
    (a dtype cast under TorchScript only)."""

    def forward(self: nn.Linear, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    kind = type("Linear", (nn.Linear,), {"forward": forward})
    kind.__module__ = "timm.layers.linear"
    return kind


class TimmHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 1)
        self.classifier = _timm_style_linear()(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(F.relu(self.conv(x)).mean((2, 3)))


def test_timm_linear_is_read_as_torch_linear():
    """Its own forward made it an unknown function call that pinned the channels it reads
    (a MobileNet's whole last convolution); it is converted and read as an nn.Linear."""
    model, x = _build(TimmHead, "gaussian"), _x()
    assert type(model.classifier).__name__ == "BayesLinear"
    scores = activation_scores(model, x)
    assert torch.isfinite(scores["conv"]).all()
    result = shrink_graph(model, x, prune_units=keep_units(scores, 0.5))
    assert result.model.conv.out_channels == 3 and result.model.classifier.in_features == 3
