"""Parameter-free moment layers: element-wise activations, max-pool, flatten, softmax.

Each accepts `Moments` (and returns `Moments`) or a plain tensor (and then acts
like its torch twin), so the deterministic export of a moment network — its
parametric layers swapped for nn.Conv2d / nn.Linear — runs unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..base import SerializableLayer
from .core import BLOCK, DIAG, FACTORED, FULL, Factored, Moments, channels_of, layout, symmetrize


class _Elementwise(SerializableLayer):
    """f applied entry by entry, first-order Taylor: mean f(m), covariance Σ ⊙ J Jᵀ, J = f'(m).

    The mean is f(m), not E[f(x)]: the approximation of the eVI papers, accurate
    when the input variance is small next to the curvature of f.
    """

    channelwise = True

    def f(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def df(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor | Moments) -> Tensor | Moments:
        if not isinstance(x, Moments):
            return self.f(x)
        kind = layout(x)
        mean, cov = x
        j = self.df(mean)
        if kind == DIAG:
            return Moments(self.f(mean), cov * j.square())
        if kind == FULL:
            return Moments(self.f(mean), cov * (j.unsqueeze(-1) * j.unsqueeze(-2)))
        jb = j.reshape(mean.shape[0], channels_of(x), -1)
        if kind == BLOCK:
            return Moments(self.f(mean), cov * (jb.unsqueeze(-1) * jb.unsqueeze(-2)))
        gain = jb if cov.gain is None else cov.gain * jb
        return Moments(self.f(mean), Factored(cov.factor, gain, cov.scale))


class EVIReLU(_Elementwise):
    """ReLU; f'(m) = 1 where m > 0, else 0."""

    def f(self, x: Tensor) -> Tensor:
        return F.relu(x)

    def df(self, x: Tensor) -> Tensor:
        return (x > 0).to(x.dtype)

    def torch_twin(self) -> nn.Module:
        return nn.ReLU()


class EVIELU(_Elementwise):
    """ELU(alpha); f'(m) = 1 where m > 0, else alpha·exp(m)."""

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = float(alpha)

    def f(self, x: Tensor) -> Tensor:
        return F.elu(x, self.alpha)

    def df(self, x: Tensor) -> Tensor:
        # clamp so the unused branch cannot overflow (and poison gradients with inf·0)
        return torch.where(x > 0, torch.ones_like(x), self.alpha * torch.exp(x.clamp_max(0)))

    def torch_twin(self) -> nn.Module:
        return nn.ELU(self.alpha)

    def config(self) -> dict[str, float]:
        return {"alpha": self.alpha}

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class EVITanh(_Elementwise):
    """tanh; f'(m) = 1 − tanh²(m)."""

    def f(self, x: Tensor) -> Tensor:
        return torch.tanh(x)

    def df(self, x: Tensor) -> Tensor:
        return 1 - torch.tanh(x).square()

    def torch_twin(self) -> nn.Module:
        return nn.Tanh()


class EVISigmoid(_Elementwise):
    """Logistic sigmoid; f'(m) = s(m)(1 − s(m))."""

    def f(self, x: Tensor) -> Tensor:
        return torch.sigmoid(x)

    def df(self, x: Tensor) -> Tensor:
        s = torch.sigmoid(x)
        return s * (1 - s)

    def torch_twin(self) -> nn.Module:
        return nn.Sigmoid()


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": EVIReLU,
    "elu": EVIELU,
    "tanh": EVITanh,
    "sigmoid": EVISigmoid,
}


def make_activation(name: str) -> nn.Module:
    """A moment activation by name ('relu', 'elu', 'tanh', 'sigmoid')."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown eVI activation {name!r}; valid: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class EVIMaxPool2d(SerializableLayer):
    """Max-pool whose winners are picked by the mean; the covariance keeps those rows/columns.

    For a factored covariance only the factor rows of the winners are gathered,
    so a pooled first-conv map costs (pooled positions × patch size) per kernel.
    """

    channelwise = True

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
    ) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding = padding

    def forward(self, x: Tensor | Moments) -> Tensor | Moments:
        if not isinstance(x, Moments):
            return F.max_pool2d(x, self.kernel_size, self.stride, self.padding)
        kind = layout(x)
        mean, cov = x
        if mean.ndim != 4:
            raise ValueError(
                f"EVIMaxPool2d needs a (B, C, H, W) feature map, got mean {tuple(mean.shape)}"
            )
        out, idx = F.max_pool2d(
            mean, self.kernel_size, self.stride, self.padding, return_indices=True
        )
        q = idx.flatten(2)  # (B, C, Q): winners' positions in the H·W map
        if kind == DIAG:
            return Moments(out, cov.flatten(2).gather(2, q).view_as(out))
        if kind == BLOCK:
            positions = cov.shape[-1]
            rows = cov.gather(2, q.unsqueeze(-1).expand(-1, -1, -1, positions))
            return Moments(out, rows.gather(3, q.unsqueeze(2).expand(-1, -1, q.shape[2], -1)))
        if kind == FACTORED:
            return Moments(out, cov.gather_rows(q))
        raise ValueError(f"EVIMaxPool2d cannot take a {kind!r} covariance of a feature map")

    def torch_twin(self) -> nn.Module:
        return nn.MaxPool2d(self.kernel_size, self.stride, self.padding)

    def config(self) -> dict[str, Any]:
        return {"kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding}

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class EVIFlatten(SerializableLayer):
    """(B, C, H, W) → (B, C·H·W) in torch's channel-major order, for mean and covariance alike.

    Block and factored covariances are already indexed (channel, h·W + w), the
    order of the flattened mean, so they pass through untouched.
    """

    channelwise = True
    flattens: ClassVar[bool] = True  # shrink_graph: channel-major, like nn.Flatten

    def forward(self, x: Tensor | Moments) -> Tensor | Moments:
        if not isinstance(x, Moments):
            return x.flatten(1)
        kind = layout(x)
        mean, cov = x
        if kind == DIAG:
            return Moments(mean.flatten(1), cov.flatten(1))
        return Moments(mean.flatten(1), cov)

    def torch_twin(self) -> nn.Module:
        return nn.Flatten()


class EVISoftmax(SerializableLayer):
    """Softmax over the last dimension: mean p = softmax(m), covariance J Σ Jᵀ, J = diag(p) − p pᵀ.

    The output covariance is always full (B, K, K); a diagonal input becomes
    J diag(v) J. Plain tensors give plain probabilities.
    """

    def forward(self, x: Tensor | Moments) -> Tensor | Moments:
        if not isinstance(x, Moments):
            return x.softmax(-1)
        kind = layout(x)
        mean, cov = x
        if mean.ndim != 2:
            raise ValueError(f"EVISoftmax needs (B, K) logits, got mean {tuple(mean.shape)}")
        p = mean.softmax(-1)
        jac = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)  # symmetric
        if kind == DIAG:
            out = (jac * cov.unsqueeze(-2)) @ jac
        else:
            full = cov if kind == FULL else x.dense_covariance()
            out = jac @ full @ jac
        return Moments(p, symmetrize(out))

    def torch_twin(self) -> nn.Module:
        return nn.Softmax(-1)


def to_torch(model: nn.Module) -> nn.Module:
    """A plain torch copy of a moment network (same output as the moment net's mean).

    The same as `bayesprune.nn.to_deterministic`, which swaps every moment op for its
    torch twin; kept under this name for eVI users.
    """
    from ..family import to_deterministic  # nn.family imports nothing from here

    return to_deterministic(model)
