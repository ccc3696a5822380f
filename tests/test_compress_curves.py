"""Pruning curves: fraction 0 is the unpruned model, points are scored on copies."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bayesprune import mlp
from bayesprune.compress import (
    bisect_sparsity,
    pruned_copy,
    pruning_curve,
    sparsity,
    unit_removal_curve,
    weight_masks,
    weight_scores,
)
from bayesprune.evaluation import scorer


def _task() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    model = mlp(4, [8], 3, family="deterministic")
    x = 5 * torch.randn(64, 4)
    with torch.no_grad():
        y = model(x).argmax(-1)  # the model is right on every example
    return model, (x, y)


def test_pruning_curve_starts_at_the_unpruned_metric_and_leaves_the_model_alone():
    model, data = _task()
    evaluate = scorer(data, metrics=["accuracy"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    curve = pruning_curve(model, weight_scores(model), evaluate, (0.0, 0.5, 1.0))
    assert [p["sparsity"] for p in curve] == [0.0, 0.5, 1.0]
    assert curve[0]["accuracy"] == evaluate(model)["accuracy"] == 1.0
    assert curve[2]["accuracy"] < 1.0  # every weight gone: one constant answer
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_pruned_copy_removes_the_fraction_asked():
    model, _ = _task()
    small = pruned_copy(model, weight_scores(model), 0.25)
    assert sparsity(weight_masks(small)) == pytest.approx(0.25, abs=1 / 68)
    assert sparsity(weight_masks(model)) == 0.0


def test_bisect_finds_a_larger_accepted_sparsity_between_the_grid_points():
    model, data = _task()
    evaluate = scorer(data, metrics=["error_pct"])
    scores = weight_scores(model)
    curve = pruning_curve(model, scores, evaluate, (0.0, 0.9), metric="error_pct")
    budget = 10.0
    assert curve[0]["error_pct"] <= budget < curve[1]["error_pct"]
    points, best = bisect_sparsity(
        model, scores, evaluate, curve, lambda e: e <= budget, metric="error_pct", steps=4
    )
    assert len(points) == 6 and [p["sparsity"] for p in points] == sorted(
        p["sparsity"] for p in points
    )
    assert 0.0 < best < 0.9  # between the grid points, found by bisection
    at_best = [p["error_pct"] for p in points if p["sparsity"] == best]
    assert at_best[0] <= budget


def test_unit_removal_curve_removes_units_in_ascending_score_order():
    model, data = _task()
    evaluate = scorer(data, metrics=["accuracy"])
    rows = unit_removal_curve(model, evaluate, "0", steps=4)
    assert [r["removed"] for r in rows] == [0, 2, 4, 6]
    assert [r["share"] for r in rows] == [0.0, 0.25, 0.5, 0.75]
    assert rows[0]["accuracy"] == 1.0
    with pytest.raises(ValueError, match="hidden layers"):
        unit_removal_curve(model, evaluate, "2")
