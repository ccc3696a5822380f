"""The group family's `scale_on` from a config file: input scales reach the layers,
survive compress's save and reload, and a bad value is one clear error."""

import json

import yaml
from _cli import invoke

from bayesprune.compress import load_model
from bayesprune.nn import GroupSparseVDLinear

CONFIG = {
    "data": {"name": "wine", "val_fraction": 0.3},
    "model": {
        "family": "sparse_vd_group",
        "kwargs": {"hidden": [8]},
        "layer": {"scale_on": {"linear": "in"}},
    },
    "train": {"epochs": 3, "batch_size": 32, "lr": 0.01},
    "compress": {"score": "log_alpha", "rule": "threshold", "threshold": -3.0},
    "evaluate": {"samples": 3},
}


def _config(tmp_path, raw: dict):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_input_scales_from_a_config_survive_compress_and_reload(tmp_path):
    run = tmp_path / "run"
    invoke("train", _config(tmp_path, CONFIG), "--out", str(run), "--quiet")
    invoke("compress", str(run), "--quiet")
    small = load_model(run / "compressed" / "model.safetensors")
    layers = [m for m in small.modules() if isinstance(m, GroupSparseVDLinear)]
    assert [m.scale_on for m in layers] == ["in", "in"]
    assert all(m.unit_mu.shape == (m.in_features,) for m in layers)


def test_a_bad_scale_side_is_one_line_error(tmp_path):
    raw = {**CONFIG, "model": {**CONFIG["model"], "layer": {"scale_on": "sideways"}}}
    result = invoke("train", _config(tmp_path, raw), "--out", str(tmp_path / "r"), ok=False)
    assert result.exit_code != 0 and "scale_on must be one of" in result.output
    assert "Traceback" not in result.output


def test_select_features_reads_the_input_scales(tmp_path):
    raw = {**CONFIG, "data": {"name": "wine", "val_fraction": 0.3, "noise_columns": 4}}
    run = tmp_path / "run"
    invoke("train", _config(tmp_path, raw), "--out", str(run), "--quiet")
    invoke("select-features", str(run))
    features = json.loads((run / "features.json").read_text())
    assert features["score"] == "log_alpha" and features["rule"] == "log_alpha"
    model = load_model(run / "model.safetensors")
    first = next(m for m in model.modules() if isinstance(m, GroupSparseVDLinear))
    kept = (first.scale_log_alpha() <= 3).nonzero().flatten().tolist()
    assert features["selected"] == kept
    result = invoke("select-features", str(run), "--rule", "relative", ok=False)
    assert result.exit_code != 0 and "go with rule 'log_alpha' only" in result.output
