"""Wall time of the README's CLI sequence on a packaged MNIST config, step by step.

Runs `bayesprune config show CONFIG`, then train → compress → evaluate → select-features
→ report → export as separate processes (as a user types them), with the overrides given
(default: the issue's "epochs 1, limit 2000" setting), and records each step's wall time,
the test metrics the run reports, and whether `evaluate` had to predict again.

    python benchmarks/cli_sequence.py                       # gaussian_lenet5_mnist, 3 repeats
    python benchmarks/cli_sequence.py --repeats 1 --results-dir /tmp

MNIST must be in the cache (`bayesprune data fetch mnist`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import add_results_dir_option, md_table, use_results_dir, write_results

STEPS = ("train", "compress", "evaluate", "select-features", "report", "export")


def _run(args: list[str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "bayesprune", *args], cwd=cwd, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"bayesprune {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return seconds, done.stdout


def one_sequence(config: str, overrides: list[str], threads: int | None) -> dict[str, Any]:
    """Seconds per step and the metrics of one fresh run folder."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _, text = _run(["config", "show", config], work)
        (work / "run.yaml").write_text(text)
        sets = [a for o in overrides for a in ("--set", o)]
        threading = ["--threads", str(threads)] if threads else []
        seconds: dict[str, float] = {}
        for step in STEPS:
            if step == "train":
                args = ["train", "run.yaml", "--out", "run", "--quiet", *sets]
            else:
                args = [step, "run"]
            seconds[step] = _run([*args, *threading], work)[0]
        evaluation = json.loads((work / "run" / "evaluation.json").read_text())
    return {
        "seconds": seconds,
        "total_seconds": sum(seconds.values()),
        "test": {k: evaluation[k]["modes"] for k in ("trained", "compressed")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="gaussian_lenet5_mnist")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=None,
        help="a run-config override (default: train.epochs=1 and data.limit=2000)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=None, help="--threads of every step (default: torch's)"
    )
    add_results_dir_option(parser)
    args = parser.parse_args()
    use_results_dir(args)
    overrides = args.overrides or ["train.epochs=1", "data.limit=2000"]
    runs = [one_sequence(args.config, overrides, args.threads) for _ in range(args.repeats)]
    median = {s: statistics.median(r["seconds"][s] for r in runs) for s in STEPS}
    total = statistics.median(r["total_seconds"] for r in runs)
    rows = [{"step": s, "median seconds": median[s]} for s in STEPS]
    rows.append({"step": "whole sequence", "median seconds": total})
    markdown = (
        f"Config `{args.config}` with `{' '.join(overrides)}`; {args.repeats} fresh run "
        "folders, each command its own process (import time included).\n\n"
        + md_table(rows)
        + "\nTest metrics of the last run: "
        + json.dumps(runs[-1]["test"])
        + "\n"
    )
    write_results(
        f"cli_sequence_{args.config}",
        {
            "config": args.config,
            "overrides": overrides,
            "repeats": args.repeats,
            "runs": runs,
            "median_seconds": median,
            "median_total_seconds": total,
        },
        markdown,
    )
    print(markdown)


if __name__ == "__main__":
    main()
