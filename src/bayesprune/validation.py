"""Checks at the library's entry points: bounds and finiteness, not only types.

A value that is the right type but out of range (an infinite learning rate, an
integer tensor, a NaN importance score, a checkpoint claiming epoch −5) otherwise
travels on and comes out as a silently wrong result or a raw torch traceback far
from its cause. Each check here raises one error that names the value and the fix.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .inputs import tensors
from .io import CheckpointError

__all__ = [
    "AUTO_DEVICE",
    "check_checkpoint_meta",
    "check_device",
    "check_finite_number",
    "check_finite_parameters",
    "check_input_dtype",
    "check_scores",
    "forward_checked",
    "model_device",
    "model_output",
    "resolve_device",
    "to_model_dtype",
]


def check_finite_number(value: Any, name: str, *, minimum: float | None = None) -> float:
    """`value` as a float, refused when it is not a finite number (or is below `minimum`)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return float(value)


def _all_finite(tensors: Sequence[Tensor]) -> bool:
    """Whether every floating-point tensor is free of NaN and ±inf, in a few calls: the
    largest |value| of each (`torch._foreach_norm`, as `clip_grad_norm_` uses it) is finite
    exactly when the tensor is. Called every epoch, and on a small table an epoch is one
    step, where a check per tensor cost 5 % of the fit."""
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for t in tensors:
        if t.is_complex():
            if not bool(torch.isfinite(t.detach()).all()):
                return False
        elif t.is_floating_point() and t.numel():
            groups.setdefault((t.device, t.dtype), []).append(t.detach())
    try:
        return all(
            bool(torch.stack(torch._foreach_norm(group, math.inf)).isfinite().all())
            for group in groups.values()
        )
    except (RuntimeError, NotImplementedError):  # a backend without the foreach kernel
        return all(bool(torch.isfinite(t).all()) for group in groups.values() for t in group)


def check_finite_parameters(named: Iterable[tuple[str, Tensor]], epoch: int) -> None:
    """Raise FloatingPointError if a parameter holds NaN or ±inf after training `epoch`.

    The loss is checked before each step, but the last step itself can overflow (an
    enormous learning rate): without this check a model of ±inf weights is saved.
    """
    named = list(named)
    if _all_finite([p for _, p in named]):
        return
    bad = [name for name, p in named if not bool(torch.isfinite(p.detach()).all())]
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise FloatingPointError(
            f"parameters became non-finite (NaN or inf) at epoch {epoch}: {shown}; lower "
            "train.lr (or kl_weight), or check the data scale. Nothing was saved for this epoch."
        )


def check_input_dtype(x: Tensor, what: str = "x") -> None:
    """Refuse inputs no network takes: complex numbers. Integers and booleans go in as
    they are (token ids for an embedding, a padding mask); a layer that cannot take them
    is one clear error from `forward_checked`."""
    if x.dtype.is_complex:
        raise ValueError(
            f"{what} has dtype {x.dtype}, but the network takes real floating-point inputs "
            f"(float32 or float64); convert with {what}.real or {what}.abs()"
        )


def to_model_dtype(x: Tensor, reference: Tensor | None) -> Tensor:
    """A floating input in the dtype of the model's parameter `reference` (float64 data
    for a float32 network); integers (token ids, masks) as they are."""
    if reference is None or not reference.is_floating_point() or not x.is_floating_point():
        return x
    return x if x.dtype == reference.dtype else x.to(reference.dtype)


def model_output(out: Any) -> Any:
    """What the likelihood reads from a forward's output: the output itself, or the
    logits of an output by name (Hugging Face's `ModelOutput`, a dict with "logits")."""
    if isinstance(out, Mapping) and "logits" in out:
        return out["logits"]
    return out


def _call(model: nn.Module, x: Any) -> Any:
    if isinstance(x, dict):
        return model(**x)
    return model(*x) if isinstance(x, tuple) else model(x)


def required_inputs(model: nn.Module) -> int:
    """How many positional arguments `model.forward` requires (none with a default), at
    least 1; 1 when it takes ``*args``. A batch ``(img, tab, y)`` of a two-input model
    then goes in as ``(img, tab)`` without the caller counting."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return 1
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return 1
    return max(1, sum(p.kind in kinds and p.default is inspect.Parameter.empty for p in params))


def forward_checked(model: nn.Module, x: Any) -> Any:
    """`model(x)` (`model(*x)` for a tuple of inputs, `model(**x)` for a dict), its
    `model_output`, with a shape or dtype mismatch, or a forward that needs more
    tensors than it got, turned into one ValueError."""
    try:
        return model_output(_call(model, x))
    except TypeError as err:
        if isinstance(x, dict) and "argument" in str(err):  # a name it does not take
            raise ValueError(
                f"{type(model).__name__}.forward does not take the inputs by name "
                f"{sorted(x)} ({str(err).splitlines()[0]}); name them as its arguments"
            ) from err
        needed = required_inputs(model)
        given = len(x) if isinstance(x, tuple) else 1
        if needed > given and not isinstance(x, dict):
            raise ValueError(
                f"{type(model).__name__}.forward takes {needed} tensors but got {given}: pass "
                "the inputs as a tuple, fit(model, ((X_a, X_b), y)) or batches ((a, b), y) "
                "or (a, b, y), predict(model, (X_a, X_b))"
            ) from err
        raise
    except RuntimeError as err:
        text = str(err)
        if "view size is not compatible" in text:  # not the data's fault: the layout's
            raise ValueError(
                f"the model's forward calls .view on a tensor whose memory layout does not "
                f"allow it ({text.splitlines()[0]}); with predict(..., channels_last=True) "
                "or fit(..., channels_last=True) use channels_last=False (fit: None), or "
                "flatten with torch.flatten / nn.Flatten"
            ) from err
        dtypes = [t.dtype for t in tensors(x)]
        if any(not (d.is_floating_point or d.is_complex) for d in dtypes) and (
            "dtype" in text or "type" in text or "Long" in text or "Int" in text
        ):
            raise ValueError(
                f"inputs of dtype {dtypes[0] if len(dtypes) == 1 else dtypes} do not fit the "
                f"model ({text.splitlines()[0]}): its layers take real floating-point "
                "inputs; convert them with x.float() (integers go in as they are only for "
                "a model that looks them up, token ids into an embedding)"
            ) from err
        shapes = (
            {k: tuple(t.shape) for k, t in x.items()}
            if isinstance(x, dict)
            else [tuple(t.shape) for t in x]
            if isinstance(x, tuple)
            else tuple(x.shape)
        )
        if "shape" in text or "size" in text or "dimension" in text:
            raise ValueError(
                f"inputs of shape {shapes} (batch first) do not fit the model "
                f"({text.splitlines()[0]}); reshape the data or change the first layer's "
                "input size"
            ) from err
        if "dtype" in text or "type" in text:
            raise ValueError(
                f"inputs of dtype {dtypes[0] if len(dtypes) == 1 else dtypes} "
                f"do not fit the model ({text.splitlines()[0]}); "
                "convert them to the model's dtype"
            ) from err
        raise


AUTO_DEVICE = "auto"
"""The device name that means the first accelerator torch has here (CUDA, then MPS), else
the CPU: what Lightning's accelerator="auto" does."""


def resolve_device(device: str | torch.device) -> torch.device:
    """`device` as a torch device, "auto" (`AUTO_DEVICE`) resolved on this machine."""
    if isinstance(device, str) and device == AUTO_DEVICE:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def model_device(model: nn.Module) -> torch.device:
    """Where `model`'s parameters live (the CPU for a model without any)."""
    reference = next(iter(model.parameters()), None)
    return reference.device if reference is not None else torch.device("cpu")


def check_device(device: str | torch.device) -> None:
    """Refuse an accelerator this torch build cannot use, naming the fix."""
    dev = resolve_device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {str(device)!r} was asked for but torch finds no CUDA device here; set "
            "train.device: cpu (or device='cpu'), or install a CUDA build of torch"
        )
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise ValueError(
            f"device {str(device)!r} was asked for but torch sees "
            f"{torch.cuda.device_count()} CUDA device(s) here; use cuda:0 to "
            f"cuda:{torch.cuda.device_count() - 1}, or 'auto'"
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(device)!r} is not available here; use device 'cpu'")


def check_scores(scores: Mapping[str, Tensor], what: str = "importance scores") -> None:
    """Refuse NaN scores: a NaN sorts as the largest value, so it would silently keep a weight."""
    for name, s in scores.items():
        t = torch.as_tensor(s)
        if t.dtype.is_floating_point and bool(torch.isnan(t).any()):
            raise ValueError(
                f"{what} of {name!r} contain NaN ({int(torch.isnan(t).sum())} of {t.numel()}); "
                "the posterior is damaged: retrain, or check the model file"
            )


def check_checkpoint_meta(meta: Any, path: Any) -> None:
    """Refuse a training checkpoint whose header is malformed (a negative epoch, ...)."""
    problem = None
    if not isinstance(meta, Mapping):
        problem = f"its header is a {type(meta).__name__}, not a mapping"
    else:
        epoch = meta.get("epoch")
        world = meta.get("world_size", 1)
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            problem = f"epoch must be an integer >= 0, got {epoch!r}"
        elif not isinstance(meta.get("history"), list) or not all(
            isinstance(r, dict) for r in meta["history"]
        ):
            problem = "history must be a list of per-epoch records"
        elif len(meta["history"]) != epoch:
            problem = f"history has {len(meta['history'])} records for {epoch} epochs"
        elif not isinstance(meta.get("settings"), dict):
            problem = "settings must be a mapping"
        elif not isinstance(meta.get("optimizer"), dict):
            problem = "optimizer state must be a mapping"
        elif isinstance(world, bool) or not isinstance(world, int) or world < 1:
            problem = f"world_size must be an integer >= 1, got {world!r}"
    if problem:
        raise CheckpointError(
            f"{path} is not a valid training checkpoint ({problem}); it was damaged or "
            "edited: move it aside to resume from the previous one, or retrain"
        )
