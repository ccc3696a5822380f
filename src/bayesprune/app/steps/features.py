"""Step `select-features`: which input features the trained model keeps; features.json / .png.

Scores are the first layer's input PIPs where it has input gates, else the norm of
each input's outgoing posterior-mean weights; the rule is chosen by `app.policy`.
With `features.screen` the evidence screen then tests every feature left out.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from ... import metrics
from ...compress import input_scores
from ...compress.pip_rules import select_by_pip
from ...screen import ScreenResult, screen_features
from ..config import AUTO, LOG_ALPHA_RULE, RELATIVE, ConfigError, with_overrides
from ..data import RunData
from ..folder import Run
from ..policy import LOG_ALPHA_THRESHOLD, RELATIVE_THRESHOLD, feature_rule


def feature_scores(model: nn.Module, run: Run) -> tuple[str, Tensor]:
    """("pip" | "log_alpha" | "norm", one score per input feature of the first layer).

    "auto" takes the first the model offers: input PIPs, input scales, norms.
    """
    wanted = run.config.features.score
    for kind in ("pip", "log_alpha"):
        if wanted in (AUTO, kind):
            try:
                return kind, next(iter(input_scores(model, kind).values()))
            except ValueError:
                if wanted == kind:
                    raise
    return "norm", next(iter(input_scores(model, "norm").values()))


def _screen(run: Run, data: RunData, selected: list[int], n_scores: int) -> ScreenResult | None:
    """The evidence screen of the features the rule left out (tabular data only)."""
    if data.train[0].ndim != 2 or n_scores != data.n_features:
        raise ConfigError(
            "features.screen needs a model on flat features (one input per feature), not "
            "images or channels; set features.screen to false or use an MLP"
        )
    if len(selected) == n_scores:
        return None  # every feature is in: nothing to screen
    hidden = run.config.model.kwargs.get("hidden", (16,))
    return screen_features(
        data.train,
        selected,
        likelihood="categorical" if data.task == "classification" else "gaussian",
        hidden=tuple(hidden),
        epochs=run.config.features.screen_epochs,
        seed=run.config.train.seed,
    )


def select_features(
    run: Run, *, write: bool = True, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Selected input features of the trained model (PIPs or norms); with `write`,
    features.json and features.png published together. `overrides` (keys of the
    features section, e.g. from `select-features --rule`) apply to this selection only:
    recorded in features.json's "options", config.yaml untouched."""
    if overrides and any(v is not None for v in overrides.values()):
        run = run.with_config(with_overrides(run.config, "features", overrides))
    if not write:
        return _select(run, write)
    with run.locked():
        return _select(run, write)


def _select(run: Run, write: bool) -> dict[str, Any]:
    f = run.config.features
    model = run.load_model("trained")
    data = run.data()
    kind, scores = feature_scores(model, run)
    rule = feature_rule(run.config, kind)
    if rule == LOG_ALPHA_RULE:  # scores are −log α: keep log α <= threshold
        keep = scores >= -(LOG_ALPHA_THRESHOLD if f.threshold is None else f.threshold)
    elif rule == RELATIVE:
        top = float(scores.max()) if scores.numel() else 0.0
        cut = (f.threshold if f.threshold is not None else RELATIVE_THRESHOLD) * top
        keep = scores >= cut if top > 0 else torch.zeros_like(scores, dtype=torch.bool)
    else:
        threshold = 0.5 if f.threshold is None else f.threshold
        keep = select_by_pip(scores.double(), rule, threshold=threshold, k=f.k, alpha=f.alpha)
    channels = scores.numel() != data.n_features  # a conv's input channels, not pixels
    if channels:
        names = [f"channel {i}" for i in range(scores.numel())]
    else:
        names = data.feature_names or [f"x{i}" for i in range(scores.numel())]
    selected = torch.nonzero(keep).flatten().tolist()
    screen = _screen(run, data, selected, scores.numel()) if f.screen else None
    if screen is not None:
        selected = screen.features
    result: dict[str, Any] = {
        "score": kind,
        "rule": rule,
        "scores": scores.double().tolist(),
        "names": names,
        "selected": selected,
        "selected_names": [names[i] for i in selected],
        "n_features": scores.numel(),
        "inputs": "input channels" if channels else "features",
        "options": dataclasses.asdict(f),
        "image_shape": list(data.image_shape)
        if data.image_shape and scores.numel() == data.n_features
        else None,
    }
    if channels:
        result["note"] = (
            f"the first layer is a convolution: it scores its {scores.numel()} input "
            f"channel(s), not the {data.n_features} pixels; to select pixels, use an MLP"
        )
    if screen is not None:
        result["screen"] = screen.as_dict()
    if data.true_features is not None and scores.numel() == data.n_features:
        truth = metrics.selection_scores(selected, data.true_features, scores.numel())
        result["true_features"] = data.true_features
        result["selection"] = truth.as_dict()
    if write:
        with run.publish("features") as tx:
            tx.write_json("features.json", result)
            tx.write_bytes("features.png", features_png(result))
        run.log(f"select-features: {kind}/{rule}: {len(selected)} of {scores.numel()} kept")
    return result


def features_png(result: dict[str, Any]) -> bytes:
    """The figure of features.json (scores, the selected ones, the truth if known)."""
    from ... import plots

    return plots.feature_scores(
        result["scores"],
        result["selected"],
        result["names"],
        "−log α" if result["score"] == "log_alpha" else result["score"],  # what the bars are
        image_shape=result.get("image_shape"),
        true_features=result.get("true_features"),
    )
