"""What `fit` optimises with: optimizers by name, learning-rate schedules, parameter groups.

Schedules are pure functions of the epoch (no scheduler state), so a resumed run
needs nothing beyond the optimizer's own state to continue exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}

LR_SCHEDULES: dict[str, Callable[[float, int, int], float]] = {
    "constant": lambda lr, epoch, epochs: lr,
    "cosine": lambda lr, epoch, epochs: 0.5 * lr * (1 + math.cos(math.pi * epoch / max(epochs, 1))),
}
"""(base lr, epoch, epochs) → that epoch's lr; "cosine" decays from lr to 0."""

AUTO_SCHEDULE = "auto"


def resolve_schedule(name: str, model: nn.Module) -> str:
    """`name`, or for "auto" what the model's layers declare (`lr_schedule` of each
    variational layer): "constant" if any asks for it (spike-and-slab gates need a
    sustained rate to close), else "cosine" (time to accuracy, docs/speed.md)."""
    if name != AUTO_SCHEDULE:
        if name not in LR_SCHEDULES:
            valid = sorted([AUTO_SCHEDULE, *LR_SCHEDULES])
            raise ValueError(f"unknown lr_schedule {name!r}; valid: {valid}")
        return name
    wanted = {getattr(type(m), "lr_schedule", None) for m in model.modules()}
    return "constant" if "constant" in wanted else "cosine"


_FUSED_DEVICES = ("cpu", "cuda")


def _fusable(param: torch.Tensor, lr: float) -> bool:
    """Whether the fused kernel takes `param`: a float tensor on the CPU or CUDA, and a
    rate its dtype can hold (the loop implementation reports such an overflow, which
    `fit` turns into one clear error; the fused kernel would silently write inf)."""
    return (
        param.is_floating_point()
        and param.device.type in _FUSED_DEVICES
        and abs(lr) <= torch.finfo(param.dtype).max
    )


def make_optimizer(
    name: str, groups: list[dict[str, Any]], lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """The optimizer `name` (a key of `OPTIMIZERS`) over `groups`.

    torch's fused implementation (one kernel per step over all parameters, instead
    of several element-wise operations per parameter) wherever every parameter is a
    floating-point tensor on the CPU or a CUDA device (`_fusable`); the loop
    implementation otherwise. The update rule is the same; Bayesian layers double the
    parameters, so the optimizer's share of a step doubles too.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid: {sorted(OPTIMIZERS)}")
    fused = all(_fusable(p, group["lr"]) for group in groups for p in group["params"])
    return OPTIMIZERS[name](groups, lr=lr, weight_decay=weight_decay, fused=fused or None)


def declared_multipliers(model: nn.Module) -> dict[str, float]:
    """{parameter name: factor} for the parameters whose layer declares a learning-rate
    factor for them (`lr_multipliers` of the layer's class, matched on the layer's own
    parameter names by suffix), e.g. the Gaussian family's σ at a third of the rate."""
    declared: dict[str, float] = {}
    for prefix, module in model.named_modules():
        factors: Mapping[str, float] = getattr(type(module), "lr_multipliers", {})
        for name, _ in module.named_parameters(recurse=False) if factors else ():
            factor = next((f for key, f in factors.items() if name.endswith(key)), None)
            if factor is not None:
                declared[f"{prefix}.{name}" if prefix else name] = float(factor)
    return declared


def param_groups(
    named: list[tuple[str, nn.Parameter]],
    lr: float,
    multipliers: Mapping[str, float],
    declared: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """One optimizer group per learning-rate multiplier; a name takes its first matching
    key of `multipliers` (the caller's), else its layer's `declared` factor, else 1.

    E.g. {"gate_logit": 10.0}: spike-and-slab gate logits start near logit(0.99) = 4.6
    and Adam moves a parameter by about `lr` per step whatever its gradient's size, so
    at lr 1e-3 a gate needs thousands of steps to cross 0.5; the slabs need no such boost.
    """
    declared = declared or {}
    for key, factor in multipliers.items():
        if not (isinstance(factor, int | float) and math.isfinite(factor) and factor > 0):
            raise ValueError(f"lr_multipliers[{key!r}] must be a finite number > 0, got {factor}")
        if not any(name.endswith(key) for name, _ in named):
            example = ", ".join(name for name, _ in named[:4])
            raise ValueError(
                f"lr_multipliers key {key!r} matches no parameter name ending (parameters "
                f"are named like: {example})"
            )
    by_factor: dict[float, list[nn.Parameter]] = {}
    for name, param in named:
        factor = next(
            (float(f) for k, f in multipliers.items() if name.endswith(k)),
            declared.get(name, 1.0),
        )
        by_factor.setdefault(factor, []).append(param)
    return [
        {"params": params, "lr": lr * factor, "lr_multiplier": factor}
        for factor, params in by_factor.items()
    ]
