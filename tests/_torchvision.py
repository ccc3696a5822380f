"""Import torchvision's model zoo for graph tests, even where its compiled ops do not load.

The torchvision wheel that matches torch 2.13.0 on this platform is a CUDA build; beside
the CPU torch its C++ ops (nms, roi_align…) are missing, and torchvision's import fails
while registering their fake kernels. The model definitions are plain Python and need
none of those ops, so the registrations of `torchvision::` ops that do not exist are
skipped for the duration of the import. Nothing else is changed.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import pytest
import torch
import torch.library


def import_torchvision_models() -> ModuleType:
    """`torchvision.models`, or skip the test when torchvision is not installed."""
    if importlib.util.find_spec("torchvision") is None:
        pytest.skip("torchvision is not installed (it comes with the dev extra)")
    original = torch.library.register_fake

    def register_if_op_exists(op: Any, *args: Any, **kwargs: Any) -> Any:
        name = op if isinstance(op, str) else str(op)
        if name.startswith("torchvision::"):
            namespace_op = name.split("::", 1)[1]
            if not hasattr(torch.ops.torchvision, namespace_op):
                return lambda fn: fn
        return original(op, *args, **kwargs)

    torch.library.register_fake = register_if_op_exists
    try:
        models = importlib.import_module("torchvision.models")
    finally:
        torch.library.register_fake = original
    return models
