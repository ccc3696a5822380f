"""Compression: importance scores, pruning rules and masks, physical shrinking, export.

Typical use, in one call (`prune`)::

    prune(model, level="unit", score="norm", rule="global", sparsity=0.5)

or step by step::

    scores = weight_scores(model, "snr")                 # per weight, higher = keep
    apply_masks(model, global_sparsity_masks(scores, 0.95))
    result = shrink(model, input_shape=(1, 28, 28))      # a genuinely smaller model
    save_model(result.model, "small.safetensors")
    export_onnx(result.model, "small.onnx", input_shape=(1, 28, 28))

and for a model with its own `forward` (residual additions, concatenations, BatchNorm)::

    keep = keep_units(activation_scores(model, loader), sparsity=0.3)
    result = shrink_graph(model, example_batch, prune_units=keep)  # still your class
    save_shrunk(result.model, "small.safetensors")
    small = load_shrunk("small.safetensors", MyNet())             # shapes re-applied

Pruning inside training: ``bp.fit(model, train, callbacks=[GradualPruning(model,
sparsity=0.95, end_epoch=30)])`` masks the lowest-SNR weights on a cubic schedule.

Nothing here trains or evaluates: the schedules (`search_sparsity`, `self_compress`,
the width rounds of `prune_to_widths`), the curves (`pruning_curve`,
`unit_removal_curve`) and the report receive an `evaluate` callable
(`bayesprune.evaluation.scorer`) and a fine-tuning step (`bayesprune.finetune`)
from the caller.
"""

from typing import Any

from .adapters import PlainLayer, as_prunable, is_prunable, prunable_layers
from .chain import PASSTHROUGH, SelectInputs
from .channel_parameters import apply_parameter_shapes, parameter_shapes
from .curves import bisect_sparsity, pruned_copy, pruning_curve, unit_removal_curve
from .export import (
    csr_bytes,
    export_onnx,
    load_model,
    onnx_difference,
    save_model,
    saved_metadata,
    sparse_storage,
    spec_json,
)
from .flops_budget import FlopsBudgetKeep, keep_units_for_flops
from .gradual import GradualPruning, cubic_sparsity
from .graph import (
    GraphShrinkError,
    GraphShrinkResult,
    GraphTraceError,
    kept_inputs,
    shrink_graph,
)
from .graph_scores import activation_scores, keep_units
from .graph_sizes import apply_attributes, shape_attributes
from .layer_norm import ZeroCountingGroupNorm, ZeroCountingLayerNorm
from .masks import (
    apply_masks,
    apply_torch_prune,
    combine_masks,
    hold_pruned,
    input_weight_masks,
    sparsity,
    torch_prune_importance,
    unit_weight_masks,
    weight_masks,
)
from .persist import apply_shapes, load_shrunk, pruned_shapes, save_shrunk
from .pip_rules import PipRule, select_by_pip
from .prune import DEFAULT_SCORES, PruneRule, keep_masks, prune
from .report import compression_report, report_markdown, save_report
from .response_norm import ZeroCountingResponseNorm
from .rms_norm import ZeroCountingRMSNorm
from .rules import (
    PruneLevel,
    SearchResult,
    SearchRule,
    global_sparsity_masks,
    layer_sparsity_masks,
    search_sparsity,
    threshold_masks,
    weight_masks_for,
)
from .schedules import (
    WIDTH_SCORES,
    layer_inputs,
    prune_to_widths,
    width_schedule,
    width_scores,
)
from .scores import (
    INPUT_SCORES,
    UNIT_SCORES,
    WEIGHT_SCORES,
    input_scores,
    unit_scores,
    weight_scores,
)
from .self_compress import (
    SELF_COMPRESS_SCORES,
    CompressionRound,
    SelfCompressResult,
    self_compress,
)
from .serialize import architecture, register_layer, registered_layers
from .shrink import LayerRecord, ShrinkResult, shrink
from .tolerances import Tolerance, ToleranceSpec, as_tolerances

__all__ = [
    "DEFAULT_SCORES",
    "INPUT_SCORES",
    "PASSTHROUGH",
    "SELF_COMPRESS_SCORES",
    "UNIT_SCORES",
    "WEIGHT_SCORES",
    "WIDTH_SCORES",
    "CompressionRound",
    "FlopsBudgetKeep",
    "GradualPruning",
    "GraphShrinkError",
    "GraphShrinkResult",
    "GraphTraceError",
    "LayerRecord",
    "PipRule",
    "PlainLayer",
    "PruneLevel",
    "PruneRule",
    "SearchResult",
    "SearchRule",
    "SelectInputs",
    "SelfCompressResult",
    "ShrinkResult",
    "Tolerance",
    "ToleranceSpec",
    "ZeroCountingGroupNorm",
    "ZeroCountingLayerNorm",
    "ZeroCountingRMSNorm",
    "ZeroCountingResponseNorm",
    "activation_scores",
    "apply_attributes",
    "apply_masks",
    "apply_parameter_shapes",
    "apply_shapes",
    "apply_torch_prune",
    "architecture",
    "as_prunable",
    "as_tolerances",
    "bisect_sparsity",
    "combine_masks",
    "compression_report",
    "csr_bytes",
    "cubic_sparsity",
    "export_onnx",
    "global_sparsity_masks",
    "hold_pruned",
    "input_scores",
    "input_weight_masks",
    "is_prunable",
    "keep_masks",
    "keep_units",
    "keep_units_for_flops",
    "kept_inputs",
    "layer_inputs",
    "layer_sparsity_masks",
    "load_model",
    "load_shrunk",
    "onnx_difference",
    "parameter_shapes",
    "prunable_layers",
    "prune",
    "prune_to_widths",
    "pruned_copy",
    "pruned_shapes",
    "pruning_curve",
    "register_layer",
    "registered_layers",
    "report_markdown",
    "save_model",
    "save_report",
    "save_shrunk",
    "saved_metadata",
    "search_sparsity",
    "select_by_pip",
    "self_compress",
    "shape_attributes",
    "shrink",
    "shrink_graph",
    "sparse_storage",
    "sparsity",
    "spec_json",
    "threshold_masks",
    "torch_prune_importance",
    "unit_removal_curve",
    "unit_scores",
    "unit_weight_masks",
    "weight_masks",
    "weight_masks_for",
    "weight_scores",
    "width_schedule",
    "width_scores",
]

_MOVED = {
    "finetune": "bayesprune.finetune (compression no longer imports training)",
    "evaluate_classifier": (
        "bayesprune.evaluation.evaluate(model, (x, y), metrics=('accuracy', 'nll', 'ece'))"
    ),
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        raise AttributeError(f"bayesprune.compress.{name} has moved: use {_MOVED[name]}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
