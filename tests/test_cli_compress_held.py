"""`bayesprune compress` holding uncertainty: `--tolerance` on the rounds against the
trained model, `--ood` for OOD AUROC held on validation and reported on test, and the
config errors. Tiny synthetic image sets stand in for MNIST / Fashion-MNIST."""

import json

import pytest
import torch
import yaml
from _cli import invoke
from _images import write_image_sets

from bayesprune.app.config import SEARCH_ROWS
from bayesprune.app.factory import ood_inputs
from bayesprune.app.folder import Run
from bayesprune.app.steps.compress import _ece_resolution, _more_rows
from bayesprune.evaluation import scorer
from bayesprune.metrics import ece, ece_floor
from bayesprune.predict import predict


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A trained MLP (two hidden layers) on the bar images; returns (tmp, run folder)."""
    tmp = tmp_path_factory.mktemp("held")
    root = tmp / "data"
    write_image_sets(root)
    raw = {
        "data": {"name": "mnist", "root": str(root), "val_fraction": 0.4},
        "model": {"kwargs": {"hidden": [24, 24]}},
        "train": {"epochs": 10, "batch_size": 32, "lr": 0.01},
        "compress": {"rule": "global", "sparsity": 0.3},
        "evaluate": {"samples": 4},
    }
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    torch.manual_seed(0)
    invoke("train", str(path), "--out", str(tmp / "run"), "--quiet")
    return tmp, tmp / "run"


def _rounds(run) -> dict:
    return json.loads((run / "compressed" / "compression.json").read_text())["extra"]["rounds"]


ROUNDS = ("--rounds", "6", "--round-fraction", "0.3", "--round-tolerance", "1.0")


def test_a_tolerance_stops_the_rounds_that_accuracy_alone_lets_through(trained):
    _, run = trained
    invoke("compress", str(run), *ROUNDS, "--quiet")
    free = _rounds(run)
    assert free["stopped"] != "tolerance"  # losing up to all accuracy: never stopped by it
    assert free["data"]["mode"] == "mean"  # accuracy alone: the posterior mean's arg-max
    invoke("compress", str(run), *ROUNDS, "--tolerance", "nll=0", "--quiet")
    held = _rounds(run)
    assert held["stopped"] == "tolerance"
    kept = [r for r in held["history"] if r["accepted"]]
    assert len(kept) < len([r for r in free["history"] if r["accepted"]])
    # held against the *trained* model's validation NLL in its own predictive (Monte
    # Carlo, compress.validation_samples passes), scored independently here
    assert held["data"]["mode"] == "mc" and held["data"]["samples"] == 10
    r = Run.open(run)
    rows = tuple(t[:SEARCH_ROWS] for t in r.data().val)
    mc = scorer(rows, r.likelihood(), mode="mc", samples=10, seed=0, metrics=("nll",))
    trained_nll = mc(r.load_model("trained"))["nll"]
    assert held["held_against"]["nll"] == pytest.approx(trained_nll, rel=1e-6)
    assert all(k["values"]["nll"] <= trained_nll + 1e-9 for k in kept[1:])
    assert held["history"][-1]["values"]["nll"] > trained_nll  # the refused round
    options = json.loads((run / "compressed" / "compression.json").read_text())["extra"]
    assert options["options"]["tolerances"] == {"nll": 0.0}
    assert yaml.safe_load((run / "config.yaml").read_text())["compress"]["tolerances"] == {}


def test_ood_auroc_is_held_on_training_images_and_reported_on_test(trained):
    _, run = trained
    out = invoke(
        "compress", str(run), *ROUNDS[:4], "--ood", "fashion-mnist",
        "--tolerance", "ood_auroc_entropy=0.05", "--quiet",
    ).output  # fmt: skip
    report = json.loads((run / "compressed" / "compression.json").read_text())
    rounds = report["extra"]["rounds"]
    assert rounds["data"]["ood"] == {"name": "fashion-mnist", "split": "training", "rows": 200}
    r = Run.open(run)
    rows = tuple(t[:SEARCH_ROWS] for t in r.data().val)
    ood = ood_inputs(r.config, "fashion-mnist", "train", len(rows[0]))
    names = ("ood_auroc_entropy",)
    score = scorer(rows, r.likelihood(), mode="mc", samples=10, seed=0, metrics=names, ood=ood)
    want = score(r.load_model("trained"))["ood_auroc_entropy"]
    assert rounds["held_against"]["ood_auroc_entropy"] == pytest.approx(want, rel=1e-6)
    for k in (k for k in rounds["history"][1:] if k["accepted"]):
        assert k["values"]["ood_auroc_entropy"] >= want - 0.05 - 1e-9
    assert report["extra"]["metrics_ood"]["split"] == "test"
    for side in ("before", "after"):
        auroc = report["metrics"][side]["ood_auroc_entropy"]
        assert 0.0 <= auroc <= 1.0
    assert "ood_auroc_entropy" in out
    assert "holding accuracy, ood_auroc_entropy on 200 rows: validation (MC, 10 samples)" in out
    invoke("report", str(run))
    page = (run / "report" / "report.md").read_text()
    before = report["metrics"]["before"]["ood_auroc_entropy"]
    assert f"OOD AUROC against fashion-mnist test images: entropy {before:.3f}" in page


def test_the_posterior_mean_can_be_held_instead_and_mi_needs_samples(trained):
    _, run = trained
    invoke("compress", str(run), *ROUNDS, "--tolerance", "nll=0", "--validation-mode", "mean")
    rounds = _rounds(run)
    assert rounds["data"]["mode"] == "mean" and "samples" not in rounds["data"]
    r = Run.open(run)
    rows = tuple(t[:SEARCH_ROWS] for t in r.data().val)
    mean = scorer(rows, r.likelihood(), metrics=("nll",))(r.load_model("trained"))["nll"]
    assert rounds["held_against"]["nll"] == pytest.approx(mean, rel=1e-6)
    out = invoke(
        "compress", str(run), *ROUNDS[:4], "--ood", "fashion-mnist",
        "--tolerance", "ood_auroc_mi=0.1", "--quiet",
    ).output  # fmt: skip
    assert _rounds(run)["held_against"]["ood_auroc_mi"] > 0
    assert "holding accuracy, ood_auroc_mi" in out


def test_a_search_given_other_tolerances_still_holds_accuracy_by_delta(trained):
    _, run = trained
    invoke(
        "compress", str(run), "--rule", "search", "--delta", "0.01",
        "--tolerance", "ece=100x", "--no-shrink", "--quiet",
    )  # fmt: skip
    search = json.loads((run / "compressed" / "compression.json").read_text())["extra"]["search"]
    held = {t["metric"]: t["tolerance"] for t in search["tolerances"]}
    assert held == {"accuracy": 0.01, "ece": 99.0}
    assert search["values"]["accuracy"] >= search["baselines"]["accuracy"] - 0.01 - 1e-9
    floor = search["baselines"]["accuracy"] - 0.01
    refused = [p for p in search["curve"] if not p["within"]]
    assert refused and all(p["accuracy"] < floor for p in refused)  # ECE alone let them in


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--tolerance", "ood_auroc_entropy=0.02", "--rounds", "1"), "set compress.ood"),
        (("--tolerance", "ood_auroc_mi=0.02", "--rounds", "1"), "needs out-of-distribution"),
        (
            (
                "--validation-mode",
                "mean",
                "--ood",
                "fashion-mnist",
                "--rounds",
                "1",
                "--tolerance",
                "ood_auroc_mi=0.02",
            ),
            "no mutual information",
        ),
        (("--tolerance", "ece=1.5x"), "hold compress.rule 'search' and compress.rounds"),
        (("--tolerance", "ece=0.8x", "--rounds", "1"), "must be ≥ 1"),
        (("--ood", "mnist"), "compress.ood 'mnist' is the run's own data set"),
    ],
)
def test_bad_requests_are_one_clear_line_and_leave_nothing(trained, args, expected):
    _, run = trained
    before = sorted(p.name for p in run.iterdir())
    result = invoke("compress", str(run), *args, ok=False)
    assert result.exit_code == 1 and expected in result.output, result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in run.iterdir()) == before


def test_a_tolerance_without_a_value_is_a_usage_error(trained):
    _, run = trained
    result = invoke("compress", str(run), "--tolerance", "ece", ok=False)
    assert result.exit_code == 2 and "METRIC=VALUE" in result.output


def test_an_ece_tolerance_on_too_few_rows_is_warned_about(trained):
    _, run = trained
    out = invoke(
        "compress", str(run), "--rule", "search", "--tolerance", "ece=1.5x", "--no-shrink",
    ).output  # fmt: skip
    search = json.loads((run / "compressed" / "compression.json").read_text())["extra"]["search"]
    recorded = search["data"]["ece_floor"]
    # the trained model's ECE in the held predictive, and the floor of the same predictions
    r = Run.open(run)
    x, y = (t[:SEARCH_ROWS] for t in r.data().val)
    probs = predict(r.load_model("trained"), x, samples=10, seed=0).probs
    assert recorded["trained_ece"] == pytest.approx(ece(probs, y), rel=1e-6)
    floor = ece_floor(probs, seed=0)
    assert (recorded["mean"], recorded["upper_95"]) == pytest.approx((floor.mean, floor.upper))
    assert search["baselines"]["ece"] == pytest.approx(recorded["trained_ece"], rel=1e-6)
    unresolved = not floor.resolves(recorded["trained_ece"])
    assert ("cannot resolve the ECE tolerance" in out) == unresolved
    assert ("cannot resolve" in search["data"].get("warning", "")) == unresolved
    # the helper on the same rows, both ways: a net whose confidence is its accuracy (0.99)
    # measures an ECE within the floor and is warned about; a confident net that is wrong
    # nine times in ten is far above the floor and is not
    trained_net = r.load_model("trained")
    for net, warned in ((_Confident(trained_net, 0.99), True), (_Confident(None, 0.99), False)):
        used = {"mode": "mc", "split": "validation"}
        _ece_resolution(r, net, (x, y), used, {"ece": 0.5})
        assert ("cannot resolve" in used.get("warning", "")) == warned, used


class _Confident(torch.nn.Module):
    """Puts `confidence` on the arg-max of `net` (on class 0 without one), the rest spread."""

    def __init__(self, net, confidence):
        super().__init__()
        self.net, self.confidence = net, confidence

    def forward(self, x):
        top = torch.zeros(len(x), dtype=torch.long) if self.net is None else self.net(x).argmax(-1)
        probs = torch.full((len(x), 10), (1 - self.confidence) / 9)
        probs[torch.arange(len(x)), top] = self.confidence
        return probs.log()


def test_the_search_reads_compress_search_rows_and_the_floor_warning_names_it(trained):
    _, run = trained
    invoke(
        "compress", str(run), "--rule", "search", "--tolerance", "ece=1.5x", "--no-shrink",
        "--search-rows", "20", "--quiet",
    )  # fmt: skip
    data = json.loads((run / "compressed" / "compression.json").read_text())["extra"]
    available = len(Run.open(run).data().val[0])
    assert data["search"]["data"]["rows"] == 20
    assert data["search"]["data"]["rows_available"] == available > 20
    assert data["options"]["search_rows"] == 20
    # the advice follows the cut: past compress.search_rows first, then the split itself
    capped = {"split": "validation", "rows": 20, "rows_available": available}
    assert "raise compress.search_rows (the search reads 20 of the" in _more_rows(capped)
    whole = {"split": "validation", "rows": available, "rows_available": available}
    assert _more_rows(whole) == "raise data.val_fraction / data.limit"
