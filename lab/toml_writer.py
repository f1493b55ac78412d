"""A minimal TOML writer for containerd config files (the stdlib reads TOML but does not write it).

Owns: turning nested dicts of str/int/float/bool/lists into TOML text, and deep-merging a parsed override into
a base config. Invariant: `tomllib.loads(dumps(d)) == d` for the values it accepts; anything else raises
TypeError naming the key, rather than writing something containerd would misread.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(key: str) -> str:
    # TOML 1.0 "Keys": bare keys are ASCII letters, digits, '_' and '-'; others become quoted strings.
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # A JSON string is a valid TOML basic string (same escapes: \" \\ \n \t \uXXXX).
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v, where) for v in value) + "]"
    if isinstance(value, Mapping):
        inner = ", ".join(f"{_key(k)} = {_value(v, f'{where}.{k}')}" for k, v in value.items())
        return "{" + inner + "}"
    raise TypeError(f"cannot write {where} = {value!r} ({type(value).__name__}) as TOML")


def dumps(config: Mapping[str, Any]) -> str:
    """Render ``config``: scalars and lists of a table first, then its sub-tables as ``[dotted.header]``."""
    lines: list[str] = []

    def table(path: list[str], body: Mapping[str, Any]) -> None:
        scalars = {k: v for k, v in body.items() if not isinstance(v, Mapping)}
        tables = {k: v for k, v in body.items() if isinstance(v, Mapping)}
        if path and (scalars or not tables):
            lines.append("")
            lines.append("[" + ".".join(_key(p) for p in path) + "]")
        for k, v in scalars.items():
            lines.append(f"{_key(k)} = {_value(v, '.'.join([*path, k]))}")
        for k, v in tables.items():
            table([*path, k], v)

    table([], config)
    return "\n".join(lines).lstrip("\n") + "\n"


def deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``override`` merged in: tables merge key by key, everything else is replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged
