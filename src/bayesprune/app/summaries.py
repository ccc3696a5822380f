"""What the report shows of a model's posterior, recorded as JSON by the steps.

The report renders only from the JSON the steps wrote, so the train step stores
these summaries (histograms, not the hundreds of thousands of raw values) next to
its metrics.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..compress import unit_scores
from ..nn import variational_layers
from ..plots import histogram_counts


def posterior_summary(model: nn.Module) -> dict[str, Any]:
    """Histograms of weight SNR, unit norms and PIPs (units, inputs) of `model` (on any
    device: the histograms are counted on the CPU)."""
    posts = [layer.posterior() for _, layer in variational_layers(model)]
    summary: dict[str, Any] = {}
    if posts:
        snr = torch.cat(
            [(p.weight_mean.abs() / p.weight_std.clamp_min(1e-12)).flatten() for p in posts]
        )
        summary["snr"] = histogram_counts(snr.double().cpu().numpy(), log10=True)
    per_unit = unit_scores(model, "norm", include_output=True)
    norms = torch.cat([s.flatten() for s in per_unit.values()])
    summary["unit_norm"] = histogram_counts(norms.double().cpu().numpy(), log10=True)
    unit_pips = [p.unit_inclusion.flatten() for p in posts if p.unit_inclusion is not None]
    if unit_pips:
        summary["unit_pip"] = histogram_counts(torch.cat(unit_pips).double().cpu().numpy(), bins=20)
    if posts and posts[0].input_inclusion is not None:
        pips = posts[0].input_inclusion.flatten().double().cpu().numpy()
        summary["input_pip"] = histogram_counts(pips, bins=20)
    return summary
