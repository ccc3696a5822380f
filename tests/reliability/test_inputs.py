"""Hostile and careless inputs: one clear error each, never a silent wrong result or a hang.

One test (or parametrised family) per class of docs/reliability.md, then property-based
fuzzing with hypothesis: configs, arrays into fit / predict / the estimators, and
mutated model files. Budgets are small (see `FUZZ`) so the file stays fast.
"""

from __future__ import annotations

import errno
import importlib
import json
import math
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch import nn

import bayesprune as bp
from bayesprune import distributed as dp
from bayesprune.app.config import ConfigError, load_config, parse_config
from bayesprune.app.factory import run_likelihood
from bayesprune.cli import main
from bayesprune.compress import load_model, save_model
from bayesprune.compress.rules import (
    global_sparsity_masks,
    layer_sparsity_masks,
    search_sparsity,
    threshold_masks,
)
from bayesprune.io import CheckpointError
from bayesprune.predict import predict
from bayesprune.sklearn import BayesianMLPClassifier
from bayesprune.validation import check_checkpoint_meta, check_finite_parameters

# the processes of the distributed test import only this small module, by its plain name
sys.path.insert(0, str(Path(__file__).parent))
_ranks = importlib.import_module("_ranks")

FUZZ = settings(
    max_examples=30,
    deadline=None,
    database=None,  # no .hypothesis folder in the working tree
    derandomize=True,  # the same cases on every run: a failure is reproducible
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
TINY = {
    "data": {"name": "breast_cancer", "limit": 40, "test_limit": 20},
    "model": {"kwargs": {"hidden": [4]}, "family": "gaussian"},
    "train": {"epochs": 1, "batch_size": 16},
    "evaluate": {"samples": 2},
}


# -- helpers -------------------------------------------------------------------------------
def _write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _config_with(tmp_path: Path, section: str, key: str, value: str) -> Path:
    """TINY as YAML with `key: value` (YAML text, e.g. ".inf") added to `section`."""
    lines = yaml.safe_dump(TINY, sort_keys=False).splitlines()
    lines.insert(lines.index(f"{section}:") + 1, f"  {key}: {value}")
    return _write(tmp_path, "\n".join(lines) + "\n")


def _cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def _assert_one_line_error(result: Any, *fragments: str) -> str:
    """Exit code 1, no traceback, exactly one line on stderr that holds every fragment."""
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ") and "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _blobs(n: int = 24, d: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    return torch.randn(n, d, generator=g) + y[:, None].float() * 2, y


def _mlp(d: int = 3, out: int = 2, family: str = "gaussian") -> nn.Module:
    torch.manual_seed(0)
    return bp.models.mlp(d, [4], out, family=family)


def _model_file(tmp_path: Path) -> Path:
    return save_model(_mlp(), tmp_path / "model.safetensors")


def _rewrite(raw: bytes, edit: Any) -> bytes:
    """A safetensors file whose header (JSON) is passed through `edit`, data kept."""
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    header = edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + raw[8 + n :]


def _edit_spec(raw: bytes, edit: Any) -> bytes:
    def apply(header: dict) -> dict:
        spec = json.loads(header["__metadata__"]["json"])
        edit(spec)
        header["__metadata__"]["json"] = json.dumps(spec)
        return header

    return _rewrite(raw, apply)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _finishes_within(fn: Any, seconds: float) -> Any:
    """Run `fn` in a thread; fail the test (instead of hanging the suite) if it overruns."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as err:
            box["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s: a hang"
    return box


# -- 1. silently wrong results -> one clear error -----------------------------------------
@pytest.mark.parametrize(
    ("key", "value"),
    [("lr", ".inf"), ("lr", "1e400"), ("lr", ".nan"), ("kl_weight", ".nan"),
     ("kl_weight", "-.inf"), ("weight_decay", ".inf"), ("dataset_size", "0"),
     ("dataset_size", "-5")],
)  # fmt: skip
def test_non_finite_or_out_of_range_train_values_are_refused(tmp_path, key, value):
    with pytest.raises(ConfigError, match=f"train.{key}"):
        load_config(_config_with(tmp_path, "train", key, value))


def test_fit_refuses_non_finite_settings_and_bad_dataset_size():
    for kwargs, fragment in [
        ({"lr": math.inf}, "lr must be a finite number"),
        ({"lr": math.nan}, "lr must be a finite number"),
        ({"kl_weight": math.nan}, "kl_weight must be a finite number"),
        ({"dataset_size": 0}, "dataset_size must be an integer >= 1"),
        ({"dataset_size": -5}, "dataset_size must be an integer >= 1"),
    ]:
        with pytest.raises(ValueError, match=fragment):
            bp.fit(_mlp(), _blobs(), epochs=1, **kwargs)


def test_parameters_that_overflow_at_the_last_step_stop_training_before_any_save(tmp_path):
    """The loss is finite before the one step; the step itself makes every weight inf."""
    folder = tmp_path / "ckpt"
    x, y = _blobs()
    with pytest.raises(FloatingPointError, match="non-finite .* at epoch 1.*lower train.lr"):
        bp.fit(_mlp(), (x * 1e3, y), epochs=1, batch_size=64, lr=1e37, optimizer="sgd",
               checkpoint_dir=folder)  # fmt: skip
    assert not list(folder.glob("*.safetensors"))  # nothing saved
    with pytest.raises(FloatingPointError, match="step overflowed at epoch 1.*lower train.lr"):
        bp.fit(_mlp(), (x, y), epochs=1, lr=1e300, optimizer="sgd")


@pytest.mark.parametrize(
    "bad",
    [
        torch.tensor([1.0, math.nan]),
        torch.tensor([-math.inf], dtype=torch.float64),
        torch.tensor([1.0, math.inf], dtype=torch.float16),
        torch.tensor([math.nan], dtype=torch.bfloat16),
        torch.tensor([1 + 1j, complex(math.nan, 0)]),
    ],
)
def test_the_per_epoch_parameter_check_finds_nan_and_inf_in_any_dtype(bad):
    """The check reads each dtype's largest |value| at once; values near float32's limit,
    empty and integer tensors are finite, and the error names only the bad parameter."""
    fine = [
        ("big", torch.tensor([3e38, -3e38])),
        ("empty", torch.zeros(0)),
        ("double", torch.ones(2, dtype=torch.float64)),
        ("count", torch.tensor([1, 2])),
    ]
    check_finite_parameters(fine, epoch=1)
    with pytest.raises(FloatingPointError, match=r"non-finite \(NaN or inf\) at epoch 2: bad;"):
        check_finite_parameters([*fine, ("bad", bad)], epoch=2)


def test_zero_training_rows_are_refused(tmp_path):
    path = _config_with(tmp_path, "data", "val_fraction", "0.9")
    path.write_text(path.read_text().replace("limit: 40", "limit: 1"))
    with pytest.raises(ConfigError, match="leaves no training row"):
        load_config(path)
    empty = (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="0 rows"):
        bp.fit(_mlp(), empty, epochs=1)


@pytest.mark.parametrize("family", ["gaussian", "spike_slab", "sparse_vd"])
def test_monte_carlo_predict_on_huge_inputs_raises_instead_of_nan(family):
    """The sampled variances x² σ² overflow float32; a weight draw (the Gaussian default)
    stays finite there, so the Gaussian case takes the local reparameterisation."""
    x = torch.full((4, 3), 1e20)
    x[:, 1] = -1e20
    model = _mlp(family=family)
    for layer in model.modules():
        if isinstance(layer, bp.nn.BayesLinear):
            layer.estimator = bp.nn.GradientEstimator.LRT
    with pytest.raises(ValueError, match="NaN or inf for these inputs.*rescale"):
        predict(model, x, samples=3)


def test_nan_importance_scores_are_refused_where_rules_consume_them():
    scores = {"0": torch.tensor([0.1, float("nan"), 0.3])}
    for rule in (
        lambda: global_sparsity_masks(scores, 0.5),
        lambda: layer_sparsity_masks(scores, 0.5),
        lambda: threshold_masks(scores, 0.2),
        lambda: search_sparsity(_mlp(), scores, lambda m: {"accuracy": 1.0}),
    ):
        with pytest.raises(ValueError, match="contain NaN"):
            rule()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_tensors_in_a_model_file_are_refused(tmp_path, bad):
    model = _mlp()
    with torch.no_grad():
        next(iter(model.parameters()))[0, 0] = bad
    path = save_model(model, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match="NaN or inf values"):
        load_model(path)


@pytest.mark.parametrize(
    ("meta", "fragment"),
    [
        ({"epoch": -5, "history": []}, "epoch must be an integer >= 0"),
        ({"epoch": 1, "history": {"0": {}}}, "history must be a list"),
        ({"epoch": 2, "history": [{}]}, "1 records for 2 epochs"),
        ({"epoch": True, "history": []}, "epoch must be an integer"),
        ([1, 2], "not a mapping"),
    ],
)
def test_malformed_checkpoint_headers_are_refused(meta, fragment):
    if isinstance(meta, dict):
        meta = {"settings": {}, "optimizer": {}, **meta}
    with pytest.raises(CheckpointError, match=fragment):
        check_checkpoint_meta(meta, "epoch-0001.safetensors")


def test_gaussian_likelihood_on_a_classification_target_is_refused():
    with pytest.raises(ValueError, match="regression targets must be floats"):
        bp.fit(_mlp(out=1), _blobs(), likelihood="gaussian", epochs=1)
    config = parse_config({**TINY, "train": {"likelihood": "gaussian"}})
    with pytest.raises(ConfigError, match="is for regression"):
        run_likelihood(config, "classification")


def test_estimator_keeps_a_column_whose_standard_deviation_overflows():
    x, y = _blobs(40)
    X = x.double().numpy()
    X[:, 0] *= 1e160  # np.std squares: inf, which zeroed the column before
    est = BayesianMLPClassifier((4,), family="gaussian", epochs=1, random_state=0).fit(X, y)
    assert np.isfinite(est.x_scale_).all()
    z = est._inputs(X, reset=False)
    assert float(z[:, 0].std()) > 0.5  # the column still carries its information


# -- 2. unbounded allocation from a file ---------------------------------------------------
def test_a_small_file_cannot_make_the_loader_allocate_a_huge_layer(tmp_path):
    raw = _model_file(tmp_path).read_bytes()

    def huge(spec: dict) -> None:
        spec["architecture"]["children"][0][1]["config"].update(
            in_features=100_000, out_features=100_000
        )

    path = tmp_path / "huge.safetensors"
    path.write_bytes(_edit_spec(raw, huge))
    assert path.stat().st_size < 4096
    before, started = _peak_rss_mb(), time.perf_counter()
    with pytest.raises(CheckpointError, match="has shape .* in the file but .* in the spec"):
        load_model(path)
    assert time.perf_counter() - started < 2.0
    assert _peak_rss_mb() - before < 100  # 100000² float32 would be 40 GB


# -- 3. YAML: aliases, anchors, duplicate keys, YAML 1.2 floats ----------------------------
def test_yaml_alias_bomb_fails_at_once(tmp_path):
    lines = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}" + f", *a{i - 1}" * 9 + "]" for i in range(1, 9)]
    bomb = "model:\n  kwargs:\n    hidden:\n" + "".join(f"      {ln}\n" for ln in lines)
    path = _write(tmp_path, bomb)
    assert path.stat().st_size < 1500
    box = _finishes_within(lambda: load_config(path), 10)
    assert isinstance(box.get("error"), ConfigError)
    assert "anchors (&a0) are not allowed" in str(box["error"])


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("train:\n  lr: 0.1\n  lr: 0.2\n", "duplicate key 'lr' in the config (lines 2 and 3)"),
        ("train: {epochs: 1, epochs: 2}\n", "duplicate key 'epochs'"),
        ("x: &v 1\ntrain: {epochs: *v}\n", "anchors (&v) are not allowed"),
        ("train: {epochs: *v}\n", "aliases (*v) are not allowed"),
        ("[" * 5000 + "]" * 5000, "nests too deeply"),
    ],
)
def test_yaml_features_a_config_never_needs_are_refused(tmp_path, text, fragment):
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, text))
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


def test_yaml_exponent_without_a_dot_is_a_number(tmp_path):
    config = load_config(_write(tmp_path, "train:\n  lr: 1e-3\n  kl_weight: 5E-1\n"))
    assert config.train.lr == pytest.approx(1e-3) and config.train.kl_weight == 0.5


# -- 4. the CLI's error boundary -----------------------------------------------------------
def test_cli_bad_values_are_one_line(tmp_path):
    nan = _config_with(tmp_path, "train", "kl_weight", ".nan")
    _assert_one_line_error(_cli("train", str(nan), "--out", str(tmp_path / "r")), "kl_weight")
    missing = _cli("train", str(tmp_path / "nope.yaml"))
    _assert_one_line_error(missing, "no config file")
    _assert_one_line_error(_cli("evaluate", str(tmp_path / "no-run")))


@pytest.mark.parametrize(
    ("error", "fragments"),
    [
        (PermissionError(errno.EACCES, "Permission denied", "/ro/run"), ("permission denied",)),
        (OSError(errno.ENOSPC, "No space left on device", "/full/x"), ("no space left",)),
        (FloatingPointError("the loss became nan; lower the learning rate"), ("lower",)),
        (KeyError("history"), ("malformed input: KeyError", "--debug")),
        (AttributeError("'list' object has no attribute 'get'"), ("AttributeError", "--debug")),
        (RecursionError("maximum recursion depth"), ("nests too deeply",)),
        (TypeError("bad\nmulti-line\nmessage"), ("bad multi-line message",)),
        (ZeroDivisionError("a bug"), ("internal error: ZeroDivisionError", "--debug")),
    ],
)
def test_cli_every_error_is_one_line_and_debug_shows_the_traceback(
    tmp_path, monkeypatch, error, fragments
):
    def failing(*args: Any, **kwargs: Any) -> None:
        raise error

    monkeypatch.setattr("bayesprune.app.steps.train_run", failing)
    config = _write(tmp_path, yaml.safe_dump(TINY))
    _assert_one_line_error(_cli("train", str(config), "--out", str(tmp_path / "r")), *fragments)
    debug = _cli("--debug", "train", str(config), "--out", str(tmp_path / "r"))
    assert debug.exit_code == 1 and debug.exception is error  # re-raised: click shows it


def test_cli_one_line_on_real_stderr(tmp_path):
    """Through a real process: stderr holds exactly one line (--debug: see the test above)."""
    config = _config_with(tmp_path, "train", "lr", ".inf")
    command = [sys.executable, "-c", "from bayesprune.cli import main; main()"]
    plain = subprocess.run([*command, "train", str(config)], capture_output=True, text=True)
    assert plain.returncode == 1
    assert plain.stderr.strip().splitlines() == [
        f"Error: {config}: train.lr must be a finite number, got inf"
    ]


def test_a_config_name_that_would_escape_runs_needs_out(tmp_path):
    config = _write(tmp_path, yaml.safe_dump(TINY), "...yaml")
    result = _cli("train", str(config))
    assert result.exit_code == 2 and "give --out FOLDER" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_one_line(tmp_path):
    with pytest.raises(ValueError, match="finds no CUDA device.*train.device: cpu"):
        bp.fit(_mlp(), _blobs(), epochs=1, device="cuda")
    config = _config_with(tmp_path, "train", "device", "cuda")
    _assert_one_line_error(_cli("train", str(config), "--out", str(tmp_path / "r")), "no CUDA")
    bad = _config_with(tmp_path, "train", "device", "gpu0")
    with pytest.raises(ConfigError, match="train.device 'gpu0'"):
        load_config(bad)


# -- 5. distributed: a bounded collective timeout, one clean error --------------------------
def test_default_collective_timeout_is_a_few_minutes():
    assert parse_config({}).train.timeout_s <= 300
    assert dp._DEFAULT_TIMEOUT_S <= 300


@pytest.mark.slow
def test_a_frozen_rank_fails_the_others_within_the_timeout():
    started = time.perf_counter()
    with pytest.raises(TimeoutError, match="^process 0 of 2: a collective timed out"):
        dp.launch(_ranks.freeze_rank_one, 2, threads=1, timeout_s=3)
    assert time.perf_counter() - started < 60
    with pytest.raises(ValueError, match="^process 1 of 2: labels out of range; remap them$"):
        dp.launch(_ranks.fail_on_rank_one, 2, threads=1, timeout_s=30)


# -- 6. dtypes and widths into predict and fit ---------------------------------------------
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
def test_non_float_inputs_are_one_value_error(dtype):
    x = torch.ones(4, 3, dtype=dtype)
    with pytest.raises(ValueError, match=f"dtype {dtype}.*real floating-point"):
        predict(_mlp(), x, samples=2)
    with pytest.raises(ValueError, match=f"dtype {dtype}.*real floating-point"):
        bp.fit(_mlp(), (x, torch.zeros(4, dtype=torch.long)), epochs=1)


def test_half_inputs_are_cast_to_the_model_dtype():
    x, y = _blobs()
    history = bp.fit(_mlp(), (x.half(), y), epochs=1)
    assert math.isfinite(history.last()["loss"])
    assert torch.isfinite(predict(_mlp(), x.half(), samples=2).probs).all()


def test_a_wrong_input_width_is_one_value_error():
    with pytest.raises(ValueError, match=r"shape \(4, 5\).*do not fit the model"):
        predict(_mlp(), torch.ones(4, 5), samples=2)
    with pytest.raises(ValueError, match=r"shape \(.*, 5\).*do not fit the model"):
        bp.fit(_mlp(), (torch.ones(4, 5), torch.zeros(4, dtype=torch.long)), epochs=1)


# -- 7. property-based fuzzing -------------------------------------------------------------
_SECTIONS = {
    "data": ["name", "limit", "test_limit", "noise_columns", "val_fraction", "seed", "n", "nme"],
    "model": ["builder", "family", "kwargs", "prior", "layer", "input_gates", "famly"],
    "train": ["epochs", "batch_size", "lr", "kl_weight", "dataset_size", "device", "timeout_s"],
    "compress": ["score", "rule", "sparsity", "threshold", "k", "alpha", "shrink"],
    "features": ["score", "rule", "k", "threshold", "screen"],
    "evaluate": ["samples", "bins", "sample"],
}
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [
            "digits",
            "gaussian",
            "spike_slab",
            "auto",
            "global",
            "pip",
            "cpu",
            "cuda",
            "mlp",
            "1e-3",
            "",
        ]
    ),
    st.text(max_size=8),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def _configs(draw: Any) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(_VALUES)  # not even a mapping
    raw: dict[Any, Any] = {}
    for section in draw(st.lists(st.sampled_from([*_SECTIONS, "trian"]), max_size=4)):
        keys = _SECTIONS.get(section, ["epochs"])
        raw[section] = draw(st.dictionaries(st.sampled_from(keys), _VALUES, max_size=4))
    return raw


@FUZZ
@given(_configs())
def test_fuzz_configs_parse_or_raise_one_config_error(raw):
    try:
        config = parse_config(raw)
    except ConfigError as err:
        assert str(err) and "\n" not in str(err)
        return
    assert math.isfinite(config.train.lr) and config.train.lr > 0


@FUZZ
@given(st.text(max_size=200) | st.builds(yaml.safe_dump, _configs()))
def test_fuzz_config_files_load_or_raise_one_config_error(tmp_path, text):
    path = tmp_path / "fuzz.yaml"
    path.write_text(text)
    try:
        load_config(path)
    except ConfigError as err:
        assert str(err)


_DTYPES = st.sampled_from([np.float32, np.float64, np.float16, np.int64, np.bool_, np.complex64])


@st.composite
def _arrays(draw: Any, width: int = 3) -> np.ndarray:
    dtype = draw(_DTYPES)
    rows = draw(st.integers(0, 6))
    cols = draw(st.sampled_from([width, width, width, 1, width + 2]))
    shape = draw(st.sampled_from([(rows, cols), (rows, cols), (rows,), (rows, cols, 1)]))
    if dtype == np.float16:
        return draw(hnp.arrays(dtype, shape, elements=st.floats(width=16)))
    if np.issubdtype(dtype, np.floating):
        extremes = st.sampled_from([1e19, -1e30, 3e38, 0.0])
        elements = st.floats(width=32, allow_subnormal=False) | extremes
        return draw(hnp.arrays(dtype, shape, elements=elements))
    return draw(hnp.arrays(dtype, shape))


@FUZZ
@given(_arrays())
def test_fuzz_predict_returns_finite_probabilities_or_raises(x):
    try:
        result = predict(_mlp(), x, samples=2)
    except (ValueError, TypeError) as err:
        assert str(err)
        return
    assert torch.isfinite(result.probs).all()
    assert torch.allclose(result.probs.sum(-1), torch.ones(len(x), dtype=torch.float64))


@FUZZ
@given(_arrays(), st.integers(0, 3))
def test_fuzz_fit_trains_to_finite_parameters_or_raises(x, label_shift):
    y = np.arange(len(x)) % 2 + (label_shift if label_shift == 3 else 0)
    model = _mlp()
    try:
        bp.fit(model, (x, y), epochs=1, batch_size=4)
    except (ValueError, TypeError, FloatingPointError) as err:
        assert str(err)
        return
    assert all(torch.isfinite(p).all() for p in model.parameters())


@settings(FUZZ, max_examples=20)
@given(_arrays(), st.booleans())
def test_fuzz_estimator_fits_and_predicts_or_raises(x, regress):
    if x.ndim != 2 or len(x) < 2:
        x = np.ones((4, 3)) if x.size == 0 else np.resize(x, (4, 3))
    y = np.arange(len(x)) % 2
    est = BayesianMLPClassifier((4,), family="gaussian", epochs=1, samples=2, random_state=0)
    try:
        est.fit(x, y.astype(float) if regress else y)
        out = est.predict_proba(x)
    except (ValueError, TypeError) as err:
        assert str(err)
        return
    assert np.isfinite(out).all()


def _mutations() -> Any:
    flips = st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1,
                     max_size=4)  # fmt: skip
    header_edits = st.sampled_from(
        ["huge", "negative", "deep", "list-spec", "unknown", "version", "drop-tensor"]
    )
    return st.one_of(
        st.tuples(st.just("bytes"), st.binary(max_size=300)),
        st.tuples(st.just("flip"), flips),
        st.tuples(st.just("truncate"), st.integers(0, 2000)),
        st.tuples(st.just("header"), header_edits),
    )


def _mutate(raw: bytes, mutation: tuple[str, Any]) -> bytes:
    kind, arg = mutation
    if kind == "bytes":
        return arg
    if kind == "truncate":
        return raw[: arg % len(raw)]
    if kind == "flip":
        data = bytearray(raw)
        for at, xor in arg:
            data[at % len(data)] ^= xor
        return bytes(data)

    def edit(spec: dict) -> None:
        layer = spec["architecture"]["children"][0][1]
        if arg == "huge":
            layer["config"]["out_features"] = 10**9
        elif arg == "negative":
            layer["config"]["in_features"] = -3
        elif arg == "list-spec":
            spec["architecture"] = [1, 2]
        elif arg == "unknown":
            layer["type"] = "os.system"
        elif arg == "version":
            spec["version"] = "1"

    if arg == "drop-tensor":
        return _rewrite(raw, lambda h: {k: v for k, v in h.items() if not k.endswith("rho")})
    if arg == "deep":
        deep = '{"type": "Sequential", "children": [["0", ' * 5000 + "null" + "]]}" * 5000
        return _rewrite(raw, lambda h: _splice(h, deep))
    return _edit_spec(raw, edit)


def _splice(header: dict, architecture: str) -> dict:
    spec = json.loads(header["__metadata__"]["json"])
    spec["architecture"] = "DEEP"
    header["__metadata__"]["json"] = json.dumps(spec).replace('"DEEP"', architecture)
    return header


@FUZZ
@given(_mutations())
def test_fuzz_model_files_load_or_raise_checkpoint_error(tmp_path, mutation):
    raw = _model_file(tmp_path).read_bytes()
    path = tmp_path / "mutated.safetensors"
    path.write_bytes(_mutate(raw, mutation))
    before = _peak_rss_mb()
    try:
        model = load_model(path)
    except CheckpointError as err:
        assert str(err)
    else:  # a flip in padding or a tensor value: still a finite, working model
        assert all(torch.isfinite(t).all() for t in model.state_dict().values())
    assert _peak_rss_mb() - before < 200
