"""Save and load a shrunk model of the user's own class: pruned shapes + tensors, no pickle.

`shrink_graph` returns the user's own class (a torchvision ResNet, `MyNet`) with some
modules replaced by narrower ones, and after `bp.convert` with Bayesian layers in place of
plain ones. Neither can be rebuilt from a JSON spec, since the class's `forward` is code,
so, as with `torch.save(model.state_dict())` and Torch-Pruning's `tp.state_dict` /
`tp.load_state_dict`, the class comes from the user and the file holds what changed:

- `save_shrunk(model, path)` writes one safetensors file: the state dict, and in its JSON
  header the class name and the shape of every module that holds tensors and that the
  serializer can describe (`serialize.architecture`: Linear, Conv2d, BatchNorm, every
  bayesprune layer through its own `config()`, and types added with `register_layer`);
- `load_shrunk(path, MyNet())` (a fresh instance, or a factory such as `MyNet`) replaces
  each module whose recorded shape or type differs from the fresh one's by one built from
  the record, then loads the tensors strictly. The fresh instance may be the plain
  network or its `bp.convert`-ed twin: a recorded `BayesConv2d` replaces an `nn.Conv2d`
  and the other way round, never an `nn.Linear` by a convolution.

A model shrunk with `prune_inputs` takes fewer input features: the kept indices
(`graph.kept_inputs`) go into the header and come back on the loaded model. So do the
split sizes shrinking rewrote in a module's attributes (`graph_sizes`:
`torch.split(x, self.splits, 1)`), set after the shapes.

`pruned_shapes` / `apply_shapes` are the two halves without a file, for users who store
tensors their own way (with `shape_attributes` / `apply_attributes` for rewritten size
attributes and `parameter_shapes` / `apply_parameter_shapes` for sliced per-channel
parameters, such as ConvNeXt's layer scale). A file that does not fit the given class
(another class, a module the class lacks or does not describe, a layer of another kind, a
tensor of another shape) raises one `CheckpointError` that names the module. Other
attributes a `forward` reads besides its modules (`self.width = 64` used in a `view`) are
not shapes of a module: such a class must derive them from its modules to load narrower.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..io import CheckpointError, load_tensors, save_tensors
from ..nn.attention import MultiheadAttention
from ..nn.base import VariationalLayer, torch_type
from .channel_parameters import apply_parameter_shapes, parameter_shapes
from .export import _finite, _first_line, _without_prune_hooks, compare_state
from .graph import KEPT_INPUTS, kept_inputs
from .graph import set_module as _set_module
from .graph_sizes import apply_attributes, shape_attributes
from .layer_norm import ZeroCountingGroupNorm, ZeroCountingLayerNorm, layer_norm_layout
from .response_norm import ZeroCountingResponseNorm, response_norm_layout
from .rms_norm import ZeroCountingRMSNorm, is_rms_norm
from .serialize import architecture, build

FORMAT = "bayesprune-shrunk"
VERSION = 5
"""1: shapes and tensors; 2: also kept input features; 3: also size attributes that
shrinking rewrote (`graph_sizes`); 4: also the shapes of per-channel parameters it sliced
(`channel_parameters`); 5: also which tensors are one (tied weights, stored once).
Each is written only when there are some, so that an older reader refuses a model it
would rebuild wrongly."""

Spec = dict[str, Any]


def _holds_tensors(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False)) or any(
        True for _ in module.buffers(recurse=False)
    )


def _describe(module: nn.Module) -> Spec | None:
    """The module's JSON spec, or None when it holds no tensors or has no codec."""
    if not _holds_tensors(module):
        return None
    try:
        spec = architecture(module)
    except TypeError:
        return None  # no codec: its tensors still travel, and strict loading checks them
    return json.loads(json.dumps(spec))  # tuples as lists, as they come back from the file


def _kind(spec: Spec | None, module: nn.Module) -> type[nn.Module]:
    """The torch layer a spec stands for (a Bayesian layer's deterministic twin), built on
    the meta device; without a spec, the torch type `module` computes as (a subclass
    that keeps torch's `forward`, as torchvision's video `Conv3DSimple`, is an
    nn.Conv3d: `convert` and `shrink_graph` replace it by one) or its own type."""
    if spec is None:  # any LayerNorm (GroupNorm, GRN) may come back counting removed zeros
        for norm in (nn.LayerNorm, nn.GroupNorm):
            if isinstance(module, norm):
                return norm
        if layer_norm_layout(module) is not None:  # a LayerNorm written out
            return nn.LayerNorm
        if response_norm_layout(module) is not None:
            return ZeroCountingResponseNorm
        if is_rms_norm(module):
            return ZeroCountingRMSNorm
        return torch_type(type(module))
    with torch.device("meta"):
        built = build(spec)
        if isinstance(built, ZeroCountingLayerNorm):
            return nn.LayerNorm
        if isinstance(built, ZeroCountingGroupNorm):
            return nn.GroupNorm
        if isinstance(built, ZeroCountingResponseNorm | ZeroCountingRMSNorm):
            return type(built)
        return type(built.to_deterministic() if isinstance(built, VariationalLayer) else built)


def pruned_shapes(model: nn.Module) -> dict[str, Spec]:
    """{module name: {"type", "config"}} of every module that holds tensors and has a codec.

    Enough to turn a fresh instance of the model's class into one with the same shapes
    (`apply_shapes`); the tensors go separately (the state dict).
    """
    shapes = {}
    for name, module in model.named_modules():
        spec = _describe(module) if name else None  # the root is the user's class
        if spec is not None:
            shapes[name] = spec
    return shapes


def _plan(model: nn.Module, shapes: Mapping[str, Any]) -> dict[str, Spec]:
    """The recorded specs that differ from `model`'s modules; ValueError where they clash."""
    if not isinstance(shapes, Mapping):
        raise ValueError("the shapes record is not a mapping of module names")
    current = dict(model.named_modules())
    cls = type(model).__name__
    unknown = sorted(n for n in shapes if n not in current or not n)
    if unknown:
        raise ValueError(
            f"module(s) {unknown[:5]} are recorded but {cls} has none of that name: "
            "the file was saved from another architecture"
        )
    undescribed = sorted(
        n for n, m in current.items() if n and n not in shapes and _describe(m) is not None
    )
    if undescribed:
        raise ValueError(
            f"{cls} has module(s) {undescribed[:5]} that the file does not record: "
            "the file was saved from another architecture"
        )
    changes = {}
    for name, spec in shapes.items():
        fresh = current[name]
        fresh_spec = _describe(fresh)
        if fresh_spec == spec:
            continue
        saved, now = _kind(spec, fresh), _kind(fresh_spec, fresh)  # on meta: nothing allocated
        if saved is not now:
            raise ValueError(
                f"{name!r} is a {spec.get('type')} ({saved.__name__}) in the file but a "
                f"{type(fresh).__name__} ({now.__name__}) in {cls}: the file was saved "
                "from another architecture"
            )
        changes[name] = spec
    return changes


def _split_as_recorded(model: nn.Module, shapes: Mapping[str, Any]) -> None:
    """Split (in place) each nn.MultiheadAttention whose projections the record holds:
    the model was saved after `split_attention`, its fresh instance is built before."""
    for name in shapes:
        parent, _, attr = name.rpartition(".")
        if attr != "q_proj" or not parent:
            continue
        try:
            module = model.get_submodule(parent)
        except AttributeError:
            continue  # _plan names the module the class lacks
        if isinstance(module, nn.MultiheadAttention):
            _set_module(model, parent, MultiheadAttention.from_torch(module))


def apply_shapes(model: nn.Module, shapes: Mapping[str, Any]) -> nn.Module:
    """Give `model` (in place) the recorded shapes and layer types; returns it.

    Modules whose spec already matches are kept as they are (with any hooks); the
    others are replaced by untrained modules of the recorded spec, on the device and
    in the dtype of the module they replace. An `nn.MultiheadAttention` saved split into
    heads (`bayesprune.nn.split_attention`) is split first. Values come afterwards
    (`load_state_dict`).
    """
    _split_as_recorded(model, shapes)
    for name, spec in _plan(model, shapes).items():
        old = model.get_submodule(name)
        ref = next(iter([*old.parameters(), *old.buffers()]), None)
        new = build(spec)
        if ref is not None:
            new = new.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
        new.train(old.training)
        _set_module(model, name, new)
    return model


def save_shrunk(
    model: nn.Module, path: str | Path, metadata: Mapping[str, Any] | None = None
) -> Path:
    """Save a (shrunk, converted or plain) model of any class: tensors + pruned shapes.

    One safetensors file, written atomically, with the class name and `pruned_shapes`
    in its JSON header (and `metadata`, e.g. `result.as_dict()` of `shrink_graph`).
    Load it with `load_shrunk(path, MyClass())`.
    """
    attributes = shape_attributes(model)  # read before the copy without prune hooks
    parameters = parameter_shapes(model)
    model = _without_prune_hooks(model)
    state, tied = _untied(dict(model.state_dict()))
    inputs = kept_inputs(model)
    version = 5 if tied else 4 if parameters else 3 if attributes else 2 if inputs else 1
    record = {
        "format": FORMAT,
        "version": version,
        "class": type(model).__qualname__,
        "class_module": type(model).__module__,
        "modules": pruned_shapes(model),
        "kept_inputs": kept_inputs(model),
        "metadata": dict(metadata or {}),
    }
    if attributes:
        record["attributes"] = attributes
    if parameters:
        record["parameters"] = parameters
    if tied:
        record["tied"] = tied
    return save_tensors(path, state, record)


def _untied(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The state dict with each tensor that another entry shares (a language model's
    embedding table and output layer) stored once, and {dropped name: kept name}:
    safetensors refuses shared tensors, and a file should not hold a table twice."""
    first: dict[tuple[int, tuple[int, ...], tuple[int, ...]], str] = {}
    tied: dict[str, str] = {}
    for name, t in state.items():
        key = (t.data_ptr(), tuple(t.shape), tuple(t.stride()))
        if t.numel() and key in first:
            tied[name] = first[key]
        else:
            first.setdefault(key, name)
    return {k: v for k, v in state.items() if k not in tied}, tied


def _tied_back(tensors: dict[str, Tensor], tied: Any) -> None:
    """Fill the file's tied entries (`_untied`) from the tensors they share; ValueError
    for a damaged record."""
    if not isinstance(tied, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) and v in tensors for k, v in tied.items()
    ):
        raise ValueError(f"the tied tensors record is damaged: {tied!r:.80}")
    for name, source in tied.items():
        tensors[name] = tensors[source]


def _retie(model: nn.Module, tied: Mapping[str, str]) -> None:
    """Make each tied parameter the very parameter it shares again (loading gave each
    its own), so that training or editing one changes both, as in the saved model."""
    for name, source in tied.items():
        owner, _, attr = name.rpartition(".")
        module = model.get_submodule(owner)
        shared = model.get_parameter(source) if attr in module._parameters else None
        if shared is not None:
            setattr(module, attr, shared)


def _check_tensors(changes: Mapping[str, Spec], tensors: dict[str, Tensor]) -> None:
    """Each replacement's tensors have the file's shapes (checked before allocating it)."""
    for name, spec in changes.items():
        with torch.device("meta"):
            skeleton = build(spec)
        for key, t in skeleton.state_dict().items():
            full = f"{name}.{key}"
            if full not in tensors:
                raise ValueError(f"{full} is missing from the file")
            if tuple(tensors[full].shape) != tuple(t.shape):
                raise ValueError(
                    f"{full} has shape {tuple(tensors[full].shape)} in the file but "
                    f"{tuple(t.shape)} in its recorded spec"
                )


def _read(path: str | Path, cls: type[nn.Module]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The file's tensors and record, checked: format, version, class, finite values."""
    tensors, record = load_tensors(path)
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a file of save_shrunk (no pruned shapes in its header); a model "
            "saved with compress.save_model loads with compress.load_model"
        )
    version = record.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version > VERSION:
        raise CheckpointError(
            f"{path} has format version {version!r}; this bayesprune reads up to {VERSION}: "
            "upgrade bayesprune to load it"
        )
    saved = record.get("class")
    if saved != cls.__qualname__:
        raise CheckpointError(
            f"{path} holds a {record.get('class_module')}.{saved}, but model is a "
            f"{cls.__module__}.{cls.__qualname__}: pass a fresh {saved}(...) built with the "
            "arguments it was saved with"
        )
    bad = [name for name, t in tensors.items() if not _finite(t)]
    if bad:
        raise CheckpointError(
            f"{path} holds NaN or inf values in {', '.join(bad[:3])}; the file is damaged or the "
            "model diverged"
        )
    inputs = record.get("kept_inputs", {})
    if not isinstance(inputs, dict) or not all(
        isinstance(v, list) and all(isinstance(i, int) and i >= 0 for i in v)
        for v in inputs.values()
    ):
        raise CheckpointError(f"{path} has a damaged kept_inputs record: {inputs!r:.80}")
    return tensors, record


def load_shrunk(path: str | Path, model: nn.Module | Callable[[], nn.Module]) -> nn.Module:
    """Load a file of `save_shrunk` into `model`, a fresh instance of the saved class.

    `model` (or the module a factory such as `MyNet` returns) gets the recorded shapes
    (`apply_shapes`), then the file's tensors, strictly, in the file's dtypes and on
    the model's device; it is returned in eval mode. The fresh instance may be plain or
    `bp.convert`-ed: the file says which layers are Bayesian. A file of another class
    or architecture, or a damaged one, raises `CheckpointError` naming the first module
    that does not fit (the fresh instance may then be half-changed: build another). A
    model saved with pruned inputs gets them back (`compress.kept_inputs(model)`).
    """
    if not isinstance(model, nn.Module):
        if not callable(model):
            raise TypeError(f"model must be an nn.Module or a factory, got {type(model).__name__}")
        model = model()
        if not isinstance(model, nn.Module):
            raise TypeError(f"the model factory returned a {type(model).__name__}, not a module")
    tensors, record = _read(path, type(model))
    cls = type(model).__name__
    try:
        tied = record.get("tied", {})
        _tied_back(tensors, tied)
        shapes = record.get("modules", {})
        if isinstance(shapes, Mapping):
            _split_as_recorded(model, shapes)
        _check_tensors(_plan(model, shapes), tensors)
        apply_shapes(model, shapes)
        if record.get("attributes"):
            apply_attributes(model, record["attributes"])
        if record.get("parameters"):
            apply_parameter_shapes(model, record["parameters"])
        compare_state(
            model.state_dict(),
            tensors,
            "the model",
            " (a module the file does not describe: register_layer its type)",
        )
        device = next(iter([*model.parameters(), *model.buffers()]), torch.empty(0)).device
        model.load_state_dict(
            {k: v.to(device) for k, v in tensors.items()}, strict=True, assign=True
        )
        _retie(model, tied)
    except (ValueError, TypeError, KeyError, RuntimeError) as err:
        raise CheckpointError(
            f"{path} does not fit this {cls} ({_first_line(err)}); pass a fresh {cls} built "
            "with the arguments the saved model had (before shrinking)"
        ) from err
    if record.get("kept_inputs"):
        setattr(model, KEPT_INPUTS, record["kept_inputs"])
    return model.eval()
