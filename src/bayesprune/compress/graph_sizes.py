"""Split sizes that a module's attribute holds: `torch.split(x, self.splits, 1)`.

A split's sizes are constants of the traced forward, so shrinking the channels it cuts
would leave the forward asking for the old sizes: the channels were pinned. When the
sizes come from a plain attribute of the module whose `forward` splits (timm's
MixedConv2d: `self.splits`, the channels of each kernel size; Res2Net's bottleneck:
`self.width`, one size repeated), `shrink_graph` rewrites that attribute with the layers:

- a list of sizes: each piece is a range of channels that may lose any of them (at least
  one stays per piece); the attribute becomes the number each piece keeps;
- one int size repeated over equal pieces: position p of every piece goes together, as
  for `chunk`, so the pieces stay equal; the attribute becomes the size they keep;
- equal pieces whose size `forward` computes from an attribute holding the whole width
  (CSPNet: `x.split(self.expand_chs // 2, 1)`): as above, the attribute becomes the
  width kept (the size per piece times the pieces).

The attribute is found by value among the module's own plain attributes (exactly one
must hold the sizes, else exactly one the width) and proven by tracing the model again
with that attribute changed: the split must then ask for the sizes the change implies
(one more channel per piece). Anything else (other arithmetic in `forward`, a value two
attributes hold, a module whose split runs twice) pins the channels, as before. The
rewritten attributes travel with the shrunk model (`SHAPE_ATTRIBUTES`), so `save_shrunk`
/ `load_shrunk` restore them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import torch
from torch import fx, nn

from .graph_axes import view_sizes

if TYPE_CHECKING:
    from .graph_trace import ChannelGraph

SHAPE_ATTRIBUTES = "bayesprune_shape_attributes"
"""The attribute of a shrunk model holding {module name: {attribute: value}} of every
size attribute shrinking rewrote (`shape_attributes`)."""

_SPLIT = {torch.split}
_SPLIT_METHODS = {"split"}


@dataclass
class SizedCall:
    """A split whose sizes an attribute of the splitting module holds, or (`position`) a
    view / reshape whose channel-bearing size it holds (`x.view(-1, self.width)`)."""

    node: str  # the fx node's name (the same in every trace of the same model)
    owner: str  # the splitting module's name in the traced model ("" for the model)
    attribute: str
    sizes: int | list[int] | tuple[int, ...]  # the split's sizes
    pieces: list[list[int]]  # the channel ids of each piece
    total: bool = False  # the attribute holds the whole width (CSPNet: `self.expand_chs // 2`)
    position: int | None = None  # a view's: which of its sizes (its ids: the one piece)
    whole: bool = False  # a view's: the attribute holds all its sizes (`view(self.shape)`)

    def read(self, node: fx.Node) -> Any:
        """What the call asks for, in a trace: the split's sizes, or the view's size."""
        return _split_sizes(node) if self.position is None else view_sizes(node)[self.position]

    def value(self, kept: Callable[[int], bool]) -> int | list[int] | tuple[int, ...]:
        """The attribute's value for the channels `kept` leaves (a view: its entries kept,
        a channel's id repeated over the positions it carries)."""
        counts = [sum(1 for i in piece if kept(i)) for piece in self.pieces]
        if self.whole and isinstance(self.sizes, list | tuple):
            at = self.position
            return type(self.sizes)(counts[0] if i == at else n for i, n in enumerate(self.sizes))
        if self.total:
            return counts[0] * len(self.pieces)
        if isinstance(self.sizes, int):
            return counts[0]  # equal pieces (their positions are united)
        return type(self.sizes)(counts)

    def probe(self, held: Any) -> tuple[Any, Any]:
        """Another value for the attribute (which holds `held`), and the sizes the split
        must then ask for: one more channel in the first piece (in each, for equal ones)."""
        if self.whole:
            at = self.position
            return type(held)(n + 1 if i == at else n for i, n in enumerate(held)), held[at] + 1
        if self.total:
            return held + len(self.pieces), self.sizes + 1
        if isinstance(held, int):
            return held + 1, held + 1
        changed = type(held)([held[0] + 1, *held[1:]])
        return changed, changed


def _owner(node: fx.Node) -> str:
    """The innermost module whose forward issued `node` ("" for the traced model's own);
    fx names a module's later calls "name@1", "name@2"…: the same module."""
    stack = node.meta.get("nn_module_stack") or {}
    return next(reversed(stack.keys()), "").split("@")[0] if stack else ""


def _holder(module: nn.Module, sizes: Any, width: int) -> tuple[str, bool] | None:
    """The one plain attribute of `module` equal to `sizes`, else the one equal to the
    split's whole `width` when it splits into equal pieces (`self.expand_chs // 2`):
    (its name, whether it is the width); None when there is none or more than one."""

    def named(value: Any) -> list[str]:
        return [k for k, v in vars(module).items() if not k.startswith("_") and _equal(v, value)]

    names = named(sizes)
    if not names and isinstance(sizes, int) and width and width % sizes == 0 and width > sizes:
        totals = named(width)
        return (totals[0], True) if len(totals) == 1 else None
    return (names[0], False) if len(names) == 1 else None


def split_pieces(cg: ChannelGraph, node: fx.Node, first: tuple[list[int], int] | None) -> bool:
    """Read a split of the channel axis whose sizes an attribute holds (module docstring);
    False for any other node (the caller then pins a split)."""
    if first is None or cg.root is None:
        return False
    if not (
        (node.op == "call_function" and node.target in _SPLIT)
        or (node.op == "call_method" and node.target in _SPLIT_METHODS)
    ):
        return False
    ids, axis = first
    sizes = _split_sizes(node)
    if not _positive_ints(sizes if isinstance(sizes, list | tuple) else [sizes]):
        return False  # a size fx could not write down (computed from a tensor's shape)
    dim = node.kwargs.get("dim", node.args[2] if len(node.args) > 2 else 0)
    value = cg.values[node]
    if not isinstance(dim, int) or not value or dim % value[0].ndim != axis:
        return False
    owner = _owner(node)
    try:
        holder = _holder(cg.root.get_submodule(owner), sizes, len(ids))
    except AttributeError:
        return False
    if holder is None:
        return False
    attribute, total = holder
    if isinstance(sizes, int):
        if len(ids) % sizes:
            return False  # a shorter last piece could not stay equal
        pieces = [ids[k : k + sizes] for k in range(0, len(ids), sizes)]
        for p in range(sizes):
            for piece in pieces[1:]:
                cg.union(pieces[0][p], piece[p])
    elif sum(sizes) == len(ids):
        bounds = [sum(sizes[:k]) for k in range(len(sizes) + 1)]
        pieces = [ids[a:b] for a, b in pairwise(bounds)]
    else:
        return False
    cg.pieces[node] = [(piece, axis) for piece in pieces]
    cg.sized.append(SizedCall(node.name, owner, attribute, sizes, pieces, total))
    return True


def sized_view(cg: ChannelGraph, node: fx.Node, moved: tuple[list[int], int]) -> bool:
    """A view / reshape whose channel-bearing size (at `moved`'s axis) is a constant that
    one attribute of the module holds (`x.view(-1, self.width)`): recorded, to be proven
    and rewritten as a split is; False otherwise (the caller pins)."""
    if cg.root is None:
        return False
    ids, axis = moved
    sizes = view_sizes(node)
    if not -len(sizes) <= axis < len(sizes) or not _positive_ints([sizes[axis]]):
        return False
    if sizes[axis] != len(ids):
        return False
    owner = _owner(node)
    try:
        holder = _holder(cg.root.get_submodule(owner), sizes[axis], 0)
    except AttributeError:
        return False
    if holder is None:
        return False
    cg.sized.append(SizedCall(node.name, owner, holder[0], sizes[axis], [ids], position=axis))
    return True


def sized_parameter_view(cg: ChannelGraph, node: fx.Node, ids: list[int]) -> bool:
    """A parameter viewed with written sizes, its channel count and 1s, that an attribute
    of the module holds (timm's MetaFormer `Scale`: `self.scale.view(self.shape)`, the
    attribute all the sizes; or `view(self.dim, 1, 1)`, the count alone): recorded, to be
    proven and rewritten as a view of activations is; False otherwise (the caller pins)."""
    sizes = view_sizes(node)
    counts = [i for i, n in enumerate(sizes) if n != 1]
    if cg.root is None or not _positive_ints(sizes) or len(counts) != 1:
        return False
    position = counts[0]
    if sizes[position] != len(ids):
        return False
    owner = _owner(node)
    try:
        module = cg.root.get_submodule(owner)
    except AttributeError:
        return False
    whole = [k for k, v in vars(module).items() if not k.startswith("_") and _equal(v, sizes)]
    if len(whole) == 1:
        held = getattr(module, whole[0])
        call = SizedCall(node.name, owner, whole[0], held, [ids], position=position, whole=True)
    elif (holder := _holder(module, sizes[position], 0)) is not None:
        call = SizedCall(node.name, owner, holder[0], sizes[position], [ids], position=position)
    else:
        return False
    cg.sized.append(call)
    return True


def _positive_ints(values: Sequence[Any]) -> bool:
    return bool(values) and all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values
    )


def _split_sizes(node: fx.Node) -> Any:
    sizes = node.kwargs.get("split_size_or_sections", node.args[1] if len(node.args) > 1 else None)
    return node.kwargs.get("split_size", sizes)


def verify_sized_calls(cg: ChannelGraph, trace: Callable[[nn.Module], fx.GraphModule]) -> None:
    """Keep the sized splits and views whose attribute reaches the call, pinning the
    others' channels: the model is traced again with every such attribute changed
    (`SizedCall.probe`) and put back. One attribute read by calls on different tensors (a
    module called twice) is pinned too: one value could not fit both."""
    if not cg.sized or cg.root is None:
        return
    root = cg.root
    sources = defaultdict(set)
    for s in cg.sized:
        sources[(s.owner, s.attribute)].add(tuple(i for piece in s.pieces for i in piece))
    candidates = [s for s in cg.sized if len(sources[(s.owner, s.attribute)]) == 1]
    held = {
        (s.owner, s.attribute): getattr(root.get_submodule(s.owner), s.attribute)
        for s in candidates
    }
    probes = {id(s): s.probe(held[(s.owner, s.attribute)]) for s in candidates}
    nodes: dict[str, fx.Node] = {}
    try:
        for s in candidates:
            setattr(root.get_submodule(s.owner), s.attribute, probes[id(s)][0])
        nodes = {n.name: n for n in trace(root).graph.nodes}
    except Exception:
        nodes = {}
    finally:
        for (owner, attribute), value in held.items():
            setattr(root.get_submodule(owner), attribute, value)
    proven = {
        id(s)
        for s in candidates
        if s.node in nodes and _equal(s.read(nodes[s.node]), probes[id(s)][1])
    }
    for s in [s for s in cg.sized if id(s) not in proven]:
        call = "split" if s.position is None else "view"
        why = f"call_function '{call}' (sizes not proven to come from {s.attribute!r})"
        for piece in s.pieces:
            cg.pin(piece, why)
    cg.sized = [s for s in cg.sized if id(s) in proven]


def _equal(a: Any, b: Any) -> bool:
    """Plain ints equal (not bools), or sequences with equal entries."""
    if isinstance(b, int):
        return isinstance(a, int) and not isinstance(a, bool) and a == b
    return isinstance(a, list | tuple) and isinstance(b, list | tuple) and list(a) == list(b)


def keep_a_channel_per_piece(cg: ChannelGraph, removed: set[int]) -> None:
    """Every piece of a sized split (a sized view: its one piece) keeps at least one
    channel (a size of 0 would hand the layer after it no input)."""
    for s in cg.sized:
        for piece in s.pieces:
            if all(cg.find(i) in removed for i in piece):
                removed.discard(cg.find(piece[0]))


def rewrite_sizes(model: nn.Module, cg: ChannelGraph, removed: set[int]) -> dict[str, Any]:
    """Set each sized split's attribute on `model` (the traced model, being shrunk) to fit
    the channels `removed` leaves; {owner: {attribute: value}} of those that changed."""
    changed: dict[str, dict[str, Any]] = {}
    for s in cg.sized:
        value = s.value(lambda i: cg.find(i) not in removed)
        if value != s.sizes:
            setattr(model.get_submodule(s.owner), s.attribute, value)
            changed.setdefault(s.owner, {})[s.attribute] = value
    return changed


def shape_attributes(model: nn.Module) -> dict[str, dict[str, Any]]:
    """{module name: {attribute: value}} of the size attributes shrinking rewrote in
    `model` (or `load_shrunk` restored); {} when none."""
    return {k: dict(v) for k, v in (getattr(model, SHAPE_ATTRIBUTES, None) or {}).items()}


def with_prefix(attributes: dict[str, dict[str, Any]], prefix: str) -> dict[str, dict[str, Any]]:
    """The same record for modules named inside a submodule `prefix` ("name.")."""
    return {(prefix + k if k else prefix.rstrip(".")): v for k, v in attributes.items()}


def merged(*records: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Later records override earlier ones attribute by attribute."""
    out: dict[str, dict[str, Any]] = {}
    for record in records:
        for owner, values in record.items():
            out.setdefault(owner, {}).update(values)
    return out


def apply_attributes(model: nn.Module, record: Any) -> None:
    """Set the recorded size attributes on `model` (in place); ValueError naming the first
    module or attribute that does not fit."""
    if not isinstance(record, dict):
        raise ValueError("the shape attributes record is not a mapping of module names")
    for owner, values in record.items():
        try:
            module = model.get_submodule(owner)
        except AttributeError as err:
            raise ValueError(f"module {owner!r} is recorded but the model has none") from err
        if not isinstance(values, dict):
            raise ValueError(f"the shape attributes of {owner!r} are not a mapping")
        for name, value in values.items():
            old = getattr(module, name, None)
            if not _same_kind(old, value):
                raise ValueError(
                    f"{owner or type(model).__name__}.{name} is {old!r} in the model but "
                    f"{value!r} in the record"
                )
            kind = isinstance(old, list | tuple | set | frozenset)
            setattr(module, name, type(old)(value) if kind else value)
    setattr(model, SHAPE_ATTRIBUTES, merged(shape_attributes(model), record))


def _same_kind(old: Any, value: Any) -> bool:
    if isinstance(old, int) and not isinstance(old, bool):
        return _positive_ints([value])
    if isinstance(old, list | tuple) and isinstance(value, Sequence):
        return len(old) == len(value) and _positive_ints(value)
    if isinstance(old, set | frozenset) and isinstance(value, Sequence):  # indices: T5's heads
        return all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    return False
