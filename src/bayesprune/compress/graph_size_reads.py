"""Sizes a forward reads off a channel axis (`B, N, C = x.shape`): they change with it.

Reading a size reads no channel values, so it pinned nothing. But once channels go, the
size read is the new count, and a forward that gives it to another tensor breaks:
MaxViT's attention reshapes its output, H · d wide, with the width of its input
(`out.reshape(B, G, P, D)`, D from `x.shape`), and so does timm's (`reshape(B, N, C)`).
While the LayerNorms over those streams pinned them this never showed; now that they
follow their channels (`layer_norm`), `pin_size_reads` pins the channels of x wherever
such a size goes anywhere but a view / reshape of a tensor with the same channels at the
same place (`x.view(b, c)` after pooling x: the size follows), or a new tensor of that
width whose channels are the same (`torch.zeros((n, c))`, into which the channels are
then added). It also pins them where the size feeds arithmetic, which no slice would
follow.
"""

from __future__ import annotations

import builtins
import operator
from typing import TYPE_CHECKING

import torch
from torch import Tensor, fx

from ..tracing import FACTORIES, factory_shape
from .graph_axes import view_sizes

if TYPE_CHECKING:
    from .graph_trace import ChannelGraph

_VIEWS = {torch.reshape, "view", "reshape"}


def pin_size_reads(cg: ChannelGraph) -> None:
    """Pin the channels of every tensor whose channel count the forward reads and uses
    other than as the same channels' size in a view (module docstring)."""
    for node in cg.gm.graph.nodes:
        source = channel_size_of(cg, node)
        if source is None:
            continue
        ids = cg.ids[source]
        groups = [cg.find(i) for i in ids]
        if all(_follows(cg, user, node, groups) for user in node.users):
            continue
        why = f"its width read by {node.op} {node.name!r} and used as another tensor's size"
        cg.pin(ids, why)


def channel_size_of(cg: ChannelGraph, node: fx.Node) -> fx.Node | None:
    """The tensor whose channel count `node` is (`x.size(1)`, `x.shape[-1]`, an entry of
    `x.size()`), else None."""
    if node.op == "call_method" and node.target == "size" and len(node.args) == 2:
        source, dim = node.args
    elif node.op == "call_function" and node.target is operator.getitem:
        whole, dim = node.args
        if not isinstance(whole, fx.Node) or not _whole_shape(whole):
            return None
        source = whole.args[0]
    else:
        return None
    if not isinstance(source, fx.Node) or source not in cg.ids or not isinstance(dim, int):
        return None
    value = cg.values.get(source)
    if not isinstance(value, Tensor) or not -value.ndim <= dim < value.ndim:
        return None
    return source if dim % value.ndim == cg.axis[source] else None


def _whole_shape(node: fx.Node) -> bool:
    """`x.shape` or `x.size()`."""
    if node.op == "call_function" and node.target is builtins.getattr:
        return len(node.args) == 2 and node.args[1] == "shape"
    return node.op == "call_method" and node.target == "size" and len(node.args) == 1


def _follows(cg: ChannelGraph, user: fx.Node, size: fx.Node, groups: list[int]) -> bool:
    """`user` is a view / reshape, or a new tensor (`torch.zeros((n, size))`), putting
    `size` where its output's channels are, and those are the same channels (`groups`)."""
    if user not in cg.ids:
        return False
    if user.op == "call_function" and user.target in FACTORIES:
        sizes = factory_shape(user.target, user.args, user.kwargs)
    elif user.target in _VIEWS:
        sizes = view_sizes(user)
    else:
        return False
    out = cg.values.get(user)
    if not isinstance(out, Tensor) or len(sizes) != out.ndim or size not in sizes:
        return False
    if sizes.index(size) != cg.axis[user]:
        return False
    return [cg.find(i) for i in cg.ids[user]] == groups
