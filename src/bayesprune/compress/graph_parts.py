"""The parts of a model that torch.fx can trace, when its whole `forward` cannot be.

A detector's `forward` loops over a list of images and filters boxes by score; a user's
may branch on a tensor's value. torch.fx cannot trace such code, so `shrink_graph` and
`activation_scores` would have nothing to work on. Instead they work on the model's
*parts*: the largest submodules that trace on their own. The example is run through the
whole model once (eval mode, posterior means), forward hooks record the arguments each
submodule receives, and the module tree is searched from the top: a submodule with
prunable layers is a part when its `forward` traces, takes tensors (by position or by
keyword, `mask=mask`) and constants (`return_dict=True`), and none of its modules is
called by code outside it; any other is searched inside. A part called by keyword takes
its tensors by position and is bound to its constants (`example_inputs.
taking_by_position`), and is traced with the values of its arguments where the
symbolic trace fails. Each part is then
analysed and shrunk as a model of its own, on the arguments it received: its inputs and
outputs are pinned, since the untraced code that feeds and reads them is unknown, so
every channel that leaves a part keeps its width and the code around it runs unchanged.
Prunable layers outside every part keep all their units. A part called several times (a
detector head applied to every level of a feature pyramid) is analysed on its first
call; `shrink_graph` checks every call, and the whole model's output.

Before parts are sought, a forward that fails only on shapes or optional arguments
(Hugging Face's) is traced with the example's values (`bayesprune.tracing`) and taken
whole, unless that trace calls a module with weights twice (a loop over the images it
unrolled), where parts come first if they hold at least half of the prunable layers and
the valued graph is the last resort.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, fx, nn

from ..example_inputs import Call, is_constant, taking_by_position
from ..nn.base import evaluation_pass
from .adapters import prunable_layers
from .graph_trace import (
    GraphTraceError,
    Tracer,
    trace,
    trace_with_example,
    unset_message,
    unset_reads,
)


@dataclass
class Part:
    """A submodule that traces on its own, and the call it received first (tensors by
    position or by keyword, constants by keyword: `return_dict=True`)."""

    name: str  # its qualified name in the model; "" for the whole model
    module: nn.Module
    call: Call
    calls: int = 1

    @property
    def prefix(self) -> str:
        """What its modules' names start with in the model ("" for the whole model)."""
        return f"{self.name}." if self.name else ""

    @property
    def inputs(self) -> tuple[Any, ...]:
        """Its arguments as it takes them inside `bound`: positional, then keyword tensors."""
        return self.call.inputs

    @contextlib.contextmanager
    def bound(self) -> Iterator[type[nn.Module]]:
        """For the block, the module called with `inputs` alone computes what its call
        in the model did (a Hugging Face encoder-decoder called by its classifier with
        `return_dict=True, use_cache=False, ...`, a block given `mask=mask`); yields its
        own class, which a copy made inside the block gets back with
        `copy.__class__ = cls`."""
        with taking_by_position(self.module, self.call) as cls:
            yield cls


@dataclass
class _Calls:
    tensors: bool  # the first call passed tensors (by position or keyword) and constants
    call: Call | None = None  # a copy of that call's arguments, when kept
    count: int = 1


@dataclass
class Parts:
    """The parts of a model, whole (`traced`) or not; `reason` says why not."""

    parts: list[Part]
    traced: bool
    reason: str = ""
    outside: list[str] = field(default_factory=list)  # prunable layers in no part

    def owner(self, name: str) -> Part | None:
        """The part holding module `name` (the whole model's name), or None."""
        for part in self.parts:
            if not part.name or name.startswith(part.name + "."):
                return part
        return None


def _detached(value: Any) -> Any:
    """A copy of an argument that later in-place ops of the forward cannot change."""
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, tuple | list):
        return type(value)(_detached(v) for v in value)
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value


def record_calls(
    model: nn.Module, inputs: tuple[Any, ...], names: Sequence[str], keep_args: bool = False
) -> tuple[dict[str, _Calls], set[str]]:
    """The number of calls of the submodules `names` in one forward of `inputs` (eval
    mode, posterior means, no gradients; the model's mode is put back), whether the first
    passed tensors only, and with `keep_args` a copy of its arguments; and those of
    `names` holding a module that is also called from outside their `forward` (a layer of
    a block that the model's own code calls directly, or a module shared with another
    block): shrinking such a block would change that other call."""
    calls: dict[str, _Calls] = {}
    active: dict[str, int] = dict.fromkeys(names, 0)
    named: dict[int, list[str]] = {}  # a candidate's module object → its names
    holders: dict[int, list[str]] = {}  # a module object → the candidates that hold it
    for name in names:
        block = model.get_submodule(name)
        named.setdefault(id(block), []).append(name)
        for module in block.modules():
            if module is not block:
                holders.setdefault(id(module), []).append(name)
    leaky: set[str] = set()

    def enter(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        leaky.update(h for h in holders.get(id(module), []) if not active[h])
        for name in named.get(id(module), []):
            active[name] += 1
            if name in calls:
                calls[name].count += 1
            else:
                tensors = all(isinstance(a, Tensor) for a in args) and all(
                    isinstance(v, Tensor) or is_constant(v) for v in kwargs.values()
                )
                keep = keep_args or (tensors and bool(kwargs))  # such a part is traced valued
                copied = Call.of(_detached(args), _detached(kwargs)) if keep else None
                calls[name] = _Calls(tensors, copied)

    def leave(module: nn.Module, _args: Any, _out: Any) -> None:
        for name in named[id(module)]:
            active[name] -= 1

    handles = [
        module.register_forward_pre_hook(enter, with_kwargs=True)
        for module in model.modules()
        if module is not model
    ]
    handles += [
        module.register_forward_hook(leave) for module in model.modules() if id(module) in named
    ]
    with evaluation_pass(model, handles):
        model(*inputs)
    return calls, leaky


def _traces(module: nn.Module, leaf_modules: Sequence[type[nn.Module]]) -> bool:
    try:
        trace(module, leaf_modules)
    except GraphTraceError:
        return False
    return True


def _part_traces(module: nn.Module, leaf_modules: Sequence[type[nn.Module]], call: _Calls) -> bool:
    """Whether `module` traces as it was called: symbolically, or, for a call that passed
    arguments by keyword (Hugging Face's models calling their encoder-decoder with
    constants, a block given `mask=mask`), taking them by position and with the values
    of the arguments it got (not unrolling a loop)."""
    if call.call is None or call.call.plain:
        return _traces(module, leaf_modules)
    with contextlib.suppress(ValueError), taking_by_position(module, call.call):
        if _traces(module, leaf_modules):
            return True
        valued = _valued_trace(module, leaf_modules, call.call.inputs)
        return valued is not None and not _repeated_calls(valued)
    return False  # a keyword its forward takes only through **kwargs with a bad name


VALUED = (
    "the forward was traced with the example's values (it branches on shapes, or leaves "
    "optional arguments at their defaults): the graph's sizes are the example's"
)


def _valued_trace(
    model: nn.Module, leaf_modules: Sequence[type[nn.Module]], inputs: tuple[Any, ...]
) -> fx.GraphModule | None:
    """The model traced with the example's values (`bayesprune.tracing`), or None (its
    symbolic trace is known to fail: `find_parts` tried it first)."""
    try:
        return trace_with_example(model, leaf_modules, inputs)
    except GraphTraceError:
        return None


def _repeated_calls(gm: fx.GraphModule) -> bool:
    """Whether a module with parameters is called more than once: a loop over the batch
    or the images that the valued trace unrolled, which parts handle better (a part is
    analysed on one call and checked on all)."""
    calls = Counter(str(n.target) for n in gm.graph.nodes if n.op == "call_module")
    return any(
        count > 1 and next(gm.get_submodule(name).parameters(), None) is not None
        for name, count in calls.items()
    )


def find_parts(
    model: nn.Module,
    inputs: tuple[Any, ...],
    leaf_modules: Sequence[type[nn.Module]] = (),
) -> Parts:
    """The whole model when it traces, else its largest traceable submodules (module
    docstring). A model that traces only with the example's values (`VALUED`) is taken
    whole unless that trace calls a module with parameters twice (a loop it unrolled),
    where parts come first when they hold at least half of the prunable layers. A
    GraphTraceError when neither it nor any submodule with prunable layers traces."""
    try:
        symbolic = trace(model, leaf_modules)
        if unset := unset_reads(symbolic, len(inputs)):
            raise GraphTraceError(unset_message(model, unset))
    except GraphTraceError as err:
        whole = err
    else:
        return Parts([Part("", model, Call(inputs))], traced=True)
    valued = _valued_trace(model, leaf_modules, inputs)
    if valued is not None and not _repeated_calls(valued):
        return Parts([Part("", model, Call(inputs))], traced=True, reason=VALUED)
    leaf = Tracer(leaf_modules).is_leaf_module
    layers = [name for name, _ in prunable_layers(model)]
    candidates = [  # not a layer itself, and holding layers to prune
        name
        for name, module in model.named_modules()
        if name and not leaf(module, name) and any(layer.startswith(name + ".") for layer in layers)
    ]
    calls, leaky = record_calls(model, inputs, candidates)
    chosen: list[str] = []

    def search(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            qualified = f"{prefix}.{name}" if prefix else name
            if qualified not in calls:
                continue  # a layer, nothing to prune, or not run by this example
            call = calls[qualified]
            if call.tensors and qualified not in leaky and _part_traces(child, leaf_modules, call):
                chosen.append(qualified)
            else:
                search(qualified, child)

    search("", model)
    # a second run keeps the chosen parts' arguments only (a detector at full size
    # would otherwise hold a copy of every candidate block's input at once)
    kept = record_calls(model, inputs, chosen, keep_args=True)[0] if chosen else {}
    parts = [
        Part(name, model.get_submodule(name), kept[name].call or Call(()), kept[name].count)
        for name in chosen
    ]
    if not parts and valued is None:
        raise GraphTraceError(
            f"{whole}; and no submodule of {type(model).__name__} with prunable layers "
            "traces on its own either"
        ) from whole
    found = Parts(parts, traced=False, reason=str(whole).split("; move that code")[0])
    found.outside = [n for n in layers if found.owner(n) is None]
    if valued is not None and len(found.outside) > len(layers) / 2:
        # the parts miss most layers: a module called twice in one pass (DeBERTa's key
        # projection reads the tokens and the relative positions) was no unrolled loop
        return Parts([Part("", model, Call(inputs))], traced=True, reason=VALUED)
    return found
