"""What a Bayesian layer answers when code outside it asks about its `.weight`.

Much model code reads a layer's weight only to learn what kind of tensor it is: Hugging
Face's T5 casts its hidden states to `self.wo.weight.dtype`, its ViT and CLIP cast the
pixels to the patch projection's dtype, timm's XCiT asks `token_projection.weight.device`
where to put a grid. A Bayesian layer has no fixed weight, but it has a fixed shape,
dtype and device: `layer.weight` (and `layer.bias`) give a `WeightMetadata`, a tensor of
the posterior mean's shape, dtype and device that answers those questions and refuses
every computation with one `WeightValuesError` that names the fix. So such layers
convert, and code that computes with the weight (`F.linear(x, self.qkv.weight)`, which
would bypass the posterior) still fails loudly instead of computing with a stand-in.

`convert` tells the two uses apart before converting (`parameter_reads`): a read whose
only uses are the attributes and methods listed here does not keep the layer plain.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_leaves

METADATA_ATTRIBUTES = frozenset(
    {"dtype", "device", "shape", "ndim", "is_cuda", "layout", "requires_grad", "is_sparse",
     "is_quantized", "is_meta"}
)  # fmt: skip
"""Tensor attributes that say what a tensor is, not what it holds."""
METADATA_METHODS = frozenset(
    {"size", "dim", "numel", "nelement", "is_floating_point", "is_complex", "get_device",
     "element_size", "__len__"}
)  # fmt: skip
"""Tensor methods that say what a tensor is, not what it holds."""

_GETTERS = frozenset(getattr(Tensor, name) for name in METADATA_ATTRIBUTES)
_METHODS = frozenset(getattr(Tensor, name) for name in METADATA_METHODS)


def _is_metadata(func: Callable[..., Any]) -> bool:
    if func in _METHODS:
        return True
    owner = getattr(func, "__self__", None)  # an attribute's getter: `Tensor.dtype.__get__`
    return getattr(func, "__name__", "") == "__get__" and owner in _GETTERS


class WeightValuesError(RuntimeError):
    """Code computed with a Bayesian layer's `.weight` or `.bias`, which have no values.
    (Not a TypeError: torch turns those into NotImplemented inside `w + 1`.)"""


class WeightMetadata(Tensor):
    """A Bayesian layer's `.weight` or `.bias` as seen from outside the layer: the shape,
    dtype and device of its posterior mean (module docstring). Any computation with it
    is a `WeightValuesError` naming the layer and the fix."""

    layer_name: str = "a Bayesian layer"
    attribute: str = "weight"

    @classmethod
    def of(cls, mean: Tensor, layer_name: str, attribute: str) -> WeightMetadata:
        shown = mean.as_subclass(cls)  # a view: its requires_grad is the mean's
        shown.layer_name, shown.attribute = layer_name, attribute
        return shown

    @classmethod
    def __torch_function__(
        cls,
        func: Callable[..., Any],
        types: Iterable[type],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if _is_metadata(func):
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **(kwargs or {}))
        leaves = tree_leaves((args, kwargs))
        shown = next((a for a in leaves if isinstance(a, WeightMetadata)), None)
        layer, attribute = cls.layer_name, "weight"
        if shown is not None:
            with torch._C.DisableTorchFunctionSubclass():  # its own attributes, not torch's
                layer, attribute = shown.layer_name, shown.attribute
        name = getattr(func, "__name__", str(func))
        if name == "__get__":  # an attribute: `.data`, `.T`
            name = getattr(getattr(func, "__self__", None), "__name__", name)
        raise WeightValuesError(
            f"`.{attribute}` of {layer} tells its shape, dtype and device only ({name} asked "
            "for its values): a Bayesian layer's weights are random (see posterior()), and "
            f"code that computes with `.{attribute}` itself (F.linear(x, self.qkv.weight)) "
            "would bypass the posterior. bp.convert keeps the layers it sees read so "
            "deterministic (it traces the model with torch.fx), but this read is in code it "
            "could not trace: give convert example_inputs=(x,), or keep the module whose "
            "forward does it deterministic yourself, bp.convert(model, keep=[ThatModuleClass]) "
            "or keep=['its.name']"
        )

    def __repr__(self, *, tensor_contents: Any = None) -> str:  # no values to show
        with torch._C.DisableTorchFunctionSubclass():
            shape, dtype, device = tuple(self.shape), self.dtype, self.device
            layer = self.layer_name
        return f"WeightMetadata(of {layer}, shape={shape}, dtype={dtype}, device={device})"

    def __format__(self, spec: str) -> str:
        return format(repr(self), spec)
