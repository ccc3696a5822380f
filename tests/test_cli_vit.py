"""A Vision Transformer (the `vit` builder) through the CLI: a FLOPs budget deletes MLP
units and attention heads, the run reloads the smaller model, and it exports to ONNX."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from test_cli_graph_model import _invoke
from test_readme_sequence import _fake_mnist

from bayesprune.app import Run
from bayesprune.compress import load_shrunk
from bayesprune.nn import MultiheadAttention, use_posterior_mean, variational_layers
from bayesprune.vit import ViT, vit

SIZE = {"patch": 7, "width": 16, "depth": 2, "heads": 4, "hidden": 32}
CONFIG = {
    "data": {"name": "mnist", "limit": 400, "test_limit": 120, "val_fraction": 0.2},
    "model": {"builder": "vit", "kwargs": SIZE},
    "train": {"epochs": 3, "batch_size": 50, "lr": 0.003},
    "compress": {"score": "norm", "rule": "global", "sparsity": 0.4, "finetune_epochs": 0},
    "evaluate": {"samples": 3},
}


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("vit")
    _fake_mnist(tmp / "cache", n_train=400, n_test=120)
    raw = {**CONFIG, "data": {**CONFIG["data"], "root": str(tmp / "cache")}}
    (tmp / "vit.yaml").write_text(yaml.safe_dump(raw))
    run = tmp / "run"
    torch.manual_seed(0)
    _invoke("train", str(tmp / "vit.yaml"), "--out", str(run), "--quiet")
    _invoke("compress", str(run), "--flops", "0.5", "--quiet")
    for step in ("evaluate", "export"):
        _invoke(step, str(run))
    return run


def test_a_flops_budget_deletes_heads_and_mlp_units(vit_run: Path) -> None:
    report = json.loads((vit_run / "compressed" / "compression.json").read_text())
    assert report["extra"]["rule"] == "flops" and report["extra"]["flops"]["ratio"] <= 0.5
    shrink = report["extra"]["shrink"]
    assert shrink["graph"] is True and shrink["heads"]  # heads were deleted
    model = Run.open(vit_run).load_model("compressed")
    assert isinstance(model, ViT)
    heads = [block.attention.num_heads for block in model.blocks]
    hidden = [block.fc1.out_features for block in model.blocks]
    assert min(heads) < 4 and max(hidden) < 32
    assert isinstance(model.blocks[0].attention, MultiheadAttention)
    assert any(True for _ in variational_layers(model))  # still Bayesian
    evaluation = json.loads((vit_run / "evaluation.json").read_text())
    recorded = evaluation["compressed"]["modes"]["mean"]["accuracy"]
    x, y = Run.open(vit_run).data().test
    with torch.no_grad(), use_posterior_mean(model):
        accuracy = (model(x).argmax(1) == y).double().mean().item()
    assert accuracy == pytest.approx(recorded)  # the reloaded model is the evaluated one


def test_the_exported_vit_reloads_plain_and_matches_onnx(vit_run: Path) -> None:
    out = json.loads((vit_run / "export" / "export.json").read_text())
    assert out["onnx_max_abs_difference"] < 1e-4
    plain = load_shrunk(
        vit_run / "export" / "model.safetensors", lambda: vit(family="deterministic", **SIZE)
    )
    assert not any(True for _ in variational_layers(plain))
    compressed = Run.open(vit_run).load_model("compressed")
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad(), use_posterior_mean(compressed):
        assert torch.allclose(plain.eval()(x), compressed(x), atol=1e-5)
