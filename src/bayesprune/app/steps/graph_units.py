"""Whole units of a graph model in step `compress`: rule "flops", and deleting first.

`shrink_graph(prune_units=...)` deletes a unit together with the normalisation channel
after it, so the shrunk network is not the masked one, whose BatchNorm still emits
β − γμ/σ there (a search on masked candidates held 0.66 validation accuracy for a
model that read 0.125 once written). What `compress` measures and fine-tunes of such a
model is therefore the shrunk network.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ...compress import (
    GraphShrinkError,
    GraphTraceError,
    activation_scores,
    keep_units_for_flops,
    shrink_graph,
    weight_masks_for,
)
from ...compress.chain import deployed_weight
from ...validation import model_device
from ..config import FLOPS_RULE, ConfigError
from ..policy import ACTIVATION_SCORE

SHRINK_ERRORS = (TypeError, ValueError, GraphShrinkError, GraphTraceError)
"""What a model `shrink` / `shrink_graph` cannot cut raises: compress then keeps it masked."""


def deletes_units(model: nn.Module, level: str) -> bool:
    """Whether shrinking deletes whole units of a graph model (module docstring); a chain
    is shrunk by `shrink`, which folds a removed unit's constant instead (exact)."""
    return level == "unit" and not isinstance(model, nn.Sequential)


def example_batch(model: nn.Module, input_shape: tuple[int, ...]) -> Tensor:
    """Two rows of zeros on the model's device: what tracing a graph model runs."""
    return torch.zeros(2, *input_shape, device=model_device(model))


def deleted_first(
    evaluate: Callable[[nn.Module], dict[str, float]],
    layers: list[str],
    input_shape: tuple[int, ...],
) -> Callable[[nn.Module], dict[str, float]]:
    """`evaluate` of the network a unit-masked candidate ships as: the units of `layers`
    with no weight left deleted by `shrink_graph`. A graph that cannot be cut is scored
    masked; the shrink step then says why it was skipped."""

    def score(candidate: nn.Module) -> dict[str, float]:
        example = example_batch(candidate, input_shape)
        keep = {
            name: deployed_weight(candidate.get_submodule(name)).flatten(1).ne(0).any(1)
            for name in layers
        }
        try:
            deleted = shrink_graph(candidate, example, prune_units=keep, check=False).model
        except SHRINK_ERRORS:
            deleted = candidate
        return evaluate(deleted)

    return score


def flops_masks(
    model: nn.Module,
    rows: Tensor,
    used: dict[str, Any],
    input_shape: tuple[int, ...],
    flops: float,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Rule "flops": units ranked by `activation_scores` on `rows` (the search's
    validation rows, described by `used`), the same fraction dropped from every layer,
    the least whose shrunk model costs at most `flops` of the trained model's FLOPs
    (`keep_units_for_flops`). Returns unit weight masks and the record."""
    example = example_batch(model, input_shape)
    try:
        scores = activation_scores(model, rows.split(500))
    except GraphTraceError as err:
        raise ConfigError(
            "compress.rule 'flops' deletes units from the model's traced graph, and this "
            f"model cannot be traced: {err}"
        ) from None
    try:
        found = keep_units_for_flops(model, scores, example, flops)
    except ValueError as err:  # a budget below one unit per layer
        raise ConfigError(f"compress.flops: {err}") from None
    info: dict[str, Any] = {
        "score": ACTIVATION_SCORE,
        "rule": FLOPS_RULE,
        "level": "unit",
        "flops": {
            "budget": flops,
            "ratio": found.ratio,
            "sparsity": found.sparsity,
            "dense": found.dense_flops,
            "shrunk": found.flops,
            "data": used,
        },
    }
    return weight_masks_for(model, found.masks, "unit"), info


__all__ = ["SHRINK_ERRORS", "deleted_first", "deletes_units", "example_batch", "flops_masks"]
