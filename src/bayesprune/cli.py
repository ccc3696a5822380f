"""The `bayesprune` command line: a thin layer over the library."""

from __future__ import annotations

import sys

import click

from . import __version__
from .cli_config import config
from .cli_data import data
from .cli_errors import BoundedGroup
from .cli_run import COMMANDS as RUN_COMMANDS


@click.group(cls=BoundedGroup)
@click.version_option(__version__, prog_name="bayesprune")
@click.option(
    "--debug",
    is_flag=True,
    help="Show the full traceback of an error instead of its one-line message.",
)
def main(debug: bool) -> None:
    """Bayesian neural networks that let the posterior decide what to delete."""


main.add_command(data)
main.add_command(config)
for _command in RUN_COMMANDS:  # train, evaluate, compress, restore, select-features, report, export
    main.add_command(_command)


@main.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default="runs/demo",
    show_default=True,
    help="Folder for the demo's report.",
)
@click.option("--epochs", type=int, default=60, show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="torch CPU threads while the demo runs.")  # fmt: skip
def demo(out: str, epochs: int, quiet: bool, threads: int) -> None:
    """Train, compress and report a spike-and-slab, a Gaussian and a plain MLP on bundled data."""
    from .demo import markdown, run_demo

    progress = not quiet and sys.stderr.isatty()
    result = run_demo(out, epochs=epochs, progress=progress, threads=threads)
    click.echo(markdown(result["rows"]))
    click.echo(f"table written to {result['out']}/demo.md and demo.json; HTML reports:")
    for path in result["reports"]:
        click.echo(f"  {path}")
