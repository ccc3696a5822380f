"""Importance scores read from a layer's posterior; higher always means "keep".

Scores see layers only through `VariationalLayer.posterior()` (plain Linear / Conv2d
through the `PlainLayer` adapter), never through their type, so a new variational
family needs no change here. Three granularities, each a dict of named scorers:

- per weight (`WEIGHT_SCORES`): "snr" |μ|/σ; "abs_mean" |μ|; "log_alpha" −log α with
  Sparse VD's α = σ²/μ² (negated: a large α means "prune", and −log α = 2 log SNR,
  so it ranks weights as SNR does); "magnitude" |w| (the deterministic baseline).
- per output unit / kernel (`UNIT_SCORES`): "norm" ‖μ‖_F over the unit's incoming
  weights; "mean_snr"; "variance" = −(mean posterior variance), so a confident unit
  scores high; "pip" the posterior inclusion probability of gated layers;
  "unit_log_alpha" −log α of the unit's own scale in group-prior layers
  (`Posterior.unit_log_alpha`, family "sparse_vd_group": a unit above log α 3 is noise).
- per input feature of the first layer (`INPUT_SCORES`): "norm" over its outgoing
  weights; "pip" (`Posterior.input_inclusion`); "log_alpha", −log α of the feature's
  own scale (`Posterior.input_log_alpha`: group Sparse VD with `scale_on="in"`).

A plain layer has no posterior: every weight score falls back to "magnitude" and
every unit score but "pip" and "unit_log_alpha" to "norm" there; those two exist only
for the layers that have gates / unit scales, and the others are left out. Masked
weights have mean (and spread) 0, so they score lowest. NaNs (e.g. 0/0) become 0.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from ..nn.base import Posterior, VariationalLayer
from .adapters import as_prunable, prunable_layers

_TINY = 1e-12
Scorer = Callable[[Posterior], Tensor | None]


def _snr(post: Posterior) -> Tensor:
    return post.weight_mean.abs() / post.weight_std.clamp_min(_TINY)


def _abs_mean(post: Posterior) -> Tensor:
    return post.weight_mean.abs()


def _neg_log_alpha(post: Posterior) -> Tensor:
    log_var = post.weight_std.square().clamp_min(_TINY).log()
    return -(log_var - post.weight_mean.square().clamp_min(_TINY).log())


WEIGHT_SCORES: dict[str, Scorer] = {
    "snr": _snr,
    "abs_mean": _abs_mean,
    "log_alpha": _neg_log_alpha,
    "magnitude": _abs_mean,
}


def _per_unit(t: Tensor) -> Tensor:
    return t.flatten(1)


def _unit_norm(post: Posterior) -> Tensor:
    return _per_unit(post.weight_mean).norm(dim=1)


def _unit_mean_snr(post: Posterior) -> Tensor:
    return _per_unit(_snr(post)).mean(1)


def _unit_variance(post: Posterior) -> Tensor:
    return -_per_unit(post.weight_std.square()).mean(1)


def _unit_pip(post: Posterior) -> Tensor | None:
    return post.unit_inclusion


def _unit_neg_log_alpha(post: Posterior) -> Tensor | None:
    return None if post.unit_log_alpha is None else -post.unit_log_alpha


UNIT_SCORES: dict[str, Scorer] = {
    "norm": _unit_norm,
    "mean_snr": _unit_mean_snr,
    "variance": _unit_variance,
    "pip": _unit_pip,
    "unit_log_alpha": _unit_neg_log_alpha,
}
# unit scores only some layers have: (what has them, what to use instead)
PARTIAL_UNIT_SCORES = {
    "pip": ("unit inclusion probabilities (gated layers such as spike-and-slab)", "'norm'"),
    "unit_log_alpha": ("unit scales (family 'sparse_vd_group')", "'norm' or 'mean_snr'"),
}


def _input_norm(post: Posterior) -> Tensor:
    return post.weight_mean.transpose(0, 1).flatten(1).norm(dim=1)


def _input_pip(post: Posterior) -> Tensor | None:
    return post.input_inclusion


def _input_log_alpha(post: Posterior) -> Tensor | None:
    return None if post.input_log_alpha is None else -post.input_log_alpha


INPUT_SCORES: dict[str, Scorer] = {
    "norm": _input_norm,
    "pip": _input_pip,
    "log_alpha": _input_log_alpha,
}


def _check(score: str, table: dict[str, Scorer], kind: str) -> Scorer:
    if score not in table:
        raise ValueError(f"unknown {kind} score {score!r}; valid: {sorted(table)}")
    return table[score]


def _clean(t: Tensor) -> Tensor:
    return t.detach().nan_to_num(nan=0.0)


def weight_scores(model: nn.Module, score: str = "snr") -> dict[str, Tensor]:
    """Per-weight importance of every prunable layer (weight-shaped), keyed by module name."""
    scorer = _check(score, WEIGHT_SCORES, "weight")
    out: dict[str, Tensor] = {}
    for name, layer in prunable_layers(model):
        post = as_prunable(layer).posterior()
        use = scorer if isinstance(layer, VariationalLayer) else _abs_mean
        out[name] = _clean(use(post))  # type: ignore[arg-type]
    return out


def unit_scores(
    model: nn.Module, score: str = "norm", *, include_output: bool = False
) -> dict[str, Tensor]:
    """Per-output-unit (kernel) importance, shape (out,), keyed by module name.

    The last layer's units are the model's outputs and are left out unless
    `include_output`. For "pip" and "unit_log_alpha", layers without inclusion
    probabilities / unit scales are left out (a ValueError if no layer has them).
    """
    scorer = _check(score, UNIT_SCORES, "unit")
    layers = prunable_layers(model)
    if not include_output:
        layers = layers[:-1]
    partial = score in PARTIAL_UNIT_SCORES
    out: dict[str, Tensor] = {}
    for name, layer in layers:
        post = as_prunable(layer).posterior()
        use = scorer if isinstance(layer, VariationalLayer) or partial else _unit_norm
        value = use(post)
        if value is not None:
            out[name] = _clean(value)
    if partial and layers and not out:
        what, instead = PARTIAL_UNIT_SCORES[score]
        raise ValueError(
            f"no layer has {what}, which unit score {score!r} reads; use {instead} instead"
        )
    return out


def input_scores(model: nn.Module, score: str = "norm") -> dict[str, Tensor]:
    """Importance of each input feature (input channel for a conv) of the first layer.

    Returns {name of the first prunable layer: scores of shape (in,)}.
    """
    scorer = _check(score, INPUT_SCORES, "input")
    layers = prunable_layers(model)
    if not layers:
        raise ValueError("the model has no prunable layer (Linear, Conv2d or variational)")
    name, layer = layers[0]
    value = scorer(as_prunable(layer).posterior())
    if value is None and score == "log_alpha":
        raise ValueError(
            f"layer {name!r} has no input scales (score 'log_alpha' needs family "
            "'sparse_vd_group' with scale_on='in' on the first layer); use 'norm' instead"
        )
    if value is None:
        raise ValueError(
            f"layer {name!r} has no input inclusion probabilities (score 'pip' needs input "
            "gates, e.g. mlp(..., family='spike_slab', input_gates=True)); use 'norm' instead"
        )
    return {name: _clean(value)}
