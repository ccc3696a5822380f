"""compress.prune against the calls it replaces, model_size without an input shape, and
`train --set` / `select-features --rule` overrides."""

import json

import pytest
import torch
import yaml
from click.testing import CliRunner

import bayesprune as bp
from bayesprune import compress as C
from bayesprune.cli import main
from bayesprune.metrics import model_size


def _twins():
    torch.manual_seed(0)
    a = bp.mlp(6, [12, 8], 3)
    b = bp.mlp(6, [12, 8], 3)
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.parametrize(
    ("level", "rule", "score", "options"),
    [
        ("unit", "global", "norm", {"sparsity": 0.5}),
        ("weight", "layer", "snr", {"sparsity": 0.7}),
        ("input", "threshold", "norm", {"threshold": 0.5}),
    ],
)
def test_prune_equals_the_calls_it_replaces(level, rule, score, options):
    one, steps = _twins()
    C.prune(one, level=level, rule=rule, score=score, **options)
    table = {"unit": C.unit_scores, "weight": C.weight_scores, "input": C.input_scores}
    scores = table[level](steps, score)
    masks = {
        "global": lambda: C.global_sparsity_masks(scores, options.get("sparsity")),
        "layer": lambda: C.layer_sparsity_masks(scores, options.get("sparsity")),
        "threshold": lambda: C.threshold_masks(scores, options.get("threshold")),
    }[rule]()
    C.apply_masks(steps, C.weight_masks_for(steps, masks, level))
    for k, v in steps.state_dict().items():
        torch.testing.assert_close(one.state_dict()[k], v)
    small = C.prune(_twins()[0], level=level, rule=rule, score=score, shrink=True, **options)
    expected = C.shrink(steps, (6,)).model
    x = torch.randn(5, 6)
    with bp.nn.use_posterior_mean(small), bp.nn.use_posterior_mean(expected):
        torch.testing.assert_close(small(x), expected(x))


def test_prune_names_the_choices_and_the_missing_option():
    model = bp.mlp(4, [8], 2)
    with pytest.raises(ValueError, match="valid: weight, unit, input"):
        C.prune(model, level="neuron")
    with pytest.raises(ValueError, match="valid: global, layer"):
        C.prune(model, rule="top")
    with pytest.raises(ValueError, match="needs sparsity"):
        C.prune(model, rule="global")
    with pytest.raises(ValueError, match="score='pip'"):
        C.prune(model, rule="median")
    kept = C.prune(model, level="unit", rule="target_size", k=3, shrink=True)
    assert kept[0].out_features == 3


def test_model_size_without_an_input_shape_reports_unknown_flops():
    model = bp.mlp(4, [8], 2)
    size = model_size(model)
    assert size.flops is None and "unknown" in size.describe()
    assert model_size(model, (4,)).flops == 2 * (4 * 8 + 8 * 2)


CONFIG = {
    "data": {"name": "breast_cancer", "limit": 120, "test_limit": 60, "val_fraction": 0.25},
    "model": {"kwargs": {"hidden": [8]}, "family": "spike_slab", "input_gates": True},
    "train": {"epochs": 5, "batch_size": 32, "lr": 0.01},
    "evaluate": {"samples": 4},
}


def _cli(*args):
    return CliRunner().invoke(main, [*args, "--threads", "1"])


def test_train_overrides_are_parsed_validated_and_recorded(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    run = tmp_path / "run"
    result = _cli("train", str(cfg), "--out", str(run), "--quiet", "--set", "train.epochs=2",
                  "--set", "model.kwargs.hidden=[6,4]", "--set", "train.lr=1e-2",
                  "--seed", "3")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "test (posterior mean, 60 rows)" in result.output
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 2 and saved["train"]["seed"] == 3
    assert saved["train"]["lr"] == 0.01 and saved["model"]["kwargs"]["hidden"] == [6, 4]
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["history"]) == 2
    for bad, named in [
        ("train.epoch=2", "train.epoch"),
        ("train.epochs=two", "train.epochs"),
        ("train.epochs.x=1", "train.epochs"),
        ("epochs", "KEY=VALUE"),
    ]:
        result = _cli("train", str(cfg), "--out", str(tmp_path / "bad"), "--set", bad)
        assert result.exit_code == 1, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and named in lines[0], result.output
    assert not (tmp_path / "bad").exists()

    out = _cli("select-features", str(run), "--rule", "target_size", "--k", "3")
    assert out.exit_code == 0, out.output
    assert "3 of 30 features selected" in out.output
    features = json.loads((run / "features.json").read_text())
    assert features["options"]["rule"] == "target_size" and features["options"]["k"] == 3
    assert yaml.safe_load((run / "config.yaml").read_text()) == saved  # untouched
