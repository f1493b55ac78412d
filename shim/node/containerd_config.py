"""containerd's runtime table for our handler: rendering it, and merging it into an operator's config file.

Owns the text of `[plugins."<cri plugin>".containerd.runtimes.<handler>]` (+ `.options`) for containerd config
version 2 (containerd 1.6/1.7) and 3 (2.x), PROTOCOL.md "CRI and RuntimeClass", and `merge_runtime_table`, a pure
text transformation (the caller does the file I/O, backup and atomic rename).

How runtime options reach the shim (`runtimeoptions.v1.Options`, PROTOCOL.md "Task service"):
- containerd 1.6 decodes the options table INTO that message (containerd v1.6 pkg/cri/server/helpers.go,
  generateRuntimeOptions -> getRuntimeOptionsType: a non-runc runtime_type gets `runtimeoptions.v1.Options`, filled
  by toml.PrimitiveDecode), so only the keys `TypeUrl` and `ConfigPath` survive; any other key is dropped without
  a word. On 1.6 our options must therefore live in a file named by `ConfigPath`.
- containerd 1.7 and 2.x do the same and, when `ConfigPath` is empty, also put the whole table as TOML into
  `config_body`. With `ConfigPath` set, `config_body` stays empty: the file is the only source.
So the table carries either `ConfigPath = "..."` (works everywhere) or our keys inline (1.7+), never both.

Invariants: rendered TOML is valid and round-trips through tomllib; merging is idempotent (merging the same table
twice changes nothing the second time), keeps every other line of the file as the operator wrote it, and refuses
(ConfigMergeError) files it cannot edit safely rather than guessing.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config import CONTAINERD_OPTION_KEYS, ConfigError, ShimConfig

RUNTIME_TYPE = "io.containerd.wasmtime.v1"
HANDLER = "wasmtime"
RUNC_RUNTIME_TYPE = "io.containerd.runc.v2"
#: Annotations containerd's CRI copies from the pod (and the CRI container config) into each container's OCI spec:
#: without this, a pod's `wasm.shim.io/network` or `wasm.shim.io/component-isolation` never reaches the shim
#: (containerd passes only the annotations a runtime lists; docs/annotations.md).
PASSED_ANNOTATIONS = ("wasm.shim.io/*",)

#: Config version -> the plugin that owns `containerd.runtimes` (version 2: 1.6/1.7's CRI; 3: 2.x's runtime).
CRI_RUNTIME_PLUGIN = {2: "io.containerd.grpc.v1.cri", 3: "io.containerd.cri.v1.runtime"}
__all__ = ["CONTAINERD_OPTION_KEYS", "ConfigMergeError", "RuntimeTable", "merge_runtime_table", "remove_runtime_tables"]


class ConfigMergeError(ValueError):
    """The config file cannot be merged safely; the message says why and what to do."""


def _toml_string(value: str) -> str:
    # A TOML basic string accepts JSON's escapes for every character JSON escapes (toml.io v1.0.0 "String").
    return json.dumps(value, ensure_ascii=False)


def _table_path(version: int, handler: str) -> tuple[str, ...]:
    return ("plugins", CRI_RUNTIME_PLUGIN[version], "containerd", "runtimes", handler)


def _header(path: tuple[str, ...]) -> str:
    parts = [p if re.fullmatch(r"[A-Za-z0-9_-]+", p) else _toml_string(p) for p in path]
    return "[" + ".".join(parts) + "]"


def validate_options(options: Mapping[str, str]) -> dict[str, str]:
    """Check keys and values as the shim will (shim/config.py), so a typo fails here, not at the first pod."""
    try:
        ShimConfig().merged(options, "--option")
    except ConfigError as exc:
        raise ConfigMergeError(str(exc)) from None
    return dict(options)


@dataclass(frozen=True)
class RuntimeTable:
    version: int
    handler: str = HANDLER
    options: Mapping[str, str] | None = None
    config_path: str = ""

    def __post_init__(self) -> None:
        if self.version not in CRI_RUNTIME_PLUGIN:
            raise ConfigMergeError(
                f"containerd config version must be 2 (containerd 1.6/1.7) or 3 (2.x), not {self.version}"
            )
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.handler):
            raise ConfigMergeError(f"handler {self.handler!r}: use letters, digits, '.', '_' or '-' "
                                   "(it is a RuntimeClass handler name)")
        if self.options and self.config_path:
            raise ConfigMergeError(
                "give either --option KEY=VALUE or --config-path FILE, not both: with ConfigPath set, containerd "
                "sends only the file name and drops the inline options"
            )
        if self.config_path and not self.config_path.startswith("/"):
            raise ConfigMergeError(f"--config-path must be absolute, got {self.config_path!r}")
        if self.options:
            validate_options(self.options)

    @property
    def path(self) -> tuple[str, ...]:
        return _table_path(self.version, self.handler)

    def render(self) -> str:
        passed = "[" + ", ".join(map(_toml_string, PASSED_ANNOTATIONS)) + "]"
        lines = [_header(self.path), f"  runtime_type = {_toml_string(RUNTIME_TYPE)}",
                 f"  pod_annotations = {passed}", f"  container_annotations = {passed}"]
        if self.config_path or self.options:
            lines.append(_header((*self.path, "options")))
        if self.config_path:
            lines.append(f"  ConfigPath = {_toml_string(self.config_path)}")
        if self.options:
            if self.version == 2:
                lines.append("  # containerd 1.6 ignores these keys (only ConfigPath reaches the shim there);"
                             " 1.7 passes them.")
            for key, value in self.options.items():
                lines.append(f"  {key} = {_toml_string(value)}")
        return "\n".join(lines) + "\n"

    def as_data(self) -> dict[str, Any]:
        """What tomllib reads back for this table (to compare with a file's current one)."""
        data: dict[str, Any] = {
            "runtime_type": RUNTIME_TYPE,
            "pod_annotations": list(PASSED_ANNOTATIONS),
            "container_annotations": list(PASSED_ANNOTATIONS),
        }
        options: dict[str, str] = {}
        if self.config_path:
            options["ConfigPath"] = self.config_path
        options.update(self.options or {})
        if options:
            data["options"] = options
        return data


def _lookup(data: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = data
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


_HEADER_LINE = re.compile(r"^\s*\[(?!\[)(?P<body>.*)\]\s*(#.*)?$")


def _parse_header(body: str) -> tuple[str, ...] | None:
    """Split a table header's dotted key into its parts (bare or quoted); None if it is not one we can read."""
    parts: list[str] = []
    rest = body.strip()
    while rest:
        if rest[0] == '"':
            match = re.match(r'"((?:[^"\\]|\\.)*)"', rest)
            if not match:
                return None
            parts.append(json.loads(match.group(0)))
        elif rest[0] == "'":
            match = re.match(r"'([^']*)'", rest)
            if not match:
                return None
            parts.append(match.group(1))
        else:
            match = re.match(r"[A-Za-z0-9_-]+", rest)
            if not match:
                return None
            parts.append(match.group(0))
        rest = rest[match.end():].lstrip()
        if rest.startswith("."):
            rest = rest[1:].lstrip()
        elif rest:
            return None
    return tuple(parts)


MARKER = "# Added by `wasm-shim containerd-config --merge`"


def _drop_marker(lines: list[str]) -> None:
    """Remove our marker comment (and the blank line before it) that introduced a table being dropped."""
    if lines and lines[-1].startswith(MARKER):
        lines.pop()
        if lines and not lines[-1].strip():
            lines.pop()


def _drop_tables(text: str, path: tuple[str, ...]) -> str:
    """Remove the sections whose header is `path` or below it (up to the next other header)."""
    out: list[str] = []
    dropping = False
    for line in text.splitlines(keepends=True):
        match = _HEADER_LINE.match(line)
        if match or line.lstrip().startswith("[["):
            parsed = _parse_header(match.group("body")) if match else None
            dropping = parsed is not None and parsed[: len(path)] == path
            if dropping:
                _drop_marker(out)
        if not dropping:
            out.append(line)
    return "".join(out)


def merge_runtime_table(text: str, table: RuntimeTable) -> tuple[str | None, list[str]]:
    """Merge `table` into the containerd config `text`.

    Returns (new text, notes) or (None, notes) when the file already holds exactly this table. Raises
    ConfigMergeError for a file that is not TOML, has another config version, or defines the table in a form
    this text edit cannot replace safely (inline tables, dotted keys).
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigMergeError(f"not valid TOML: {exc}") from None
    file_version = data.get("version", 1)
    if file_version != table.version:
        hint = {1: "version 1 (no `version` key) is not supported: migrate it with `containerd config migrate`",
                2: "it is for containerd 1.6/1.7: use --config-version 2",
                3: "it is for containerd 2.x: use --config-version 3"}.get(file_version, "")
        raise ConfigMergeError(f"the file has config version {file_version}, not {table.version}; {hint}".rstrip("; "))
    notes: list[str] = []
    current = _lookup(data, table.path)
    if current == table.as_data():
        return None, [f"{_header(table.path)} is already up to date"]
    plugin_path = table.path[:-1]  # ...containerd.runtimes
    runtimes = _lookup(data, plugin_path) or {}
    cri_containerd = _lookup(data, plugin_path[:-1]) or {}
    default_runtime = "runc"
    if isinstance(cri_containerd, Mapping):
        default_runtime = cri_containerd.get("default_runtime_name", "runc")

    new_text = text
    if current is not None:
        new_text = _drop_tables(text, table.path)
        try:
            left = _lookup(tomllib.loads(new_text), table.path)
        except tomllib.TOMLDecodeError:
            left = "unparseable"
        if left is not None:
            raise ConfigMergeError(
                f"{_header(table.path)} is defined inline or with dotted keys; edit it by hand or move it into "
                "its own [table] section, then merge again"
            )
        notes.append(f"replaced the existing {_header(table.path)}")
    else:
        notes.append(f"added {_header(table.path)}")
    if not new_text.endswith("\n") and new_text:
        new_text += "\n"
    addition = f"\n{MARKER}: RuntimeClass handler {table.handler} -> the wasm-shim.\n" + table.render()
    if default_runtime == "runc" and "runc" not in runtimes and table.handler != "runc":
        # Declaring any runtime replaces containerd's built-in `runtimes` map; without `runc` there, CRI refuses
        # to load ("no corresponding runtime configured in `containerd.runtimes` for default_runtime_name").
        runc_path = (*plugin_path, "runc")
        addition += f"{_header(runc_path)}\n  runtime_type = {_toml_string(RUNC_RUNTIME_TYPE)}\n"
        notes.append(f"added {_header(runc_path)} (the default runtime, which containerd would otherwise lose)")
    new_text += addition
    try:
        merged = tomllib.loads(new_text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigMergeError(f"merging would produce invalid TOML ({exc}); the file was left unchanged") from None
    if _lookup(merged, table.path) != table.as_data():
        raise ConfigMergeError("merging did not produce the expected table; the file was left unchanged")
    return new_text, notes


def remove_runtime_tables(text: str, table: RuntimeTable, *, runc: bool = False) -> str:
    """`text` without `table` (and its options), and without the runc table when `runc` (the merge added it).

    The inverse of `merge_runtime_table` for a file edited since: every other line stays as it is. Raises
    ConfigMergeError when the result would not parse or still holds the table (inline or dotted-key forms).
    """
    new_text = _drop_tables(text, table.path)
    if runc:
        new_text = _drop_tables(new_text, (*table.path[:-1], "runc"))
    try:
        left = _lookup(tomllib.loads(new_text), table.path)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigMergeError(f"removing our table would leave invalid TOML ({exc}); edit it by hand") from None
    if left is not None:
        raise ConfigMergeError(f"{_header(table.path)} is defined inline or with dotted keys; remove it by hand")
    return new_text
