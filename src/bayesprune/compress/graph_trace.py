"""Which channels of a traced network are one: the channel groups `shrink_graph` prunes.

(Over 400 lines on purpose: one rule per kind of op, each a few lines, all writing the
same union-find; split apart they would have to share its internals.)

The model is traced with `torch.fx` (every variational layer, every bayesprune layer
and every standard torch module is a leaf) and run once on the example inputs; every
node then carries, per entry of its channel axis (dim 1), a *channel id*. Ids that must
go together are united (union-find) into one *group*:

- a prunable layer's outputs get fresh ids (its units); it is a *sink* for its inputs
  (their columns are cut). A grouped convolution unites each group's input channels
  with that group's output channels: a group goes whole (channel multipliers too);
- *followers* pass ids through and are sliced with them: BatchNorm, InstanceNorm,
  depthwise convolutions, GroupNorm (which also unites the channels of each of its
  groups, since they share statistics);
- channelwise ops pass ids: activations (hardswish / hardsigmoid included), dropout,
  identity, pooling, adaptive pooling, upsampling, padding, `mean` over H·W, and an
  activation *module* reused at several places (stateless, so sharing is harmless);
  average pooling that counts zero padding pins (a constant there depends on the size);
  LayerNorm over the spatial axes only passes, LayerNorm over the channels pins them;
- `+ − × ÷` of tensors with the same channels unite their ids position by position (a
  residual sum; a squeeze-excitation product x · s with s of shape N×C×1×1); an
  operand broadcast over the channels has its own ids pinned;
- `torch.cat` along dim 1 concatenates the id lists; `chunk(n, dim=1)` unites position
  p of every piece (the pieces must stay equal); `x[:, a:]` passes the channels from a
  on and pins those before (their count fixes where a falls), other slices pin what
  their bounds fix; `torch.split` (its sizes are constants of the forward) pins;
- a flatten, or a view/reshape whose channel-bearing size is computed (-1,
  `x.size(0)`), repeats each channel's id over its H·W block; a size written as a
  constant (`x.view(-1, 400)`) pins.

Moment networks (eVI) pass `Moments(mean, cov)` between layers: a node's channels are
its mean's. Layers say what they do through class attributes (family knowledge stays in
`nn/`): `joins = "add"` unites like a residual sum (`EVIAdd`), `joins = "cat"`
concatenates along the channels (`EVICat`), `flattens = True` flattens like `nn.Flatten`
(`EVIFlatten`).

Ids that reach the graph's inputs, outputs, a stateful module called twice, or any op
that is not understood are *pinned*: such a group is never removed, which keeps the
model's interface and makes every unknown op safe (it costs pruning, never correctness).
Inputs named in `free_inputs` get unpinned ids (`ChannelGraph.inputs`) for input pruning;
`pinned_at` remembers the op that pinned an id, to name it in errors.
"""

from __future__ import annotations

import math
import operator
import traceback
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from ..nn.base import SerializableLayer, use_posterior_mean
from ..nn.moments import Moments
from .adapters import is_prunable
from .chain import PASSTHROUGH

BATCHNORMS: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d)
NORMS: tuple[type[nn.Module], ...] = (*BATCHNORMS, nn.InstanceNorm1d, nn.InstanceNorm2d)
"""Per-channel normalisations: followers sliced channel by channel (weight, bias, stats)."""
CHANNELWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d, nn.LPPool1d, nn.LPPool2d, nn.Hardshrink,
    nn.Softshrink, nn.Tanhshrink, nn.LogSigmoid, nn.Threshold, nn.RReLU, nn.ZeroPad2d,
    nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d, nn.Upsample,
    nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
)  # fmt: skip
"""Channelwise modules beyond `chain.PASSTHROUGH` (which `shrink` shares)."""


def propagates_variance(module: nn.Module) -> bool:
    """A moment (eVI) layer: its deterministic output carries its weight variance, so a
    unit or column is silent only when its mean *and* its variance are zero."""
    return bool(getattr(module, "propagates_variance", False))


_ADD = {operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub}
_ADD_METHODS = {"add", "add_", "sub", "sub_"}
_MUL = {operator.mul, operator.imul, operator.truediv, operator.itruediv, torch.mul, torch.div}
_MUL_METHODS = {"mul", "mul_", "div", "div_"}
_CHUNK = {torch.chunk}
_CHUNK_METHODS = {"chunk"}
_CAT = {torch.cat, torch.concat}
_RESHAPE = {torch.flatten, torch.reshape}
_RESHAPE_METHODS = {"flatten", "view", "reshape"}
_SIZED = {torch.reshape, "view", "reshape"}  # take the new shape as arguments
_REDUCE = {torch.mean, torch.sum, torch.amax, torch.amin}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin"}
_CHANNELWISE: set[Callable[..., Any]] = {
    F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.hardtanh,
    F.hardswish, F.hardsigmoid, F.softplus, F.softsign, F.sigmoid, F.tanh, F.dropout,
    F.dropout1d, F.dropout2d, F.max_pool1d, F.max_pool2d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
    F.interpolate, F.upsample, F.upsample_nearest, F.upsample_bilinear,
    torch.relu, torch.sigmoid, torch.tanh, torch.clamp, torch.abs,
}  # fmt: skip
_CHANNELWISE_METHODS = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clamp_min",
    "clamp_max", "abs", "contiguous", "clone", "detach", "float", "double", "to", "type_as",
}  # fmt: skip


class GraphTraceError(TypeError):
    """torch.fx could not trace the model (data-dependent control flow, untraceable op)."""


class Tracer(fx.Tracer):
    """Keeps variational / bayesprune layers, torch modules and `leaf_modules` whole."""

    def __init__(self, leaf_modules: Sequence[type[nn.Module]] = ()) -> None:
        super().__init__()
        self.extra_leaves = tuple(leaf_modules)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, (SerializableLayer, *self.extra_leaves)):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _user_frame(err: BaseException) -> str:
    """'file:line: code' of the innermost frame outside torch (where tracing failed)."""
    torch_dir = str(Path(torch.__file__).parent)
    frames = [f for f in traceback.extract_tb(err.__traceback__) if torch_dir not in f.filename]
    if not frames:
        return "unknown place"
    f = frames[-1]
    return f"{f.filename}:{f.lineno}: {f.line}"


def trace(model: nn.Module, leaf_modules: Sequence[type[nn.Module]] = ()) -> fx.GraphModule:
    """The fx graph of `model`; a GraphTraceError names the op that stops tracing and the fix."""
    tracer = Tracer(leaf_modules)
    try:
        graph = tracer.trace(model)
    except Exception as err:  # fx raises TraceError, TypeError, RuntimeError...
        raise GraphTraceError(
            f"torch.fx cannot trace {type(model).__name__} ({type(err).__name__}: {err}) at "
            f"{_user_frame(err)}; move that code into its own nn.Module and pass its type in "
            "leaf_modules=(...) (its channels are then kept), or make it free of data-dependent "
            "Python control flow"
        ) from err
    return fx.GraphModule(tracer.root, graph)


def record(gm: fx.GraphModule, inputs: tuple[Tensor, ...]) -> dict[fx.Node, Any]:
    """Every node's value on `inputs` (eval mode, posterior mean, no grad)."""
    values: dict[fx.Node, Any] = {}

    class _Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            out = super().run_node(n)
            values[n] = out.mean if isinstance(out, Moments) else out  # channels: the mean's
            return out

    was = gm.training
    gm.eval()
    try:
        with torch.no_grad(), use_posterior_mean(gm):
            _Recorder(gm).run(*inputs)
    except RuntimeError as err:
        raise ValueError(
            f"the example inputs do not fit the model ({err}); pass example_inputs as one batch "
            "(a tensor, or a tuple of the forward's positional tensors)"
        ) from err
    finally:
        gm.train(was)
    return values


@dataclass
class Use:
    """A module reached by channel ids: a producer's outputs, a sink's or follower's inputs."""

    name: str
    node: fx.Node
    ids: list[int]  # channel id per entry of the channel axis (per column for a Linear)
    groups: int = 1  # a grouped convolution's groups (its groups go whole)


@dataclass
class ChannelGraph:
    """The channel ids of one traced run (see the module docstring)."""

    gm: fx.GraphModule
    values: dict[fx.Node, Any]
    parent: list[int] = field(default_factory=list)
    pinned: set[int] = field(default_factory=set)
    owner: dict[int, tuple[str, int]] = field(default_factory=dict)  # id → (producer, unit)
    producers: list[Use] = field(default_factory=list)
    sinks: list[Use] = field(default_factory=list)
    followers: list[Use] = field(default_factory=list)
    ids: dict[fx.Node, list[int]] = field(default_factory=dict)
    pieces: dict[fx.Node, list[list[int]]] = field(default_factory=dict)  # chunk → per piece
    inputs: dict[str, list[int]] = field(default_factory=dict)  # free input → its ids
    pinned_at: dict[int, str] = field(default_factory=dict)  # id → the op that pinned it

    # -- union-find ------------------------------------------------------------------
    def fresh(self, n: int, pinned: bool = False) -> list[int]:
        start = len(self.parent)
        new = list(range(start, start + n))
        self.parent.extend(new)
        if pinned:
            self.pinned.update(new)
        return new

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def pinned_groups(self) -> set[int]:
        return {self.find(i) for i in self.pinned}

    def why_pinned(self, group: int) -> str:
        """The op that pinned a member of `group` (for error messages)."""
        for i in sorted(self.pinned):
            if self.find(i) == group:
                return self.pinned_at.get(i, "an op shrink_graph cannot slice")
        return "nothing"

    def members(self) -> dict[int, list[tuple[str, int]]]:
        """Group → the (producer, unit) channels in it."""
        groups: dict[int, list[tuple[str, int]]] = {}
        for i, owner in self.owner.items():
            groups.setdefault(self.find(i), []).append(owner)
        return groups

    def input_value(self, use: Use) -> Tensor:
        """The recorded input of a sink or follower (first example of the batch)."""
        return self.values[use.node.args[0]][:1]


def _tensor(value: Any) -> bool:
    return isinstance(value, Tensor) and value.ndim >= 2


def _is_shape(value: Any) -> bool:
    """Sizes and shapes (x.size(0), x.shape) read no channel values: they pin nothing."""
    if isinstance(value, tuple | list):
        return all(isinstance(v, int) for v in value)
    return isinstance(value, int)


def _node_ids(cg: ChannelGraph, arg: Any) -> list[list[int]]:
    """Id lists of every node inside `arg` (nested tuples / lists / dicts)."""
    found: list[list[int]] = []
    fx.node.map_arg(arg, lambda n: found.append(cg.ids[n]) if n in cg.ids else None)
    return found


def _describe(node: fx.Node) -> str:
    if node.op == "output":
        return "the model's output"
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    return f"{node.op} {target!r} (node {node.name})"


def _pin_args(cg: ChannelGraph, node: fx.Node) -> None:
    for ids in _node_ids(cg, (node.args, node.kwargs)):
        for i in ids:
            cg.pinned_at.setdefault(i, _describe(node))
        cg.pinned.update(ids)


def _flatten_ids(ids: list[int], in_shape: torch.Size, out_shape: torch.Size) -> list[int] | None:
    """Ids after a reshape: the same, repeated over H·W (channel-major flatten), or None."""
    if tuple(out_shape) == tuple(in_shape):
        return ids
    block = math.prod(in_shape[2:])
    if len(in_shape) > 2 and tuple(out_shape) == (in_shape[0], in_shape[1] * block):
        return [i for i in ids for _ in range(block)]
    return None


def _size_follows(node: fx.Node) -> bool:
    """`view(n, -1)` or `view(x.size(0), -1)`: the size that holds the channels is computed.

    A constant there (`x.view(-1, 16 * 5 * 5)`) fixes the channel count in the forward's
    code: the reshape then pins its channels.
    """
    sizes = list(node.args[1:]) or [node.kwargs.get("shape", ())]
    if len(sizes) == 1 and isinstance(sizes[0], tuple | list):
        sizes = list(sizes[0])
    return len(sizes) > 1 and (sizes[1] == -1 or isinstance(sizes[1], fx.Node))


def _reduce_keeps_channels(node: fx.Node, ndim: int) -> bool:
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    if dim is None:
        return False
    dims = [dim] if isinstance(dim, int) else list(dim)
    return all(d % ndim > 1 for d in dims)


def analyse(
    model: nn.Module,
    inputs: tuple[Tensor, ...],
    passthrough: tuple[type[nn.Module], ...] = (),
    leaf_modules: Sequence[type[nn.Module]] = (),
    free_inputs: Collection[str] = (),
) -> ChannelGraph:
    """Trace and run `model` once, and give every channel of every node its id.

    The inputs named in `free_inputs` (forward argument names) are not pinned.
    """
    gm = trace(model, leaf_modules)
    cg = ChannelGraph(gm, record(gm, inputs))
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    channelwise = PASSTHROUGH + CHANNELWISE_MODULES + tuple(passthrough)
    for node in gm.graph.nodes:
        out = cg.values.get(node)
        if node.op == "output":
            _pin_args(cg, node)
            continue
        ids: list[int] | None = None
        args = [a for a in node.args if isinstance(a, fx.Node)]
        first = cg.ids.get(args[0]) if args else None
        if node.op == "call_module":
            module = gm.get_submodule(str(node.target))
            once = calls[node.target] == 1 or _stateless(module)
            ids = _module_ids(cg, node, module, first, once, channelwise)
        elif node.op in ("call_function", "call_method"):
            if _chunk_pieces(cg, node, first):
                continue
            ids = _function_ids(cg, node, first)
        if ids is None and node.op != "placeholder" and not _is_shape(out):
            _pin_args(cg, node)
        if node.op == "placeholder" and node.target in free_inputs and _tensor(out):
            ids = cg.inputs[str(node.target)] = cg.fresh(out.shape[1])
        if _tensor(out):
            if ids is None or len(ids) != out.shape[1]:
                ids = cg.fresh(out.shape[1], pinned=True)
                for i in ids:
                    cg.pinned_at[i] = f"the output of {_describe(node)}"
            cg.ids[node] = ids
    return cg


def _stateless(module: nn.Module) -> bool:
    """No parameters or buffers: calling it twice (one nn.ReLU reused) shares nothing."""
    return next(module.parameters(), None) is None and next(module.buffers(), None) is None


def _module_ids(
    cg: ChannelGraph,
    node: fx.Node,
    module: nn.Module,
    first: list[int] | None,
    called_once: bool,
    channelwise: tuple[type[nn.Module], ...],
) -> list[int] | None:
    name, value = str(node.target), cg.values[node]
    if not called_once or first is None or not _tensor(value):
        return None  # shared modules and modules on non-channel tensors stay as they are
    in_value = cg.values[node.args[0]]
    joins = getattr(module, "joins", None)
    if joins == "add":
        return _elementwise_ids(cg, node)
    if joins == "cat":
        return _cat_ids(cg, node.args, value.ndim, 1)
    if getattr(module, "flattens", False):
        return _flatten_ids(first, in_value.shape, value.shape)
    if is_prunable(module):
        groups = getattr(module, "groups", 1)
        if groups > 1 and groups == module.in_channels == module.out_channels:
            cg.followers.append(Use(name, node, first))  # depthwise: follows its producer
            return first
        if value.ndim > 2 and not hasattr(module, "in_channels"):
            return None  # a Linear over a non-channel axis: pinned
        cg.sinks.append(Use(name, node, first, groups))
        ids = cg.fresh(value.shape[1])
        for unit, i in enumerate(ids):
            cg.owner[i] = (name, unit)
        cg.producers.append(Use(name, node, ids, groups))
        if groups > 1:  # a group of a grouped conv goes whole: its inputs with its outputs
            k, m = len(first) // groups, len(ids) // groups
            for g in range(groups):
                for i in [*first[g * k : (g + 1) * k], *ids[g * m : (g + 1) * m]]:
                    cg.union(ids[g * m], i)
        return ids
    if isinstance(module, NORMS):
        cg.followers.append(Use(name, node, first))
        return first
    if isinstance(module, nn.GroupNorm):
        size = module.num_channels // module.num_groups  # statistics shared within a group
        for g in range(module.num_groups):
            for i in first[g * size + 1 : (g + 1) * size]:
                cg.union(first[g * size], i)
        cg.followers.append(Use(name, node, first))
        return first
    if isinstance(module, nn.LayerNorm):
        normalised = len(module.normalized_shape)
        return first if in_value.ndim - normalised > 1 else None  # over the channels: pinned
    if isinstance(module, nn.Flatten):
        if module.start_dim != 1 or module.end_dim != -1:
            return None
        return _flatten_ids(first, in_value.shape, value.shape)
    if isinstance(module, nn.AvgPool1d | nn.AvgPool2d) and _pads_zeros_in(module):
        return None  # averages zeros in at the border: a constant there depends on the size
    if isinstance(module, channelwise) or getattr(module, "channelwise", False):
        return first if value.shape[1] == in_value.shape[1] else None
    return None


def _pads_zeros_in(pool: nn.Module) -> bool:
    padding = pool.padding if isinstance(pool.padding, tuple) else (pool.padding,)
    return bool(pool.count_include_pad and any(padding))


def _is(node: fx.Node, functions: set[Any], methods: set[str]) -> bool:
    if node.op == "call_method":
        return node.target in methods
    return node.op == "call_function" and node.target in functions


def _arg(node: fx.Node, pos: int, name: str, default: Any) -> Any:
    return node.kwargs.get(name, node.args[pos] if len(node.args) > pos else default)


def _chunk_pieces(cg: ChannelGraph, node: fx.Node, first: list[int] | None) -> bool:
    """`chunk` along dim 1 into equal pieces: position p of every piece is one group.

    The forward asks for n equal pieces, so a channel may go only together with the
    channel at the same position of every other piece (pieces stay equal). Uneven
    chunks and `split` (its sizes are constants of the forward) are pinned.
    """
    if first is None or not _is(node, _CHUNK, _CHUNK_METHODS):
        return False
    pieces, value = _arg(node, 1, "chunks", None), cg.values[node]
    dim = _arg(node, 2, "dim", 0)
    channels = len(first)
    if not isinstance(pieces, int) or not isinstance(dim, int) or dim % value[0].ndim != 1:
        return False
    if channels % pieces or len(value) != pieces:
        return False
    size = channels // pieces
    for p in range(size):
        for k in range(1, pieces):
            cg.union(first[p], first[k * size + p])
    cg.pieces[node] = [first[k * size : (k + 1) * size] for k in range(pieces)]
    return True


def _function_ids(cg: ChannelGraph, node: fx.Node, first: list[int] | None) -> list[int] | None:
    target, value = node.target, cg.values[node]
    if not _tensor(value):
        return None
    if target is operator.getitem:
        return _getitem_ids(cg, node)
    if _is(node, _ADD | _MUL, _ADD_METHODS | _MUL_METHODS):
        return _elementwise_ids(cg, node)
    if _is(node, _CAT, set()):
        parts = node.args[0] if node.args else node.kwargs.get("tensors")
        return _cat_ids(cg, parts, value.ndim, _arg(node, 1, "dim", 0))
    if first is None:
        return None
    in_value = cg.values[node.args[0]]
    if _is(node, _RESHAPE, _RESHAPE_METHODS):
        if node.target in _SIZED and not _size_follows(node):
            return None
        return _flatten_ids(first, in_value.shape, value.shape)
    if _is(node, _REDUCE, _REDUCE_METHODS):
        return first if _reduce_keeps_channels(node, in_value.ndim) else None
    if _is(node, _CHANNELWISE, _CHANNELWISE_METHODS):
        return first if value.shape[:2] == in_value.shape[:2] else None
    if _is(node, {F.avg_pool1d, F.avg_pool2d}, set()):
        padding = _arg(node, 3, "padding", 0)
        padded = any(padding) if isinstance(padding, tuple | list) else bool(padding)
        if padded and _arg(node, 5, "count_include_pad", True):
            return None  # averages zeros in at the border: pinned, as the module
        return first if value.shape[:2] == in_value.shape[:2] else None
    return None


def _cat_ids(cg: ChannelGraph, parts: Any, ndim: int, dim: int) -> list[int] | None:
    """A concatenation along the channels: the parts' id lists, one after the other."""
    if dim % ndim != 1 or not all(p in cg.ids for p in parts):
        return None
    return [i for p in parts for i in cg.ids[p]]


def _elementwise_ids(cg: ChannelGraph, node: fx.Node) -> list[int] | None:
    """`+ − × ÷` of tensors: operands with the output's channels unite position by position.

    A residual sum and a squeeze-excitation product (x · s, s of shape N×C×1×1) both
    make channel c of the output depend on channel c of each operand only, so those
    channels go together. An operand with one channel (N×1×H×W) or without a channel
    axis (a scalar, an H×W map) broadcasts over every channel: its own channels are
    pinned. A tensor of another rank that reaches the channel axis (a C×1×1 parameter)
    holds constants per channel that no slice would follow: everything is pinned.
    """
    value = cg.values[node]
    shaped: list[fx.Node] = []
    for a in node.args:
        v = cg.values.get(a) if isinstance(a, fx.Node) else None
        if not isinstance(v, Tensor):
            continue
        if v.ndim == value.ndim and v.shape[1] == value.shape[1] and a in cg.ids:
            shaped.append(a)
        elif v.ndim < value.ndim - 1 or (v.ndim == value.ndim and v.shape[1] == 1):
            cg.pinned.update(cg.ids.get(a, []))
        else:
            return None
    if not shaped:
        return None
    ids = cg.ids[shaped[0]]
    for other in shaped[1:]:
        for a, b in zip(ids, cg.ids[other], strict=True):
            cg.union(a, b)
    return ids


def _getitem_ids(cg: ChannelGraph, node: fx.Node) -> list[int] | None:
    """A piece of a `chunk`, or `x[:, a:b]`: the channels a slice's constants do not move.

    The slice bounds are constants of the forward. `x[:, a:]` reads the channels from
    position a on: those before a are pinned (their count fixes where a falls), the
    rest pass and may go. `x[:, :-k]` and `x[:, -k:]` pin the last k; `x[:, :b]` pins
    everything up to b. Any other index (a step, an integer, a tensor) pins.
    """
    source, index = node.args[0], node.args[1]
    if source in cg.pieces and isinstance(index, int):
        return cg.pieces[source][index]
    ids = cg.ids.get(source)
    if ids is None or not isinstance(index, tuple) or len(index) < 2:
        return None
    rest = index[2:]
    if index[0] != slice(None) or not isinstance(index[1], slice):
        return None
    if not all(r == slice(None) for r in rest if r is not Ellipsis):
        return None
    start, stop, step = index[1].start, index[1].stop, index[1].step
    ints = all(isinstance(b, int | None) for b in (start, stop, step))
    if not ints or step not in (None, 1):
        return None
    start, stop, n = start or 0, stop, len(ids)
    if stop is None and start >= 0:
        cg.pinned.update(ids[:start])
    elif (stop is None and start < 0) or (start == 0 and stop is not None and stop < 0):
        cg.pinned.update(ids[-abs(start or stop) :])
    else:
        cg.pinned.update(ids[: stop if stop >= 0 else n])
    return ids[start:stop]
