"""The steps a run goes through: train, evaluate, compress, select features, export.

Each step reads the run folder (`runs.Run`), calls the library (`fit`, `predict`,
`metrics`, `compress`) and writes its results back; the CLI commands and the demo
are thin wrappers around these functions. "auto" options are resolved here, by
the model family:

- compression score: "pip" for spike-and-slab (unit PIPs), "magnitude" for a
  deterministic net, "norm" (kernel / unit norm) for eVI, "snr" otherwise;
- compression rule: "median" (keep PIP > 0.5) for PIPs; otherwise "search", the
  largest global sparsity whose validation accuracy stays within `delta` of the
  unpruned model (classification), or "global" at `sparsity` (regression);
- feature score: input PIPs when the first layer has input gates, else the norm of
  each input's outgoing posterior-mean weights; feature rule: "median" for PIPs,
  "relative" (norm ≥ `threshold` × the largest, 0.1 by default) for norms.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import metrics
from .compress import (
    apply_masks,
    compression_report,
    export_onnx,
    global_sparsity_masks,
    input_scores,
    layer_sparsity_masks,
    save_model,
    save_report,
    search_sparsity,
    shrink,
    threshold_masks,
    unit_scores,
    weight_masks_for,
    weight_scores,
)
from .compress.pip_rules import select_by_pip
from .config import (
    PIP_RULE_NAMES,
    REGRESSION_SETS,
    UNIT_SCORE_NAMES,
    ConfigError,
    RunConfig,
    config_to_dict,
    parse_config,
)
from .evaluation import VALIDATION_METRICS, evaluate, scorer
from .finetuning import finetune
from .nn import get_family, to_deterministic, variational_layers
from .runs import Run, RunData
from .screen import ScreenResult, screen_features
from .train import fit

RELATIVE_THRESHOLD = 0.1
SEARCH_ROWS = 2000  # validation rows the sparsity search evaluates (it runs many passes)


@contextlib.contextmanager
def limited_threads(n: int | None) -> Iterator[None]:
    """Run the block with `n` intra-op CPU threads (None: leave torch's setting), then restore.

    Small networks train many times faster on one thread when other processes share
    the cores: torch's thread pool then spends its time waiting for busy cores.
    """
    if n is None:
        yield
        return
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit_kwargs(config: RunConfig) -> dict[str, Any]:
    t = dataclasses.asdict(config.train)
    t.pop("likelihood")
    t.pop("keep_checkpoints")
    return t


# ---------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------
def train_run(
    config: RunConfig,
    folder: str | Path,
    *,
    progress: bool = False,
    echo: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train the run's model (resuming from its newest checkpoint); write model + metrics."""
    run = Run.create(folder, config)
    data = run.data()
    model = run.build_model()
    likelihood = run.likelihood()
    say = echo or (lambda _msg: None)
    run.log(f"train: start ({config.train.epochs} epochs, {run.describe()})")

    def on_epoch(record: dict[str, Any]) -> None:
        parts = [f"{k}={v:.4g}" for k, v in record.items() if isinstance(v, float) and k != "lr"]
        line = f"epoch {record['epoch']}/{config.train.epochs} " + " ".join(parts)
        run.log("train: " + line)
        say(line)

    history = fit(
        model,
        data.train,
        data.val,
        likelihood=likelihood,
        checkpoint_dir=run.checkpoints,
        resume=True,
        keep_checkpoints=config.train.keep_checkpoints,
        progress=progress,
        callbacks=(on_epoch,),
        **_fit_kwargs(config),
    )
    run.save_model(model, "trained", {"config": config_to_dict(config)})
    run.save_likelihood(likelihood)
    test = evaluate(model, data.test, likelihood, metrics=VALIDATION_METRICS[likelihood.task])
    if data.task == "regression":
        test["rmse_original_units"] = test["rmse"] * data.y_std
    result = {
        "run": run.describe(),
        "history": history.epochs,
        "test": test,
        "size": metrics.model_size(model).as_dict(),
    }
    run.write_json("metrics.json", result)
    run.log(f"train: done; test {test}")
    return result


# ---------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------
def modes_for(config: RunConfig, model: nn.Module) -> tuple[str, ...]:
    """Prediction modes worth reporting: MC needs sampling layers (not eVI, not plain)."""
    deterministic = get_family(config.model.family).deterministic_predictive
    if deterministic or not any(True for _ in variational_layers(model)):
        return ("mean",)
    return ("mc", "mean")


def evaluate_model(
    model: nn.Module, run: Run, mode: str, *, split: str = "test"
) -> dict[str, float]:
    """Accuracy / NLL / ECE / Brier (classification) or RMSE / NLL (regression)."""
    data = run.data()
    cfg = run.config.evaluate
    score = scorer(
        data.test if split == "test" else data.train,
        run.likelihood(),
        mode=mode,
        samples=cfg.samples,
        seed=run.config.train.seed,
        bins=cfg.bins,
    )
    scores = score(model)
    if data.task == "regression":  # the standardised RMSE, and in the units of y
        rmse = scores.pop("rmse")
        scores = {"rmse": rmse, "rmse_original_units": rmse * data.y_std, **scores}
    return scores


def evaluate_run(run: Run, which: str = "auto", *, progress: bool = False) -> dict[str, Any]:
    """Metrics of the trained and/or compressed model in every useful mode; evaluation.json."""
    names = ["trained", "compressed"] if which == "auto" else [which]
    names = [n for n in names if which != "auto" or run.has_model(n)]
    models = {name: run.load_model(name) for name in names}
    jobs = [(name, mode) for name, m in models.items() for mode in modes_for(run.config, m)]
    results = run.read_json("evaluation.json") or {}
    for name in names:
        results[name] = {"size": metrics.model_size(models[name]).as_dict(), "modes": {}}
    for name, mode in tqdm(jobs, desc="evaluate", disable=not progress, leave=False):
        results[name]["modes"][mode] = evaluate_model(models[name], run, mode)
    for name in names:
        run.log(f"evaluate: {name} {results[name]['modes']}")
    run.write_json("evaluation.json", results)
    return results


# ---------------------------------------------------------------------------------------
# compress
# ---------------------------------------------------------------------------------------
def resolve_compress(config: RunConfig) -> tuple[str, str]:
    """(score, rule) with "auto" resolved by the model family (see the module doc)."""
    c = config.compress
    score = c.score
    if score == "auto":
        score = "pip" if c.rule in PIP_RULE_NAMES else get_family(config.model.family).default_score
    rule = c.rule
    if rule == "auto":
        if score == "pip":
            rule = "median"
        else:
            rule = "global" if config.data.name in REGRESSION_SETS else "search"
    if rule in PIP_RULE_NAMES and score != "pip":
        raise ConfigError(f"compress.rule {rule!r} needs compress.score 'pip', got {score!r}")
    return score, rule


def _search_data(data: RunData) -> tuple[Tensor, Tensor]:
    x, y = data.val if data.val is not None else data.train
    return x[:SEARCH_ROWS], y[:SEARCH_ROWS]


def compression_masks(
    model: nn.Module, run: Run, score: str, rule: str
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Weight masks for `model` by `score` and `rule`, and a JSON-able record of the choice."""
    c = run.config.compress
    level = "unit" if score in UNIT_SCORE_NAMES else "weight"
    scores = unit_scores(model, score) if level == "unit" else weight_scores(model, score)
    info: dict[str, Any] = {"score": score, "rule": rule, "level": level}
    if rule in PIP_RULE_NAMES:
        keep = {
            name: select_by_pip(s, rule, k=c.k, alpha=c.alpha).float() for name, s in scores.items()
        }
        return weight_masks_for(model, keep, "unit"), info
    if rule == "search":
        if run.data().task != "classification":
            raise ConfigError("compress.rule 'search' needs classification data; use 'global'")
        accuracy = scorer(_search_data(run.data()), run.likelihood(), metrics=("accuracy",))
        found = search_sparsity(model, scores, accuracy, delta=c.delta, level=level)
        info["search"] = found.as_dict()
        return found.masks, info
    if rule == "global":
        masks = global_sparsity_masks(scores, c.sparsity)
    elif rule == "layer":
        masks = layer_sparsity_masks(scores, c.sparsity)
    else:
        masks = threshold_masks(scores, float(c.threshold))  # type: ignore[arg-type]
    return weight_masks_for(model, masks, level), info


def with_overrides(config: RunConfig, section: str, overrides: dict[str, Any]) -> RunConfig:
    """`config` with some keys of one section replaced (validated like a config file)."""
    raw = config_to_dict(config)
    raw[section].update({k: v for k, v in overrides.items() if v is not None})
    return parse_config(raw)


def _metrics_pair(run: Run, model: nn.Module) -> dict[str, float]:
    mode = "mean" if get_family(run.config.model.family).deterministic_predictive else "mc"
    if not any(True for _ in variational_layers(model)):
        mode = "mean"
    return evaluate_model(model, run, mode)


def compress_run(
    run: Run, overrides: dict[str, Any] | None = None, *, progress: bool = False
) -> dict[str, Any]:
    """Score, mask, optionally fine-tune and shrink the trained model; write compressed/."""
    if overrides:
        run = Run.create(run.folder, with_overrides(run.config, "compress", overrides))
    c = run.config.compress
    score, rule = resolve_compress(run.config)
    model = run.load_model("trained")
    data = run.data()
    masks, info = compression_masks(model, run, score, rule)
    pruned = apply_masks(copy.deepcopy(model), masks)
    if c.finetune_epochs:
        kwargs = _fit_kwargs(run.config)
        for key in ("epochs", "lr", "lr_schedule"):
            kwargs.pop(key)
        finetune(
            pruned,
            data.train,
            epochs=c.finetune_epochs,
            lr=c.finetune_lr,
            likelihood=run.likelihood(),
            progress=progress,
            **kwargs,
        )
    final, shrink_info = pruned, None
    if c.shrink:
        try:
            result = shrink(pruned, data.input_shape)
            final, shrink_info = result.model, result.as_dict()
            shrink_info["architecture"] = result.architecture
        except (TypeError, ValueError) as err:
            shrink_info = {"skipped": str(err)}
            run.log(f"compress: shrink skipped ({err})")
    info["shrink"] = shrink_info
    info["weights_removed"] = 1.0 - sum(float(m.sum()) for m in masks.values()) / max(
        1, sum(m.numel() for m in masks.values())
    )
    report = compression_report(
        model,
        final,
        input_shape=data.input_shape,
        metrics_before=_metrics_pair(run, model),
        metrics_after=_metrics_pair(run, final),
        title=f"compression of {run.folder.name}: {score} + {rule}",
        extra=info,
    )
    run.save_model(final, "compressed", {"compression": info})
    save_report(report, run.path("compressed"), "compression")
    run.log(
        f"compress: {score}/{rule}; non-zero weights {report['totals']['nonzero_before']} → "
        f"{report['totals']['nonzero_after']}; metrics {report['metrics']['after']}"
    )
    return report


# ---------------------------------------------------------------------------------------
# select features
# ---------------------------------------------------------------------------------------
def feature_scores(model: nn.Module, run: Run) -> tuple[str, Tensor]:
    """("pip" | "norm", one score per input feature of the first layer)."""
    wanted = run.config.features.score
    if wanted in ("auto", "pip"):
        try:
            return "pip", next(iter(input_scores(model, "pip").values()))
        except ValueError:
            if wanted == "pip":
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


def select_features(run: Run, *, write: bool = True) -> dict[str, Any]:
    """Selected input features of the trained model (PIPs or norms); features.json."""
    f = run.config.features
    model = run.load_model("trained")
    data = run.data()
    kind, scores = feature_scores(model, run)
    rule = f.rule if f.rule != "auto" else ("median" if kind == "pip" else "relative")
    if rule in ("median", "expected_size", "fdr") and kind != "pip":
        raise ConfigError(f"features.rule {rule!r} needs input PIPs, but the model has none")
    if rule == "relative":
        top = float(scores.max()) if scores.numel() else 0.0
        cut = (f.threshold if f.threshold is not None else RELATIVE_THRESHOLD) * top
        keep = scores >= cut if top > 0 else torch.zeros_like(scores, dtype=torch.bool)
    else:
        threshold = 0.5 if f.threshold is None else f.threshold
        keep = select_by_pip(scores.double(), rule, threshold=threshold, k=f.k, alpha=f.alpha)
    if scores.numel() != data.n_features:  # a conv's input channels, not pixels
        names = [f"channel{i}" for i in range(scores.numel())]
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
    }
    if screen is not None:
        result["screen"] = screen.as_dict()
    if data.true_features is not None and scores.numel() == data.n_features:
        truth = metrics.selection_scores(selected, data.true_features, scores.numel())
        result["true_features"] = data.true_features
        result["selection"] = truth.as_dict()
    if write:
        run.write_json("features.json", result)
        run.log(f"select-features: {kind}/{rule}: {len(selected)} of {scores.numel()} kept")
    return result


# ---------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------
def _check_onnx(path: Path, model: nn.Module, x: Tensor) -> float | None:
    """Largest |ONNX − torch| on `x`, or None when onnxruntime is not installed."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    return float(abs(got - want).max())


def export_run(
    run: Run, *, onnx: bool = True, plain: bool = True, which: str = "auto"
) -> dict[str, Any]:
    """The deterministic network (posterior means) as ONNX and/or plain safetensors."""
    if which == "auto":
        which = "compressed" if run.has_model("compressed") else "trained"
    model = run.load_model(which)
    # an eVI net exports its mean network, moment ops swapped for their torch twins
    deployed = to_deterministic(model).eval()
    data = run.data()
    out: dict[str, Any] = {"model": which}
    if plain:
        path = run.path("export", "model.safetensors")
        save_model(deployed, path, {"input_shape": list(data.input_shape), "source": which})
        out["safetensors"] = str(path)
    if onnx:
        path = run.path("export", "model.onnx")
        export_onnx(deployed, path, data.input_shape)
        out["onnx"] = str(path)
        x = data.test[0][:64].to(next(deployed.parameters()).dtype)
        out["onnx_max_abs_difference"] = _check_onnx(path, deployed, x)
    run.write_json("export/export.json", out)
    run.log(f"export: {out}")
    return out
