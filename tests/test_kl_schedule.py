"""`fit(kl_weight=[(β, epochs), ...])`: the KL weight by stage, inside one call."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from click.testing import CliRunner

import bayesprune as bp
from bayesprune.app.config import ConfigError, parse_config
from bayesprune.cli import main
from bayesprune.kl_schedule import kl_stages


def _blobs(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).long()


def _net(seed=3):
    torch.manual_seed(seed)
    return bp.mlp(4, [8], 2)


def test_stages_give_each_epoch_its_beta_and_hold_the_last():
    stages = kl_stages([(4.0, 2), (1.0, 3)])
    assert [stages.at(e) for e in range(7)] == [4.0, 4.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert stages.final == 1.0 and stages.to_json() == [[4.0, 2], [1.0, 3]]
    assert kl_stages(0.5).to_json() == 0.5 and kl_stages(0.5).at(99) == 0.5


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (-1.0, "kl_weight must be >= 0.0, got -1.0"),
        (float("nan"), "kl_weight must be a finite number, got nan"),
        ([], "a number >= 0, or stages"),
        ("4:10", "a number >= 0, or stages"),
        ([(4.0, 0), (1.0, 2)], "epochs must be an integer >= 1"),
        ([(4.0, 2.5)], "epochs must be an integer >= 1"),
        ([(4.0, 2, 1)], "must be a pair"),
        ([(True, 2)], "kl_weight stage 0: beta must be a number, got True"),
        ([(-4.0, 2)], "kl_weight stage 0: beta must be >= 0.0, got -4.0"),
    ],
)
def test_bad_kl_weight_is_one_clear_error(value, match):
    x, y = _blobs(40)
    with pytest.raises(ValueError, match=match):
        bp.fit(_net(), (x, y), epochs=3, kl_weight=value, progress=False)


def test_a_last_stage_that_never_starts_is_refused():
    x, y = _blobs(40)
    with pytest.raises(ValueError, match="start their last stage after epoch 5"):
        bp.fit(_net(), (x, y), epochs=4, kl_weight=[(4.0, 5), (1.0, 5)], progress=False)


def test_fit_trains_each_epoch_at_its_stage_beta():
    """β = 0 for the first epoch: its loss is the NLL alone; from the second on the KL counts."""
    x, y = _blobs()
    history = bp.fit(
        _net(), (x, y), epochs=3, batch_size=50, kl_weight=[(0.0, 1), (2.0, 2)], progress=False
    )
    assert history.column("kl_weight") == [0.0, 2.0, 2.0]
    first, later = history.epochs[0], history.epochs[2]
    assert first["loss"] == pytest.approx(first["nll"])
    assert later["loss"] == pytest.approx(later["nll"] + 2.0 * later["kl"] / len(y), rel=1e-5)


def test_one_stage_trains_exactly_as_a_number():
    x, y = _blobs()
    a, b = _net(), _net()
    bp.fit(a, (x, y), epochs=2, batch_size=50, kl_weight=0.5, seed=1, progress=False)
    bp.fit(b, (x, y), epochs=2, batch_size=50, kl_weight=[(0.5, 2)], seed=1, progress=False)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def test_staged_run_resumes_exactly(tmp_path):
    """Stopped inside the first stage and resumed, the stages go on where they were."""
    x, y = _blobs()
    stages = [(3.0, 2), (1.0, 2)]
    straight = _net()
    bp.fit(straight, (x, y), epochs=4, batch_size=50, seed=2, kl_weight=stages, progress=False)

    def stop_after_one(record):
        return record["epoch"] != 1

    options = {"epochs": 4, "batch_size": 50, "seed": 2, "kl_weight": stages, "progress": False}
    first = _net()
    bp.fit(first, (x, y), checkpoint_dir=tmp_path, callbacks=[stop_after_one], **options)
    resumed = bp.mlp(4, [8], 2)  # all state from the checkpoint
    history = bp.fit(resumed, (x, y), checkpoint_dir=tmp_path, resume=True, **options)
    assert history.column("kl_weight") == [3.0, 3.0, 1.0, 1.0]
    for name, p in straight.state_dict().items():
        assert torch.allclose(p, resumed.state_dict()[name], atol=1e-6), name


TINY = {
    "data": {"name": "digits", "limit": 200, "test_limit": 60, "val_fraction": 0.25},
    "model": {"kwargs": {"hidden": [8]}, "family": "gaussian"},
    "train": {"epochs": 3, "batch_size": 64, "kl_weight": [[2, 1], [1, 2]]},
    "compress": {"sparsity": 0.5, "finetune_epochs": 1},
    "evaluate": {"samples": 2},
}  # fmt: skip


def test_run_config_stages_reach_fit_and_the_compress_finetune(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(TINY))
    run = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(main, ["train", str(path), "--out", str(run), "--quiet"])
    assert result.exit_code == 0, result.output
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert [e["kl_weight"] for e in history] == [2.0, 1.0, 1.0]
    result = runner.invoke(main, ["compress", str(run)])  # its 1-epoch fine-tune: the last β
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ([[4, 10], [1, 20]], "train.kl_weight stages .* but training has 10 epochs"),
        ([[4, 0]], "train.kl_weight stage 0: epochs must be an integer >= 1"),
        ("strong", "must be a number"),
        (-2, "train.kl_weight must be >= 0"),
    ],
)
def test_bad_config_kl_weight_is_one_clear_error(value, match):
    with pytest.raises(ConfigError, match=match):
        parse_config({"train": {"epochs": 10, "kl_weight": value}})
