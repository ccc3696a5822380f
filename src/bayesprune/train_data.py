"""How `fit` iterates its data: tensors sliced directly, a Dataset or a DataLoader streamed,
and each process's share of a global batch under data-parallel training."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from . import distributed as dp
from .data.xy import InputsDataset
from .inputs import Inputs, as_inputs, map_inputs, rows, split_batch, take, tensors
from .validation import (
    check_input_dtype,
    required_inputs,
    to_model_dtype,
)


def iterate_batches(
    dataset: Dataset,
    batch_size: int,
    generator: torch.Generator,
    shuffle: bool,
    ctx: dp.DistContext = dp.LOCAL,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Mini-batches (this process's share of each global batch, see `dp.batch_indices`).

    Tensor data is sliced directly (much faster than a DataLoader).
    """
    if isinstance(dataset, TensorDataset | InputsDataset):
        x, y = (
            dataset.tensors
            if isinstance(dataset, TensorDataset)
            else (dataset.inputs, dataset.targets)
        )
        for idx in dp.batch_indices(
            rows(x), batch_size, generator, shuffle, ctx.rank, ctx.world_size
        ):
            yield take(x, idx), y[idx]
        return
    if ctx.active:
        n = len(dataset)  # type: ignore[arg-type]
        plan = dp.batch_indices(n, batch_size, generator, shuffle, ctx.rank, ctx.world_size)
        yield from DataLoader(dataset, batch_sampler=[idx.tolist() for idx in plan])
        return
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)
    yield from loader


def loader_batches(loader: Iterable[Any], model: nn.Module) -> Iterator[tuple[Inputs, Tensor]]:
    """(x, y) from each batch of a loader, x cast to the model's floating dtype (a tuple of
    inputs for a forward that takes several: batches ((a, b), y) or (a, b, y))."""
    reference = next(iter(model.parameters()), None)
    count = required_inputs(model)
    for batch in loader:
        if not (
            isinstance(batch, Mapping) or (isinstance(batch, tuple | list) and len(batch) >= 2)
        ):
            raise ValueError(
                f"each training batch must be an (x, y) pair or a dict with 'labels', got "
                f"{type(batch).__name__}; return (inputs, targets) from the Dataset or collate_fn"
            )
        inputs, targets = split_batch(batch, count)
        x, y = as_inputs(inputs, count, "train x"), torch.as_tensor(targets)

        def cast(t: Tensor) -> Tensor:
            check_input_dtype(t, "train x")
            return to_model_dtype(t, reference)

        yield map_inputs(x, cast), y


def loader_of(train: Any) -> Iterable[Any] | None:
    """`train` when it is a DataLoader or another re-iterable of batches, else None."""
    if isinstance(train, DataLoader):
        return train
    if isinstance(train, Dataset | tuple | list | Tensor | Mapping) or not isinstance(
        train, Iterable
    ):
        return None
    if iter(train) is train:
        raise ValueError(
            "train is a one-shot iterator (a generator?), which cannot serve several epochs; "
            "pass a DataLoader, a Dataset or an (X, y) pair"
        )
    return train


def loader_size(loader: Iterable[Any], dataset_size: int | None) -> int:
    """N for the KL scaling: `dataset_size`, else the loader's dataset's length."""
    if dataset_size is not None:
        return dataset_size
    try:
        return len(loader.dataset)  # type: ignore[attr-defined]
    except (AttributeError, TypeError):
        raise ValueError(
            "cannot tell the training set's size from this loader (no len(loader.dataset)), "
            "which the KL scaling needs; pass dataset_size=N"
        ) from None


def count_steps_per_epoch(
    loader: Iterable[Any] | None,
    n_train: int,
    batch_size: int,
    ctx: dp.DistContext,
    kl_warmup_epochs: float,
) -> int:
    """Optimiser steps per epoch (the KL warm-up counts in them)."""
    if loader is None:
        return max(1, math.ceil(dp.padded_length(n_train, ctx.world_size) / batch_size))
    try:
        return max(1, len(loader))  # type: ignore[arg-type]
    except TypeError:
        if kl_warmup_epochs > 0:
            raise ValueError(
                "kl_warmup_epochs counts steps per epoch, which this loader cannot tell (no "
                "len()); pass a DataLoader or set kl_warmup_epochs=0"
            ) from None
        return 1


def check_finite_batch(x: Inputs, step: int) -> None:
    if any(t.dtype.is_floating_point and not torch.isfinite(t).all() for t in tensors(x)):
        raise ValueError(
            f"a training batch (step {step}) contains NaN or inf inputs; "
            "clean the data set before training"
        )
