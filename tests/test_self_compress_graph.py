"""self_compress on graphs that are not chains: residual channels cut together, any family."""

from __future__ import annotations

import pytest
import torch
from test_shrink_graph import Residual, _build
from torch import nn

from bayesprune.compress import activation_scores, self_compress
from bayesprune.compress.adapters import as_prunable
from bayesprune.nn import use_posterior_mean


def _always_fine(model: nn.Module) -> dict[str, float]:
    return {"accuracy": 1.0}


def _x(n: int = 16) -> torch.Tensor:
    return torch.randn(n, 2, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.mark.parametrize("family", ["gaussian", "sparse_vd_group", "spike_slab"])
def test_a_round_cuts_the_lowest_channels_from_both_sides_of_a_residual_add(family):
    model, x = _build(Residual, family), _x()
    scores = activation_scores(model, x)
    torch.testing.assert_close(scores["stem"], scores["conv2"])  # one residual group
    result = self_compress(
        model, _always_fine, example_inputs=x[:2], score="activation", score_data=x,
        fraction=0.3, max_rounds=1,
    )  # fmt: skip
    small = result.model
    assert type(small) is Residual and result.accepted.round == 1
    kept = torch.argsort(scores["stem"], descending=True, stable=True)[:4].sort().values
    assert small.stem.out_channels == small.conv2.out_channels == small.bn0.num_features == 4
    assert small.head.in_features == 4 and small.conv1.out_channels == 3  # 5 − ceil(0.3·5)
    old = as_prunable(model.stem).posterior().weight_mean
    torch.testing.assert_close(as_prunable(small.stem).posterior().weight_mean, old[kept])
    small.eval()
    with torch.no_grad(), use_posterior_mean(small):
        assert torch.isfinite(small(x)).all()


def test_greedy_on_a_graph_cuts_a_residual_group_as_one_layer():
    model, x = _build(Residual, "gaussian"), _x()

    def block_matters(m: nn.Module) -> dict[str, float]:  # conv1 costs 0.1 a channel
        return {
            "accuracy": 1.0 - 0.1 * (5 - m.conv1.out_channels) - 0.01 * (6 - m.stem.out_channels)
        }

    result = self_compress(
        model, block_matters, example_inputs=x[:2], score="activation", score_data=x,
        fraction=0.3, max_rounds=1, greedy=True, tolerance=0.1,
    )  # fmt: skip
    small = result.model
    assert small.stem.out_channels == small.conv2.out_channels == 4  # the group, together
    assert small.conv1.out_channels == 5
    assert result.accepted.removed == {"stem": 2, "conv1": 0, "conv2": 2}


def test_activation_score_without_data_names_the_argument():
    model = _build(Residual, "gaussian")
    with pytest.raises(ValueError, match="score_data"):
        self_compress(model, _always_fine, example_inputs=_x(2), score="activation", fraction=0.5)
