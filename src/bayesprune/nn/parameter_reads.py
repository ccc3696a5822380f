"""Which layers' parameters a model reads outside the layers themselves.

A Bayesian layer has no fixed `.weight`: its weights are random. Code that computes with
a layer's weight itself (timm's BEiT and EVA attention call `F.linear(x, self.qkv.weight,
bias)`, torchvision's Swin passes `self.qkv.weight` to a function) would bypass the
posterior, and a weight shared by two modules (a language model's tied embedding and
output layer) would be untied by converting one of them. A read that only asks what the
weight is (T5's `self.wo.weight.dtype`, XCiT's `.weight.device`) is not counted: a
Bayesian layer answers it (`WeightMetadata`). `convert` keeps such layers
deterministic; this module finds them: `torch.fx` traces the `forward` symbolically
(nothing is run) and records every read of a layer's parameter that happens outside that
layer's own `forward` (layers are leaves of the trace, so their own reads are never
seen), with the uses of the value it read. Where a module cannot be traced, it is traced
with the values of example inputs if `convert` was given them (`bayesprune.tracing`:
Hugging Face's models branch on shapes), else its children are traced one by one; a
read inside an untraceable module's own code is not seen, and the Bayesian layer's
`.weight` answers it at run time (its dtype, device, shape) or names the fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import fx, nn

from ..example_inputs import Example, example_call, taking_by_position
from ..tracing import (
    ExampleValues,
    no_proxies_left,
    scripted_functions_as_python,
    trace_with_values,
)
from .base import SerializableLayer, use_posterior_mean
from .weight_metadata import METADATA_ATTRIBUTES, METADATA_METHODS


class _ReadRecorder(fx.Tracer):
    """A tracer that notes each parameter of `owners` read while it traces, with the
    module whose forward read it and the graph nodes the reads gave. Layers (torch's,
    ours, any module without children) stay leaves."""

    def __init__(self, owners: dict[int, tuple[str, str]], prefix: str) -> None:
        super().__init__()
        self.owners = owners
        self.prefix = prefix
        self.reads: dict[str, str] = {}
        self.read_nodes: dict[str, list[fx.Node | None]] = {}  # None: a read not in the graph

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        # a module without children (a user's subclass of nn.Conv1d too) reads its own
        return (
            isinstance(m, SerializableLayer)
            or next(m.children(), None) is None
            or super().is_leaf_module(m, module_qualified_name)
        )

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        out = super().getattr(attr, attr_val, parameter_proxy_cache)
        owner = self.owners.get(id(attr_val))
        if owner is not None:
            layer, name = owner
            reader = next(reversed(self.module_stack.values()), ("", None))[0]
            reader = ".".join(p for p in (self.prefix, reader) if p) or "the model"
            self.reads.setdefault(layer, f"`{name}` read in the forward of {reader!r}")
            node = out.node if isinstance(out, fx.Proxy) else None
            self.read_nodes.setdefault(layer, []).append(node)
        return out

    def value_reads(self) -> dict[str, str]:
        """The reads of a whole trace that use a parameter's values: those whose nodes
        are used only for what the tensor is (its dtype, device, shape: T5's
        `wo.weight.dtype`) a Bayesian layer answers too (`WeightMetadata`)."""
        return {
            layer: why
            for layer, why in self.reads.items()
            if not all(_metadata_only(node) for node in self.read_nodes[layer])
        }


def _metadata_only(node: fx.Node | None) -> bool:
    """Whether a parameter's node is used only to ask what kind of tensor it is."""
    if node is None:
        return False
    for user in node.users:
        if user.op == "call_function" and user.target is getattr:
            if user.args[1] in METADATA_ATTRIBUTES:
                continue
        elif user.op == "call_method" and user.target in METADATA_METHODS:
            continue
        return False
    return True


def _layer_parameters(model: nn.Module) -> dict[int, tuple[str, str]]:
    """id of each parameter of a leaf layer -> (the layer's name, the parameter's name)."""
    owners: dict[int, tuple[str, str]] = {}
    for qualified, module in model.named_modules():
        if qualified and not list(module.children()):
            for name, p in module.named_parameters(recurse=False):
                owners.setdefault(id(p), (qualified, name))
    return owners


def parameter_holders(model: nn.Module) -> dict[int, list[tuple[str, str, nn.Module]]]:
    """id of each parameter → (module name, parameter name, module) of every module that
    holds it, under each of its names."""
    holders: dict[int, list[tuple[str, str, nn.Module]]] = {}
    for qualified, module in model.named_modules(remove_duplicate=False):
        for name, p in module.named_parameters(recurse=False):
            holders.setdefault(id(p), []).append((qualified, name, module))
    return holders


def tied_layers(model: nn.Module) -> dict[str, str]:
    """{module name: why} of the modules holding a parameter that another module holds
    too (tied weights): converting or slicing one alone would untie them."""
    shared: dict[str, str] = {}
    for held in parameter_holders(model).values():
        if len({id(module) for *_, module in held}) < 2:
            continue  # one module under two names (T5's `shared`) is no tie
        unique = list(dict.fromkeys(f"{q}.{n}" if q else n for q, n, _ in held))
        for full in unique:
            layer, _, name = full.rpartition(".")
            others = [o for o in unique if o != full]
            shared.setdefault(layer, f"`{name}` is shared with {others[0]!r}")
    return shared


class _ValuedReadRecorder(ExampleValues, _ReadRecorder):
    """`_ReadRecorder` whose proxies carry their values on example inputs, so a forward
    that branches on shapes (Hugging Face's models) traces whole."""


def _traces(tracer: fx.Tracer, module: nn.Module, inputs: Sequence[Any] | None = None) -> bool:
    """Whether `tracer` traces `module` whole (what it recorded before failing stands)."""
    try:
        with no_proxies_left(module), scripted_functions_as_python(module):
            if isinstance(tracer, ExampleValues):
                with use_posterior_mean(module):
                    trace_with_values(tracer, module, inputs or ())
            else:
                tracer.trace(module)
    except Exception:  # fx raises TraceError, TypeError, RuntimeError, ...
        return False
    return True


def layers_read_outside(model: nn.Module, example_inputs: Example | None = None) -> dict[str, str]:
    """{layer name: why} for every layer (a module without children) whose parameters the
    model reads outside the layer's own forward, or shares with another module.

    The model is traced symbolically, nothing run (a module that does not trace is
    skipped and its children traced). With `example_inputs` (the forward's positional
    arguments, or its arguments by name in a mapping) a model whose symbolic trace
    fails is first traced with their values (`bayesprune.tracing`), which sees reads in
    code that branches on shapes. Used by
    `convert` to keep such layers deterministic; call it to see what `convert` will keep
    and why."""
    owners = _layer_parameters(model)
    found = dict(tied_layers(model))
    names = {id(m): q for q, m in model.named_modules()}

    def visit(module: nn.Module, inputs: Sequence[Any] | None = None) -> None:
        if not list(module.children()) or isinstance(module, SerializableLayer):
            return  # a layer: its own reads are its business
        tracer = _ReadRecorder(owners, names.get(id(module), ""))
        traced = _traces(tracer, module)
        reads = tracer.value_reads() if traced else dict(tracer.reads)
        if not traced and inputs is not None:
            valued = _ValuedReadRecorder(owners, names.get(id(module), ""))
            traced = _traces(valued, module, inputs)
            # whole with values, it is the trace of what runs; else every read counts
            reads = valued.value_reads() if traced else {**reads, **valued.reads}
        for layer, why in reads.items():
            found.setdefault(layer, why)
        if not traced:
            for child in module.children():
                visit(child)

    if example_inputs is None:
        visit(model)
        return found
    call = example_call(example_inputs)
    with taking_by_position(model, call):  # a keyword example: its tensors by position
        visit(model, call.inputs)
    return found
