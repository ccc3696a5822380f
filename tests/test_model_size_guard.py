"""A model too large for the machine is one clear config error before any allocation,
and a folder where that first attempt stopped takes the corrected config."""

from __future__ import annotations

import pytest

from bayesprune.app import parse_config
from bayesprune.app.config import ConfigError
from bayesprune.app.steps import train_run

HUGE = {
    "data": {"name": "breast_cancer", "limit": 60, "test_limit": 20},
    "model": {"builder": "mlp", "family": "gaussian", "kwargs": {"hidden": [300000, 300000]}},
    "train": {"epochs": 1, "batch_size": 32},
    "evaluate": {"samples": 2},
}


def test_a_model_larger_than_the_machine_is_refused_before_allocation(tmp_path):
    with pytest.raises(ConfigError, match=r"parameters .* GiB.*lower model\.kwargs"):
        train_run(parse_config(HUGE), tmp_path / "run")
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_a_folder_where_nothing_was_trained_takes_the_fixed_config(tmp_path):
    with pytest.raises(ConfigError):
        train_run(parse_config(HUGE), tmp_path / "run")
    fixed = {**HUGE, "model": {**HUGE["model"], "kwargs": {"hidden": [8]}}}
    result = train_run(parse_config(fixed), tmp_path / "run")
    assert result["test"]["accuracy"] > 0.5
    with pytest.raises(ConfigError, match="trained with a different config"):
        other = {**fixed, "model": {**fixed["model"], "kwargs": {"hidden": [9]}}}
        train_run(parse_config(other), tmp_path / "run")
