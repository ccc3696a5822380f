"""Iterative self-compression (Carannante et al. 2020): score, delete, shrink, fine-tune, repeat.

Each round reads one importance per kernel / hidden unit through the shared
interface (`unit_scores`), removes the units whose importance is *near zero*,
physically shrinks the network (`shrink` with `prune_units`) and fine-tunes the
smaller one (the `finetune` callable it is given, e.g. `bayesprune.finetune` bound
to the training data). It stops when no near-zero unit remains, when
`max_rounds` is reached, or when the validation accuracy falls more than
`tolerance` below the uncompressed accuracy; the round that fell is discarded and
the last accepted model returned. Accuracy is `evaluate(model)[metric]`, from the
callable it is given (e.g. `bayesprune.evaluation.scorer(val, likelihood)`): this
module holds no training or evaluation code of its own.

"Near zero" is defined per layer, relative to its strongest unit: a unit is near
zero when its importance is below ``rel_threshold × max importance`` of its layer.
Importances are non-negative and larger means "keep":

- ``"norm"``: ‖m_k‖_F, the Frobenius norm of the kernel's posterior mean (the paper);
- ``"snr"``: mean |m| / σ over the kernel's weights;
- ``"variance"``: the kernel's posterior precision 1 / mean σ² (a kernel whose
  posterior stayed wide is one the data did not need);
- ``"unit_log_alpha"``: 1 / (1 + α) of the unit's own scale in group-prior layers
  (family "sparse_vd_group"); other layers are left as they are.

Alternatively `fraction` removes that fraction of each layer's units per round
(lowest importance first), and the loop runs until the tolerance or `max_rounds`.
With `greedy=True` a round removes units from one layer only: of the layers with
something to remove, the one whose removal costs the least validation metric before
fine-tuning (as NetAdapt picks one layer per iteration), so a layer that tolerates
pruning is not held back by one that does not.
Nothing here asks what type a layer is: any chain `shrink` can walk works
(eVI nets, Gaussian / Sparse VD nets, plain torch nets); parameter-free modules
between layers are named in `passthrough` (the eVI ones are included by default).

Any other graph (residual additions, concatenations, BatchNorm, a custom `forward`)
is cut with `shrink_graph` when `example_inputs` (one batch) is given. Its score
should then be ``"activation"`` (`compress.activation_scores` on `score_data`, the
sd of what each unit sends times the norm of the weights that read it): layers that
share channels through a residual addition get the same scores, so a round removes
the same channels from all of them, and channels the graph pins (the outputs) are
never removed. Per-layer posterior scores work on graphs too, but they rank a
residual group's members apart, and a channel is only removed where every member of
its group drops it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..example_inputs import Example
from .adapters import copy_model
from .graph import shrink_graph
from .graph_scores import Batches, activation_scores, score_groups
from .rules import Evaluate, metrics_of
from .scores import unit_scores
from .shrink import shrink
from .tolerances import ToleranceSpec, all_hold, held_tolerances

_TINY = 1e-30


def _precision(score: Tensor) -> Tensor:
    return 1.0 / (-score).clamp_min(_TINY)  # unit_scores "variance" is −mean σ²


# self-compression score → (unit_scores name, map to a non-negative importance)
SELF_COMPRESS_SCORES: dict[str, tuple[str, Callable[[Tensor], Tensor]]] = {
    "norm": ("norm", lambda s: s),
    "snr": ("mean_snr", lambda s: s),
    "variance": ("variance", _precision),
    "unit_log_alpha": ("unit_log_alpha", torch.sigmoid),  # sigmoid(−log α) = 1 / (1 + α)
}


@dataclass
class CompressionRound:
    """One round: units per layer after it, what it removed, and the validation accuracy."""

    round: int
    units: dict[str, int]
    removed: dict[str, int]
    accuracy_pruned: float | None  # right after the deletion, before fine-tuning
    accuracy: float  # after fine-tuning (round 0: the uncompressed model)
    accepted: bool
    values: dict[str, float] = field(default_factory=dict)  # every held metric, after fine-tuning


@dataclass
class SelfCompressResult:
    """The last accepted (shrunk, fine-tuned) model and the history of every round."""

    model: nn.Module
    history: list[CompressionRound]
    baseline_accuracy: float
    stopped: str  # "no near-zero units" | "tolerance" | "max_rounds"
    notes: list[str] = field(default_factory=list)
    held_against: dict[str, float] = field(default_factory=dict)  # every tolerance's reference

    @property
    def accepted(self) -> CompressionRound:
        """The round whose model is `model` (round 0 if none was accepted)."""
        return [r for r in self.history if r.accepted][-1]

    def as_dict(self) -> dict[str, Any]:
        """JSON-able record (without the model)."""
        return {
            "history": [asdict(r) for r in self.history],
            "baseline_accuracy": self.baseline_accuracy,
            "stopped": self.stopped,
            "final_units": self.accepted.units,
            "final_accuracy": self.accepted.accuracy,
            "notes": self.notes,
            "held_against": self.held_against,
        }


ACTIVATION = "activation"  # compress.activation_scores: needs data, works on any graph


def importances(
    model: nn.Module,
    score: str = "norm",
    data: Batches | None = None,
    passthrough: Sequence[type[nn.Module]] = (),
    inputs: int | None = None,
) -> dict[str, Tensor]:
    """Non-negative importance of every hidden unit / kernel, by layer (output layer excluded).

    `data` (batches; their first `inputs` tensors go to the forward) is read by
    ``"activation"`` only; there +inf marks a unit the graph pins, and a layer with
    nothing removable is left out.
    """
    if score == ACTIVATION:
        if data is None:
            raise ValueError(
                "score 'activation' reads data: pass score_data= (a batch of inputs or a "
                "DataLoader, e.g. the validation inputs)"
            )
        scores = activation_scores(model, data, passthrough=passthrough, inputs=inputs)
        return {k: v for k, v in scores.items() if bool(torch.isfinite(v).any())}
    if score not in SELF_COMPRESS_SCORES:
        valid = sorted([*SELF_COMPRESS_SCORES, ACTIVATION])
        raise ValueError(f"unknown self-compression score {score!r}; valid: {valid}")
    name, to_importance = SELF_COMPRESS_SCORES[score]
    return {k: to_importance(v.double()) for k, v in unit_scores(model, name).items()}


def near_zero(importance: Tensor, rel_threshold: float) -> Tensor:
    """Boolean mask of units below `rel_threshold` × the layer's largest finite importance."""
    finite = importance[torch.isfinite(importance)]
    top = finite.max() if finite.numel() else importance.new_zeros(())
    if not top > 0:
        return torch.zeros_like(importance, dtype=torch.bool)
    return importance < rel_threshold * top


def _to_remove(
    scores: dict[str, Tensor], rel_threshold: float | None, fraction: float | None, min_units: int
) -> dict[str, Tensor]:
    """Per layer, a boolean mask of the units to delete this round (never below `min_units`)."""
    out = {}
    for name, imp in scores.items():
        imp = imp.detach().cpu()  # masks on the CPU, whatever device scored the units
        n = imp.numel()
        if fraction is not None:  # a share of the removable (finite) units, lowest first
            removable = int(torch.isfinite(imp).sum())
            k = min(math.ceil(fraction * removable), n - min_units, removable)
            remove = torch.zeros(n, dtype=torch.bool)
            if k > 0:
                remove[torch.argsort(imp, stable=True)[:k]] = True
        else:
            remove = near_zero(imp, rel_threshold)  # type: ignore[arg-type]
            extra = int(remove.sum()) - (n - min_units)
            if extra > 0:  # keep the strongest of the near-zero ones
                order = torch.argsort(imp, descending=True, stable=True)
                remove[order[:min_units]] = False
        out[name] = remove
    return out


@dataclass
class _Cutter:
    """How a round scores and shrinks: a chain (`shrink`) or any graph (`shrink_graph`)."""

    score: str
    input_shape: Sequence[int] | None
    example_inputs: Example | None
    score_data: Batches | None
    passthrough: tuple[type[nn.Module], ...]

    def importances(self, model: nn.Module) -> dict[str, Tensor]:
        inputs = len(self.example_inputs) if isinstance(self.example_inputs, tuple) else 1
        return importances(model, self.score, self.score_data, self.passthrough, inputs)

    def shrink(self, model: nn.Module, keep: dict[str, Tensor]) -> tuple[nn.Module, list[str]]:
        if self.example_inputs is not None:
            graph = shrink_graph(
                model, self.example_inputs, prune_units=keep, passthrough=self.passthrough
            )
            return graph.model, graph.notes
        chain = shrink(model, self.input_shape, prune_units=keep, passthrough=self.passthrough)
        return chain.model, chain.notes


@dataclass
class _Cut:
    """One round's deletion: what it removed, the shrunk model, and its metric before
    fine-tuning."""

    remove: dict[str, Tensor]
    model: nn.Module
    notes: list[str]
    value: float


def _cut(
    model: nn.Module,
    remove: dict[str, Tensor],
    cutter: _Cutter,
    score_of: Callable[[nn.Module], float],
) -> _Cut:
    shrunk, notes = cutter.shrink(model, {n: ~m for n, m in remove.items()})
    return _Cut(remove, shrunk, notes, score_of(shrunk))


def _least_harmful(
    model: nn.Module,
    scores: dict[str, Tensor],
    remove: dict[str, Tensor],
    cutter: _Cutter,
    score_of: Callable[[nn.Module], float],
) -> _Cut:
    """The cut of the one layer whose removal alone scores best (ties: first).

    Layers with identical scores (a residual group, under "activation") count as one.
    """
    best: _Cut | None = None
    for names in score_groups(scores).values():
        if not any(bool(remove[n].any()) for n in names):
            continue
        alone = {k: m if k in names else torch.zeros_like(m) for k, m in remove.items()}
        cut = _cut(model, alone, cutter, score_of)
        if best is None or cut.value > best.value:
            best = cut
    assert best is not None  # the caller stops first when nothing is to be removed
    return best


def _reference(reference: Mapping[str, float] | None, held: Sequence[str]) -> dict[str, float]:
    """`reference` as floats, refusing a metric no tolerance holds (a typo would be ignored)."""
    if not reference:
        return {}
    unknown = sorted(set(reference) - set(held))
    if unknown:
        raise ValueError(
            f"reference names {unknown}, which no tolerance holds (held: {list(held)}); "
            "give reference values only for the metrics in tolerances"
        )
    return {name: float(value) for name, value in reference.items()}


def _check(
    rel_threshold: float | None,
    fraction: float | None,
    tolerance: float,
    max_rounds: int,
    min_units: int,
) -> float | None:
    if rel_threshold is not None and fraction is not None:
        raise ValueError(
            "give either rel_threshold (delete near-zero units) or fraction (delete a share of "
            "units per round), not both"
        )
    if fraction is None:
        rel_threshold = 0.05 if rel_threshold is None else float(rel_threshold)
        if not 0.0 < rel_threshold < 1.0:
            raise ValueError(f"rel_threshold must be in (0, 1), got {rel_threshold}")
    elif not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0 (an accuracy drop, e.g. 0.005), got {tolerance}")
    if max_rounds < 1 or min_units < 1:
        raise ValueError(f"need max_rounds >= 1 and min_units >= 1, got {max_rounds}, {min_units}")
    return rel_threshold


def self_compress(
    model: nn.Module,
    evaluate: Evaluate,
    finetune: Callable[[nn.Module], Any] | None = None,
    *,
    metric: str = "accuracy",
    input_shape: Sequence[int] | None = None,
    score: str = "norm",
    rel_threshold: float | None = None,
    fraction: float | None = None,
    tolerance: float = 0.005,
    tolerances: ToleranceSpec | None = None,
    max_rounds: int = 10,
    min_units: int = 1,
    passthrough: Sequence[type[nn.Module]] = (),
    greedy: bool = False,
    example_inputs: Example | None = None,
    score_data: Batches | None = None,
    reference: Mapping[str, float] | None = None,
) -> SelfCompressResult:
    """Delete near-zero kernels / hidden units, shrink, fine-tune; repeat (see the module doc).

    `evaluate(model) -> {metric: value}` scores a network on validation data, e.g.
    `bayesprune.evaluation.scorer((x_val, y_val), likelihood)` (posterior-mean accuracy;
    pass the eVI likelihood for an eVI net); `metric` names the key compared, higher
    being better. `finetune(model)` trains a shrunk model in place, e.g. ``lambda m:
    bayesprune.finetune(m, train, epochs=1, likelihood=lik)``; None skips fine-tuning.
    `input_shape`: one example's shape (needed for convolutional nets, e.g. (1, 28,
    28)). `rel_threshold` (default 0.05) or `fraction` choose what a round deletes.
    `tolerance`: the largest accepted drop of the metric below the uncompressed model's
    (0.005 = 0.5 accuracy points). `tolerances` (e.g. ``{"ece": "1.5x", "nll": 0.02}``,
    see `compress.tolerances`) adds metrics: a round is accepted only when `metric`
    stays within `tolerance` and every named metric within its own tolerance of the
    uncompressed model's, in its own direction (a `tolerances` entry for `metric` itself
    replaces `tolerance`); `accuracy` in the history is `metric`. `greedy`: one layer
    per round, the one whose removal costs the least (module doc). `example_inputs` (one
    batch for `model(*example_inputs)`, or a mapping for `model(**example_inputs)`): cut
    any graph with `shrink_graph` instead of walking a chain; `score_data` (a batch or a
    DataLoader) is what `score="activation"` reads. `reference` ({metric: value})
    replaces the input model's own value as what a named metric is held against, e.g.
    the unpruned model's validation ECE when the input is already pruned, so that a
    whole pipeline stays within one tolerance of it instead of each stage adding its
    own. The input model is not modified.
    """
    rel_threshold = _check(rel_threshold, fraction, tolerance, max_rounds, min_units)
    held = held_tolerances(metric, tolerance, tolerances)
    names = [t.metric for t in held]
    values_of = metrics_of(evaluate, names, "self_compress")
    if finetune is not None and not callable(finetune):
        raise TypeError(
            "self_compress takes finetune=, a callable that trains a model in place, not "
            f"data ({type(finetune).__name__}); e.g. "
            "lambda m: bayesprune.finetune(m, train, epochs=1)"
        )
    current = copy_model(model)
    cutter = _Cutter(score, input_shape, example_inputs, score_data, tuple(passthrough))
    scores = cutter.importances(current)  # also checks `score`
    if not scores:
        raise ValueError(
            "the model has no hidden prunable layer (only the output layer): nothing to compress"
        )
    own = values_of(current)
    baselines = {**own, **_reference(reference, names)}
    base = own[metric]

    def primary_of(candidate: nn.Module) -> float:
        return values_of(candidate)[metric]

    units = {k: v.numel() for k, v in scores.items()}
    history = [CompressionRound(0, units, dict.fromkeys(units, 0), None, base, True, own)]
    notes: list[str] = []
    stopped = "max_rounds"
    for r in range(1, max_rounds + 1):
        remove = _to_remove(scores, rel_threshold, fraction, min_units)
        if not any(bool(m.any()) for m in remove.values()):
            stopped = "no near-zero units" if fraction is None else "min_units"
            break
        if greedy:
            cut = _least_harmful(current, scores, remove, cutter, primary_of)
        else:
            cut = _cut(current, remove, cutter, primary_of)
        candidate = cut.model
        notes += [f"round {r}: {n}" for n in cut.notes]
        if finetune is not None:
            finetune(candidate)
        values = values_of(candidate)
        candidate_scores = cutter.importances(candidate)  # the next round's, if accepted
        left = {k: v.numel() for k, v in candidate_scores.items()}
        removed = {k: int(m.sum()) for k, m in cut.remove.items()}
        ok = all_hold(held, values, baselines)
        history.append(CompressionRound(r, left, removed, cut.value, values[metric], ok, values))
        if not ok:
            stopped = "tolerance"
            break
        current, scores = candidate, candidate_scores
    held_against = {name: baselines[name] for name in names}
    return SelfCompressResult(current.eval(), history, base, stopped, notes, held_against)
