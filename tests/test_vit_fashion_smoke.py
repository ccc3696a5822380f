"""The ViT benchmark's pipeline on a tiny ViT (benchmarks/_vit.py, vit_fashion.py).

What its figures rest on: the library's path and Torch-Pruning's remove the same number
of MLP hidden units at a level (equal FLOPs), nothing else changes width, and every
compressed net exports to ONNX with the outputs it computes in torch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import bayesprune as bp
from bayesprune import compress

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _resnet import onnx_checks
from _vit import ViT, hidden_units, mlp_widths
from vit_fashion import flops, tp_prune


def test_ours_and_torch_pruning_cut_the_same_mlp_units_count():
    torch.manual_seed(0)
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    det = ViT(16, 2, 2, 32).eval()
    bayes = bp.convert(ViT(16, 2, 2, 32), "gaussian", keep=("patch", "head")).eval()
    scores = compress.activation_scores(bayes, x)
    keep = compress.keep_units({n: scores[n] for n in hidden_units(bayes)}, 0.5)
    ours = compress.shrink_graph(bayes, x[:2], prune_units=keep).model
    theirs = {kind: tp_prune(det, kind, 0.5, x[:2], [(x, y)]) for kind in ("magnitude", "taylor")}
    assert mlp_widths(ours) == [16, 16]
    for net in theirs.values():
        assert mlp_widths(net) == [16, 16]
        assert net.blocks[0].attention.embed_dim == 16 and net.head.in_features == 16
        assert flops(net) == flops(ours) < flops(det)
    models = {
        "bayesian (dense)": bayes,
        "bayesian compressed": ours,
        **{f"tp {k}": v for k, v in theirs.items()},
    }
    checks = onnx_checks(models, list(models), x[:4], repeats=2)
    assert max(checks["difference"].values()) < 1e-4
    assert set(checks["latency_ms"]["batch 1"]) == set(models)
