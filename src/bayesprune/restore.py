"""Restore the uncertainty a pruning cost: one front over three methods, picked by name.

Pruning by accuracy alone keeps the arg-max but not the predictive spread: after an
SNR pruning the Bayesian LeNet-300-100 is over-confident (ECE up 7×) and flags
out-of-distribution inputs worse (issue 18). Three repairs, cheapest first:

- "temperature": one scalar T fitted on the validation split (`calibration`); no
  training, accuracy of a one-pass network unchanged;
- "variances": a few epochs re-estimating the posterior scales only
  (`finetuning.reestimate_variances`);
- "finetune": a few epochs of variational fine-tuning of the survivors, means and
  scales (`finetuning.finetune`);
- "finetune+temperature": the fine-tuning, then a temperature fitted on the
  fine-tuned network: fine-tuning recovers accuracy and OOD separation but can leave
  the network over-confident, which one scalar T then corrects.

Which one to use is measured, not assumed: `benchmarks/uncertainty_after_pruning.py`.

A spike-and-slab network's gates are a choice of architecture, not a weight to retrain:
by default ("pin") the training methods open every kept gate for good and freeze it,
the refit of the median-probability model (Saha et al.; issue 5), so the fine-tuning
cannot close more units under the KL's pull. "freeze" keeps the gates at their
inclusion probabilities (still sampled: the posterior's doubt about a unit stays in the
predictive) and "train" lets them move, as any other parameter.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

from .calibration import temperature_scale
from .compress.adapters import copy_model
from .data.xy import DataLike
from .evaluation import EvalMode
from .finetuning import finetune, reestimate_variances
from .likelihoods import Likelihood
from .nn import gated_layers
from .options import Choice


class RestoreMethod(Choice):
    """How `restore_uncertainty` repairs a pruned network's predictive."""

    TEMPERATURE = "temperature"
    """Temperature scaling fitted on the validation data (needs `val`)."""
    VARIANCES = "variances"
    """Re-estimate the posterior scales only (needs `train`; Bayesian layers only)."""
    FINETUNE = "finetune"
    """Variational fine-tuning of the survivors, means and scales (needs `train`)."""
    FINETUNE_TEMPERATURE = "finetune+temperature"
    """"finetune", then temperature scaling of the fine-tuned network (needs both)."""


class GateRule(Choice):
    """What the training methods do with a spike-and-slab network's gates."""

    PIN = "pin"
    """Every kept gate opened for good and frozen: the median-probability model refit."""
    FREEZE = "freeze"
    """Gates held at their inclusion probabilities, still sampled; only slabs train."""
    TRAIN = "train"
    """Gates trained with the slabs (under the KL's pull they may close more units)."""


def restore_uncertainty(
    model: nn.Module,
    method: RestoreMethod | str,
    *,
    train: DataLike | None = None,
    val: DataLike | None = None,
    likelihood: str | Likelihood = "categorical",
    epochs: int = 2,
    lr: float | None = None,
    mode: EvalMode | str = EvalMode.MC,
    samples: int = 30,
    seed: int = 0,
    gates: GateRule | str = GateRule.PIN,
    **fit_kwargs: Any,
) -> nn.Module:
    """A repaired copy of the pruned `model` (the input is not modified).

    "temperature": `calibration.temperature_scale` on `val`, for the predictive in
    `mode` with `samples` passes from `seed` (the one the network will be used with);
    returns a `calibration.TemperatureScaled` wrapper. "variances" / "finetune":
    `epochs` of training on `train` (`val` recorded per epoch if given), pruned
    weights held at zero, at `lr` (None: 1e-2 for the scales, 1e-4 for full
    fine-tuning); `fit_kwargs` go to `bayesprune.fit` (batch_size, kl_weight, ...).
    "finetune+temperature": "finetune", then "temperature" on the fine-tuned copy.
    `gates`: what training does with spike-and-slab gates (`GateRule`; no effect on
    networks without gates, nor on "temperature").
    """
    method = RestoreMethod(method)
    gates = GateRule(gates)
    tempers = method in (RestoreMethod.TEMPERATURE, RestoreMethod.FINETUNE_TEMPERATURE)
    if tempers and val is None:
        raise ValueError(f"restore_uncertainty({method.value!r}) needs val= (validation data)")
    if method != RestoreMethod.TEMPERATURE and train is None:
        raise ValueError(f"restore_uncertainty({method.value!r}) needs train= (training data)")
    repaired = copy_model(model)
    if method != RestoreMethod.TEMPERATURE:
        train_step = reestimate_variances if method == RestoreMethod.VARIANCES else finetune
        default_lr = 1e-2 if method == RestoreMethod.VARIANCES else 1e-4
        with _gates_held(repaired, gates):
            train_step(
                repaired,
                train,
                val,
                epochs=epochs,
                lr=default_lr if lr is None else lr,
                **{"likelihood": likelihood, "seed": seed, "progress": False, **fit_kwargs},
            )
    if tempers:
        return temperature_scale(repaired, val, likelihood, mode=mode, samples=samples, seed=seed)
    return repaired


@contextmanager
def _gates_held(model: nn.Module, rule: GateRule) -> Iterator[None]:
    """Within the block, `model`'s gates follow `rule`: pinned (for good), frozen at their
    inclusion probabilities (gradient flags restored afterwards), or left to train."""
    layers = [layer for _, layer in gated_layers(model)]
    if rule == GateRule.PIN:
        for layer in layers:
            layer.pin_gates()
    gates = (getattr(layer, n) for layer in layers for n in layer.gate_parameter_names())
    held = [p for p in gates if rule == GateRule.FREEZE and p.requires_grad]
    try:
        for p in held:
            p.requires_grad_(False)
        yield
    finally:
        for p in held:
            p.requires_grad_(True)


__all__ = ["GateRule", "RestoreMethod", "restore_uncertainty"]
