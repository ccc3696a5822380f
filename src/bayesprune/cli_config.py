"""`bayesprune config list | show NAME`: the example run configs shipped with the package."""

from __future__ import annotations

import click

from .configs_catalog import config_names, config_summary, config_text


@click.group("config")
def config() -> None:
    """The example run configs (YAML): list them, print one to start your own.

    \b
    bayesprune config show spike_slab_breast_cancer > my.yaml
    bayesprune train my.yaml --out runs/my
    Every key and its default: docs/cli.md ("The config").
    """


@config.command("list")
def list_configs() -> None:
    """Names of the example configs and what each is for."""
    names = config_names()
    width = max(map(len, names), default=0)
    for name in names:
        click.echo(f"{name:<{width}}  {config_summary(name)}")


@config.command("show")
@click.argument("name")
def show_config(name: str) -> None:
    """Print the example config NAME (redirect it into a file to edit it)."""
    click.echo(config_text(name), nl=False)
