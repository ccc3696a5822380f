"""How big a network is: parameters, weights, non-zero weights, FLOPs and bytes.

A Bayesian network is measured as the deterministic network it represents (its
posterior means, after masks), because that is what gets deployed; only
`parameters` counts what is learned (a Gaussian layer learns two numbers per weight).
Weights are those of connection layers (Linear, Conv, and every variational layer);
normalisation scales and biases are not weights but do count in parameters and bytes.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from ..example_inputs import Example, example_call, taking_by_position
from ..nn.attention import MultiheadAttention
from ..nn.base import VariationalLayer, evaluation_pass

_CONNECTIONS = (nn.Linear, nn.modules.conv._ConvNd)


@dataclass(frozen=True)
class LayerSize:
    name: str  # module name in the model ("" for a model that is a single layer)
    kind: str  # the layer's class name
    weights: int
    nonzero_weights: int
    flops: int | None  # None when no input shape was given: unknown, not 0


@dataclass(frozen=True)
class ModelSize:
    """Size of a network; see the module docstring for what each figure counts."""

    parameters: int
    weights: int
    nonzero_weights: int
    flops: int | None  # None: unknown (no input shape given), never a silent 0
    bytes: int

    def as_dict(self) -> dict[str, int | None]:
        return asdict(self)

    def describe(self) -> str:
        """One line for a report; FLOPs say "unknown" when no input shape was given."""
        flops = "unknown (no input shape)" if self.flops is None else f"{self.flops:,}"
        return (
            f"{self.parameters:,} parameters, {self.nonzero_weights:,} of {self.weights:,} "
            f"weights non-zero, {flops} FLOPs, {self.bytes:,} bytes"
        )


def _weight_layers(model: nn.Module) -> list[tuple[str, nn.Module, Tensor]]:
    """(name, layer, weight of the deterministic net) per connection layer, in module order."""
    return [(name, layer, weight) for name, layer, weight, _ in _walk(model)[0]]


def _walk(
    model: nn.Module,
) -> tuple[list[tuple[str, nn.Module, Tensor, Tensor | None]], int]:
    """Connection layers as (name, layer, weight, bias) of the deterministic net, and the
    number of other stored floats (parameters and floating buffers of all other modules).

    A variational layer is read through its posterior and not entered, so the plain
    modules it may hold inside are not counted twice. A plain layer counts its `weight`
    and `bias` only (not e.g. torch.nn.utils.prune's weight_orig / weight_mask).
    """
    found: list[tuple[str, nn.Module, Tensor, Tensor | None]] = []
    other = 0

    def walk(prefix: str, module: nn.Module) -> None:
        nonlocal other
        if isinstance(module, VariationalLayer):
            post = module.posterior()
            found.append((prefix, module, post.weight_mean, post.bias_mean))
            return
        if isinstance(module, _CONNECTIONS):
            bias = module.bias.detach() if module.bias is not None else None
            found.append((prefix, module, module.weight.detach(), bias))
        else:
            other += sum(p.numel() for p in module.parameters(recurse=False))
            other += sum(b.numel() for b in module.buffers(recurse=False) if b.is_floating_point())
        for name, child in module.named_children():
            walk(f"{prefix}.{name}" if prefix else name, child)

    walk("", model)
    return found, other


def _flops_by_layer(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """2 × multiply-adds of each connection layer on one example, by layer name, from a
    dummy pass of zeros of `input_shape` (`_flops_on`)."""
    reference = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = reference.dtype if reference is not None else torch.float32
    device = reference.device if reference is not None else torch.device("cpu")
    try:
        return _flops_on(model, (torch.zeros(1, *input_shape, dtype=dtype, device=device),))
    except RuntimeError as err:
        raise ValueError(
            f"a dummy input of shape (1, *{tuple(input_shape)}) does not fit the model ({err}); "
            "pass input_shape as the shape of ONE example, without the batch dimension"
        ) from err


def _flops_on(model: nn.Module, inputs: tuple[Tensor, ...]) -> dict[str, int]:
    """2 × multiply-adds of each connection layer in `model(*inputs)` (one example).

    The pass runs with every variational layer at its posterior mean; a layer whose
    output is not a tensor (a moment layer's (mean, cov)) is sized by its first
    element, the mean, which has the deterministic layer's shape.
    """
    layers = _weight_layers(model)
    flops: dict[str, int] = dict.fromkeys((name for name, _, _ in layers), 0)

    def hook(name: str, weight: Tensor):
        per_element = weight[0].numel()  # (in / groups) × kernel: one output's multiply-adds

        def count(module: nn.Module, inputs: tuple[Tensor, ...], output: object) -> None:
            out = output if isinstance(output, Tensor) else output[0]  # type: ignore[index]
            if isinstance(module, nn.modules.conv._ConvTransposeNd):
                # each input element meets (out / groups) × kernel weights (incl. cropped ones)
                flops[name] += 2 * inputs[0].numel() * per_element
            else:
                flops[name] += 2 * out.numel() * per_element

        return count

    fused = {
        f"{n}.out_proj" for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)
    }
    handles = [
        layer.register_forward_hook(hook(name, w)) for name, layer, w in layers if name not in fused
    ]
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention | MultiheadAttention):
            flops[name] = 0

            def attend(
                module: nn.Module, args: tuple, kwargs: dict, _out: object, name=name
            ) -> None:
                flops[name] += _attention_flops(module, args, kwargs)

            handles.append(module.register_forward_hook(attend, with_kwargs=True))
    with evaluation_pass(model, handles):
        model(*inputs)
    return flops


def _attention_flops(module: nn.Module, args: tuple, kwargs: dict) -> int:
    """2 × multiply-adds of attention itself (q·kᵀ and weights·v) and, for torch's fused
    nn.MultiheadAttention, of its projections (bayesprune's MultiheadAttention has its
    projections as layers of their own, counted by their hooks)."""
    names = ("query", "key", "value")
    query, key, value = (args[i] if len(args) > i else kwargs[n] for i, n in enumerate(names))
    first = getattr(module, "batch_first", False) and key.dim() == 3
    sources = key.shape[1] if first else key.shape[0]
    width = module.embed_dim
    queries = query.numel() // width  # batch × targets
    if isinstance(module, MultiheadAttention):
        return 2 * 2 * queries * sources * int(module.q_proj.out_features)
    keys, values = key.numel() // module.kdim, value.numel() // module.vdim
    projections = queries * width * width * 2 + keys * width * module.kdim
    projections += values * width * module.vdim
    return 2 * (projections + 2 * queries * sources * width)


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass of one example through the deterministic network.

    Convention: 2 × the multiply-adds of every Linear and Conv layer and of attention
    (its projections, q·kᵀ and weights·v, under the attention module's name); bias additions,
    activations, pooling and normalisation are not counted (they are small and
    conventions differ). Dense cost: zeros left by masks still count; shrink the
    network to make them go away. A Bayesian layer costs what its posterior-mean
    twin costs (sampling doubles the work, moment propagation much more).
    """
    return sum(_flops_by_layer(model, tuple(input_shape)).values())


def example_flops(model: nn.Module, example_inputs: Example) -> int:
    """`count_flops` of one example of a real batch: `model(*example_inputs)` (or
    `model(**example_inputs)` for a mapping: a tokenizer's output) on the first row of
    each tensor, for models whose input is not one tensor of a fixed shape (several
    arguments, token sequences) or whose cost depends on the values."""
    call = example_call(example_inputs)
    first = tuple(t[:1] if isinstance(t, Tensor) else t for t in call.inputs)
    with taking_by_position(model, call):
        return sum(_flops_on(model, first).values())


def layer_sizes(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> list[LayerSize]:
    """Weights, non-zero weights and FLOPs (if `input_shape`) of each connection layer."""
    flops = _flops_by_layer(model, tuple(input_shape)) if input_shape is not None else {}
    return [
        LayerSize(
            name,
            type(layer).__name__,
            weight.numel(),
            int(torch.count_nonzero(weight)),
            flops.get(name) if input_shape is not None else None,
        )
        for name, layer, weight in _weight_layers(model)
    ]


def model_size(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> ModelSize:
    """Parameters, weights, non-zero weights (after masks), FLOPs and bytes of `model`.

    `input_shape` is one example's shape without the batch dimension, e.g. (1, 28, 28);
    without it FLOPs are None (unknown: a conv net's cost depends on the image size,
    so no figure is better than a wrong one). Bytes: dense float32 storage of the deterministic
    network: weights and biases of connection layers plus the parameters and
    floating-point buffers of every other module (e.g. batch-norm statistics).
    """
    layers, other = _walk(model)
    weights = [w for _, _, w, _ in layers]
    biases = sum(b.numel() for _, _, _, b in layers if b is not None)
    return ModelSize(
        parameters=sum(p.numel() for p in model.parameters()),
        weights=sum(w.numel() for w in weights),
        nonzero_weights=sum(int(torch.count_nonzero(w)) for w in weights),
        flops=count_flops(model, input_shape) if input_shape is not None else None,
        bytes=4 * (sum(w.numel() for w in weights) + biases + other),
    )


def layer_widths(model: nn.Module) -> tuple[int, ...]:
    """Widths from inputs to outputs: the first connection layer's inputs, then every
    connection layer's outputs (channels for a convolution), e.g. (784, 300, 100, 10).

    Read from the deterministic network's weights, so masked units still count: shrink
    the network first to see the widths it really has.
    """
    weights = [weight for _, _, weight in _weight_layers(model)]
    if not weights:
        raise ValueError("the model has no connection layer (Linear, Conv or variational)")
    return (weights[0].shape[1], *(w.shape[0] for w in weights))


def dense_weight_count(widths: Sequence[int]) -> int:
    """Weights of a fully connected chain with these widths (Σ width_k · width_k+1).

    The size of an architecture before any training, e.g. 311-86-14-10 → 28,218; with
    `layer_widths` it compares a shrunk MLP against the dense one.
    """
    return sum(a * b for a, b in itertools.pairwise(widths))
