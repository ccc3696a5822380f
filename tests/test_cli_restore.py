"""`bayesprune restore RUN` on a tiny image run: chosen on validation, published whole, errors.

The image sets are tiny synthetic stand-ins written as IDX files under a temporary
`data.root` ("mnist": a horizontal bar whose row is the class; "fashion-mnist": blobs),
so the OOD AUROC path runs without the real data.
"""

import json

import pytest
import torch
import yaml
from _cli import invoke
from _images import write_image_sets

from bayesprune.app.folder import Run
from bayesprune.app.steps import load_restored
from bayesprune.app.transaction import Transaction
from bayesprune.evaluation import scorer
from bayesprune.restore_choice import (
    METRICS,
    auroc_floor,
    choose,
    ece_ceiling,
    paired_gap,
    refusal,
)


def _config(root, **changes) -> dict:
    raw = {
        "data": {"name": "mnist", "root": str(root), "val_fraction": 0.4},
        "model": {"kwargs": {"hidden": [24]}},
        "train": {"epochs": 4, "batch_size": 32, "lr": 0.01},
        "compress": {"rule": "global", "sparsity": 0.9},
        "evaluate": {"samples": 4},
    }
    for section, values in changes.items():
        raw[section] = {**raw.get(section, {}), **values}
    return raw


def _train_and_compress(tmp, raw: dict, name: str):
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    run = tmp / name
    invoke("train", str(path), "--out", str(run), "--quiet")
    invoke("compress", str(run), "--quiet")
    return run


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("restore")
    root = tmp / "data"
    write_image_sets(root)
    torch.manual_seed(0)
    run = _train_and_compress(tmp, _config(root), "gauss")
    out = invoke("restore", str(run), "--ood", "fashion-mnist", "--epochs", "1").output
    return tmp, root, run, out


def test_restore_keeps_or_improves_validation_ece_and_records_before_after(image_run):
    _, _, run, out = image_run
    record = json.loads((run / "restored" / "restore.json").read_text())
    assert f"restore: {record['method']}" in out and "written to" in out
    assert set(record["candidates"]) == {
        "none",
        "temperature",
        "variances",
        "finetune",
        "finetune+temperature",
    }
    before, after = record["before"]["validation"], record["after"]["validation"]
    assert after["ece"] <= before["ece"] + 1e-12
    assert after == record["candidates"][record["method"]]["validation"]
    for stage in ("before", "after"):
        for split in ("validation", "test"):
            names = set(record[stage][split])
            assert {*METRICS, "ood_auroc_entropy", "ood_auroc_mi"} <= names
    # the rule: no eligible candidate has a lower validation NLL than the chosen one, and
    # each eligible one's AUROC is within the tolerance of the lower of compressed / trained
    eligible = [c for c in record["candidates"].values() if c["eligible"]]
    trained = record["trained_validation"]
    for c in eligible:
        for name in ("ood_auroc_entropy", "ood_auroc_mi"):
            assert c["validation"][name] >= min(before[name], trained[name]) - 0.02
    for c in record["candidates"].values():  # and every refused one breaks a rule
        if not c["eligible"]:
            worse_ece = c["validation"]["ece"] > before["ece"]
            assert worse_ece or any(
                c["validation"][n] < min(before[n], trained[n]) - 0.02
                for n in ("ood_auroc_entropy", "ood_auroc_mi")
            )
    # the chosen one is tied with the lowest NLL (within tie_se = 1 paired standard
    # error) and has the lowest ECE of the tied ones
    chosen = record["candidates"][record["method"]]
    assert chosen["tied"] and chosen["nll_gap"]["mean"] <= chosen["nll_gap"]["se"]
    tied = [c for c in eligible if c["tied"]]
    assert chosen["validation"]["ece"] == min(c["validation"]["ece"] for c in tied)
    lowest = min(c["validation"]["nll"] for c in eligible)
    for c in eligible:  # the per-row losses are the recorded predictive's, row by row
        assert c["nll_gap"]["mean"] == pytest.approx(c["validation"]["nll"] - lowest, abs=1e-9)
    assert record["splits"]["fit"]["rows"] + record["splits"]["choose"]["rows"] == 200
    assert record["options"]["ood"] == "fashion-mnist" and record["options"]["epochs"] == 1
    assert "restore" not in yaml.safe_load((run / "config.yaml").read_text()) or (
        yaml.safe_load((run / "config.yaml").read_text())["restore"]["ood"] is None
    )  # a command-line option is never written to config.yaml


def test_pruning_worsened_calibration_and_temperature_repairs_it(image_run):
    """At 90 % sparsity the tiny net's validation ECE rises; some method lowers it."""
    _, _, run, _ = image_run
    record = json.loads((run / "restored" / "restore.json").read_text())
    before = record["before"]["validation"]["ece"]
    best = min(c["validation"]["ece"] for c in record["candidates"].values())
    assert best < before
    assert record["candidates"]["temperature"]["validation"]["ece"] < before


def test_the_auroc_reference_is_the_lower_of_the_compressed_and_trained_model():
    """A pruned net that separates OOD better than the trained one (AUROC 0.80 vs 0.70)
    does not make a repair back to 0.71 ineligible; a fall below 0.70 - 0.02 still does."""
    compressed = {"ece": 0.1, "ood_auroc_entropy": 0.80}
    trained = {"ece": 0.05, "ood_auroc_entropy": 0.70}
    floor = auroc_floor(compressed, trained)
    assert floor == {"ood_auroc_entropy": 0.70}
    back = {"ece": 0.05, "ood_auroc_entropy": 0.71}
    assert refusal(back, compressed, 0.02, floor) is None
    assert "fell by more than" in refusal(back, compressed, 0.02)  # the compressed one's
    assert "fell by more than" in refusal(
        {**back, "ood_auroc_entropy": 0.67}, compressed, 0.02, floor
    )
    assert "ECE" in refusal({**back, "ece": 0.2}, compressed, 0.02, floor)
    # a trained net that separates better does not raise the bar above the compressed one
    assert auroc_floor(compressed, {"ood_auroc_entropy": 0.9}) == {"ood_auroc_entropy": 0.80}


def test_ece_factor_lets_a_repair_exceed_a_compressed_net_that_is_lucky_on_ece():
    """A compressed net with a low validation ECE (0.022) but a fall in accuracy blocks a
    fine-tuned candidate at 0.029 under the default; with ece_factor 1.5 of the trained
    net's 0.024 (ceiling 0.036) the candidate may be chosen, one at 0.04 still not."""
    compressed, trained = {"ece": 0.022}, {"ece": 0.024}
    tuned = {"ece": 0.029}
    assert "(compressed)" in refusal(tuned, compressed, 0.02)
    ceiling = ece_ceiling(compressed, trained, 1.5)
    assert ceiling == pytest.approx(0.036)
    assert refusal(tuned, compressed, 0.02, ceiling=ceiling) is None
    assert "ece_factor x trained" in refusal({"ece": 0.04}, compressed, 0.02, ceiling=ceiling)
    # never below the compressed net's own ECE, and no trained metrics: the default
    assert ece_ceiling({"ece": 0.1}, trained, 1.5) == 0.1
    assert ece_ceiling(compressed, None, 1.5) == 0.022


def _candidate(nll: float, ece: float, eligible: bool = True) -> dict:
    return {"validation": {"nll": nll, "ece": ece}, "eligible": eligible}


def test_a_tie_in_nll_goes_to_the_lower_ece_and_a_clear_gap_does_not():
    """Temperature reads 0.001 worse in NLL than the untouched net, within the noise of
    its rows, and cuts ECE by a third: tied, so it is chosen. A fine-tune worse by many
    standard errors is not tied however low its ECE; tie_se 0 is NLL alone."""
    g = torch.Generator().manual_seed(0)
    base = torch.rand(500, generator=g, dtype=torch.float64) * 0.2
    noise = (torch.rand(500, generator=g, dtype=torch.float64) - 0.5) * 0.1
    rows = {"none": base, "temperature": base + 0.001 + noise, "finetune": base + 0.05}
    candidates = {
        name: _candidate(float(r.mean()), ece)
        for (name, r), ece in zip(rows.items(), (0.030, 0.019, 0.005), strict=True)
    }
    gap, se = paired_gap(rows["temperature"], rows["none"])
    assert 0 < gap < se  # within one standard error
    assert choose(candidates, rows, tie_se=1.0) == "temperature"
    assert candidates["temperature"]["tied"] and not candidates["finetune"]["tied"]
    assert candidates["none"]["nll_gap"] == {"mean": 0.0, "se": 0.0}
    assert choose(candidates, rows, tie_se=0.0) == "none"
    # an ineligible candidate is never chosen, whatever its NLL and ECE
    candidates["temperature"]["eligible"] = False
    assert choose(candidates, rows, tie_se=1.0) == "none"


def test_the_restored_model_reloads_and_scores_as_recorded(image_run):
    _, _, run, _ = image_run
    r = Run.open(run)
    record = json.loads((run / "restored" / "restore.json").read_text())
    model = load_restored(r)
    data = r.data()
    half = len(data.val[0]) // 2
    rows = (data.val[0][half:], data.val[1][half:])
    mode = record["mode"]
    score = scorer(rows, r.likelihood(), mode=mode, samples=4, seed=0, metrics=METRICS)
    again = score(model)
    for name in METRICS:
        assert again[name] == pytest.approx(record["after"]["validation"][name], abs=1e-9)
    assert (run / "manifests" / "restore.json").is_file()


def test_a_failed_restore_leaves_the_previous_set_whole(image_run, monkeypatch):
    _, _, run, _ = image_run
    files = sorted(p for p in (run / "restored").iterdir())
    old = {p.name: p.read_bytes() for p in files}

    def fail(self, rel, obj):
        raise OSError("disk full (injected)")

    monkeypatch.setattr(Transaction, "write_json", fail)
    result = invoke("restore", str(run), "--method", "temperature", ok=False)
    assert result.exit_code == 1 and "disk full (injected)" in result.output
    assert "Traceback" not in result.output
    assert {p.name: p.read_bytes() for p in (run / "restored").iterdir()} == old
    leftovers = [p for p in run.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
    Run.open(run).artefacts("restore")  # still verifies against its manifest


def test_explicit_method_and_none(image_run):
    _, _, run, _ = image_run
    out = invoke("restore", str(run), "--method", "none").output
    record = json.loads((run / "restored" / "restore.json").read_text())
    assert record["method"] == "none" and list(record["candidates"]) == ["none"]
    assert record["before"] == record["after"] and "restore: none" in out


def test_tie_se_zero_from_the_command_line_chooses_by_nll_alone(image_run):
    _, _, run, _ = image_run
    invoke("restore", str(run), "--method", "temperature", "--tie-se", "0")
    record = json.loads((run / "restored" / "restore.json").read_text())
    assert record["options"]["tie_se"] == 0 and record["rule"].endswith("the lowest validation NLL")
    eligible = [c for c in record["candidates"].values() if c["eligible"]]
    assert record["after"]["validation"]["nll"] == min(c["validation"]["nll"] for c in eligible)


def test_finetune_then_temperature_keeps_a_temperature_beside_the_finetuned_net(image_run):
    """Asked for alone, the combined method fine-tunes, fits T on the first half, and the
    restored folder reloads as that network tempered (scores as recorded)."""
    _, _, run, _ = image_run
    invoke("restore", str(run), "--method", "finetune+temperature", "--epochs", "1")
    record = json.loads((run / "restored" / "restore.json").read_text())
    assert set(record["candidates"]) == {"none", "finetune+temperature"}
    model = load_restored(Run.open(run))
    if record["method"] == "finetune+temperature":
        assert record["temperature"] is not None and record["temperature"] != 1.0
        assert float(model.temperature) == pytest.approx(record["temperature"])
    else:  # refused on validation: the compressed model, untouched
        assert (
            record["method"] == "none" and record["candidates"]["finetune+temperature"]["why_not"]
        )


@pytest.mark.parametrize(
    ("changes", "args", "expected"),
    [
        ({}, ["--ood", "mnist"], "restore.ood 'mnist' is the run's own data set"),
        ({"data": {"val_fraction": 0.0}}, [], "set data.val_fraction"),
        ({"model": {"family": "deterministic"}}, ["--method", "variances"], "has none"),
    ],
)
def test_bad_requests_are_one_clear_line(image_run, changes, args, expected):
    tmp, root, _, _ = image_run
    name = f"bad{abs(hash((str(changes), tuple(args)))) % 10**6}"
    raw = _config(root, train={"epochs": 1}, **changes)
    run = _train_and_compress(tmp, raw, name)
    result = invoke("restore", str(run), *args, ok=False)
    assert result.exit_code == 1 and expected in result.output, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not (run / "restored").exists()


def test_restore_before_compress_names_the_missing_step(image_run):
    tmp, root, _, _ = image_run
    path = tmp / "fresh.yaml"
    path.write_text(yaml.safe_dump(_config(root, train={"epochs": 1})))
    run = tmp / "fresh"
    invoke("train", str(path), "--out", str(run), "--quiet")
    result = invoke("restore", str(run), ok=False)
    assert result.exit_code == 1 and "bayesprune compress" in result.output


def test_ood_on_a_tabular_run_is_refused_in_the_config(tmp_path):
    raw = {"data": {"name": "wine"}, "restore": {"ood": "mnist"}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = invoke("train", str(path), "--out", str(tmp_path / "r"), ok=False)
    assert result.exit_code == 1 and "remove restore.ood" in result.output


def test_the_report_shows_what_restore_chose(image_run):
    _, _, run, _ = image_run
    invoke("report", str(run))
    markdown = (run / "report" / "report.md").read_text()
    record = json.loads((run / "restored" / "restore.json").read_text())
    assert "## Restored uncertainty" in markdown and f"Chosen: {record['method']}" in markdown
    assert "| candidate | eligible |" in markdown and "### Before → after" in markdown
    for metric in record["before"]["test"]:  # whatever the last restore measured
        if metric in ("accuracy", "nll", "ece") or metric.startswith("ood_auroc"):
            assert metric in markdown
