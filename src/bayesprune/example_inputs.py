"""Example inputs given by keyword, for the code that calls a model by position.

Tracing, the search for parts, the heads' probe, the scores' hooks and `shrink_graph`'s
check call a model as ``model(*inputs)``. A Hugging Face user holds a dict instead (a
tokenizer's output, a collated batch: ``input_ids``, ``attention_mask``), T5 needs its
``decoder_input_ids`` by name, and a model's own code may call a block with a mask by
keyword. `Call` splits such a call into what goes by position, the tensors given by
keyword and the keyword constants (``return_dict=False``); `taking_by_position` makes
the module, for a block, take the keyword tensors by position after the positional
ones and hand them on by name (`tracing.forward_taking`), so everything downstream
keeps calling ``module(*call.inputs)``. Copies made inside the block have that
temporary class: the block yields the module's own class to put back on them.
"""

from __future__ import annotations

import contextlib
import inspect
import keyword
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from .tracing import forward_taking

Example = Tensor | tuple[Any, ...] | Mapping[str, Any]
"""What `shrink_graph`, `activation_scores`, `convert` and `example_flops` take: one
tensor, a tuple of the forward's positional arguments, or a mapping of its arguments by
name (``tokenizer(text, return_tensors="pt")``). Anything else is one argument (a
detector's list of images)."""


def is_constant(value: Any) -> bool:
    """A value a call passes as a setting rather than as data: it is bound, not traced."""
    return value is None or isinstance(value, bool | int | float | str)


@dataclass(frozen=True)
class Call:
    """One call of a module: positional arguments, keyword arguments that carry data
    (tensors, or anything that is not a constant), and keyword constants."""

    args: tuple[Any, ...]
    keywords: dict[str, Any] = field(default_factory=dict)
    constants: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Call:
        data = {k: v for k, v in kwargs.items() if not is_constant(v)}
        constants = {k: v for k, v in kwargs.items() if is_constant(v)}
        return cls(tuple(args), data, constants)

    @property
    def inputs(self) -> tuple[Any, ...]:
        """What the module takes by position inside `taking_by_position`."""
        return (*self.args, *self.keywords.values())

    @property
    def plain(self) -> bool:
        """Positional arguments only: the module needs no binding."""
        return not self.keywords and not self.constants


def example_call(example: Example) -> Call:
    """The call a user's example stands for (module docstring's `Example`)."""
    if isinstance(example, Mapping):
        return Call.of((), example)
    if isinstance(example, tuple):
        return Call(example)
    return Call((example,))  # a tensor, or one argument of another kind (a list of images)


def _check_names(module: nn.Module, call: Call) -> None:
    """One clear error for a keyword the forward does not take, or one that cannot be a
    Python argument name (the generated forward names its parameters after them)."""
    params = inspect.signature(type(module).forward).parameters
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for name in [*call.keywords, *call.constants]:
        if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_"):
            raise ValueError(
                f"example inputs name {name!r}, which cannot be an argument name; pass it "
                "by position instead"
            )
        if name not in params and not open_ended:
            taken = [n for n in params if n != "self"]
            raise ValueError(
                f"example inputs name {name!r}, which {type(module).__name__}.forward does "
                f"not take (it takes {', '.join(taken)}); drop it from the example"
            )
    if not call.inputs:
        raise ValueError(
            f"the example gives {type(module).__name__} no tensor (only the settings "
            f"{sorted(call.constants)}); give the inputs it computes on"
        )


@contextlib.contextmanager
def taking_by_position(
    module: nn.Module, call: Call, result: Callable[[Any], Any] | None = None
) -> Iterator[type[nn.Module]]:
    """For the block, `module(*call.inputs)` computes `module(*call.args,
    **call.keywords, **call.constants)` (with `result` applied to its output, when
    given); yields the module's own class (module docstring). A plain call without
    `result` changes nothing."""
    cls = type(module)
    if call.plain and result is None:
        yield cls
        return
    _check_names(module, call)
    params = inspect.signature(cls.forward).parameters
    if call.plain and any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params.values()):
        names = [f"input_{i}" for i in range(len(call.args))]  # a forward of *args
    else:
        names = list(params)[1 : len(call.args) + 1]  # after self
    keywords = tuple(call.keywords)
    with forward_taking(module, names, call.constants, result, keywords=keywords):
        yield cls


@contextlib.contextmanager
def by_position(model: nn.Module, example: Example) -> Iterator[tuple[tuple[Any, ...], type]]:
    """For the block, the user's `example` as positional inputs of `model` (and the
    model's own class, for copies made inside): `taking_by_position` of its call."""
    call = example_call(example)
    with taking_by_position(model, call) as cls:
        yield call.inputs, cls
