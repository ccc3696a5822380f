"""Choose how to restore a pruned network's uncertainty, on validation data alone.

`restore_uncertainty` applies one repair; which one helps is a property of the
network and the data (issue 18), so `choose_restoration` tries them and keeps one,
as `bayesprune restore` does:

- the validation rows are cut in two halves: "temperature" is fitted on the first;
  "variances" / "finetune" train on the training rows and are watched on the first;
  "finetune+temperature" tempers the fine-tuned network on the first; every candidate,
  "none" (the pruned network as it is) included, is judged on the second;
- a candidate is eligible when its ECE there is no worse than the pruned network's
  (or, with `ece_factor`, than that multiple of the unpruned network's: on a small
  split a pruned net can read a low ECE by chance while its accuracy fell) and, given
  OOD inputs, its OOD AUROC there falls by at most `auroc_tolerance` below the lower
  of the pruned and the unpruned network's (the lower, because an over-confident
  pruned net can separate OOD inputs *better*, and holding that gain would refuse
  every repair that brings the predictive back). "none" always is, so validation ECE
  never gets worse;
- of the eligible ones, those whose NLL exceeds the lowest by at most `tie_se` (1)
  standard errors of the per-row difference (both scored on the same rows) are tied,
  and the tie goes to the lowest ECE: the one-standard-error rule of model selection
  (Breiman et al. 1984). On 500 rows a temperature that cut ECE by 40 % read 0.001
  worse in NLL than the untouched net, 0.1 standard errors, and choosing by NLL alone
  kept the uncalibrated net (benchmarks/README.md, session 12). `tie_se=0`: NLL alone.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from .calibration import TemperatureScaled
from .data.xy import DataLike, as_xy
from .evaluation import EvalMode, Scorer, ood_metric_names, scorer
from .finetuning import VARIANCE_SUFFIXES
from .inputs import rows, take
from .likelihoods import Likelihood
from .metrics import nll_per_row
from .predict import predict
from .restore import RestoreMethod, restore_uncertainty
from .validation import required_inputs

NONE = "none"
AUTO = "auto"
METRICS = ("accuracy", "nll", "ece")


@dataclass
class RestoreChoice:
    """What `choose_restoration` kept and why."""

    method: str  # "none" or a `RestoreMethod` value
    model: nn.Module  # the chosen network (a `TemperatureScaled` wrapper when tempered)
    # per method tried: "validation" metrics (second half), "eligible", "why_not",
    # "nll_gap" ({"mean", "se"} against the lowest eligible NLL), "tied", "seconds"
    candidates: dict[str, dict[str, Any]]
    rule: str  # the rule in words, with its settings
    rows: dict[str, int]  # validation rows per half: {"fit": ..., "choose": ...}
    trained: dict[str, float] | None = None  # the unpruned network's validation metrics
    models: dict[str, nn.Module] = field(default_factory=dict, repr=False)  # every candidate

    @property
    def temperature(self) -> float | None:
        """The chosen network's temperature (None: not tempered)."""
        return float(self.model.temperature) if isinstance(self.model, TemperatureScaled) else None


def restoring_methods(requested: str, model: nn.Module) -> list[str]:
    """The methods to try besides "none": `requested` alone, none ("none"), or with
    "auto" every one that applies ("variances" needs posterior scales)."""
    scaled = any(name.endswith(VARIANCE_SUFFIXES) for name, _ in model.named_parameters())
    if requested == NONE:
        return []
    if requested != AUTO:
        method = RestoreMethod(requested)
        if method == RestoreMethod.VARIANCES and not scaled:
            raise ValueError(
                "'variances' re-estimates posterior scales, and the model has none (a "
                "deterministic network); use 'temperature' or 'auto'"
            )
        return [method.value]
    return [m for m in RestoreMethod.values() if scaled or m != RestoreMethod.VARIANCES]


def choose_restoration(
    model: nn.Module,
    val: DataLike,
    *,
    train: DataLike | None = None,
    likelihood: str | Likelihood = "categorical",
    methods: str = AUTO,
    ood: Tensor | None = None,
    trained: nn.Module | None = None,
    mode: EvalMode | str = EvalMode.MC,
    samples: int = 30,
    bins: int = 15,
    seed: int = 0,
    epochs: int = 2,
    lr: float | None = None,
    auroc_tolerance: float = 0.02,
    ece_factor: float | None = None,
    tie_se: float = 1.0,
    **fit_kwargs: Any,
) -> RestoreChoice:
    """Try the restoring `methods` ("auto": every one that applies; "none"; or one name)
    on the pruned `model` and keep one by the rule of the module docstring.

    `val`: the validation rows, cut in halves here (fit, choose). `ood`: OOD inputs for
    the choosing half (adds the AUROC test). `trained`: the unpruned network, scored on
    the same rows (the AUROC and `ece_factor` reference). `mode` / `samples` / `seed`:
    the predictive the network will be used with; `epochs`, `lr` and `fit_kwargs`
    (batch_size, kl_weight, dataset_size, gates ...) go to `restore_uncertainty`'s
    training methods. The input model is not modified.
    """
    mode = EvalMode(mode).value
    x, y = as_xy(val, "validation data", required_inputs(model), ragged=True)
    if rows(x) < 2:
        raise ValueError(f"choose_restoration needs at least 2 validation rows, got {rows(x)}")
    tried = restoring_methods(methods, model)
    if tried and RestoreMethod.TEMPERATURE not in tried and train is None:
        raise ValueError(f"restoring by {tried[0]!r} trains: pass train= (training data)")
    half = rows(x) // 2
    first, second = slice(None, half), slice(half, None)
    fit_rows, pick_rows = (take(x, first), y[first]), (take(x, second), y[second])
    judge = restore_scorer(pick_rows, likelihood, mode, samples, bins, seed, ood)
    reference = judge(trained) if trained is not None else None
    before = judge(model)
    floor = auroc_floor(before, reference)
    ceiling = ece_ceiling(before, reference, ece_factor)
    candidates: dict[str, dict[str, Any]] = {NONE: {"validation": before, "eligible": True}}
    models: dict[str, nn.Module] = {NONE: model}
    options = {"likelihood": likelihood, "mode": mode, "samples": samples, "seed": seed}
    training = {"train": train, "epochs": epochs, "lr": lr, **fit_kwargs}
    for method in tried:
        start = time.perf_counter()
        if method == RestoreMethod.FINETUNE_TEMPERATURE and RestoreMethod.FINETUNE in models:
            # the network restore_uncertainty(method) gives (the same fine-tuning, seed
            # and rows), tempered: the fine-tuning is not run twice
            base = models[RestoreMethod.FINETUNE]
            repaired = restore_uncertainty(base, "temperature", val=fit_rows, **options)
        else:
            extra = {} if method == RestoreMethod.TEMPERATURE else training
            repaired = restore_uncertainty(model, method, val=fit_rows, **options, **extra)
        values = judge(repaired)
        why = refusal(values, before, auroc_tolerance, floor, ceiling)
        candidates[method] = {
            "validation": values,
            "eligible": why is None,
            "why_not": why,
            "seconds": round(time.perf_counter() - start, 2),
        }
        models[method] = repaired
    losses = row_nll(pick_rows, likelihood, mode, samples, seed)
    row_losses = functools.cache(lambda m: losses(models[m]))  # eligible candidates only
    chosen = choose_by_gaps(
        candidates, lambda a, b: paired_gap(row_losses(a), row_losses(b)), tie_se
    )
    return RestoreChoice(
        method=chosen,
        model=models[chosen],
        candidates=candidates,
        rule=_rule(ece_factor, auroc_tolerance if ood is not None else None, tie_se),
        rows={"fit": rows(fit_rows[0]), "choose": rows(pick_rows[0])},
        trained=reference,
        models=models,
    )


def restore_scorer(
    rows: tuple[Tensor, Tensor],
    likelihood: str | Likelihood,
    mode: str,
    samples: int,
    bins: int,
    seed: int,
    ood: Tensor | None = None,
) -> Scorer:
    """What a restoring candidate is judged by on `rows`: accuracy, NLL, ECE and, given
    `ood`, the OOD AUROCs of `mode`'s predictive."""
    names = (*METRICS, *(ood_metric_names(mode) if ood is not None else ()))
    inputs = len(rows[0]) if isinstance(rows[0], tuple) else 1
    return scorer(
        rows, likelihood, mode=mode, samples=samples, bins=bins, seed=seed, metrics=names,
        ood=ood, inputs=inputs,
    )  # fmt: skip


def lowest_nll(candidates: Mapping[str, Mapping[str, Any]]) -> str:
    """The eligible candidate with the lowest validation NLL (the rule with `tie_se=0`)."""
    eligible = [m for m, c in candidates.items() if c["eligible"]]
    return min(eligible, key=lambda m: candidates[m]["validation"]["nll"])


def choose(
    candidates: dict[str, dict[str, Any]], losses: Mapping[str, Tensor], tie_se: float
) -> str:
    """The method chosen: of the eligible candidates, those whose mean per-row NLL exceeds
    the lowest by at most `tie_se` standard errors of the paired difference, the one with
    the lowest ECE. Records each eligible candidate's "nll_gap" (the difference to the
    lowest, and its standard error) and whether it was "tied"."""
    return choose_by_gaps(candidates, lambda a, b: paired_gap(losses[a], losses[b]), tie_se)


def choose_by_gaps(
    candidates: dict[str, dict[str, Any]],
    gap_of: Callable[[str, str], tuple[float, float]],
    tie_se: float,
) -> str:
    """`choose` given the paired NLL gaps rather than the rows: `gap_of(a, b)` is the mean
    of a's per-row NLL minus b's and its standard error (e.g. recorded earlier)."""
    best = lowest_nll(candidates)
    tied = []
    for m in (m for m, c in candidates.items() if c["eligible"]):
        gap, se = (0.0, 0.0) if m == best else gap_of(m, best)
        candidates[m]["nll_gap"] = {"mean": gap, "se": se}
        candidates[m]["tied"] = gap <= tie_se * se
        if candidates[m]["tied"]:
            tied.append(m)

    def calibration_first(m: str) -> tuple[float, float]:  # equal ECEs: the lower NLL
        return candidates[m]["validation"]["ece"], candidates[m]["validation"]["nll"]

    return min(tied, key=calibration_first)  # `best` is tied with itself (gap 0)


def paired_gap(losses: Tensor, reference: Tensor) -> tuple[float, float]:
    """Mean of `losses − reference` (the same rows) and its standard error."""
    d = (losses - reference).double()
    se = float(d.std(unbiased=True) / len(d) ** 0.5) if len(d) > 1 else 0.0
    return float(d.mean()), se


def auroc_floor(pruned: dict[str, float], trained: dict[str, float] | None) -> dict[str, float]:
    """Per OOD AUROC, the lower of the pruned and the trained network's validation value:
    what a candidate is compared with (module docstring)."""
    return {
        name: min(value, (trained or {}).get(name, value))
        for name, value in pruned.items()
        if name.startswith("ood_auroc")
    }


def ece_ceiling(
    pruned: dict[str, float], trained: dict[str, float] | None, factor: float | None
) -> float:
    """The highest validation ECE a candidate may have: the pruned network's, or with
    `factor` the larger of that and `factor` × the trained network's."""
    if factor is None or trained is None:
        return pruned["ece"]
    return max(pruned["ece"], factor * trained["ece"])


def refusal(
    values: dict[str, float],
    before: dict[str, float],
    tolerance: float,
    floor: dict[str, float] | None = None,
    ceiling: float | None = None,
) -> str | None:
    """Why a candidate may not be chosen (None: it may). `floor`: the AUROC reference
    (`auroc_floor`; default the pruned network's); `ceiling`: the ECE one
    (`ece_ceiling`; default the pruned network's)."""
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


def row_nll(
    rows: tuple[Tensor, Tensor], likelihood: str | Likelihood, mode: str, samples: int, seed: int
) -> Callable[[nn.Module], Tensor]:
    """model → its per-row NLL on `rows`, from the scorer's predictive (mode, samples,
    seed), so that the mean equals the candidate's recorded validation NLL."""
    x, y = rows

    def losses(model: nn.Module) -> Tensor:
        pred = predict(model, x, samples=samples, mode=mode, likelihood=likelihood, seed=seed)
        return nll_per_row(pred.probs, y)

    return losses


def _rule(ece_factor: float | None, auroc_tolerance: float | None, tie_se: float) -> str:
    """The rule in words, as restore.json records it."""
    return (
        "among candidates whose validation ECE (second half) is no worse than the "
        "compressed model's"
        + (f" (or at most {ece_factor}x the trained model's)" if ece_factor is not None else "")
        + (
            f" and whose OOD AUROC falls by at most {auroc_tolerance} below the lower of the "
            "compressed and the trained model's"
            if auroc_tolerance is not None
            else ""
        )
        + (
            f", the lowest validation ECE of those within {tie_se} paired standard error(s) "
            "of the lowest validation NLL"
            if tie_se > 0
            else ", the lowest validation NLL"
        )
    )


__all__ = [
    "RestoreChoice",
    "auroc_floor",
    "choose",
    "choose_by_gaps",
    "choose_restoration",
    "ece_ceiling",
    "lowest_nll",
    "paired_gap",
    "refusal",
    "restore_scorer",
    "restoring_methods",
    "row_nll",
]
