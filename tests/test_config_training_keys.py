"""Run-config keys for early stopping and for the search's uncertainty tolerances."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from bayesprune.app.config import ConfigError, parse_config
from bayesprune.cli import main

TINY = {
    "data": {"name": "digits", "limit": 300, "test_limit": 100, "val_fraction": 0.3},
    "model": {"kwargs": {"hidden": [16]}, "family": "gaussian"},
    "train": {"epochs": 40, "batch_size": 64, "lr": 0.3, "early_stopping": 2,
              "monitor": "val_nll", "restore_best": True},
    "compress": {"rule": "search", "score": "snr", "tolerances": {"accuracy": 0.02,
                 "ece": 0.02}},
    "evaluate": {"samples": 2},
}  # fmt: skip


def test_early_stopping_and_tolerances_reach_fit_and_the_search(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(TINY))
    run = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(main, ["train", str(path), "--out", str(run), "--quiet"])
    assert result.exit_code == 0, result.output
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert len(history) < 40  # a large lr plateaus quickly: early stopping ends the run
    result = runner.invoke(main, ["compress", str(run)])
    assert result.exit_code == 0, result.output
    search = json.loads((run / "compressed" / "compression.json").read_text())["extra"]["search"]
    held = {t["metric"]: t for t in search["tolerances"]}
    assert set(held) == {"accuracy", "ece"}
    assert held["ece"]["direction"] == "lower" and held["accuracy"]["direction"] == "higher"
    for name, tol in held.items():
        assert tol["tolerance"] == pytest.approx(TINY["compress"]["tolerances"][name])


@pytest.mark.parametrize(
    ("section", "match"),
    [
        ({"compress": {"tolerances": {"accuracyy": 0.01}}}, "did you mean 'accuracy'"),
        ({"compress": {"tolerances": {"ece": -1}}}, "must be a number >= 0"),
        (
            {"compress": {"rule": "global", "tolerances": {"ece": 0.01}}},
            "hold compress.rule 'search' and compress.rounds",
        ),
        ({"train": {"monitor": "val_loss"}}, "val_nll"),
        ({"train": {"early_stopping": 0}}, ">= 1"),
        ({"train": {"lr_multipliers": {"_rho": 0}}}, "lr_multipliers._rho must be a number > 0"),
        ({"train": {"lr_multipliers": {"_rho": ".inf"}}}, "lr_multipliers._rho must be a number"),
        ({"train": {"lr_multipliers": ["_rho"]}}, "must be a mapping"),
    ],
)
def test_bad_training_keys_are_one_clear_error(section, match):
    with pytest.raises(ConfigError, match=match):
        parse_config(section)


def test_lr_multipliers_reach_fit(tmp_path):
    """train.lr_multipliers overrides the layers' own factors: σ back at the full rate
    moves it further in one epoch than the declared third does."""
    runner = CliRunner()
    moved = {}
    for name, multipliers in (("declared", {}), ("full", {"_rho": 1.0})):
        config = {**TINY, "train": {"epochs": 1, "batch_size": 64, "lr": 0.01,
                                    "lr_multipliers": multipliers}}  # fmt: skip
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        run = tmp_path / name
        result = runner.invoke(main, ["train", str(path), "--out", str(run), "--quiet"])
        assert result.exit_code == 0, result.output
        moved[name] = _rho_travel(run)
    assert moved["full"] > 2 * moved["declared"]


def _rho_travel(run) -> float:
    """How far the first layer's ρ moved from its initial value (rho_init -6), on average."""
    from safetensors.torch import load_file

    tensors = load_file(str(next(run.glob("model*.safetensors"))))
    rho = next(t for k, t in tensors.items() if k.endswith("weight_rho"))
    return float((rho + 6.0).abs().mean())
