"""benchmarks/uncertainty_after_pruning.py: issue 18's targets read seed by seed, so a
seed mean that passes cannot hide a seed that does not."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from uncertainty_after_pruning import TIE_RULE, per_seed_targets


def _stage(accuracy: float, ece: float, entropy: float, sparsity: float = 0.5) -> dict:
    return {"accuracy": accuracy, "ece": ece, "ood_auroc_entropy": entropy, "sparsity": sparsity}


def _run(seed: int, chosen: dict, name: str) -> dict:
    before = _stage(0.98, 0.010, 0.90, sparsity=0.0)
    twin = _stage(0.95, 0.015, 0.80)  # the deterministic net pruned as far
    return {
        "seed": seed,
        "stages": {
            "bayesian/before": before,
            f"bayesian/accuracy/{TIE_RULE}": {**chosen, "chosen": f"bayesian/accuracy/{name}"},
            "deterministic/same-sparsity/pruned": twin,
            "deterministic/same-sparsity/pruned+temperature": twin,
        },
    }


def test_each_seed_is_judged_on_its_own_against_its_own_unpruned_net():
    runs = [
        _run(0, _stage(0.978, 0.012, 0.89), "pruned+finetune"),  # passes everything
        _run(1, _stage(0.970, 0.020, 0.85), "pruned"),  # ECE 2x, AUROC -0.05, accuracy -0.01
    ]
    rows = per_seed_targets(runs, "lenet300", 0.005)
    assert [r["seed"] for r in rows] == [0, 1]
    assert [r["chosen"] for r in rows] == ["pruned+finetune", "pruned"]
    first, second = rows
    assert first["ece / unpruned"] == 1.2 and first["≤ 1.5×"] and first["≤ 0.02"]
    assert first["≤ 0.005"]
    assert second["ece / unpruned"] == 2.0 and not second["≤ 1.5×"]
    assert second["worst AUROC drop"] == 0.05 and not second["≤ 0.02"]
    assert not second["≤ 0.005"]
    assert first["< deterministic"] and not second["< deterministic"]  # 0.012, 0.020 vs 0.015


def test_groups_without_a_chosen_stage_give_no_row():
    run = _run(0, _stage(0.98, 0.01, 0.9), "pruned")
    del run["stages"][f"bayesian/accuracy/{TIE_RULE}"]
    assert per_seed_targets([run], "evi", 0.005) == []
