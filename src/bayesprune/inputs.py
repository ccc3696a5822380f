"""A model's inputs: one tensor, a tuple of them for a `forward` that takes several, or
a dict of them by name.

`fit`, `predict` and `evaluate` pass each batch's inputs to `forward` positionally; a
model whose `forward(self, image, table)` requires two tensors gets a tuple of two
(`validation.required_inputs` counts them). Data for such a model carries the inputs
as a tuple: ``((X_image, X_table), y)`` for tensors or arrays, and a DataLoader's
batches as ``((image, table), y)`` (a Dataset returning ``((a, b), y)``, batched by
torch's default collate) or flat, ``(image, table, y)``. Inputs by name go in by
keyword, ``model(**x)``: ``(X_dict, y)`` with X_dict a tokenizer's output, or a
DataLoader of dicts whose targets are under ``"labels"`` (or ``"label"``), as Hugging
Face's collators give them. These helpers are what the data code does with any kind,
so one path serves all.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

Inputs = Tensor | tuple[Tensor, ...] | dict[str, Tensor]

TARGET_KEYS = ("labels", "label")
"""Where a batch by name holds its targets (Hugging Face's collators: "labels")."""


class StoredBatches:
    """Batches by name read once from a loader and kept, for inputs padded to a
    different length in each batch (Hugging Face's `DataCollatorWithPadding`), which
    cannot be joined: `predict` takes them as it takes a loader, in the same order as
    the targets read beside them, and `rows` / `take` count and select their rows as
    they do a tensor's (a validation split cut in halves)."""

    def __init__(self, batches: list[dict[str, Tensor]]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    def rows(self) -> int:
        return sum(rows(b) for b in self.batches)

    def take(self, index: Any) -> StoredBatches:
        """The rows `index` (a slice, or positions) in its order; consecutive rows of one
        batch stay one batch, so each piece keeps its own padding."""
        positions = torch.arange(self.rows())[index].reshape(-1).tolist()
        starts = np.cumsum([0] + [rows(b) for b in self.batches])
        pieces: list[dict[str, Tensor]] = []
        run: list[int] = []
        for at in positions:
            if run and (_batch_of(starts, at) != _batch_of(starts, run[-1]) or at != run[-1] + 1):
                pieces.append(self._piece(starts, run))
                run = []
            run.append(at)
        if run:
            pieces.append(self._piece(starts, run))
        return StoredBatches(pieces)

    def labelled(self, targets: Tensor) -> list[dict[str, Tensor]]:
        """The batches with their rows of `targets` under "labels" (a loader's batches)."""
        labelled, start = [], 0
        for batch in self.batches:
            labelled.append({**batch, "labels": targets[start : start + rows(batch)]})
            start += rows(batch)
        return labelled

    def _piece(self, starts: np.ndarray, run: list[int]) -> dict[str, Tensor]:
        b = _batch_of(starts, run[0])
        first = run[0] - int(starts[b])
        return {k: t[first : first + len(run)] for k, t in self.batches[b].items()}


def _batch_of(starts: np.ndarray, position: int) -> int:
    return int(np.searchsorted(starts, position, side="right")) - 1


def tensors(x: Inputs | StoredBatches) -> Iterator[Tensor]:
    """Each input tensor (of every batch, for stored batches)."""
    if isinstance(x, StoredBatches):
        for batch in x:
            yield from batch.values()
        return
    if isinstance(x, dict):
        yield from x.values()
        return
    yield from (x if isinstance(x, tuple) else (x,))


def rows(x: Inputs | StoredBatches) -> int:
    """The batch size (every input has it)."""
    if isinstance(x, StoredBatches):
        return x.rows()
    return len(next(tensors(x)))


def take(x: Inputs | StoredBatches, index: Any) -> Inputs | StoredBatches:
    """The rows `index` (a slice or an index tensor) of every input."""
    if isinstance(x, StoredBatches):
        return x.take(index)
    return map_inputs(x, lambda t: t[index])


def to_device(x: Inputs, device: torch.device | str) -> Inputs:
    return map_inputs(x, lambda t: t.to(device))


def map_inputs(x: Inputs, fn: Any) -> Inputs:
    """`fn` applied to each input tensor."""
    if isinstance(x, dict):
        return {k: fn(t) for k, t in x.items()}
    return tuple(fn(t) for t in x) if isinstance(x, tuple) else fn(x)


def as_inputs(value: Any, count: int, what: str) -> Inputs:
    """`value` as the inputs of a forward taking `count` tensors: a tensor for one, a
    tuple of `count` tensors with the same number of rows for several; a mapping of
    names to tensors (any count: the names say where each goes); stored batches as
    they are."""
    if isinstance(value, StoredBatches):
        return value  # type: ignore[return-value]
    if isinstance(value, Mapping):
        return _named(value, what)
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


def _named(value: Mapping[str, Any], what: str) -> dict[str, Tensor]:
    """A mapping of inputs by name as tensors with one row per example each."""
    if not value:
        raise ValueError(f"{what} is an empty mapping; give the forward's inputs by name")
    named = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise ValueError(f"{what}: input names must be strings, got {key!r}")
        try:
            named[key] = to_tensor(item, f"{what}[{key!r}]")
        except ValueError as err:
            raise ValueError(
                f"{err}; drop that entry (a text column: remove it before batching)"
            ) from None
    lengths = {k: len(t) if t.ndim else 0 for k, t in named.items()}
    if len(set(lengths.values())) > 1 or 0 in lengths.values():
        raise ValueError(
            f"{what}: the inputs by name have {lengths} rows; every input needs one row per example"
        )
    return named


def split_batch(batch: Any, count: int) -> tuple[Any, Any]:
    """(inputs, targets) of a loader's batch: ``(x, y)``, ``((x1, x2), y)`` or, for a
    forward of several inputs, flat ``(x1, x2, y)``; a dict by name, its targets under
    one of `TARGET_KEYS`."""
    if isinstance(batch, Mapping):
        return split_named(batch)
    if not isinstance(batch, tuple | list) or len(batch) < 2:
        raise ValueError(
            f"each batch must be an (inputs, targets) pair, got {type(batch).__name__}; return "
            "(inputs, targets) from the Dataset or collate_fn"
        )
    if count > 1 and not isinstance(batch[0], tuple | list) and len(batch) > count:
        return tuple(batch[:count]), batch[count]
    return batch[0], batch[1]


def split_named(batch: Mapping[str, Any]) -> tuple[dict[str, Any], Any]:
    """(inputs, targets) of a batch by name: every entry but the targets, which are under
    "labels" or "label"."""
    found = [k for k in TARGET_KEYS if k in batch]
    if not found:
        raise ValueError(
            f"a batch by name must hold its targets under 'labels' (or 'label'), got the keys "
            f"{sorted(batch)}"
        )
    return {k: v for k, v in batch.items() if k not in TARGET_KEYS}, batch[found[0]]


def without_targets(batch: Any) -> Any:
    """A batch by name without its targets (what `predict` gives the forward); any other
    batch as it is."""
    if isinstance(batch, Mapping):
        return {k: v for k, v in batch.items() if k not in TARGET_KEYS}
    return batch


def to_tensor(value: Any, what: str) -> Tensor:
    """`value` as a tensor (arrays and nested lists through numpy); `what` names it in
    the error."""
    if isinstance(value, Tensor):
        return value
    try:
        return torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be a tensor or array-like, got {type(value)}") from err
