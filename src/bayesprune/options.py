"""String options as enums: users pass ``"marginal"`` or ``GateEstimator.MARGINAL``.

Every option of the library that picks one of a few behaviours is a `Choice`
(a `StrEnum`): its members compare equal to their strings, serialise as them, and
a bad value raises one `ValueError` that lists the valid ones, e.g.
``GateEstimator("marginl")`` → "unknown GateEstimator 'marginl'; valid: marginal,
straight_through, relaxed".
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class Choice(StrEnum):
    """Base of the library's option enums (see the module docstring)."""

    @classmethod
    def _missing_(cls, value: object) -> Any:
        valid = ", ".join(m.value for m in cls)
        raise ValueError(f"unknown {cls.__name__} {value!r}; valid: {valid}")

    def __repr__(self) -> str:
        return repr(self.value)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        """The valid strings, in declaration order (for configs and CLI choices)."""
        return tuple(m.value for m in cls)
