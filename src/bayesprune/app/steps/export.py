"""Step `export`: the deterministic network (posterior means) as ONNX and plain safetensors.

The export/ folder is one artefact set: an export without ONNX removes the old
model.onnx, so no file of another model stays next to the new ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ...compress import export_onnx, save_model
from ...nn import to_deterministic
from ..folder import Run


def _check_onnx(path: Path, model: nn.Module, x: Tensor) -> float | None:
    """Largest |ONNX − torch| on `x`, or None when onnxruntime is not installed."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    return float(abs(got - want).max())


def export_run(
    run: Run, *, onnx: bool = True, plain: bool = True, which: str = "auto"
) -> dict[str, Any]:
    """The deterministic network (posterior means) as ONNX and/or plain safetensors."""
    with run.locked():
        return _export(run, onnx, plain, which)


def _export(run: Run, onnx: bool, plain: bool, which: str) -> dict[str, Any]:
    if which == "auto":
        which = "compressed" if run.has_model("compressed") else "trained"
    model = run.load_model(which)
    # an eVI net exports its mean network, moment ops swapped for their torch twins
    deployed = to_deterministic(model).eval()
    data = run.data()
    out: dict[str, Any] = {"model": which}
    with run.publish("export") as tx:
        if plain:
            staged = tx.stage("export/model.safetensors")
            save_model(deployed, staged, {"input_shape": list(data.input_shape), "source": which})
            out["safetensors"] = str(run.path("export", "model.safetensors"))
        if onnx:
            staged = tx.stage("export/model.onnx")
            export_onnx(deployed, staged, data.input_shape)
            out["onnx"] = str(run.path("export", "model.onnx"))
            x = data.test[0][:64].to(next(deployed.parameters()).dtype)
            out["onnx_max_abs_difference"] = _check_onnx(staged, deployed, x)
        tx.write_json("export/export.json", out)
    run.log(f"export: {out}")
    return out
