"""benchmarks/compress_lenet5.py: `--kl-weight-stages` parsed into fit's staged `kl_weight`;
`--uncertainty` (issue 18) scoring every stage of the record on tiny random data.

fit's stages themselves are tested in tests/test_kl_schedule.py; here the script's
parsing, its length rule, and that the stages reach `fit` as the KL weight.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

import bayesprune as bp
from bayesprune import compress
from bayesprune.compress.adapters import copy_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from compress_lenet5 import (
    CHOSEN,
    INPUT,
    RECORD,
    RecordNets,
    cached_det,
    check_stages,
    kl_stage,
    masked,
    mean_weights,
    measure_uncertainty,
    per_layer_masks,
    render_uncertainty,
    seeded_det,
    structure,
    uncertainty_data,
    uncertainty_runs,
    unit_keep,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--svd-epochs", type=int)
    parser.add_argument("--kl-weight", type=float, default=1.0)
    parser.add_argument("--kl-weight-stages", type=kl_stage, nargs="+")
    return parser


def test_stages_set_the_length_and_are_fit_kl_weight() -> None:
    parser = _parser()
    args = parser.parse_args(["--kl-weight-stages", "4:2", "1:3"])
    check_stages(parser, args)
    assert args.svd_epochs == 5
    assert args.kl_weight_stages == [(4.0, 2), (1.0, 3)]


@pytest.mark.parametrize(
    "argv", [["--kl-weight-stages", "4:2", "--kl-weight", "2"], ["--kl-weight-stages", "4:2",
             "--svd-epochs", "9"]]
)  # fmt: skip
def test_stages_conflicting_with_other_options_are_refused(argv: list[str]) -> None:
    parser = _parser()
    with pytest.raises(SystemExit):
        check_stages(parser, parser.parse_args(argv))


@pytest.mark.parametrize("text", ["4", "4:0", "-1:3", "a:3", "4:x"])
def test_malformed_stage_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="BETA:EPOCHS"):
        kl_stage(text)


# --- `--uncertainty`: issue 18's read of the record, on tiny random data ---------------------


def _images(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=gen)


def _tiny_record(cache: Path) -> tuple[argparse.Namespace, RecordNets]:
    """A tiny "record": Sparse VD LeNet-5-Caffe, a weight pruning, a shrunk unit step."""
    gen = torch.Generator().manual_seed(0)
    x, y = _images(96, gen), torch.randint(0, 10, (96,), generator=gen)
    det = seeded_det(0)
    svd = bp.convert(det, "sparse_vd", rho_init=-5.0)
    with torch.no_grad():  # spread log α so that a threshold prunes part of each layer
        for name, p in svd.named_parameters():
            if name.endswith("weight_rho"):
                p.uniform_(-6.0, 2.0, generator=gen)
    pruned = masked(svd, 0.0)
    final = compress.shrink(pruned, INPUT, prune_units=unit_keep(pruned, 0.05)).model
    args = argparse.Namespace(
        det_epochs=1,
        lr=1e-3,
        batch_size=32,
        mc_samples=2,
        val_samples=2,
        restore_epochs=1,
        accuracy_tolerance=0.005,
        ft_lr=3e-4,
        ft_kl_weight=1.0,
        train_limit=None,
        val_size=32,
        det_cache=cache,
    )
    train, val = TensorDataset(x[:64], y[:64]), TensorDataset(x[64:], y[64:])
    return args, RecordNets(train, val, None, copy_model(det), svd, pruned, final, 430_500)


def test_per_layer_masks_keep_the_largest_weights_of_each_layer() -> None:
    det = seeded_det(0)
    _, nets = _tiny_record(Path("unused"))
    kept = [int((w != 0).sum()) for _, w in mean_weights(nets.final)]
    masks = per_layer_masks(det, kept)
    assert [int(m.sum()) for m in masks.values()] == kept
    for (_, w), mask in zip(mean_weights(det), masks.values(), strict=True):
        assert w.abs()[mask.bool()].min() >= w.abs()[~mask.bool()].max()
    with pytest.raises(ValueError, match="prunable layers"):
        per_layer_masks(det, kept[:2])


def test_structure_of_a_shrunk_net_equals_the_masked_net_with_its_unit_step() -> None:
    _, nets = _tiny_record(Path("unused"))
    names = [name for name, _ in mean_weights(nets.pruned)][:3]
    keep = {name: torch.arange(n) % 4 != 0 for name, n in zip(names, (20, 50, 500), strict=True)}
    shrunk = compress.shrink(nets.pruned, INPUT, prune_units=keep).model
    counted = structure(nets.pruned, keep)
    assert counted == structure(shrunk)  # the slimmed stage counts shrunk nets
    assert counted["conv1"] <= 15 and counted["conv2"] <= 37 and counted["fc1"] <= 375


def test_uncertainty_scores_every_stage_and_chooses_on_validation(tmp_path: Path) -> None:
    args, nets = _tiny_record(tmp_path)
    before = {k: v.clone() for k, v in nets.final.state_dict().items()}
    det = cached_det(nets.det_init, nets.train, args, 0)
    again = cached_det(nets.det_init, nets.train, args, 0)  # read back from --det-cache
    assert len(list(tmp_path.iterdir())) == 1
    assert all(torch.equal(a, b) for a, b in zip(det.parameters(), again.parameters(), strict=True))
    gen = torch.Generator().manual_seed(1)
    test = (_images(24, gen), torch.randint(0, 10, (24,), generator=gen))
    data = uncertainty_data(nets, _images(32, gen), test, _images(24, gen), args, 0)

    result = measure_uncertainty(nets, det, data, args, 0)

    assert 0 < result["sparsity_weight_pruned"] <= result["sparsity"] < 1
    for mode, mi in (("mc", {"ood_auroc_mi"}), ("mean", set())):
        stages = result[mode]["stages"]
        restored = {f"{RECORD}/pruned+{m}" for m in ("temperature", "variances", "finetune")}
        assert restored < set(stages)
        assert "deterministic/same-sparsity/pruned+temperature" in stages
        assert "deterministic/same-layers/pruned+finetune+temperature" in stages
        for name in ("deterministic/same-sparsity/pruned", "deterministic/same-layers/pruned"):
            assert stages[name]["sparsity"] == pytest.approx(result["sparsity"])
        for name, values in stages.items():
            wanted = {"accuracy", "nll", "ece", "ood_auroc_entropy"}
            assert wanted | (mi if name.startswith("bayesian/") else set()) <= set(values)
        assert set(result[mode]["pick"]) == set(stages)  # each stage read on validation too
    # the restoring methods work on copies: the net of record is not trained
    assert all(torch.equal(v, nets.final.state_dict()[k]) for k, v in before.items())
    rows = [{"seed": 0, "uncertainty": result}]
    assert uncertainty_runs(rows, "mc")[0]["stages"][CHOSEN]["chosen"].startswith(RECORD + "/")
    assert "Issue 18 targets" in "".join(render_uncertainty(rows, 0.005))
