"""Deploy a compressed model: safetensors + JSON spec, ONNX, and sparse storage size.

- `save_model` / `load_model`: one safetensors file holding the state dict, with the
  JSON architecture spec (`serialize.architecture`) in its header, written atomically
  (temporary file + os.replace, see `bayesprune.io`). Loading never unpickles; a
  corrupt, truncated or mismatched file raises one `CheckpointError`. Works for
  Bayesian models (the posterior is kept) and plain ones, shrunk widths included.
- `export_onnx`: the deterministic network (posterior means) of any traceable model
  (chains, and graphs of the user's own class from `shrink_graph`) through torch's
  TorchScript-based exporter (`dynamo=False`; needs only the `onnx` package, not
  onnxscript, from the `export` extra), with a dynamic batch dimension and optional
  `metadata_props`. For raw inputs and probabilities / original units, wrap the
  network in `bayesprune.deploy.Deployable` first (as `bayesprune export` does).
  `onnx_difference` runs the file in onnxruntime against the torch model.
- `csr_bytes` / `sparse_storage`: bytes of unstructured-sparse weights stored as CSR
  (values + column indices + row pointers), next to the dense size.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from ..example_inputs import Call, Example, example_call, taking_by_position
from ..extras import require
from ..io import CheckpointError, atomic_write_bytes, load_tensors, save_tensors
from ..nn import to_deterministic
from ..nn.base import evaluation_pass, variational_layers
from ..validation import model_output
from .adapters import as_prunable, copy_model, prunable_layers
from .chain import first_tensor
from .serialize import architecture, build

FORMAT = "bayesprune-model"
VERSION = 1


def _without_prune_hooks(model: nn.Module) -> nn.Module:
    """A copy whose torch-pruned layers hold their masked weights as plain parameters."""
    model = copy_model(model)
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(module, hook._tensor_name)
    return model


def save_model(model: nn.Module, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Save `model` (spec + tensors) to one safetensors file, atomically."""
    model = _without_prune_hooks(model)
    spec = {
        "format": FORMAT,
        "version": VERSION,
        "architecture": architecture(model),
        "metadata": metadata or {},
    }
    return save_tensors(path, dict(model.state_dict()), spec)


def load_model(path: str | Path) -> nn.Module:
    """Rebuild a model saved by `save_model` (same dtypes; in eval mode).

    The spec is checked against the file's tensors before anything is allocated: the
    model is first built on the meta device (shapes only, no memory), so a small file
    whose spec asks for huge layers fails at once. NaN or inf tensors are refused.
    """
    try:
        tensors, spec = load_tensors(path)
    except RecursionError as err:  # a header nested thousands deep
        raise CheckpointError(f"{path}: its header is nested too deeply to be a model") from err
    if not isinstance(spec, dict) or spec.get("format") != FORMAT or "architecture" not in spec:
        raise CheckpointError(
            f"{path} is a safetensors file but not a bayesprune model (no architecture spec); "
            "save it with bayesprune.compress.save_model"
        )
    version = spec.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{path}: format version {version!r} is not an integer")
    if version > VERSION:
        raise CheckpointError(
            f"{path} was written by a newer bayesprune (format version {version}); "
            "upgrade bayesprune to load it"
        )
    try:
        _check_shapes(spec["architecture"], tensors)
        model = build(spec["architecture"])
        model.load_state_dict(tensors, strict=True, assign=True)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError) as err:
        raise CheckpointError(
            f"{path} does not match its own architecture spec ({_first_line(err)}); the file is "
            "damaged or was edited; re-export the model"
        ) from err
    except RecursionError as err:
        raise CheckpointError(f"{path}: its architecture spec is nested too deeply") from err
    bad = [name for name, t in tensors.items() if not _finite(t)]
    if bad:
        raise CheckpointError(
            f"{path} holds NaN or inf values in {', '.join(bad[:3])}; the file is damaged or the "
            "model diverged; re-export it from a healthy run"
        )
    return model.eval()


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _finite(t: Tensor) -> bool:
    return not t.is_floating_point() or bool(torch.isfinite(t).all())


def compare_state(
    expected: Mapping[str, Tensor], tensors: Mapping[str, Tensor], holder: str, hint: str = ""
) -> None:
    """The first key missing, unexpected or of another shape in `tensors` (a file's) against
    `expected` (what `holder` needs, e.g. "the spec", "the model"), as a ValueError."""
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ValueError(f"tensors missing from the file: {missing[:5]}, unexpected: {extra[:5]}")
    for name, t in expected.items():
        if tuple(t.shape) != tuple(tensors[name].shape):
            raise ValueError(
                f"{name} has shape {tuple(tensors[name].shape)} in the file but "
                f"{tuple(t.shape)} in {holder}{hint}"
            )


def _check_shapes(architecture: Any, tensors: dict[str, Tensor]) -> None:
    """Build the spec on the meta device (no memory) and compare every shape with the file's.

    Tensors the model holds outside its state dict (non-persistent buffers) may not
    exceed what the file holds, so no spec can make loading allocate much more than
    the file's own size.
    """
    with torch.device("meta"):
        skeleton = build(architecture)
    compare_state(skeleton.state_dict(), tensors, "the spec")
    held = sum(t.numel() for t in tensors.values())
    built = sum(t.numel() for t in (*skeleton.parameters(), *skeleton.buffers()))
    if built > 2 * held + 1_000_000:
        raise ValueError(f"the spec allocates {built} values but the file holds {held}")


def saved_metadata(path: str | Path) -> dict[str, Any]:
    """The user metadata stored by `save_model` (e.g. input shape, metrics)."""
    return dict(load_tensors(path)[1].get("metadata", {}))


def _input_shapes(input_shape: Sequence[int] | Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """One shape per input of the forward: `(3, 32, 32)` or `[(3, 32, 32), (4,)]`."""
    shapes = list(input_shape)
    if shapes and all(isinstance(s, Sequence) for s in shapes):
        return [tuple(int(d) for d in s) for s in shapes]  # type: ignore[union-attr]
    if all(isinstance(s, int) for s in shapes):
        return [tuple(shapes)]  # type: ignore[arg-type]
    raise ValueError(
        f"input_shape must be one example's shape, e.g. (3, 32, 32), or one per input of "
        f"the forward, e.g. [(3, 32, 32), (4,)]; got {input_shape!r}"
    )


def _input_names(n: int) -> list[str]:
    """ "input", then "input_1", ...: one per positional input (none for none)."""
    return [f"input_{i}" if i else "input" for i in range(n)]


@contextmanager
def _attention_as_ops() -> Iterator[None]:
    """nn.MultiheadAttention's fused inference kernel off while exporting.

    In eval mode without gradients the module calls `_native_multi_head_attention`,
    which has no ONNX form; with the fast path off it runs the same attention as
    matrix products and softmax, which export (same outputs to float precision).
    """
    was = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(was)


def export_onnx(
    model: nn.Module,
    path: str | Path,
    input_shape: Sequence[int] | Sequence[Sequence[int]] | None = None,
    *,
    example_inputs: Example | None = None,
    opset: int = 17,
    dynamic_batch: bool = True,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write the deterministic network (posterior means) of `model` as ONNX, atomically.

    `input_shape` is one example's shape without the batch dimension, or a list of
    them for a `forward` that takes several tensors; or instead `example_inputs`, a
    batch as `shrink_graph` takes it (a tensor, a tuple, or a mapping by name: a
    tokenizer's output, whose integer token ids the file then takes as int64). The
    graph's inputs are "input" (then "input_1", ...), or the mapping's names, and its
    output "output" (the logits of a dict output: Hugging Face's `ModelOutput`); with
    `dynamic_batch` any batch size works, and `dynamic_axes` (torch's {input name:
    {dim: label}}) frees more dims, e.g. {"input_ids": {0: "batch", 1: "tokens"}}. Any
    model the TorchScript tracer follows is exported, chains and graphs alike (residual
    additions, concatenations, a class of your own from `shrink_graph`). `metadata` goes
    into the model's `metadata_props` (string keys and values). Needs the `onnx`
    package (`pip install 'bayesprune[export]'`); without it this raises
    `MissingExtraError` before writing anything.
    """
    onnx = require("onnx", "export", "ONNX export")
    if (input_shape is None) == (example_inputs is None):
        raise ValueError("export_onnx needs input_shape or example_inputs (one of them)")
    plain = to_deterministic(model) if any(True for _ in variational_layers(model)) else model
    plain = _without_prune_hooks(plain).eval()
    ref = next(iter(plain.parameters()))
    if example_inputs is None:
        shapes = _input_shapes(input_shape)  # type: ignore[arg-type]
        call = Call(tuple(torch.zeros(1, *s, dtype=ref.dtype, device=ref.device) for s in shapes))
    else:
        call = example_call(example_inputs)
        shapes = [tuple(t.shape[1:]) for t in call.inputs if isinstance(t, Tensor)]
    names = [*_input_names(len(call.args)), *call.keywords]
    buffer = io.BytesIO()
    axes: dict[str, Any] | None = (
        {n: {0: "batch"} for n in [*names, "output"]} if dynamic_batch else None
    )
    if dynamic_axes:
        axes = {**(axes or {}), **{k: dict(v) for k, v in dynamic_axes.items()}}
    with (
        warnings.catch_warnings(),
        torch.no_grad(),
        _attention_as_ops(),
        taking_by_position(plain, call, result=_output_tensor),
    ):
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter's notice
        try:
            torch.onnx.export(
                plain,
                call.inputs,
                buffer,
                input_names=names,
                output_names=["output"],
                dynamic_axes=axes,
                opset_version=opset,
                dynamo=False,
            )
        except torch.onnx.errors.OnnxExporterError as err:
            hint = ""
            if "adaptive" in str(err):
                hint = " (an adaptive pooling whose output size does not divide its input "
                hint += "needs a larger input_shape)"
            raise ValueError(
                f"torch's ONNX exporter cannot export {type(model).__name__} for inputs "
                f"{shapes}: {_first_line(err)}; nothing was written{hint}"
            ) from err
    data = buffer.getvalue()
    if metadata:
        proto = onnx.load_from_string(data)
        for key, value in metadata.items():
            proto.metadata_props.add(key=str(key), value=str(value))
        data = proto.SerializeToString()
    return atomic_write_bytes(path, data)


def _output_tensor(out: Any) -> Tensor:
    """The one tensor an exported graph returns: the logits of a dict output, else the
    first tensor (a moment layer's mean)."""
    out = model_output(out)
    if isinstance(out, Mapping):
        out = next(v for v in out.values() if isinstance(v, Tensor))
    return first_tensor(out)


def onnx_difference(path: str | Path, model: nn.Module, inputs: Example) -> float:
    """Largest |onnxruntime − torch| of the file at `path` on `inputs` (one batch, a
    tuple with one per input of the forward, or a mapping by name as exported), over
    the first output (the logits of a dict output).

    torch's side is `model` itself in eval mode with posterior means (its mode is put
    back afterwards), so the check covers `to_deterministic` as well as the exporter.
    Needs onnxruntime (`pip install 'bayesprune[export]'`).
    """
    ort = require("onnxruntime", "export", "checking an ONNX file")
    call = example_call(inputs)
    args = call.inputs
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    specs = session.get_inputs()
    if len(specs) != len(args):
        raise ValueError(f"{path} takes {len(specs)} input(s) but {len(args)} were given")
    feed = {
        spec.name: x.detach().cpu().to(_ONNX_DTYPES.get(spec.type, torch.float32)).numpy()
        for spec, x in zip(specs, args, strict=True)
    }
    got = torch.from_numpy(session.run(None, feed)[0])
    with evaluation_pass(model):
        want = _output_tensor(model(*call.args, **call.keywords, **call.constants))
    return float((got.to(want) - want).abs().max())


_ONNX_DTYPES = {
    "tensor(float)": torch.float32,
    "tensor(double)": torch.float64,
    "tensor(int64)": torch.int64,
    "tensor(int32)": torch.int32,
    "tensor(bool)": torch.bool,
}


def csr_bytes(weight: Tensor, value_bytes: int = 4, index_bytes: int = 4) -> int:
    """Bytes of `weight` as CSR: rows = output units, columns = everything else flattened."""
    rows = weight.shape[0]
    nnz = int(torch.count_nonzero(weight))
    return nnz * (value_bytes + index_bytes) + (rows + 1) * index_bytes


def sparse_storage(
    model: nn.Module, value_bytes: int = 4, index_bytes: int = 4
) -> list[dict[str, Any]]:
    """Per prunable layer: weights, non-zeros, dense and CSR bytes of the deployed weights
    (biases are stored dense in both and counted in both)."""
    rows = []
    for name, layer in prunable_layers(model):
        plain = as_prunable(layer).to_deterministic()
        w = plain.weight.detach()  # type: ignore[union-attr]
        bias = 0 if plain.bias is None else plain.bias.numel() * value_bytes  # type: ignore[union-attr]
        rows.append(
            {
                "name": name,
                "units": w.shape[0],
                "inputs": w.shape[1],
                "weights": w.numel(),
                "nonzero": int(torch.count_nonzero(w)),
                "dense_bytes": w.numel() * value_bytes + bias,
                "csr_bytes": csr_bytes(w, value_bytes, index_bytes) + bias,
            }
        )
    return rows


def spec_json(model: nn.Module) -> str:
    """The architecture spec as indented JSON (for reading, diffs and docs)."""
    return json.dumps(architecture(_without_prune_hooks(model)), indent=2)
