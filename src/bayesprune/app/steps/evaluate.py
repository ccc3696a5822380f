"""Step `evaluate`: metrics of the trained / compressed model in every useful mode.

Writes evaluation.json, one entry per model: its size, the metrics per prediction
mode on the test set, the reliability bins of the primary mode (classification)
and, for the trained model, the error against the fraction of weights pruned. An
entry is keyed by the model file's SHA-256 and the evaluation settings, so a later
step (compress, report) reuses it instead of predicting again.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import Tensor, nn
from tqdm.auto import tqdm

from ... import metrics
from ...compress import apply_masks, global_sparsity_masks, weight_scores
from ...evaluation import OOD_METRICS, ood_metric_names, score_prediction, scorer
from ...nn import variational_layers
from ...predict import predict
from ..folder import Run
from ..policy import modes_for

PRUNE_GRID = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
# the pruning curve's 16 passes read about this many test rows, every k-th (a test set
# may be ordered: MNIST's second half is the harder writers): a diagnostic curve at
# 0.05 % per row for the cost of three of its passes over MNIST's 10,000 rows
CURVE_ROWS = 2000
# Monte-Carlo test predictions draw one weight sample per batch and pass: each row's
# predictive is the same as with per-output sampling, at half the linear maps
MC_SAMPLING = "shared"
EVALUATION = "evaluation.json"


def _settings(run: Run) -> dict[str, Any]:
    cfg = run.config.evaluate
    seed = run.config.train.seed
    return {"samples": cfg.samples, "bins": cfg.bins, "seed": seed, "sampling": MC_SAMPLING,
            "draws": "per pass"}  # fmt: skip


def _predict(
    model: nn.Module, run: Run, mode: str, progress: bool = False, x: Tensor | None = None
) -> Any:
    """The test predictive (`x`: other inputs, predicted the same way)."""
    cfg = run.config.evaluate
    return predict(
        model,
        run.data().test[0] if x is None else x,
        samples=cfg.samples,
        mode=mode,
        likelihood=run.likelihood(),
        seed=run.config.train.seed,
        progress=progress,
        sampling=MC_SAMPLING,
        channels_last=True,  # the builders flatten with nn.Flatten, never .view
    )


def _metrics(run: Run, pred: Any) -> dict[str, float]:
    data = run.data()
    scores = score_prediction(pred, data.test[1], data.task, bins=run.config.evaluate.bins)
    if data.task == "regression":  # the standardised RMSE, and in the units of y
        rmse = scores.pop("rmse")
        scores = {"rmse": rmse, "rmse_original_units": rmse * data.y_std, **scores}
    return scores


def ood_scores(
    model: nn.Module, run: Run, mode: str, ood: Tensor, pred: Any = None
) -> dict[str, float]:
    """OOD AUROC (entropy; MI in mode "mc") of telling `ood` from the test inputs, both
    predicted as the test metrics are (`pred`: the test predictive, if already made)."""
    pred = _predict(model, run, mode) if pred is None else pred
    pred_ood = _predict(model, run, mode, x=ood)
    return {name: float(OOD_METRICS[name](pred, pred_ood)) for name in ood_metric_names(mode)}


def evaluate_model(model: nn.Module, run: Run, mode: str) -> dict[str, float]:
    """Accuracy / NLL / ECE / Brier … (classification) or RMSE / NLL … (regression), test set."""
    return _metrics(run, _predict(model, run, mode))


def _reliability(run: Run, pred: Any) -> dict[str, Any]:
    bins = run.config.evaluate.bins
    y = run.data().test[1]
    cal = metrics.calibration_bins(pred.probs, y, bins)
    # what a perfectly calibrated model with these confidences measures on as many rows:
    # an ECE within it is sampling noise, not miscalibration
    floor = metrics.ece_floor(pred.probs, bins, seed=run.config.train.seed)
    return {
        "confidence": list(cal.confidence),
        "accuracy": list(cal.accuracy),
        "count": list(cal.count),
        "ece": metrics.ece(pred.probs, y, bins),
        "ece_floor": {"mean": floor.mean, "upper_95": floor.upper},
    }


def pruning_curve(model: nn.Module, run: Run, progress: bool = False) -> dict[str, Any]:
    """Test error (or RMSE) of the posterior-mean network pruned globally by each score,
    on every k-th test row, about `CURVE_ROWS` of them (the count is recorded)."""
    data = run.data()
    bayesian = any(True for _ in variational_layers(model))
    key = "accuracy" if data.task == "classification" else "rmse"
    x, y = data.test
    stride = -(-len(x) // CURVE_ROWS)
    rows = (x[::stride], y[::stride])
    score = scorer(rows, run.likelihood(), metrics=(key,))
    curves: dict[str, list[list[float]]] = {}
    names = ("snr", "abs_mean") if bayesian else ("magnitude",)
    grid = [(name, level) for name in names for level in PRUNE_GRID]
    ranked = {name: weight_scores(model, name) for name in names}
    for name, level in tqdm(grid, desc="pruning curve", disable=not progress, leave=False):
        pruned = apply_masks(copy.deepcopy(model), global_sparsity_masks(ranked[name], level))
        value = score(pruned)[key]
        curves.setdefault(name, []).append([level, 1 - value if key == "accuracy" else value])
    metric = "test error" if key == "accuracy" else "test RMSE (standardised)"
    return {"metric": metric, "rows": len(rows[0]), "of_rows": len(x), "curves": curves}


def cached_entry(run: Run, which: str) -> dict[str, Any] | None:
    """The evaluation.json entry of model `which` if it belongs to the saved file and settings."""
    entry = (run.read_json(EVALUATION) or {}).get(which)
    if not entry or entry.get("model_sha256") != run.model_digest(which):
        return None
    return entry if entry.get("settings") == _settings(run) else None


def model_entry(
    model: nn.Module,
    run: Run,
    digest: str | None,
    progress: bool = False,
    ood: Tensor | None = None,
) -> dict[str, Any]:
    """A fresh evaluation.json entry of `model` (every mode, reliability), keyed by `digest`;
    with `ood` (out-of-distribution test inputs) the primary mode also has its OOD AUROC."""
    entry: dict[str, Any] = {
        "model_sha256": digest,
        "settings": _settings(run),
        "size": metrics.model_size(model, run.data().input_shape).as_dict(),
        "split": {"name": "test", "rows": len(run.data().test[0])},
        "modes": {},
    }
    for k, mode in enumerate(modes_for(run.config, model)):
        pred = _predict(model, run, mode, progress)
        entry["modes"][mode] = _metrics(run, pred)
        if k == 0 and ood is not None:  # the primary mode's, from the same test predictive
            entry["modes"][mode] |= ood_scores(model, run, mode, ood, pred)
        if k == 0 and run.data().task == "classification":
            entry["reliability"] = {"mode": mode, **_reliability(run, pred)}
    return entry


def record_entry(run: Run, which: str, entry: dict[str, Any]) -> None:
    """Store `entry` as model `which`'s evaluation (the caller holds the run's lock)."""
    results = run.read_json(EVALUATION) or {}
    results[which] = entry
    run.write_json(EVALUATION, results)


def evaluate_run(
    run: Run, which: str = "auto", *, progress: bool = False, curve: bool = True
) -> dict[str, Any]:
    """Evaluate the trained and/or compressed model (see the module docstring)."""
    with run.locked():
        return evaluate_models(run, which, progress, curve)


def evaluate_models(run: Run, which: str, progress: bool, curve: bool) -> dict[str, Any]:
    """`evaluate_run` for a caller that already holds the run's lock (e.g. `compress`)."""
    names = ["trained", "compressed"] if which == "auto" else [which]
    names = [n for n in names if which != "auto" or run.has_model(n)]
    if not names:  # a folder whose training never finished
        run.load_model("trained")  # raises: the model file is missing, and how to make it
    results = run.read_json(EVALUATION) or {}
    for name in tqdm(names, desc="evaluate", disable=not progress, leave=False):
        entry = cached_entry(run, name)
        needs_curve = curve and name == "trained" and "pruning_curve" not in (entry or {})
        if entry is not None and not needs_curve:
            continue  # current: nothing is predicted again
        model = run.load_model(name, on_device=True)
        if entry is None:
            entry = model_entry(model, run, run.model_digest(name), progress)
            run.log(f"evaluate: {name} {entry['modes']}")
        if needs_curve:
            entry["pruning_curve"] = pruning_curve(model, run, progress)
        results[name] = entry
        run.write_json(EVALUATION, results)
    return results
