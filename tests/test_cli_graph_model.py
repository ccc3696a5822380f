"""A residual network (the `resnet` builder: BatchNorm, residual additions) through
every CLI step: compress removes channels with `shrink_graph`, the shrunk model is
saved with its class's pruned shapes and reloads equal to what compress evaluated,
and the exported ONNX file matches torch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from click.testing import CliRunner
from test_readme_sequence import _fake_mnist

from bayesprune.app import Run
from bayesprune.app.config import SEARCH_ROWS
from bayesprune.cli import main
from bayesprune.compress import load_shrunk
from bayesprune.nn import use_posterior_mean, variational_layers
from bayesprune.resnet import ResNet, resnet

WIDTHS = [6, 12]
CONFIG = {
    "data": {"name": "mnist", "limit": 400, "test_limit": 120, "val_fraction": 0.2},
    "model": {"builder": "resnet", "kwargs": {"widths": WIDTHS, "blocks": 1}},
    "train": {"epochs": 3, "batch_size": 50, "lr": 0.01},
    "compress": {"score": "norm", "rule": "global", "sparsity": 0.4, "finetune_epochs": 0},
    "evaluate": {"samples": 3},
}


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(main, [*args, "--threads", "1"])
    assert result.exit_code == 0, result.output
    return result.output


def _trained(tmp: Path, **train: Any) -> Path:
    """A ResNet run trained on fake MNIST under `tmp` (CONFIG, `train` keys replaced)."""
    _fake_mnist(tmp / "cache", n_train=400, n_test=120)
    raw = {
        **CONFIG,
        "data": {**CONFIG["data"], "root": str(tmp / "cache")},
        "train": {**CONFIG["train"], **train},
    }
    (tmp / "resnet.yaml").write_text(yaml.safe_dump(raw))
    run = tmp / "run"
    torch.manual_seed(0)
    _invoke("train", str(tmp / "resnet.yaml"), "--out", str(run), "--quiet")
    return run


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = _trained(tmp_path_factory.mktemp("graph"))
    for step in ("compress", "evaluate", "report", "export"):
        _invoke(step, str(run), *(["--quiet"] if step == "compress" else []))
    return run


def test_compress_shrinks_the_residual_graph_and_it_reloads(resnet_run: Path) -> None:
    report = json.loads((resnet_run / "compressed" / "compression.json").read_text())
    shrink = report["extra"]["shrink"]
    assert shrink.get("graph") is True, shrink
    run = Run.open(resnet_run)
    model = run.load_model("compressed")
    assert isinstance(model, ResNet)
    kept = sum(layer["units_after"] for layer in shrink["layers"])
    before = sum(layer["units_before"] for layer in shrink["layers"])
    assert kept < before  # channels really went, not only masks
    # a unit rule deletes channels with their BatchNorm: none stays behind as a constant
    assert all(layer["kept_dead_units"] == 0 for layer in shrink["layers"])
    assert report["totals"]["flops_ratio"] > 1.2
    assert any(True for _ in variational_layers(model))  # still Bayesian
    # the reloaded model is the one compress evaluated: same posterior-mean metrics
    evaluation = json.loads((resnet_run / "evaluation.json").read_text())
    recorded = evaluation["compressed"]["modes"]["mean"]["accuracy"]
    x, y = run.data().test
    with torch.no_grad(), use_posterior_mean(model):
        accuracy = (model(x).argmax(1) == y).double().mean().item()
    assert accuracy == pytest.approx(recorded)


def test_the_exported_graph_reloads_into_the_plain_class_and_matches_onnx(
    resnet_run: Path,
) -> None:
    out = json.loads((resnet_run / "export" / "export.json").read_text())
    assert out["safetensors_format"] == "bayesprune-shrunk"
    assert out["onnx_max_abs_difference"] < 1e-4
    plain = load_shrunk(
        resnet_run / "export" / "model.safetensors",
        lambda: resnet(1, 10, widths=WIDTHS, blocks=1, family="deterministic"),
    )
    assert not any(True for _ in variational_layers(plain))
    compressed = Run.open(resnet_run).load_model("compressed")
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad(), use_posterior_mean(compressed):
        assert torch.allclose(plain(x), compressed(x), atol=1e-5)


def test_compress_rounds_cut_the_residual_graph_further_and_it_reloads(
    resnet_run: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(resnet_run, run_dir)
    _invoke("compress", str(run_dir), "--rounds", "2", "--round-fraction", "0.25",
            "--round-tolerance", "1.0", "--quiet")  # fmt: skip
    report = json.loads((run_dir / "compressed" / "compression.json").read_text())
    rounds = report["extra"]["rounds"]
    assert rounds["score"] == "activation" and rounds["stopped"] == "max_rounds"
    widths = [sum(h["units"].values()) for h in rounds["history"]]
    assert widths[0] > widths[1] > widths[2]  # each round removed channels for real
    run = Run.open(run_dir)
    model = run.load_model("compressed")
    assert isinstance(model, ResNet)
    recorded = json.loads((run_dir / "evaluation.json").read_text())["compressed"]
    x, y = run.data().test
    with torch.no_grad(), use_posterior_mean(model):
        accuracy = (model(x).argmax(1) == y).double().mean().item()
    assert accuracy == pytest.approx(recorded["modes"]["mean"]["accuracy"])


def _val_accuracy(run: Run, model: torch.nn.Module) -> float:
    x, y = run.data().val
    x, y = x[:SEARCH_ROWS], y[:SEARCH_ROWS]
    with torch.no_grad(), use_posterior_mean(model):
        return (model(x).argmax(1) == y).double().mean().item()


def test_a_unit_search_holds_the_network_compress_ships(tmp_path: Path) -> None:
    """A unit score deletes channels with their BatchNorm, so the masked network (whose
    BatchNorm still emits β − γμ/σ there) is not the one written: the search scores the
    deleted one, and the fine-tune trains it."""
    run_dir = _trained(tmp_path, epochs=12, batch_size=32)  # learns (validation ~0.65)
    _invoke("compress", str(run_dir), "--rule", "search", "--delta", "0.1", "--quiet")
    report = json.loads((run_dir / "compressed" / "compression.json").read_text())
    found = report["extra"]["search"]
    assert 0 < found["sparsity"] < 1
    run = Run.open(run_dir)
    model = run.load_model("compressed")
    assert _val_accuracy(run, model) == pytest.approx(found["accuracy"])
    assert report["extra"]["shrink"]["graph"] is True

    _invoke("compress", str(run_dir), "--rule", "global", "--finetune-epochs", "1", "--quiet")
    report = json.loads((run_dir / "compressed" / "compression.json").read_text())
    assert report["extra"]["shrink"]["finetuned"] == "after shrinking"
    model = Run.open(run_dir).load_model("compressed")
    recorded = json.loads((run_dir / "evaluation.json").read_text())["compressed"]
    x, y = run.data().test
    with torch.no_grad(), use_posterior_mean(model):
        accuracy = (model(x).argmax(1) == y).double().mean().item()
    assert accuracy == pytest.approx(recorded["modes"]["mean"]["accuracy"])


def test_compress_to_a_flops_budget(resnet_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(resnet_run, run_dir)
    output = _invoke("compress", str(run_dir), "--flops", "0.5", "--finetune-epochs", "1")
    assert "FLOPs: " in output and "budget 0.5" in output
    report = json.loads((run_dir / "compressed" / "compression.json").read_text())
    budget = report["extra"]["flops"]
    assert report["extra"]["rule"] == "flops" and report["extra"]["level"] == "unit"
    assert 0.3 < budget["ratio"] <= 0.5
    assert report["totals"]["flops_ratio"] == pytest.approx(1 / budget["ratio"], rel=1e-6)
    assert report["extra"]["shrink"]["finetuned"] == "after shrinking"
    model = Run.open(run_dir).load_model("compressed")
    assert isinstance(model, ResNet)
    assert any(True for _ in variational_layers(model))  # still Bayesian


def test_a_flops_budget_below_one_unit_per_layer_is_refused(resnet_run: Path, tmp_path: Path):
    run_dir = tmp_path / "run"
    shutil.copytree(resnet_run, run_dir)
    before = (run_dir / "compressed" / "compression.json").read_bytes()
    result = CliRunner().invoke(main, ["compress", str(run_dir), "--flops", "0.001", "--quiet"])
    assert result.exit_code != 0
    assert "compress.flops" in result.output and "ask for at least" in result.output
    assert (run_dir / "compressed" / "compression.json").read_bytes() == before  # kept
