"""The example run configs shipped inside the package (`bayesprune config list / show`).

A pip user has no docs/ folder, so the examples travel as package data in
`bayesprune/configs/`; docs/configs/ holds the same files for readers of the
repository (a test keeps the two identical).
"""

from __future__ import annotations

from importlib import resources


def _folder() -> resources.abc.Traversable:
    return resources.files("bayesprune") / "configs"


def config_names() -> list[str]:
    """Names of the shipped example configs (file names without .yaml), sorted."""
    return sorted(
        p.name.removesuffix(".yaml") for p in _folder().iterdir() if p.name.endswith(".yaml")
    )


def config_text(name: str) -> str:
    """The YAML text of the example `name` (with or without .yaml)."""
    name = name.removesuffix(".yaml")
    names = config_names()
    if name not in names:
        raise ValueError(
            f"no example config {name!r}; valid: {names} (see `bayesprune config list`)"
        )
    return (_folder() / f"{name}.yaml").read_text(encoding="utf-8")


def config_summary(name: str) -> str:
    """The first comment line of the example `name`: what it is for."""
    for line in config_text(name).splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""
