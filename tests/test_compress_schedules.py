"""Width schedules and unit-pruning rounds: the targets, the units removed, the means kept."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from bayesprune import convert, mlp
from bayesprune.compress import (
    layer_inputs,
    prune_to_widths,
    unit_scores,
    weight_masks,
    width_schedule,
    width_scores,
)
from bayesprune.compress.adapters import prunable_layers
from bayesprune.metrics import layer_widths
from bayesprune.nn import use_posterior_mean


def test_width_schedule_runs_geometrically_from_start_to_final():
    targets = width_schedule((784, 300, 100), (280, 75, 13), 8)
    assert len(targets) == 8
    assert targets[-1] == (280, 75, 13)
    assert targets[0] == (689, 252, 77)  # 784 · (280 / 784)^(1/8) = 688.9, ...
    for before, after in itertools.pairwise([(784, 300, 100), *targets]):
        assert all(b >= a for b, a in zip(before, after, strict=True))


def test_extra_rounds_scale_the_final_widths_and_never_reach_zero():
    targets = width_schedule((10, 4), (5, 2), 2, extra_rounds=3, extra_factor=0.5)
    assert targets == [(7, 3), (5, 2), (2, 1), (1, 1), (1, 1)]


def test_width_schedule_rejects_mismatched_widths():
    with pytest.raises(ValueError, match="differ in length"):
        width_schedule((10, 4), (5,), 2)
    with pytest.raises(ValueError, match="rounds"):
        width_schedule((10, 4), (5, 2), 0)


def _svd_chain() -> nn.Sequential:
    torch.manual_seed(0)
    return convert(mlp(6, [5, 4], 3), "sparse_vd", init_from_weights=True)


def test_layer_inputs_are_what_each_layer_receives():
    net = _svd_chain()
    x = torch.randn(16, 6)
    inputs = layer_inputs(net, x)
    assert [t.shape[1] for t in inputs] == [6, 5, 4]
    assert torch.equal(inputs[0], x)
    assert (inputs[1] >= 0).all()  # after the ReLU


def test_norm_width_scores_are_the_input_then_the_unit_scores():
    net = _svd_chain()
    scores = width_scores(net, "norm")
    units = list(unit_scores(net, "norm").values())
    assert [s.numel() for s in scores] == [6, 5, 4]
    assert torch.equal(scores[1], units[0]) and torch.equal(scores[2], units[1])
    with pytest.raises(ValueError, match="needs data"):
        width_scores(net, "activation")
    with pytest.raises(ValueError, match="valid"):
        width_scores(net, "bogus")


@pytest.mark.parametrize("score", ["activation", "norm"])
def test_one_round_removes_exactly_the_lowest_scored_units(score):
    net = _svd_chain()
    x = torch.randn(64, 6)
    scores = width_scores(net, score, x)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    result = prune_to_widths(net, x, (4, 3, 2), score)
    assert layer_widths(result.model) == (4, 3, 2, 3)
    expected_inputs = sorted(scores[0].argsort(descending=True)[:4].tolist())
    assert result.input_features == expected_inputs
    for record, importance, width in zip(result.layers, scores[1:], (3, 2), strict=False):
        assert record.kept_units == sorted(importance.argsort(descending=True)[:width].tolist())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # on a copy


def _replaced_by_mean(net: nn.Module, layer: int, drop: torch.Tensor, mean: torch.Tensor):
    """A pre-hook that feeds `layer` the mean of its dropped inputs instead of their values."""

    def hook(_, args):
        h = args[0].clone()
        h[:, drop] = mean[drop]
        return (h,)

    return prunable_layers(net)[layer][1].register_forward_pre_hook(hook)


@pytest.mark.parametrize("level", [0, 1])
def test_a_round_replaces_the_removed_units_by_their_mean(level):
    """Dropped inputs (level 0) and hidden units (level 1) lose their variation only: the
    pruned net equals the full net whose dropped features are held at their means."""
    net = _svd_chain()
    x = torch.rand(128, 6)
    widths = [(4, 5, 4), (6, 3, 4)][level]
    scores = width_scores(net, "norm")
    drop = scores[level].argsort(descending=True)[widths[level] :]
    mean = layer_inputs(net, x)[level].mean(0)
    result = prune_to_widths(net, x, widths, "norm")
    probe = torch.rand(32, 6)
    handle = _replaced_by_mean(net, level, drop, mean)
    with torch.no_grad(), use_posterior_mean(net), use_posterior_mean(result.model):
        full = net(probe)
        small = result.model(probe[:, result.input_features])
    handle.remove()
    assert torch.allclose(full, small, atol=1e-5)


def test_keep_weights_drop_further_weights_of_kept_units():
    net = _svd_chain()
    x = torch.randn(32, 6)
    keep = {"0": torch.ones(5, 6)}
    keep["0"][:, 0] = 0  # input 0 loses every weight: shrink then drops it as well
    result = prune_to_widths(net, x, (6, 5, 4), "norm", keep_weights=keep)
    assert 0 not in result.input_features
    assert sum(int(m.sum()) for m in weight_masks(result.model).values()) > 0
