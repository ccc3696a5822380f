"""Which channels of a traced network are one: the channel groups `shrink_graph` prunes.

(Over 400 lines on purpose: one rule per kind of op, each a few lines, all writing the
same union-find; split apart they would have to share its internals.)

The model is traced with `torch.fx` (every variational layer, every bayesprune layer
and every standard torch module is a leaf) and run once on the example inputs; every
node then carries, per entry of its channel axis, a *channel id*. The channel axis is
dim 1, or the last axis where an nn.Linear writes tokens (B × T × C) or a channels-last
map (`ChannelGraph.axis`; `graph_axes` says where it goes through reshapes, permutes,
reductions and indexing). Ids that must go together are united (union-find) into one
*group*:

- a prunable layer's outputs get fresh ids (its units); it is a *sink* for its inputs
  (their columns are cut). A grouped convolution unites each group's input channels
  with that group's output channels: a group goes whole (channel multipliers too); a
  transposed convolution is both too (`adapters.TransposedLayer`), though nothing folds
  into it;
- *followers* pass ids through and are sliced with them: BatchNorm (also a subclass
  whose own forward calls `F.batch_norm` on its tensors, as timm's BatchNormAct2d, and
  torchvision's FrozenBatchNorm2d), InstanceNorm, depthwise convolutions, GroupNorm
  (which also unites the channels of each of its groups, since they share statistics;
  with one group it is read as a LayerNorm over the channels, below);
- channelwise ops pass ids: activations (hardswish / hardsigmoid included; exp, sqrt,
  square, negation, erf), dropout and torchvision's stochastic depth, identity, pooling,
  adaptive pooling, upsampling, padding, `mean` over H·W, and an activation *module*
  reused at several places (stateless, so sharing is harmless);
  average pooling that counts zero padding passes too, and a removed channel's constant
  through it is checked at every size as for a padded depthwise convolution (`pools`);
  LayerNorm over the spatial axes only passes; LayerNorm over the channels alone (on
  tokens, or channels-first as torchvision's and timm's LayerNorm2d, read whole once a
  probe shows what it computes) follows them (`layer_norms`: `shrink_graph` lets a
  channel through it only where it is exactly 0 and the norm's scale there is 0), and so
  does a GroupNorm with one group (timm's GroupNorm1, probed as LayerNorm2d is);
- `+ − × ÷` and powers of tensors with the same channels (or of a number: StarReLU's
  relu(x) ** 2) unite their ids position by position (a residual sum; a
  squeeze-excitation product x · s with s of shape N×C×1×1); an
  operand broadcast over the channels has its own ids pinned; a parameter with one
  value per channel read there alone (ConvNeXt's layer scale, MetaFormer's viewed with
  the shape an attribute holds, `graph_sizes`; a ViT's position
  embedding, values per token too) follows them (`parameters`, sliced with them; one
  added in is an *offset*, `offsets`, zeroed where `prune_units` drops the channel);
- `torch.cat` along dim 1 concatenates the id lists; along another axis (a ViT's class
  token, a parameter `expand`ed to the batch, before its patch tokens) it unites them;
  `chunk(n, dim=1)` unites position p of every piece (the pieces must stay equal);
  `x[:, a:]` passes the channels from a on and pins those before (their count fixes
  where a falls), other slices pin what their bounds fix; `torch.split` pins (its sizes
  are constants of the forward), unless an attribute of the splitting module holds them
  (`graph_sizes`: rewritten on shrinking);
- a flatten, or a view/reshape whose channel-bearing size is computed (-1,
  `x.size(0)`), repeats each channel's id over its H·W block; a size written as a
  constant (`x.view(-1, 400)`) pins;
- on the last axis: a Linear reads and writes it; `permute` / `transpose` move the axis,
  `x[:, 0]` and a mean over the tokens pass the channels, activations and dropout pass,
  LayerNorm over the channels follows them; every dim-1 rule above (BatchNorm, pooling, slices
  of channels) is for dim 1 only, and an operand whose ids run along another axis pins.

Moment networks (eVI) pass `Moments(mean, cov)` between layers: a node's channels are
its mean's. Layers say what they do through class attributes (family knowledge stays in
`nn/`): `joins = "add"` unites like a residual sum (`EVIAdd`), `joins = "cat"`
concatenates along the channels (`EVICat`), `flattens = True` flattens like `nn.Flatten`
(`EVIFlatten`).

A prunable layer or a norm over the channels called several times (ALBERT's one layer
at every depth) reads the same columns and writes the same units in every call
(`_shared_ids`). Ids that reach the graph's inputs, outputs, another stateful module
called twice or holding a weight tied to another module's, or any op that is not
understood are *pinned*: such
a group is never removed, which keeps the model's interface and makes every unknown op
safe (it costs pruning, never correctness).
Inputs named in `free_inputs` get unpinned ids (`ChannelGraph.inputs`) for input pruning;
`pinned_at` remembers the op that pinned an id, to name it in errors.
"""

from __future__ import annotations

import contextlib
import math
import operator
import os
import traceback
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.nn.modules import transformer as _transformer

from ..nn.attention import MultiheadAttention
from ..nn.base import SerializableLayer, evaluation_pass, torch_type, use_posterior_mean
from ..nn.moments import Moments
from ..nn.parameter_reads import parameter_holders, tied_layers
from ..tracing import (
    FACTORIES,
    ExampleValues,
    factory_shape,
    no_proxies_left,
    scripted_functions_as_python,
    trace_with_values,
)
from .adapters import (
    CONVOLUTIONS,
    TRANSPOSED,
    is_frozen_norm,
    is_prunable,
    is_same_padding_conv,
)
from .chain import PASSTHROUGH
from .graph_axes import indexed, permuted, reduced, reshaped, size_follows, view_sizes
from .graph_size_reads import channel_size_of, pin_size_reads
from .graph_sizes import (
    SizedCall,
    sized_parameter_view,
    sized_view,
    split_pieces,
    verify_sized_calls,
)
from .layer_norm import (
    ZeroCountingLayerNorm,
    group_norm_layout,
    layer_norm_layout,
    normalised_axes,
    one_group_norm,
)
from .response_norm import response_norm_layout
from .rms_norm import is_rms_norm

BATCHNORMS: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
NORMS: tuple[type[nn.Module], ...] = (
    *BATCHNORMS,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)
"""Per-channel normalisations: followers sliced channel by channel (weight, bias, stats)."""
_LEAF_KINDS: tuple[type[nn.Module], ...] = (
    nn.Linear, *CONVOLUTIONS, *TRANSPOSED, *NORMS, nn.GroupNorm, nn.LayerNorm
)  # fmt: skip
"""Layers read whole, subclasses too when they keep torch's `forward` (`Tracer`)."""
CHANNELWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d, nn.LPPool1d, nn.LPPool2d, nn.Hardshrink,
    nn.Softshrink, nn.Tanhshrink, nn.LogSigmoid, nn.Threshold, nn.RReLU, nn.ZeroPad1d,
    nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
    nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d,
    nn.ReplicationPad2d, nn.ReplicationPad3d, nn.Upsample, nn.UpsamplingNearest2d,
    nn.UpsamplingBilinear2d,
)  # fmt: skip
"""Channelwise modules beyond `chain.PASSTHROUGH` (which `shrink` shares)."""
_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
          nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool3d,
          nn.AdaptiveMaxPool3d)  # fmt: skip
ELEMENTWISE_MODULES: tuple[type[nn.Module], ...] = tuple(m for m in PASSTHROUGH if m not in _POOLS)
"""Passthrough modules that act on each entry apart: what channels on the last axis pass."""


def propagates_variance(module: nn.Module) -> bool:
    """A moment (eVI) layer: its deterministic output carries its weight variance, so a
    unit or column is silent only when its mean *and* its variance are zero."""
    return bool(getattr(module, "propagates_variance", False))


_ADD = {operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub}
_ADD_METHODS = {"add", "add_", "sub", "sub_"}
_MUL = {operator.mul, operator.imul, operator.truediv, operator.itruediv, torch.mul, torch.div,
        operator.pow, torch.pow}  # fmt: skip
_MUL_METHODS = {"mul", "mul_", "div", "div_", "pow", "pow_"}
_CHUNK = {torch.chunk}
_CHUNK_METHODS = {"chunk"}
_CAT = {torch.cat, torch.concat}
_RESHAPE = {torch.flatten, torch.reshape, torch.unsqueeze}
_RESHAPE_METHODS = {"flatten", "view", "reshape", "unsqueeze"}
_SIZED = {torch.reshape, "view", "reshape"}  # take the new shape as arguments
_REDUCE = {torch.mean, torch.sum, torch.amax, torch.amin}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin"}
_CHANNELWISE: set[Callable[..., Any]] = {
    F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.hardtanh,
    F.hardswish, F.hardsigmoid, F.softplus, F.softsign, F.sigmoid, F.tanh, F.dropout,
    F.dropout1d, F.dropout2d, F.max_pool1d, F.max_pool2d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
    F.interpolate, F.upsample, F.upsample_nearest, F.upsample_bilinear,
    torch.relu, torch.sigmoid, torch.tanh, torch.clamp, torch.abs, torch.exp, torch.sqrt,
    torch.rsqrt, torch.square, torch.neg, operator.neg, torch.erf,
}  # fmt: skip
_ELEMENTWISE = _CHANNELWISE - {
    F.max_pool1d, F.max_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.interpolate, F.upsample,
    F.upsample_nearest, F.upsample_bilinear,
}  # fmt: skip
"""The channelwise functions that act on each entry apart (also on channels-last tensors)."""
_PER_SAMPLE = {("torchvision.ops.stochastic_depth", "stochastic_depth")}
"""Functions of other libraries (module, name; not imported here) that are the identity in
eval mode and in training scale each sample, or the whole batch, by one number: every
channel passes. torchvision's stochastic depth, on the residual branches of EfficientNet,
ConvNeXt, Swin and MaxViT."""
_CHANNELWISE_METHODS = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clamp_min",
    "clamp_max", "abs", "contiguous", "clone", "detach", "float", "double", "to", "type_as",
    "exp", "sqrt", "rsqrt", "square", "neg", "erf",
}  # fmt: skip


_TRANSFORMER_BLOCKS = (
    nn.Transformer, nn.TransformerEncoder, nn.TransformerEncoderLayer,
    nn.TransformerDecoder, nn.TransformerDecoderLayer,
)  # fmt: skip
"""torch's own transformer modules: traced through, so their MLP hidden units are units
like any (the attention inside stays a leaf), with their fused inference path switched
off while tracing (its conditions test tensor properties) and `_TRANSFORMER_HELPERS`
kept whole."""
_TRANSFORMER_HELPERS = (
    (_transformer, "_get_seq_len"), (_transformer, "_detect_is_causal_mask"),
    (F, "_canonical_mask"), (F, "_none_or_dtype"),
)  # fmt: skip
"""Helpers of torch's transformer modules that branch on a tensor (`is_nested`, a mask's
dtype or values): recorded as calls while tracing (`_recorded`), not traced into. (fx's
own autowrap skips private names.)"""


def _recorded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn`, recorded as one call_function node when a traced value reaches it."""

    def call(*args: Any, **kwargs: Any) -> Any:
        proxy = next((a for a in (*args, *kwargs.values()) if isinstance(a, fx.Proxy)), None)
        if proxy is None:
            return fn(*args, **kwargs)
        return proxy.tracer.create_proxy("call_function", fn, args, kwargs)

    return call


@contextlib.contextmanager
def _transformers_traceable() -> Iterator[None]:
    """torch's transformer modules as fx can trace them: their fused path off (its
    conditions test tensor properties) and `_TRANSFORMER_HELPERS` recorded as calls."""
    fused = torch.backends.mha.get_fastpath_enabled()
    helpers = [(m, n, getattr(m, n)) for m, n in _TRANSFORMER_HELPERS if hasattr(m, n)]
    torch.backends.mha.set_fastpath_enabled(False)
    for module, name, fn in helpers:
        setattr(module, name, _recorded(fn))
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fused)
        for module, name, fn in helpers:
            setattr(module, name, fn)


class GraphTraceError(TypeError):
    """torch.fx could not trace the model (data-dependent control flow, untraceable op)."""


class Tracer(fx.Tracer):
    """Keeps variational / bayesprune layers, torch modules and `leaf_modules` whole
    (bayesprune's MultiheadAttention too: its heads are pruned by `heads`, its input and
    output, the residual stream, are pinned like any module's tuple output)."""

    def __init__(
        self, leaf_modules: Sequence[type[nn.Module]] = (), norms: Collection[int] = ()
    ) -> None:
        super().__init__()
        self.extra_leaves = tuple(leaf_modules)
        self.channel_norms = set(norms)  # ids of LayerNorms with their own forward (probed)

    def call_module(
        self, m: nn.Module, forward: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """A module made inside `forward` (`nn.ReLU()(x)`, which DistilBERT does) has no
        name to call it by: one without parameters or buffers is traced through."""
        if _stateless(m):
            try:
                self.path_of_module(m)
            except NameError:
                return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, (SerializableLayer, MultiheadAttention, *self.extra_leaves)):
            return True
        if isinstance(m, _TRANSFORMER_BLOCKS):
            return False
        if is_frozen_norm(type(m)) or is_same_padding_conv(type(m)):
            return True
        if id(m) in self.channel_norms:
            return True  # timm's LayerNorm, torchvision's and timm's LayerNorm2d
        if torch_type(type(m)) in _LEAF_KINDS:
            return True  # a subclass that keeps torch's forward is read as its base type
        return super().is_leaf_module(m, module_qualified_name)


def _user_frame(err: BaseException) -> str:
    """'file:line: code' of the innermost frame outside torch (where tracing failed); a
    package beside torch whose name starts with "torch" (torchvision) is not torch."""
    torch_dir = os.path.join(Path(torch.__file__).parent, "")  # with its separator
    frames = [f for f in traceback.extract_tb(err.__traceback__) if torch_dir not in f.filename]
    if not frames:
        return "unknown place"
    f = frames[-1]
    return f"{f.filename}:{f.lineno}: {f.line}"


def trace(
    model: nn.Module,
    leaf_modules: Sequence[type[nn.Module]] = (),
    inputs: Sequence[Any] | None = None,
) -> fx.GraphModule:
    """The fx graph of `model`; a GraphTraceError names the op that stops tracing and the fix.

    torch's transformer modules are traced through where fx can (`_TRANSFORMER_BLOCKS`),
    else kept whole, as before (nn.Transformer checks its inputs' sizes in Python). Where
    the symbolic trace fails and example `inputs` are given, the model is traced again
    with their values (`trace_with_example`), which Hugging Face's models need."""
    try:
        gm = _trace(model, leaf_modules)
        if inputs is None or not (unset := unset_reads(gm, len(inputs))):
            return gm
        failed = GraphTraceError(unset_message(model, unset))
    except GraphTraceError as err:
        failed = err
    if any(isinstance(m, _TRANSFORMER_BLOCKS) for m in model.modules()):
        whole = (*leaf_modules, *_TRANSFORMER_BLOCKS)
        if inputs is None:
            return _trace(model, whole)
        with contextlib.suppress(GraphTraceError):
            return _trace(model, whole)
    if inputs is None:
        raise failed
    try:
        return trace_with_example(model, leaf_modules, inputs)
    except GraphTraceError:
        raise failed from None


def unset_reads(gm: fx.GraphModule, given: int) -> list[str]:
    """The arguments after the first `given` that default to None and that the graph
    reads: a symbolic trace took `if mask is None` as false for them (a proxy is not
    None), so the graph computes with a None the example leaves there and fails, or
    would hold the other branch. Such a model is traced with the example's values."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    return [str(n.target) for n in placeholders[given:] if n.users and (n.args[:1] == (None,))]


def unset_message(model: nn.Module, unset: list[str]) -> str:
    return (
        f"torch.fx's symbolic trace of {type(model).__name__} reads {', '.join(unset)}, "
        "which the example leaves at None (a proxy is never None, so the trace took the "
        "other branch of the forward's test)"
    )


def trace_with_example(
    model: nn.Module, leaf_modules: Sequence[type[nn.Module]], inputs: Sequence[Any]
) -> fx.GraphModule:
    """The fx graph of `model` traced with the values of `inputs` alone (`bayesprune.
    tracing`: sizes, dims and dtypes known, the arguments `inputs` do not give at their
    defaults), for a caller that has already seen the symbolic trace fail."""
    return _trace(model, leaf_modules, inputs)


class ValuedTracer(ExampleValues, Tracer):
    """`Tracer` whose proxies carry their values on the example (`trace_values`)."""


def _trace(
    model: nn.Module,
    leaf_modules: Sequence[type[nn.Module]],
    inputs: Sequence[Any] | None = None,
) -> fx.GraphModule:
    # probed before tracing: fx patches module calls and attribute reads while it traces
    norms = [
        id(m)
        for m in model.modules()
        if layer_norm_layout(m) is not None
        or group_norm_layout(m)
        or response_norm_layout(m) is not None
        or is_rms_norm(m)
    ]
    tracer = Tracer(leaf_modules, norms) if inputs is None else ValuedTracer(leaf_modules, norms)
    try:
        with _transformers_traceable(), no_proxies_left(model), scripted_functions_as_python(model):
            if isinstance(tracer, ValuedTracer):
                with use_posterior_mean(model):
                    graph = trace_with_values(tracer, model, inputs or ())
            else:
                graph = tracer.trace(model)
    except Exception as err:  # fx raises TraceError, TypeError, RuntimeError...
        raise GraphTraceError(
            f"torch.fx cannot trace {type(model).__name__} ({type(err).__name__}: {err}) at "
            f"{_user_frame(err)}; move that code into its own nn.Module and pass its type in "
            "leaf_modules=(...) (its channels are then kept), or make it free of data-dependent "
            "Python control flow"
        ) from err
    gm = fx.GraphModule(tracer.root, graph)
    if isinstance(tracer, ValuedTracer):
        gm.meta["size_reads"] = tracer.size_reads  # sizes the graph holds as constants
        gm.meta["view_reads"] = tracer.view_reads  # ... only as sizes of views
    return gm


def _mutable(value: Any) -> Any:
    """fx's immutable lists and dicts of node arguments as plain ones, recursively."""
    if isinstance(value, list):
        return [_mutable(v) for v in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):  # named tuples as they are
        return tuple(_mutable(v) for v in value)
    if isinstance(value, dict):
        return {k: _mutable(v) for k, v in value.items()}
    return value


_TRAINING_ARGUMENT = {
    F.batch_norm: 5, F.dropout: 2, F.dropout1d: 2, F.dropout2d: 2, F.dropout3d: 2,
    F.alpha_dropout: 2, F.feature_alpha_dropout: 2,
}  # fmt: skip
"""Functions whose `training` flag a forward passes as `self.training` (position): fx
writes its value at tracing into the graph, so a model traced in training mode would
normalise with batch statistics and drop units while its values are recorded."""


def _in_eval(target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """The arguments of a call with its `training` flag off (`_TRAINING_ARGUMENT`, and
    torchvision's stochastic depth, whose flag is its fourth argument). A batch_norm
    without running statistics is left as it is: it standardises something that has no
    eval form (timm's ScaledStdConv2d standardises its own weights with one)."""
    statistics = args[1] if len(args) > 1 else kwargs.get("running_mean")
    if target is F.batch_norm and statistics is None:
        return args, kwargs
    position = 3 if _per_sample_function(target) else _TRAINING_ARGUMENT.get(target)
    if "training" in kwargs:
        kwargs = {**kwargs, "training": False}
    elif position is not None and len(args) > position:
        args = (*args[:position], False, *args[position + 1 :])
    return args, kwargs


def record(gm: fx.GraphModule, inputs: tuple[Tensor, ...]) -> dict[fx.Node, Any]:
    """Every node's value on `inputs` (eval mode, posterior mean, no grad; buffers, such
    as running statistics, as they were before)."""
    values: dict[fx.Node, Any] = {}

    class _Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            out = super().run_node(n)
            values[n] = out.mean if isinstance(out, Moments) else out  # channels: the mean's
            return out

        def call_function(self, target: Any, args: Any, kwargs: Any) -> Any:
            # the compiled forward passes fresh lists; a wrapped function may mutate them
            # (torchvision's video Swin does), which fx's immutable argument lists refuse
            args, kwargs = _in_eval(target, _mutable(args), _mutable(kwargs))
            return super().call_function(target, args, kwargs)

    buffers = {name: b.clone() for name, b in gm.named_buffers()}
    try:
        with evaluation_pass(gm):
            _Recorder(gm).run(*inputs)
    except RuntimeError as err:
        raise ValueError(
            f"the example inputs do not fit the model ({err}); pass example_inputs as one batch "
            "(a tensor, or a tuple of the forward's positional tensors)"
        ) from err
    finally:
        with torch.no_grad():
            for name, b in gm.named_buffers():  # a call in training mode may have updated
                if not torch.equal(b, buffers[name]):  # them (an expanded one cannot be)
                    b.copy_(buffers[name])
    return values


@dataclass
class Use:
    """A module reached by channel ids: a producer's outputs, a sink's or follower's inputs."""

    name: str
    node: fx.Node
    ids: list[int]  # channel id per entry of the channel axis (per column for a Linear)
    groups: int = 1  # a grouped convolution's groups (its groups go whole)
    axis: int = 1  # where those channels are: 1, or the last axis for a Linear on tokens
    transposed: bool = False  # a transposed convolution reading them: nothing folds into it


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
    axis: dict[fx.Node, int] = field(default_factory=dict)  # where a node's ids are (≥ 0)
    root: nn.Module | None = None  # the traced model (gm holds bare copies of get_attr owners)
    pieces: dict[fx.Node, list[tuple[list[int], int]]] = field(default_factory=dict)  # chunk
    inputs: dict[str, list[int]] = field(default_factory=dict)  # free input → its ids
    pinned_at: dict[int, str] = field(default_factory=dict)  # id → the op that pinned it
    sized: list[SizedCall] = field(default_factory=list)  # splits / views an attribute sizes
    pools: list[tuple[Use, nn.Module]] = field(default_factory=list)  # see `_padded_pool`
    layer_norms: list[Use] = field(default_factory=list)  # followers over the channels
    parameters: list[Use] = field(default_factory=list)  # per-channel operands (layer scale)
    offsets: list[Use] = field(default_factory=list)  # those added in: class token, positions
    ties: dict[str, str] = field(default_factory=dict)  # a tied module → its table
    tied_weights: set[str] = field(default_factory=set)  # parameters another module holds
    tie_columns: dict[str, list[int]] = field(default_factory=dict)  # tied Linear → its ids
    tables: dict[str, list[int]] = field(default_factory=dict)  # embedding weight → its ids
    shared: dict[str, tuple[Use, Channels] | None] = field(default_factory=dict)  # `_shared_ids`

    # -- union-find ------------------------------------------------------------------
    def fresh(self, n: int, pinned: bool = False) -> list[int]:
        start = len(self.parent)
        new = list(range(start, start + n))
        self.parent.extend(new)
        if pinned:
            self.pinned.update(new)
        return new

    def add_producer(self, use: Use) -> None:
        """`use` writes its ids: unit k of the layer `use.name` is id `use.ids[k]`."""
        self.producers.append(use)
        self.owner.update((i, (use.name, unit)) for unit, i in enumerate(use.ids))

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
        """The recorded input of a sink or follower (first example of the batch), with its
        channels on dim 1 wherever the layer reads them (a Linear on tokens: the last)."""
        return self.values[use.node.args[0]][:1].movedim(use.axis, 1)

    def pin(self, ids: Collection[int], why: str) -> None:
        """`ids` may never go; `why` names the op, unless an earlier pin named one."""
        for i in ids:
            self.pinned_at.setdefault(i, why)
        self.pinned.update(ids)

    def pinned_fresh(self, n: int, why: str) -> list[int]:
        """New ids that may never go (an axis no rule follows), `why` naming the op."""
        ids = self.fresh(n, pinned=True)
        for i in ids:
            self.pinned_at[i] = why
        return ids


def _tensor(value: Any) -> bool:
    return isinstance(value, Tensor) and value.ndim >= 2


def _is_shape(value: Any) -> bool:
    """Sizes and shapes (x.size(0), x.shape) and a tensor's dtype or device (torch's
    encoder reads `src.dtype` for its masks) read no channel values: they pin nothing."""
    if isinstance(value, tuple | list):
        return all(isinstance(v, int) for v in value)
    return isinstance(value, int | torch.dtype | torch.device)


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
        cg.pin(ids, _describe(node))


Channels = tuple[list[int], int]
"""A node's channel ids and the axis they run along."""


def _module_flattens(cg: ChannelGraph, node: fx.Node, first: Channels) -> Channels | None:
    in_value, value = cg.values[node.args[0]], cg.values[node]
    return reshaped(*first, in_value.shape, value.shape)


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
    gm = trace(model, leaf_modules, inputs)
    cg = ChannelGraph(gm, record(gm, inputs), root=model)
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    tied = tied_layers(model)  # a weight tied to another module's: sliced alone, untied
    cg.ties = embedding_ties(model)  # ... unless both are sliced alike (`_unite_ties`)
    cg.tied_weights = {f"{layer}.weight" for layer in tied}
    calls.update(norm_owner(n) for n in gm.graph.nodes if _is(n, {F.batch_norm}, set()))
    channelwise = PASSTHROUGH + CHANNELWISE_MODULES + tuple(passthrough)
    for node in gm.graph.nodes:
        out = cg.values.get(node)
        if node.op == "output":
            _pin_args(cg, node)
            continue
        found: Channels | None = None
        args = [a for a in node.args if isinstance(a, fx.Node)]
        first = (cg.ids[args[0]], cg.axis[args[0]]) if args and args[0] in cg.ids else None
        if node.op == "get_attr":
            found = _table_read(cg, node)
        if node.op == "call_module":
            module, target = gm.get_submodule(str(node.target)), str(node.target)
            free = target not in tied or target in cg.ties
            table = isinstance(module, nn.Embedding)  # looked up again: the same columns
            once = (calls[node.target] == 1 or _stateless(module) or table) and free
            if not once and free and _shareable(module):
                found = _shared_ids(cg, node, module, first, channelwise)
            else:
                found = _module_ids(cg, node, module, first, once, channelwise)
            if target in cg.ties and found is not None and not table:
                cg.tie_columns[target] = _tie_columns(cg, target, found)
        elif node.op in ("call_function", "call_method"):
            if _chunk_pieces(cg, node, first) or split_pieces(cg, node, first):
                continue
            found = _function_ids(cg, node, first, calls)
        if found is None and node.op != "placeholder" and not _is_shape(out):
            _pin_args(cg, node)
        if node.op == "placeholder" and node.target in free_inputs and _tensor(out):
            found = (cg.fresh(out.shape[1]), 1)
            cg.inputs[str(node.target)] = found[0]
        if _tensor(out):
            if found is None or found[1] >= out.ndim or len(found[0]) != out.shape[found[1]]:
                found = (cg.pinned_fresh(out.shape[1], f"the output of {_describe(node)}"), 1)
            cg.ids[node], cg.axis[node] = found
    _unite_ties(cg)
    pin_size_reads(cg)
    _pin_valued_size_reads(cg)
    verify_sized_calls(cg, lambda root: trace(root, leaf_modules, inputs))
    return cg


def embedding_ties(model: nn.Module) -> dict[str, str]:
    """{module name: its table} of every module holding a weight that embedding tables
    share, with at most one Linear output layer and nothing else (an encoder's and a
    decoder's token tables and GPT-2's or BART's `lm_head`); the table is the first
    embedding holding it, whose weight the others are pointed back at after slicing
    (`graph._retie`). The lookups read the stream's channels as columns of the table and
    the Linear reads them as its columns: all lose the same ones (`_unite_ties`)."""
    ties: dict[str, str] = {}
    for holders in parameter_holders(model).values():
        held = [(name, module) for name, attr, module in holders if attr == "weight"]
        if len({id(m) for _, m in held}) < 2:
            continue  # one module (under one name or several): no tie
        tables = [n for n, m in held if isinstance(m, nn.Embedding)]
        layers = [n for n, m in held if type(m) is nn.Linear]
        if tables and len(layers) <= 1 and len(tables) + len(layers) == len(held):
            ties.update(dict.fromkeys([*tables, *layers], tables[0]))
    return ties


def _tie_columns(cg: ChannelGraph, name: str, found: Channels) -> list[int]:
    """The channel ids of the tied weight's columns at the output layer `name`: its
    input's (its own rows, the vocabulary, are pinned: they are the table's rows)."""
    cg.pin(found[0], f"the rows of {name!r}, the embedding table {cg.ties[name]!r} tied to it")
    return next(s.ids for s in reversed(cg.sinks) if s.name == name)


def _unite_ties(cg: ChannelGraph) -> None:
    """A tied output layer loses the columns its table loses: their ids go together;
    where the example reaches only one of the two, its columns stay (the other keeps them
    all). Lookups of one table share its ids already (`_table_ids`)."""
    for name, table in cg.ties.items():
        if name == table or not isinstance(cg.root.get_submodule(name), nn.Linear):
            continue
        columns, ids = cg.tie_columns.get(name), cg.tables.get(f"{table}.weight")
        if columns is not None and ids is not None:
            for a, b in zip(columns, ids, strict=True):
                cg.union(a, b)
        elif columns is not None:
            cg.pin(columns, f"tied to the table {table!r}, which the example does not look up")
        elif ids is not None:
            cg.pin(ids, f"its table is tied to {name!r}, which the example does not reach")


def _pin_valued_size_reads(cg: ChannelGraph) -> None:
    """A graph traced with the example's values holds every size the forward read as a
    constant (`bayesprune.tracing`): the channels of a tensor whose channel axis had
    its size read are pinned (fewer of them would change a size the forward uses)."""
    nodes = {n.name: n for n in cg.gm.graph.nodes}
    for name, dims in cg.gm.meta.get("size_reads", []):
        node = nodes.get(name)
        if node is None or node not in cg.ids or cg.axis[node] not in dims:
            continue
        why = f"its width read by the forward at {_describe(node)} (traced with values)"
        cg.pin(cg.ids[node], why)
    for (name, dims), views in cg.gm.meta.get("view_reads", []):
        node = nodes.get(name)
        if node is None or node not in cg.ids or cg.axis[node] not in dims:
            continue
        groups = [cg.find(i) for i in cg.ids[node]]
        for view in (nodes[v] for v in views):
            if not _view_follows(cg, view, (name, dims), groups):
                why = f"its width given to {_describe(view)} (traced with values)"
                cg.pin(cg.ids[node], why)
                cg.pin(cg.ids.get(view, []), why)


def _view_follows(
    cg: ChannelGraph, view: fx.Node, read: tuple[str, tuple[int, ...]], groups: list[int]
) -> bool:
    """The view puts the size `read` where its output's channels are, and those are the
    channels it was read off (`groups`): fewer of them, the size follows."""
    if view not in cg.ids:
        return False
    at = [p for p, r in view.meta.get("read_sizes", {}).items() if tuple(r) == tuple(read)]
    same = [cg.find(i) for i in cg.ids[view]] == groups
    return same and all(p == cg.axis[view] for p in at)


def _shareable(module: nn.Module) -> bool:
    """A module whose every call may share its channels: a prunable layer (not grouped)
    or a LayerNorm / RMSNorm over the channels; ALBERT calls one such layer at every
    depth, DeBERTa's key projection reads the tokens and the relative positions."""
    if isinstance(module, MultiheadAttention) or getattr(module, "groups", 1) > 1:
        return False
    if is_prunable(module):
        return True
    norm = isinstance(module, nn.LayerNorm | ZeroCountingLayerNorm)
    return norm or layer_norm_layout(module) is not None or is_rms_norm(module)


def _shared_ids(
    cg: ChannelGraph,
    node: fx.Node,
    module: nn.Module,
    first: Channels | None,
    channelwise: tuple[type[nn.Module], ...],
) -> Channels | None:
    """One call of a module that the graph calls several times (`_shareable`): every call
    reads the same columns and writes the same units. The first call is taken as a call
    of its own; a later one is a sink whose columns are united with the first call's,
    and gives the first call's unit ids (a layer keeps one producer). A call that is not
    understood or does not fit (other widths or axes) pins the module's channels in
    every call, those before it and those after (`cg.shared[name]` is then None)."""
    name = str(node.target)
    if name not in cg.shared:
        found = None if first is None else _module_ids(cg, node, module, first, True, channelwise)
        if found is None or first is None:
            cg.shared[name] = None  # its later calls pin too
            return None
        use = next((u for u in reversed(cg.sinks) if u.node is node), None)
        cg.shared[name] = (use or Use(name, node, first[0], axis=first[1]), found)
        return found
    earlier = cg.shared[name]
    if earlier is None or first is None:
        if earlier is not None:
            cg.pin([*earlier[0].ids, *earlier[1][0]], f"a call of {_describe(node)}")
        cg.shared[name] = None
        return None
    sink, out = earlier
    why = f"a call of {_describe(node)} that its other calls' channels do not fit"
    value, in_value = cg.values[node], cg.values[node.args[0]]
    if is_prunable(module):  # its columns: those of every call; its units: one set
        ids, reads, units = _read_columns(cg, node, module, first)
        if len(ids) != len(sink.ids) or value.shape[units] != len(out[0]):
            cg.pin([*ids, *sink.ids, *out[0]], why)
            return None
        cg.sinks.append(Use(name, node, ids, sink.groups, reads))
        found: Channels = (out[0], units)
    else:  # a norm over the channels: the same channels in every call
        if first[1] != sink.axis or len(first[0]) != len(sink.ids) or value.shape != in_value.shape:
            cg.pin([*first[0], *sink.ids, *out[0]], why)
            return None
        if any(u.node is sink.node for u in cg.layer_norms):  # its statistics read them here
            cg.layer_norms.append(Use(name, node, first[0], axis=first[1]))
        ids, found = first[0], (out[0], first[1])
    for a, b in zip(ids, sink.ids, strict=True):
        cg.union(a, b)
    return found


def _stateless(module: nn.Module) -> bool:
    """No parameters or buffers: calling it twice (one nn.ReLU reused) shares nothing."""
    return next(module.parameters(), None) is None and next(module.buffers(), None) is None


def _module_ids(
    cg: ChannelGraph,
    node: fx.Node,
    module: nn.Module,
    first: Channels | None,
    called_once: bool,
    channelwise: tuple[type[nn.Module], ...],
) -> Channels | None:
    value = cg.values[node]
    if isinstance(module, MultiheadAttention):
        return _attention_ids(cg, node, module, first) if called_once else None
    if isinstance(module, nn.Embedding):
        return _embedding_ids(cg, node, module) if called_once and _tensor(value) else None
    if not called_once or first is None or not _tensor(value):
        return None  # shared modules and modules on non-channel tensors stay as they are
    ids, axis = first
    in_value = cg.values[node.args[0]]
    joins = getattr(module, "joins", None)
    if joins == "add":
        return _elementwise_ids(cg, node)
    if joins == "cat":
        return _cat_ids(cg, node.args, value.ndim, 1)
    if getattr(module, "flattens", False) or isinstance(module, nn.Flatten):
        whole = not isinstance(module, nn.Flatten) or (module.start_dim, module.end_dim) == (1, -1)
        return _module_flattens(cg, node, first) if whole else None
    if is_prunable(module):
        return _layer_ids(cg, node, module, first)
    if isinstance(module, TRANSPOSED) and module.groups == 1 and axis == 1:
        return _transposed_ids(cg, node, first)
    if isinstance(module, nn.LayerNorm | ZeroCountingLayerNorm) or (
        layer_norm_layout(module) is not None
    ):
        return _layer_norm_ids(cg, node, module, first)
    if is_rms_norm(module):  # Llama's stream: the mean square over the channels
        last = axis == value.ndim - 1 and value.shape == in_value.shape
        return _reads_every_channel(cg, node, first) if last else None
    if (layout := response_norm_layout(module)) is not None:
        if axis != layout % value.ndim or value.shape != in_value.shape:
            return None
        return _reads_every_channel(cg, node, first)
    if axis != 1:  # channels last (tokens): only ops that act on each entry apart pass
        same = value.shape == in_value.shape
        return first if same and isinstance(module, ELEMENTWISE_MODULES) else None
    if isinstance(module, NORMS) or is_frozen_norm(type(module)):
        cg.followers.append(Use(str(node.target), node, ids))
        return first
    if one_group_norm(module):  # statistics over every channel: counts removed zeros
        return _reads_every_channel(cg, node, first)
    if isinstance(module, nn.GroupNorm):
        size = module.num_channels // module.num_groups  # statistics shared within a group
        for g in range(module.num_groups):
            for i in ids[g * size + 1 : (g + 1) * size]:
                cg.union(ids[g * size], i)
        cg.followers.append(Use(str(node.target), node, ids))
        return first
    if isinstance(module, nn.AvgPool1d | nn.AvgPool2d | nn.AvgPool3d) and _pads_zeros_in(module):
        pool = (module.kernel_size, module.stride, module.padding, module.ceil_mode)
        return _padded_pool(cg, node, first, *pool, getattr(module, "divisor_override", None))
    if isinstance(module, channelwise) or getattr(module, "channelwise", False):
        return first if value.shape[1] == in_value.shape[1] else None
    return None


def _attention_ids(
    cg: ChannelGraph, node: fx.Node, module: MultiheadAttention, first: Channels | None
) -> Channels | None:
    """bayesprune's MultiheadAttention as self-attention (one tensor its query, key and
    value, channels on the last axis): `q_proj`, `k_proj` and `v_proj` are sinks of
    the stream's channels (their columns are cut), `out_proj` writes fresh units into
    the stream (its rows), so a residual stream narrows through it. The heads between
    them are units of their own (`heads`): pinned here."""
    value = cg.values[node]
    query, key, val = (_arg(node, i, n, None) for i, n in enumerate(("query", "key", "value")))
    if first is None or not query is key is val or not isinstance(value, tuple):
        return None
    if not _tensor(value[0]) or first[1] != cg.values[query].ndim - 1:
        return None
    name, (ids, axis) = str(node.target), first
    for projection in ("q_proj", "k_proj", "v_proj"):
        layer, full = module.get_submodule(projection), f"{name}.{projection}"
        cg.sinks.append(Use(full, node, ids, 1, axis))
        heads = cg.pinned_fresh(layer.out_features, f"the heads of {name} (units of their own)")
        cg.add_producer(Use(full, node, heads, 1, axis))
    out = cg.fresh(module.out_proj.out_features)
    cg.add_producer(Use(f"{name}.out_proj", node, out, 1, value[0].ndim - 1))
    cg.pieces[node] = [(out, value[0].ndim - 1), ([], 0)]
    return first


def _embedding_ids(cg: ChannelGraph, node: fx.Node, module: nn.Embedding) -> Channels | None:
    """An embedding lookup writes the stream's first channels (a language model's tokens
    and positions): its output's last axis is the weight's columns. A `max_norm`
    renormalises each row over all its columns: pinned."""
    if module.max_norm is not None:
        return None
    table = cg.ties.get(str(node.target), str(node.target))
    return _table_ids(cg, f"{table}.weight", node, module.embedding_dim), cg.values[node].ndim - 1


def _table_ids(cg: ChannelGraph, weight: str, node: fx.Node, width: int) -> list[int]:
    """The channel ids of the columns of the table `weight`: fresh at its first lookup,
    sliced with the channels (`parameters`) and zeroed where `prune_units` drops one
    (`offsets`: the table's values are constants, which a LayerNorm after the lookup
    could not fold); every other lookup of it (an encoder's and a decoder's) gives the
    same ids, so the streams it writes lose the same columns."""
    if weight not in cg.tables:
        use = Use(weight, node, cg.fresh(width), axis=1)
        cg.parameters.append(use)
        cg.offsets.append(use)
        cg.tables[weight] = use.ids
    return cg.tables[weight]


def _table_read(cg: ChannelGraph, node: fx.Node) -> Channels | None:
    """An embedding table read whole (DeBERTa's relative position embeddings,
    `self.rel_embeddings.weight`, normalised and projected by its attention's layers):
    its columns are the table's channel ids, as in a lookup of it."""
    target = str(node.target)
    owner, _, attr = target.rpartition(".")
    value = cg.values.get(node)
    if attr != "weight" or cg.root is None or not _tensor(value) or value.ndim != 2:
        return None
    try:
        module = cg.root.get_submodule(owner)
    except AttributeError:
        return None
    if not isinstance(module, nn.Embedding) or module.max_norm is not None:
        return None
    if target in cg.tied_weights and owner not in cg.ties:
        return None
    table = cg.ties.get(owner, owner)
    return _table_ids(cg, f"{table}.weight", node, value.shape[1]), 1


def _factory_ids(cg: ChannelGraph, node: fx.Node) -> Channels | None:
    """A new tensor whose dim is sized by a channel count the forward read
    (`torch.zeros((b * t, x.size(-1)))`: Mixtral's buffer that its experts add into):
    that dim holds the channels the count was read off, since with fewer of them the
    forward reads a smaller count and makes a narrower tensor. The count is a node of a
    symbolic trace, or, traced with values, a size the node notes (`read_sizes`); a
    second such dim is left to the size checks, which pin its channels."""
    shape = factory_shape(node.target, node.args, node.kwargs)
    reads = node.meta.get("read_sizes", {})
    names = {n.name: n for n in cg.gm.graph.nodes} if reads else {}
    for at, size in enumerate(shape):
        source = channel_size_of(cg, size) if isinstance(size, fx.Node) else None
        if at in reads:
            name, dims = reads[at]
            read = names.get(name)
            if read is not None and read in cg.ids and tuple(dims) == (cg.axis[read],):
                source = read
        if source is not None:
            return cg.ids[source], at
    return None


def _functional_embedding_ids(cg: ChannelGraph, node: fx.Node) -> Channels | None:
    """`F.embedding(ids, self.weight)` (an nn.Embedding subclass with a forward of its
    own: OPT's learned positions, BART's scaled token table): as an embedding module,
    when every read of the table is such a lookup and there is no `max_norm`."""
    weight = _arg(node, 1, "weight", None)
    source = _parameter_of(weight, cg.values) if isinstance(weight, fx.Node) else None
    if source is None or weight is not source:
        return None
    table, target = cg.values.get(source), str(source.target)
    reads = [n for n in cg.gm.graph.nodes if n.op == "get_attr" and n.target == source.target]
    lookups = all(_is(u, {F.embedding}, set()) for n in reads for u in n.users)
    if not isinstance(table, Tensor) or table.ndim != 2 or not lookups:
        return None
    owner = target.rpartition(".")[0]
    if target in cg.tied_weights and owner not in cg.ties:
        return None
    if _arg(node, 3, "max_norm", None) is not None:
        return None
    weight = f"{cg.ties[owner]}.weight" if owner in cg.ties else target
    return _table_ids(cg, weight, source, table.shape[1]), cg.values[node].ndim - 1


def _layer_norm_ids(
    cg: ChannelGraph, node: fx.Node, module: nn.Module, first: Channels
) -> Channels | None:
    """A LayerNorm: over other axes than the channels it passes them; over the channels
    alone it follows them (`layer_norms`: a channel goes through it only where it is
    exactly 0 and its scale there is 0, and it becomes a `ZeroCountingLayerNorm`);
    over the channels and more it pins."""
    value, in_value = cg.values[node], cg.values[node.args[0]]
    axes = normalised_axes(module, in_value.ndim)
    if axes is None or value.shape != in_value.shape:
        return None
    if first[1] not in axes:
        return first
    if axes != {first[1]}:
        return None
    return _reads_every_channel(cg, node, first)


def _reads_every_channel(cg: ChannelGraph, node: fx.Node, first: Channels) -> Channels:
    """A norm whose statistics read every channel (LayerNorm over the channels, GroupNorm
    with one group, GRN): a follower in `layer_norms`, which `shrink_graph` lets a
    channel through only where it is exactly 0 and rebuilds counting the zeros."""
    use = Use(str(node.target), node, first[0], axis=first[1])
    cg.followers.append(use)
    cg.layer_norms.append(use)
    return first


def _read_columns(
    cg: ChannelGraph, node: fx.Node, module: nn.Module, first: Channels
) -> tuple[list[int], int, int]:
    """A prunable layer's input column ids, the axis it reads (a convolution dim 1, a
    Linear the last) and the axis of its units. Where the input's ids run along another
    axis, those and these stay (pinned)."""
    value, in_value = cg.values[node], cg.values[node.args[0]]
    ids, axis = first
    reads = 1 if hasattr(module, "in_channels") else in_value.ndim - 1
    if reads != axis:
        _pin_args(cg, node)
        ids = cg.pinned_fresh(in_value.shape[reads], f"the input of {_describe(node)}")
    return ids, reads, 1 if reads == 1 else value.ndim - 1


def _layer_ids(cg: ChannelGraph, node: fx.Node, module: nn.Module, first: Channels) -> Channels:
    """A prunable layer: a sink for its input columns, the producer of fresh unit ids.

    A convolution reads dim 1; a Linear reads the last axis (dim 1 of a feature matrix,
    the channels of tokens B × T × C or of a channels-last map). Columns on an axis the
    input's ids do not run along are pinned; a depthwise convolution follows its input.
    """
    name, value = str(node.target), cg.values[node]
    groups = getattr(module, "groups", 1)
    ids, reads, units = _read_columns(cg, node, module, first)
    if groups > 1 and groups == module.in_channels == module.out_channels:
        cg.followers.append(Use(name, node, ids))  # depthwise: follows its producer
        return ids, reads
    cg.sinks.append(Use(name, node, ids, groups, reads))
    out = cg.fresh(value.shape[units])
    cg.add_producer(Use(name, node, out, groups, units))
    if groups > 1:  # a group of a grouped conv goes whole: its inputs with its outputs
        k, m = len(ids) // groups, len(out) // groups
        for g in range(groups):
            for i in [*ids[g * k : (g + 1) * k], *out[g * m : (g + 1) * m]]:
                cg.union(out[g * m], i)
    return out, units


def _transposed_ids(cg: ChannelGraph, node: fx.Node, first: Channels) -> Channels:
    """A transposed convolution (a U-Net's upsampling): a sink for its input channels and
    the producer of its output channels, like a convolution (`adapters.TransposedLayer`
    gives it a layer's view of its weight). It stays deterministic, and nothing is
    folded into it: a constant through a strided transposed convolution is not a
    constant, so a dead channel it reads goes only where it is exactly 0."""
    name = str(node.target)
    cg.sinks.append(Use(name, node, first[0], transposed=True))
    out = cg.fresh(cg.values[node].shape[1])
    cg.add_producer(Use(name, node, out))
    return out, 1


def _padded_pool(
    cg: ChannelGraph,
    node: fx.Node,
    first: Channels,
    kernel: Any,
    stride: Any,
    padding: Any,
    ceil_mode: bool,
    divisor: Any,
) -> Channels | None:
    """An average pooling that counts its zero padding: channelwise, so its channels pass,
    but a removed channel's constant c leaves it as c · (in-bound taps) / k, which varies
    at the border with the input's size. It computes a depthwise convolution with weights
    1/k, recorded beside it (`cg.pools`) for the fold's size check, as for a padded
    depthwise convolution. With `ceil_mode` (windows past the padding) or a divisor of
    its own that equivalence fails: pinned."""
    value, ids = cg.values[node], first[0]
    if ceil_mode or divisor is not None or first[1] != 1 or value.shape[1] != len(ids):
        return None
    dims = value.ndim - 2
    conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]
    depthwise = conv(len(ids), len(ids), kernel, stride, padding, groups=len(ids), bias=False)
    with torch.no_grad():
        depthwise.weight.fill_(1.0 / math.prod(depthwise.kernel_size))
    cg.pools.append((Use(node.name, node, ids), depthwise.to(value)))
    return first


def _pads_zeros_in(pool: nn.Module) -> bool:
    padding = pool.padding if isinstance(pool.padding, tuple) else (pool.padding,)
    return bool(pool.count_include_pad and any(padding))


def _is(node: fx.Node, functions: set[Any], methods: set[str]) -> bool:
    if node.op == "call_method":
        return node.target in methods
    return node.op == "call_function" and node.target in functions


def _per_sample(node: fx.Node) -> bool:
    """A call of one of the `_PER_SAMPLE` functions."""
    return node.op == "call_function" and _per_sample_function(node.target)


def _per_sample_function(target: Any) -> bool:
    named = (getattr(target, "__module__", None), getattr(target, "__name__", None))
    return named in _PER_SAMPLE


def _arg(node: fx.Node, pos: int, name: str, default: Any) -> Any:
    return node.kwargs.get(name, node.args[pos] if len(node.args) > pos else default)


def _chunk_pieces(cg: ChannelGraph, node: fx.Node, first: Channels | None) -> bool:
    """`chunk` along the channel axis into equal pieces: position p of every piece is one group.

    The forward asks for n equal pieces, so a channel may go only together with the
    channel at the same position of every other piece (pieces stay equal): a gated
    unit `a * silu(b)` after `x.chunk(2, dim=-1)` goes with its gate. Uneven chunks and
    `split` (its sizes are constants of the forward) are pinned.
    """
    if first is None or not _is(node, _CHUNK, _CHUNK_METHODS):
        return False
    ids, axis = first
    pieces, value = _arg(node, 1, "chunks", None), cg.values[node]
    dim = _arg(node, 2, "dim", 0)
    channels = len(ids)
    if not isinstance(pieces, int) or not isinstance(dim, int) or dim % value[0].ndim != axis:
        return False
    if channels % pieces or len(value) != pieces:
        return False
    size = channels // pieces
    for p in range(size):
        for k in range(1, pieces):
            cg.union(ids[p], ids[k * size + p])
    cg.pieces[node] = [(ids[k * size : (k + 1) * size], axis) for k in range(pieces)]
    return True


def _function_ids(
    cg: ChannelGraph, node: fx.Node, first: Channels | None, calls: Counter
) -> Channels | None:
    """`calls`: per module, the calls that use it (called, or its tensors read)."""
    target, value = node.target, cg.values[node]
    if not _tensor(value):
        return None
    if target is operator.getitem:
        return _getitem_ids(cg, node)
    if node.op == "call_function" and target in FACTORIES:
        return _factory_ids(cg, node)
    if _is(node, {torch.index_add}, {"index_add", "index_add_"}):
        return _index_add_ids(cg, node)
    if _is(node, _ADD | _MUL, _ADD_METHODS | _MUL_METHODS):
        return _elementwise_ids(cg, node)
    if _is(node, {F.embedding}, set()):
        return _functional_embedding_ids(cg, node)
    if _is(node, _CAT, set()):
        parts = node.args[0] if node.args else node.kwargs.get("tensors")
        return _cat_ids(cg, parts, value.ndim, _arg(node, 1, "dim", 0))
    if first is None or not isinstance(node.args[0], fx.Node):
        return None
    if _is(node, {F.batch_norm}, set()):
        return _functional_norm(cg, node, first, calls)
    ids, axis = first
    in_value = cg.values[node.args[0]]
    if _is(node, set(), {"reshape_as", "view_as"}):
        return _reshaped_as(cg, node, first)
    if _is(node, _RESHAPE, _RESHAPE_METHODS):
        moved = reshaped(ids, axis, in_value.shape, value.shape)
        if moved is not None and node.target in _SIZED and not size_follows(node, moved[1]):
            # the size that holds the channels is a constant of the forward: pinned,
            # unless an attribute of the module holds it (`graph_sizes`)
            return moved if sized_view(cg, node, moved) else None
        return moved
    if (moved := permuted(node, axis, in_value.ndim)) is not None:
        return ids, moved
    if _is(node, _REDUCE, _REDUCE_METHODS):
        dim = _arg(node, 1, "dim", None)
        kept = reduced(dim, bool(_arg(node, 2, "keepdim", False)), axis, in_value.ndim)
        return None if kept is None else (ids, kept)
    if _is(node, {torch.roll}, {"roll"}):  # Swin's shifted windows: positions move
        dims = _arg(node, 2, "dims", None)
        dims = [dims] if isinstance(dims, int) else dims
        rolls_positions = dims is not None and axis not in {d % in_value.ndim for d in dims}
        return first if rolls_positions else None
    if _is(node, {F.pad}, set()):
        return first if _pads_positions(node, axis, in_value.ndim) else None
    if node.op == "call_function" and _opaque(node.target):
        return first if _passes_channels(cg, node, axis) else None
    if axis != 1:  # channels last: only ops that act on each entry apart pass
        elementwise = _is(node, _ELEMENTWISE, _CHANNELWISE_METHODS) or _per_sample(node)
        return first if elementwise and value.shape == in_value.shape else None
    if _is(node, _CHANNELWISE, _CHANNELWISE_METHODS) or _per_sample(node):
        return first if value.shape[:2] == in_value.shape[:2] else None
    if _is(node, {F.avg_pool1d, F.avg_pool2d, F.avg_pool3d}, set()):
        padding = _arg(node, 3, "padding", 0)
        padded = any(padding) if isinstance(padding, tuple | list) else bool(padding)
        if padded and _arg(node, 5, "count_include_pad", True):
            kernel = _arg(node, 1, "kernel_size", None)
            stride = _arg(node, 2, "stride", None) or kernel
            ceil, divisor = (
                _arg(node, 4, "ceil_mode", False),
                _arg(node, 6, "divisor_override", None),
            )
            return _padded_pool(cg, node, first, kernel, stride, padding, ceil, divisor)
        return first if value.shape[:2] == in_value.shape[:2] else None
    return None


def _reshaped_as(cg: ChannelGraph, node: fx.Node, first: Channels) -> Channels | None:
    """`x.reshape_as(y)` (LeViT's `bn(x.flatten(0, 1)).reshape_as(x)`): as a reshape, its
    sizes y's, so the channels pass where y holds them on the same axis; the two tensors'
    channels are then one (they must shrink together)."""
    other = node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
    if not isinstance(other, fx.Node) or other not in cg.ids:
        return None
    moved = reshaped(first[0], first[1], cg.values[node.args[0]].shape, cg.values[node].shape)
    if moved is None or cg.axis[other] != moved[1] or len(cg.ids[other]) != len(moved[0]):
        return None
    if len(moved[0]) != len(first[0]):
        return None  # the channels repeat over positions: not one id per entry of y's axis
    for a, b in zip(moved[0], cg.ids[other], strict=True):
        cg.union(a, b)
    return moved


def _pads_positions(node: fx.Node, axis: int, ndim: int) -> bool:
    """`F.pad` that leaves the channel axis unpadded (pairs count from the last axis)."""
    pad = _arg(node, 1, "pad", None)
    if not isinstance(pad, tuple | list):
        return False
    pair = 2 * (ndim - 1 - axis)  # the other sizes may be values of the forward (Swin's)
    unpadded = tuple(pad[pair : pair + 2]) in ((), (0, 0))
    return unpadded and _arg(node, 2, "mode", "constant") == "constant"


def _opaque(target: Any) -> bool:
    """A Python function fx kept whole (a library's `register_notrace_function`: timm's
    `window_reverse`), not one of torch's, whose channels no rule above reads."""
    module = getattr(target, "__module__", None) or ""
    return callable(target) and not module.startswith(("torch", "_operator", "builtins", "math"))


def _passes_channels(cg: ChannelGraph, node: fx.Node, axis: int) -> bool:
    """An opaque function whose one tensor argument carries the channels on `axis` passes
    them when a probe shows it commutes with permuting them and with dropping some (the
    output then has them on the same axis): called again on the recorded input with its
    channels reversed, and with the last one dropped."""
    value, source = cg.values[node], node.args[0]
    tensors = [a for a in node.all_input_nodes if isinstance(cg.values.get(a), Tensor)]
    if tensors != [source] or not _tensor(value) or value.ndim != cg.values[source].ndim:
        return False
    x = cg.values[source]
    if x.shape[axis] < 2 or value.shape[axis] != x.shape[axis]:
        return False
    n = x.shape[axis]
    flip, fewer = torch.arange(n - 1, -1, -1), torch.arange(n - 1)

    def call(inp: Tensor) -> Any:
        def load(a: fx.Node) -> Any:
            return inp if a is source else cg.values[a]

        args, kwargs = _mutable(fx.node.map_arg((node.args, node.kwargs), load))
        return node.target(*args, **kwargs)

    try:
        with torch.no_grad():
            flipped = call(x.index_select(axis, flip))
            dropped = call(x.index_select(axis, fewer))
    except Exception:  # the function needs the channel count it had: it pins them
        return False
    expected = (value.index_select(axis, flip), value.index_select(axis, fewer))
    return all(
        isinstance(got, Tensor) and got.shape == want.shape and torch.equal(got, want)
        for got, want in zip((flipped, dropped), expected, strict=True)
    )


def norm_owner(node: fx.Node) -> str | None:
    """The one module whose tensors (statistics, affine parameters) a call reads."""
    owners = {str(a.target).rpartition(".")[0] for a in node.all_input_nodes if a.op == "get_attr"}
    return owners.pop() if len(owners) == 1 else None


def _functional_norm(
    cg: ChannelGraph, node: fx.Node, first: Channels, calls: Counter
) -> Channels | None:
    """`F.batch_norm` on the statistics and affine parameters of one BatchNorm module, as
    in a subclass with its own `forward` (timm's BatchNormAct2d: the normalisation, then
    an activation): that module follows the channels, as a BatchNorm module does. One
    used by several calls (`calls`), or a mix of modules' tensors, pins."""
    owner = norm_owner(node)
    if owner is None or first[1] != 1 or cg.root is None:
        return None
    if not isinstance(cg.root.get_submodule(owner), NORMS) or calls[owner] != 1:
        return None
    cg.followers.append(Use(owner, node, first[0]))
    return first


def _cat_ids(cg: ChannelGraph, parts: Any, ndim: int, dim: int) -> Channels | None:
    """A concatenation along the channels: the parts' id lists, one after the other (the
    pieces of a `chunk` or a sized split handed over whole: `torch.cat(x.chunk(2, 1), 1)`);
    along another axis see `_cat_along_positions`."""
    if isinstance(parts, fx.Node):
        pieces = cg.pieces.get(parts, [])
        if not pieces or any(axis != dim % ndim for _, axis in pieces):
            return None
        return [i for ids, _ in pieces for i in ids], dim % ndim
    if all(p in cg.ids and cg.axis[p] == dim % ndim for p in parts):
        return [i for p in parts for i in cg.ids[p]], dim % ndim
    return _cat_along_positions(cg, parts, ndim, dim % ndim)


def _cat_along_positions(cg: ChannelGraph, parts: Any, ndim: int, dim: int) -> Channels | None:
    """A concatenation along an axis other than the channels (a ViT's class token before
    its patches: B×1×C and B×N×C along the tokens): channel c of the output is channel c
    of every part, so those unite. A part that is a parameter of the model (the class
    token, `expand`ed to the batch) is sliced with them and is an offset (`offsets`)."""
    if not isinstance(parts, tuple | list) or not all(isinstance(p, fx.Node) for p in parts):
        return None
    shaped = [p for p in parts if p in cg.ids and _parameter_of(p, cg.values) is None]
    axes = {cg.axis[p] for p in shaped}
    if len(axes) != 1 or (axis := axes.pop()) == dim:
        return None
    ids = cg.ids[shaped[0]]
    if any(len(cg.ids[p]) != len(ids) for p in shaped):
        return None
    parameters = []
    for p in parts:
        if p in shaped:
            continue
        value = cg.values.get(p)
        if not isinstance(value, Tensor) or value.ndim != ndim:
            return None
        if (parameter := _per_channel_parameter(cg, p, value, axis)) is None:
            return None
        parameters.append(parameter)
    return _unite(cg, [cg.ids[p] for p in shaped], parameters, added=True), axis


def _unite(
    cg: ChannelGraph, operands: list[list[int]], parameters: list[Use], added: bool
) -> list[int]:
    """Unite the channels of `operands` and `parameters` position by position, record the
    parameters (as offsets when they are `added` into the channels); the first's ids."""
    ids = operands[0]
    for other in [*operands[1:], *(p.ids for p in parameters)]:
        for a, b in zip(ids, other, strict=True):
            cg.union(a, b)
    cg.parameters.extend(parameters)
    if added:
        cg.offsets.extend(parameters)  # a class token, a position embedding: nonzero channels
    return ids


def _elementwise_ids(cg: ChannelGraph, node: fx.Node) -> Channels | None:
    """`+ − × ÷` of tensors: operands with the output's channels unite position by position.

    A residual sum and a squeeze-excitation product (x · s, s of shape N×C×1×1) both
    make channel c of the output depend on channel c of each operand only, so those
    channels go together. An operand that does not reach the channel axis (a scalar, an
    H×W map) or has size 1 there (N×1×H×W, an attention mask B×T×1 on tokens B×T×C)
    broadcasts over every channel: its own channels are pinned. A parameter of the
    model with one value per channel (a C×1×1 layer scale, one of size C on tokens)
    goes with them (`_per_channel_parameter`).
    Any other operand that reaches the channel axis (a tensor whose ids run along
    another axis, a parameter with values per position too) pins everything.
    """
    value = cg.values[node]
    nodes = [a for a in node.args if isinstance(a, fx.Node)]
    tensors = [(a, v) for a in nodes if isinstance(v := cg.values.get(a), Tensor)]
    shaped = [
        a for a, v in tensors
        if a in cg.ids and _parameter_of(a, cg.values) is None and v.ndim == value.ndim
        and v.shape[cg.axis[a]] == value.shape[cg.axis[a]]
    ]  # fmt: skip
    axes = {cg.axis[a] for a in shaped}
    if len(axes) > 1:  # a mask B×T×1 (ids along the tokens) times the stream B×T×C
        fits = [
            x for x in axes if all(cg.axis[a] == x or cg.values[a].shape[x] == 1 for a in shaped)
        ]
        axes = set(fits)
        shaped = [a for a in shaped if fits and cg.axis[a] == fits[0]]
    if len(axes) != 1:
        return None
    axis = axes.pop()
    parameters = []
    for a, v in tensors:
        if a in shaped:
            continue
        at = axis - (value.ndim - v.ndim)  # the operand's dim that meets the channels
        aligned = a in cg.ids and cg.axis[a] == at and len(cg.ids[a]) == value.shape[axis]
        if aligned and _parameter_of(a, cg.values) is None:
            shaped.append(a)  # fewer dims, its channels where the output's are (T × C)
            continue
        if at < 0 or v.shape[at] == 1:
            cg.pinned.update(cg.ids.get(a, []))
        elif (parameter := _per_channel_parameter(cg, a, v, at)) is not None:
            parameters.append(parameter)
        else:
            return None
    added = _is(node, _ADD, _ADD_METHODS)
    return _unite(cg, [cg.ids[s] for s in shaped], parameters, added), axis


_PARAMETER_VIEWS = {"reshape", "view", "unsqueeze", "squeeze", "flatten", "expand", torch.reshape,
                    torch.unsqueeze, torch.squeeze, torch.flatten}  # fmt: skip


def _parameter_of(node: fx.Node, values: dict[fx.Node, Any]) -> fx.Node | None:
    """The get_attr node (a parameter or buffer of the model) `node` is, or is a view of
    (`self.gamma.reshape(1, -1, 1, 1)`, `self.cls_token.expand(B, -1, -1)`), each step
    read by one op only; else None."""
    while node.op != "get_attr":
        if node.op not in ("call_method", "call_function") or node.target not in _PARAMETER_VIEWS:
            return None
        source = node.args[0] if node.args else None
        if not isinstance(source, fx.Node) or len(source.users) != 1:
            return None
        if node.target in _SIZED and not _sizes_free(node) and not _sizes_written(node):
            return None  # `x.view(2, -1)`: not one value per channel
        if node.target == "expand" and not _expand_keeps(node, values.get(source)):
            return None  # `expand(B, 1, 192)`: so does this
        node = source
    return node


def _expand_keeps(node: fx.Node, source: Any) -> bool:
    """An `expand` that keeps every axis of its input longer than 1 (-1 there): it only
    broadcasts, whatever the number of channels."""
    sizes = view_sizes(node)
    if not isinstance(source, Tensor) or len(sizes) < source.ndim:
        return False
    kept = sizes[len(sizes) - source.ndim :]
    return all(s == -1 for s, n in zip(kept, source.shape, strict=True) if n != 1)


def _positional(node: fx.Node) -> bool:
    """`node` is a get_attr, or one expanded: its axes line up with the stored tensor's
    from the right, so the channel axis is found by position, not by size."""
    while node.op != "get_attr":
        if node.target != "expand":
            return False
        node = node.args[0]
    return True


def _sizes_written(node: fx.Node) -> bool:
    """A view / reshape whose sizes are 1s and one written count (`view(320, 1, 1)`): it
    passes the channels only where an attribute holds that count (`_written_view`)."""
    sizes = view_sizes(node)
    return all(isinstance(s, int) and s > 0 for s in sizes) and sum(s != 1 for s in sizes) == 1


def _written_view(node: fx.Node) -> fx.Node | None:
    """The view with written sizes on the way from `node` to its parameter, if any."""
    while node.op != "get_attr":
        if node.target in _SIZED and not _sizes_free(node):
            return node
        node = node.args[0]
    return None


def _sizes_free(node: fx.Node) -> bool:
    """A view / reshape whose sizes are 1s and one -1 (`reshape(1, -1, 1, 1)`): the count
    it passes is the parameter's, whatever it is."""
    sizes = view_sizes(node)
    return all(isinstance(s, int) and s in (1, -1) for s in sizes) and sizes.count(-1) == 1


def _per_channel_parameter(cg: ChannelGraph, node: fx.Node, value: Tensor, at: int) -> Use | None:
    """A parameter or buffer of the model with values per channel on its dim `at`, read by
    this op alone: it is sliced with the channels (`parameters`). Read as stored or
    expanded (a position embedding N×C, a class token 1×1×C), any other dims may hold
    values too; through a view (ConvNeXt's layer scale C reshaped to C×1×1) it must hold
    one value per channel and nothing else."""
    source = _parameter_of(node, cg.values)
    if source is None or len(node.users) != 1:
        return None
    same_target = [n for n in cg.gm.graph.nodes if n.op == "get_attr" and n.target == source.target]
    stored = cg.values.get(source)
    size = value.shape[at]
    if len(same_target) != 1 or not isinstance(stored, Tensor):
        return None
    if _positional(node):
        axis = at - (value.ndim - stored.ndim)
        if axis < 0 or stored.shape[axis] != size:
            return None
        return Use(str(source.target), source, cg.fresh(size), axis=axis)
    if stored.numel() != size or any(s != 1 for d, s in enumerate(value.shape) if d != at):
        return None
    axis = next(d for d, s in enumerate(stored.shape) if s == size)
    ids = cg.fresh(size)
    written = _written_view(node)
    if written is not None and not sized_parameter_view(cg, written, ids):
        return None  # `self.scale.view(320, 1, 1)`: the forward fixes the channel count
    return Use(str(source.target), source, ids, axis=axis)


def _index_add_ids(cg: ChannelGraph, node: fx.Node) -> Channels | None:
    """`out.index_add_(0, rows, source)`: rows of `source` added into `out` along a dim
    that is not the channels': channel c of the result is channel c of both, which
    unite (Mixtral adds each expert's output into the stream's buffer)."""
    out, dim = node.args[0], _arg(node, 1, "dim", None)
    source = node.args[3] if len(node.args) > 3 else node.kwargs.get("source")
    if not (isinstance(out, fx.Node) and isinstance(source, fx.Node) and isinstance(dim, int)):
        return None
    if out not in cg.ids or source not in cg.ids:
        return None
    axis, ndim = cg.axis[out], cg.values[out].ndim
    if dim % ndim == axis or cg.axis[source] != axis or cg.values[source].ndim != ndim:
        return None
    if len(cg.ids[source]) != len(cg.ids[out]):
        return None
    return _unite(cg, [cg.ids[out], cg.ids[source]], [], added=False), axis


def _rows_gathered(cg: ChannelGraph, node: fx.Node, index: Any, axis: int) -> int | None:
    """`x[None, rows]` (Mixtral gathering the tokens routed to an expert): new dims and
    one 1-d tensor of positions, none of them on the channel axis or after it. The
    channels pass; the axis they land on, or None for any other index."""
    if not isinstance(index, tuple) or Ellipsis in index:
        return None
    picked = [e for e in index if isinstance(e, fx.Node)]
    if len(picked) != 1 or any(not isinstance(e, fx.Node) and e is not None for e in index):
        return None
    positions = cg.values.get(picked[0])
    if not isinstance(positions, Tensor) or positions.ndim != 1:
        return None
    consumed = sum(e is not None for e in index)
    moved = len(index) + axis - consumed
    value = cg.values[node]
    if consumed > axis or moved >= value.ndim:
        return None
    return moved if value.shape[moved] == cg.values[node.args[0]].shape[axis] else None


def _getitem_ids(cg: ChannelGraph, node: fx.Node) -> Channels | None:
    """A piece of a `chunk`, `x[:, a:b]` on channels, or `x[:, 0]` on tokens.

    The slice bounds are constants of the forward. `x[:, a:]` reads the channels from
    position a on: those before a are pinned (their count fixes where a falls), the
    rest pass and may go. `x[:, :-k]` and `x[:, -k:]` pin the last k; `x[:, :b]` pins
    everything up to b, unless b reaches past the last channel: then it is the identity,
    and stays so when there are fewer. Rows sliced on dim 0 (`table[0:k, :]`, `x[:1]`)
    pass every channel. Any other index (a step, an integer, a tensor) pins. With the
    channels after dim 1 (tokens), indexing the positions only passes them
    (`graph_axes.indexed`).
    """
    source, index = node.args[0], node.args[1]
    if source in cg.pieces and isinstance(index, int):
        return cg.pieces[source][index]
    ids = cg.ids.get(source)
    if ids is None:
        return None
    if (gathered := _rows_gathered(cg, node, index, cg.axis[source])) is not None:
        return ids, gathered
    if cg.axis[source] != 1:
        moved = indexed(index, cg.axis[source])
        return None if moved is None else (ids, moved)
    if (
        isinstance(index, slice)
        or (  # rows only (dim 0: `table[0:k, :]`): every channel
            isinstance(index, tuple)
            and index
            and isinstance(index[0], slice)
            and all(r == slice(None) or r is Ellipsis for r in index[1:])
        )
    ):
        return ids, 1
    if not isinstance(index, tuple) or len(index) < 2:
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
    if start == 0 and stop is not None and stop >= n:
        return ids, 1  # covers every channel, and will with fewer: GhostNet's out[:, :out_chs]
    if stop is None and start >= 0:
        cg.pinned.update(ids[:start])
    elif (stop is None and start < 0) or (start == 0 and stop is not None and stop < 0):
        cg.pinned.update(ids[-abs(start or stop) :])
    else:
        cg.pinned.update(ids[: stop if stop >= 0 else n])
    return ids[start:stop], 1
