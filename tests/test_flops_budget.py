"""keep_units_for_flops: the least pruning whose shrunk network fits a FLOPs budget."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bayesprune import convert
from bayesprune.compress import (
    activation_scores,
    keep_units,
    keep_units_for_flops,
    shrink_graph,
)
from bayesprune.metrics import count_flops, example_flops
from bayesprune.resnet import resnet


def _resnet(family: str = "gaussian") -> tuple[nn.Module, Tensor, dict[str, Tensor]]:
    torch.manual_seed(0)
    model = resnet(1, 4, widths=(6, 10), blocks=1, family=family).eval()
    x = torch.randn(8, 1, 8, 8)
    return model, x, activation_scores(model, x)


def _shrunk_flops(model: nn.Module, x: Tensor, keep: dict[str, Tensor]) -> int:
    return example_flops(shrink_graph(model, x, prune_units=keep).model, x)


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("budget", [0.35, 0.7])
def test_the_budget_is_met_with_the_least_pruning(scope, budget):
    model, x, scores = _resnet()
    found = keep_units_for_flops(model, scores, x, budget, scope=scope)
    dense = count_flops(model, (1, 8, 8))
    assert found.dense_flops == dense
    assert found.flops <= budget * dense and found.ratio <= budget
    assert _shrunk_flops(model, x, found.masks) == found.flops  # what shrink_graph gives
    # on a fine grid no sparsity that fits leaves more FLOPs ("global" is not monotone
    # in the sparsity, so a point between the scanned ones may leave a few more)
    grid = [
        (s, _shrunk_flops(model, x, keep_units(scores, s, scope=scope)))
        for s in torch.linspace(0, 0.99, 34).tolist()
    ]
    fitting = [f for _, f in grid if f <= budget * dense]
    if scope == "layer":
        assert found.flops >= max(fitting)
    else:  # within 2 % of the dense FLOPs of the best grid point
        assert found.flops >= max(fitting) - 0.02 * dense
    assert found.ratio > budget - 0.25  # and the cut was not much deeper than asked


def test_a_budget_of_everything_keeps_everything():
    model, x, scores = _resnet("spike_slab")
    found = keep_units_for_flops(model, scores, x, 1.0)
    assert found.sparsity == 0.0 and found.ratio == 1.0
    assert all(bool(m.all()) for m in found.masks.values())


def test_an_unreachable_budget_names_the_smallest_fraction():
    model, x, scores = _resnet()
    with pytest.raises(ValueError, match="ask for at least that"):
        keep_units_for_flops(model, scores, x, 0.001)
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        keep_units_for_flops(model, scores, x, 1.5)


class TokenMLP(nn.Module):
    """A pre-norm transformer MLP on tokens with a second input (a per-example scale)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.norm = nn.Linear(5, 8), nn.LayerNorm(8)
        self.fc1, self.fc2 = nn.Linear(8, 32), nn.Linear(32, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor, scale: Tensor) -> Tensor:
        x = self.embed(x)
        x = x + self.fc2(F.gelu(self.fc1(self.norm(x))))
        return self.head(x.mean(dim=1)) * scale


def test_token_models_with_several_inputs_are_costed_on_the_example():
    torch.manual_seed(0)
    model = convert(TokenMLP(), "gaussian").eval()
    example = (torch.randn(4, 6, 5), torch.ones(4, 1))
    scores = activation_scores(model, example, inputs=2)
    found = keep_units_for_flops(model, scores, example, 0.5)
    # FLOPs per token row: embed 2·5·8, fc1 2·8·32, fc2 2·32·8, head 2·8·3 (once)
    assert found.dense_flops == 6 * (80 + 512 + 512) + 48
    assert found.ratio <= 0.5
    # the LayerNorm's stream (embed and fc2's units) narrows too, to s; the MLP to h
    stream, hidden = int(found.masks["embed"].sum()), int(found.masks["fc1"].sum())
    assert stream < 8 and hidden < 32
    assert found.flops == 6 * (2 * 5 * stream + 4 * stream * hidden) + 2 * stream * 3
    small = shrink_graph(model, example, prune_units=found.masks).model
    assert (small.embed.out_features, small.fc1.out_features) == (stream, hidden)


def test_example_flops_is_count_flops_on_one_example():
    model, x, _ = _resnet("deterministic")
    assert example_flops(model, x) == count_flops(model, (1, 8, 8))
