"""`train.prune_sparsity`: pruning inside training from the CLI (compress.GradualPruning)."""

import json

import pytest
import yaml
from _cli import invoke

from bayesprune.app.folder import Run
from bayesprune.compress import weight_masks


def _config(tmp_path, **train) -> str:
    raw = {
        "data": {"name": "breast_cancer", "val_fraction": 0.2},
        "model": {"kwargs": {"hidden": [32, 16]}},
        "train": {"epochs": 8, "batch_size": 64, "lr": 0.01, **train},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_the_trained_model_is_pruned_on_schedule_and_still_predicts(tmp_path):
    path = _config(tmp_path, prune_sparsity=0.8, prune_start_epoch=2, prune_end_epoch=5)
    invoke("train", path, "--out", str(tmp_path / "run"), "--quiet")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    record = metrics["pruned_in_training"]
    assert (record["start_epoch"], record["end_epoch"], record["score"]) == (2, 5, "snr")
    targets = [s["target"] for s in record["schedule"]]
    assert targets[0] == 0.0 and targets[4:] == [0.8] * 4 and targets == sorted(targets)
    assert record["pruned"] == pytest.approx(0.8, abs=1e-3)
    masks = weight_masks(Run.open(tmp_path / "run").load_model("trained"))  # saved pruned
    kept = sum(float(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert kept == pytest.approx(0.2, abs=1e-3)
    assert metrics["test"]["accuracy"] > 0.9  # breast cancer: still a classifier


@pytest.mark.parametrize(
    ("train", "expected"),
    [
        ({"prune_start_epoch": 2}, "set train.prune_sparsity"),
        ({"prune_sparsity": 0.5, "prune_start_epoch": 6, "prune_end_epoch": 3}, "1 <= start"),
        ({"prune_sparsity": 0.5, "prune_end_epoch": 9}, "<= train.epochs (8)"),
        ({"prune_sparsity": 1.0}, "prune_sparsity"),
    ],
)
def test_bad_schedules_are_one_clear_line(tmp_path, train, expected):
    result = invoke("train", _config(tmp_path, **train), "--out", str(tmp_path / "r"), ok=False)
    assert result.exit_code == 1 and expected in result.output, result.output
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_a_family_that_ranks_units_asks_for_a_weight_score(tmp_path):
    with open(_config(tmp_path, prune_sparsity=0.5)) as f:
        raw = yaml.safe_load(f)
    raw["model"]["family"] = "spike_slab"
    (tmp_path / "ss.yaml").write_text(yaml.safe_dump(raw))
    result = invoke("train", str(tmp_path / "ss.yaml"), "--out", str(tmp_path / "s"), ok=False)
    assert result.exit_code == 1 and "set train.prune_score" in result.output, result.output
    assert not (tmp_path / "s").exists()  # refused with the config, before any folder
