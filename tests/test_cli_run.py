"""The run commands end to end on tiny data through click's CliRunner.

train → compress → evaluate → select-features → report → export, the ONNX file
checked with onnxruntime; resuming an interrupted run; clear errors.
"""

import json

import matplotlib.image
import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml
from click.testing import CliRunner

from bayesprune.cli import main
from bayesprune.compress import load_model, unit_scores
from bayesprune.io import load_tensors
from bayesprune.plots import PNG_MAGIC

SPIKE = {
    "data": {"name": "breast_cancer", "limit": 120, "test_limit": 60, "noise_columns": 4,
             "val_fraction": 0.25},
    "model": {"kwargs": {"hidden": [8]}, "family": "spike_slab", "input_gates": True},
    "train": {"epochs": 3, "batch_size": 32, "lr": 0.01},
    "evaluate": {"samples": 4},
}  # fmt: skip


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(main, [*args, "--threads", "1"])
    assert result.exit_code == 0, result.output
    return result.output


def _write(tmp_path, raw: dict, name: str = "config.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def spike_run(tmp_path_factory):
    """One spike-and-slab run taken through every command (shared by the tests below)."""
    tmp = tmp_path_factory.mktemp("spike")
    torch.manual_seed(0)
    run = tmp / "run"
    outputs = {"train": _invoke("train", str(_write(tmp, SPIKE)), "--out", str(run), "--quiet")}
    outputs["compress"] = _invoke("compress", str(run), "--quiet")
    outputs["evaluate"] = _invoke("evaluate", str(run))
    outputs["features"] = _invoke("select-features", str(run))
    outputs["report"] = _invoke("report", str(run))
    outputs["export"] = _invoke("export", str(run))
    return run, outputs


def test_every_command_writes_its_files(spike_run):
    run, out = spike_run
    for name in (
        "config.yaml",
        "log.txt",
        "model.safetensors",
        "metrics.json",
        "evaluation.json",
        "features.json",
        "features.png",
        "compressed/model.safetensors",
        "compressed/compression.json",
        "compressed/compression.md",
        "export/model.onnx",
        "export/model.safetensors",
    ):
        assert (run / name).is_file(), name
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert kept == ["epoch-0002.safetensors", "epoch-0003.safetensors"]  # keep_checkpoints: 2
    metrics = json.loads((run / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["history"]] == [1, 2, 3]
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0 and "val_accuracy" in metrics["history"][0]
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert set(evaluation) == {"trained", "compressed"}
    modes = evaluation["trained"]["modes"]
    assert set(modes) == {"mc", "mean"}
    assert set(modes["mc"]) >= {"accuracy", "nll", "ece", "brier"}
    # the test ECE beside what a perfectly calibrated model measures on as many rows,
    # for the same predictions (labels drawn from them): shown by evaluate and the report
    reliability = evaluation["trained"]["reliability"]
    floor = reliability["ece_floor"]
    assert 0 < floor["mean"] < floor["upper_95"] < 1
    assert reliability["ece"] == pytest.approx(modes[reliability["mode"]]["ece"])
    assert f"95 % below {floor['upper_95']:.4g}" in out["evaluate"]
    caption = "within" if reliability["ece"] <= floor["upper_95"] else "above"
    report = (run / "report" / "report.md").read_text()
    assert f"so this ECE is {caption} the sampling noise" in report
    features = json.loads((run / "features.json").read_text())
    assert features["score"] == "pip" and features["n_features"] == 34
    assert features["selected"] == [i for i, p in enumerate(features["scores"]) if p > 0.5]
    assert "selection" in features  # noise columns give a known truth
    log = (run / "log.txt").read_text()
    for step in ("train: done", "compress:", "evaluate:", "select-features:", "report:", "export:"):
        assert step in log
    assert "written to" in out["compress"] and "features selected" in out["features"]


def test_compressed_model_reloads_with_its_shrunk_widths(spike_run):
    run, _ = spike_run
    report = json.loads((run / "compressed" / "compression.json").read_text())
    model = load_model(run / "compressed" / "model.safetensors")
    arch = report["totals"]["architecture_after"]
    assert arch[1:] == [m.weight_mu.shape[0] for m in model if hasattr(m, "weight_mu")]
    assert report["extra"]["score"] == "pip" and report["extra"]["rule"] == "median"


def test_onnx_export_matches_torch(spike_run):
    """The ONNX takes raw rows: the plain network after the recorded scaling, softmaxed."""
    run, out = spike_run
    plain = load_model(run / "export" / "model.safetensors")
    scaling = json.loads((run / "export" / "export.json").read_text())["scaling"]
    mean, scale = torch.tensor(scaling["x_mean"]), torch.tensor(scaling["x_scale"])
    raw = torch.randn(7, 34) * scale + mean
    session = ort.InferenceSession(str(run / "export" / "model.onnx"))
    got = session.run(None, {"input": raw.numpy()})[0]
    with torch.no_grad():
        want = plain((raw - mean) / scale).softmax(-1).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert "onnxruntime vs torch" in out["export"]


def test_report_images_are_valid_pngs_referenced_by_the_page(spike_run):
    run, _ = spike_run
    folder = run / "report"
    page = (folder / "report.html").read_text()
    markdown = (folder / "report.md").read_text()
    pngs = sorted(folder.glob("*.png"))
    names = {p.name for p in pngs}
    assert {"training_curves.png", "snr_histogram.png", "unit_norm_histogram.png",
            "unit_pip_histogram.png", "input_pip_histogram.png", "error_vs_pruned.png",
            "surviving_units.png", "reliability.png", "features.png"} <= names  # fmt: skip
    for png in pngs:
        raw = png.read_bytes()
        assert raw.startswith(PNG_MAGIC), png.name
        image = matplotlib.image.imread(png)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
        assert f'href="{png.name}"' in page and f"]({png.name})" in markdown
    assert page.count("data:image/png;base64,") == len(pngs)  # self-contained too


def test_interrupted_training_resumes_to_the_same_parameters(spike_run, tmp_path):
    run, _ = spike_run
    config = run / "config.yaml"
    fresh = tmp_path / "fresh"
    _invoke("train", str(config), "--out", str(fresh), "--quiet")
    final, _ = load_tensors(fresh / "model.safetensors")
    # an interruption after epoch 2: the last checkpoint and the outputs never got written
    for name in ("checkpoints/epoch-0003.safetensors", "model.safetensors", "metrics.json"):
        (fresh / name).unlink()
    _invoke("train", str(config), "--out", str(fresh), "--quiet")
    resumed, _ = load_tensors(fresh / "model.safetensors")
    assert resumed.keys() == final.keys()
    for key in final:
        torch.testing.assert_close(resumed[key], final[key], rtol=0, atol=0)
    history = json.loads((fresh / "metrics.json").read_text())["history"]
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert (fresh / "log.txt").read_text().count("epoch 3/3") == 2  # epoch 3 ran twice only


def test_a_changed_training_config_is_refused_but_compress_options_may_change(spike_run, tmp_path):
    run, _ = spike_run
    changed = {**SPIKE, "train": {**SPIKE["train"], "epochs": 4}}
    result = CliRunner().invoke(main, ["train", str(_write(tmp_path, changed)), "--out", str(run)])
    assert result.exit_code == 1
    assert "different config (train.epochs: 3 → 4)" in result.output
    assert "Traceback" not in result.output
    out = _invoke("compress", str(run), "--rule", "target_size", "--k", "2", "--quiet")
    assert "pip + target_size" in out
    # the override is recorded with the compression, config.yaml is left as trained
    assert yaml.safe_load((run / "config.yaml").read_text())["compress"]["k"] is None
    used = json.loads((run / "compressed" / "compression.json").read_text())["extra"]["options"]
    assert used["rule"] == "target_size" and used["k"] == 2
    out = _invoke("compress", str(run), "--rule", "expected_size", "--quiet")
    assert "pip + expected_size" in out
    # expected_size keeps the round(Σ PIP) most probable units of every hidden layer
    pips = unit_scores(load_model(run / "model.safetensors"), "pip")
    report = json.loads((run / "compressed" / "compression.json").read_text())
    kept = report["extra"]["shrink"]["architecture"][1:-1]
    assert kept and kept == [int(torch.floor(p.double().sum() + 0.5)) for p in pips.values()]


def test_gaussian_search_and_regression_runs(tmp_path):
    gauss = {
        "data": {"name": "wine", "val_fraction": 0.3},
        "model": {"kwargs": {"hidden": [6]}},
        "train": {"epochs": 2, "batch_size": 32, "lr": 0.01, "lr_schedule": "constant"},
        "compress": {"delta": 0.05},
        "evaluate": {"samples": 3},
    }
    run = tmp_path / "gauss"
    _invoke("train", str(_write(tmp_path, gauss, "g.yaml")), "--out", str(run), "--quiet")
    assert "snr + search" in _invoke("compress", str(run), "--quiet")
    search = json.loads((run / "compressed" / "compression.json").read_text())["extra"]["search"]
    assert search["curve"] and search["accuracy"] >= search["baseline"] - 0.05
    regression = {
        "data": {"name": "friedman1", "n": 80, "p": 7},
        "model": {"kwargs": {"hidden": [4]}, "family": "deterministic"},
        "train": {"epochs": 2},
        "compress": {"sparsity": 0.5},
    }
    reg = tmp_path / "reg"
    _invoke("train", str(_write(tmp_path, regression, "r.yaml")), "--out", str(reg), "--quiet")
    assert "magnitude + global" in _invoke("compress", str(reg), "--quiet")
    assert "rmse=" in _invoke("evaluate", str(reg))
    _invoke("select-features", str(reg))
    features = json.loads((reg / "features.json").read_text())
    assert features["score"] == "norm" and features["true_features"] == [0, 1, 2, 3, 4]
    _invoke("report", str(reg))
    assert not (reg / "report" / "reliability.png").exists()  # regression: no calibration plot


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["evaluate", "nowhere"], "not a run folder"),
        (["train", "missing.yaml"], "no config file"),
        (["compress", "nowhere", "--rule", "bogus"], "Invalid value for '--rule'"),
    ],
)
def test_user_errors_are_one_line_without_traceback(args, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0 and expected in result.output
    assert "Traceback" not in result.output


def test_select_features_with_the_evidence_screen(tmp_path):
    """features.screen adds, to the rule's selection, the features whose evidence gain
    is an outlier; on an image model it is refused with the fix."""
    raw = {
        "data": {"name": "bai2020", "n": 300, "p": 10},
        "model": {"kwargs": {"hidden": [6]}, "family": "spike_slab", "input_gates": True},
        "train": {"epochs": 3, "batch_size": 64, "lr": 0.01},
        "features": {"rule": "target_size", "k": 3, "screen": True, "screen_epochs": 5},
    }
    run = tmp_path / "screen"
    _invoke("train", str(_write(tmp_path, raw)), "--out", str(run), "--quiet")
    _invoke("select-features", str(run))
    features = json.loads((run / "features.json").read_text())
    screen = features["screen"]
    assert features["selected"] == sorted(screen["selected"] + screen["added"])
    top3 = sorted(np.argsort(features["scores"])[-3:].tolist())
    assert screen["selected"] == top3  # the rule's choice is where the screen starts
    assert len(screen["top"]) == 7  # every other feature was screened
    assert all(t["feature"] not in top3 for t in screen["top"])


def test_report_names_layers_and_says_how_the_run_was_made(spike_run):
    run, _ = spike_run
    markdown = (run / "report" / "report.md").read_text()
    for row in ("| seed |", "| training time |", "| trained (UTC) |", "| report (UTC) |"):
        assert row in markdown
    assert "mode mc: the Monte-Carlo predictive" in markdown


def test_layer_labels_name_chain_layers_by_kind_and_keep_attribute_paths():
    from bayesprune.app.report import layer_labels

    kinds = {"0": "GaussianConv2d", "3": "GaussianConv2d", "7": "GaussianLinear", "9": "X"}
    chain = [{"name": n, "kind": k} for n, k in kinds.items()]
    assert layer_labels(chain) == ["conv 1", "conv 2", "dense 1", "output"]
    graph = [{"name": "stem.conv", "kind": "GaussianConv2d"}, {"name": "head", "kind": "X"}]
    assert layer_labels(graph) == ["stem.conv", "head"]


def test_the_pruning_curve_reads_evenly_spaced_test_rows(spike_run, monkeypatch):
    """The curve's 16 passes read about CURVE_ROWS test rows, every k-th, and its
    unpruned point is the posterior-mean accuracy on exactly those rows."""
    from bayesprune.app.folder import Run
    from bayesprune.app.steps import evaluate as step
    from bayesprune.evaluation import scorer

    run = Run.open(spike_run[0])
    monkeypatch.setattr(step, "CURVE_ROWS", 20)
    model = run.load_model("trained")
    curve = step.pruning_curve(model, run)
    x, y = run.data().test
    assert (curve["rows"], curve["of_rows"]) == (20, len(x)) == (20, 60)
    unpruned = dict(curve["curves"]["snr"])[0.0]
    on_rows = scorer((x[::3], y[::3]), run.likelihood(), metrics=("accuracy",))(model)
    assert unpruned == pytest.approx(1 - on_rows["accuracy"])
    evaluation = json.loads((spike_run[0] / "evaluation.json").read_text())
    assert evaluation["trained"]["pruning_curve"]["rows"] == 60  # under CURVE_ROWS: all rows


def test_compress_a_chain_to_a_flops_budget(spike_run, tmp_path):
    """`--flops` on an nn.Sequential (hidden units by activation score; the input gates'
    features are untouched): the written network costs at most the budget."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(spike_run[0], run)
    output = _invoke("compress", str(run), "--flops", "0.6", "--finetune-epochs", "1", "--quiet")
    assert "budget 0.6" in output
    report = json.loads((run / "compressed" / "compression.json").read_text())
    assert report["extra"]["rule"] == "flops" and report["extra"]["flops"]["ratio"] <= 0.6
    assert report["totals"]["flops_ratio"] >= 1 / 0.6 - 1e-9  # before / after, as shrunk
    model = load_model(run / "compressed" / "model.safetensors")
    assert model[0].out_features < 8  # hidden units went
