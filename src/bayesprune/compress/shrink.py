"""Physically remove dead units from a pruned network, keeping its output exactly.

`shrink(model, example_inputs=x)` takes any model: it is `compress.shrink_graph`
(a traced graph: residual additions, concatenations, BatchNorm, custom `forward`).
`shrink(model, input_shape)` walks an nn.Sequential chain (nested Sequentials too)
of prunable layers (variational, or plain Linear / Conv2d via the adapter) joined by
element-wise, channel-preserving modules (activations, dropout, pooling) and at most
one nn.Flatten per gap. It repeats until nothing changes:

- a unit (kernel) is *dead* when the deployed network gives it no incoming weights
  (its row of `to_deterministic().weight` is zero: all masked, or gated off) or its
  posterior inclusion probability is ≤ `inclusion_threshold`; it then emits the
  constant act(bias). It is removed and that constant, pushed through the modules
  between, is folded into the next layer's bias (`fold_into_bias`, which for a
  Gaussian layer adds the mean and the variance of w·c, exact for a constant c).
  When the next layer cannot absorb it (no bias, or a padded convolution where the
  constant meets the zero border), a unit with a non-zero constant is kept;
- a unit is *orphaned* when the next layer has no weight left for it (all of its
  H·W flattened columns, across a Flatten); it is removed from both layers;
- an input feature (input channel) with no outgoing weight, or input inclusion
  probability ≤ `inclusion_threshold`, is removed from the first layer. By default
  a `SelectInputs` module is inserted before the first layer so the shrunk model
  still takes the full input; `gather_inputs=False` makes it take only the kept
  features (`result.input_features`).

Removals go through `layer.select(out_idx, in_idx)`, so a Bayesian layer keeps its
posterior for what remains. The last layer's units are the outputs and stay. The
output in posterior-mean mode equals the masked model's; the result records the
largest difference seen on a random batch (`max_abs_difference`). In sampling mode a
dead unit's bias noise is replaced by its mean, a small change.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..example_inputs import Example
from ..nn.base import evaluation_pass
from .adapters import as_prunable, copy_model
from .chain import PASSTHROUGH, Chain, SelectInputs, deployed_weight, first_tensor, unit_columns

if TYPE_CHECKING:
    from .graph import GraphShrinkResult


@dataclass
class LayerRecord:
    """What `shrink` kept of one prunable layer (indices refer to the original layer)."""

    name: str
    kind: str
    units_before: int
    units_after: int
    inputs_before: int
    inputs_after: int
    kept_units: list[int]
    folded_units: int = 0  # removed dead units whose non-zero constant went into the next bias
    kept_dead_units: int = 0  # dead units kept because their constant could not be folded
    merged_units: int = 0  # removed dead units whose constant a kept dead unit now carries


@dataclass
class ShrinkResult:
    """The smaller model, what was kept per layer, and which input features survive."""

    model: nn.Module
    layers: list[LayerRecord]
    input_features: list[int]  # kept inputs of the first layer (flattened index / channel)
    inputs_before: int
    max_abs_difference: float | None = None  # shrunk vs masked output on a random batch
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able record (without the model)."""
        return {
            "layers": [asdict(r) for r in self.layers],
            "input_features": self.input_features,
            "inputs_before": self.inputs_before,
            "max_abs_difference": self.max_abs_difference,
            "notes": self.notes,
        }

    @property
    def architecture(self) -> list[int]:
        """Widths from inputs to outputs, e.g. [311, 86, 14, 10] for LeNet-300-100."""
        return [len(self.input_features), *(r.units_after for r in self.layers)]


def _as_keep(spec: Tensor | Sequence[int], n: int) -> Tensor:
    t = torch.as_tensor(spec)
    if t.dtype == torch.bool:
        if t.shape != (n,):
            raise ValueError(f"a boolean keep mask needs shape ({n},), got {tuple(t.shape)}")
        return t.clone()
    keep = torch.zeros(n, dtype=torch.bool)
    keep[t.long()] = True
    return keep


class _Shrinker:
    def __init__(self, chain: Chain, threshold: float, forced: dict[int, Tensor]) -> None:
        self.chain, self.threshold, self.forced = chain, threshold, forced
        n = len(chain.layer_pos)
        weights = [deployed_weight(chain.layer(k)) for k in range(n)]
        self.kept = [torch.arange(w.shape[0]) for w in weights]
        self.inputs = torch.arange(weights[0].shape[1])
        self.inputs_before = weights[0].shape[1]
        self.before = [(w.shape[0], w.shape[1]) for w in weights]
        self.folded = [0] * n
        self.unfolded_forced = 0

    # -- what is dead --------------------------------------------------------------
    def _dead_units(self, k: int) -> Tensor:
        layer = self.chain.layer(k)
        w = deployed_weight(layer)
        dead = (w.flatten(1) == 0).all(1)
        pip = as_prunable(layer).posterior().unit_inclusion
        if pip is not None:
            dead |= pip.to(dead.device) <= self.threshold
        if k in self.forced:
            dead |= ~self.forced[k][self.kept[k]].to(dead.device)
        return dead.cpu()  # the unit bookkeeping (`kept`, `inputs`) stays on the CPU

    def _dead_inputs(self, layer: nn.Module) -> Tensor:
        w = deployed_weight(layer)
        dead = (w.transpose(0, 1).flatten(1) == 0).all(1)
        pip = as_prunable(layer).posterior().input_inclusion
        if pip is not None:
            dead |= pip.to(dead.device) <= self.threshold
        return dead.cpu()

    # -- folding ---------------------------------------------------------------------
    def _constants(self, k: int, units: Tensor) -> Tensor:
        """The next layer's input that `units` of layer k feed when dead (zeros elsewhere)."""
        chain = self.chain
        layer = chain.layer(k)
        plain = as_prunable(layer).to_deterministic().eval()
        shape = (1, deployed_weight(layer).shape[1], *chain.shapes[chain.name(k)][0][2:])
        with torch.no_grad():
            z = plain(chain.example.new_zeros(shape))
            z = z * _unit_mask(z, units)
            for module in chain.between(k):
                was = module.training
                z = module.eval()(z)
                module.train(was)
            return z * _unit_mask(z, unit_columns(units, chain.groups[k]))

    def _try_fold(self, k: int, units: Tensor) -> int | None:
        """Fold the constants of dead `units` of layer k into layer k+1's bias, if exact.

        Returns how many of them had a non-zero constant (0: nothing to fold), or None
        when the next layer cannot absorb it exactly (nothing is changed then).
        """
        consumer = as_prunable(self.chain.layer(k + 1))
        x = self._constants(k, units)
        per_unit = x.reshape(-1, self.chain.groups[k], *x.shape[2:])  # (producer units, ...)
        nonzero = int(per_unit[units].flatten(1).any(1).sum())
        if nonzero == 0:
            return 0
        plain = consumer.to_deterministic().eval()
        with torch.no_grad():
            offset = plain(x) - plain(torch.zeros_like(x))
        offset = offset.reshape(offset.shape[0], offset.shape[1], -1)[0]  # (out, positions)
        if not torch.allclose(offset, offset[:, :1].expand_as(offset), rtol=1e-6, atol=1e-7):
            return None  # the constant meets a padded border: not a bias shift
        per_input = x.reshape(x.shape[0], x.shape[1], -1)[0].mean(1)  # (in,)
        std = consumer.posterior().weight_std
        var = std.square().flatten(2).sum(2) if std.ndim > 2 else std.square()
        try:
            consumer.fold_into_bias(offset[:, 0], var @ per_input.square().to(var))
        except NotImplementedError:
            return None
        return nonzero

    # -- one pass --------------------------------------------------------------------
    def _remove_units(self, k: int) -> bool:
        chain = self.chain
        group = chain.groups[k]
        consumer = chain.layer(k + 1)
        orphan = self._dead_inputs(consumer).view(-1, group).all(1)
        dead = self._dead_units(k) & ~orphan
        remove = orphan | dead
        if remove.all():  # keep one unit so that every layer still has a shape
            remove[0] = False
            dead[0] = False
        to_fold = torch.nonzero(dead & remove).flatten()
        folded = self._try_fold(k, to_fold) if len(to_fold) else 0
        if folded is None:  # fold unit by unit; keep those that cannot be folded
            forced, folded = self.forced.get(k), 0
            for u in to_fold.tolist():
                one = self._try_fold(k, torch.tensor([u]))
                if one is not None:
                    folded += one
                elif forced is not None and not forced[self.kept[k][u]]:
                    self.unfolded_forced += 1  # asked for: removed although not exact
                else:
                    remove[u] = False
        self.folded[k] += folded
        if not remove.any():
            return False
        keep = torch.nonzero(~remove).flatten()
        producer, consumer_p = as_prunable(chain.layer(k)), as_prunable(consumer)
        chain.set_layer(k, producer.select(out_idx=keep))
        chain.set_layer(k + 1, consumer_p.select(in_idx=unit_columns(keep, group)))
        self.kept[k] = self.kept[k][keep]
        return True

    def _remove_inputs(self) -> bool:
        layer = self.chain.layer(0)
        dead = self._dead_inputs(layer)
        if dead.all():
            dead[0] = False
        if not dead.any():
            return False
        keep = torch.nonzero(~dead).flatten()
        self.chain.set_layer(0, as_prunable(layer).select(in_idx=keep))
        self.inputs = self.inputs[keep]
        return True

    def run(self) -> None:
        n = len(self.chain.layer_pos)
        changed = True
        while changed:
            changed = self._remove_inputs()
            for k in range(n - 1):
                changed = self._remove_units(k) or changed

    def kept_dead(self, k: int) -> int:
        """Dead units still in layer k (their constant could not be folded; or the last one)."""
        if k == len(self.chain.layer_pos) - 1:
            return 0
        return int(self._dead_units(k).sum())


def _unit_mask(z: Tensor, units: Tensor) -> Tensor:
    """1 on the given units (dim 1) of z, 0 elsewhere, broadcastable to z."""
    mask = torch.zeros(z.shape[1], dtype=z.dtype, device=z.device)
    mask[units.to(z.device)] = 1.0
    return mask.view(1, -1, *([1] * (z.ndim - 2)))


def _insert_selection(chain: Chain, inputs: Tensor) -> None:
    slot = chain.slots[chain.layer_pos[0]]
    dim = 1 if deployed_weight(slot.get()).ndim > 2 else -1
    items = list(slot.parent._modules.items())
    name = "select_inputs"
    while name in slot.parent._modules:
        name = f"_{name}"
    at = [k for k, _ in items].index(slot.key)
    items.insert(at, (name, SelectInputs(inputs, dim).to(chain.example.device)))
    slot.parent._modules.clear()
    slot.parent._modules.update(items)


def _max_difference(
    reference: nn.Module, shrunk: nn.Module, shape: tuple, seed: int
) -> tuple[float, float]:
    """Largest |difference| of the posterior-mean outputs on a random batch, and the scale."""
    ref_param = next(iter(reference.parameters()))
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn((8, *shape), generator=gen, dtype=ref_param.dtype).to(ref_param.device)
    outs = []
    for m in (reference, shrunk):
        with evaluation_pass(m):
            outs.append(first_tensor(m(x)))
    return float((outs[0] - outs[1]).abs().max()), float(outs[0].abs().max())


def shrink(
    model: nn.Module,
    input_shape: Sequence[int] | None = None,
    *,
    example_inputs: Example | None = None,
    prune_units: Mapping[str, Tensor | Sequence[int]] | None = None,
    inclusion_threshold: float = 0.5,
    gather_inputs: bool = True,
    passthrough: Sequence[type[nn.Module]] = (),
    check: bool = True,
    seed: int = 0,
) -> ShrinkResult | GraphShrinkResult:
    """A genuinely smaller copy of `model` without its dead units (see the module docstring).

    `example_inputs` (one batch for `model(*example_inputs)`, or a mapping for
    `model(**example_inputs)`, a tokenizer's output): any model, through
    `shrink_graph` (its `GraphShrinkResult`; the shrunk model takes the same inputs, and
    `check` raises on a mismatch instead of warning). Otherwise `model` is a chain and
    `input_shape` is one example's shape without the batch dimension; needed when the
    network holds convolutions (e.g. (1, 28, 28)); for a dense network it defaults to
    (first layer's in_features,). `prune_units` = {layer name: units to KEEP (indices
    or a boolean mask)} removes the other units as if their incoming weights were
    masked (structured pruning of layers without weight masks, e.g. eVI kernels).
    `check` compares the shrunk and the original output on a random batch in
    posterior-mean mode and warns if they differ (tolerance 1e-4 relative); it is
    skipped with `prune_units` (the output changes by design) or `gather_inputs=False`
    (the inputs differ). The input model is not modified.
    """
    if example_inputs is not None:
        if input_shape is not None:
            raise ValueError(
                "give input_shape (an nn.Sequential chain) or example_inputs (any model), "
                "not both; example_inputs alone fixes every shape"
            )
        from .graph import shrink_graph  # graph.py builds on this module's records

        return shrink_graph(
            model, example_inputs, prune_units=prune_units,
            inclusion_threshold=inclusion_threshold, passthrough=passthrough, check=check,
        )  # fmt: skip
    if not 0.0 <= inclusion_threshold < 1.0:
        raise ValueError(f"inclusion_threshold must be in [0, 1), got {inclusion_threshold}")
    original = model
    model = copy_model(model)
    chain = Chain(model, input_shape, PASSTHROUGH + tuple(passthrough))
    names = {chain.name(k): k for k in range(len(chain.layer_pos))}
    forced: dict[int, Tensor] = {}
    for name, spec in (prune_units or {}).items():
        if name not in names:
            raise ValueError(f"prune_units names unknown layer {name!r}; layers: {list(names)}")
        forced[names[name]] = _as_keep(spec, deployed_weight(chain.layer(names[name])).shape[0])
    if len(chain.layer_pos) - 1 in forced:
        raise ValueError("the last layer's units are the model's outputs and cannot be pruned")
    worker = _Shrinker(chain, inclusion_threshold, forced)
    worker.run()
    if gather_inputs and len(worker.inputs) < worker.inputs_before:
        _insert_selection(chain, worker.inputs)
    records = []
    for k in range(len(chain.layer_pos)):
        w = deployed_weight(chain.layer(k))
        records.append(
            LayerRecord(
                name=chain.name(k),
                kind=type(chain.layer(k)).__name__,
                units_before=worker.before[k][0],
                units_after=w.shape[0],
                inputs_before=worker.before[k][1],
                inputs_after=w.shape[1],
                kept_units=worker.kept[k].tolist(),
                folded_units=worker.folded[k],
                kept_dead_units=worker.kept_dead(k),
            )
        )
    result = ShrinkResult(model, records, worker.inputs.tolist(), worker.inputs_before)
    if worker.unfolded_forced:
        result.notes.append(
            f"{worker.unfolded_forced} pruned units had a constant output that could not be "
            "folded into the next layer (no bias or padded convolution): output changed"
        )
    if check and not forced and gather_inputs:
        diff, scale = _max_difference(original, model, chain.input_shape, seed)
        result.max_abs_difference = diff
        if diff > 1e-4 * max(1.0, scale):
            warnings.warn(
                f"shrunk output differs from the original by up to {diff:.3g} in posterior-mean "
                "mode: a layer's to_deterministic/posterior may not reflect its gates",
                stacklevel=2,
            )
    return result
