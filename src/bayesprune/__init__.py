"""bayesprune: Bayesian neural networks that let the posterior decide what to delete."""

from . import compress, metrics, nn
from .calibration import TemperatureScaled, fit_temperature, temperature_scale
from .evaluation import EvalMode, evaluate, scorer
from .finetuning import finetune, reestimate_variances
from .likelihoods import Categorical, Gaussian
from .models import build, lenet5_caffe, lenet_300_100, mlp
from .nn import convert, kl, to_deterministic
from .predict import ClassificationPrediction, RegressionPrediction, predict
from .restore import GateRule, RestoreMethod, restore_uncertainty
from .restore_choice import RestoreChoice, choose_restoration
from .train import History, fit


def _version() -> str:
    """The installed distribution's version: pyproject.toml is its one source."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bayesprune")
    except PackageNotFoundError:  # a source checkout on PYTHONPATH, never installed
        return "0+unknown"


__version__ = _version()

__all__ = [
    "Categorical",
    "ClassificationPrediction",
    "EvalMode",
    "GateRule",
    "Gaussian",
    "History",
    "RegressionPrediction",
    "RestoreChoice",
    "RestoreMethod",
    "TemperatureScaled",
    "__version__",
    "build",
    "choose_restoration",
    "compress",
    "convert",
    "evaluate",
    "finetune",
    "fit",
    "fit_temperature",
    "kl",
    "lenet5_caffe",
    "lenet_300_100",
    "metrics",
    "mlp",
    "nn",
    "predict",
    "reestimate_variances",
    "restore_uncertainty",
    "scorer",
    "temperature_scale",
    "to_deterministic",
]
