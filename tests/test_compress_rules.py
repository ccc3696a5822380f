"""Pruning rules hit their targets exactly; masks interoperate with torch.nn.utils.prune."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from bayesprune import fit, mlp, to_deterministic
from bayesprune.compress import (
    apply_masks,
    apply_torch_prune,
    global_sparsity_masks,
    layer_sparsity_masks,
    search_sparsity,
    sparsity,
    threshold_masks,
    torch_prune_importance,
    unit_scores,
    weight_masks,
    weight_masks_for,
    weight_scores,
)
from bayesprune.evaluation import scorer


def _scores() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"a": torch.rand(7, 5, generator=g), "b": torch.rand(3, 2, 2, 2, generator=g)}


@pytest.mark.parametrize("target", [0.0, 0.1, 0.37, 0.5, 0.93, 1.0])
def test_global_sparsity_is_exact_and_removes_the_lowest(target):
    scores = _scores()
    masks = global_sparsity_masks(scores, target)
    n = sum(s.numel() for s in scores.values())
    assert sum(int((m == 0).sum()) for m in masks.values()) == round(target * n)
    kept = torch.cat([s[m.bool()] for s, m in zip(scores.values(), masks.values(), strict=True)])
    gone = torch.cat([s[~m.bool()] for s, m in zip(scores.values(), masks.values(), strict=True)])
    if len(kept) and len(gone):
        assert gone.max() <= kept.min()


def test_ties_are_broken_by_position_so_the_count_is_still_exact():
    masks = global_sparsity_masks({"a": torch.zeros(10)}, 0.3)
    assert masks["a"].tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]


def test_layer_sparsity_is_exact_per_layer():
    scores = _scores()
    masks = layer_sparsity_masks(scores, {"a": 0.4, "b": 0.75})
    assert int((masks["a"] == 0).sum()) == round(0.4 * 35)
    assert int((masks["b"] == 0).sum()) == round(0.75 * 24)
    same = layer_sparsity_masks(scores, 0.5)
    assert [int((m == 0).sum()) for m in same.values()] == [round(17.5), 12]
    with pytest.raises(ValueError, match="unknown layers"):
        layer_sparsity_masks(scores, {"zzz": 0.5})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        global_sparsity_masks(scores, 1.5)


def test_threshold_keeps_strictly_above():
    masks = threshold_masks({"a": torch.tensor([0.2, 0.5, 0.7])}, 0.5)
    assert masks["a"].tolist() == [0.0, 0.0, 1.0]


def test_unit_masks_expand_to_whole_rows_and_keep_earlier_pruning():
    model = mlp(6, [5], 3, family="gaussian")
    first = global_sparsity_masks(weight_scores(model, "snr"), 0.3)
    apply_masks(model, first)
    units = layer_sparsity_masks(unit_scores(model, "norm"), 0.4)  # 2 of 5 units
    masks = weight_masks_for(model, units, "unit")
    dead_rows = (masks["0"] == 0).all(1)
    assert int(dead_rows.sum()) == 2
    assert torch.equal(masks["0"], masks["0"] * first["0"])  # earlier zeros stay zero
    apply_masks(model, masks)
    assert torch.equal(weight_masks(model)["0"], masks["0"])


def test_torch_prune_global_unstructured_gives_our_mask():
    model = mlp(8, [6, 5], 3, family="gaussian")
    with torch.no_grad():  # spread the sigmas so SNR ranks differently from |mu|
        for layer in (model[0], model[2], model[4]):
            layer.weight_rho.uniform_(-6.0, 0.0)
    scores = weight_scores(model, "snr")
    n = sum(s.numel() for s in scores.values())
    ours = global_sparsity_masks(scores, 0.6)
    plain = to_deterministic(model)
    params = [(plain[i], "weight") for i in (0, 2, 4)]
    prune.global_unstructured(
        params,
        pruning_method=prune.L1Unstructured,
        amount=round(0.6 * n),
        importance_scores=torch_prune_importance(plain, scores),
    )
    for name in ("0", "2", "4"):
        assert torch.equal(plain.get_submodule(name).weight_mask, ours[name])
    # and the reverse: our masks installed as torch prune masks
    other = apply_torch_prune(to_deterministic(model), ours)
    assert torch.equal(other[2].weight_mask, ours["2"])
    assert torch.equal(other[2].weight == 0, (ours["2"] == 0) | (plain[2].weight_orig == 0))


def test_search_finds_the_largest_sparsity_within_delta_on_a_known_curve():
    model = mlp(10, [20], 3, family="gaussian")
    scores = weight_scores(model, "snr")

    def accuracy(m: nn.Module) -> dict[str, float]:  # falls linearly with the fraction pruned
        return {"accuracy": 0.9 - 0.5 * sparsity(weight_masks(m))}

    result = search_sparsity(model, scores, accuracy, delta=0.3, refine_steps=6)
    assert result.baseline == pytest.approx(0.9)
    assert result.accuracy >= 0.6 - 1e-9
    assert 0.57 <= result.sparsity <= 0.6  # the true limit is 0.6
    assert all(p["within"] == (p["accuracy"] >= 0.6 - 1e-12) for p in result.curve)
    assert [p["sparsity"] for p in result.curve] == sorted(p["sparsity"] for p in result.curve)
    assert sparsity(result.masks) == pytest.approx(result.sparsity, abs=1 / 260)
    kept = torch.cat(
        [s[m.bool()] for s, m in zip(scores.values(), result.masks.values(), strict=True)]
    )
    assert kept.min() > result.threshold


def test_search_on_real_validation_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 6, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    model = mlp(6, [16], 2, family="gaussian", prior_scale=0.3)
    fit(model, (x[:200], y[:200]), epochs=40, batch_size=50, lr=0.02, progress=False)
    val = (x[200:], y[200:])
    result = search_sparsity(model, weight_scores(model, "snr"), scorer(val), delta=0.03)
    assert result.baseline > 0.85
    assert result.accuracy >= result.baseline - 0.03
    assert result.sparsity >= 0.5
    assert result.as_dict()["curve"]


def test_search_names_its_metric_and_refuses_data_in_place_of_a_scorer():
    model = mlp(4, [6], 2, family="gaussian")
    scores = weight_scores(model, "snr")
    val = (torch.randn(20, 4), torch.randint(0, 2, (20,)))
    with pytest.raises(TypeError, match="evaluate=.*scorer"):
        search_sparsity(model, scores, val)
    with pytest.raises(KeyError, match="'accuracy' is not among"):
        search_sparsity(model, scores, scorer(val, metrics=["nll"]))

    def minus_nll(m: nn.Module) -> dict[str, float]:  # higher is better
        return {"minus_nll": -scorer(val, metrics=["nll"])(m)["nll"]}

    result = search_sparsity(model, scores, minus_nll, metric="minus_nll", grid=(0.5,))
    assert result.metric == "minus_nll" and result.as_dict()["metric"] == "minus_nll"
    assert result.baseline == pytest.approx(minus_nll(model)["minus_nll"])
