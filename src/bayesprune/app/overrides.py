"""Command-line overrides of a run config: ``--set train.epochs=2``, ``--set a.b=[32,16]``.

As in Hydra and LightningCLI, a dotted key path names one value of the YAML; the
value is read as a YAML scalar or flow collection by the same strict reader as the
file (`2` an int, `1e-3` a float, `[32, 16]` a list, `null` None), put into the raw
mapping, and the whole config is then validated as if the file had said it, so a
bad key or value gets the same one-line error naming the key.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import yaml

from .schema import ConfigError
from .yaml_safe import load_strict


def parse_assignment(text: str) -> tuple[list[str], Any]:
    """("train.epochs=2") → (["train", "epochs"], 2); a malformed one is a ConfigError."""
    key, sep, value = text.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not sep or not key or any(not p for p in parts):
        raise ConfigError(
            f"--set expects KEY=VALUE with a dotted key, e.g. train.epochs=2; got {text!r}"
        )
    if len(parts) < 2:
        raise ConfigError(
            f"--set {text!r}: name a key inside a section (e.g. train.{key}), not a whole section"
        )
    try:
        parsed = load_strict(value) if value.strip() else None
    except yaml.YAMLError as err:
        shown = " ".join(str(err).split())
        raise ConfigError(f"--set {key}: {value!r} is not a YAML value ({shown})") from None
    return parts, parsed


def apply_overrides(raw: dict[str, Any] | None, assignments: Sequence[str]) -> dict[str, Any]:
    """A copy of the raw config mapping with each KEY=VALUE put in place (later wins)."""
    out = copy.deepcopy(raw) if raw else {}
    if not isinstance(out, dict):
        return out  # parse_config reports a config that is not a mapping
    for text in assignments:
        parts, value = parse_assignment(text)
        node = out
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(
                    f"--set {'.'.join(parts)}: {where} is a value ({child!r}), not a section"
                )
            node = child
        node[parts[-1]] = value
    return out


def override_keys(assignments: Sequence[str]) -> list[str]:
    """The dotted keys the assignments set (for naming them in errors)."""
    return [text.partition("=")[0].strip() for text in assignments]
