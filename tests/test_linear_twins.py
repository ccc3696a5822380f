"""GPT-2's `Conv1D` (a linear layer stored transposed) becomes the nn.Linear it is."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import bayesprune as bp
from bayesprune.compress import activation_scores, keep_units
from bayesprune.compress.graph import shrink_graph
from bayesprune.compress.graph_trace import trace
from bayesprune.nn import VariationalLayer
from bayesprune.nn.linear_twins import linear_twins


class Conv1D(nn.Module):
    """Hugging Face's layer: `weight` is in × out, the forward an addmm."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.3)
        self.bias = nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x: Tensor) -> Tensor:
        size_out = (*x.size()[:-1], self.nf)
        return torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight).view(size_out)


class SquareMap(nn.Module):
    """A square weight used as stored (x Wᵀ): a linear map, but not a transposed one."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(6, 6))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c_fc, self.c_proj, self.other = Conv1D(16, 6), Conv1D(6, 16), SquareMap()
        self.head = nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = x + self.c_proj(F.gelu(self.c_fc(x)))
        return self.head(self.other(h).mean(1))


def test_a_transposed_layer_is_replaced_by_the_linear_it_computes():
    torch.manual_seed(0)
    block, x = Block().eval(), torch.randn(3, 4, 6)
    expected = block(x)
    assert linear_twins(block) == ["c_fc", "c_proj"]
    assert type(block.c_fc) is nn.Linear and block.c_fc.weight.shape == (16, 6)
    assert type(block.other) is SquareMap  # x Wᵀ is not x W: left as it is
    torch.testing.assert_close(block(x), expected)


def test_convert_makes_them_bayesian_and_the_graph_prunes_their_units():
    torch.manual_seed(0)
    plain, x = Block().double().eval(), torch.randn(3, 4, 6, dtype=torch.float64)
    model = bp.convert(plain, "gaussian", init_from_weights=True).double().eval()
    assert isinstance(model.c_fc, VariationalLayer) and isinstance(model.c_proj, VariationalLayer)
    with bp.nn.use_posterior_mean(model):
        torch.testing.assert_close(model(x), plain(x))
    scores = activation_scores(model, x)
    result = shrink_graph(model, x, prune_units=keep_units({"c_fc": scores["c_fc"]}, 0.5))
    assert result.model.c_fc.out_features == 8 and result.max_abs_difference < 1e-9


def test_a_tied_transposed_weight_is_left_alone():
    block = Block()
    block.twin = Conv1D(6, 16)
    block.twin.weight = block.c_proj.weight  # two modules, one weight: a copy would untie
    assert linear_twins(block) == ["c_fc"]
    assert block.twin.weight is block.c_proj.weight


class OwnForwardLinear(nn.Linear):
    """Falcon's `FalconLinear`: an nn.Linear with a forward of its own, `x @ Wᵀ + b`."""

    def forward(self, x: Tensor) -> Tensor:
        out = x @ self.weight.T
        return out if self.bias is None else out + self.bias


class ScaledLinear(nn.Linear):
    """An nn.Linear subclass whose forward computes something else: left as it is."""

    def forward(self, x: Tensor) -> Tensor:
        return 2.0 * super().forward(x)


class Falconish(nn.Module):
    """A forward that checks a shape (only a valued trace follows it) around layers whose
    forward reads `self.weight.T`, an attribute the trace must give a value."""

    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = OwnForwardLinear(6, 16), OwnForwardLinear(16, 6, bias=False)
        self.scaled, self.head = ScaledLinear(6, 6), nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3:
            raise ValueError("batch x tokens x 6")
        h = x + self.down(torch.relu(self.up(x)))
        return self.head(self.scaled(h).mean(1))


def test_a_linear_subclass_with_its_own_forward_converts_and_its_units_go():
    torch.manual_seed(1)
    model, x = Falconish().eval(), torch.randn(3, 4, 6)
    expected = model(x)
    assert linear_twins(model) == ["up", "down"]
    assert type(model.up) is nn.Linear and type(model.scaled) is ScaledLinear
    torch.testing.assert_close(model(x), expected)
    bayes = bp.convert(Falconish(), "gaussian", example_inputs=(x,)).eval()
    assert isinstance(bayes.up, VariationalLayer) and not isinstance(bayes.scaled, VariationalLayer)
    scores = activation_scores(bayes, x)
    assert torch.isfinite(scores["up"]).all()
    result = shrink_graph(bayes, x, prune_units={"up": keep_units(scores, 0.5)["up"]})
    assert result.model.up.out_features == 8 and result.max_abs_difference < 1e-5


class ReadsATranspose(nn.Module):
    """`x @ self.mix.T` (an attribute read, not a call), then a branch on the dtype, in a
    forward that also checks a shape: the valued trace must know the value after `.T`."""

    def __init__(self) -> None:
        super().__init__()
        self.mix, self.head = nn.Parameter(torch.randn(6, 6)), nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3:
            raise ValueError("batch x tokens x 6")
        h = x @ self.mix.T
        if h.dtype == torch.float16:
            h = h.float()
        return self.head(h.mean(1))


def test_an_attribute_read_without_a_call_has_its_value_in_the_valued_trace():
    model, x = ReadsATranspose().eval(), torch.randn(3, 4, 6)
    gm = trace(model, inputs=(x,))
    torch.testing.assert_close(gm(x), model(x))
