"""The residual-CNN benchmark's pipeline on a tiny ResNet (benchmarks/_resnet.py).

What the benchmark's figures rest on: the shrunk Bayesian net computes what the
silenced net (dropped channels emit 0 after their BatchNorm) computes, with every
dropped channel really gone, and Torch-Pruning's ratio bisection lands on our FLOPs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import bayesprune as bp
from bayesprune import compress

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _resnet import (
    ResNet,
    bayes_compress,
    flops,
    following_bn,
    silence,
    stage_channels,
    tp_prune_to_flops,
)


def _trained_bn(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, as after training."""
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.3, 0.3)
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


def _net(x: torch.Tensor) -> torch.nn.Module:
    torch.manual_seed(0)
    net = bp.convert(ResNet((4, 6, 8), blocks=2), "gaussian", keep=("stem.0", "fc"))
    return _trained_bn(net, x)


def test_every_producer_has_its_batchnorm():
    net = ResNet((4, 6, 8), blocks=2)
    names = dict(net.named_modules())
    producers = [n for n, m in names.items() if isinstance(m, torch.nn.Conv2d)]
    assert len(producers) == 1 + 3 * 2 * 2 + 2  # stem, two convs per block, two projections
    for name in producers:
        assert isinstance(names[following_bn(name)], torch.nn.BatchNorm2d)


def test_shrunk_equals_silenced_and_drops_every_chosen_channel():
    x = torch.rand(32, 1, 28, 28)
    net = _net(x)
    scores = compress.activation_scores(net, x)
    keep = compress.keep_units(scores, 0.5)
    silenced = silence(net, keep)
    result = compress.shrink_graph(silenced, x[:4], prune_units=keep)
    assert sum(r.kept_dead_units for r in result.layers) == 0
    for record in result.layers:  # every dropped unit is gone, no kept unit lost
        assert record.kept_units == keep[record.name].nonzero().flatten().tolist()
    with (
        torch.no_grad(),
        bp.nn.use_posterior_mean(silenced),
        bp.nn.use_posterior_mean(result.model),
    ):
        torch.testing.assert_close(result.model(x), silenced(x), atol=1e-5, rtol=1e-5)
    channels = stage_channels(result.model)
    assert channels["layer3"]["stream"] == int(keep["layer3.1.conv2"].sum()) < 8
    assert flops(result.model) < flops(net)


def test_level_search_and_equal_flops_matching():
    x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    net = _net(x)
    accuracy = bp.scorer((x, y), mode="mean", metrics=["accuracy"])
    tuned = []
    ours = bayes_compress(
        net, x, accuracy, tuned.append, x[:4], [0.25, 0.5], {"accuracy": 1.0}, [x]
    )  # tolerance 1.0: every level passes, the largest is kept
    assert ours.sparsity == 0.5 and ours.within_tolerance and ours.allocation == "layer"
    assert ours.rule == "grid" and all(g["acceptable"] for g in ours.grid)
    assert [g["sparsity"] for g in ours.grid] == [0.25, 0.5] and len(tuned) == 2
    assert ours.model is tuned[-1]
    both = bayes_compress(
        net,
        x,
        accuracy,
        lambda m: None,
        x[:4],
        [0.5],
        {"accuracy": 1.0},
        [x],
        ("layer", "global", "streams"),
    )
    layer, *others = both.grid  # the cross-layer ones at (at most) the layer net's FLOPs
    assert [g["allocation"] for g in both.grid] == ["layer", "global", "streams"]
    assert all(g["flops"] <= layer["flops"] and g["keep_units_sparsity"] > 0 for g in others)
    kept = max(both.grid, key=lambda g: g["val_accuracy_finetuned"])  # first one on a tie
    assert both.allocation == kept["allocation"]
    with pytest.raises(ValueError, match="allocations"):
        bayes_compress(net, x, accuracy, lambda m: None, x[:4], [0.5], {"accuracy": 1}, [x], ("x",))
    assert max(g["shrunk_minus_masked"] for g in ours.grid) < 1e-5
    pytest.importorskip("torch_pruning")  # the `bench` extra; CI installs only `dev`
    target = flops(ours.model)
    torch.manual_seed(0)
    det = _trained_bn(ResNet((4, 6, 8), blocks=2), x)
    for kind in ("magnitude", "taylor"):
        pruned, found = tp_prune_to_flops(det, kind, target, x[:4], [(x, y)])
        assert 0 < found["pruning_ratio"] < 0.95
        assert flops(pruned) == pytest.approx(target, rel=0.05)
        assert found["flops_gap"] == pytest.approx(flops(pruned) / target - 1)
        assert pruned(x).shape == (64, 10)


def _flops_share_as_auroc(dense: torch.nn.Module):
    """A stand-in validation: accuracy 1 everywhere, an "OOD AUROC" equal to the net's share
    of the dense FLOPs, so that it falls as the level rises, as the MI did."""
    total = flops(dense)
    return lambda m: {"accuracy": 1.0, "ood_auroc_mi": flops(m) / total}


def _flops_share(net: torch.nn.Module, x: torch.Tensor, sparsity: float) -> float:
    keep = compress.keep_units(compress.activation_scores(net.eval(), x), sparsity)
    return flops(compress.shrink_graph(net, x[:4], prune_units=keep).model) / flops(net)


def test_the_level_rule_holds_uncertainty_and_falls_back_honestly():
    x = torch.rand(32, 1, 28, 28)
    net = _net(x)
    share = {s: _flops_share(net, x, s) for s in (0.2, 0.4)}
    assert share[0.4] < share[0.2] < 1
    tolerance = 1 - (share[0.2] + share[0.4]) / 2  # 0.2 holds, 0.4 does not
    args = (_flops_share_as_auroc(net), lambda m: None, x[:4], [0.4, 0.6])
    rule = {"accuracy": 0.0, "ood_auroc_mi": tolerance}
    fell = bayes_compress(net, x, *args, rule, [x], fallback_grid=[0.1, 0.2])
    assert (fell.sparsity, fell.rule, fell.within_tolerance) == (0.2, "fallback", True)
    assert [g["sparsity"] for g in fell.grid] == [0.4, 0.2]  # the walk stops at 0.4
    assert [g["acceptable"] for g in fell.grid] == [False, True]
    assert fell.dense_val == {"accuracy": 1.0, "ood_auroc_mi": 1.0}
    none = bayes_compress(net, x, *args, {"ood_auroc_mi": 0.0}, [x], fallback_grid=[0.2])
    assert (none.sparsity, none.rule, none.within_tolerance) == (0.2, "none held", False)
    alone = bayes_compress(net, x, *args, {"accuracy": 0.0}, [x], fallback_grid=[0.2])
    assert (alone.sparsity, alone.rule) == (0.6, "grid")  # accuracy alone prunes the most
