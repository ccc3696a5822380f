"""Shared helpers of the benchmark scripts: machine description, result files, timing."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"
"""Where results go by default (committed); `--results-dir` moves them, e.g. for quick runs."""
_results_dir = RESULTS


def add_results_dir_option(parser: argparse.ArgumentParser) -> None:
    """`--results-dir` (default benchmarks/results): where the JSON, markdown and figures go."""
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=RESULTS,
        help="folder for the result files (default: benchmarks/results); e.g. /tmp for a quick run",
    )


def use_results_dir(args: argparse.Namespace) -> Path:
    """Send this process's results to `args.results_dir` and take the option out of `args`,
    so the settings recorded in the results stay those that change the numbers."""
    global _results_dir
    _results_dir = Path(args.results_dir)
    del args.results_dir
    return _results_dir


def recorded_settings(args: argparse.Namespace, *left_out: str) -> dict[str, Any]:
    """The parsed options a result records: all but the output `--name` (and `left_out`);
    `--results-dir` is already gone (`use_results_dir`), as it changes no number."""
    return {k: v for k, v in vars(args).items() if k not in ("name", *left_out)}


def results_dir() -> Path:
    """The folder results are written to (benchmarks/results unless --results-dir)."""
    return _results_dir


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def this_command() -> str:
    """The command line, with the script named from the repository root (as the docs run it)."""
    script = Path(sys.argv[0]).resolve()
    try:
        shown = script.relative_to(RESULTS.parent.parent).as_posix()
    except ValueError:
        shown = script.as_posix()
    return "python " + " ".join([shown, *sys.argv[1:]])


def write_results(
    name: str,
    payload: dict[str, Any],
    markdown: str,
    command: str | None = None,
    machine_info: dict[str, Any] | None = None,
) -> Path:
    """Write results/<name>.json and .md. `command` and `machine_info` override this
    process's command line and machine (used when results are re-rendered from a saved
    run, which must keep the machine it was measured on)."""
    folder = results_dir()
    folder.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "command": command or this_command(),
        "machine": machine_info or machine(),
        **payload,
    }
    (folder / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    header = f"# {name}\n\nCommand: `{payload['command']}`\n\nMachine: {payload['machine']}\n\n"
    (folder / f"{name}.md").write_text(header + markdown)
    return folder / f"{name}.md"


def median_time(fn: Callable[[], Any], repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def md_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def lr_multiplier_item(text: str) -> tuple[str, float]:
    """One SUFFIX=FACTOR item of an `--*lr-multipliers` option (fit's `lr_multipliers`)."""
    suffix, _, factor = text.partition("=")
    try:
        value = float(factor)
    except ValueError:
        value = None
    if not suffix or value is None:
        raise argparse.ArgumentTypeError(f"expected SUFFIX=FACTOR such as rho=0.333, got {text!r}")
    return suffix, value


def mean_sd(values: list[float], digits: int = 4) -> str:
    """ "mean ± sd" of `values` (sd 0 for one value)."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def short_metrics(row: dict[str, Any]) -> str:
    """The float entries of a metrics row on one line, for progress output."""
    return ", ".join(f"{k} {v:.4f}" for k, v in row.items() if isinstance(v, float))
