"""Keep-masks sized by cost: the least pruning whose shrunk network fits a FLOPs budget.

Someone fitting a model on a device asks for "half the FLOPs", not for a fraction of
units: how many FLOPs a dropped unit saves depends on the layer (a channel of the first
stage of a CNN costs more than one of the last, a residual channel is read by every
block of its stage). `keep_units_for_flops` bisects `keep_units`' sparsity until the
network `shrink_graph` builds from the masks costs at most `flops` × the dense
network's FLOPs (`metrics.example_flops`: 2 × the multiply-adds of every Linear and
Conv layer, on one example), and keeps the least pruning that does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..example_inputs import Example
from ..metrics.size import example_flops
from .graph import shrink_graph
from .graph_scores import keep_units

_HIGHEST = 1.0 - 1e-9
"""The largest sparsity bisected: `keep_units` takes sparsity < 1 (every layer keeps one)."""


@dataclass
class FlopsBudgetKeep:
    """What `keep_units_for_flops` found."""

    masks: dict[str, Tensor]  # {layer: units to keep}, for shrink_graph(prune_units=...)
    sparsity: float  # the `keep_units` sparsity that gave them
    flops: int  # FLOPs of the shrunk network, one example
    dense_flops: int  # FLOPs of the input network, one example

    @property
    def ratio(self) -> float:
        """The shrunk network's FLOPs over the dense network's."""
        return self.flops / self.dense_flops


def keep_units_for_flops(
    model: nn.Module,
    scores: Mapping[str, Tensor],
    example_inputs: Example,
    flops: float,
    *,
    scope: str = "layer",
    scan: int = 8,
    steps: int = 12,
    passthrough: Sequence[type[nn.Module]] = (),
    leaf_modules: Sequence[type[nn.Module]] = (),
) -> FlopsBudgetKeep:
    """`keep_units(scores, sparsity, scope=scope)` at the sparsity whose shrunk network
    costs the most FLOPs not above `flops` (a fraction in (0, 1]) of `model`'s.

    `example_inputs`: a batch as `shrink_graph` takes it (a tensor, a tuple, a mapping)
    (`passthrough` / `leaf_modules` are passed on to it). `scan` + 1 sparsities evenly
    spaced in [0, 1) are shrunk, then `steps` rounds of bisection refine the first that
    fits against the one before it. With scope "layer" the FLOPs fall as the sparsity
    grows, so that is the boundary to 2^-steps / scan (finer than one unit of a layer
    of 4,000: the defaults shrink about 15 networks); with "global" a larger fraction of units
    can cost more FLOPs (the cheap units went first), so every point tried competes.
    Every distinct set of masks is shrunk once. A budget below what one unit per
    scored layer costs is a ValueError that names the smallest reachable fraction.
    """
    if not 0.0 < flops <= 1.0:
        raise ValueError(f"flops is a fraction of the dense network's FLOPs in (0, 1], got {flops}")
    if scan < 1 or steps < 0:
        raise ValueError(f"scan must be >= 1 and steps >= 0, got {scan} / {steps}")
    cost = _shrunk_cost(model, scores, example_inputs, scope, passthrough, leaf_modules)
    dense = example_flops(model, example_inputs)
    budget = flops * dense
    points = [i / scan * _HIGHEST for i in range(scan + 1)]
    fits = [s for s in points if cost(s)[1] <= budget]
    if not fits:
        raise ValueError(
            f"no sparsity fits {flops:.4g} of the FLOPs: with one unit kept per scored "
            f"layer the network still costs {cost(_HIGHEST)[1] / dense:.4g} of them (layers "
            "without scores, e.g. pinned ones, keep all their units); ask for at least that"
        )
    hi = fits[0]
    lo = points[points.index(hi) - 1] if hi > 0 else hi  # does not fit (or nothing to cut)
    for _ in range(steps if hi > lo else 0):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if cost(mid)[1] <= budget else (mid, hi)
    best = max([hi, *fits], key=lambda s: (cost(s)[1], -s))  # most FLOPs; then least cut
    masks, used = cost(best)
    return FlopsBudgetKeep(masks, best, used, dense)


def _shrunk_cost(
    model: nn.Module,
    scores: Mapping[str, Tensor],
    example_inputs: Example,
    scope: str,
    passthrough: Sequence[type[nn.Module]],
    leaf_modules: Sequence[type[nn.Module]],
) -> Callable[[float], tuple[dict[str, Tensor], int]]:
    """sparsity → (keep-masks, FLOPs of the network shrunk with them); masks seen before
    are not shrunk again (many sparsities drop the same units)."""
    seen: dict[bytes, int] = {}

    def cost(sparsity: float) -> tuple[dict[str, Tensor], int]:
        masks = keep_units(scores, sparsity, scope=scope)
        key = torch.cat([m.flatten() for m in masks.values()]).numpy().tobytes()
        if key not in seen:
            small = shrink_graph(
                model,
                example_inputs,
                prune_units=masks,
                passthrough=passthrough,
                leaf_modules=leaf_modules,
                check=False,
            ).model
            seen[key] = example_flops(small, example_inputs)
        return masks, seen[key]

    return cost


__all__ = ["FlopsBudgetKeep", "keep_units_for_flops"]
