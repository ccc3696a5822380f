"""What "auto" means in a run config, decided by asking the model's `Family` record.

- compression score: "pip" when the rule reads PIPs, else the family's
  `default_score` ("pip" for spike-and-slab, "magnitude" for a deterministic net,
  "norm" for eVI, "snr" otherwise);
- compression score of rule "flops": "activation" (`compress.activation_scores`);
- compression rule: "median" (keep PIP > 0.5) for PIPs; otherwise "search", the
  largest global sparsity whose validation accuracy stays within `delta` of the
  unpruned model (classification), or "global" at `sparsity` (regression);
- prediction modes: the posterior-mean pass only where one pass is the predictive
  (eVI) or nothing samples (a plain net), else Monte Carlo and the mean pass;
- feature rule: "median" for PIPs, "log_alpha" (keep log α ≤ `threshold`,
  `LOG_ALPHA_THRESHOLD` = Sparse VD's 3 by default) for input scales, "relative"
  (norm ≥ `threshold` × the largest, `RELATIVE_THRESHOLD` by default) for norms.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from ..nn import get_family, variational_layers
from .config import (
    AUTO,
    FLOPS_RULE,
    LOG_ALPHA_RULE,
    PIP_RULE_NAMES,
    REGRESSION_SETS,
    RELATIVE,
    UNIT_SCORE_NAMES,
    ConfigError,
    RunConfig,
)

RELATIVE_THRESHOLD = 0.1
LOG_ALPHA_THRESHOLD = 3.0  # Sparse VD's: an input scale noisier than this is dropped


def modes_for(config: RunConfig, model: nn.Module) -> tuple[str, ...]:
    """Prediction modes worth reporting, the primary one first."""
    deterministic = get_family(config.model.family).deterministic_predictive
    if deterministic or not any(True for _ in variational_layers(model)):
        return ("mean",)
    return ("mc", "mean")


def primary_mode(config: RunConfig, model: nn.Module) -> str:
    """The mode a single figure of a model is quoted in (Monte Carlo where it samples)."""
    return modes_for(config, model)[0]


def resolve_compress(config: RunConfig) -> tuple[str, str]:
    """(score, rule) with "auto" resolved (see the module docstring)."""
    c = config.compress
    score = c.score
    if c.rule == FLOPS_RULE:
        return ACTIVATION_SCORE, FLOPS_RULE
    if score == AUTO:
        pip_rule = c.rule in PIP_RULE_NAMES
        score = "pip" if pip_rule else get_family(config.model.family).default_score
    rule = c.rule
    if rule == AUTO:
        if score == "pip":
            rule = "median"
        else:
            rule = "global" if config.data.name in REGRESSION_SETS else "search"
    if rule in PIP_RULE_NAMES and score != "pip":
        raise ConfigError(f"compress.rule {rule!r} needs compress.score 'pip', got {score!r}")
    return score, rule


ACTIVATION_SCORE = "activation"
"""Rule "flops"'s score: `compress.activation_scores` (spread of a unit's output ×
its outgoing weights' norm), per unit of any graph."""


def score_level(score: str) -> str:
    """ "unit" for a per-unit score, else "weight"."""
    return "unit" if score in (*UNIT_SCORE_NAMES, ACTIVATION_SCORE) else "weight"


def feature_rule(config: RunConfig, score_kind: str) -> str:
    """The feature rule, "auto" resolved by the kind of score the model offers."""
    rule = config.features.rule
    if rule == AUTO:
        rule = {"pip": "median", "log_alpha": LOG_ALPHA_RULE}.get(score_kind, RELATIVE)
    if rule in ("median", "expected_size", "fdr") and score_kind != "pip":
        raise ConfigError(f"features.rule {rule!r} needs input PIPs, but the model has none")
    if (rule == LOG_ALPHA_RULE) != (score_kind == "log_alpha"):
        raise ConfigError(
            f"features.rule {rule!r} does not apply to score {score_kind!r}: the input scales' "
            f"log α (score 'log_alpha') go with rule {LOG_ALPHA_RULE!r} only"
        )
    return rule


def fit_kwargs(config: RunConfig) -> dict[str, Any]:
    """The `train` section as `bayesprune.fit` arguments."""
    t = dataclasses.asdict(config.train)
    t.pop("likelihood")
    t.pop("keep_checkpoints")
    t.pop("timeout_s")  # the process group's, set where it is created (cli_run)
    for key in ("prune_sparsity", "prune_start_epoch", "prune_end_epoch", "prune_score"):
        t.pop(key)  # a callback of the train step (`prune_score`)
    return t


def prune_score(config: RunConfig) -> str:
    """The weight score pruning inside training ranks by ("auto": the family's own)."""
    score = config.train.prune_score
    if score == AUTO:
        score = get_family(config.model.family).default_score
    if score_level(score) == "unit" or score == "pip":
        raise ConfigError(
            f"train.prune_sparsity prunes single weights, and family "
            f"{config.model.family!r} ranks {score!r} (whole units); set train.prune_score to "
            "a weight score (snr, abs_mean, log_alpha, magnitude)"
        )
    return score
