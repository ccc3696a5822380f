"""Compression report and fine-tuning of pruned / shrunk models."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from bayesprune import finetune, mlp
from bayesprune.compress import (
    apply_masks,
    compression_report,
    global_sparsity_masks,
    report_markdown,
    save_report,
    shrink,
    unit_weight_masks,
    weight_masks,
    weight_scores,
)
from bayesprune.evaluation import scorer


def _pruned_pair() -> tuple[nn.Module, nn.Module]:
    model = mlp(6, [5], 3, family="gaussian")
    masked = mlp(6, [5], 3, family="gaussian")
    masked.load_state_dict(model.state_dict())
    keep = torch.tensor([1.0, 0, 1, 1, 0])
    apply_masks(masked, unit_weight_masks(masked, {"0": keep}))
    return model, shrink(masked).model


def test_report_counts_units_weights_flops_and_bytes(tmp_path):
    before, after = _pruned_pair()
    report = compression_report(
        before,
        after,
        input_shape=(6,),
        metrics_before={"accuracy": 0.9},
        metrics_after={"accuracy": 0.85},
    )
    first, second = report["layers"]
    assert (first["units_before"], first["units_after"]) == (5, 3)
    assert (second["inputs_before"], second["inputs_after"]) == (5, 3)
    assert first["weights_after"] == 18 and first["flops_after"] == 2 * 18
    assert first["dense_bytes_after"] == 4 * (18 + 3)
    t = report["totals"]
    assert t["weights_before"] == 6 * 5 + 5 * 3 and t["weights_after"] == 6 * 3 + 3 * 3
    assert t["flops_ratio"] == pytest.approx(45 / 27)
    assert t["architecture_before"] == [6, 5, 3] and t["architecture_after"] == [6, 3, 3]
    text = report_markdown(report)
    assert "5 → 3" in text and "| accuracy | 0.9 | 0.85 |" in text
    json_path, md_path = save_report(report, tmp_path, "r")
    assert json.loads(json_path.read_text())["totals"]["weights_after"] == 27
    assert md_path.read_text() == text


def test_report_computes_metrics_from_data():
    before, after = _pruned_pair()
    x, y = torch.randn(40, 6), torch.randint(0, 3, (40,))
    score = scorer((x, y), metrics=("accuracy", "nll", "ece"))
    report = compression_report(before, after, input_shape=(6,), evaluate=score)
    for side, model in (("before", before), ("after", after)):
        assert report["metrics"][side] == score(model)
        assert set(report["metrics"][side]) == {"accuracy", "nll", "ece"}
        assert 0.0 <= report["metrics"][side]["ece"] <= 1.0


@pytest.mark.parametrize("family", ["gaussian", "deterministic"])
def test_finetune_keeps_pruned_weights_pruned_and_lowers_the_loss(family):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    model = mlp(8, [12], 2, family=family)
    apply_masks(model, global_sparsity_masks(weight_scores(model, "snr"), 0.7))
    before = weight_masks(model)
    history = finetune(model, (x, y), epochs=15, lr=0.02, batch_size=64, progress=False)
    assert history.column("nll")[-1] < history.column("nll")[0]
    after = weight_masks(model)
    for name, mask in before.items():
        assert not (after[name].bool() & ~mask.bool()).any(), name  # nothing came back
    assert all(not m._forward_pre_hooks for m in model.modules())  # plain: hooks removed
