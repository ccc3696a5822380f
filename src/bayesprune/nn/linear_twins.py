"""Layers that compute a linear map with their weight stored transposed, or through a
forward of their own, as nn.Linear.

GPT-2 (and OpenAI GPT) write their projections as Hugging Face's `Conv1D`: a module
whose `weight` is `in × out` and whose forward is `x @ weight + bias`. It is a linear
layer in all but its storage, but no family has a twin for it, so `convert` left every
projection of a GPT-2 plain. `linear_twins` replaces each such module by the
`nn.Linear` that computes the same map (the weight transposed), which `convert` then
makes Bayesian like any other. A module is taken on what it computes, not its name: it
has no children, exactly a 2-d `weight` and a matching 1-d `bias` (or none), and on
random inputs (a batch of rows and a batch of sequences) its output equals
`x @ weight + bias` to float rounding. An nn.Linear subclass whose own forward computes
what nn.Linear's does (Falcon's `FalconLinear`) is replaced the same way (`convert`
replaces only subclasses that keep torch's forward, since another forward may compute
something else).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import SerializableLayer


def _transposed_weight(module: nn.Module) -> tuple[Tensor, Tensor | None] | None:
    """(weight in × out, bias) of a module shaped like a transposed linear layer, or of
    an nn.Linear subclass with a forward of its own (Falcon's `FalconLinear` writes
    `x @ self.weight.T + self.bias`), its weight seen transposed."""
    if isinstance(module, SerializableLayer) or next(module.children(), None):
        return None
    own_forward = type(module).forward is not nn.Linear.forward
    if isinstance(module, nn.Linear) and not own_forward:
        return None  # torch's own forward: `convert` takes it as it is
    params = dict(module.named_parameters(recurse=False))
    weight, bias = params.get("weight"), params.get("bias")
    if weight is None or set(params) - {"weight", "bias"} or weight.ndim != 2:
        return None
    if not weight.is_floating_point() or weight.is_meta:
        return None
    weight = weight.t() if isinstance(module, nn.Linear) else weight
    if bias is not None and bias.shape != (weight.shape[1],):
        return None
    return weight, bias


def _computes_transposed(module: nn.Module, weight: Tensor, bias: Tensor | None) -> bool:
    """Whether `module(x)` is `x @ weight + bias` on random rows and sequences."""
    gen = torch.Generator().manual_seed(0)
    was = module.training
    try:
        module.eval()
        with torch.no_grad():
            for shape in ((5, weight.shape[0]), (2, 3, weight.shape[0])):
                x = torch.randn(shape, generator=gen).to(weight)
                expected = x @ weight + (0 if bias is None else bias)
                got = module(x)
                scale = float(expected.abs().max()) or 1.0
                if not isinstance(got, Tensor) or got.shape != expected.shape:
                    return False
                if not torch.allclose(got, expected, rtol=0, atol=1e-5 * scale):
                    return False
    except Exception:  # a module that refuses these inputs is not a linear layer
        return False
    finally:
        module.train(was)
    return True


def linear_twins(model: nn.Module) -> list[str]:
    """Replace, in place, every transposed linear layer of `model` (module docstring) by
    its nn.Linear; the names of those replaced. A weight shared with another module is
    left alone (the twin would hold a copy)."""
    counts: dict[int, int] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            counts[id(p)] = counts.get(id(p), 0) + 1
    replaced = []
    for name, module in list(model.named_modules()):
        found = _transposed_weight(module) if name else None
        if found is None or any(counts.get(id(p), 0) > 1 for p in module.parameters()):
            continue
        weight, bias = found
        if not _computes_transposed(module, weight, bias):
            continue
        twin = nn.utils.skip_init(  # no draw from the global RNG: the weights are copied
            nn.Linear, weight.shape[0], weight.shape[1], bias=bias is not None,
            device=weight.device, dtype=weight.dtype,
        )  # fmt: skip
        with torch.no_grad():
            twin.weight.copy_(weight.t())
            if bias is not None:
                twin.bias.copy_(bias)
        twin.train(module.training)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, twin)
        replaced.append(name)
    return replaced
