"""Per-channel parameters a `forward` reads itself (ConvNeXt's layer scale), sliced with
their channels, and their new shapes kept for `save_shrunk` / `load_shrunk`.

`x * self.layer_scale` with a C×1×1 parameter is no module, so no module spec records
that it lost channels. `shrink_graph` slices such a parameter (`graph_trace` finds it)
and writes its new shape under `PARAMETER_SHAPES` on the shrunk model; loading gives a
fresh instance's parameter that shape before the tensors are loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

PARAMETER_SHAPES = "bayesprune_parameter_shapes"
"""The attribute of a shrunk model holding {parameter name: shape} of every parameter
(or buffer) shrinking sliced."""


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent, _, attr = name.rpartition(".")
    return (model.get_submodule(parent) if parent else model), attr


def slice_parameter(model: nn.Module, name: str, idx: Tensor, dim: int) -> list[int]:
    """Keep entries `idx` of parameter or buffer `name` along `dim`; its new shape."""
    owner, attr = _owner(model, name)
    old = getattr(owner, attr)
    cut = old.detach().index_select(dim, idx.to(old.device)).clone()
    if isinstance(old, nn.Parameter):
        setattr(owner, attr, nn.Parameter(cut, old.requires_grad))
    else:
        owner.register_buffer(attr, cut, persistent=attr not in owner._non_persistent_buffers_set)
    _resized(owner, attr)
    return list(cut.shape)


def _resized(owner: nn.Module, attr: str) -> None:
    """Keep a module's own record of its width true (an embedding's `embedding_dim`)."""
    if isinstance(owner, nn.Embedding) and attr == "weight":
        owner.embedding_dim = owner.weight.shape[1]


def zero_entries(model: nn.Module, name: str, idx: list[int], dim: int) -> bool:
    """Zero entries `idx` along `dim` of parameter or buffer `name`; False when they
    were all 0 already (nothing changed)."""
    owner, attr = _owner(model, name)
    tensor = getattr(owner, attr)
    at = torch.tensor(idx, dtype=torch.long, device=tensor.device)
    if not bool(tensor.detach().index_select(dim, at).any()):
        return False
    with torch.no_grad():
        tensor.index_fill_(dim, at, 0.0)
    return True


def parameter_shapes(model: nn.Module) -> dict[str, list[int]]:
    """{name: shape} of the parameters shrinking sliced in `model` ({} when none)."""
    return {k: list(v) for k, v in (getattr(model, PARAMETER_SHAPES, None) or {}).items()}


def apply_parameter_shapes(model: nn.Module, shapes: Mapping[str, Any]) -> None:
    """Give `model`'s parameters the recorded shapes (untrained values, to be loaded);
    ValueError naming one the model lacks or that has another rank."""
    if not isinstance(shapes, Mapping):
        raise ValueError("the parameter shapes record is not a mapping of parameter names")
    for name, shape in shapes.items():
        if not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape):
            raise ValueError(f"the recorded shape of parameter {name!r} is damaged: {shape!r:.60}")
        try:
            owner, attr = _owner(model, name)
            old = getattr(owner, attr)
        except AttributeError as err:
            raise ValueError(
                f"the file reshapes parameter {name!r}, which the model lacks"
            ) from err
        if not isinstance(old, Tensor) or old.ndim != len(shape):
            raise ValueError(f"parameter {name!r} is not a tensor of {len(shape)} dims")
        new = torch.empty(shape, dtype=old.dtype, device=old.device)
        if isinstance(old, nn.Parameter):
            setattr(owner, attr, nn.Parameter(new, old.requires_grad))
        else:
            owner.register_buffer(
                attr, new, persistent=attr not in owner._non_persistent_buffers_set
            )
        _resized(owner, attr)
    if shapes:
        setattr(model, PARAMETER_SHAPES, {k: list(v) for k, v in shapes.items()})
