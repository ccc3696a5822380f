"""Fine-tune a pruned (or shrunk) model for a few epochs with its masks held fixed.

Training after compression lives here, beside `fit`, so that `bayesprune.compress`
holds no training code: its schedules receive a fine-tuning step as a callable
(see `compress.self_compress`), and `compress.hold_pruned` keeps pruned weights at zero.

Two ways to retrain the survivors of a pruning:

- `finetune`: every parameter (variational means and scales), the variational
  fine-tuning that lets the remaining weights take over the pruned ones' work; with
  ``train_variances=False`` the means only, the posterior scales held where the full
  training left them (a short fine-tune at a fresh rate can otherwise move the scales
  of a converged posterior, and with them its out-of-distribution separation);
- `reestimate_variances`: the posterior scales only (parameters named ``*rho``), the
  means held where training put them. Pruning removes weights whose noise the
  survivors' scales were fitted alongside; re-estimating the scales alone restores
  the predictive spread without moving the function the means compute.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from torch import nn

from .compress.masks import hold_pruned
from .train import History, fit

VARIANCE_SUFFIXES = ("rho",)
"""Names of the posterior-scale parameters (σ = softplus(ρ)) `reestimate_variances` trains."""


def finetune(
    model: nn.Module,
    train: Any,
    val: Any = None,
    *,
    epochs: int = 3,
    lr: float = 1e-4,
    lr_schedule: str = "constant",
    train_variances: bool = True,
    **fit_kwargs: Any,
) -> History:
    """Train `model` in place for `epochs` with `bayesprune.fit`; pruned weights stay pruned.

    `fit_kwargs` go to `fit` (likelihood, batch_size, kl_weight, seed, ...). A small,
    fixed learning rate is the default: the network is already trained.
    `train_variances=False`: the posterior scales (parameters named ``*rho``) stay as
    they are, only the means and the other parameters (BatchNorm, deterministic layers)
    train; a network without scales is an error, as in `reestimate_variances`.
    """
    held: AbstractContextManager[Any] = nullcontext()
    if not train_variances:
        held = frozen(model, VARIANCE_SUFFIXES)
    with hold_pruned(model), held:
        return fit(model, train, val, epochs=epochs, lr=lr, lr_schedule=lr_schedule, **fit_kwargs)


@contextmanager
def only_trainable(model: nn.Module, suffixes: Sequence[str]) -> Iterator[list[str]]:
    """Within the block, only parameters whose names end in one of `suffixes` require
    gradients (yields their names); every parameter's flag is restored afterwards."""
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    chosen = [name for name in flags if name.endswith(tuple(suffixes))]
    if not chosen:
        raise ValueError(
            f"no parameter name ends in {list(suffixes)} (parameters are named like "
            f"{list(flags)[:4]}); a deterministic network has no posterior scales to re-estimate"
        )
    try:
        for name, p in model.named_parameters():
            p.requires_grad_(name in chosen)
        yield chosen
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])


@contextmanager
def frozen(model: nn.Module, suffixes: Sequence[str]) -> Iterator[list[str]]:
    """Within the block, parameters whose names end in one of `suffixes` do not require
    gradients (yields their names); every parameter's flag is restored afterwards:
    `only_trainable`'s complement."""
    params = dict(model.named_parameters())
    chosen = [name for name in params if name.endswith(tuple(suffixes))]
    if not chosen:
        raise ValueError(
            f"no parameter name ends in {list(suffixes)} (parameters are named like "
            f"{list(params)[:4]}); a deterministic network has no posterior scales to hold"
        )
    flags = {name: params[name].requires_grad for name in chosen}
    try:
        for name in chosen:
            params[name].requires_grad_(False)
        yield chosen
    finally:
        for name in chosen:
            params[name].requires_grad_(flags[name])


def reestimate_variances(
    model: nn.Module,
    train: Any,
    val: Any = None,
    *,
    epochs: int = 2,
    lr: float = 1e-2,
    suffixes: Sequence[str] = VARIANCE_SUFFIXES,
    **fit_kwargs: Any,
) -> History:
    """Train only the posterior scales of `model` in place (`finetune` with every other
    parameter frozen); pruned weights stay pruned and the means do not move.

    `suffixes`: which parameter names count as scales (default ``("rho",)``: σ =
    softplus(ρ) in the Gaussian, scale-mixture and Sparse VD layers). The learning rate
    is larger than `finetune`'s: ρ moves on a log-like scale. It is the scales' own
    rate: the layers' declared factors (the Gaussian family's σ at a third) do not
    apply unless `lr_multipliers` is passed.
    """
    fit_kwargs.setdefault("lr_multipliers", dict.fromkeys(suffixes, 1.0))
    with only_trainable(model, suffixes):
        return finetune(model, train, val, epochs=epochs, lr=lr, **fit_kwargs)


__all__ = ["VARIANCE_SUFFIXES", "finetune", "frozen", "only_trainable", "reestimate_variances"]
