"""Step `restore`: give the compressed model back the uncertainty its pruning cost.

Pruning by accuracy keeps the arg-max but not the predictive spread (issue 18), so
after `compress` this step tries the restoring methods of `restore.method` on the
compressed model (auto: none, temperature, variances where the model has posterior
scales, finetune, finetune+temperature) and keeps one, chosen on the validation split
alone by `bayesprune.restore_choice.choose_restoration` (its docstring gives the rule:
halves for fitting and choosing; ECE and, with `restore.ood`, OOD AUROC held; near-ties
in NLL, within `restore.tie_se` standard errors, go to the lower ECE;
`restore.ece_factor` and `restore.auroc_tolerance` are its options).

Writes restored/model.safetensors (the network; a temperature is kept beside it) and
restored/restore.json (every candidate's validation metrics, the choice and why, and
the test metrics before and after), published together. Options given on the command
line are recorded in restore.json ("options"), never written to config.yaml. The test
set is read once, for the before / after figures; nothing is chosen on it.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ...calibration import TemperatureScaled
from ...evaluation import Scorer
from ...kl_schedule import kl_stages
from ...restore_choice import NONE, choose_restoration, restore_scorer, restoring_methods
from ..config import ConfigError, config_to_dict, with_overrides
from ..factory import ood_inputs
from ..folder import Run
from ..policy import primary_mode

RESTORE_JSON = "restored/restore.json"


def restore_run(run: Run, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Choose and apply a restoring method for RUN's compressed model (module docstring);
    the few epochs of variances / finetune train without progress bars."""
    with run.locked():
        if overrides:
            run = run.with_config(with_overrides(run.config, "restore", overrides))
        return _restore(run)


def _restore(run: Run) -> dict[str, Any]:
    cfg = run.config.restore
    data = run.data()
    if data.task != "classification":
        raise ConfigError(
            "restore needs a classification run (it restores calibration and OOD detection); "
            f"this run's data {run.config.data.name!r} is a regression task"
        )
    if data.val is None or len(data.val[0]) < 2:
        raise ConfigError(
            "restore chooses its method on validation data, and this run has none: set "
            "data.val_fraction (e.g. 0.2) in the config and train a new run folder"
        )
    # one clear error when compress has not run
    compressed = run.load_model("compressed", on_device=True)
    try:
        restoring_methods(cfg.method, compressed)
    except ValueError as error:
        raise ConfigError(f"restore.method {error}") from None
    mode = primary_mode(run.config, compressed)
    choosing = len(data.val[0]) - len(data.val[0]) // 2  # the second half's rows
    ood_val = ood_inputs(run.config, cfg.ood, "train", choosing) if cfg.ood else None
    needs_trained = cfg.ood or cfg.ece_factor is not None
    t = run.config.train
    # the posterior's own β: a staged train.kl_weight ends with it
    training = {
        "batch_size": t.batch_size,
        "kl_weight": kl_stages(t.kl_weight).final,
        "device": run.device,
    }
    if t.dataset_size is not None:
        training["dataset_size"] = t.dataset_size
    choice = choose_restoration(
        compressed,
        data.val,
        train=data.train,
        likelihood=run.likelihood(),
        methods=cfg.method,
        ood=ood_val,
        trained=run.load_model("trained", on_device=True) if needs_trained else None,
        mode=mode,
        samples=run.config.evaluate.samples,
        bins=run.config.evaluate.bins,
        seed=t.seed,
        epochs=cfg.epochs,
        lr=cfg.lr,
        auroc_tolerance=cfg.auroc_tolerance,
        ece_factor=cfg.ece_factor,
        tie_se=cfg.tie_se,
        **training,
    )
    chosen, final, candidates = choice.method, choice.model, choice.candidates
    before = candidates[NONE]["validation"]
    test_ood = ood_inputs(run.config, cfg.ood, "test", len(data.test[0])) if cfg.ood else None
    test = _scorer(run, data.test, test_ood, mode)
    record = {
        "method": chosen,
        "requested": cfg.method,
        "temperature": choice.temperature,
        "mode": mode,
        "samples": run.config.evaluate.samples,
        "rule": choice.rule,
        "trained_validation": choice.trained,
        "splits": {
            "fit": {"name": "validation, first half", "rows": choice.rows["fit"]},
            "choose": {"name": "validation, second half", "rows": choice.rows["choose"]},
            "test": {"name": "test", "rows": len(data.test[0])},
        },
        "ood": cfg.ood,
        "candidates": candidates,
        "before": {"validation": before, "test": test(compressed)},
        "after": {"validation": candidates[chosen]["validation"], "test": test(final)},
        "options": config_to_dict(run.config)["restore"],
        "compressed_sha256": run.model_digest("compressed"),
    }
    inner = final.model if isinstance(final, TemperatureScaled) else final
    with run.publish("restore") as tx:
        run.save_model(inner, "restored", {"restore": {"method": chosen,
                       "temperature": record["temperature"]}}, tx=tx)  # fmt: skip
        tx.write_json(RESTORE_JSON, record)
    run.log(
        f"restore: {chosen} (of {list(candidates)}); validation {_short(before)} → "
        f"{_short(record['after']['validation'])}"
    )
    return record


def load_restored(run: Run) -> nn.Module:
    """The restored model as `restore` chose it (temperature-scaled when it chose that)."""
    record = run.read_json(RESTORE_JSON)
    if record is None:
        raise FileNotFoundError(
            f"{run.path('restored')} is missing; run `bayesprune restore {run.folder}` first"
        )
    model = run.load_model("restored")
    t = record.get("temperature")
    return TemperatureScaled(model, t) if t is not None else model


def _scorer(run: Run, rows: tuple[Tensor, Tensor], ood: Tensor | None, mode: str) -> Scorer:
    seed, e = run.config.train.seed, run.config.evaluate
    return restore_scorer(rows, run.likelihood(), mode, e.samples, e.bins, seed, ood)


def _short(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in values.items())


__all__ = ["RESTORE_JSON", "load_restored", "restore_run"]
