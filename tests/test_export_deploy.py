"""The exported ONNX is deployable: raw rows in, the Python prediction out, metadata on board.

A tiny classification run (spike-and-slab with input gates, compressed, so a shrunk
model with its input selection) and a tiny regression run are exported; onnxruntime
on RAW rows (the data loaded again without standardisation) must equal the Python
posterior-mean prediction on the run's standardised rows: probabilities for
classification, values in the original units for regression.
"""

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import bayesprune
from bayesprune.app import Run, parse_config
from bayesprune.app.steps import compress_run, export_run, train_run
from bayesprune.data import load_tabular
from bayesprune.data.simulate import friedman1
from bayesprune.extras import MissingExtraError

CLASSIFY = {
    "data": {"name": "breast_cancer", "limit": 150, "test_limit": 60, "noise_columns": 4},
    "model": {"kwargs": {"hidden": [8]}, "family": "spike_slab", "input_gates": True},
    "train": {"epochs": 4, "batch_size": 32, "lr": 0.02},
    "compress": {"rule": "median"},
    "evaluate": {"samples": 2},
}  # fmt: skip
REGRESS = {
    "data": {"name": "friedman1", "n": 200, "p": 8, "test_limit": 40},
    "model": {"kwargs": {"hidden": [8]}, "family": "gaussian"},
    "train": {"epochs": 4, "batch_size": 32, "lr": 0.01},
    "evaluate": {"samples": 2},
}  # fmt: skip


def _run(tmp_path, raw: dict, *, compress: bool) -> Run:
    torch.manual_seed(0)
    train_run(parse_config(raw), tmp_path / "run")
    run = Run.open(tmp_path / "run")
    if compress:
        compress_run(run)
        run = Run.open(tmp_path / "run")
    export_run(run)
    return run


def _onnx(run: Run, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(
        str(run.path("export", "model.onnx")), providers=["CPUExecutionProvider"]
    )
    return session.run(None, {"input": x.astype(np.float32)})[0]


def _python(run: Run, which: str):
    data = run.data()
    model = run.load_model(which)
    return bayesprune.predict(model, data.test[0], mode="mean", likelihood=run.likelihood())


def _metadata(run: Run) -> dict[str, str]:
    proto = onnx.load(str(run.path("export", "model.onnx")))
    return {p.key: p.value for p in proto.metadata_props}


def test_classification_onnx_on_raw_rows_equals_predict(tmp_path):
    run = _run(tmp_path, CLASSIFY, compress=True)
    raw = load_tabular("breast_cancer", 4, seed=0, standardize=False).X_test[:60].numpy()
    got = _onnx(run, raw)
    want = _python(run, "compressed").probs.numpy()
    assert got.shape == (60, 2)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)  # probabilities, not logits
    np.testing.assert_allclose(got, want, atol=1e-5)

    meta, info = _metadata(run), run.read_json("export/export.json")
    assert json.loads(meta["class_names"]) == ["malignant", "benign"]
    names = json.loads(meta["feature_names"])
    assert names[0] == "mean radius" and names[-1] == "noise3" and len(names) == 34
    assert meta["bayesprune_version"] == bayesprune.__version__
    assert len(meta["train_data_sha256"]) == 64 and meta["task"] == "classification"
    assert info["train_data_sha256"] == meta["train_data_sha256"]
    assert len(info["scaling"]["x_mean"]) == 34 and info["model"] == "compressed"
    assert info["onnx_max_abs_difference"] < 1e-5


def test_regression_onnx_answers_in_original_units(tmp_path):
    run = _run(tmp_path, REGRESS, compress=False)
    tab = friedman1(n=200, p=8, seed=0, standardize=False)
    got = _onnx(run, tab.X_test[:40].numpy())
    scaled = friedman1(n=200, p=8, seed=0)
    want = _python(run, "trained").mean.numpy() * scaled.y_std + scaled.y_mean
    assert got.shape == (40,)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert abs(float(np.mean(got)) - scaled.y_mean) < 3 * scaled.y_std  # original units

    meta = _metadata(run)
    assert meta["task"] == "regression" and meta["output"] == "values, original units"
    scaling = json.loads(meta["scaling"])
    assert scaling["y_mean"] == pytest.approx(scaled.y_mean)
    assert scaling["y_std"] == pytest.approx(scaled.y_std)


def test_export_without_onnx_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    run = _run(tmp_path, REGRESS, compress=False)
    monkeypatch.setitem(__import__("sys").modules, "onnx", None)  # as if not installed
    with pytest.raises(MissingExtraError, match=r"pip install 'bayesprune\[export\]'"):
        export_run(run)
    assert export_run(run, onnx=False)["safetensors"].endswith("model.safetensors")


def test_feature_selection_and_scaling_are_folded_into_the_graph(tmp_path):
    """A shrunk net that reads columns 1 and 3 of 4: raw rows in, the same probabilities."""
    from bayesprune.compress import export_onnx
    from bayesprune.compress.chain import SelectInputs
    from bayesprune.deploy import Deployable
    from bayesprune.likelihoods import Categorical

    torch.manual_seed(0)
    net = torch.nn.Sequential(SelectInputs([1, 3]), torch.nn.Linear(2, 3)).eval()
    mean, scale = [10.0, -5.0, 100.0, 0.5], [2.0, 4.0, 50.0, 0.1]
    deployed = Deployable(net, Categorical(), x_mean=mean, x_scale=scale)
    path = export_onnx(deployed, tmp_path / "m.onnx", (4,), metadata={"k": "v"})
    raw = torch.randn(16, 4) * torch.tensor(scale) + torch.tensor(mean)
    raw[:, 0] = float("nan")  # a column the model does not read cannot matter
    got = ort.InferenceSession(str(path)).run(None, {"input": raw.numpy()})[0]
    with torch.no_grad():
        want = net((raw - torch.tensor(mean)) / torch.tensor(scale)).softmax(-1).numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert {p.key: p.value for p in onnx.load(str(path)).metadata_props} == {"k": "v"}


def test_exported_files_name_no_folder(tmp_path):
    """The same run exported in two folders gives byte-identical model files."""
    import shutil

    run = _run(tmp_path, REGRESS, compress=False)
    other = tmp_path / "elsewhere" / "run"
    shutil.copytree(run.folder, other)
    export_run(Run.open(other))
    for name in ("model.onnx", "model.safetensors"):
        assert (other / "export" / name).read_bytes() == run.path("export", name).read_bytes()


def test_export_json_names_files_relative_to_the_run(tmp_path):
    """A run folder that is moved or archived keeps a valid export.json."""
    run = _run(tmp_path, REGRESS, compress=False)
    out = export_run(run, onnx=False)
    recorded = run.read_json("export/export.json")
    assert recorded["safetensors"] == "export/model.safetensors"
    assert Path(out["safetensors"]).is_absolute() and Path(out["safetensors"]).exists()
