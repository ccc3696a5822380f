"""`bayesprune train | evaluate | compress | restore | select-features | report | export`.

Each command is a thin wrapper over `bayesprune.app.steps`; registered on the main
group in cli.py, whose error boundary (cli_errors.py) prints every error as one line
(`bayesprune --debug ...` shows the traceback).
"""

from __future__ import annotations

import functools
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .app.config import (
    COMPRESS_RULES,
    FEATURE_RULES,
    FEATURE_SCORES,
    IMAGE_SETS,
    RESTORE_METHODS,
    UNIT_SCORE_NAMES,
    WEIGHT_SCORE_NAMES,
    load_config,
)

_RUN = click.argument("run", type=click.Path(file_okay=False))
_QUIET = click.option("--quiet", is_flag=True, help="No progress bars or per-epoch lines.")
_THREADS = click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="torch CPU threads (default: torch's; 1 is fastest for small nets on a busy machine).",
)


def _model_choice(help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The `--model auto|trained|compressed` option; `help` says what auto picks."""
    return click.option(
        "--model",
        "which",
        type=click.Choice(["auto", "trained", "compressed"]),
        default="auto",
        show_default=True,
        help=help,
    )


def _friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add --threads (errors become one line at the group's boundary, cli_errors.py)."""

    @_THREADS
    @functools.wraps(fn)
    def wrapper(*args: Any, threads: int | None = None, **kwargs: Any) -> Any:
        from .app.threads import limited_threads

        with limited_threads(threads):
            return fn(*args, **kwargs)

    return wrapper


def _progress(quiet: bool) -> bool:
    """Bars only on a terminal; plain lines otherwise."""
    return not quiet and sys.stderr.isatty()


def _open(run: str, device: str | None = None) -> Any:
    """The run folder; with `device`, computing there for this command only."""
    from .app.folder import Run

    opened = Run.open(run)
    return opened if device is None else opened.on_device(device)


_device_option = click.option(
    "--device",
    default=None,
    help="Compute this command on DEV (cpu, cuda, cuda:0, auto: the GPU if any); default: "
    "the run's train.device. Not written into config.yaml.",
)


def _show(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str)


_ood_option = click.option(
    "--ood",
    type=click.Choice(IMAGE_SETS),
    default=None,
    help="Out-of-distribution images (the other image set): OOD AUROC held and reported.",
)


@click.command("train")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False),
    default=None,
    help="Run folder (default: runs/<config name>). Rerunning resumes it.",
)
@click.option(
    "--set",
    "assignments",
    metavar="KEY=VALUE",
    multiple=True,
    help="Override one config value, e.g. --set train.epochs=2 --set "
    "model.kwargs.hidden=[32,16] (a YAML value; repeatable; validated like the file).",
)
@click.option("--seed", type=int, default=None, help="Shortcut for --set train.seed=N.")
@click.option(
    "--device",
    default=None,
    help="Shortcut for --set train.device=DEV (cpu, cuda, cuda:0, auto: the GPU if any).",
)
@_QUIET
@click.option(
    "--nproc",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Data-parallel processes on this machine; several machines: torchrun "
    "(docs/distributed.md).",
)
@_friendly
def train(
    config: str,
    out: str | None,
    assignments: tuple[str, ...],
    seed: int | None,
    device: str | None,
    quiet: bool,
    nproc: int,
) -> None:
    """Train the model of CONFIG (YAML) into a run folder; resumes an interrupted run.

    Overrides (--set, --seed, --device) become part of the run's config.yaml, so a
    rerun into the same folder resumes only with the same overrides. Example configs:
    `bayesprune config list`, `bayesprune config show NAME > my.yaml`; every key is
    described in docs/cli.md.
    """
    from .app.steps import train_run
    from .distributed import launch, torchrun_world

    sets = _assignments(assignments, seed, device)
    cfg = load_config(config, sets)
    folder = Path(out) if out else _default_folder(config)
    if nproc > 1 or torchrun_world() > 1:  # data-parallel: see _train_process
        timeout = cfg.train.timeout_s
        args = (config, str(folder), quiet, sets)
        test = launch(_train_process, nproc, *args, timeout_s=timeout)[0]
        result = None if test is None else {"test": test}
    else:
        progress = _progress(quiet)
        echo = None if quiet or progress else click.echo
        result = train_run(cfg, folder, progress=progress, echo=echo)
    if result is not None:  # None: a process other than rank 0 under torchrun
        click.echo(f"trained {folder}: {_test_label(result)} {_show(result['test'])}")


def _assignments(assignments: tuple[str, ...], seed: int | None, device: str | None) -> tuple:
    """--set values, with the --seed / --device shortcuts last (they win)."""
    extra = ([f"train.seed={seed}"] if seed is not None else []) + (
        [f"train.device={device}"] if device is not None else []
    )
    return (*assignments, *extra)


def _test_label(result: dict[str, Any]) -> str:
    """e.g. "test (posterior mean, 450 rows)": which prediction and split the figures are."""
    from .predict import describe_prediction

    how = result.get("test_prediction") or {"mode": "mean", "split": "test"}
    return describe_prediction(how["mode"], 1, how["split"], how.get("rows"))


def _default_folder(config: str) -> Path:
    """runs/<config name>; a name such as `...yaml` (stem "..") would escape runs/."""
    stem = Path(config).stem
    if stem in ("", ".", "..") or stem.startswith("."):
        raise click.UsageError(f"cannot name a run folder after {config!r}; give --out FOLDER")
    return Path("runs") / stem


def _train_process(
    config: str, folder: str, quiet: bool, sets: tuple[str, ...] = ()
) -> dict[str, Any] | None:
    """One process of a data-parallel `train` (under `launch` or torchrun).

    Every process trains (fit splits the batches); rank 0 alone writes the run folder,
    the others write their copies of the outputs to a scratch folder that is deleted.
    """
    from .app.steps import train_run
    from .distributed import setup
    from .validation import resolve_device

    cfg = load_config(config, sets)
    device = resolve_device(cfg.train.device)
    if not setup(device=device, timeout_s=cfg.train.timeout_s).is_main:
        with tempfile.TemporaryDirectory(prefix="bayesprune-rank-") as scratch:
            train_run(cfg, scratch)
        return None
    progress = _progress(quiet)
    echo = None if quiet or progress else click.echo
    return train_run(cfg, folder, progress=progress, echo=echo)["test"]


@click.command("evaluate")
@_RUN
@_model_choice("auto: the trained model and, if present, the compressed one.")
@_device_option
@_QUIET
@_friendly
def evaluate(run: str, which: str, quiet: bool, device: str | None) -> None:
    """Accuracy / NLL / ECE / Brier (or RMSE / NLL) of RUN's models, MC and posterior mean."""
    from .app.steps import evaluate_run
    from .predict import describe_prediction

    r = _open(run, device)
    results = evaluate_run(r, which, progress=_progress(quiet))
    samples = r.config.evaluate.samples
    for name, entry in results.items():
        rows = (entry.get("split") or {}).get("rows")
        for mode, values in entry["modes"].items():
            shown = " ".join(f"{k}={v:.4g}" for k, v in values.items())
            click.echo(f"{name:10s} {describe_prediction(mode, samples, 'test', rows)}: {shown}")
        floor = (entry.get("reliability") or {}).get("ece_floor")
        if floor:
            click.echo(
                f"{'':10s} ECE of a perfectly calibrated model on {rows} rows: "
                f"{floor['mean']:.4g} (95 % below {floor['upper_95']:.4g})"
            )
    click.echo(f"written to {Path(run) / 'evaluation.json'}")


@click.command("compress")
@_RUN
@click.option(
    "--score",
    type=click.Choice(["auto", *WEIGHT_SCORE_NAMES, *UNIT_SCORE_NAMES]),
    default=None,
    help="Importance score (default: the config's compress.score).",
)
@click.option(
    "--rule",
    type=click.Choice(COMPRESS_RULES),
    default=None,
    help="Pruning rule (default: the config's compress.rule).",
)
@click.option("--sparsity", type=float, default=None, help="Fraction removed (global / layer).")
@click.option(
    "--flops",
    type=click.FloatRange(min=0.0, max=1.0, min_open=True),
    default=None,
    help="Share of the trained model's FLOPs to keep: units go by activation scores "
    "(rule flops, implied when --rule is not given).",
)
@click.option("--threshold", type=float, default=None, help="Keep score > this (threshold).")
@click.option("--delta", type=float, default=None, help="Accuracy drop allowed (search).")
@click.option("--k", type=int, default=None, help="Units kept per layer (target_size).")
@click.option("--alpha", type=float, default=None, help="Expected FDR bound (fdr).")
@click.option("--shrink/--no-shrink", default=None, help="Physically remove dead units.")
@click.option("--finetune-epochs", type=int, default=None, help="Fine-tune after pruning.")
@click.option(
    "--rounds", type=int, default=None, help="Then up to N self-compression rounds (shrunk model)."
)
@click.option("--round-fraction", type=float, default=None, help="Units a round removes.")
@click.option(
    "--round-tolerance", type=float, default=None, help="Validation accuracy a round may lose."
)
@click.option("--greedy/--no-greedy", default=None, help="A round cuts the cheapest layer only.")
@click.option(
    "--tolerance",
    "tolerances",
    multiple=True,
    callback=lambda _ctx, _param, value: _tolerances(value),
    metavar="METRIC=VALUE",
    help="Hold METRIC within VALUE of the trained model's (search and rounds), e.g. "
    "ece=1.5x, nll=0.02, ood_auroc_entropy=0.02 (with --ood); repeatable.",
)
@_ood_option
@click.option(
    "--validation-mode",
    type=click.Choice(["auto", "mean", "mc"]),
    default=None,
    help="Predictive the search and rounds hold (auto: mean for accuracy alone, else the "
    "model's own, Monte Carlo for a sampling net).",
)
@click.option("--validation-samples", type=int, default=None, help="MC passes on validation (mc).")
@click.option(
    "--search-rows",
    type=click.IntRange(min=1),
    default=None,
    help="Validation rows the search, rule flops and the rounds score (the first ones; "
    "default 2000): raise it with a larger validation split to hold ECE beyond its floor.",
)
@_device_option
@_QUIET
@_friendly
def compress(run: str, quiet: bool, device: str | None, **overrides: Any) -> None:
    """Prune RUN's trained model by its posterior, shrink it, write RUN/compressed/."""
    from .app.steps import compress_run

    if overrides.get("flops") is not None and overrides.get("rule") is None:
        overrides["rule"] = "flops"  # with its own score unless one is given
        overrides["score"] = overrides.get("score") or "auto"
    report = compress_run(_open(run, device), overrides, progress=_progress(quiet))
    t, m = report["totals"], report["metrics"]
    click.echo(
        f"{report['title']}\n"
        f"architecture {'-'.join(map(str, t['architecture_before']))} → "
        f"{'-'.join(map(str, t['architecture_after']))}; non-zero weights "
        f"{t['nonzero_before']} → {t['nonzero_after']}"
    )
    from .predict import describe_prediction

    extra, samples = report["extra"], _open(run).config.evaluate.samples
    modes, rows = extra.get("metrics_mode", {}), extra.get("metrics_split", {}).get("rows")
    if modes:
        before = describe_prediction(modes["before"], samples, "test", rows)
        after = describe_prediction(modes["after"], samples, "test", rows)
        click.echo(f"metrics: {before} → {after if after != before else 'the same'}")
    for key in m["after"]:
        click.echo(f"  {key}: {m['before'].get(key, float('nan')):.4g} → {m['after'][key]:.4g}")
    search = (extra.get("search") or {}).get("data")
    if search:
        held = ", ".join(t["metric"] for t in extra["search"].get("tolerances", [])) or "accuracy"
        how = describe_prediction(search["mode"], search.get("samples", 1), search["split"])
        click.echo(f"search held {held} on {search['rows']} rows: {how}")
        if "warning" in search:
            click.echo(f"warning: {search['warning']}", err=True)
    budget = extra.get("flops")
    if budget:
        click.echo(
            f"FLOPs: {budget['ratio']:.3g} of the trained model's (budget {budget['budget']:g}; "
            f"{budget['dense']} → {budget['shrunk']} per example, units by activation scores "
            f"on {budget['data']['rows']} {budget['data']['split']} rows)"
        )
    rounds = extra.get("rounds")
    if rounds:
        accepted = [r["round"] for r in rounds["history"] if r["accepted"]][-1]
        used = rounds["data"]
        how = describe_prediction(used["mode"], used.get("samples", 1), used["split"])
        held = ", ".join(rounds.get("held_against", {})) or "accuracy"
        click.echo(
            f"self-compression: {accepted} round(s) kept, holding {held} on {used['rows']} "
            f"rows: {how} (stopped: {rounds['stopped']})"
        )
        if "warning" in rounds["data"]:
            click.echo(f"warning: {rounds['data']['warning']}", err=True)
    skipped = (report["extra"].get("shrink") or {}).get("skipped")
    if skipped:
        click.echo(f"not shrunk (weights are masked instead): {skipped}")
    click.echo(f"written to {Path(run) / 'compressed'}")


def _tolerances(items: tuple[str, ...]) -> dict[str, float | str] | None:
    """--tolerance METRIC=VALUE items as compress.tolerances (None: the config's)."""
    held: dict[str, float | str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise click.BadParameter(
                f"{item!r}: write METRIC=VALUE, e.g. ece=1.5x or nll=0.02", param_hint="--tolerance"
            )
        try:
            held[name.strip()] = float(value)
        except ValueError:
            held[name.strip()] = value.strip()  # relative: "1.5x", "50%" (checked by the config)
    return held or None


@click.command("restore")
@_RUN
@click.option(
    "--method",
    type=click.Choice(RESTORE_METHODS),
    default=None,
    help="Restoring method (default: the config's restore.method; auto: chosen on validation).",
)
@click.option(
    "--epochs", type=click.IntRange(min=1), default=None, help="Epochs (variances, finetune)."
)
@_ood_option
@click.option(
    "--tie-se",
    type=click.FloatRange(min=0.0),
    default=None,
    help="Candidates within this many standard errors of the lowest validation NLL are "
    "tied and the tie goes to the lowest ECE (default: restore.tie_se, 1; 0: NLL alone).",
)
@_device_option
@_friendly
def restore(run: str, device: str | None, **overrides: Any) -> None:
    """Restore the calibration of RUN's compressed model; the method is chosen on validation.

    Writes RUN/restored/ (model.safetensors, restore.json with the metrics before and
    after). Options apply to this command only: recorded in restore.json, never
    written into config.yaml.
    """
    from .app.steps.restore import restore_run

    record = restore_run(_open(run, device), overrides)
    t = record["temperature"]
    click.echo(
        f"restore: {record['method']}"
        + (f" (temperature {t:.3g})" if t is not None else "")
        + f", chosen on {record['splits']['choose']['rows']} validation rows "
        + f"(tried: {', '.join(record['candidates'])})"
    )
    for split in ("validation", "test"):
        before, after = record["before"][split], record["after"][split]
        shown = ", ".join(f"{k} {before[k]:.4g} → {after[k]:.4g}" for k in after)
        click.echo(f"  {split}: {shown}")
    click.echo(f"written to {Path(run) / 'restored'}")


@click.command("select-features")
@_RUN
@click.option(
    "--score",
    type=click.Choice(FEATURE_SCORES),
    default=None,
    help="Input score (default: the config's features.score).",
)
@click.option(
    "--rule",
    type=click.Choice(FEATURE_RULES),
    default=None,
    help="Selection rule (default: the config's features.rule).",
)
@click.option(
    "--threshold",
    type=float,
    default=None,
    help="PIP cut (median) or fraction of the largest norm (relative).",
)
@click.option("--k", type=int, default=None, help="Features kept (target_size).")
@click.option("--alpha", type=float, default=None, help="Expected FDR bound (fdr).")
@_friendly
def select_features(run: str, **overrides: Any) -> None:
    """Input features RUN's model uses (input PIPs, or input-weight norms); features.json/.png.

    Options apply to this selection only: recorded in features.json ("options"),
    never written into config.yaml.
    """
    from .app.steps import select_features as select

    r = _open(run)
    result = select(r, overrides=overrides)
    what = result.get("inputs", "features")
    click.echo(
        f"{len(result['selected'])} of {result['n_features']} {what} selected "
        f"({result['score']}, rule {result['rule']}): {', '.join(result['selected_names'][:40])}"
    )
    if result.get("note"):
        click.echo(result["note"])
    if "selection" in result:
        s = result["selection"]
        click.echo(f"against the known truth: TPR {s['tpr']:.3f}, FDR {s['fdr']:.3f}")
    click.echo(f"written to {r.path('features.json')} and {r.path('features.png')}")


@click.command("report")
@_RUN
@_friendly
def report(run: str) -> None:
    """One self-contained HTML page (and markdown) with RUN's curves, histograms and tables."""
    from .app.report import build_report

    paths = build_report(_open(run), progress=_progress(False))
    click.echo(f"report written to {paths['html']} (and {paths['markdown'].name})")


@click.command("export")
@_RUN
@click.option("--onnx/--no-onnx", default=True, show_default=True, help="Write model.onnx.")
@click.option(
    "--plain/--no-plain",
    default=True,
    show_default=True,
    help="Write the deterministic network as safetensors + JSON spec.",
)
@_model_choice("auto: compressed if present.")
@_friendly
def export(run: str, onnx: bool, plain: bool, which: str) -> None:
    """Export RUN's deterministic network (posterior means) to RUN/export/."""
    from .app.steps import export_run

    if not (onnx or plain):
        raise click.UsageError("nothing to export: give --onnx and/or --plain")
    out = export_run(_open(run), onnx=onnx, plain=plain, which=which)
    for key in ("onnx", "safetensors"):
        if key in out:
            click.echo(f"{key}: {out[key]}")
    if out.get("onnx_max_abs_difference") is not None:
        click.echo(f"onnxruntime vs torch, max |difference|: {out['onnx_max_abs_difference']:.3g}")


COMMANDS = (train, evaluate, compress, restore, select_features, report, export)
