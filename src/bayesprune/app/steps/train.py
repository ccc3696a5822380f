"""Step `train`: fit the run's model (resuming from its newest checkpoint); metrics.json."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from torch import nn

from ... import __version__, metrics
from ...compress import GradualPruning
from ...evaluation import VALIDATION_METRICS, evaluate
from ...predict import describe_prediction
from ...train import fit
from ...validation import model_device
from ..config import RunConfig, config_to_dict, prune_epochs
from ..factory import run_likelihood
from ..folder import Run, lock_folder
from ..policy import fit_kwargs, prune_score
from ..summaries import posterior_summary


def train_run(
    config: RunConfig,
    folder: str | Path,
    *,
    progress: bool = False,
    echo: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train, save model and likelihood, and write metrics.json (history, test metrics,
    size and the posterior summary the report plots)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    with lock_folder(folder):
        return _train(Run.create(folder, config), progress, echo)


def _pruning(config: RunConfig, model: nn.Module) -> GradualPruning | None:
    """`train.prune_sparsity` as a fit callback (pruning inside training), or None."""
    t = config.train
    if t.prune_sparsity is None:
        return None
    start, end = prune_epochs(t)
    score = prune_score(config)
    return GradualPruning(model, t.prune_sparsity, start_epoch=start, end_epoch=end, score=score)


def _pruning_record(pruning: GradualPruning) -> dict[str, Any]:
    return {
        "sparsity": pruning.sparsity,
        "score": pruning.score,
        "start_epoch": pruning.start_epoch,
        "end_epoch": pruning.end_epoch,
        "pruned": pruning.pruned_share(),
        "schedule": [{"epoch": e, "target": t, "pruned": p} for e, t, p in pruning.history],
    }


def _train(run: Run, progress: bool, echo: Callable[[str], None] | None) -> dict[str, Any]:
    config = run.config
    data = run.data()
    model = run.build_model()
    likelihood = run_likelihood(config, data.task)  # a resumed fit restores its state
    say = echo or (lambda _msg: None)
    run.log(f"train: start ({config.train.epochs} epochs, {run.describe()})")
    val_label = (
        None if data.val is None else describe_prediction("mean", 1, "val", len(data.val[0]))
    )

    def on_epoch(record: dict[str, Any]) -> None:
        shown = [(k, v) for k, v in record.items() if isinstance(v, float) and k != "lr"]
        parts = [f"{k}={v:.4g}" for k, v in shown if not k.startswith("val_")]
        if val_label is not None:  # fit validates with the posterior-mean network
            parts.append(f"| {val_label}:")
            parts += [f"{k[4:]}={v:.4g}" for k, v in shown if k.startswith("val_")]
        line = f"epoch {record['epoch']}/{config.train.epochs} " + " ".join(parts)
        run.log("train: " + line)
        say(line)

    pruning = _pruning(config, model)
    history = fit(
        model,
        data.train,
        data.val,
        likelihood=likelihood,
        checkpoint_dir=run.checkpoints,
        resume=True,
        keep_checkpoints=config.train.keep_checkpoints,
        progress=progress,
        callbacks=(on_epoch,) if pruning is None else (pruning, on_epoch),
        **fit_kwargs(config),
    )
    # the posterior-mean network (one pass), as fit's validation; `evaluate` adds MC
    test = evaluate(
        model, data.test, likelihood, mode="mean", metrics=VALIDATION_METRICS[likelihood.task]
    )
    if data.task == "regression":
        test["rmse_original_units"] = test["rmse"] * data.y_std
    result = {
        "run": run.describe(),
        "history": history.epochs,
        "test": test,
        "test_prediction": {"mode": "mean", "split": "test", "rows": len(data.test[0])},
        "size": metrics.model_size(model, data.input_shape).as_dict(),
        "posterior": posterior_summary(model),
        "pruned_in_training": None if pruning is None else _pruning_record(pruning),
        "provenance": {  # shown in the report's header
            "bayesprune": __version__,
            "seed": config.train.seed,
            "device": str(model_device(model)),  # where it trained ("auto" resolved)
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "training_seconds": sum(float(e.get("seconds", 0.0)) for e in history.epochs),
        },
    }
    with run.publish("train") as tx:
        run.save_model(model, "trained", {"config": config_to_dict(config)}, tx=tx)
        run.save_likelihood(likelihood, tx)
        tx.write_json("metrics.json", result)
    run.log(f"train: done; test {test}")
    return result
