"""Dead channels that cannot fold: one of them carries the constants of the others.

A dead channel emits a constant c that `graph_fold` cannot put into a bias when it meets
a zero-padded border (conv → BatchNorm → padded conv: BatchNorm's β − γμ/σ), or when
the reader has neither bias nor a BatchNorm to shift. Its contribution is still linear
in the constant: the reader's output gets conv(c·1, W_k) = c · conv(1, W_k) at every
position and input size, padding included. So among the dead channels read by the same
layers, one (the representative, whose constant c_0 is not 0 at any of them) can carry
the others: in each reader its column becomes Σ_k (c_k / c_0) · column k (for a
Bayesian reader the means add so, the variances with (c_k / c_0)², the sum of
independent Gaussian weights), and the other channels are removed. The network keeps
one dead channel per set of readers instead of all of them, and computes what it
computed before.

A group is merged only where the result is exact for every reader: ungrouped, not
transposed, a layer whose weights are independent per entry (`merges_input_columns`:
not an input gate or scale shared by a column, not a moment layer), and the same
constant at every position of the reader's input (not one a padded depthwise
convolution made size-dependent, which the caller excludes).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .adapters import as_prunable
from .graph_fold import uniform_rows
from .graph_trace import ChannelGraph, Use


@dataclass
class Merge:
    """One reader's merge: column `into` ← Σ_j ratios[j] · column j (`merge_input_columns`)."""

    use: Use
    into: int
    ratios: Tensor


def _constants(cg: ChannelGraph, use: Use) -> tuple[Tensor, Tensor]:
    """Per column of `use`: its value (first position) and whether it is one value at every
    position of the example."""
    flat = cg.input_value(use)[0].reshape(len(use.ids), -1)
    return flat[:, 0], uniform_rows(flat)


def plan_merges(
    cg: ChannelGraph, candidates: set[int], layer: Callable[[str], nn.Module]
) -> tuple[set[int], list[Merge]]:
    """(groups that can go, the merges that carry their constants), for `candidates`:
    dead groups that stay otherwise. `layer(name)` is the model's module of that name."""
    readers: dict[int, list[int]] = defaultdict(list)  # group → indices into cg.sinks
    values: dict[int, Tensor] = {}  # sink index → its columns' constants
    blocked: set[int] = set()
    calls = Counter(use.name for use in cg.sinks)  # a layer read twice: merges would clash
    for s, use in enumerate(cg.sinks):
        groups = [cg.find(i) for i in use.ids]
        touched = {g for g in groups if g in candidates}
        if not touched:
            continue
        exact = (
            calls[use.name] == 1
            and not use.transposed
            and use.groups == 1
            and as_prunable(layer(use.name)).merges_input_columns
        )
        values[s], uniform = _constants(cg, use)
        for g in touched:
            readers[g].append(s)
        if not exact:
            blocked |= touched
        varying = {g for g, same in zip(groups, uniform.tolist(), strict=True) if not same}
        blocked |= varying & touched
    by_readers: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for g in sorted(readers.keys() - blocked):
        by_readers[tuple(readers[g])].append(g)
    removed: set[int] = set()
    merges: list[Merge] = []
    for sinks, groups in by_readers.items():
        if len(groups) < 2:
            continue
        planned = _merge_group(cg, [(cg.sinks[s], values[s]) for s in sinks], groups)
        if planned is not None:
            keep, group_merges = planned
            removed |= set(groups) - {keep}
            merges += group_merges
    return removed, merges


def _merge_group(
    cg: ChannelGraph, uses: list[tuple[Use, Tensor]], groups: list[int]
) -> tuple[int, list[Merge]] | None:
    """The representative of `groups` (all read by exactly the readers `uses`, each with
    its columns' constants) and the merges into it; None when no group has a non-zero
    constant at every reader."""
    slot = {g: k for k, g in enumerate(groups)}
    tables = []  # per reader: column values, each column's slot in `groups` (−1: other)
    strength = torch.full((len(groups),), torch.inf, dtype=torch.float64)
    for use, constants in uses:
        values = constants.double().cpu()
        where = torch.tensor([slot.get(cg.find(i), -1) for i in use.ids])
        largest = torch.zeros(len(groups), dtype=torch.float64)
        ours = where >= 0
        largest.scatter_reduce_(0, where[ours], values[ours].abs(), "amax")
        strength = torch.minimum(strength, largest)  # the weakest reader decides
        tables.append((values, where))
    keep = int(strength.argmax())
    if float(strength[keep]) == 0.0:
        return None
    merges = []
    for (use, _), (values, where) in zip(uses, tables, strict=True):
        own = torch.nonzero(where == keep).flatten()
        into = int(own[values[own].abs().argmax()])
        ratios = torch.where(where >= 0, values / values[into], 0.0)
        ratios[(where == keep)] = 0.0  # the carrier's other columns keep their own weights
        ratios[into] = 1.0
        merges.append(Merge(use, into, ratios))
    return groups[keep], merges


def apply_merge(model: nn.Module, merge: Merge) -> None:
    """Apply `merge` to its reader in place."""
    as_prunable(model.get_submodule(merge.use.name)).merge_input_columns(merge.into, merge.ratios)
