"""Step `export`: the deterministic network (posterior means), ready to deploy.

- `export/model.onnx`: raw rows in the original column order in, probabilities
  (classification) or values in the original units (regression) out; the tabular
  standardisation, the feature selection of a shrunk model and the softmax /
  target scaling are inside the graph (`bayesprune.deploy.Deployable`). Its
  `metadata_props` carry the task, class and feature names, the library version,
  the SHA-256 of the training data and the scaling.
- `export/model.safetensors`: the plain network as trained (standardised inputs,
  logits / standardised values), reloadable with `bayesprune.compress.load_model`;
  its header holds the same scaling.
- `export/export.json`: all of the above, and the largest |ONNX − torch| on raw rows.

The export/ folder is one artefact set: an export without ONNX removes the old
model.onnx, so no file of another model stays next to the new ones. Without the
`onnx` package the step stops before writing anything, naming the extra.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ... import __version__
from ...compress import export_onnx, onnx_difference, save_model, save_shrunk
from ...compress.chain import SelectInputs
from ...compress.persist import FORMAT as SHRUNK_FORMAT
from ...deploy import Deployable
from ...extras import MissingExtraError, require
from ...io import tensors_digest
from ...likelihoods import Likelihood
from ...nn import to_deterministic
from ..data import RunData
from ..folder import Run


def _check_onnx(path: Path, model: nn.Module, x: Tensor) -> float | None:
    """Largest |ONNX − torch| on `x`, or None when onnxruntime is not installed."""
    try:
        return onnx_difference(path, model, x)
    except MissingExtraError:
        return None


def export_run(
    run: Run, *, onnx: bool = True, plain: bool = True, which: str = "auto"
) -> dict[str, Any]:
    """The deterministic network (posterior means) as ONNX and/or plain safetensors."""
    if onnx:
        try:
            require("onnx", "export", "ONNX export")
        except MissingExtraError as err:
            hint = "or export model.safetensors alone (--no-onnx)"
            raise MissingExtraError(f"{err}, {hint}") from err
    with run.locked():
        return _export(run, onnx, plain, which)


def deployable(net: nn.Module, data: RunData, likelihood: Likelihood) -> Deployable:
    """`net` (standardised inputs) wrapped to take raw rows and answer in original units."""
    return Deployable(
        net,
        likelihood,
        x_mean=data.x_mean,
        x_scale=data.x_scale,
        y_mean=data.y_mean,
        y_std=data.y_std,
    )


def raw_inputs(x: Tensor, data: RunData) -> Tensor:
    """Standardised rows of the run back in the original units (identity for images)."""
    if data.x_mean is None or data.x_scale is None:
        return x
    mean, scale = (torch.tensor(v, dtype=x.dtype) for v in (data.x_mean, data.x_scale))
    return x * scale + mean


def describe(net: nn.Module, data: RunData, which: str) -> dict[str, Any]:
    """What a deployer must know: inputs, outputs, scaling, provenance."""
    used = next((m.index.tolist() for m in net.modules() if isinstance(m, SelectInputs)), None)
    tabular = data.image_shape is None
    return {
        "model": which,
        "task": data.task,
        "bayesprune_version": __version__,
        "train_data_sha256": tensors_digest({"X": data.train[0], "y": data.train[1]}),
        "input_shape": list(data.input_shape),
        "inputs": "raw rows, columns in feature_names order" if tabular else "as the model takes",
        "feature_names": list(data.feature_names) if tabular else [],
        "features_used": used if used is not None else list(range(data.n_features)),
        "output": "probabilities" if data.task == "classification" else "values, original units",
        "class_names": list(data.class_names),
        "scaling": {
            "x_mean": data.x_mean,
            "x_scale": data.x_scale,
            "y_mean": data.y_mean,
            "y_std": data.y_std,
        },
    }


def _onnx_metadata(info: dict[str, Any]) -> dict[str, str]:
    """`info` as string pairs for ONNX `metadata_props` (lists and records as JSON)."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in info.items()}


def _export(run: Run, onnx: bool, plain: bool, which: str) -> dict[str, Any]:
    if which == "auto":
        which = "compressed" if run.has_model("compressed") else "trained"
    model = run.load_model(which)
    # an eVI net exports its mean network, moment ops swapped for their torch twins
    net = to_deterministic(model).eval()
    data = run.data()
    info = describe(net, data, which)  # no paths: the files are the same in any folder
    out = dict(info)
    with run.publish("export") as tx:
        if plain:
            staged = tx.stage("export/model.safetensors")
            meta = {"input_shape": list(data.input_shape), "source": which, "deploy": info}
            try:
                save_model(net, staged, meta)
                out["safetensors_format"] = "spec"  # compress.load_model(path)
            except TypeError:  # a graph (residual additions…): its class's pruned shapes
                save_shrunk(net, staged, meta)
                out["safetensors_format"] = SHRUNK_FORMAT  # compress.load_shrunk(path, net)
            out["safetensors"] = "export/model.safetensors"
        if onnx:
            deployed = deployable(net, data, run.likelihood()).eval()
            staged = tx.stage("export/model.onnx")
            export_onnx(deployed, staged, data.input_shape, metadata=_onnx_metadata(info))
            out["onnx"] = "export/model.onnx"
            x = raw_inputs(data.test[0][:64], data).to(next(net.parameters()).dtype)
            out["onnx_max_abs_difference"] = _check_onnx(staged, deployed, x)
        tx.write_json("export/export.json", out)  # paths relative to the run: it may move
    run.log(f"export: {which} → {', '.join(k for k in ('onnx', 'safetensors') if k in out)}")
    files = {k: str(run.path(*out[k].split("/"))) for k in ("onnx", "safetensors") if k in out}
    return {**out, **files}
