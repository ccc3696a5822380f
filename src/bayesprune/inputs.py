"""A model's inputs: one tensor, or a tuple of them for a `forward` that takes several.

`fit`, `predict` and `evaluate` pass each batch's inputs to `forward` positionally; a
model whose `forward(self, image, table)` requires two tensors gets a tuple of two
(`validation.required_inputs` counts them). Data for such a model carries the inputs
as a tuple: ``((X_image, X_table), y)`` for tensors or arrays, and a DataLoader's
batches as ``((image, table), y)`` (a Dataset returning ``((a, b), y)``, batched by
torch's default collate) or flat, ``(image, table, y)``. These helpers are what the
data code does with either kind, so one path serves both.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

Inputs = Tensor | tuple[Tensor, ...]


def tensors(x: Inputs) -> Iterator[Tensor]:
    """Each input tensor."""
    yield from (x if isinstance(x, tuple) else (x,))


def rows(x: Inputs) -> int:
    """The batch size (every input has it)."""
    return len(x[0]) if isinstance(x, tuple) else len(x)


def take(x: Inputs, index: Any) -> Inputs:
    """The rows `index` (a slice or an index tensor) of every input."""
    return tuple(t[index] for t in x) if isinstance(x, tuple) else x[index]


def to_device(x: Inputs, device: torch.device | str) -> Inputs:
    return tuple(t.to(device) for t in x) if isinstance(x, tuple) else x.to(device)


def map_inputs(x: Inputs, fn: Any) -> Inputs:
    """`fn` applied to each input tensor."""
    return tuple(fn(t) for t in x) if isinstance(x, tuple) else fn(x)


def as_inputs(value: Any, count: int, what: str) -> Inputs:
    """`value` as the inputs of a forward taking `count` tensors: a tensor for one, a
    tuple of `count` tensors with the same number of rows for several."""
    if count == 1:
        return to_tensor(value, what)
    if not (isinstance(value, tuple | list) and len(value) == count):
        raise ValueError(
            f"{what} must hold {count} inputs: the model's forward takes {count} tensors, so "
            f"pass a tuple of {count} inputs (batch first), e.g. ((X_a, X_b), y) to fit or "
            f"(X_a, X_b) to predict; got {type(value).__name__}"
        )
    parts = tuple(to_tensor(v, f"{what}[{i}]") for i, v in enumerate(value))
    if len({len(t) for t in parts}) > 1:
        raise ValueError(
            f"{what}: the inputs have {[len(t) for t in parts]} rows; every input needs one "
            "row per example"
        )
    return parts


def split_batch(batch: Any, count: int) -> tuple[Any, Any]:
    """(inputs, targets) of a loader's batch: ``(x, y)``, ``((x1, x2), y)`` or, for a
    forward of several inputs, flat ``(x1, x2, y)``."""
    if not isinstance(batch, tuple | list) or len(batch) < 2:
        raise ValueError(
            f"each batch must be an (inputs, targets) pair, got {type(batch).__name__}; return "
            "(inputs, targets) from the Dataset or collate_fn"
        )
    if count > 1 and not isinstance(batch[0], tuple | list) and len(batch) > count:
        return tuple(batch[:count]), batch[count]
    return batch[0], batch[1]


def to_tensor(value: Any, what: str) -> Tensor:
    """`value` as a tensor (arrays and nested lists through numpy); `what` names it in
    the error."""
    if isinstance(value, Tensor):
        return value
    try:
        return torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be a tensor or array-like, got {type(value)}") from err
