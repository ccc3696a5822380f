"""Run configurations: YAML files validated against dataclasses.

A run config has seven sections (every key optional; defaults below)::

    data:     {name: digits, limit: null, noise_columns: 0, seed: 0, ...}
    model:    {builder: mlp, kwargs: {hidden: [64]}, family: spike_slab, prior: {}, ...}
    train:    {epochs: 10, batch_size: 128, lr: 0.003, ...}      # bayesprune.fit's arguments
    compress: {score: auto, rule: auto, sparsity: 0.9, ...}
    features: {score: auto, rule: auto, screen: false, ...}
    evaluate: {samples: 30, bins: 15}
    restore:  {method: auto, epochs: 2, ood: null, ...}

Validation is strict because a typo in a config otherwise silently trains the
wrong model: an unknown key or a bad value raises one `ConfigError` that names
the key path (e.g. ``model.kwargs.hiden``) and suggests the closest valid key.
The model's input and output sizes are filled in from the data, so a config
names only what a person chooses.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..compress.pip_rules import PIP_RULES
from ..compress.scores import INPUT_SCORES, UNIT_SCORES, WEIGHT_SCORES
from ..kl_schedule import kl_stages
from ..likelihoods import likelihood_names
from ..optim import AUTO_SCHEDULE, LR_SCHEDULES, OPTIMIZERS
from ..restore import RestoreMethod
from ..validation import resolve_device
from .overrides import apply_overrides, override_keys
from .schema import ConfigError, _section, _unknown
from .yaml_safe import YamlRefused, load_strict

IMAGE_SETS = ("mnist", "fashion-mnist")
TABULAR_SETS = ("digits", "breast_cancer", "wine", "diabetes")
SIMULATED_SETS = ("bai2020", "correlated", "friedman1")
DATA_NAMES = IMAGE_SETS + TABULAR_SETS + SIMULATED_SETS
REGRESSION_SETS = ("diabetes", *SIMULATED_SETS)

# The choices below come from the library's own tables, never re-typed here.
AUTO = "auto"  # resolved by the policy (bayesprune.app.policy), asking the Family record
LIKELIHOODS = (AUTO, *likelihood_names())
WEIGHT_SCORE_NAMES = tuple(WEIGHT_SCORES)
UNIT_SCORE_NAMES = tuple(UNIT_SCORES)
PIP_RULE_NAMES = PIP_RULES
GLOBAL_RULES = ("global", "layer", "threshold", "search")  # rules of compress.rules
FLOPS_RULE = "flops"  # units by activation scores, as many as a FLOPs budget allows
COMPRESS_RULES = (AUTO, *GLOBAL_RULES, FLOPS_RULE, *PIP_RULE_NAMES)
FEATURE_SCORES = (AUTO, *INPUT_SCORES)
RELATIVE = "relative"  # keep features whose norm is >= threshold × the largest
LOG_ALPHA_RULE = "log_alpha"  # keep features whose input scale has log α <= threshold
FEATURE_RULES = (AUTO, *PIP_RULE_NAMES, RELATIVE, LOG_ALPHA_RULE)
# the data fill these builder arguments; a config may still set them
FROM_DATA = ("in_features", "out_features", "n_classes", "in_channels", "image_size")


def _builders() -> dict[str, Callable[..., Any]]:
    from ..models import BUILDERS

    return BUILDERS


def _families() -> list[str]:
    from ..nn import families

    return families()


def _choices(*values: str) -> dict[str, Any]:
    return {"choices": values}


@dataclass
class DataConfig:
    """Which data set, and how much of it."""

    name: str = field(default="digits", metadata=_choices(*DATA_NAMES))
    limit: int | None = field(default=None, metadata={"min": 1})  # training rows kept
    test_limit: int | None = field(default=None, metadata={"min": 1})
    noise_columns: int = field(default=0, metadata={"min": 0})  # bundled tabular sets only
    test_size: float = field(default=0.25, metadata={"min": 0.01, "max": 0.99})
    val_fraction: float = field(default=0.0, metadata={"min": 0.0, "max": 0.9})
    n: int | None = field(default=None, metadata={"min": 4})  # simulations only
    p: int | None = field(default=None, metadata={"min": 5})  # simulations only
    noise: float | None = field(default=None, metadata={"min": 0.0})  # simulations only
    root: str | None = None  # cache of downloaded image sets
    seed: int = 0


@dataclass
class ModelConfig:
    """A builder of `bayesprune.models.BUILDERS`, its arguments and the layer family."""

    builder: str = field(default="mlp", metadata={"choices": lambda: sorted(_builders())})
    kwargs: dict[str, Any] = field(default_factory=dict)  # builder "mlp": hidden defaults to [64]
    family: str = field(default="gaussian", metadata={"choices": _families})
    prior: dict[str, Any] = field(default_factory=dict)
    layer: dict[str, Any] = field(default_factory=dict)  # other layer options (rho_init, ...)
    input_gates: bool = False  # spike-and-slab: one gate per input feature of the first layer


@dataclass
class TrainConfig:
    """The arguments of `bayesprune.fit` (see its docstring for the loss convention)."""

    epochs: int = field(default=10, metadata={"min": 0})
    batch_size: int = field(default=128, metadata={"min": 1})
    lr: float = field(default=3e-3, metadata={"min": 1e-12})
    optimizer: str = field(default="adam", metadata=_choices(*OPTIMIZERS))
    weight_decay: float = field(default=0.0, metadata={"min": 0.0})
    lr_schedule: str = field(default=AUTO_SCHEDULE, metadata=_choices(AUTO_SCHEDULE, *LR_SCHEDULES))
    # {parameter-name suffix: factor of lr}, over the layers' own (Gaussian σ: a third)
    lr_multipliers: dict[str, float] = field(default_factory=dict)
    # β, or stages [[β, epochs], ...]: [[4, 10], [1, 20]] tempers the KL for 10 epochs
    kl_weight: float | list = field(default=1.0, metadata={"min": 0.0})
    kl_warmup_epochs: float = field(default=0.0, metadata={"min": 0.0})
    dataset_size: int | None = field(default=None, metadata={"min": 1})
    likelihood: str = field(default="auto", metadata=_choices(*LIKELIHOODS))
    keep_checkpoints: int = field(default=2, metadata={"min": 1})
    device: str = "cpu"
    seed: int = 0
    # seconds a collective waits for the other processes (train --nproc / torchrun)
    timeout_s: float = field(default=300.0, metadata={"min": 1.0, "max": 86400.0})
    # early stopping: epochs without improvement of `monitor` (None: train all epochs)
    early_stopping: int | None = field(default=None, metadata={"min": 1})
    monitor: str | None = field(
        default=None, metadata=_choices("val_nll", "val_accuracy", "val_rmse", "loss")
    )
    min_delta: float = field(default=0.0, metadata={"min": 0.0})
    restore_best: bool = False  # end with the best epoch's state by `monitor`
    # prune inside training (compress.GradualPruning): this share of the weights, lowest
    # `prune_score` first, on a cubic schedule from `prune_start_epoch` (None: a quarter
    # of the epochs) to `prune_end_epoch` (None: three quarters); None: no pruning
    prune_sparsity: float | None = field(default=None, metadata={"min": 0.0, "max": 0.999})
    prune_start_epoch: int | None = field(default=None, metadata={"min": 1})
    prune_end_epoch: int | None = field(default=None, metadata={"min": 1})
    prune_score: str = field(default="auto", metadata=_choices("auto", *WEIGHT_SCORE_NAMES))


SEARCH_ROWS = 2000
"""Default `compress.search_rows`: validation rows the sparsity search evaluates."""


@dataclass
class CompressConfig:
    """How `compress` scores and prunes; "auto" picks by the model family (see app.policy)."""

    score: str = field(
        default="auto", metadata=_choices("auto", *WEIGHT_SCORE_NAMES, *UNIT_SCORE_NAMES)
    )
    rule: str = field(default="auto", metadata=_choices(*COMPRESS_RULES))
    sparsity: float = field(default=0.9, metadata={"min": 0.0, "max": 1.0})
    threshold: float | None = None
    delta: float = field(default=0.01, metadata={"min": 0.0})  # rule "search"
    # rule "search" and the rounds: every metric held within its tolerance of the trained
    # model's validation value, e.g. {accuracy: 0.005, ece: 0.01}; relative to it:
    # {ece: "1.5x"} or {ece: "50%"}; {ood_auroc_entropy: 0.02} needs `ood`
    tolerances: dict[str, Any] = field(default_factory=dict)
    # out-of-distribution images (the other image set): OOD AUROC held and reported
    ood: str | None = field(default=None, metadata=_choices(*IMAGE_SETS))
    # the validation predictive the search and the rounds hold: auto is the posterior
    # mean (one pass) when only accuracy is held, else the model's own predictive (Monte
    # Carlo for a sampling net, `validation_samples` passes: its uncertainty is what is
    # reported)
    validation_mode: str = field(default="auto", metadata=_choices(AUTO, "mean", "mc"))
    validation_samples: int = field(default=10, metadata={"min": 1})
    # validation rows the search, rule flops and the rounds score (the first ones; they run
    # many passes): raise it with a larger validation split to hold ECE beyond its floor
    search_rows: int = field(default=SEARCH_ROWS, metadata={"min": 1})
    # rule "flops": the share of the trained model's FLOPs the shrunk one may cost
    flops: float | None = field(default=None, metadata={"min": 0.0, "max": 1.0})
    k: int | None = field(default=None, metadata={"min": 0})  # rule "target_size", per layer
    alpha: float = field(default=0.05, metadata={"min": 0.0, "max": 1.0})  # rule "fdr"
    shrink: bool = True
    finetune_epochs: int = field(default=0, metadata={"min": 0})
    finetune_lr: float = field(default=1e-4, metadata={"min": 1e-12})
    # then up to `rounds` rounds of self-compression on the shrunk model: each removes
    # `round_fraction` of every hidden layer's units (`greedy`: of the one layer that costs
    # least), fine-tunes for finetune_epochs, and is kept while validation accuracy stays
    # within `round_tolerance` of the shrunk model's (and `tolerances` of the trained one's)
    rounds: int = field(default=0, metadata={"min": 0})
    round_fraction: float = field(default=0.1, metadata={"min": 0.0, "max": 1.0})
    round_tolerance: float = field(default=0.005, metadata={"min": 0.0})
    greedy: bool = False


@dataclass
class FeaturesConfig:
    """Input-feature selection: PIPs where the first layer has input gates, the input
    scales' log α where it has those (group Sparse VD, `scale_on="in"`), else norms."""

    score: str = field(default="auto", metadata=_choices(*FEATURE_SCORES))
    rule: str = field(default="auto", metadata=_choices(*FEATURE_RULES))
    k: int | None = field(default=None, metadata={"min": 0})
    alpha: float = field(default=0.05, metadata={"min": 0.0, "max": 1.0})
    threshold: float | None = field(default=None, metadata={"min": 0.0})
    # then test every excluded feature by its evidence gain (bayesprune.screen; tabular)
    screen: bool = False
    screen_epochs: int = field(default=150, metadata={"min": 1})


@dataclass
class EvaluateConfig:
    samples: int = field(default=30, metadata={"min": 1})  # Monte-Carlo forward passes
    bins: int = field(default=15, metadata={"min": 1})  # calibration bins (ECE, reliability)


RESTORE_METHODS = (AUTO, "none", *RestoreMethod.values())


@dataclass
class RestoreConfig:
    """How `restore` repairs the compressed model's uncertainty, chosen on validation data."""

    method: str = field(default="auto", metadata=_choices(*RESTORE_METHODS))
    epochs: int = field(default=2, metadata={"min": 1})  # variances / finetune
    lr: float | None = field(default=None, metadata={"min": 1e-12})  # None: the method's
    # out-of-distribution images (the other image set): OOD AUROC measured and held
    ood: str | None = field(default=None, metadata=_choices(*IMAGE_SETS))
    auroc_tolerance: float = field(default=0.02, metadata={"min": 0.0, "max": 1.0})
    # a candidate's validation ECE may also reach ece_factor × the trained model's (e.g.
    # 1.5, issue 18's target), not only the compressed model's; None: the compressed one's
    ece_factor: float | None = field(default=None, metadata={"min": 1.0})
    # candidates within tie_se paired standard errors of the lowest validation NLL are
    # tied, and the tie goes to the lowest validation ECE; 0: the lowest NLL alone
    tie_se: float = field(default=1.0, metadata={"min": 0.0})


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    compress: CompressConfig = field(default_factory=CompressConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    restore: RestoreConfig = field(default_factory=RestoreConfig)


# ---------------------------------------------------------------------------------------
# cross-field checks
# ---------------------------------------------------------------------------------------
_SET_ELSEWHERE = ("input_gates",)  # model.input_gates


def _keyword_names(fn: Callable[..., Any]) -> list[str]:
    params = inspect.signature(fn).parameters.values()
    return [p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]


def _check_model(m: ModelConfig, data: DataConfig) -> None:
    from ..nn import families, get_family

    builder = _builders()[m.builder]
    if m.builder == "mlp":
        m.kwargs.setdefault("hidden", [64])
    family = get_family(m.family)
    owners = [f for f in families() if m.builder in get_family(f).builders]
    if owners and m.family not in owners:
        raise ConfigError(
            f"model.family {m.family!r} does not fit model.builder {m.builder!r}: that builder "
            f"makes {owners[0]!r} networks; set model.family to {owners[0]!r}"
        )
    if family.builders and m.builder not in family.builders:
        raise ConfigError(
            f"model.family {m.family!r} does not fit model.builder {m.builder!r}: family "
            f"{m.family!r} builds its own networks; set model.builder to one of "
            f"{list(family.builders)}"
        )
    allowed = [n for n in _keyword_names(builder) if n != "family"]
    for key in m.kwargs:
        if key not in allowed:
            raise _unknown("model.kwargs", key, allowed)
    required = [
        p.name
        for p in inspect.signature(builder).parameters.values()
        if p.default is p.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    ]
    missing = [n for n in required if n not in m.kwargs and n not in FROM_DATA]
    if missing:
        raise ConfigError(f"model.kwargs.{missing[0]} is required by builder {m.builder!r}")
    if m.input_gates and not family.takes("input_gates"):
        with_gates = " or ".join(repr(f) for f in families() if get_family(f).takes("input_gates"))
        raise ConfigError(f"model.input_gates needs model.family {with_gates}, not {m.family!r}")
    prior_keys = family.prior_keys
    for key in m.prior:
        if key not in prior_keys:
            if not prior_keys:
                raise ConfigError(
                    f"model.prior.{key}: family {m.family!r} takes no prior options; remove "
                    "model.prior"
                )
            raise _unknown("model.prior", key, prior_keys)
    hidden = {*family.prior_layer_options, *_SET_ELSEWHERE, "options"}
    valid = [n for n in family.layer_options if n not in hidden]
    for key in m.layer:
        if key not in valid:
            raise _unknown("model.layer", key, valid)
    if "in_channels" in allowed and data.name not in IMAGE_SETS:
        raise ConfigError(
            f"model.builder {m.builder!r} is a convolutional network for images, but data "
            f"{data.name!r} is a table; use data.name one of {sorted(IMAGE_SETS)} or "
            "model.builder 'mlp'"
        )
    if data.name in IMAGE_SETS and m.builder == "mlp" and m.kwargs.get("in_features", 784) != 784:
        raise ConfigError("model.kwargs.in_features must be 784 for 28×28 images (or unset)")


def _check_data(d: DataConfig) -> None:
    if d.noise_columns and d.name not in TABULAR_SETS:
        raise ConfigError(
            f"data.noise_columns applies to the bundled tabular sets {list(TABULAR_SETS)}, "
            f"not {d.name!r}; remove it"
        )
    for key in ("n", "p", "noise"):
        if getattr(d, key) is not None and d.name not in SIMULATED_SETS:
            raise ConfigError(
                f"data.{key} applies to the simulations {list(SIMULATED_SETS)}, not "
                f"{d.name!r}; remove it"
            )


def _check_rows(d: DataConfig) -> None:
    """A limit that leaves no training row once the validation split is carved out."""
    if d.limit is None or d.val_fraction <= 0:
        return
    n_val = max(1, round(d.val_fraction * d.limit))
    if d.limit - n_val < 1:
        raise ConfigError(
            f"data.limit {d.limit} with data.val_fraction {d.val_fraction} leaves no training "
            "row; raise data.limit or lower data.val_fraction"
        )


def prune_epochs(t: TrainConfig) -> tuple[int, int]:
    """(start, end) of pruning inside training, the defaults filled in."""
    from ..compress.gradual import default_epochs

    start, end = default_epochs(t.epochs)
    start = t.prune_start_epoch or start
    return start, t.prune_end_epoch or max(start, end)


def _check_train(t: TrainConfig) -> None:
    if t.prune_sparsity is not None:
        start, end = prune_epochs(t)
        if not 1 <= start <= end <= t.epochs:
            raise ConfigError(
                f"train.prune_start_epoch {start} and prune_end_epoch {end} must satisfy "
                f"1 <= start <= end <= train.epochs ({t.epochs})"
            )
    elif t.prune_start_epoch is not None or t.prune_end_epoch is not None:
        raise ConfigError(
            "train.prune_start_epoch / prune_end_epoch schedule pruning inside training: set "
            "train.prune_sparsity (the share of weights to prune) or remove them"
        )

    try:
        device = resolve_device(t.device)  # "auto" is kept as "auto" in config.yaml
    except (RuntimeError, ValueError) as err:
        raise ConfigError(
            f"train.device {t.device!r} is not a device torch knows ({err}); use 'cpu', "
            "'cuda', 'cuda:0' or 'auto'"
        ) from None
    if device.type not in ("cpu", "cuda", "mps", "xpu"):
        raise ConfigError(f"train.device {t.device!r}: use 'cpu', 'cuda', 'cuda:N' or 'auto'")
    try:
        kl_stages(t.kl_weight, t.epochs)
    except ValueError as err:
        raise ConfigError(f"train.{err}") from None
    for suffix, factor in t.lr_multipliers.items():
        number = isinstance(factor, int | float) and not isinstance(factor, bool)
        if not (number and 0 < factor < math.inf):
            raise ConfigError(
                f"train.lr_multipliers.{suffix} must be a number > 0 (a factor of train.lr "
                f"for the parameters whose names end in {suffix!r}), got {factor!r}"
            )


COMPRESS_OOD_METRICS = ("ood_auroc_entropy", "ood_auroc_mi")  # MI needs mode mc


def _check_compress(c: CompressConfig) -> None:
    from ..compress.tolerances import parse_tolerance
    from ..evaluation import CLASSIFICATION_METRICS

    held = [*CLASSIFICATION_METRICS, *COMPRESS_OOD_METRICS]
    for name, value in c.tolerances.items():
        if name == "ood_auroc_mi" and c.validation_mode == "mean":
            raise ConfigError(
                "compress.tolerances.ood_auroc_mi: compress.validation_mode 'mean' scores one "
                "posterior-mean pass, which has no mutual information; set it to 'mc' (or "
                "'auto') or hold ood_auroc_entropy instead"
            )
        if name not in held:
            raise _unknown("compress.tolerances", str(name), held)
        if isinstance(value, str):  # relative: "50%" or "1.5x" of the unpruned model's
            try:
                parse_tolerance(str(name), value)
            except ValueError as err:
                raise ConfigError(f"compress.tolerances.{name}: {err}") from None
        elif isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise ConfigError(
                f"compress.tolerances.{name} must be a number >= 0 (the allowed worsening), "
                f"or relative to the unpruned model's value, 'P%' or 'Fx', got {value!r}"
            )
    for name in (n for n in COMPRESS_OOD_METRICS if n in c.tolerances and c.ood is None):
        raise ConfigError(
            f"compress.tolerances.{name} needs out-of-distribution images: set compress.ood "
            f"to the other image set ({' or '.join(IMAGE_SETS)})"
        )
    if c.tolerances and c.rule not in ("search", AUTO) and not c.rounds:
        raise ConfigError(
            "compress.tolerances hold compress.rule 'search' and compress.rounds; set one of "
            "them or remove the tolerances"
        )
    if c.rule in PIP_RULE_NAMES and c.score not in ("auto", "pip"):
        raise ConfigError(
            f"compress.rule {c.rule!r} ranks posterior inclusion probabilities: set "
            "compress.score to 'pip' (or 'auto')"
        )
    if c.rule == "target_size" and c.k is None:
        raise ConfigError("compress.rule 'target_size' needs compress.k (units kept per layer)")
    if c.rounds and not c.shrink:
        raise ConfigError(
            "compress.rounds removes units from the shrunk model: set compress.shrink: true "
            "(or compress.rounds: 0)"
        )
    if c.rounds and not 0.0 < c.round_fraction < 1.0:
        raise ConfigError(
            f"compress.round_fraction must be in (0, 1) (a share of each layer's units), "
            f"got {c.round_fraction}"
        )
    if c.rule == "threshold" and c.threshold is None:
        raise ConfigError("compress.rule 'threshold' needs compress.threshold")
    if c.rule == FLOPS_RULE:
        if c.flops is None or c.flops <= 0:
            raise ConfigError(
                "compress.rule 'flops' needs compress.flops, the share of the trained model's "
                f"FLOPs to keep, in (0, 1] (e.g. 0.5), got {c.flops}"
            )
        if c.score != AUTO:
            raise ConfigError(
                "compress.rule 'flops' ranks units by their activation scores (spread x "
                f"outgoing norm): set compress.score to 'auto', got {c.score!r}"
            )
        if not c.shrink:
            raise ConfigError(
                "compress.rule 'flops' counts the FLOPs of the shrunk model: set "
                "compress.shrink: true"
            )
    elif c.flops is not None:
        raise ConfigError(
            f"compress.flops is the budget of compress.rule 'flops', and the rule is {c.rule!r}: "
            "set compress.rule: flops, or remove compress.flops"
        )


def _check_features(f: FeaturesConfig) -> None:
    if f.rule == "target_size" and f.k is None:
        raise ConfigError("features.rule 'target_size' needs features.k (features kept)")
    if f.rule in ("median", "expected_size", "fdr") and f.score == "norm":
        raise ConfigError(f"features.rule {f.rule!r} needs PIPs: set features.score to 'pip'")


def _check_ood(section: str, ood: str | None, data: DataConfig) -> None:
    """`ood` names the other image set of an image run (`section`: where it was set)."""
    if ood is None:
        return
    if data.name not in IMAGE_SETS:
        raise ConfigError(
            f"{section}.ood names out-of-distribution images for an image run, and data.name "
            f"{data.name!r} is not one of {list(IMAGE_SETS)}; remove {section}.ood"
        )
    if ood == data.name:
        other = next(n for n in IMAGE_SETS if n != data.name)
        raise ConfigError(
            f"{section}.ood {ood!r} is the run's own data set; name the other one ({other!r})"
        )


def validate(config: RunConfig) -> RunConfig:
    """Cross-field checks (the per-key ones ran while parsing); returns `config`."""
    _check_data(config.data)
    _check_rows(config.data)
    _check_train(config.train)
    _check_model(config.model, config.data)
    _check_compress(config.compress)
    _check_features(config.features)
    if config.train.prune_sparsity is not None:
        from .policy import prune_score

        prune_score(config)  # a family that ranks whole units needs a weight score named
    _check_ood("compress", config.compress.ood, config.data)
    _check_ood("restore", config.restore.ood, config.data)
    return config


# ---------------------------------------------------------------------------------------
# public entry points
# ---------------------------------------------------------------------------------------
def parse_config(raw: dict[str, Any] | None) -> RunConfig:
    """A validated `RunConfig` from a plain dict (as YAML loads it)."""
    return validate(_section(RunConfig, raw, ""))


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """Read and validate a YAML run config; `overrides` are KEY=VALUE strings put into
    it first (`app.overrides`, the CLI's `--set`), validated with the rest."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"no config file at {path}; start from an example: `bayesprune config list`, then "
            "`bayesprune config show NAME > my.yaml` (every key: docs/cli.md)"
        )
    try:
        raw = load_strict(path.read_text())
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not UTF-8 text ({err.reason}); save it as UTF-8") from err
    except YamlRefused as err:
        raise ConfigError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        shown = " ".join(str(err).split())
        raise ConfigError(f"{path} is not valid YAML: {shown}") from err
    except RecursionError as err:
        raise ConfigError(f"{path} nests too deeply to be a run config") from err
    if overrides:
        raw = apply_overrides(raw, overrides)
    try:
        return parse_config(raw)
    except ConfigError as err:
        named = [k for k in override_keys(overrides) if k in str(err)]
        given = f" (given by --set {named[0]})" if named else ""
        raise ConfigError(f"{path}: {err}{given}") from None


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def with_overrides(config: RunConfig, section: str, overrides: dict[str, Any]) -> RunConfig:
    """`config` with some keys of one section replaced (validated like a config file)."""
    raw = config_to_dict(config)
    raw[section].update({k: v for k, v in overrides.items() if v is not None})
    return parse_config(raw)


def dump_config(config: RunConfig) -> str:
    """The config as YAML (every key, defaults included), section order kept."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=None)
