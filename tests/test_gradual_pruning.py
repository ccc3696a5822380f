"""Pruning inside training (`compress.GradualPruning`): the cubic schedule, masks that
only grow, training that still learns, and clear errors."""

from itertools import pairwise

import pytest
import torch
from sklearn.datasets import make_classification
from torch import nn

import bayesprune as bp
from bayesprune.compress import GradualPruning, cubic_sparsity, weight_masks


def test_the_cubic_schedule_rises_fast_then_flattens_and_ends_at_the_target():
    steps = [cubic_sparsity(e, 0.9, 3, 6) for e in range(1, 9)]
    assert steps[:2] == [0.0, 0.0] and steps[5:] == [0.9, 0.9, 0.9]
    rises = [b - a for a, b in pairwise(steps[1:6])]
    assert all(r > 0 for r in rises) and rises == sorted(rises, reverse=True)
    assert cubic_sparsity(4, 0.5, 4, 4) == 0.5  # start = end: one step inside training


def _data(n: int = 400) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = make_classification(n, 12, n_informative=6, n_classes=3, random_state=0)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


def test_pruning_follows_the_schedule_inside_fit_and_the_net_still_learns():
    x, y = _data()
    torch.manual_seed(0)
    model = bp.convert(
        nn.Sequential(nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 3)),
        "gaussian",
    )
    seen: list[dict[str, torch.Tensor]] = []
    pruning = GradualPruning(model, 0.8, start_epoch=2, end_epoch=5)
    history = bp.fit(
        model, (x, y), epochs=8, lr=1e-2, batch_size=64, progress=False,
        callbacks=[pruning, lambda _r: seen.append(weight_masks(model))],
    )  # fmt: skip
    targets = [t for _, t, _ in pruning.history]
    assert targets == [cubic_sparsity(e, 0.8, 2, 5) for e in range(1, 9)]
    total = sum(m.numel() for m in seen[0].values())
    for (_, target, share), masks in zip(pruning.history, seen, strict=True):
        assert abs(share - target) <= 1.5 / total  # the target, to one weight's rounding
        assert share == pytest.approx(1 - sum(float(m.sum()) for m in masks.values()) / total)
    for before, after in pairwise(seen):  # a pruned weight stays pruned
        assert all(bool((after[k] <= before[k]).all()) for k in before)
    losses = [r["nll"] for r in history.epochs]
    assert losses[-1] < 0.6 * losses[0]  # it kept learning while being pruned
    accuracy = bp.scorer((x, y), metrics=("accuracy",))(model)["accuracy"]
    assert accuracy > 0.75  # chance is 1/3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sparsity": 1.0, "end_epoch": 3}, "sparsity must be in"),
        ({"sparsity": 0.5, "start_epoch": 4, "end_epoch": 3}, "start_epoch <= end_epoch"),
        ({"sparsity": 0.5, "start_epoch": 0, "end_epoch": 3}, "1 <= start_epoch"),
        ({"sparsity": 0.5, "end_epoch": 3, "score": "nope"}, "nope"),
    ],
)
def test_bad_arguments_are_refused_with_the_reason(kwargs, match):
    model = bp.convert(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), "gaussian")
    with pytest.raises(ValueError, match=match):
        GradualPruning(model, **kwargs)
