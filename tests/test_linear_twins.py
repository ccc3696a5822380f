"""GPT-2's `Conv1D` (a linear layer stored transposed) becomes the nn.Linear it is."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import bayesprune as bp
from bayesprune.compress import activation_scores, keep_units
from bayesprune.compress.graph import shrink_graph
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
