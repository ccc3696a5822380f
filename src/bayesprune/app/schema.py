"""Strict parsing of config sections: a YAML mapping checked against a dataclass.

A typo in a config otherwise silently trains the wrong model, so an unknown key or a
bad value raises one `ConfigError` that names the key path (e.g. ``model.kwargs.hiden``)
and suggests the closest valid key. Field metadata carries the checks: ``choices``
(a tuple, or a callable returning one), ``min`` and ``max``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Sequence
from typing import Any


class ConfigError(ValueError):
    """A run config has an unknown key or a bad value (the message names the key path)."""


def _suggest(key: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f"did you mean {close[0]!r}? " if close else ""


def _unknown(path: str, key: str, valid: Sequence[str]) -> ConfigError:
    where = f"{path}.{key}" if path else key
    return ConfigError(
        f"unknown config key {where!r}; {_suggest(key, valid)}valid keys"
        f"{' of ' + path if path else ''}: {sorted(valid)}"
    )


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """`value` checked against annotation `tp` (int, float, bool, str, dict, list, X | None)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        lists = [a for a in inner if a is list or typing.get_origin(a) is list]
        return _coerce(value, lists[0] if lists and isinstance(value, list) else inner[0], path)
    if origin is list or tp is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path} must be a list, got {value!r}")
        return list(value)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping (key: value), got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{path} must be a number, got {value!r}")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond float's range
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"{path} must be a finite number, got {value!r}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported type {_type_name(tp)}")  # pragma: no cover


def _check_field(f: dataclasses.Field, value: Any, path: str) -> None:
    meta = f.metadata
    choices = meta.get("choices")
    if choices is not None and value is not None:
        valid = list(choices() if callable(choices) else choices)
        if value not in valid:
            raise ConfigError(
                f"bad value {value!r} for {path}; {_suggest(str(value), valid)}valid: {valid}"
            )
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "min" in meta and value < meta["min"]:
            raise ConfigError(f"{path} must be >= {meta['min']}, got {value!r}")
        if "max" in meta and value > meta["max"]:
            raise ConfigError(f"{path} must be <= {meta['max']}, got {value!r}")


def _section(cls: type, raw: Any, path: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path or 'the config'} must be a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        if not isinstance(key, str) or key not in fields:
            raise _unknown(path, str(key), list(fields))
        sub = f"{path}.{key}" if path else key
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            values[key] = _section(tp, value, sub)
            continue
        value = _coerce(value, tp, sub)
        _check_field(fields[key], value, sub)
        values[key] = value
    return cls(**values)
