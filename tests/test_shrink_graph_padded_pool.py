"""An average pooling that counts its zero padding (Inception's pool branch) passes its
channels: live ones may go, and a removed channel's constant, which the pooling makes
size-dependent at the border, is kept rather than folded, at every input size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_shrink_graph import TOL, _bn, _kill, _out
from torch import Tensor, nn

from bayesprune import convert
from bayesprune.compress import activation_scores
from bayesprune.compress.graph import shrink_graph
from bayesprune.compress.graph_trace import analyse


class InceptionPool(nn.Module):
    """conv-BN-ReLU, then a 1×1 branch and a pool branch (3×3 average, zero padding counted,
    as torchvision's Inception: a module or the functional form), concatenated."""

    def __init__(self, functional: bool) -> None:
        super().__init__()
        self.functional = functional
        self.stem, self.bn = nn.Conv2d(3, 6, 1), _bn(6)
        self.branch = nn.Conv2d(6, 4, 1)
        self.pool = nn.AvgPool2d(3, stride=1, padding=1)  # count_include_pad=True
        self.pool_proj = nn.Conv2d(6, 3, 1)
        self.head = nn.Linear(7, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn(self.stem(x)))
        pooled = F.avg_pool2d(x, 3, stride=1, padding=1) if self.functional else self.pool(x)
        y = torch.cat([F.relu(self.branch(x)), F.relu(self.pool_proj(pooled))], 1)
        return self.head(y.mean((2, 3)))


def _x(size: int) -> Tensor:
    g = torch.Generator().manual_seed(size)
    return torch.randn(2, 3, size, size, generator=g, dtype=torch.float64)


def _model(functional: bool) -> nn.Module:
    torch.manual_seed(0)
    return convert(InceptionPool(functional).double(), "gaussian").double().eval()


@pytest.mark.parametrize("functional", [False, True])
def test_the_channels_before_the_pool_are_free(functional):
    model = _model(functional)
    cg = analyse(model, (_x(6),))
    stem = next(p.ids for p in cg.producers if p.name == "stem")
    assert not {cg.find(i) for i in stem} & cg.pinned_groups()
    assert len(cg.pools) == 1
    assert torch.isfinite(activation_scores(model, _x(6))["stem"]).all()


@pytest.mark.parametrize("functional", [False, True])
def test_a_constant_through_the_pool_is_kept_and_a_zero_one_goes(functional):
    model = _model(functional)
    _kill(model, "stem", [1, 4])
    with torch.no_grad():
        model.stem.bias_mu[1] = 1.0  # relu(BN(1)) > 0: the pool makes it size-dependent
        model.stem.bias_mu[4] = -9.0  # relu(BN(−9)) = 0: nothing to carry, it goes
    result = shrink_graph(model, _x(1))  # a 1×1 example hides the border: the probe sees it
    record = {r.name: r for r in result.layers}["stem"]
    assert record.kept_units == [0, 1, 2, 3, 5] and record.kept_dead_units == 1
    for size in (1, 5, 8):
        torch.testing.assert_close(
            _out(result.model, _x(size)), _out(model, _x(size)), atol=TOL, rtol=TOL
        )


def test_ceil_mode_still_pins():
    model = _model(False)
    model.pool.ceil_mode = True
    cg = analyse(model, (_x(6),))
    stem = next(p.ids for p in cg.producers if p.name == "stem")
    assert {cg.find(i) for i in stem} <= cg.pinned_groups() and not cg.pools
