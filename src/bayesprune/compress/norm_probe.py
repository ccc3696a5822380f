"""The probe that recognises a normalisation by what it computes (a LayerNorm written
out, a global response norm, an RMSNorm): run it on a random input, its parameters
set for the call where their own values would hide a term, and compare."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn


def computes(
    module: nn.Module,
    x: Tensor,
    expected: Tensor,
    atol: float,
    rtol: float = 1e-5,
    values: Mapping[str, Tensor] | None = None,
) -> bool:
    """Whether `module(x)` (eval mode, no grad) is `expected`, with its parameters
    `values` (name → tensor, copied in for the call: an initial scale of ones or zeros
    would hide it); the module's mode and parameters are put back."""
    values = dict(values or {})
    was = module.training
    saved = {name: getattr(module, name).detach().clone() for name in values}
    try:
        with torch.no_grad():
            for name, value in values.items():
                getattr(module, name).copy_(value)
            module.eval()
            out = module(x)
    except Exception:  # another signature, another rank: not this kind of norm
        return False
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                getattr(module, name).copy_(value)
        module.train(was)
    same = isinstance(out, Tensor) and out.shape == expected.shape
    return bool(same and torch.allclose(out, expected, atol=atol, rtol=rtol))
