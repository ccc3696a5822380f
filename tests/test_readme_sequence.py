"""The README's CLI sequence on the packaged LeNet-5 MNIST config, as a user runs it.

A learnable stand-in for MNIST (each class a bright square at its own place) is written
as an IDX cache, so no network is needed. Every command runs as its own process under a
time budget (a hang or a step that redoes a long evaluation fails the test instead of
stalling CI; the wall time of the real sequence is measured in
benchmarks/cli_sequence.py, not asserted here).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bayesprune.data import write_idx

BUDGET_S = 240  # per command; the whole sequence takes well under a minute here


def _fake_mnist(root: Path, n_train: int = 600, n_test: int = 200) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        images = rng.integers(0, 40, size=(n, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            r, c = 4 + 8 * (label // 4), 4 + 6 * (label % 4)
            images[i, r : r + 6, c : c + 5] = 230
        write_idx(root / "mnist" / f"{prefix}-images-idx3-ubyte", images)
        write_idx(root / "mnist" / f"{prefix}-labels-idx1-ubyte", labels)


def _bayesprune(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "bayesprune", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=BUDGET_S,
        check=False,
    )
    assert done.returncode == 0, f"bayesprune {' '.join(args)} failed:\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("readme")
    _fake_mnist(tmp / "cache")
    config = _bayesprune("config", "show", "gaussian_lenet5_mnist", cwd=tmp).stdout
    (tmp / "lenet5.yaml").write_text(config)
    run = tmp / "runs" / "lenet5"
    overrides = [
        "--set", "train.epochs=2", "--set", "data.limit=600", "--set", "data.val_fraction=0.2",
        "--set", f"data.root={tmp / 'cache'}", "--set", "evaluate.samples=5",
        "--set", "compress.finetune_epochs=0",
    ]  # fmt: skip
    _bayesprune("train", "lenet5.yaml", "--out", str(run), "--quiet", *overrides, cwd=tmp)
    _bayesprune("compress", str(run), "--quiet", cwd=tmp)
    evaluation = (run / "evaluation.json").read_text()
    _bayesprune("evaluate", str(run), cwd=tmp)
    (run / "evaluation_after_compress.json").write_text(evaluation)
    _bayesprune("select-features", str(run), cwd=tmp)
    _bayesprune("report", str(run), cwd=tmp)
    _bayesprune("export", str(run), cwd=tmp)
    return run


def test_the_sequence_learns_and_compresses(lenet_run: Path) -> None:
    evaluation = json.loads((lenet_run / "evaluation.json").read_text())
    trained, compressed = evaluation["trained"], evaluation["compressed"]
    assert trained["modes"]["mc"]["accuracy"] > 0.5  # ten classes: chance is 0.1
    assert compressed["modes"]["mc"]["accuracy"] > trained["modes"]["mc"]["accuracy"] - 0.1
    report = json.loads((lenet_run / "compressed" / "compression.json").read_text())
    assert report["totals"]["nonzero_after"] < report["totals"]["nonzero_before"]


def test_evaluate_reuses_what_compress_measured(lenet_run: Path) -> None:
    """compress records both models' test metrics; evaluate adds only the pruning curve."""
    before = json.loads((lenet_run / "evaluation_after_compress.json").read_text())
    after = json.loads((lenet_run / "evaluation.json").read_text())
    for which in ("trained", "compressed"):
        assert after[which]["modes"] == before[which]["modes"]
        assert after[which]["model_sha256"] == before[which]["model_sha256"]
    assert "pruning_curve" in after["trained"] and "pruning_curve" not in before["trained"]


def test_report_and_export_are_complete(lenet_run: Path) -> None:
    page = (lenet_run / "report" / "report.html").read_text()
    assert "<img" in page and "Traceback" not in page
    assert (lenet_run / "export" / "model.onnx").stat().st_size > 0
