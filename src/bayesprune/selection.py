"""Bayesian model selection with spike-and-slab networks: train, read PIPs, prune, refit.

`select_model` runs the whole pipeline of Saha, Liu & Liang (2024) and reports whether
the selected (pruned) network generalises as well as the full one:

1. train the spike-and-slab network with `fit` (full KL; `SPIKE_SLAB_FIT` holds any
   training defaults, see docs/spike_slab.md for the measurements);
2. read the posterior inclusion probabilities (`inclusion_probabilities`): one per
   unit of every gated hidden layer and one per input feature of the first layer;
3. decide per layer with a rule of `compress.pip_rules` (`decide`): "median" (keep
   PIP > 0.5, the median-probability model, default), "target_size", "expected_size"
   or "fdr";
4. pin every gate to the decision (kept → always on, dropped → always off, frozen) and
   `shrink`: a physically smaller network that is exactly the selected model;
5. optionally refit the smaller network (`refit`): "none", "bayes" (its slabs trained
   on with the gates pinned) or "deterministic" (the posterior means trained by
   maximum likelihood, no KL);
6. score both on held-out data: the full network by its Monte-Carlo predictive (it
   averages over gates and weights, Bayesian model averaging) and the pruned one.

Edge-level layers (one gate per weight) have no unit gate. A unit's PIP is then
aggregated from its incoming edges and bias gate (`edge_pip`): "any" = 1 − Π(1 − φ),
the probability that the unit has at least one edge (the layer's `unit_inclusion`),
or "max" = max φ, which keeps a unit exactly when the median model of its edges
keeps one of them. Edge gates themselves are pinned by their own median rule.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from .compress.adapters import prunable_layers
from .compress.pip_rules import PIP_RULES, select_by_pip
from .compress.shrink import ShrinkResult, shrink
from .data.xy import as_xy
from .evaluation import evaluate
from .likelihoods import Likelihood, make_likelihood
from .nn import EdgeAggregate, GatedLayer, gated_layers, to_deterministic, variational_layers
from .train import DataLike, History, fit

REFITS = ("none", "bayes", "deterministic")
EDGE_PIPS = EdgeAggregate.values()
INPUTS = "inputs"  # the key of the input features in `Selection.keep` and in `k`

SPIKE_SLAB_FIT: dict[str, Any] = {}
"""Training defaults `select_model` merges under the caller's `fit_kwargs`: none.

Gate-specific learning rates are not needed since the layers' default
`gate_estimator="marginal"` gives the gates analytic gradients (measurements in
docs/spike_slab.md); pass e.g. {"lr_multipliers": {"input_gate_logit": 10.0}} to try one.
"""


@dataclass
class InclusionProbabilities:
    """PIPs of one network: per unit of each gated hidden layer, per input feature."""

    units: dict[str, Tensor]  # layer name (as in shrink) → PIP per output unit
    inputs: Tensor | None  # PIP per input feature of the first layer (None: not gated)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: p.tolist() for name, p in self.units.items()}
        out[INPUTS] = None if self.inputs is None else self.inputs.tolist()
        return out


@dataclass
class Selection:
    """Keep-masks decided from PIPs: per gated hidden layer and for the input features."""

    keep: dict[str, Tensor]  # layer name or INPUTS → bool mask, True = keep
    pips: InclusionProbabilities
    rule: str

    @property
    def selected_features(self) -> list[int] | None:
        mask = self.keep.get(INPUTS)
        return None if mask is None else mask.nonzero().flatten().tolist()

    def kept(self) -> dict[str, int]:
        return {name: int(mask.sum()) for name, mask in self.keep.items()}


@dataclass
class SelectionReport:
    """What `select_model` did: the models, the decisions and full-vs-pruned scores."""

    model: nn.Module  # the trained spike-and-slab network (full)
    pruned: nn.Module  # the selected network: shrunk, and refit if asked
    likelihood: Likelihood
    selection: Selection
    shrink: ShrinkResult
    scores: dict[str, dict[str, float]]  # "full" / "pruned" → held-out metrics
    history: History | None = None
    refit_history: History | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def architecture(self) -> list[int]:
        """Widths of the pruned network from inputs to outputs."""
        return self.shrink.architecture

    def as_dict(self) -> dict[str, Any]:
        """JSON-able record (without the models)."""
        return {
            "settings": self.settings,
            "scores": self.scores,
            "kept": self.selection.kept(),
            "architecture": self.architecture,
            "selected_features": self.selection.selected_features,
            "pips": self.selection.pips.as_dict(),
            "shrink": self.shrink.as_dict(),
            "history": None if self.history is None else self.history.epochs,
            "refit_history": None if self.refit_history is None else self.refit_history.epochs,
        }


# ---------------------------------------------------------------------------------------
# PIPs and decisions
# ---------------------------------------------------------------------------------------
def inclusion_probabilities(model: nn.Module, edge_pip: str = "any") -> InclusionProbabilities:
    """PIPs of every gated hidden layer's units and of the first layer's input features.

    The last layer's units are the outputs and are never pruned, so they are left out.
    `edge_pip` says how an edge-level unit's PIP is formed (see the module docstring).
    """
    aggregate = EdgeAggregate(edge_pip)
    layers = prunable_layers(model)
    if not layers:
        raise ValueError("the model has no prunable layer (Linear, Conv2d or variational)")
    units: dict[str, Tensor] = {}
    for name, layer in layers[:-1]:
        if isinstance(layer, GatedLayer):
            pip = layer.unit_inclusion(aggregate)
            if pip is not None:
                units[name] = pip
    first = layers[0][1]
    inputs = first.input_inclusion(aggregate) if isinstance(first, GatedLayer) else None
    if not units and inputs is None:
        raise ValueError(
            "the model has no inclusion probabilities: build it with spike-and-slab layers, "
            'e.g. bayesprune.models.mlp(..., family="spike_slab", input_gates=True)'
        )
    return InclusionProbabilities(units, inputs)


def pip_summary(model: nn.Module, threshold: float = 0.5) -> list[dict[str, Any]]:
    """One row per gate kind of every gated layer: how many gates, how many the median
    model keeps, how many are confident or undecided, the mean PIP, and the prior λ.

    Rows read `unit_inclusion` / `input_inclusion` of the gate protocol, numbering the
    gated layers from 1 in module order; a layer's kinds without gates are left out.
    The mean PIP against the prior λ shows how far the data moved the gates; many PIPs
    in (0.1, 0.9] say the selection is unsure. "prior_inclusion" is the layer's λ for
    that kind of gate (`GatedLayer.prior_inclusions`), None where the PIPs are
    aggregated from edges.
    """
    rows: list[dict[str, Any]] = []
    for k, (_, layer) in enumerate(gated_layers(model), 1):
        priors = layer.prior_inclusions()
        kinds = (("inputs", layer.input_inclusion()), ("units", layer.unit_inclusion()))
        for kind, pip in kinds:
            if pip is None:
                continue
            rows.append(
                {
                    "layer": k,
                    "gates": kind,
                    "n": pip.numel(),
                    f"kept_pip_gt_{threshold}": int((pip > threshold).sum()),
                    "pip_gt_0.9": int((pip > 0.9).sum()),
                    "pip_in_0.1_0.9": int(((pip > 0.1) & (pip <= 0.9)).sum()),
                    "mean_pip": float(pip.mean()),
                    "prior_inclusion": priors.get(kind),
                }
            )
    return rows


def decide(
    pips: InclusionProbabilities,
    rule: str = "median",
    *,
    threshold: float = 0.5,
    k: int | Mapping[str, int] | None = None,
    alpha: float = 0.05,
) -> Selection:
    """Apply a PIP rule to every gated layer and to the input features.

    `rule`: "median" (PIP > `threshold`), "target_size" (the `k` highest PIPs; `k` an
    int for every layer, or {layer name or "inputs": k}, layers left out use "median"),
    "expected_size" (the round(Σ PIP) highest) or "fdr" (Bayesian FDR at level `alpha`).
    """
    if rule not in PIP_RULES:
        raise ValueError(f"unknown PIP rule {rule!r}; valid: {PIP_RULES}")
    named = dict(pips.units)
    if pips.inputs is not None:
        named[INPUTS] = pips.inputs
    if isinstance(k, Mapping):
        unknown = sorted(set(k) - set(named))
        if unknown:
            raise ValueError(f"k names unknown layers {unknown}; gated layers: {sorted(named)}")
    keep: dict[str, Tensor] = {}
    for name, pip in named.items():
        this_rule, this_k = rule, k
        if rule == "target_size":
            this_k = k.get(name) if isinstance(k, Mapping) else k
            if this_k is None and isinstance(k, Mapping):
                this_rule = "median"
        keep[name] = select_by_pip(pip, this_rule, threshold=threshold, k=this_k, alpha=alpha)
    return Selection(keep, pips, rule)


# ---------------------------------------------------------------------------------------
# prune: pin the gates, then shrink
# ---------------------------------------------------------------------------------------
def pin_gates(model: nn.Module, selection: Selection) -> nn.Module:
    """A copy of `model` whose gates are fixed to `selection` (on or off) and frozen.

    Its posterior-mean network is the selected model, and sampling it draws only the
    slab weights: it is the model the decision picked, ready to shrink or refit.
    """
    pinned = copy.deepcopy(model)
    layers = prunable_layers(pinned)
    names = {name for name, _ in layers[:-1]}
    unknown = sorted(set(selection.keep) - names - {INPUTS})
    if unknown:
        raise ValueError(f"selection names layers the model does not have: {unknown}")
    for i, (name, layer) in enumerate(layers):
        if isinstance(layer, GatedLayer):
            inputs = selection.keep.get(INPUTS) if i == 0 else None
            layer.pin_gates(selection.keep.get(name), inputs)
    return pinned


def prune(
    model: nn.Module, selection: Selection, input_shape: Sequence[int] | None = None
) -> ShrinkResult:
    """The selected network, physically smaller: `pin_gates`, then `compress.shrink`."""
    return shrink(pin_gates(model, selection), input_shape)


# ---------------------------------------------------------------------------------------
# refit and scores
# ---------------------------------------------------------------------------------------
def refit(
    pruned: nn.Module,
    train: DataLike,
    how: str = "none",
    *,
    likelihood: Likelihood | str = "categorical",
    **fit_kwargs: Any,
) -> tuple[nn.Module, History | None]:
    """Train the smaller network on: "none", "bayes" (gates pinned) or "deterministic".

    "deterministic" trains the posterior means as a plain torch network by maximum
    likelihood (no KL: nothing is left to select). Returns the model and its history.
    """
    if how not in REFITS:
        raise ValueError(f"unknown refit {how!r}; valid: {REFITS}")
    if how == "none":
        return pruned, None
    model = to_deterministic(pruned) if how == "deterministic" else copy.deepcopy(pruned)
    history = fit(model, train, likelihood=likelihood, **fit_kwargs)
    return model, history


def heldout_scores(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    likelihood: Likelihood | str,
    *,
    samples: int = 30,
    seed: int = 0,
) -> dict[str, float]:
    """Error % and NLL (classification) or RMSE and NLL (regression) of the predictive.

    Monte-Carlo over `samples` draws for a Bayesian network, one pass for a plain one.
    Regression scores are in the units of `y`.
    """
    likelihood = make_likelihood(likelihood)
    bayesian = any(True for _ in variational_layers(model))
    names = ("error_pct", "nll") if likelihood.task == "classification" else ("rmse", "nll")
    mode = "mc" if bayesian else "mean"
    return evaluate(model, (x, y), likelihood, mode=mode, samples=samples, seed=seed, metrics=names)


def select_model(
    model: nn.Module,
    train: DataLike,
    test: DataLike | None = None,
    *,
    likelihood: Likelihood | str = "categorical",
    fit_kwargs: Mapping[str, Any] | None = None,
    rule: str = "median",
    threshold: float = 0.5,
    k: int | Mapping[str, int] | None = None,
    alpha: float = 0.05,
    edge_pip: str = "any",
    refit_how: str = "none",
    refit_kwargs: Mapping[str, Any] | None = None,
    input_shape: Sequence[int] | None = None,
    samples: int = 30,
    seed: int = 0,
) -> SelectionReport:
    """Train `model` (in place), select by PIPs, prune, optionally refit, and compare.

    `fit_kwargs` go to `fit` over `SPIKE_SLAB_FIT` (pass {"epochs": 0} for a model that
    is already trained, with its trained likelihood as `likelihood`); `refit_kwargs` go
    to the refit's `fit` (epochs, lr, ...; the trained likelihood is reused). With
    `test`, `scores` compares the full and the pruned network on it (`heldout_scores`).
    """
    for name, value, valid in (("edge_pip", edge_pip, EDGE_PIPS), ("refit_how", refit_how, REFITS)):
        if value not in valid:
            raise ValueError(f"unknown {name} {value!r}; valid: {valid}")
    if rule not in PIP_RULES:
        raise ValueError(f"unknown PIP rule {rule!r}; valid: {PIP_RULES}")
    settings = {**_defaults_for(model), "seed": seed, "progress": False, **(fit_kwargs or {})}
    history = fit(model, train, likelihood=likelihood, **settings)
    trained = history.likelihood or make_likelihood(likelihood)
    selection = decide(
        inclusion_probabilities(model, edge_pip), rule, threshold=threshold, k=k, alpha=alpha
    )
    result = prune(model, selection, input_shape)
    refit_settings = {"seed": seed, "progress": False, **(refit_kwargs or {})}
    pruned, refit_history = result.model, None
    if refit_how != "none":
        pruned, refit_history = refit(
            result.model, train, refit_how, likelihood=copy.deepcopy(trained), **refit_settings
        )
    scores: dict[str, dict[str, float]] = {}
    if test is not None:
        x, y = as_xy(test, "test")
        for key, net in (("full", model), ("pruned", pruned)):
            scores[key] = heldout_scores(net, x, y, trained, samples=samples, seed=seed)
    record = {
        "rule": rule,
        "threshold": threshold,
        "k": dict(k) if isinstance(k, Mapping) else k,
        "alpha": alpha,
        "edge_pip": edge_pip,
        "refit": refit_how,
        "fit": {key: v for key, v in settings.items() if _jsonable(v)},
        "refit_fit": {key: v for key, v in refit_settings.items() if _jsonable(v)},
        "samples": samples,
    }
    return SelectionReport(
        model,
        pruned,
        trained,
        selection,
        result,
        scores,
        history,
        refit_history,
        record,
    )


def _defaults_for(model: nn.Module) -> dict[str, Any]:
    """`SPIKE_SLAB_FIT` without learning-rate multipliers that match none of `model`'s names."""
    names = [name for name, _ in model.named_parameters()]
    defaults = dict(SPIKE_SLAB_FIT)
    if "lr_multipliers" in defaults:
        defaults["lr_multipliers"] = {
            key: factor
            for key, factor in defaults["lr_multipliers"].items()
            if any(name.endswith(key) for name in names)
        }
    return defaults


def _jsonable(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int | str | bool | dict | list | tuple) or value is None
