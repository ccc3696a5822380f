"""Optional dependencies: imported where they are used, missing ones named with their extra.

A plain `pip install bayesprune` leaves out ONNX (the `export` extra) and the docs
tools. A feature that needs one must say so in one line with the command that adds
it, never with an ImportError traceback from deep inside torch.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the pip command."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import `module`, or raise `MissingExtraError` naming `pip install 'bayesprune[extra]'`."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(
            f"{purpose} needs the '{module}' package, which is not installed; run "
            f"pip install 'bayesprune[{extra}]'"
        ) from err
