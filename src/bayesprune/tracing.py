"""torch.fx helpers shared by `convert` (which layers' weights the model reads) and the
graph compression: caches left clean after a trace, and tracing with the example's values.

**Tracing with the example's values**, the fallback for forwards that branch on shapes.

`torch.fx` traces with proxies that hold no values, so a forward that unpacks
`batch, length = input_ids.size()`, compares `x.dim() == 3`, or checks that an optional
argument is None (Hugging Face's BERT, GPT-2 and ViT do all three) cannot be traced.
`ExampleValues` is a tracer mixin that runs every recorded op on the example inputs as
it records it (posterior means, no gradients), so each proxy carries its value: a
tensor's sizes, number of dims, dtype and device are then plain Python values, and
arguments of `forward` the example does not give keep their defaults (the trace goes
through a forward that takes only the example's arguments).
The caller chooses what the values are computed with (the graph uses posterior means).

What this costs: the sizes are constants of the graph, fixed at the example's. Each
size answered is a `SizeRead`, an int that notes how the forward uses it: as a number
(arithmetic, a comparison, an argument of an op; the graph depends on it, and the
channels it counts are kept), only as a size of a view or reshape (recorded on that
node: the view follows the channels as a symbolic trace's would), or not at all
(`batch, length, _ = x.size()`: nothing is kept). It is used only where the symbolic
trace fails. Branches on a tensor's *values* (`if x.sum() > 0`) still fail: a graph
that held one branch would be silently wrong for other inputs.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import operator
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.overrides import TorchFunctionMode


@contextlib.contextmanager
def no_proxies_left(model: nn.Module) -> Iterator[None]:
    """Caches a module fills while it is traced (timm's LeViT and EfficientFormer keep
    their attention biases in a dict per device in eval mode; a forward that appends its
    features to a list) would hold proxies of that trace, which a later trace or a
    forward would read as values: such entries are removed, and attributes set to a
    proxy get their value back."""
    before = {id(m): dict(vars(m)) for m in model.modules()}
    try:
        yield
    finally:
        for m in model.modules():
            for name, value in list(vars(m).items()):
                if isinstance(value, fx.Proxy):
                    if name in before.get(id(m), {}):
                        setattr(m, name, before[id(m)][name])
                    else:
                        delattr(m, name)
                elif isinstance(value, dict):
                    for key in [k for k, v in value.items() if isinstance(v, fx.Proxy)]:
                        del value[key]
                elif isinstance(value, list) and any(isinstance(v, fx.Proxy) for v in value):
                    value[:] = [v for v in value if not isinstance(v, fx.Proxy)]


_UNKNOWN = object()
_SHAPE_METHODS = frozenset({"size", "dim", "ndimension", "numel", "nelement"})
"""Tensor methods whose answer is a fact of the shape: answered, not recorded."""
_SHAPE_ATTRIBUTES = frozenset({"shape", "ndim"})
_TYPE_FACTS = frozenset({"dtype", "device", "is_cuda", "layout", "is_floating_point"})
_DATA_SHAPED = frozenset(
    {
        "nonzero",
        "argwhere",
        "masked_select",
        "unique",
        "unique_consecutive",
        "bincount",
    }
)
"""Ops whose output's shape depends on the input's values, not its shape: a size read off
their result (or anything computed from it) is not answered, so a branch on it fails as
in a symbolic trace instead of being fixed at what this example happened to give."""


class SizeRead(int):
    """A size the forward read off a tensor while traced with values: a plain int that
    notes when it is used. Python arithmetic, comparisons, formatting and hashing mark
    it (`_mark`), so does entering the graph as an op's argument (`ExampleValues.
    create_arg`); a size unpacked and never touched (`batch, length, _ = x.size()`)
    stays unused, and the graph does not depend on it. Its results are plain ints."""

    read: tuple[str, tuple[int, ...]]  # (node name, the dims this size stands for)
    used: bool  # used as a number (anything but a size of a view / reshape)
    views: list[str]  # the views / reshapes it went into as a size (node names)

    def _mark(self) -> int:
        self.used = True
        return int.__int__(self)


def _marking(name: str) -> Callable[..., Any]:
    plain = getattr(int, name)

    def method(self: SizeRead, *args: Any) -> Any:
        self._mark()
        return plain(self, *args)

    method.__name__ = name
    return method


_MARKING = (
    "__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__floordiv__",
    "__rfloordiv__", "__truediv__", "__rtruediv__", "__mod__", "__rmod__", "__divmod__",
    "__rdivmod__", "__pow__", "__rpow__", "__neg__", "__pos__", "__abs__", "__invert__",
    "__and__", "__rand__", "__or__", "__ror__", "__xor__", "__rxor__", "__lshift__",
    "__rlshift__", "__rshift__", "__rrshift__", "__eq__", "__ne__", "__lt__", "__le__",
    "__gt__", "__ge__", "__hash__", "__bool__", "__index__", "__int__", "__float__",
    "__round__", "__trunc__", "__floor__", "__ceil__", "__format__", "__str__", "__repr__",
    "__reduce__", "__reduce_ex__", "__copy__", "__deepcopy__", "bit_length", "to_bytes",
    "as_integer_ratio", "conjugate",
)  # fmt: skip
"""int's methods through which a `SizeRead` is used: each marks it."""
for _name in _MARKING:
    if hasattr(int, _name):
        setattr(SizeRead, _name, _marking(_name))


class Sizes(tuple):
    """The sizes of a tensor as `SizeRead`s (`x.shape`, `x.size()`): a tuple, with
    `torch.Size`'s `numel`; slicing and `+` give plain tuples of them."""

    def numel(self) -> int:
        return math.prod(self)


class ExampleProxy(fx.Proxy):
    """A proxy that knows its value on the example inputs (`example`, when computed) and
    whether its shape follows from the inputs' shapes alone (`shape_known`). Every size
    it answers is noted in its tracer's `size_reads` (node name, the dims read): the
    graph holds those sizes as constants, so whoever reads the graph must keep them."""

    def __getattr__(self, name: str) -> Any:
        value = self.__dict__.get("example", _UNKNOWN)
        if isinstance(value, Tensor):
            if name in _TYPE_FACTS:
                return getattr(value, name)
            shaped = name in _SHAPE_METHODS or name in _SHAPE_ATTRIBUTES
            if shaped and self.__dict__.get("shape_known", False):
                return self._answer(name, value)
        return super().__getattr__(name)

    def _answer(self, name: str, value: Tensor) -> Any:
        if name in ("ndim", "dim", "ndimension"):
            return getattr(value, name)  # the number of dims: no size
        if name == "shape":
            return Sizes(self._read(value.shape[d], (d,)) for d in range(value.ndim))
        if name == "size":

            def size(dim: int | None = None) -> Any:
                if dim is None:
                    return Sizes(self._read(value.shape[d], (d,)) for d in range(value.ndim))
                return self._read(value.size(dim), (dim % value.ndim,))

            return size
        every = tuple(range(value.ndim))  # numel, nelement: a product of every size
        return lambda: self._read(value.numel(), every)

    def _read(self, size: int, dims: tuple[int, ...]) -> int:
        """`size` as a `SizeRead` noted in the tracer's `size_answers`."""
        answer = SizeRead(size)
        answer.read, answer.used, answer.views = (self.node.name, dims), False, []
        answers = getattr(self.tracer, "size_answers", None)
        if answers is not None:
            answers.append(answer)
        return answer

    def __setitem__(self, key: Any, value: Any) -> None:
        """`x[:, 1:] = y` (BART shifts its tokens so): recorded as `operator.setitem`,
        which the graph runs in place, in order, as the forward did."""
        self.tracer.create_proxy("call_function", operator.setitem, (self, key, value), {})

    def __len__(self) -> int:
        value = self.__dict__.get("example", _UNKNOWN)
        if value is _UNKNOWN or not self.__dict__.get("shape_known", False):
            return super().__len__()
        return self._read(len(value), (0,))._mark()  # len() makes a plain int of it


def _data_shaped(kind: str, target: Any, args: Any) -> bool:
    """Whether the op's output shape depends on values (`_DATA_SHAPED`, a boolean mask)."""
    name = target if kind == "call_method" else getattr(target, "__name__", "")
    if name in _DATA_SHAPED or (name == "where" and len(args) == 1):
        return True
    if name == "repeat_interleave":  # by a tensor of counts; by a number, shaped
        repeats = args[1] if len(args) > 1 else args[0]
        return isinstance(repeats, Tensor)
    if name == "getitem" and len(args) == 2:
        index = args[1] if isinstance(args[1], tuple) else (args[1],)
        return any(isinstance(i, Tensor) and i.dtype == torch.bool for i in index)
    return False


_RANDOM = ("rand", "bernoulli", "multinomial", "normal", "poisson", "dropout")


def _constant_index(target: Any, args: Any) -> bool:
    """A boolean-mask `getitem` whose mask is a constant (T5: `mask =
    torch.ones(n_heads); mask[list(self.pruned_heads)] = 0`, a tensor the forward makes
    outside the graph) or computed in the graph from constants alone (sizes included:
    the valued graph holds them as constants): its output's shape is then fixed."""
    if target is not operator.getitem or len(args) != 2:
        return False
    index = args[1] if isinstance(args[1], tuple) else (args[1],)
    return all(_constant_node(i.node) for i in index if isinstance(i, fx.Proxy))


def _constant_node(node: fx.Node) -> bool:
    """`node` is computed from constants only (no input, parameter, buffer or random
    draw), and so is every in-place write into what it reads (`operator.setitem`)."""
    known = node.meta.get("constant")
    if known is not None:
        return bool(known)
    node.meta["constant"] = False  # until shown: a cycle is not constant
    name = str(getattr(node.target, "__name__", node.target))
    constant = node.op in ("call_function", "call_method") and not any(r in name for r in _RANDOM)
    constant = constant and all(_constant_node(n) for n in node.all_input_nodes)
    writes = [u for u in node.users if u.target is operator.setitem and u.args[0] is node]
    constant = constant and all(
        _constant_node(n) for w in writes for n in w.all_input_nodes if n is not node
    )
    node.meta["constant"] = constant
    return constant


def _shape_known(args: Any) -> bool:
    """No argument's shape came from values."""
    known = True

    def visit(a: Any) -> Any:
        nonlocal known
        if isinstance(a, ExampleProxy) and not a.__dict__.get("shape_known", False):
            known = False
        return a

    fx.node.map_aggregate(args, visit)
    return known


def _values(arg: Any) -> Any:
    return fx.node.map_aggregate(arg, _value_of)


def _value_of(a: Any) -> Any:
    """A proxy's value on the example; a tensor attribute read without a call (`w.T` in
    Falcon's linear layers, an fx `Attribute`) is that attribute of its owner's value."""
    if isinstance(a, ExampleProxy):
        return a.__dict__.get("example", _UNKNOWN)
    if isinstance(a, fx.proxy.Attribute):
        owner = _value_of(a.root)
        return _UNKNOWN if owner is _UNKNOWN else getattr(owner, a.attr)
    return a


class ExampleValues(fx.Tracer):
    """Mixin for an fx.Tracer: proxies carry their values on `inputs` (module docstring).
    Use `trace_with_values`, which sets the inputs and traces through a forward taking
    exactly them."""

    inputs: dict[str, Any]  # forward's argument name -> its value in the example
    size_answers: list[SizeRead]  # every size answered while tracing
    size_reads: list[tuple[str, tuple[int, ...]]]  # (node name, dims) of the sizes used
    view_reads: list[tuple[tuple[str, tuple[int, ...]], list[str]]]  # only views' sizes
    _view_sizes: frozenset[int] = frozenset()  # ids of the sizes of the view being made

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return ExampleProxy(node, self)

    def create_arg(self, a: Any) -> Any:
        if isinstance(a, SizeRead):  # a size in the graph: a constant it depends on
            return int.__int__(a) if id(a) in self._view_sizes else a._mark()
        if isinstance(a, Sizes):
            return torch.Size(self.create_arg(list(a)))
        return super().create_arg(a)

    def call_module(
        self, m: nn.Module, forward: Callable[..., Any], args: tuple[Any, ...], kwargs: dict
    ) -> Any:
        self._forward = forward  # a leaf's own forward, for its value (not fx's wrapper)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        if getattr(self, "_computing", False):
            return attr_val  # the value's own attribute reads are not recorded
        out = super().getattr(attr, attr_val, parameter_proxy_cache)
        if isinstance(out, ExampleProxy) and "example" not in out.__dict__:
            out.example, out.shape_known = attr_val, True
        return out

    def create_proxy(
        self, kind: str, target: Any, args: Any, kwargs: Any, *rest: Any, **options: Any
    ) -> Any:
        views, outer = _view_size_reads(kind, target, args, kwargs), self._view_sizes
        self._view_sizes = frozenset(id(a) for a in views.values())
        try:
            proxy = super().create_proxy(kind, target, args, kwargs, *rest, **options)
        finally:
            self._view_sizes = outer
        if views and isinstance(proxy, fx.Proxy):  # the view's sizes remember their source
            proxy.node.meta["read_sizes"] = {at: a.read for at, a in views.items()}
            for a in views.values():
                a.views.append(proxy.node.name)
        if isinstance(proxy, ExampleProxy):
            self._computing = True
            try:
                values, named = _values(args), _values(kwargs)
                proxy.example = self._value(kind, target, values, named)
                shaped = _data_shaped(kind, target, values) and not _constant_index(target, args)
                known = _shape_known((args, kwargs)) and not shaped
                proxy.shape_known = known and proxy.example is not _UNKNOWN
            except Exception:  # an op the example cannot run: the proxy stays symbolic
                proxy.example, proxy.shape_known = _UNKNOWN, False
            finally:
                self._computing = False
        return proxy

    def _value(self, kind: str, target: Any, args: Any, kwargs: Any) -> Any:
        if kind == "placeholder":
            return self.inputs.get(str(target), _UNKNOWN)
        if kind == "get_attr":
            return _attr(self.root, str(target))
        if kind == "call_function":
            return target(*args, **kwargs)
        if kind == "call_method":
            return getattr(args[0], target)(*args[1:], **kwargs)
        if kind == "call_module":
            return self._forward(*args, **kwargs)
        return _UNKNOWN


def _attr(root: nn.Module, target: str) -> Any:
    value: Any = root
    for atom in target.split("."):
        value = getattr(value, atom)
    return value


def _given_names(model: nn.Module, given: int) -> list[str] | None:
    """The names of the first `given` arguments of `model.forward` when the example can
    pass them by position, else None."""
    params = list(inspect.signature(model.forward).parameters.values())[:given]
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if len(params) < given or any(p.kind not in positional for p in params):
        return None
    return [p.name for p in params]


@contextlib.contextmanager
def forward_taking(
    model: nn.Module,
    names: Sequence[str],
    constants: dict[str, Any] | None = None,
    result: Callable[[Any], Any] | None = None,
    keywords: Sequence[str] = (),
) -> Iterator[None]:
    """`model`'s class, for the block, has a forward taking exactly `names` and then
    `keywords` by position, and calling its own with `names` by position, `keywords`
    and `constants` by keyword; `result` (default: as it is) applied to what it
    returns. fx reads the new forward's argument names."""
    cls = type(model)
    arguments = ", ".join([*names, *keywords])
    passed = ", ".join(["self", *names, *(f"{k}={k}" for k in keywords), "**_constants"])
    source = f"def forward(self, {arguments}):\n    return _result(_forward({passed}))\n"
    scope: dict[str, Any] = {
        "_forward": cls.forward,
        "_constants": dict(constants or {}),
        "_result": result or (lambda out: out),
    }
    exec(source, scope)  # a real code object with these argument names: fx reads it
    model.__class__ = type(cls.__name__, (cls,), {"forward": scope["forward"]})
    try:
        yield
    finally:
        model.__class__ = cls


def _forward_of(model: nn.Module, names: list[str]) -> contextlib.AbstractContextManager[None]:
    """`forward_taking` the example's arguments: the others keep their defaults inside
    (not proxies), and a `**kwargs` in the signature, which fx's argument patching fails
    on (Hugging Face's Llama), is never seen; what a graph cannot return is None."""
    return forward_taking(model, names, result=_representable)


def _representable(output: Any) -> Any:
    """`output` with what a graph cannot return (a cache object among a model's outputs:
    Hugging Face's `DynamicCache`) as None; tensors, proxies, numbers and containers
    of them are kept. Only the graph's output changes: the model itself is not run so."""
    if isinstance(output, fx.Proxy | Tensor | int | float | bool | str | type(None)):
        return output
    if isinstance(output, dict):
        return {k: _representable(v) for k, v in output.items()}
    if isinstance(output, list | tuple) and not hasattr(output, "_fields"):
        return type(output)(_representable(v) for v in output)
    return None


@contextlib.contextmanager
def scripted_functions_as_python(model: nn.Module) -> Iterator[None]:
    """For the block, each TorchScript function (`@torch.jit.script`) that a module of
    `model` can call from its own source file's globals is the Python function it was
    compiled from, which a tracer can follow (a compiled function takes no proxies:
    Hugging Face's DeBERTa scales its attention by one)."""
    swapped: list[tuple[Any, str, Any]] = []
    files = {sys.modules.get(type(m).__module__) for m in model.modules()}
    for namespace in files - {None}:
        for name, value in list(vars(namespace).items()):
            original = getattr(value, "_torchdynamo_inline", None)
            if isinstance(value, torch.jit.ScriptFunction) and callable(original):
                swapped.append((namespace, name, value))
                setattr(namespace, name, original)
    try:
        yield
    finally:
        for namespace, name, value in swapped:
            setattr(namespace, name, value)


def trace_with_values(tracer: ExampleValues, model: nn.Module, inputs: Sequence[Any]) -> fx.Graph:
    """`tracer.trace(model)` with every proxy valued on `inputs` (no gradients, the
    model's mode kept): `inputs` are the forward's first positional arguments, the rest
    keep their defaults."""
    names = _given_names(model, len(inputs))
    if names is None:
        raise TypeError(
            f"{type(model).__name__}.forward does not take its {len(inputs)} example "
            "input(s) by position"
        )
    tracer.inputs = dict(zip(names, inputs, strict=True))
    tracer.size_answers = []
    with torch.no_grad(), _forward_of(model, names), _EagerSizeUses(tracer):
        graph = tracer.trace(model)
    _mark_constant_sizes(tracer, graph)
    tracer.size_reads = [a.read for a in tracer.size_answers if a.used]
    tracer.view_reads = [(a.read, a.views) for a in tracer.size_answers if a.views and not a.used]
    return graph


FACTORIES = frozenset({torch.zeros, torch.ones, torch.empty, torch.full})
"""Torch functions that make a new tensor of a shape they are given."""


def factory_shape(func: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[Any]:
    """The shape a `FACTORIES` call is given (`torch.zeros((b, d))`, `torch.zeros(b, d)`,
    `torch.full((b, d), 0.0)`, `size=`), or [] for any other call."""
    if func not in FACTORIES:
        return []
    if "size" in kwargs:
        shape = kwargs["size"]
    elif func is torch.full or (args and isinstance(args[0], tuple | list | torch.Size)):
        shape = args[0] if args else ()
    else:
        shape = args
    return list(shape) if isinstance(shape, tuple | list | torch.Size) else []


class _EagerSizeUses(TorchFunctionMode):
    """Marks a `SizeRead` used where a torch function gets it with no proxy among its
    arguments (`torch.tensor(x.size(-1))`; a factory given one in its shape,
    `torch.zeros(b, t, d)`, is recorded as a node instead): such a call runs at
    once, reads the int in C, where no Python hook of the int sees it, and what it makes
    enters the graph as a constant. Calls on proxies are recorded, their sizes seen by
    `ExampleValues.create_arg` (and the tracer computing their values is not watched)."""

    def __init__(self, tracer: ExampleValues) -> None:
        super().__init__()
        self.tracer = tracer

    def __torch_function__(
        self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if getattr(self.tracer, "_computing", False):
            return func(*args, **kwargs)
        found: list[Any] = []
        fx.node.map_aggregate((tuple(args), kwargs), found.append)
        if any(isinstance(a, fx.Proxy) for a in found):
            return func(*args, **kwargs)
        if any(isinstance(s, SizeRead) for s in factory_shape(func, args, kwargs)):
            # a new tensor sized by a size read (Mixtral's `torch.zeros((b * t, width))`,
            # which its experts then add into): a node, so that what is done to it is
            # traced, and its sizes are noted as a view's are (`_view_size_reads`)
            return self.tracer.create_proxy("call_function", func, tuple(args), kwargs)
        for a in found:
            if isinstance(a, SizeRead):
                a._mark()
        return func(*args, **kwargs)


_VIEWS = frozenset({"view", "reshape"})


def _view_size_reads(kind: str, target: Any, args: Any, kwargs: Any) -> dict[int, SizeRead]:
    """{position in the new shape: size} of the `SizeRead`s a view / reshape is given
    (`x.view(b, t, c)`, `x.reshape((b, -1, c))`), or a new tensor (`torch.zeros((n, c))`);
    {} for any other op."""
    if kind == "call_function" and target in FACTORIES:
        shape = factory_shape(target, args, kwargs)
        return {at: s for at, s in enumerate(shape) if isinstance(s, SizeRead)}
    method = kind == "call_method" and target in _VIEWS
    if not (method or (kind == "call_function" and target is torch.reshape)):
        return {}
    sizes = list(args[1:]) or [kwargs.get("shape", ())]
    if len(sizes) == 1 and isinstance(sizes[0], tuple | list):
        sizes = list(sizes[0])
    return {at: s for at, s in enumerate(sizes) if isinstance(s, SizeRead)}


def _mark_constant_sizes(tracer: ExampleValues, graph: fx.Graph) -> None:
    """A size handed to a function outside torch (`np.zeros((b, t, d))`) is read by C
    code that neither a Python hook of the int nor `_EagerSizeUses` sees; the tensor made
    of it enters the graph as a constant. A size of such a constant's shape counts as
    used (conservative: a coincidence of sizes keeps channels, never loses any)."""
    root = tracer.root
    own = {n for n, _ in root.named_parameters()} | {n for n, _ in root.named_buffers()}
    shapes: set[int] = set()
    for node in graph.nodes:
        if node.op == "get_attr" and str(node.target) not in own:
            value = _attr(tracer.root, str(node.target))
            if isinstance(value, Tensor):
                shapes.update(int.__int__(s) for s in value.shape)
    for answer in tracer.size_answers:
        if int.__int__(answer) in shapes:
            answer.used = True
