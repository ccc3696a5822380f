"""The checks `fit` makes of its settings, inputs, targets and parameters (one clear error each)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from .data.xy import InputsDataset
from .inputs import map_inputs
from .likelihoods import Likelihood
from .validation import (
    check_finite_number,
    check_finite_parameters,
    check_input_dtype,
    to_model_dtype,
)


def check_targets(likelihood: Likelihood, out: Any, y: Tensor, dataset: Dataset) -> None:
    """Validate labels against the model's output: all of them at once for tensor data."""
    head = out if isinstance(out, Tensor) else out[0]
    if isinstance(dataset, TensorDataset | InputsDataset):
        y = dataset.tensors[1] if isinstance(dataset, TensorDataset) else dataset.targets
        head = head[:1].expand(len(y), *head.shape[1:])
    likelihood.check_target(head, y)


def check_settings(
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    kl_warmup_epochs: float,
) -> None:
    """Bounds of fit's numeric arguments: an inf or NaN would train to a silently wrong model.
    (`kl_weight` is checked by `kl_schedule.kl_stages`.)"""
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if epochs < 0 or batch_size <= 0:
        raise ValueError(f"need epochs >= 0 and batch_size > 0; got {epochs}, {batch_size}")
    if not check_finite_number(lr, "lr") > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    check_finite_number(weight_decay, "weight_decay", minimum=0.0)
    check_finite_number(kl_warmup_epochs, "kl_warmup_epochs", minimum=0.0)


def checked_inputs(dataset: Dataset, model: nn.Module, what: str) -> Dataset:
    """Tensor inputs must be real; other float widths are cast to the model's dtype
    (integers, token ids, go in as they are)."""
    if isinstance(dataset, InputsDataset):
        cast = map_inputs(
            dataset.inputs, lambda x: checked_inputs(TensorDataset(x), model, what).tensors[0]
        )
        return InputsDataset(cast, dataset.targets)
    if not isinstance(dataset, TensorDataset):
        return dataset
    x, *rest = dataset.tensors
    check_input_dtype(x, f"{what} X")
    cast = to_model_dtype(x, next(iter(model.parameters()), None))
    return dataset if cast is x else TensorDataset(cast, *rest)


def non_finite(named: Sequence[tuple[str, Tensor]], epoch: int) -> Exception | None:
    try:
        check_finite_parameters(named, epoch)
    except FloatingPointError as err:
        return err
    return None


def optimizer_step(opt: torch.optim.Optimizer, epoch: int) -> None:
    """One optimiser step; a learning rate beyond the parameters' float range is one clear error."""
    try:
        opt.step()
    except RuntimeError as err:
        if "overflow" not in str(err):
            raise
        raise FloatingPointError(
            f"the optimiser step overflowed at epoch {epoch + 1} ({err}); lower train.lr"
        ) from err
