"""Where a tensor's channel axis goes through the ops that move or merge axes.

`graph_trace` gives each traced node a list of channel ids along one axis: dim 1 for
convolutional maps and plain feature matrices, the last axis for tokens (B × T × C, a
transformer's MLP) and channels-last maps (B × H × W × C after ConvNeXt's permute), where
an nn.Linear reads its columns. These rules say where that axis is after a reshape,
flatten, permute / transpose, reduction or index, and how the ids repeat when the
channels are merged with positions; `None` means the op fixes the channel count in the
forward's code (or mixes channels), so the channels it touches are pinned.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import fx

Axis = int
"""A non-negative axis index."""

_PERMUTE = {torch.permute}
_PERMUTE_METHODS = {"permute"}
_TRANSPOSE = {torch.transpose, torch.swapaxes, torch.swapdims}
_TRANSPOSE_METHODS = {"transpose", "swapaxes", "swapdims"}


def view_sizes(node: fx.Node) -> list[Any]:
    """The new shape of `view` / `reshape` as a flat list (sizes may be fx nodes)."""
    sizes = list(node.args[1:]) or [node.kwargs.get("shape", ())]
    if len(sizes) == 1 and isinstance(sizes[0], tuple | list):
        sizes = list(sizes[0])
    return sizes


def _computed(size: Any) -> bool:
    """-1 or a value of the forward (`x.size(0)`): not a channel count written in the code."""
    return size == -1 or isinstance(size, fx.Node)


def size_follows(node: fx.Node, position: int) -> bool:
    """The size at `position` of a `view` / `reshape` is computed, not a constant.

    A constant there (`x.view(-1, 16 * 5 * 5)`, `x.reshape(n, 768, -1)`) fixes the
    channel count in the forward's code: the reshape then pins its channels. A graph
    traced with values holds every size as a number; one the forward read off a tensor
    is marked in the node's `read_sizes` and counts as computed.
    """
    sizes = view_sizes(node)
    if len(sizes) <= 1 or not -len(sizes) <= position < len(sizes):
        return False
    read = position % len(sizes) in node.meta.get("read_sizes", {})  # `bayesprune.tracing`
    return read or _computed(sizes[position])


def reshaped(
    ids: list[int], axis: Axis, in_shape: torch.Size, out_shape: torch.Size
) -> tuple[list[int], Axis] | None:
    """Ids and axis after a reshape whose shapes are `in_shape` → `out_shape`, or None.

    - the same shape: unchanged;
    - channels on dim 1, the positions after them merged (B×C×H×W → B×C·H·W, a flatten
      before a Linear): each channel's id repeats over its H·W block (channel-major);
    - channels on dim 1, the positions after them merged but kept apart from the
      channels (B×C×H×W → B×C×H·W, a patch embedding before its transpose): unchanged;
    - channels last, the leading axes merged or split (B×H×W×C → B×H·W×C, B×T×C →
      B·T×C and back): unchanged, still last;
    - channels last, everything after the batch merged (B×T×C → B×T·C): the ids repeat
      once per position (position-major); so do trailing axes merged into the channels'
      (Swin's patch merging: B×H×W×2×2×C → B×H×W×4C).
    """
    in_shape, out_shape = tuple(in_shape), tuple(out_shape)
    if out_shape == in_shape:
        return ids, axis
    last = len(in_shape) - 1
    if axis == 1 and len(in_shape) > 2:
        block = math.prod(in_shape[2:])
        if out_shape == (in_shape[0], in_shape[1] * block):
            return [i for i in ids for _ in range(block)], 1
        if len(out_shape) > 2 and out_shape[:2] == in_shape[:2]:
            return ids, 1
    if axis == last == 1 and len(out_shape) > 2 and out_shape[-1] == in_shape[-1]:
        return ids, len(out_shape) - 1  # tokens flattened with the batch, split back
    if axis == last and axis > 1:
        if len(out_shape) >= 2 and out_shape[-1] == in_shape[-1]:
            return ids, len(out_shape) - 1
        if out_shape == (in_shape[0], math.prod(in_shape[1:])):
            return ids * math.prod(in_shape[1:-1]), 1
        for k in range(2, len(in_shape) - 1):  # trailing axes merged into the channels'
            if out_shape == (*in_shape[:k], math.prod(in_shape[k:])):
                return ids * math.prod(in_shape[k:-1]), k
    return None


def permuted(node: fx.Node, axis: Axis, ndim: int) -> Axis | None:
    """The channel axis after `permute` / `transpose`, or None for other ops."""
    if node.op == "call_method" and node.target in _PERMUTE_METHODS:
        dims = node.args[1:]
        if len(dims) == 1 and isinstance(dims[0], tuple | list):
            dims = dims[0]
    elif node.op == "call_function" and node.target in _PERMUTE:
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dims")
    elif (node.op == "call_method" and node.target in _TRANSPOSE_METHODS) or (
        node.op == "call_function" and node.target in _TRANSPOSE
    ):
        if len(node.args) < 3 or not all(isinstance(d, int) for d in node.args[1:3]):
            return None
        a, b = (d % ndim for d in node.args[1:3])
        return b if axis == a else a if axis == b else axis
    else:
        return None
    if not isinstance(dims, tuple | list) or not all(isinstance(d, int) for d in dims):
        return None
    order = [d % ndim for d in dims]
    return order.index(axis) if sorted(order) == list(range(ndim)) else None


def reduced(dim: Any, keepdim: bool, axis: Axis, ndim: int) -> Axis | None:
    """The channel axis after a reduction (mean / sum / amax…) over `dim`, or None when
    it reduces the batch or the channels (or everything)."""
    if dim is None:
        return None
    dims = {d % ndim for d in ([dim] if isinstance(dim, int) else dim)}
    if 0 in dims or axis in dims:
        return None
    return axis if keepdim else axis - sum(d < axis for d in dims)


def indexed(index: Any, axis: Axis) -> Axis | None:
    """The channel axis after `x[index]` when the index leaves the channels whole.

    For channels after dim 1 (tokens): `x[:, 0]` (a class token) and `x[:, 1:]` pick
    positions, so the channels pass and move left by one per integer index. Every entry
    from the channel axis on must be `:`; the batch must be kept whole.
    """
    if axis < 2 or not isinstance(index, tuple) or not index or Ellipsis in index:
        return None
    if index[0] != slice(None):
        return None
    before, after = index[1:axis], index[axis:]
    if not all(isinstance(e, int) or _position_slice(e) for e in before):
        return None
    if not all(e == slice(None) for e in after):
        return None
    return axis - sum(isinstance(e, int) for e in before)


def _position_slice(e: Any) -> bool:
    """A slice of positions: its bounds may be values of the forward (`x[:, :H, :W]`)."""
    return isinstance(e, slice) and all(
        isinstance(b, int | fx.Node | None) for b in (e.start, e.stop, e.step)
    )


def _plain_slice(e: Any) -> bool:
    return isinstance(e, slice) and all(
        isinstance(b, int | None) for b in (e.start, e.stop, e.step)
    )
