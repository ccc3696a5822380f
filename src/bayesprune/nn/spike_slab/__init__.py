"""Spike-and-slab variational layers: inclusion probabilities for nodes, features and edges.

Model (node level, Jantre et al. 2021). Unit j of a layer has a gate z_j ~ Bern(λ)
that multiplies all its incoming weights and its bias; every weight has a slab
w ~ N(0, s²). With `input_gates=True` each input feature i has its own gate
z_i ~ Bern(λ_in) on its outgoing weights (feature selection). The effective weight
of edge (j, i) is z_j z_i w_ji and the effective bias z_j b_j.

Variational family. q(z_j) = Bern(γ_j) with γ = sigmoid(logit), q(w | gates on) =
N(μ, σ²) with σ = softplus(ρ), and q(w | a gate off) = p(w): a weight whose gate is
off is unidentified, so its posterior is its prior. The KL of the joint (z, w)
posterior is then closed form and summed (never averaged) over the layer:

    Σ_j KL(Bern(γ_j) ‖ Bern(λ)) + Σ_i KL(Bern(γ_i) ‖ Bern(λ_in))
      + Σ_j γ_j [ Σ_i γ_i KL(N(μ_ji, σ_ji²) ‖ N(0, s²)) + KL(N(μ_bj, σ_bj²) ‖ N(0, s²)) ]

(without input gates γ_i ≡ 1, which is the per-node formula of the design notes).
Edge level (Bai, Song, Cheng 2020): one gate per weight and per bias, the same KL
with γ per edge.

Training forward pass (`gate_estimator`). "marginal" (default): the pre-activation is
sampled from a Gaussian with the exact mean and variance of gates × slabs given the
input (per weight E[z w] = γ μ, Var = γ σ² + γ (1 − γ) μ²; a node gate maps a unit's
(m, v) to (γ m, γ v + γ (1 − γ) m²)), so the gates' gradients are analytic: a unit the
likelihood needs pays in predictive noise when its gate becomes doubtful. The sampling
estimators draw gates: "straight_through" (`straight_through_bernoulli`: the value is
an exact Bernoulli(γ) draw, the gradient that of the binary Concrete relaxation at
`temperature`) and "relaxed" (the Concrete sample itself). The straight-through
gradient of the likelihood is dL/dz at the drawn z = 1, which is about 0 once the
slabs fit (a unit's scale is a symmetry of its weights), so under the full KL it
switches whole layers off (measured in docs/spike_slab.md); it is kept as an option.
Given the gates the weights are Gaussian, so the pre-activation is sampled by the
Gaussian family's local reparameterisation (`_GaussianLayer._lrt`). Sampled node gates
are drawn per example (`gate_sampling="local"`, default: each example gets its own
draw, which keeps every example's marginal exact and lowers gradient variance) or once
per call (`"shared"`). Sampled edge gates are drawn once per call: per-example edge
gates would cost batch × out × in.

Posterior-mean mode (`sample=False`) and `to_deterministic` use the posterior means
of the slabs with gates set by `mean_gates`: "median" (default) = 1[γ > 0.5], the
median-probability model (Barbieri & Berger 2004), so the mean-mode network is
exactly the network that pruning by the default rule produces; "expected" = γ.

Compression interface. `posterior()` gives the exact posterior mean and standard
deviation of the *effective* weights (E[z w] = γ μ; Var = γ σ² + γ (1−γ) μ²), so
norm- and SNR-based scores see gated-off units as small. PIPs: `unit_inclusion` is
γ_j (node level) or 1 − Π(1 − φ) over the unit's incoming edges and its bias gate
(edge level); `input_inclusion` is γ_i (input gates) or 1 − Π(1 − φ) over the
input's outgoing edges (edge level).

Prior inclusion λ. Set per layer with `prior_inclusion`; the default is
`default_prior_inclusion(m) = 1 / (m + 1)` for a layer with m gates of that kind.
It is the multiplicity-adjusting "one unit expected a priori" choice: the prior
log-odds against a unit is log m, so a unit is kept only if it improves the log
likelihood by about log m nats beyond its slab's KL: the risk-inflation penalty of
Foster & George (1994). It shrinks with layer size as the theory of Bai et al. and
Jantre et al. requires (their published settings are of the same order:
Jantre ≈ 1.5e-3 / 2.3e-3 for 784-400-400-10, where this gives 2.5e-3).

Where the gates go. `convert(model, "spike_slab")` (and every builder, e.g.
`models.mlp(..., family="spike_slab", input_gates=True)`) gates every unit but the
outputs of the last layer (an output cannot be pruned; `output_gates=True` gates
them too) and, with `input_gates=True`, the inputs of the first layer (later
layers' inputs are already gated as the previous layer's outputs). The edge level
gates every weight; its input PIPs are aggregated from the edges.

Modules: `core` (maths, `SpikeSlabOptions`, the shared base), `node`, `edge`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..base import Role
from ..family import Family, conv_factories, keyword_options, plain_layer_args, register_family
from .core import (
    PIN,
    GateEstimator,
    GateSampling,
    MeanGates,
    SpikeSlabOptions,
    bernoulli_kl,
    default_prior_inclusion,
    normal_kl,
    straight_through_bernoulli,
)
from .edge import (
    SpikeSlabEdgeConv1d,
    SpikeSlabEdgeConv2d,
    SpikeSlabEdgeConv3d,
    SpikeSlabEdgeLinear,
)
from .node import SpikeSlabConv1d, SpikeSlabConv2d, SpikeSlabConv3d, SpikeSlabLinear

__all__ = [
    "PIN",
    "GateEstimator",
    "GateSampling",
    "MeanGates",
    "SpikeSlabConv1d",
    "SpikeSlabConv2d",
    "SpikeSlabConv3d",
    "SpikeSlabEdgeConv1d",
    "SpikeSlabEdgeConv2d",
    "SpikeSlabEdgeConv3d",
    "SpikeSlabEdgeLinear",
    "SpikeSlabLinear",
    "SpikeSlabOptions",
    "bernoulli_kl",
    "default_prior_inclusion",
    "normal_kl",
    "straight_through_bernoulli",
]

_PRIOR_KEYS = ("slab_scale", "prior_inclusion", "input_prior_inclusion")


def _node_factory(cls: type[nn.Module]) -> Any:
    """Gates on every unit but the last layer's outputs; input gates on the first layer."""

    def build(plain: nn.Module, role: Role, options: dict[str, Any]) -> nn.Module:
        input_gates = bool(options.pop("input_gates", False)) and role.first
        output_gates = bool(options.pop("output_gates", False))
        if not input_gates:
            options.pop("input_prior_inclusion", None)
        return cls(
            **plain_layer_args(plain),
            node_gates=output_gates or not role.last,
            input_gates=input_gates,
            **options,
        )

    return build


def _edge_factory(cls: type[nn.Module]) -> Any:
    def build(plain: nn.Module, role: Role, options: dict[str, Any]) -> nn.Module:
        return cls(**plain_layer_args(plain), **options)

    return build


_OPTIONS = SpikeSlabOptions.names()
register_family(
    Family(
        "spike_slab",
        factories={
            nn.Linear: _node_factory(SpikeSlabLinear),
            **conv_factories(_node_factory, SpikeSlabConv1d, SpikeSlabConv2d, SpikeSlabConv3d),
        },
        layer_options=tuple(
            sorted(
                {*_OPTIONS, "options", "input_gates", "output_gates"}
                | set(keyword_options(SpikeSlabLinear, exclude=("node_gates",)))
            )
        ),
        prior_keys=_PRIOR_KEYS,
        prior_options=dict,
        prior_layer_options=_PRIOR_KEYS,
        default_score="pip",
        gated=True,
        description="spike-and-slab, one gate per unit (and per input feature)",
    )
)
register_family(
    Family(
        "spike_slab_edge",
        factories={
            nn.Linear: _edge_factory(SpikeSlabEdgeLinear),
            **conv_factories(
                _edge_factory, SpikeSlabEdgeConv1d, SpikeSlabEdgeConv2d, SpikeSlabEdgeConv3d
            ),
        },
        layer_options=tuple(
            sorted({o for o in _OPTIONS if o != "gate_sampling"} | {"options", "prior_inclusion"})
        ),
        prior_keys=("slab_scale", "prior_inclusion"),
        prior_options=dict,
        prior_layer_options=("slab_scale", "prior_inclusion"),
        default_score="pip",
        gated=True,
        description="spike-and-slab, one gate per weight (edge PIPs aggregated per unit)",
    )
)
