"""(X, y) in one shape: the data argument every entry point accepts, read in one place.

`fit`, the evaluation scorer, the feature screen and model selection all take a
torch Dataset, an (X, y) pair of tensors or array-likes, or a DataLoader; these two
functions turn any of them into what the code below needs: a Dataset to batch from
(`as_dataset`) or the two whole tensors (`as_xy`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ..inputs import (
    Inputs,
    StoredBatches,
    as_inputs,
    map_inputs,
    rows,
    split_batch,
    take,
    tensors,
    to_tensor,
)

DataLike = Dataset | tuple[Any, Any] | Sequence[Any]


class InputsDataset(Dataset):
    """Examples of a model with several inputs: ``((x1, x2, ...), y)`` per row, or
    ``({name: x}, y)`` for inputs by name (torch's default collate batches either)."""

    def __init__(self, inputs: tuple[Tensor, ...] | dict[str, Tensor], targets: Tensor) -> None:
        self.inputs, self.targets = inputs, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Inputs, Tensor]:
        return take(self.inputs, i), self.targets[i]


def _checked_pair(data: Any, what: str, inputs: int = 1) -> tuple[Inputs, Tensor]:
    """(X, y) as tensors of equal length, inputs free of NaN/inf; X a tuple of `inputs`
    tensors for a forward that takes several."""
    if not (isinstance(data, tuple | list) and len(data) == 2):
        raise ValueError(f"{what} must be a torch Dataset or an (X, y) pair, got {type(data)}")
    x, y = as_inputs(data[0], inputs, f"{what} X"), to_tensor(data[1], f"{what} y")
    if rows(x) != y.shape[0]:
        raise ValueError(f"{what}: X has {rows(x)} rows but y has {y.shape[0]}; they must match")
    if isinstance(x, dict):
        named = [(t, f"X[{k!r}]") for k, t in x.items()]
    else:
        named = [(t, "X" if inputs == 1 else f"X[{i}]") for i, t in enumerate(tensors(x))]
    for tensor, name in (*named, (y, "y")):
        if tensor.dtype.is_floating_point and not torch.isfinite(tensor).all():
            bad = (~torch.isfinite(tensor.reshape(tensor.shape[0], -1))).any(1).nonzero()
            first = bad[:5, 0].tolist()
            raise ValueError(
                f"{what} {name} contains NaN or inf in {len(bad)} rows (first: {first}); "
                "remove or impute those rows before training"
            )
    return x, y


def _held(held: Sequence[Tensor], what: str, inputs: int) -> tuple[Inputs, Tensor]:
    """(X, y) of a TensorDataset's tensors: (X, y), or (X_1, …, X_inputs, y) for a
    forward that takes several inputs."""
    if len(held) != inputs + 1:
        layout = (
            "(X, y)" if inputs == 1 else f"({', '.join(f'X_{i + 1}' for i in range(inputs))}, y)"
        )
        raise ValueError(
            f"{what}: a TensorDataset of {layout} is needed (the model's forward takes "
            f"{inputs} tensor(s)), got one of {len(held)} tensors"
        )
    x = held[0] if inputs == 1 else tuple(held[:inputs])
    return x, held[inputs]


def as_dataset(data: DataLike, what: str = "train", inputs: int = 1) -> Dataset:
    """A Dataset from a Dataset or an (X, y) pair, with inputs checked for NaN/inf.

    float64 inputs become float32 (the layers' dtype); `what` names the data in errors.
    With `inputs` > 1, X is a tuple of that many inputs (an `InputsDataset`).
    """
    if isinstance(data, TensorDataset):
        x, y = _held(data.tensors, what, inputs)
        return InputsDataset(x, y) if isinstance(x, tuple) else data
    if isinstance(data, Dataset):
        return data
    x, y = _checked_pair(data, what, inputs)
    x = map_inputs(x, lambda t: t.float() if t.dtype == torch.float64 else t)
    return InputsDataset(x, y) if isinstance(x, tuple | dict) else TensorDataset(x, y)


def validation_data(data: DataLike | DataLoader, inputs: int = 1) -> Dataset | DataLoader:
    """`fit`'s validation data: a DataLoader as it is, anything else as `as_dataset`
    gives it, except stored batches padded apart with their targets (the halves
    `choose_restoration` cuts a loader's batches into), which stay batches: a loader of
    them, each with its targets under "labels"."""
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, tuple | list) and len(data) == 2 and isinstance(data[0], StoredBatches):
        x, y = _checked_pair(data, "val", inputs)
        return DataLoader(x.labelled(y), batch_size=None)  # type: ignore[union-attr]
    return as_dataset(data, "val", inputs)


def as_xy(
    data: DataLike | DataLoader, what: str = "data", inputs: int = 1, ragged: bool = False
) -> tuple[Inputs, Tensor]:
    """The whole inputs and targets (batch first): two tensors, or with `inputs` > 1 a
    tuple of that many input tensors and the targets.

    A TensorDataset, an `InputsDataset` or an (X, y) pair gives its tensors without a
    copy; any other Dataset, or a DataLoader, is read once, example by example or batch
    by batch, and stacked (so it must fit in memory). Dtypes are kept (`predict` casts
    the inputs to the model's). With `ragged`, a loader of batches by name padded to a
    different length in each batch gives its inputs as `StoredBatches` (for `predict`)
    instead of an error.
    """
    if isinstance(data, DataLoader):
        batches = [split_batch(b, inputs) for b in data]
        if not batches:
            raise ValueError(f"{what}: the DataLoader yields no batches")
        xs = [as_inputs(x, inputs, f"{what} inputs") for x, _ in batches]
        y = torch.cat([torch.as_tensor(y) for _, y in batches])
        if isinstance(xs[0], dict):
            if ragged and _uneven(xs):  # type: ignore[arg-type]
                return StoredBatches(xs), y  # type: ignore[arg-type, return-value]
            return _joined(xs, what), y  # type: ignore[arg-type]
        if inputs == 1:
            return torch.cat(xs), y  # type: ignore[arg-type]
        return tuple(torch.cat([x[i] for x in xs]) for i in range(inputs)), y  # type: ignore[index]
    if isinstance(data, InputsDataset):
        return data.inputs, data.targets
    if not isinstance(data, Dataset):
        return _checked_pair(data, what, inputs)
    held = getattr(data, "tensors", None)
    if held is not None:
        return _held(held, what, inputs)
    items = [data[i] for i in range(len(data))]  # type: ignore[arg-type]
    if not items:
        raise ValueError(f"{what}: the Dataset is empty")
    y = torch.stack([torch.as_tensor(item[1]) for item in items])
    if isinstance(items[0][0], Mapping):
        rows_by_name = [as_inputs(item[0], inputs, f"{what} inputs") for item in items]
        return {k: torch.stack([r[k] for r in rows_by_name]) for k in rows_by_name[0]}, y  # type: ignore[index]
    if inputs == 1:
        return torch.stack([torch.as_tensor(item[0]) for item in items]), y
    parts = [as_inputs(item[0], inputs, f"{what} inputs") for item in items]
    return tuple(torch.stack([p[i] for p in parts]) for i in range(inputs)), y  # type: ignore[index]


def _uneven(batches: list[dict[str, Tensor]]) -> bool:
    """Whether some input has other sizes past the rows in another batch."""
    return any(len({tuple(b[k].shape[1:]) for b in batches if k in b}) > 1 for k in batches[0])


def _joined(batches: list[dict[str, Tensor]], what: str) -> dict[str, Tensor]:
    """Batches by name as one set of inputs: each name's rows concatenated; every batch
    must name the same inputs with the same sizes past the rows (padded alike)."""
    names = list(batches[0])
    if any(list(b) != names for b in batches):
        raise ValueError(f"{what}: the batches name different inputs; give each the same names")
    joined = {}
    for name in names:
        shapes = {tuple(b[name].shape[1:]) for b in batches}
        if len(shapes) > 1:
            raise ValueError(
                f"{what}: input {name!r} has sizes {sorted(shapes)} past the rows in different "
                "batches, so they cannot be read as one set; pad every batch to one length "
                "(a tokenizer's padding='max_length')"
            )
        joined[name] = torch.cat([b[name] for b in batches])
    return joined
