"""RMSNorm over the residual stream (Llama's, T5's, torch's `nn.RMSNorm`): a channel goes
through it where it is exactly 0 and its scale is 0, and it becomes a
`ZeroCountingRMSNorm` whose mean square counts the removed zeros."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import bayesprune as bp
from bayesprune.compress import (
    ZeroCountingRMSNorm,
    activation_scores,
    keep_units,
    load_shrunk,
    save_shrunk,
)
from bayesprune.compress.graph import shrink_graph
from bayesprune.compress.rms_norm import is_rms_norm, rms_norm_offset

WIDTH, VOCAB = 12, 30


class WrittenRMSNorm(nn.Module):
    """Hugging Face's LlamaRMSNorm: in float32, ε named `variance_epsilon`."""

    def __init__(self, width: int, eps: float = 1e-6, scale: str = "w") -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.variance_epsilon, self.scale = eps, scale

    def forward(self, x: Tensor) -> Tensor:
        dtype, x = x.dtype, x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        scale = {"w": self.weight, "1+w": 1.0 + self.weight, "2w": 2 * self.weight}
        return scale[self.scale] * x.to(dtype)  # Gemma's is 1 + w


class PreNormDecoder(nn.Module):
    """Llama's shape, two blocks: norm → gated MLP → residual add; a final norm, a head."""

    def __init__(self, norm: str = "written") -> None:
        super().__init__()

        def make() -> nn.Module:
            if norm == "torch":
                return nn.RMSNorm(WIDTH, eps=1e-6)
            return WrittenRMSNorm(WIDTH, scale={"gemma": "1+w", "other": "2w"}.get(norm, "w"))

        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.norms = nn.ModuleList([make(), make()])
        self.gates = nn.ModuleList([nn.Linear(WIDTH, 20, bias=False) for _ in range(2)])
        self.ups = nn.ModuleList([nn.Linear(WIDTH, 20, bias=False) for _ in range(2)])
        self.downs = nn.ModuleList([nn.Linear(20, WIDTH, bias=False) for _ in range(2)])
        self.final, self.head = make(), nn.Linear(WIDTH, 5, bias=False)

    def forward(self, ids: Tensor) -> Tensor:
        h = self.embed(ids)
        for norm, gate, up, down in zip(self.norms, self.gates, self.ups, self.downs, strict=True):
            x = norm(h)
            h = h + down(nn.functional.silu(gate(x)) * up(x))
        return self.head(self.final(h))


def _ids() -> Tensor:
    return torch.randint(0, VOCAB, (3, 7), generator=torch.Generator().manual_seed(2))


def _model(norm: str = "written") -> nn.Module:
    torch.manual_seed(0)
    model = PreNormDecoder(norm)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, WrittenRMSNorm | nn.RMSNorm):
                m.weight.uniform_(0.5, 1.5)  # a trained norm's scales, not its ones
    return bp.convert(model, "gaussian").double().eval()


def _run(model: nn.Module, ids: Tensor) -> Tensor:
    with torch.no_grad(), bp.nn.use_posterior_mean(model):
        return model(ids)


def test_what_is_read_as_an_rms_norm():
    assert is_rms_norm(WrittenRMSNorm(8)) and is_rms_norm(nn.RMSNorm(8))
    assert rms_norm_offset(WrittenRMSNorm(8, scale="1+w")) == 1.0  # Gemma's
    assert not is_rms_norm(WrittenRMSNorm(8, scale="2w"))
    assert not is_rms_norm(nn.LayerNorm(8, bias=False))  # subtracts the mean
    counted = ZeroCountingRMSNorm.of(nn.RMSNorm(8, eps=1e-6), torch.arange(8))
    x = torch.randn(2, 8)
    torch.testing.assert_close(counted(x), nn.RMSNorm(8, eps=1e-6)(x))


@pytest.mark.parametrize("norm", ["written", "torch", "gemma"])
def test_the_stream_narrows_through_rms_norms_exactly(norm, tmp_path):
    model, ids = _model(norm), _ids()
    scores = activation_scores(model, (ids,))
    assert torch.isfinite(scores["downs.0"]).all() and torch.isfinite(scores["gates.1"]).all()
    result = shrink_graph(model, (ids,), prune_units=keep_units(scores, sparsity=0.5))
    shrunk = result.model
    assert shrunk.embed.embedding_dim == shrunk.head.in_features == shrunk.downs[1].out_features
    assert shrunk.embed.embedding_dim < WIDTH
    assert all(isinstance(n, ZeroCountingRMSNorm) for n in [*shrunk.norms, shrunk.final])
    assert shrunk.final.total == WIDTH and shrunk.final.kept == shrunk.embed.embedding_dim
    assert result.max_abs_difference < 1e-5  # the written norm computes in float32
    path = save_shrunk(shrunk, tmp_path / "decoder.safetensors")
    loaded = load_shrunk(path, lambda: bp.convert(PreNormDecoder(norm), "gaussian").double())
    torch.testing.assert_close(_run(loaded, ids), _run(shrunk, ids), rtol=0, atol=0)


def test_a_norm_that_computes_something_else_keeps_the_stream():
    model, ids = _model("other"), _ids()
    scores = activation_scores(model, (ids,))
    assert torch.isinf(scores["downs.0"]).all()
    assert torch.isfinite(scores["gates.0"]).all()  # the MLP's hidden units still go
