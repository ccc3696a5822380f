"""On an accelerator: the library and every CLI step compute there, and what they write
reads back on the CPU with the figures they recorded. The device is
$BAYESPRUNE_TEST_DEVICE (default "cuda"); skipped where torch does not have it (CI). On
a GPU machine: `python -m pytest tests/test_cuda.py`; the same tests on the CPU, to
check the tests themselves: `BAYESPRUNE_TEST_DEVICE=cpu python -m pytest tests/test_cuda.py`.

The first three tests run everywhere: a run whose `train.device` this machine lacks
computes on the CPU, with a line in its log saying so; a command's own `--device` is
checked and refused when missing; `train.device: auto` trains on the accelerator torch
has (the CPU in CI) and records which."""

from __future__ import annotations

import json
import os
import traceback
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from _images import bars, write_image_sets
from click.testing import CliRunner

from bayesprune import fit
from bayesprune.app import Run
from bayesprune.app.config import ConfigError, parse_config
from bayesprune.cli import main
from bayesprune.compress import (
    apply_masks,
    global_sparsity_masks,
    self_compress,
    shrink_graph,
    weight_masks_for,
    weight_scores,
)
from bayesprune.evaluation import scorer
from bayesprune.models import build
from bayesprune.nn import use_posterior_mean, variational_layers
from bayesprune.predict import predict
from bayesprune.validation import resolve_device

DEVICE = torch.device(os.environ.get("BAYESPRUNE_TEST_DEVICE", "cuda"))
needs_cuda = pytest.mark.skipif(
    DEVICE.type == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device"
)


def test_a_device_this_machine_lacks_falls_back_to_the_cpu_and_says_so(tmp_path):
    raw = {"data": {"name": "breast_cancer"}, "train": {"device": "cuda:7"}}
    run = Run(tmp_path, parse_config(raw))
    assert run.device == torch.device("cpu")  # no machine here has an eighth GPU
    assert run.device == torch.device("cpu")  # asked twice, noted once
    assert run.with_config(run.config).device.type == "cpu"  # a derived run (overrides) too
    log = (tmp_path / "log.txt").read_text()
    assert log.count("train.device 'cuda:7' is not available here; computing on the cpu") == 1
    assert Run(tmp_path, parse_config({"data": {"name": "breast_cancer"}})).device.type == "cpu"


def test_a_command_computes_on_its_own_device_and_refuses_one_this_machine_lacks(tmp_path):
    raw = {
        "data": {"name": "breast_cancer", "limit": 120, "test_limit": 60, "val_fraction": 0.25},
        "model": {"kwargs": {"hidden": [8]}},
        "train": {"epochs": 2, "batch_size": 32},
        "compress": {"rule": "global", "sparsity": 0.5},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    folder = tmp_path / "run"
    invoke("train", str(tmp_path / "run.yaml"), "--out", str(folder))
    for step in ("compress", "evaluate", "restore"):
        result = CliRunner().invoke(main, [step, str(folder), "--device", "cuda:7"])
        assert result.exit_code != 0 and "'cuda:7' was asked for" in result.output, step
    assert not (folder / "compressed").exists()  # nothing written by the refused compress
    invoke("compress", str(folder), "--device", "cpu")
    invoke("evaluate", str(folder), "--device", "auto")
    assert yaml.safe_load((folder / "config.yaml").read_text())["train"]["device"] == "cpu"


def test_auto_trains_on_the_accelerator_torch_has_and_records_which(tmp_path):
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    if expected == "cpu" and torch.backends.mps.is_available():
        expected = "mps"
    assert resolve_device("auto").type == expected
    raw = {
        "data": {"name": "breast_cancer", "limit": 120, "test_limit": 60},
        "model": {"kwargs": {"hidden": [8]}},
        "train": {"epochs": 1, "batch_size": 32},
    }
    (tmp_path / "auto.yaml").write_text(yaml.safe_dump(raw))
    invoke("train", str(tmp_path / "auto.yaml"), "--out", str(tmp_path / "run"), "--device", "auto")
    run = Run.open(tmp_path / "run")
    assert run.config.train.device == "auto"  # the file stays portable
    assert run.device.type == expected
    made = json.loads((tmp_path / "run" / "metrics.json").read_text())["provenance"]
    assert made["device"].startswith(expected)
    with pytest.raises(ConfigError, match="'cpu', 'cuda', 'cuda:0' or 'auto'"):
        parse_config({**raw, "train": {"device": "tpu:x"}})


def _flat_bars(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = bars(n, seed)
    return x.flatten(1), y


@needs_cuda
@pytest.mark.parametrize("family", ["gaussian", "sparse_vd", "spike_slab", "deterministic"])
def test_fit_predict_prune_and_shrink_on_cuda(family):
    x, y = _flat_bars(300, 0)
    x_val, y_val = _flat_bars(200, 1)
    torch.manual_seed(0)
    model = build("mlp", in_features=64, hidden=[32, 32], out_features=3, family=family)
    # a hundredth of the KL: Sparse VD's log-uniform prior would prune 300 rows' evidence away
    fit(model, (x, y), epochs=15, batch_size=50, lr=0.01, kl_weight=0.01, device=DEVICE)
    assert all(p.device.type == DEVICE.type for p in model.parameters())
    score = scorer((x_val, y_val), metrics=("accuracy", "nll"))
    assert score(model)["accuracy"] > 0.9  # it learned, on the GPU
    pred = predict(model, x_val, samples=4, mode="mc", seed=0)
    assert pred.probs.shape == (200, 3)
    masks = global_sparsity_masks(weight_scores(model, "magnitude"), 0.5)
    pruned = apply_masks(model, weight_masks_for(model, masks, "weight"))
    example = x_val[:2].to(DEVICE)
    small = shrink_graph(pruned, example).model
    with torch.no_grad(), use_posterior_mean(pruned), use_posterior_mean(small):
        pruned.eval(), small.eval()
        torch.testing.assert_close(
            small(x_val.to(DEVICE)), pruned(x_val.to(DEVICE)), atol=1e-4, rtol=1e-4
        )
        on_cpu = small.cpu()(x_val)
    with torch.no_grad(), use_posterior_mean(pruned):
        torch.testing.assert_close(on_cpu, pruned(x_val.to(DEVICE)).cpu(), atol=1e-4, rtol=1e-4)


@needs_cuda
def test_self_compress_with_a_finetune_stays_on_cuda():
    x, y = _flat_bars(300, 0)
    torch.manual_seed(0)
    model = build("mlp", in_features=64, hidden=[32, 32], out_features=3)
    fit(model, (x, y), epochs=10, batch_size=50, lr=0.01, device=DEVICE, progress=False)
    score = scorer(_flat_bars(200, 1), metrics=("accuracy",))
    before = score(model)["accuracy"]

    def tune(m: torch.nn.Module) -> None:
        fit(m, (x, y), epochs=2, batch_size=50, lr=0.003, device=DEVICE, progress=False)

    result = self_compress(
        model, score, tune, example_inputs=x[:2].to(DEVICE), score="activation",
        score_data=x.to(DEVICE), fraction=0.3, max_rounds=2, tolerances={"accuracy": 0.05},
    )  # fmt: skip
    small = result.model
    assert all(p.device.type == DEVICE.type for p in small.parameters())
    assert result.accepted.round >= 1 and small[0].out_features < 32
    assert score(small)["accuracy"] >= before - 0.05 - 1e-9


# -- the CLI ---------------------------------------------------------------------------

IMAGES = {
    "data": {"name": "mnist", "val_fraction": 0.4},
    "train": {"epochs": 8, "batch_size": 32, "lr": 0.01, "device": str(DEVICE)},
    "evaluate": {"samples": 4},
}
MODELS = {
    "mlp": {"kwargs": {"hidden": [24, 24]}},
    "lenet5": {"builder": "lenet5_caffe"},
    "resnet": {"builder": "resnet", "kwargs": {"widths": [6, 12], "blocks": 1}},
    "evi": {"builder": "evi_cnn", "family": "evi", "kwargs": {"n_kernels": 8}},
}


def invoke(*args: str) -> None:
    """`bayesprune --debug ARGS`: a failure shows where on the device it broke."""
    result = CliRunner().invoke(main, ["--debug", *args, "--threads", "1"])
    if result.exit_code != 0:
        where = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info else ""
        raise AssertionError(f"{' '.join(args[:1])} failed:\n{result.output}\n{where}")


def _trained(tmp: Path, model: dict[str, Any]) -> Path:
    write_image_sets(tmp / "data")
    raw = {**IMAGES, "data": {**IMAGES["data"], "root": str(tmp / "data")}, "model": model}
    (tmp / "run.yaml").write_text(yaml.safe_dump(raw))
    torch.manual_seed(0)
    invoke("train", str(tmp / "run.yaml"), "--out", str(tmp / "run"), "--quiet")
    return tmp / "run"


def _recorded_matches_a_cpu_rescore(run: Path, which: str) -> None:
    """The posterior-mean test figures `evaluate` recorded (computed on the GPU) are what
    the saved model gives on the CPU."""
    r = Run.open(run)
    recorded = json.loads((run / "evaluation.json").read_text())[which]["modes"]["mean"]
    model = r.load_model(which)
    assert all(p.device.type == "cpu" for p in model.parameters())
    again = scorer(r.data().test, r.likelihood(), metrics=("accuracy", "nll"))(model)
    rows = len(r.data().test[0])
    assert again["accuracy"] == pytest.approx(recorded["accuracy"], abs=1.01 / rows)
    assert again["nll"] == pytest.approx(recorded["nll"], rel=1e-3, abs=1e-4)


@needs_cuda
@pytest.mark.parametrize("name", list(MODELS))
def test_every_cli_step_runs_on_cuda(tmp_path, name):
    run = _trained(tmp_path, MODELS[name])
    assert Run.open(run).device.type == DEVICE.type
    rounds = [] if name == "evi" else ["--rounds", "2", "--round-fraction", "0.2"]
    invoke(
        "compress", str(run), "--rule", "search", "--delta", "0.05", "--finetune-epochs", "1",
        *rounds, "--ood", "fashion-mnist", "--tolerance", "ece=3x", "--quiet",
    )  # fmt: skip
    report = json.loads((run / "compressed" / "compression.json").read_text())
    assert report["totals"]["nonzero_after"] < report["totals"]["nonzero_before"]
    invoke("evaluate", str(run))
    _recorded_matches_a_cpu_rescore(run, "trained")
    _recorded_matches_a_cpu_rescore(run, "compressed")
    if name != "evi":
        invoke("restore", str(run), "--ood", "fashion-mnist")
        record = json.loads((run / "restored" / "restore.json").read_text())
        assert record["method"] in record["candidates"]
    invoke("report", str(run))
    invoke("export", str(run))
    assert (run / "export" / "model.onnx").is_file()
    assert "not available here" not in (run / "log.txt").read_text()


@needs_cuda
def test_a_transformer_loses_heads_and_units_to_a_flops_budget_on_cuda(tmp_path):
    size = {"patch": 7, "width": 16, "depth": 2, "heads": 4, "hidden": 32}
    run = _trained(tmp_path, {"builder": "vit", "kwargs": size})
    invoke("compress", str(run), "--rule", "flops", "--flops", "0.6", "--quiet")
    report = json.loads((run / "compressed" / "compression.json").read_text())
    assert report["extra"]["flops"]["ratio"] <= 0.6
    invoke("evaluate", str(run))
    _recorded_matches_a_cpu_rescore(run, "compressed")
    invoke("export", str(run))


SPIKE = {
    "data": {"name": "breast_cancer", "noise_columns": 4, "val_fraction": 0.25},
    "model": {"kwargs": {"hidden": [8]}, "family": "spike_slab", "input_gates": True},
    "train": {"epochs": 30, "batch_size": 64, "lr": 0.01, "device": str(DEVICE)},
    "evaluate": {"samples": 4},
}


@needs_cuda
def test_spike_and_slab_prunes_by_pips_and_selects_features_on_cuda(tmp_path):
    (tmp_path / "spike.yaml").write_text(yaml.safe_dump(SPIKE))
    run = tmp_path / "run"
    torch.manual_seed(0)
    invoke("train", str(tmp_path / "spike.yaml"), "--out", str(run), "--quiet")
    invoke("compress", str(run), "--quiet")  # the family's default: a PIP rule on units
    invoke("evaluate", str(run))
    _recorded_matches_a_cpu_rescore(run, "compressed")
    invoke("select-features", str(run))
    features = json.loads((run / "features.json").read_text())
    assert features["score"] == "pip" and features["n_features"] == 30 + 4  # 4 noise columns
    assert set(features["selected"]) <= set(range(34)) and features["selected"]
    first = next(layer for _, layer in variational_layers(Run.open(run).load_model("trained")))
    pips = first.posterior().input_inclusion.flatten().double()  # read on the CPU
    torch.testing.assert_close(torch.tensor(features["scores"], dtype=torch.float64), pips)
    invoke("report", str(run))


@needs_cuda
def test_a_loader_trains_and_predicts_on_cuda_as_tensors_do():
    x, y = _flat_bars(300, 0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=50)
    torch.manual_seed(0)
    model = build("mlp", in_features=64, hidden=[32], out_features=3)
    fit(model, loader, epochs=10, lr=0.01, device=DEVICE, progress=False)
    assert next(model.parameters()).device.type == DEVICE.type
    by_loader = predict(model, loader, samples=3, seed=0, batch_size=None)
    by_tensor = predict(model, x, samples=3, seed=0, batch_size=50)
    torch.testing.assert_close(by_loader.probs.cpu(), by_tensor.probs.cpu())
    shared = predict(model, x, samples=3, seed=0, sampling="shared")
    assert float((shared.probs.cpu().argmax(1) == y).double().mean()) > 0.9
