"""Which layers' parameters a model reads outside the layers themselves.

A Bayesian layer has no fixed `.weight`: its weights are random. Code that reads a
layer's weight itself (timm's BEiT and EVA attention call `F.linear(x, self.qkv.weight,
bias)`, torchvision's Swin passes `self.qkv.weight` to a function, XCiT asks
`self.token_projection.weight.device`) would bypass the posterior, and a weight shared by
two modules (a language model's tied embedding and output layer) would be untied by
converting one of them. `convert` keeps such layers deterministic; this module finds
them, without running the model: `torch.fx` traces its `forward` symbolically and
records every read of a layer's parameter that happens outside that layer's own
`forward` (layers are leaves of the trace, so their own reads are never seen). Where a
module cannot be traced, its children are, one by one; a read inside an untraceable
module's own code is not seen, and the Bayesian layer's error names the fix there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from torch import fx, nn

from .base import SerializableLayer


@contextlib.contextmanager
def no_proxies_left(model: nn.Module) -> Iterator[None]:
    """Caches a module fills while it is traced (timm's LeViT and EfficientFormer keep
    their attention biases in a dict per device in eval mode) would hold proxies of that
    trace, which a later trace or a forward would read as values: such entries are
    removed, and attributes set to a proxy get their value back."""
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


class _ReadRecorder(fx.Tracer):
    """A tracer that notes each parameter of `owners` read while it traces, with the
    module whose forward read it. Layers (torch's, ours, any module without children)
    stay leaves."""

    def __init__(self, owners: dict[int, tuple[str, str]], prefix: str) -> None:
        super().__init__()
        self.owners = owners
        self.prefix = prefix
        self.reads: dict[str, str] = {}

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        # a module without children (a user's subclass of nn.Conv1d too) reads its own
        return (
            isinstance(m, SerializableLayer)
            or next(m.children(), None) is None
            or super().is_leaf_module(m, module_qualified_name)
        )

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        owner = self.owners.get(id(attr_val))
        if owner is not None:
            layer, name = owner
            reader = next(reversed(self.module_stack.values()), ("", None))[0]
            reader = ".".join(p for p in (self.prefix, reader) if p) or "the model"
            self.reads.setdefault(layer, f"`{name}` read in the forward of {reader!r}")
        return super().getattr(attr, attr_val, parameter_proxy_cache)


def _layer_parameters(model: nn.Module) -> dict[int, tuple[str, str]]:
    """id of each parameter of a leaf layer -> (the layer's name, the parameter's name)."""
    owners: dict[int, tuple[str, str]] = {}
    for qualified, module in model.named_modules():
        if qualified and not list(module.children()):
            for name, p in module.named_parameters(recurse=False):
                owners.setdefault(id(p), (qualified, name))
    return owners


def _shared(model: nn.Module) -> dict[str, str]:
    """Layers holding a parameter that another module holds too (tied weights)."""
    holders: dict[int, list[str]] = {}
    for qualified, module in model.named_modules(remove_duplicate=False):
        for name, p in module.named_parameters(recurse=False):
            holders.setdefault(id(p), []).append(f"{qualified}.{name}" if qualified else name)
    shared: dict[str, str] = {}
    for names in holders.values():
        unique = list(dict.fromkeys(names))
        if len(unique) > 1:
            for full in unique:
                layer, _, name = full.rpartition(".")
                others = [o for o in unique if o != full]
                shared.setdefault(layer, f"`{name}` is shared with {others[0]!r}")
    return shared


def _traces(tracer: fx.Tracer, module: nn.Module) -> bool:
    """Whether `tracer` traces `module` whole (what it recorded before failing stands)."""
    try:
        with no_proxies_left(module):
            tracer.trace(module)
    except Exception:  # fx raises TraceError, TypeError, RuntimeError, ...
        return False
    return True


def layers_read_outside(model: nn.Module) -> dict[str, str]:
    """{layer name: why} for every layer (a module without children) whose parameters the
    model reads outside the layer's own forward, or shares with another module.

    Nothing is run: the model is traced symbolically (untraceable modules are skipped,
    their traceable children traced). Used by `convert` to keep such layers
    deterministic; call it to see what `convert` will keep and why."""
    owners = _layer_parameters(model)
    found = dict(_shared(model))
    names = {id(m): q for q, m in model.named_modules()}

    def visit(module: nn.Module) -> None:
        if not list(module.children()) or isinstance(module, SerializableLayer):
            return  # a layer: its own reads are its business
        tracer = _ReadRecorder(owners, names.get(id(module), ""))
        traced = _traces(tracer, module)
        for layer, why in tracer.reads.items():
            found.setdefault(layer, why)
        if not traced:
            for child in module.children():
                visit(child)

    visit(model)
    return found
