"""Attention heads as units: which ones are dead, how much each moves the output, and
their removal with the constant they leave behind folded.

A head is a block of `head_dim` rows of the query, key and value projections and the
same block of the output projection's columns. Three kinds of layout are read
(`HeadLayout`): `bayesprune.nn.MultiheadAttention`, with one layer per projection
(`q_proj`, `k_proj`, `v_proj`, `out_proj`); the fused layout of timm's `Attention` (one
`qkv` layer whose rows are q, k and v in turn, an output `proj`, the head count and width
in the attributes `num_heads`, `head_dim`, `attn_dim` that its forward reads); and
Hugging Face's BERT and ViT attention (`self.query` / `key` / `value`, `output.dense`,
`num_attention_heads`, `attention_head_size` and `all_head_size` in `self`; DistilBERT's
`q_lin` ... `out_lin`, `n_heads`, `dim`; Llama's grouped-query attention, `q_proj` ...
`o_proj` with `head_dim` and `num_key_value_groups`, where a unit is one key / value
head and the query heads that share it, and Phi's; BART's and OPT's `q_proj` ...
`out_proj` with `num_heads`, `head_dim`, `embed_dim`; GPT-2's fused `c_attn` with
`split_size`; GPT-NeoX's fused `query_key_value`, whose rows hold each head's q, k and
v together). A fused or Hugging Face module is taken only
when a probe proves it, on the arguments the model passes it where `prove_heads` ran
(else on random tokens): a copy without its first head must compute what the module
computes with that head's output columns zeroed (a module whose forward reads its
width elsewhere, adds a per-head bias table or normalises over all heads fails, and
keeps its heads). Heads touch no channel group, so `shrink_graph` removes them before
its channel rounds and `activation_scores` scores them under the attention module's
name.

Removing a head means what removing a unit means elsewhere: its incoming (value)
weights are masked, so the head outputs its value bias, the same at every position
(attention weights sum to 1), and that constant, pushed through the output projection,
is folded into its bias (its mean, and for a random weight the variance Σσ²c²). The
shrunk module then equals the input module with those value rows masked, on any input.
A head is dead (removed without being asked) when every one of its value units is dead
(zero deployed weights, or a unit inclusion probability at most the threshold) or the
output projection gives it zero weight.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..nn.attention import MultiheadAttention
from ..nn.base import GatedLayer, evaluation_pass
from .adapters import as_prunable, is_prunable, mask_rows

__all__ = [
    "HeadLayout",
    "attention_modules",
    "dead_heads",
    "head_count",
    "head_layout",
    "head_scores",
    "prove_heads",
    "remove_heads",
]


@dataclass(frozen=True)
class HeadLayout:
    """Where the heads of one attention module are: the layer whose rows hold the values
    (`value`), the layers whose rows hold q, k and v (`projections`), the layer whose
    columns read the heads (`out`), whether q, k and v share one layer (`fused`), and
    the attributes (of the submodule `owner`) that hold the head count (`count`), a
    head's width (`size`) and their product (`widths`, those present are rewritten with
    the count when `rewrites`). Layer names are paths below the attention module
    ("self.query" in Hugging Face's BERT)."""

    value: str
    projections: tuple[str, ...]
    out: str
    fused: bool
    owner: str = ""
    count: str = "num_heads"
    size: str = "head_dim"
    widths: tuple[str, ...] = ()
    rewrites: bool = True
    grouped: tuple[str, ...] = ()  # projections with one head per group of query heads
    groups: str = ""  # the attribute that holds the query heads per group (1 when "")
    interleaved: bool = False  # fused rows per head: its q, k and v together (GPT-NeoX)
    pruned: str = ""  # the attribute holding the removed heads' original indices (T5's)

    def heads(self, module: nn.Module) -> int:
        """The number of units: heads, or groups of query heads that share a key / value
        head (grouped-query attention: Llama's), counted from the value rows when
        `count` is ""."""
        if not self.count:
            rows = int(_shape(module.get_submodule(self.value))[0])
            return rows // (self.head_size(module) * (3 if self.fused else 1))
        return int(getattr(module.get_submodule(self.owner), self.count))

    def head_size(self, module: nn.Module) -> int:
        """A head's width: its attribute, or, when `size` is "", the value rows over the
        head count (timm's Swin keeps no `head_dim`)."""
        if not self.size:
            rows = int(_shape(module.get_submodule(self.value))[0])
            return rows // (self.heads(module) * (3 if self.fused else 1))
        return int(getattr(module.get_submodule(self.owner), self.size))

    def group(self, module: nn.Module) -> int:
        """Query heads per unit (1 but in grouped-query attention)."""
        return int(getattr(module.get_submodule(self.owner), self.groups)) if self.groups else 1

    def value_rows(self, module: nn.Module, heads: Tensor) -> Tensor:
        """The rows of `value` that hold `heads`' values."""
        if self.interleaved:  # head h's rows are its q, k, v: the values are the last third
            size = self.head_size(module)
            return self._blocks(heads, 3 * size).view(-1, 3, size)[:, 2].flatten()
        units = self._blocks(heads, self.head_size(module) * self._width(module, self.value))
        return units + 2 * self.heads(module) * self.head_size(module) if self.fused else units

    def units(self, module: nn.Module, heads: Tensor) -> Tensor:
        """The units of `heads` (indices) in the query heads' space: rows of q (and of
        k and v where they are not grouped), columns of the output projection."""
        return self._blocks(heads, self.head_size(module) * self.group(module))

    def _width(self, module: nn.Module, name: str) -> int:
        return 1 if name in self.grouped else self.group(module)

    @staticmethod
    def _blocks(heads: Tensor, width: int) -> Tensor:
        offsets = torch.arange(width, device=heads.device)
        return (heads.long().view(-1, 1) * width + offsets).flatten()

    def rows(self, module: nn.Module, heads: Tensor, name: str = "") -> Tensor:
        """The rows of projection `name` that hold `heads` (q, k and v in turn when
        fused; one key / value head per unit when `name` is grouped)."""
        if self.interleaved:
            return self._blocks(heads, 3 * self.head_size(module))
        units = self._blocks(heads, self.head_size(module) * self._width(module, name))
        if not self.fused:
            return units
        width = self.heads(module) * self.head_size(module)
        return torch.cat([units + part * width for part in range(3)])

    def keep(
        self, module: nn.Module, heads: Tensor, tables: tuple[tuple[str, int], ...] = ()
    ) -> dict[str, int]:
        """Slice `module` to `heads`, in place, and its parameters `tables` (path, the dim
        with one entry per head: a Swin's relative position bias table); the size
        attributes it rewrote (by their path from `module`: "self.num_attention_heads")."""
        for path, dim in tables:
            owner, _, attr = path.rpartition(".")
            holder = module.get_submodule(owner)
            table = getattr(holder, attr)
            cut = table.detach().index_select(dim, heads.to(table.device)).clone()
            setattr(holder, attr, nn.Parameter(cut, table.requires_grad))
        columns = self.units(module, heads)
        rows = {name: self.rows(module, heads, name) for name in self.projections}
        for name in self.projections:
            layer = as_prunable(module.get_submodule(name)).select(out_idx=rows[name])
            _replace(module, name, layer)
        out = as_prunable(module.get_submodule(self.out)).select(in_idx=columns)
        _replace(module, self.out, out)
        if not self.rewrites:
            return {}  # the head count is read from q_proj
        owner, prefix = module.get_submodule(self.owner), f"{self.owner}." if self.owner else ""
        pruned = self._pruned(owner, heads) if self.pruned else None
        changed: dict[str, Any] = {self.count: len(heads)}
        changed.update(
            {w: len(heads) * self.head_size(module) for w in self.widths if hasattr(owner, w)}
        )
        for attribute, value in changed.items():
            setattr(owner, attribute, value)
        if pruned is not None:  # a set on the module; a sorted list in the record (JSON)
            setattr(owner, self.pruned, pruned)
            changed[self.pruned] = sorted(pruned)
        return {prefix + attribute: value for attribute, value in changed.items()}

    def _pruned(self, owner: nn.Module, heads: Tensor) -> set[int]:
        """The original indices of every head removed so far, `heads` (current indices)
        kept: T5 slices the position bias, computed for all its original heads by the
        first layer and handed on, with them (Hugging Face's own `prune_heads`)."""
        before = {int(h) for h in getattr(owner, self.pruned)}
        count = int(getattr(owner, self.count))
        original = [h for h in range(count + len(before)) if h not in before]
        kept = {int(h) for h in heads}
        return before | {original[j] for j in range(count) if j not in kept}


def _replace(module: nn.Module, path: str, layer: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(module.get_submodule(parent), name, layer)


_SPLIT = HeadLayout(
    "v_proj", ("q_proj", "k_proj", "v_proj"), "out_proj", fused=False, rewrites=False
)
_FUSED = (
    HeadLayout("qkv", ("qkv",), "proj", fused=True, widths=("attn_dim",)),
    HeadLayout("c_attn", ("c_attn",), "c_proj", fused=True, widths=("split_size",)),  # GPT-2
    HeadLayout("qkv", ("qkv",), "proj", fused=True, size=""),  # timm's Swin: no head_dim
    HeadLayout(  # GPT-NeoX (Pythia): each head's q, k and v rows together, counted by -1
        "query_key_value", ("query_key_value",), "dense", True, "", "", "head_size",
        rewrites=False, interleaved=True,
    ),
)  # fmt: skip

_SEPARATE = (  # Hugging Face's layouts: BERT / RoBERTa / ELECTRA, ViT, DistilBERT, DeBERTa, ...
    HeadLayout(
        "self.value", ("self.query", "self.key", "self.value"), "output.dense", False,
        "self", "num_attention_heads", "attention_head_size", ("all_head_size",),
    ),
    HeadLayout(
        "attention.value", ("attention.query", "attention.key", "attention.value"),
        "output.dense", False, "attention", "num_attention_heads", "attention_head_size",
        ("all_head_size",),
    ),
    HeadLayout(
        "v_lin", ("q_lin", "k_lin", "v_lin"), "out_lin", False, "", "n_heads",
        "attention_head_size", ("dim",),
    ),
    HeadLayout(  # DeBERTa's: its projections named `*_proj`
        "self.value_proj", ("self.query_proj", "self.key_proj", "self.value_proj"),
        "output.dense", False, "self", "num_attention_heads", "attention_head_size",
        ("all_head_size",),
    ),
    HeadLayout(  # Llama's, Mistral's, Qwen2's: a unit is a key / value head and its queries
        "v_proj", ("q_proj", "k_proj", "v_proj"), "o_proj", False, "", "", "head_dim",
        rewrites=False, grouped=("k_proj", "v_proj"), groups="num_key_value_groups",
    ),
    HeadLayout(  # Phi's: the same, its output projection named `dense`
        "v_proj", ("q_proj", "k_proj", "v_proj"), "dense", False, "", "", "head_dim",
        rewrites=False, grouped=("k_proj", "v_proj"), groups="num_key_value_groups",
    ),
    HeadLayout(  # BART's, OPT's, Whisper's: `num_heads`, `head_dim`, and `embed_dim` merged
        "v_proj", ("q_proj", "k_proj", "v_proj"), "out_proj", False, "", "num_heads",
        "head_dim", ("embed_dim",),
    ),
    HeadLayout(  # ALBERT's: the projections and the output layer in one module
        "value", ("query", "key", "value"), "dense", False, "", "num_attention_heads",
        "attention_head_size", ("all_head_size",),
    ),
    HeadLayout(  # T5's: the removed heads in `pruned_heads`, for the position bias
        "v", ("q", "k", "v"), "o", False, "", "n_heads", "key_value_proj_dim",
        ("inner_dim",), pruned="pruned_heads",
    ),
)  # fmt: skip
"""Layouts with one layer per projection and the head count in attributes: taken, as
the fused one, only when the probe proves them."""


_PROVEN: weakref.WeakKeyDictionary[nn.Module, tuple[Any, bool]] = weakref.WeakKeyDictionary()
"""Fused modules probed, with the shapes they were probed at (a module that lost heads
since is probed again)."""


def head_layout(module: nn.Module) -> HeadLayout | None:
    """The layout of `module`'s heads, or None when it is no head-prunable attention."""
    if isinstance(module, MultiheadAttention):
        return _SPLIT
    layout = _candidate(module)
    if layout is None:
        return None
    state = _state(module, layout)
    known = _PROVEN.get(module)
    if known is None or known[0] != state:
        known = (state, _proven(module, layout))
        _PROVEN[module] = known
    return layout if known[1] else None


def prove_heads(model: nn.Module, inputs: tuple[Any, ...]) -> None:
    """Probe every candidate attention module of `model` on the arguments it receives
    when `model` runs on `inputs` (its masks, its query, key and value apart), which
    `head_layout` then answers from. Without this the probe calls a module with one
    tensor of random tokens, which a module that takes more arguments (DistilBERT's)
    fails, and which cannot see what the model's own call does (GPT-2's causal mask)."""
    candidates = {
        name: (module, layout)
        for name, module in model.named_modules()
        if not isinstance(module, MultiheadAttention) and (layout := _candidate(module))
    }
    if not candidates:
        return
    calls: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}

    def recorder(name: str) -> Any:
        def record(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if name not in calls:  # as the module got it (it may fill a cache it is given)
                calls[name] = _fresh((args, kwargs))

        return record

    hooks = [
        module.register_forward_pre_hook(recorder(name), with_kwargs=True)
        for name, (module, _) in candidates.items()
    ]
    with evaluation_pass(model, hooks):
        model(*inputs)
    for name, (module, layout) in candidates.items():
        if name in calls:
            _PROVEN[module] = (_state(module, layout), _proven(module, layout, calls[name]))


def _candidate(module: nn.Module) -> HeadLayout | None:
    """The first layout whose layers and attributes `module` has (not yet proven)."""
    for layout in (*_FUSED, *_SEPARATE):
        if _has(module, (*layout.projections, layout.out)) and _has_attributes(module, layout):
            return layout
    return None


def _state(module: nn.Module, layout: HeadLayout) -> tuple[Any, ...]:
    """What a probe's answer holds for: the layout, the head count and width, the shapes."""
    state = (layout, layout.heads(module), layout.head_size(module))
    return state + tuple(_shape(module.get_submodule(n)) for n in (*layout.projections, layout.out))


def head_count(module: nn.Module) -> int:
    """The number of heads of a head-prunable attention module."""
    return _layout(module).heads(module)


def _has(module: nn.Module, paths: tuple[str, ...]) -> bool:
    try:
        return all(is_prunable(module.get_submodule(p)) for p in paths)
    except AttributeError:
        return False


def _has_attributes(module: nn.Module, layout: HeadLayout) -> bool:
    owner = module.get_submodule(layout.owner)
    if not layout.size and not isinstance(getattr(owner, layout.count, None), int):
        return False  # a width derived from the count needs the count
    size = getattr(owner, layout.size, None) if layout.size else layout.head_size(module)
    group = getattr(owner, layout.groups, None) if layout.groups else 1
    if not isinstance(size, int) or size <= 0 or not isinstance(group, int) or group < 1:
        return False
    if layout.pruned and not isinstance(getattr(owner, layout.pruned, None), set | frozenset):
        return False
    heads = getattr(owner, layout.count, None) if layout.count else layout.heads(module)
    return isinstance(heads, int) and heads > 1


def _shape(layer: Any) -> Any:
    return tuple(as_prunable(layer).posterior().weight_mean.shape) if is_prunable(layer) else None


_TABLES: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[str, int], ...]] = (
    weakref.WeakKeyDictionary()
)
"""Per proven module, its parameters with one entry per head that its heads take along."""


def head_tables(module: nn.Module) -> tuple[tuple[str, int], ...]:
    """The parameters of a proven attention module that hold one entry per head (path,
    dim), sliced with its heads: () for most."""
    return _TABLES.get(module, ())


def _table_candidates(module: nn.Module, layout: HeadLayout) -> tuple[tuple[str, int], ...]:
    """Parameters of `module` outside its projections with exactly one dim of the head
    count (a relative position bias table, num_relative × heads): what a probe may prove
    to be per head. None for grouped-query attention (its units are groups)."""
    if layout.groups:
        return ()
    count, layers = layout.heads(module), (*layout.projections, layout.out)
    found = []
    for name, p in module.named_parameters():
        if any(name.startswith(f"{layer}.") for layer in layers):
            continue
        dims = [d for d, size in enumerate(p.shape) if size == count]
        if len(dims) == 1:
            found.append((name, dims[0]))
    return tuple(found)


def _proven(module: nn.Module, layout: HeadLayout, call: Any = None) -> bool:
    """The layout's shapes fit its attributes, and the probe proves it (on `call`, the
    recorded (args, kwargs) of the module's call in the model, when given)."""
    heads, size = layout.heads(module), layout.head_size(module)
    for name in layout.projections:
        shape = _shape(module.get_submodule(name))
        rows = (3 if layout.fused else 1) * heads * size * layout._width(module, name)
        if len(shape) != 2 or shape[0] != rows:
            return False
    if _shape(module.get_submodule(layout.out))[1:] != (heads * size * layout.group(module),):
        return False
    _TABLES.pop(module, None)
    if _probe(module, layout, call):
        return True
    tables = _table_candidates(module, layout)  # the heads may carry a table of their own
    if tables and _probe(module, layout, call, tables):
        _TABLES[module] = tables
        return True
    return False


def _probe(
    module: nn.Module,
    layout: HeadLayout,
    call: Any = None,
    tables: tuple[tuple[str, int], ...] = (),
) -> bool:
    """A deterministic copy without head 0 computes what the copy computes with head 0's
    output columns zeroed (on the recorded `call`, else on a few random tokens)."""
    try:
        probe = copy.deepcopy(module).eval()
        for name in {*layout.projections, layout.out}:
            _replace(probe, name, as_prunable(probe.get_submodule(name)).to_deterministic())
        if call is None:
            weight = probe.get_submodule(layout.projections[0]).weight
            g = torch.Generator().manual_seed(0)
            call = ((torch.randn(2, 5, weight.shape[1], generator=g).to(weight),), {})
        silenced = copy.deepcopy(probe)
        first = layout.head_size(module) * layout.group(module)  # unit 0's columns
        with torch.no_grad():
            silenced.get_submodule(layout.out).weight[:, :first] = 0.0
            args, kwargs = _fresh(call)
            expected = _first(silenced(*args, **kwargs))
            layout.keep(probe, torch.arange(1, layout.heads(module)), tables)
            args, kwargs = _fresh(call)
            got = _first(probe(*args, **kwargs))
    except Exception:  # any failure of the layout's assumptions: not this layout
        return False
    if not isinstance(got, Tensor) or not isinstance(expected, Tensor):
        return False
    if got.shape != expected.shape:
        return False
    scale = float(expected.abs().max()) or 1.0
    return bool(torch.allclose(got, expected, rtol=0, atol=1e-5 * scale))


def _fresh(call: tuple[tuple[Any, ...], dict[str, Any]]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A call's arguments with copies of what is not a tensor: a cache object that the
    module fills (Hugging Face's `past_key_value`) starts each probe as it was."""
    args, kwargs = call
    fresh = [a if isinstance(a, Tensor) else copy.deepcopy(a) for a in args]
    return tuple(fresh), {
        k: v if isinstance(v, Tensor) else copy.deepcopy(v) for k, v in kwargs.items()
    }


def _first(output: Any) -> Any:
    """A module's tensor output, or the first of a tuple (Hugging Face's attention)."""
    return output[0] if isinstance(output, tuple | list) else output


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """{name: module} of every head-prunable attention module of `model`."""
    return {n: m for n, m in model.named_modules() if head_layout(m) is not None}


def head_units(module: nn.Module, heads: Tensor) -> Tensor:
    """The units of `heads` (indices) in one projection: rows of q, k or v, columns of
    the output projection."""
    return _layout(module).units(module, heads)


def _per_head(values: Tensor, module: nn.Module) -> Tensor:
    """Per unit (a row each): values of its rows or columns, in either space."""
    return values.reshape(_layout(module).heads(module), -1)


def _layout(module: nn.Module) -> HeadLayout:
    layout = head_layout(module)
    if layout is None:
        raise ValueError(f"{type(module).__name__} is no head-prunable attention module")
    return layout


def dead_heads(module: nn.Module, threshold: float = 0.5) -> Tensor:
    """Per head: True when its value units are all dead or the output projection
    ignores it."""
    layout = _layout(module)
    value_layer = module.get_submodule(layout.value)
    v = as_prunable(value_layer).to_deterministic()
    dead = (v.weight.detach().flatten(1) == 0).all(1).cpu()
    if isinstance(value_layer, GatedLayer):
        pip = value_layer.unit_inclusion()
        if pip is not None:
            dead |= pip.detach().cpu() <= threshold
    rows = layout.value_rows(module, torch.arange(layout.heads(module)))
    out = as_prunable(module.get_submodule(layout.out)).to_deterministic().weight.detach()
    unread = (out == 0).all(0).cpu()
    return _per_head(dead[rows], module).all(1) | _per_head(unread, module).all(1)


def remove_heads(
    model: nn.Module,
    name: str,
    keep: Tensor,
    reference: nn.Module | None = None,
    folds: dict[str, Tensor] | None = None,
    shapes: dict[str, list[int]] | None = None,
) -> tuple[Tensor, dict[str, int]]:
    """Delete the heads of attention `name` that `keep` (bool per head) drops, in place.

    Their value rows are masked (also in `reference`, the model the result must equal),
    the constant they then output is folded into the output projection's bias (what
    each row received is added to `folds` under the projection's name), their entries of
    a per-head table go (its new shape in `shapes`), and the
    projections lose those rows, the output projection those columns. Every module keeps
    at least one head (the first, when `keep` keeps none). Returns the indices of the
    heads it kept and the size attributes it rewrote (a fused module's head count).
    """
    module = model.get_submodule(name)
    layout = _layout(module)
    keep = keep.clone() if keep.any() else torch.arange(len(keep)) == 0
    kept_heads, drop = keep.nonzero().flatten(), (~keep).nonzero().flatten()
    if not len(drop):
        return kept_heads, {}
    values = layout.value_rows(module, drop)
    for target in (model, reference):
        if target is not None:
            mask_rows(target, f"{name}.{layout.value}", values.tolist())
    added = _fold_value_bias(module, layout, values, head_units(module, drop))
    if folds is not None and added is not None:
        out = f"{name}.{layout.out}"
        folds[out] = folds[out] + added if out in folds else added
    tables = head_tables(module)
    changed = layout.keep(module, kept_heads, tables)
    if shapes is not None:  # a table's new shape, for save_shrunk (`channel_parameters`)
        shapes.update(
            {f"{name}.{path}": list(module.get_parameter(path).shape) for path, _ in tables}
        )
    return kept_heads, changed


def _fold_value_bias(
    module: nn.Module, layout: HeadLayout, rows: Tensor, columns: Tensor
) -> Tensor | None:
    """out's bias += W[:, columns] · c for the masked heads' constant value output c (the
    value bias at `rows`); what was added (None when nothing was)."""
    value = as_prunable(module.get_submodule(layout.value)).to_deterministic()
    if value.bias is None:
        return None  # the heads output 0: nothing to fold
    constant = value.bias.detach()[rows.to(value.bias.device)]
    if layout.value in layout.grouped:  # one value head serves each query head of its group
        size = layout.head_size(module)
        blocks = constant.view(-1, 1, size).expand(-1, layout.group(module), size)
        constant = blocks.reshape(-1)
    out = as_prunable(module.get_submodule(layout.out))
    columns = columns.to(value.bias.device)
    weight = out.to_deterministic().weight.detach()[:, columns]
    std = out.posterior().weight_std.detach()[:, columns]
    mean = weight @ constant
    if not bool(mean.any()):
        return None
    out.fold_into_bias(mean, std.square() @ constant.square())
    return mean


def head_scores(model: nn.Module, spreads: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Per head: √Σ over its columns j of sd(x_j)² ‖W_out[:, j]‖², the unit score of
    `activation_scores` with the head's outputs as its columns; `spreads` holds, per
    attention module, the sd of each of out_proj's input columns over the data."""
    scores = {}
    for name, sd in spreads.items():
        module = model.get_submodule(name)
        out = module.get_submodule(_layout(module).out)
        weight = as_prunable(out).posterior().weight_mean.detach().double()
        part = (sd.to(weight) * weight.norm(dim=0)).square().cpu()
        scores[name] = _per_head(part, module).sum(1).sqrt()
    return scores
