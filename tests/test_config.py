"""Run configs: strict validation with key paths and suggestions, YAML round trip."""

from pathlib import Path

import pytest
import yaml

from bayesprune.app.config import ConfigError, dump_config, load_config, parse_config


def _error(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    return str(info.value)


def test_defaults_validate_and_round_trip_through_yaml(tmp_path):
    config = parse_config({})
    assert config.model.kwargs == {"hidden": [64]} and config.data.name == "digits"
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(config))
    assert load_config(path) == config


@pytest.mark.parametrize(
    ("raw", "where", "suggestion"),
    [
        ({"trian": {}}, "'trian'", "'train'"),
        ({"train": {"epoch": 3}}, "'train.epoch'", "'epochs'"),
        ({"model": {"kwargs": {"hiden": [4]}}}, "'model.kwargs.hiden'", "'hidden'"),
        ({"model": {"family": "spike_slab", "prior": {"slab_scal": 1}}}, "'model.prior.slab_scal'",
         "'slab_scale'"),
        ({"model": {"layer": {"rho_int": -3}}}, "'model.layer.rho_int'", "'rho_init'"),
    ],
)  # fmt: skip
def test_unknown_key_names_the_path_and_the_closest_key(raw, where, suggestion):
    message = _error(raw)
    assert where in message and f"did you mean {suggestion}" in message.replace('"', "'")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"data": {"name": "digts"}}, "bad value 'digts' for data.name; did you mean 'digits'"),
        ({"model": {"family": "gausian"}}, "did you mean 'gaussian'"),
        ({"train": {"epochs": "ten"}}, "train.epochs must be an integer"),
        ({"train": {"epochs": True}}, "train.epochs must be an integer"),
        ({"train": {"lr": -1.0}}, "train.lr must be >="),
        ({"compress": {"sparsity": 1.5}}, "compress.sparsity must be <= 1.0"),
        ({"train": []}, "train must be a mapping"),
        ({"compress": {"rule": "target_size"}}, "needs compress.k"),
        ({"compress": {"rounds": 2, "shrink": False}}, "set compress.shrink: true"),
        ({"compress": {"rounds": 2, "round_fraction": 1.0}}, "round_fraction must be in (0, 1)"),
        ({"compress": {"rule": "median", "score": "snr"}}, "set compress.score to 'pip'"),
        ({"compress": {"rule": "flops"}}, "needs compress.flops"),
        ({"compress": {"rule": "flops", "flops": 0.5, "score": "snr"}}, "compress.score to 'auto'"),
        ({"compress": {"rule": "flops", "flops": 0.5, "shrink": False}}, "compress.shrink: true"),
        ({"compress": {"flops": 0.5}}, "set compress.rule: flops"),
        ({"data": {"name": "mnist", "noise_columns": 3}}, "data.noise_columns applies"),
        ({"model": {"input_gates": True}}, "needs model.family 'spike_slab'"),
        ({"model": {"builder": "evi_cnn", "family": "gaussian"}}, "set model.family to 'evi'"),
        ({"model": {"builder": "lenet5_caffe", "prior": {"scale": 0.1}, "family": "sparse_vd"}},
         "takes no prior options"),
    ],
)  # fmt: skip
def test_bad_values_are_one_clear_error(raw, expected):
    assert expected in _error(raw)


def test_load_config_prefixes_the_file_and_reports_yaml_syntax(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"data": {"nmae": "wine"}}))
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown config key 'data\.nmae'"):
        load_config(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: {name: wine\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    with pytest.raises(ConfigError, match="no config file"):
        load_config(tmp_path / "missing.yaml")


def test_the_documented_example_configs_validate():
    folder = Path(__file__).resolve().parents[1] / "docs" / "configs"
    paths = sorted(folder.glob("*.yaml"))
    assert len(paths) >= 3
    for path in paths:
        load_config(path)
