"""Step `restore`: give the compressed model back the uncertainty its pruning cost.

Pruning by accuracy keeps the arg-max but not the predictive spread (issue 18), so
after `compress` this step tries the restoring methods of `restore.method` on the
compressed model (auto: none, temperature, variances where the model has posterior
scales, finetune, finetune+temperature) and keeps one, chosen on validation data only:

- the validation split is cut in two halves: every method is fitted on the first
  (temperature) or trained on the training rows and watched on it (variances,
  finetune; finetune+temperature: the fine-tuned network's temperature fitted on it),
  and judged on the second;
- a candidate is eligible when its ECE on the second half is no worse than the
  compressed model's and, with `restore.ood`, its OOD AUROC there falls by at most
  `restore.auroc_tolerance` below the lower of the compressed and the trained
  (unpruned) model's; "none" (the compressed model as it is) always is, so validation
  ECE never gets worse;
- of the eligible ones, those whose NLL exceeds the lowest by at most `restore.tie_se`
  (default 1) paired standard errors of the per-row difference are tied, and the tie
  goes to the lowest ECE. This is the one-standard-error rule of model selection
  (Breiman et al. 1984): on 500 rows a temperature that cuts ECE by a third can read
  0.001 worse in NLL than the untouched net, a difference the rows cannot tell from
  noise, and choosing by NLL alone then kept the uncalibrated net (issue 18).
  `tie_se: 0` chooses by NLL alone. With
  `restore.ece_factor` (e.g. 1.5) a candidate's ECE may also reach that multiple of
  the trained model's: a compressed net whose validation ECE happens to be low while
  its accuracy and NLL fell (ECE on a thousand rows moves by ±0.01) no longer blocks
  every repair. The lower of the two,
  because an over-confident pruned net can separate OOD inputs *better* than the
  trained one (LeNet-5-Caffe, Fashion-MNIST in: +0.10), and holding that gain would
  refuse every repair that brings the predictive back to the trained net's.

Writes restored/model.safetensors (the network; a temperature is kept beside it) and
restored/restore.json (every candidate's validation metrics, the choice and why, and
the test metrics before and after), published together. Options given on the command
line are recorded in restore.json ("options"), never written to config.yaml. The test
set is read once, for the before / after figures; nothing is chosen on it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from ...calibration import TemperatureScaled
from ...evaluation import Scorer, ood_metric_names, scorer
from ...finetuning import VARIANCE_SUFFIXES
from ...kl_schedule import kl_stages
from ...metrics import nll_per_row
from ...predict import predict
from ...restore import RestoreMethod, restore_uncertainty
from ..config import ConfigError, config_to_dict
from ..factory import ood_inputs
from ..folder import Run
from ..policy import primary_mode
from .compress import with_overrides

NONE = "none"
RESTORE_JSON = "restored/restore.json"
METRICS = ("accuracy", "nll", "ece")


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
    compressed = run.load_model("compressed")  # one clear error when compress has not run
    mode = primary_mode(run.config, compressed)
    half = len(data.val[0]) // 2
    fit_rows = (data.val[0][:half], data.val[1][:half])
    pick_rows = (data.val[0][half:], data.val[1][half:])
    ood_val = ood_inputs(run.config, cfg.ood, "train", len(pick_rows[0])) if cfg.ood else None
    judge = _scorer(run, pick_rows, ood_val, mode)
    needs_trained = cfg.ood or cfg.ece_factor is not None
    trained = judge(run.load_model("trained")) if needs_trained else None
    candidates, models = _candidates(run, compressed, fit_rows, judge, mode, trained)
    row_nll = _row_nll(run, pick_rows, mode)
    chosen = choose(candidates, {m: row_nll(model) for m, model in models.items()}, cfg.tie_se)
    before = candidates[NONE]["validation"]
    final = models[chosen]
    test_ood = ood_inputs(run.config, cfg.ood, "test", len(data.test[0])) if cfg.ood else None
    test = _scorer(run, data.test, test_ood, mode)
    record = {
        "method": chosen,
        "requested": cfg.method,
        "temperature": _temperature(final),
        "mode": mode,
        "samples": run.config.evaluate.samples,
        "rule": (
            "among candidates whose validation ECE (second half) is no worse than the "
            "compressed model's"
            + (
                f" (or at most {cfg.ece_factor}x the trained model's)"
                if cfg.ece_factor is not None
                else ""
            )
            + (
                f" and whose OOD AUROC falls by at most {cfg.auroc_tolerance} below the lower "
                "of the compressed and the trained model's"
                if cfg.ood
                else ""
            )
            + (
                f", the lowest validation ECE of those within {cfg.tie_se} paired standard "
                "error(s) of the lowest validation NLL"
                if cfg.tie_se > 0
                else ", the lowest validation NLL"
            )
        ),
        "trained_validation": trained,
        "splits": {
            "fit": {"name": "validation, first half", "rows": len(fit_rows[0])},
            "choose": {"name": "validation, second half", "rows": len(pick_rows[0])},
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


def _candidates(
    run: Run,
    compressed: nn.Module,
    fit_rows: tuple[Tensor, Tensor],
    judge: Scorer,
    mode: str,
    trained: dict[str, float] | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, nn.Module]]:
    """Every method tried: its validation metrics and whether it may be chosen; the models.
    `trained`: the unpruned model's validation metrics (the AUROC reference with it)."""
    before = judge(compressed)
    floor = auroc_floor(before, trained)
    ceiling = ece_ceiling(before, trained, run.config.restore.ece_factor)
    candidates: dict[str, dict[str, Any]] = {NONE: {"validation": before, "eligible": True}}
    models: dict[str, nn.Module] = {NONE: compressed}
    for method in _methods(run.config.restore.method, compressed):
        start = time.perf_counter()
        if method == RestoreMethod.FINETUNE_TEMPERATURE and RestoreMethod.FINETUNE in models:
            # the same network restore_uncertainty(method) gives (fine-tuning with the same
            # seed and rows), tempered: the fine-tuning is not run twice
            base = models[RestoreMethod.FINETUNE]
            repaired = _apply(run, base, RestoreMethod.TEMPERATURE, fit_rows, mode)
        else:
            repaired = _apply(run, compressed, method, fit_rows, mode)
        values = judge(repaired)
        why = _refusal(values, before, run.config.restore.auroc_tolerance, floor, ceiling)
        candidates[method] = {
            "validation": values,
            "eligible": why is None,
            "why_not": why,
            "seconds": round(time.perf_counter() - start, 2),
        }
        models[method] = repaired
    return candidates, models


def choose(candidates: dict[str, dict[str, Any]], row_nll: dict[str, Tensor], tie_se: float) -> str:
    """The method chosen (module docstring): of the eligible candidates, those whose mean
    per-row NLL exceeds the lowest by at most `tie_se` standard errors of the paired
    difference, the one with the lowest ECE. Records each eligible candidate's "nll_gap"
    (the difference to the lowest, and its standard error) and whether it was "tied"."""
    eligible = [m for m, c in candidates.items() if c["eligible"]]
    best = min(eligible, key=lambda m: candidates[m]["validation"]["nll"])
    tied = []
    for m in eligible:
        gap, se = paired_gap(row_nll[m], row_nll[best])
        candidates[m]["nll_gap"] = {"mean": gap, "se": se}
        candidates[m]["tied"] = gap <= tie_se * se
        if candidates[m]["tied"]:
            tied.append(m)
    # `best` is tied with itself (gap 0); equal ECEs go to the lower NLL
    return min(
        tied, key=lambda m: (candidates[m]["validation"]["ece"], candidates[m]["validation"]["nll"])
    )


def paired_gap(losses: Tensor, reference: Tensor) -> tuple[float, float]:
    """Mean of `losses − reference` (the same rows) and its standard error."""
    d = (losses - reference).double()
    se = float(d.std(unbiased=True) / len(d) ** 0.5) if len(d) > 1 else 0.0
    return float(d.mean()), se


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


def _methods(requested: str, model: nn.Module) -> list[str]:
    """The methods to try besides "none": the one asked for, or every applicable one."""
    scaled = any(name.endswith(VARIANCE_SUFFIXES) for name, _ in model.named_parameters())
    if requested == NONE:
        return []
    if requested != "auto":
        if requested == RestoreMethod.VARIANCES and not scaled:
            raise ConfigError(
                "restore.method 'variances' re-estimates posterior scales, and the compressed "
                "model has none (a deterministic network); use 'temperature' or 'auto'"
            )
        return [requested]
    return [m for m in RestoreMethod.values() if scaled or m != RestoreMethod.VARIANCES]


def _apply(
    run: Run, model: nn.Module, method: str, fit_rows: tuple[Tensor, Tensor], mode: str
) -> nn.Module:
    cfg, t = run.config.restore, run.config.train
    # the posterior's own β: a staged train.kl_weight ends with it
    training = {"batch_size": t.batch_size, "kl_weight": kl_stages(t.kl_weight).final}
    if t.dataset_size is not None:
        training["dataset_size"] = t.dataset_size
    return restore_uncertainty(
        model,
        method,
        train=run.data().train,
        val=fit_rows,
        likelihood=run.likelihood(),
        epochs=cfg.epochs,
        lr=cfg.lr,
        mode=mode,
        samples=run.config.evaluate.samples,
        seed=t.seed,
        **({} if method == RestoreMethod.TEMPERATURE else training),
    )


def auroc_floor(compressed: dict[str, float], trained: dict[str, float] | None) -> dict[str, float]:
    """Per OOD AUROC, the lower of the compressed and the trained model's validation value:
    what a candidate is compared with (module docstring)."""
    return {
        name: min(value, (trained or {}).get(name, value))
        for name, value in compressed.items()
        if name.startswith("ood_auroc")
    }


def ece_ceiling(
    compressed: dict[str, float], trained: dict[str, float] | None, factor: float | None
) -> float:
    """The highest validation ECE a candidate may have: the compressed model's, or with
    `factor` the larger of that and `factor` × the trained model's."""
    if factor is None or trained is None:
        return compressed["ece"]
    return max(compressed["ece"], factor * trained["ece"])


def _refusal(
    values: dict[str, float],
    before: dict[str, float],
    tolerance: float,
    floor: dict[str, float] | None = None,
    ceiling: float | None = None,
) -> str | None:
    """Why a candidate may not be chosen (None: it may). `floor`: the AUROC reference
    (`auroc_floor`; default the compressed model's); `ceiling`: the ECE one
    (`ece_ceiling`; default the compressed model's)."""
    ceiling = before["ece"] if ceiling is None else ceiling
    if values["ece"] > ceiling:
        whose = "compressed" if ceiling == before["ece"] else "ece_factor x trained"
        return f"validation ECE {values['ece']:.4g} > {ceiling:.4g} ({whose})"
    floor = floor if floor is not None else auroc_floor(before, None)
    for name in values:
        if name in floor and values[name] < floor[name] - tolerance:
            return (
                f"validation {name} fell by more than {tolerance} below {floor[name]:.4g} "
                "(the lower of the compressed and the trained model's)"
            )
    return None


def _scorer(run: Run, rows: tuple[Tensor, Tensor], ood: Tensor | None, mode: str) -> Scorer:
    names = (*METRICS, *(ood_metric_names(mode) if ood is not None else ()))
    return scorer(
        rows,
        run.likelihood(),
        mode=mode,
        samples=run.config.evaluate.samples,
        bins=run.config.evaluate.bins,
        seed=run.config.train.seed,
        metrics=names,
        ood=ood,
    )


def _row_nll(run: Run, rows: tuple[Tensor, Tensor], mode: str) -> Callable[[nn.Module], Tensor]:
    """model → its per-row NLL on `rows`, from the same predictive (mode, samples, seed)
    as the scorer's, so that the mean equals the candidate's recorded validation NLL."""
    x, y = rows

    def losses(model: nn.Module) -> Tensor:
        pred = predict(
            model,
            x,
            samples=run.config.evaluate.samples,
            mode=mode,
            likelihood=run.likelihood(),
            seed=run.config.train.seed,
        )
        return nll_per_row(pred.probs, y)

    return losses


def _temperature(model: nn.Module) -> float | None:
    return float(model.temperature) if isinstance(model, TemperatureScaled) else None


def _short(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in values.items())


__all__ = ["RESTORE_JSON", "choose", "load_restored", "paired_gap", "restore_run"]
