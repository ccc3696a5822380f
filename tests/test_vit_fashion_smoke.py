"""The ViT benchmark's pipeline on a tiny ViT (benchmarks/_vit.py, vit_fashion.py).

What its figures rest on: the library's path and Torch-Pruning's remove the same number
of MLP hidden units at a level (equal FLOPs), nothing else changes width, and every
compressed net exports to ONNX with the outputs it computes in torch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import bayesprune as bp
from bayesprune import compress

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _resnet import onnx_checks
from _vit import (
    ViT,
    attention_units,
    head_counts,
    hidden_units,
    mlp_widths,
    stream_units,
    stream_width,
)
from vit_fashion import flops, tp_prune, tp_prune_to_flops


def _ours(x: torch.Tensor) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    bayes = bp.convert(ViT(16, 2, 2, 32), "gaussian", keep=("patch", "head")).eval()
    scores = compress.activation_scores(bayes, x)
    keep = compress.keep_units({n: scores[n] for n in hidden_units(bayes)}, 0.5)
    return bayes, compress.shrink_graph(bayes, x[:2], prune_units=keep).model


def test_our_path_halves_the_mlps_and_exports():
    x = torch.rand(16, 1, 28, 28)
    bayes, ours = _ours(x)
    assert mlp_widths(bayes) == [32, 32] and mlp_widths(ours) == [16, 16]
    assert ours.blocks[0].attention.embed_dim == 16 and ours.head.in_features == 16
    assert flops(ours) < flops(bayes)
    models = {"bayesian (dense)": bayes, "bayesian compressed": ours}
    checks = onnx_checks(models, list(models), x[:4], repeats=2)
    assert max(checks["difference"].values()) < 1e-4
    assert set(checks["latency_ms"]["batch 1"]) == set(models)


def test_torch_pruning_cuts_as_many_mlp_units_at_equal_flops():
    pytest.importorskip("torch_pruning", reason="Torch-Pruning comes with the bench extra")
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    _, ours = _ours(x)
    torch.manual_seed(0)
    det = ViT(16, 2, 2, 32).eval()
    for kind in ("magnitude", "taylor"):
        net = tp_prune(det, kind, 0.5, x[:2], [(x, y)])
        assert mlp_widths(net) == [16, 16]
        assert net.blocks[0].attention.embed_dim == 16 and net.head.in_features == 16
        assert flops(net) == flops(ours) < flops(det)


def test_with_prune_heads_ours_drops_heads_and_torch_pruning_matches_the_flops():
    pytest.importorskip("torch_pruning", reason="Torch-Pruning comes with the bench extra")
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    torch.manual_seed(0)
    det = ViT(16, 2, 4, 128).eval()
    bayes = bp.convert(det, "gaussian", keep=("patch", "head"), split_attention=True).eval()
    scores = compress.activation_scores(bayes, x)
    units = hidden_units(bayes) + attention_units(bayes)
    keep = compress.keep_units({n: scores[n] for n in units}, 0.5)
    ours = compress.shrink_graph(bayes, x[:2], prune_units=keep).model
    assert head_counts(bayes) == [4, 4] and head_counts(ours) == [2, 2]
    assert mlp_widths(ours) == [64, 64]
    net, match = tp_prune_to_flops(det, "magnitude", flops(ours), x[:2], [(x, y)])
    assert head_counts(net) == [4, 4] and mlp_widths(net)[0] < 64  # more MLP units go
    assert abs(match["flops_gap"]) < 0.05


def test_with_prune_stream_the_residual_stream_narrows_and_exports():
    x = torch.rand(16, 1, 28, 28)
    torch.manual_seed(0)
    bayes = bp.convert(ViT(16, 2, 4, 32), "gaussian", keep=("patch", "head"), split_attention=True)
    bayes.eval()
    scores = compress.activation_scores(bayes, x)
    units = hidden_units(bayes) + attention_units(bayes) + stream_units(bayes)
    keep = compress.keep_units({n: scores[n] for n in units}, 0.25)
    ours = compress.shrink_graph(bayes, x[:2], prune_units=keep).model
    assert stream_width(bayes) == 16 and stream_width(ours) == 12
    assert ours.blocks[1].attention.embed_dim == ours.head.in_features == 12
    assert ours.position.shape[-1] == ours.cls.shape[-1] == 12
    assert flops(ours) < flops(bayes)
    models = {"bayesian (dense)": bayes, "bayesian compressed": ours}
    assert max(onnx_checks(models, list(models), x[:4], repeats=2)["difference"].values()) < 1e-4
