"""Turn array-likes into float64 / integer tensors and reject shapes that would broadcast.

Metrics compare arrays element-wise, where torch's broadcasting turns a shape slip
(labels (N, 1) against predictions (N,)) into a silently wrong number; every
public metric checks its inputs here first.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

EPS = 1e-12


def as_tensor(x: Any, dtype: torch.dtype | None = None) -> Tensor:
    """A detached CPU tensor (from a tensor, numpy array or nested list)."""
    t = x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    t = t.detach().cpu()
    return t.to(dtype) if dtype is not None else t


def probabilities(probs: Any) -> Tensor:
    """(N, C) float64 probabilities with N >= 1."""
    p = as_tensor(probs, torch.float64)
    if p.ndim != 2:
        raise ValueError(f"probabilities must have shape (N, C), got {tuple(p.shape)}")
    if p.shape[0] == 0:
        raise ValueError("no examples: probabilities have shape (0, C)")
    return p


def probs_and_labels(probs: Any, labels: Any) -> tuple[Tensor, Tensor]:
    """(N, C) float64 probabilities and (N,) int64 labels in 0..C-1."""
    p, y = probabilities(probs), as_tensor(labels)
    if y.dtype.is_floating_point and not torch.equal(y, y.round()):
        raise ValueError("labels must be integer class indices, got non-integer floats")
    y = y.long()
    if y.shape != (p.shape[0],):
        raise ValueError(
            f"labels must have shape ({p.shape[0]},) to match probabilities "
            f"{tuple(p.shape)}, got {tuple(y.shape)}; flatten them with labels.reshape(-1)"
        )
    if int(y.min()) < 0 or int(y.max()) >= p.shape[1]:
        raise ValueError(
            f"labels out of range: found {int(y.min())}..{int(y.max())} for {p.shape[1]} classes"
        )
    return p, y


def mc_samples(samples: Any) -> Tensor:
    """(S, N, C) float64 Monte-Carlo probability samples."""
    s = as_tensor(samples, torch.float64)
    if s.ndim != 3:
        raise ValueError(
            f"Monte-Carlo probabilities must have shape (S, N, C), got {tuple(s.shape)}; "
            "for a single prediction use probs.unsqueeze(0)"
        )
    return s


def same_length(*arrays: Any, names: tuple[str, ...]) -> list[Tensor]:
    """Flattened float64 vectors of one common, non-zero length."""
    flat = [as_tensor(a, torch.float64).reshape(-1) for a in arrays]
    sizes = {len(f) for f in flat}
    if len(sizes) != 1:
        shown = ", ".join(f"{n}: {len(f)}" for n, f in zip(names, flat, strict=True))
        raise ValueError(f"inputs must have the same number of elements, got {shown}")
    if not flat[0].numel():
        raise ValueError("no examples: inputs are empty")
    return flat
