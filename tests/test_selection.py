"""Spike-and-slab model selection: PIPs, rules, pinned gates, shrink, refit, scores."""

import pytest
import torch
from torch import nn

import bayesprune as bp
from bayesprune.models import mlp
from bayesprune.nn import SpikeSlabEdgeLinear, use_posterior_mean
from bayesprune.nn.spike_slab import PIN
from bayesprune.selection import (
    INPUTS,
    decide,
    heldout_scores,
    inclusion_probabilities,
    pin_gates,
    pip_summary,
    prune,
    refit,
    select_model,
)


def _spread_gates(model, seed=0):
    """Gate logits spread over (−3, 3) so that every rule has something to decide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gate_logit"):
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 2)
    return model


def _net(level="node", seed=0):
    torch.manual_seed(seed)
    kwargs = {"input_gates": True} if level == "node" else {}
    family = "spike_slab" if level == "node" else "spike_slab_edge"
    model = mlp(6, [5, 4], 2, family=family, **kwargs).double()
    return _spread_gates(model, seed)


def _masked_forward(model, keep, x):
    """Reference: the posterior-mean MLP with dropped inputs and units zeroed by hand."""
    linears = [m for m in model if hasattr(m, "weight_mu")]
    h = x * keep[INPUTS].to(x)
    for i, layer in enumerate(linears):
        w = layer.weight_mu.detach().clone()
        b = layer.bias_mu.detach().clone()
        h = h @ w.T + b
        if i < len(linears) - 1:
            h = torch.relu(h) * keep[str(2 * i)].to(h)
    return h


def test_pips_are_probabilities_of_hidden_units_and_inputs():
    model = _net()
    pips = inclusion_probabilities(model)
    assert sorted(pips.units) == ["0", "2"]  # the output layer "4" is never pruned
    assert pips.inputs is not None and pips.inputs.shape == (6,)
    for p in [*pips.units.values(), pips.inputs]:
        assert ((p >= 0) & (p <= 1)).all()
    torch.testing.assert_close(pips.units["0"], torch.sigmoid(model[0].gate_logit.detach()))


def test_edge_level_pip_options_match_their_formulas():
    torch.manual_seed(0)
    layer = SpikeSlabEdgeLinear(4, 3).double()
    _spread_gates(nn.Sequential(layer))
    model = nn.Sequential(layer, nn.ReLU(), nn.Linear(3, 1).double())
    phi = torch.sigmoid(layer.weight_gate_logit.detach())
    phi_b = torch.sigmoid(layer.bias_gate_logit.detach())
    any_pip = inclusion_probabilities(model, "any")
    expected_any = 1 - (1 - phi).prod(1) * (1 - phi_b)
    torch.testing.assert_close(any_pip.units["0"], expected_any)
    torch.testing.assert_close(any_pip.inputs, 1 - (1 - phi).prod(0))
    max_pip = inclusion_probabilities(model, "max")
    torch.testing.assert_close(max_pip.units["0"], torch.maximum(phi.max(1).values, phi_b))
    torch.testing.assert_close(max_pip.inputs, phi.max(0).values)
    with pytest.raises(ValueError, match="valid"):
        inclusion_probabilities(model, "mean")


def test_rules_decide_per_layer():
    pips = inclusion_probabilities(_net())
    median = decide(pips)
    for name, pip in [*pips.units.items(), (INPUTS, pips.inputs)]:
        assert torch.equal(median.keep[name], pip > 0.5)
    top = decide(pips, "target_size", k={"0": 2, INPUTS: 3})
    assert top.kept()["0"] == 2 and top.kept()[INPUTS] == 3
    assert torch.equal(top.keep["2"], pips.units["2"] > 0.5)  # not named: median
    assert top.selected_features == sorted(torch.argsort(-pips.inputs)[:3].tolist())
    expected = decide(pips, "expected_size")
    for name, pip in [*pips.units.items(), (INPUTS, pips.inputs)]:
        assert expected.kept()[name] == round(float(pip.sum()))
        kept_min = pip[expected.keep[name]].min() if expected.kept()[name] else 1.0
        assert (pip[~expected.keep[name]] <= kept_min).all()  # the top PIPs
    fdr = decide(pips, "fdr", alpha=0.2)
    for name, mask in fdr.keep.items():
        pip = pips.units.get(name, pips.inputs)
        assert mask.sum() == 0 or (1 - pip[mask]).mean() <= 0.2 + 1e-12
    with pytest.raises(ValueError, match="valid"):
        decide(pips, "best")
    with pytest.raises(ValueError, match="unknown layers"):
        decide(pips, "target_size", k={"7": 1})


@pytest.mark.parametrize("rule", ["median", "target_size"])
def test_pruned_network_equals_the_hand_masked_network(rule):
    model = _net()
    selection = decide(inclusion_probabilities(model), rule, k=3)
    result = prune(model, selection)
    x = torch.randn(32, 6, dtype=torch.float64)
    with torch.no_grad(), use_posterior_mean(result.model):
        out = result.model(x)
    torch.testing.assert_close(out, _masked_forward(model, selection.keep, x))
    kept = selection.kept()
    assert result.architecture == [kept[INPUTS], kept["0"], kept["2"], 2]
    assert result.input_features == selection.selected_features


def test_median_pruned_network_is_the_posterior_mean_network():
    model = _net()
    result = prune(model, decide(inclusion_probabilities(model)))
    x = torch.randn(16, 6, dtype=torch.float64)
    with torch.no_grad(), use_posterior_mean(model), use_posterior_mean(result.model):
        torch.testing.assert_close(result.model(x), model(x))


def test_pinned_gates_are_exact_and_frozen_and_the_original_is_untouched():
    model = _net()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    selection = decide(inclusion_probabilities(model))
    pinned = pin_gates(model, selection)
    gate = pinned[0].gate_logit
    assert not gate.requires_grad
    assert torch.equal(gate.abs(), torch.full_like(gate, PIN))
    assert torch.equal(gate > 0, selection.keep["0"])
    pinned.train()
    x = torch.randn(200, 6, dtype=torch.float64)
    hidden = pinned[1](pinned[0](x))  # sampled: dropped units are exactly 0 in every draw
    assert (hidden[:, ~selection.keep["0"]] == 0).all()
    for key, value in model.state_dict().items():
        assert torch.equal(value, original[key]), key


def test_edge_level_pruning_keeps_the_output_exact():
    model = _net("edge")
    selection = decide(inclusion_probabilities(model, "max"))
    result = prune(model, selection)
    pinned = pin_gates(model, selection)
    x = torch.randn(16, 6, dtype=torch.float64)
    with torch.no_grad(), use_posterior_mean(result.model), use_posterior_mean(pinned):
        torch.testing.assert_close(result.model(x), pinned(x))
    # a unit the rule dropped has no edge left on
    dropped = ~selection.keep["0"]
    assert (pinned[0].weight_gate_logit[dropped] < 0).all()


def _regression(n=300, p=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=g)
    y = 2 * x[:, 0] - 1.5 * x[:, 1] + 0.1 * torch.randn(n, generator=g)
    return x, y


def test_select_model_finds_the_true_inputs_and_the_pruned_net_predicts():
    x, y = _regression()
    torch.manual_seed(0)
    model = mlp(8, [6], 1, family="spike_slab", input_gates=True)
    report = select_model(
        model,
        (x[:200], y[:200]),
        (x[200:], y[200:]),
        likelihood="gaussian",
        fit_kwargs={"epochs": 150, "batch_size": 50, "lr": 1e-2},
        refit_how="deterministic",
        refit_kwargs={"epochs": 20, "batch_size": 50, "lr": 1e-2},
    )
    assert report.selection.selected_features == [0, 1]
    assert report.architecture[0] == 2 and report.architecture[-1] == 1
    assert not any(True for _ in bp.nn.variational_layers(report.pruned))  # refit as plain
    for key in ("full", "pruned"):
        assert report.scores[key]["rmse"] < 0.5 * float(y[200:].std())  # beats the mean
    record = report.as_dict()
    assert record["selected_features"] == [0, 1] and record["settings"]["refit"] == "deterministic"


def test_bayes_refit_keeps_the_gates_pinned():
    x, y = _regression(120)
    model = _net().float()
    with torch.no_grad():
        model[-1] = mlp(4, [], 1, family="spike_slab")[0]
    result = prune(model, decide(inclusion_probabilities(model)))
    refitted, history = refit(
        result.model, (x[:, :6], y), "bayes", likelihood="gaussian", epochs=2, progress=False
    )
    assert history is not None and len(history.epochs) == 2
    gate = refitted[-3].gate_logit  # the second hidden layer (after SelectInputs)
    assert torch.equal(gate.abs(), torch.full_like(gate, PIN))
    with pytest.raises(ValueError, match="valid"):
        refit(result.model, (x, y), "sometimes")


def test_heldout_scores_of_a_plain_network_use_one_pass():
    x, y = _regression(50)
    net = nn.Sequential(nn.Linear(8, 1))
    scores = heldout_scores(net, x, y, bp.Gaussian(noise_std=1.0))
    pred = net(x).detach().squeeze(1)
    assert scores["rmse"] == pytest.approx(float((pred - y).pow(2).mean().sqrt()), rel=1e-5)


def test_pip_summary_counts_each_gate_kind_of_every_gated_layer():
    model = _net()
    rows = pip_summary(model)
    assert [(r["layer"], r["gates"]) for r in rows] == [
        (1, "inputs"),
        (1, "units"),
        (2, "units"),
    ]  # the output layer is not gated
    pips = inclusion_probabilities(model)
    first_units = pips.units["0"]
    assert [r["n"] for r in rows] == [6, 5, 4]
    assert rows[0]["kept_pip_gt_0.5"] == int((pips.inputs > 0.5).sum())
    assert rows[1]["kept_pip_gt_0.5"] == int((first_units > 0.5).sum())
    assert rows[1]["mean_pip"] == pytest.approx(float(first_units.mean()))
    assert rows[1]["pip_gt_0.9"] + rows[1]["pip_in_0.1_0.9"] == int((first_units > 0.1).sum())
    assert rows[0]["prior_inclusion"] == pytest.approx(1 / 7)  # λ = 1 / (m + 1), 6 inputs
    assert rows[1]["prior_inclusion"] == pytest.approx(1 / 6)
