"""(X, y) in one shape: the data argument every entry point accepts, read in one place.

`fit`, the evaluation scorer, the feature screen and model selection all take a
torch Dataset, an (X, y) pair of tensors or array-likes, or a DataLoader; these two
functions turn any of them into what the code below needs: a Dataset to batch from
(`as_dataset`) or the two whole tensors (`as_xy`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

DataLike = Dataset | tuple[Any, Any] | Sequence[Any]


def _to_tensor(value: Any, what: str) -> Tensor:
    if isinstance(value, Tensor):
        return value
    try:
        return torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be a tensor or array-like, got {type(value)}") from err


def _checked_pair(data: Any, what: str) -> tuple[Tensor, Tensor]:
    """(X, y) as tensors of equal length, inputs free of NaN/inf."""
    if not (isinstance(data, tuple | list) and len(data) == 2):
        raise ValueError(f"{what} must be a torch Dataset or an (X, y) pair, got {type(data)}")
    x, y = _to_tensor(data[0], f"{what} X"), _to_tensor(data[1], f"{what} y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{what}: X has {x.shape[0]} rows but y has {y.shape[0]}; they must match")
    for tensor, name in ((x, "X"), (y, "y")):
        if tensor.dtype.is_floating_point and not torch.isfinite(tensor).all():
            bad = (~torch.isfinite(tensor.reshape(tensor.shape[0], -1))).any(1).nonzero()
            rows = bad[:5, 0].tolist()
            raise ValueError(
                f"{what} {name} contains NaN or inf in {len(bad)} rows (first: {rows}); "
                "remove or impute those rows before training"
            )
    return x, y


def as_dataset(data: DataLike, what: str = "train") -> Dataset:
    """A Dataset from a Dataset or an (X, y) pair, with inputs checked for NaN/inf.

    float64 inputs become float32 (the layers' dtype); `what` names the data in errors.
    """
    if isinstance(data, Dataset):
        return data
    x, y = _checked_pair(data, what)
    return TensorDataset(x.float() if x.dtype == torch.float64 else x, y)


def as_xy(data: DataLike | DataLoader, what: str = "data") -> tuple[Tensor, Tensor]:
    """The whole inputs and targets as two tensors (batch first).

    A TensorDataset or an (X, y) pair gives its tensors without a copy; any other
    Dataset, or a DataLoader, is read once, example by example or batch by batch,
    and stacked (so it must fit in memory). Dtypes are kept (`predict` casts the
    inputs to the model's).
    """
    if isinstance(data, DataLoader):
        batches = [(b[0], b[1]) for b in data]
        if not batches:
            raise ValueError(f"{what}: the DataLoader yields no batches")
        return torch.cat([x for x, _ in batches]), torch.cat(
            [torch.as_tensor(y) for _, y in batches]
        )
    if not isinstance(data, Dataset):
        return _checked_pair(data, what)
    tensors = getattr(data, "tensors", None)
    if tensors is not None:
        if len(tensors) != 2:
            raise ValueError(f"{what}: a TensorDataset of (X, y) is needed, got {len(tensors)}")
        return tensors[0], tensors[1]
    items = [data[i] for i in range(len(data))]  # type: ignore[arg-type]
    if not items:
        raise ValueError(f"{what}: the Dataset is empty")
    x = torch.stack([torch.as_tensor(item[0]) for item in items])
    return x, torch.stack([torch.as_tensor(item[1]) for item in items])
