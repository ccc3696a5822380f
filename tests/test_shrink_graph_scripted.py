"""A forward that calls a TorchScript function (Hugging Face's DeBERTa) is traced through
the Python function it was compiled from; a width made a tensor (`torch.tensor(d)`)
keeps its channels."""

from __future__ import annotations

import torch
from torch import Tensor, nn

import bayesprune as bp
from bayesprune.compress import activation_scores, keep_units
from bayesprune.compress.graph import shrink_graph


@torch.jit.script
def scaled(x: Tensor, factor: int) -> Tensor:
    return x / (torch.sqrt(torch.tensor(x.size(-1)).float()) * factor)


@torch.jit.script
def doubled(x: Tensor) -> Tensor:
    return x * 2.0


class Scripted(nn.Module):
    """`scale_by_width`: the scripted function divides by the square root of the
    stream's width (DeBERTa scales its attention scores so, by a head's width)."""

    def __init__(self, scale_by_width: bool) -> None:
        super().__init__()
        self.scale_by_width = scale_by_width
        self.up, self.down = nn.Linear(4, 12), nn.Linear(12, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.down(doubled(torch.relu(self.up(x))))
        if self.scale_by_width:
            h = scaled(h, 1)
        return self.head(torch.tanh(h))


def _model(scale_by_width: bool) -> nn.Module:
    torch.manual_seed(0)
    return bp.convert(Scripted(scale_by_width), "gaussian").double().eval()


def test_a_scripted_function_is_traced_through():
    model, x = _model(False), torch.randn(8, 4, dtype=torch.float64)
    scores = activation_scores(model, x)
    assert torch.isfinite(scores["up"]).all() and torch.isfinite(scores["down"]).all()
    result = shrink_graph(model, x, prune_units=keep_units(scores, sparsity=0.5))
    assert result.model.up.out_features == 6 and result.max_abs_difference < 1e-12
    assert isinstance(doubled, torch.jit.ScriptFunction)  # put back after the trace


def test_a_width_made_a_tensor_keeps_its_channels():
    model, x = _model(True), torch.randn(8, 4, dtype=torch.float64)
    scores = activation_scores(model, x)
    assert torch.isinf(scores["down"]).all()  # dividing by sqrt(width): it stays
    assert torch.isfinite(scores["up"]).all()
