"""Moment propagation (extended variational inference, eVI): layers, loss and networks.

A moment network passes `Moments(mean, cov)` from layer to layer instead of
samples; one deterministic pass gives the predictive mean and covariance.
See `core` for the covariance layouts, `layers` for the variational family and
its two regularisers, `merge` for residual sums and concatenations of branches,
`likelihood` for the loss.
"""

from ..family import Family, keyword_options, register_family
from .builders import evi_cnn, evi_deep_cnn
from .core import (
    LAYOUTS,
    Factored,
    Moments,
    as_moments,
    block_covariance,
    dense_covariance,
    layout,
    to_diagonal,
    variance,
)
from .layers import (
    COVARIANCES,
    REGULARIZERS,
    Covariance,
    EVIConv2d,
    EVILinear,
    Regularizer,
    log_softplus,
)
from .likelihood import EVILikelihood, cap_variance, predictive_variance
from .merge import EVIAdd, EVICat
from .ops import (
    ACTIVATIONS,
    EVIELU,
    EVIFlatten,
    EVIMaxPool2d,
    EVIReLU,
    EVISigmoid,
    EVISoftmax,
    EVITanh,
    make_activation,
    to_torch,
)

__all__ = [
    "ACTIVATIONS",
    "COVARIANCES",
    "EVIELU",
    "LAYOUTS",
    "REGULARIZERS",
    "Covariance",
    "EVIAdd",
    "EVICat",
    "EVIConv2d",
    "EVIFlatten",
    "EVILikelihood",
    "EVILinear",
    "EVIMaxPool2d",
    "EVIReLU",
    "EVISigmoid",
    "EVISoftmax",
    "EVITanh",
    "Factored",
    "Moments",
    "Regularizer",
    "as_moments",
    "block_covariance",
    "cap_variance",
    "dense_covariance",
    "evi_cnn",
    "evi_deep_cnn",
    "layout",
    "log_softplus",
    "make_activation",
    "predictive_variance",
    "to_diagonal",
    "to_torch",
    "variance",
]

register_family(
    Family(
        "evi",
        layer_options=keyword_options(EVILinear, EVIConv2d),
        default_score="norm",
        default_likelihood="evi",
        deterministic_predictive=True,
        builders=("evi_cnn", "evi_deep_cnn"),
        description="extended variational inference: moments propagated, no sampling",
    )
)
