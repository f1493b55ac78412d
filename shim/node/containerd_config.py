"""containerd's runtime table for our handler: rendering it, merging it into an operator's config file, and
taking exactly that merge out again.

Owns the text of `[plugins."<cri plugin>".containerd.runtimes.<handler>]` (+ `.options`) for containerd config
version 2 (containerd 1.6/1.7) and 3 (2.x) (docs/cri.md), `merge` / `merge_runtime_table` and `unmerge`: pure text
transformations over a file's lines (shim/node/toml_sections.py); the caller does the file I/O, backup and atomic
rename.

How runtime options reach the shim (`runtimeoptions.v1.Options`):
- containerd 1.6 decodes the options table INTO that message (containerd v1.6 pkg/cri/server/helpers.go,
  generateRuntimeOptions -> getRuntimeOptionsType: a non-runc runtime_type gets `runtimeoptions.v1.Options`, filled
  by toml.PrimitiveDecode), so only the keys `TypeUrl` and `ConfigPath` survive; any other key is dropped without
  a word. On 1.6 our options must therefore live in a file named by `ConfigPath`.
- containerd 1.7 and 2.x do the same and, when `ConfigPath` is empty, also put the whole table as TOML into
  `config_body`. With `ConfigPath` set, `config_body` stays empty: the file is the only source.
So the table carries either `ConfigPath = "..."` (works everywhere) or our keys inline (1.7+), never both.

The merge appends a block (a blank line, our marker comment, our table, and `runc` when the file would otherwise
lose containerd's default runtime) or, when the file already has a table for the handler, puts the block where
that table was. Its `MergeRecord` says what it added and what it took out; `unmerge` uses it to remove exactly
that block from the file as it is now, whatever else changed around it, and to put back a table it replaced.

The pod sandbox (config version 3 only): `sandboxer = "shim"` makes containerd 2.x's CRI ask our shim for each
pod's sandbox through the Sandbox API (containerd internal/cri/config: `Sandboxer`; shim/sandbox/) instead of
running its pause container through us, and `disable_pause_image_pull = true` stops CRI fetching a pause image
no pod of this handler uses (containerd 2.4+; earlier 2.x releases ignore the key). `sandboxer = "podsandbox"`
keeps CRI's pause container (what 1.6/1.7, which have no Sandbox API, always do).

Invariants: rendered TOML is valid and round-trips through tomllib; merging is idempotent (merging the same table
twice changes nothing the second time); both edits drop or insert whole lines only, so every other byte stays as
the operator wrote it, and each is checked by parsing its result: everything but our tables must read the same
as before, else ConfigMergeError and no edit. A table of ours that someone changed is left in place and named.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import CONTAINERD_OPTION_KEYS, ConfigError, ShimConfig
from .toml_sections import runs, split

RUNTIME_TYPE = "io.containerd.wasmtime.v1"
HANDLER = "wasmtime"
RUNC_RUNTIME_TYPE = "io.containerd.runc.v2"
SANDBOXERS = ("shim", "podsandbox")  # containerd internal/cri/config ModeShim, ModePodSandbox
#: Annotations containerd's CRI copies from the pod (and the CRI container config) into each container's OCI spec:
#: without this, a pod's `wasm.shim.io/network` or `wasm.shim.io/component-isolation` never reaches the shim
#: (containerd passes only the annotations a runtime lists; docs/annotations.md).
PASSED_ANNOTATIONS = ("wasm.shim.io/*",)

#: Config version -> the plugin that owns `containerd.runtimes` (version 2: 1.6/1.7's CRI; 3: 2.x's runtime).
CRI_RUNTIME_PLUGIN = {2: "io.containerd.grpc.v1.cri", 3: "io.containerd.cri.v1.runtime"}
__all__ = ["CONTAINERD_OPTION_KEYS", "ConfigMergeError", "Merge", "MergeRecord", "RuntimeTable", "Unmerge", "conflicts",
           "merge", "merge_runtime_table", "runc_table", "shim_binary", "table_present", "unmerge"]


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


def shim_binary(runtime_type: str) -> str:
    """The binary containerd execs for `runtime_type`, looked up on its PATH: `containerd-shim-<name>-<version>` from
    the type's last two dot-separated parts (containerd runtime/v2 `shim.BinaryName`; `io.containerd.wasmtime.v1`
    -> `containerd-shim-wasmtime-v1`)."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+", runtime_type):
        raise ConfigMergeError(f"runtime type {runtime_type!r}: containerd needs dot-separated parts ending in "
                               "NAME.VERSION, e.g. io.containerd.wasmtime.v1")
    name, version = runtime_type.split(".")[-2:]
    return f"containerd-shim-{name}-{version}"


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
    runtime_type: str = RUNTIME_TYPE
    sandboxer: str = ""  # "" = the default: "shim" for version 3, nothing for version 2

    def __post_init__(self) -> None:
        shim_binary(self.runtime_type)  # a type containerd can map to a binary, or ConfigMergeError
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
        if self.sandboxer and self.sandboxer not in SANDBOXERS:
            raise ConfigMergeError(f"sandboxer must be one of {', '.join(SANDBOXERS)}, not {self.sandboxer!r}")
        if self.sandboxer and self.version == 2:
            raise ConfigMergeError("containerd 1.6/1.7 (config version 2) have no sandbox API: a sandboxer is "
                                   "for containerd 2.x (config version 3)")

    @property
    def effective_sandboxer(self) -> str:
        return self.sandboxer or ("shim" if self.version == 3 else "")

    @property
    def path(self) -> tuple[str, ...]:
        return _table_path(self.version, self.handler)

    def render(self) -> str:
        passed = "[" + ", ".join(map(_toml_string, PASSED_ANNOTATIONS)) + "]"
        lines = [_header(self.path), f"  runtime_type = {_toml_string(self.runtime_type)}",
                 f"  pod_annotations = {passed}", f"  container_annotations = {passed}"]
        if self.effective_sandboxer:
            lines.append(f"  sandboxer = {_toml_string(self.effective_sandboxer)}")
        if self.effective_sandboxer == "shim":
            lines.append("  disable_pause_image_pull = true")
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
            "runtime_type": self.runtime_type,
            "pod_annotations": list(PASSED_ANNOTATIONS),
            "container_annotations": list(PASSED_ANNOTATIONS),
        }
        if self.effective_sandboxer:
            data["sandboxer"] = self.effective_sandboxer
        if self.effective_sandboxer == "shim":
            data["disable_pause_image_pull"] = True
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


def _pruned(data: Any) -> Any:
    """`data` without empty tables (TOML creates the parents of a dotted header implicitly; they mean nothing)."""
    if not isinstance(data, Mapping):
        return data
    out = {}
    for key, value in data.items():
        value = _pruned(value)
        if not (isinstance(value, Mapping) and not value):
            out[key] = value
    return out


def _without(data: Mapping[str, Any], *paths: tuple[str, ...]) -> Any:
    """A copy of parsed TOML without the tables at `paths`, empty tables pruned: what must stay equal."""
    copy: Any = json.loads(json.dumps(data, default=str))
    for path in paths:
        parent = _lookup(copy, path[:-1])
        if isinstance(parent, dict):
            parent.pop(path[-1], None)
    return _pruned(copy)


def _parse(text: str, what: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigMergeError(f"{what} ({exc})") from None


MARKER = "# Added by `wasm-shim containerd-config --merge`"


@dataclass(frozen=True)
class MergeRecord:
    """What one merge put into a file and took out of it: what `unmerge` needs to undo exactly that.

    The installer keeps it in its install record (`as_json` / `from_json`), so uninstall can remove our block from
    the file as it is then, not restore bytes saved at install time.
    """

    table: str  # our table as merged: its header, keys and options section (RuntimeTable.render)
    runc: str = ""  # the runc table the merge added beside it ("" when the file had a runc table already)
    replaced: str = ""  # the lines of a table for the same handler that the merge took out (to put them back)
    leading_blank: bool = False  # the block starts with a blank line of ours, above the marker
    newline_added: bool = False  # the file did not end with a newline: the merge added one before the block

    def as_json(self) -> dict[str, Any]:
        return {"table": self.table, "runc": self.runc, "replaced": self.replaced,
                "leading_blank": self.leading_blank, "newline_added": self.newline_added}

    @classmethod
    def from_json(cls, data: object) -> MergeRecord:
        if not isinstance(data, Mapping) or not isinstance(data.get("table"), str):
            raise ConfigMergeError("the record of the merge is damaged (no table text)")
        fields = {"table": str, "runc": str, "replaced": str, "leading_blank": bool, "newline_added": bool}
        values: dict[str, Any] = {}
        for key, kind in fields.items():
            value = data.get(key, kind())
            if not isinstance(value, kind):
                raise ConfigMergeError(f"the record of the merge is damaged ({key} is not a {kind.__name__})")
            values[key] = value
        return cls(**values)

    def table_path(self) -> tuple[str, ...]:
        return _first_table(self.table)

    def runc_path(self) -> tuple[str, ...] | None:
        return _first_table(self.runc) if self.runc else None


def _first_table(text: str) -> tuple[str, ...]:
    lines = text.splitlines(keepends=True)
    for section in split(lines):
        if section.path:
            return section.path
    raise ConfigMergeError("the record of the merge is damaged (its table text has no header)")


@dataclass(frozen=True)
class Merge:
    text: str | None  # the merged file; None: it holds exactly this table already
    notes: list[str] = field(default_factory=list)
    record: MergeRecord | None = None  # None when text is None


def _marker_lines(lines: list[str], start: int, *, blank: bool) -> int:
    """Where our block begins when its first table starts at line `start`: above it our marker comment, and above
    that the blank line the block opened with (when `blank`)."""
    if start > 0 and lines[start - 1].startswith(MARKER):
        start -= 1
        if blank and start > 0 and not lines[start - 1].strip():
            start -= 1
    return start


def _with_block_starts(lines: list[str], spans: list[tuple[int, int]], first: int, *,
                       blank: bool) -> list[tuple[int, int]]:
    """`spans` with the one starting at line `first` widened upwards over our marker (and its blank line)."""
    out: list[tuple[int, int]] = []
    for start, end in spans:
        if start == first:
            start = _marker_lines(lines, start, blank=blank)
            if out and out[-1][1] >= start:
                start = out.pop()[0]
        out.append((start, end))
    return out


def runc_table(version: int) -> str:
    """The `runc` table a merge adds beside ours when the file declares no default runtime of its own."""
    return f"{_header((*_table_path(version, 'runc'),))}\n  runtime_type = {_toml_string(RUNC_RUNTIME_TYPE)}\n"


def merge(text: str, table: RuntimeTable) -> Merge:
    """Merge `table` into the containerd config `text`.

    Raises ConfigMergeError for a file that is not TOML, has another config version, or defines the table in a form
    a line edit cannot replace safely (inline tables, dotted keys).
    """
    data = _parse(text, "not valid TOML")
    file_version = data.get("version", 1)
    if file_version != table.version:
        hint = {1: "version 1 (no `version` key) is not supported: migrate it with `containerd config migrate`",
                2: "it is for containerd 1.6/1.7: use --config-version 2",
                3: "it is for containerd 2.x: use --config-version 3"}.get(file_version, "")
        raise ConfigMergeError(f"the file has config version {file_version}, not {table.version}; {hint}".rstrip("; "))
    current = _lookup(data, table.path)
    if current == table.as_data():
        return Merge(None, [f"{_header(table.path)} is already up to date"])
    plugin_path = table.path[:-1]  # ...containerd.runtimes
    runtimes = _lookup(data, plugin_path) or {}
    cri_containerd = _lookup(data, plugin_path[:-1]) or {}
    default_runtime = "runc"
    if isinstance(cri_containerd, Mapping):
        default_runtime = cri_containerd.get("default_runtime_name", "runc")
    notes: list[str] = []
    runc = ""
    if default_runtime == "runc" and "runc" not in runtimes and table.handler != "runc":
        # Declaring any runtime replaces containerd's built-in `runtimes` map; without `runc` there, CRI refuses
        # to load ("no corresponding runtime configured in `containerd.runtimes` for default_runtime_name").
        runc = runc_table(table.version)
    block = f"{MARKER}: RuntimeClass handler {table.handler} -> the wasm-shim.\n" + table.render() + runc

    lines = text.splitlines(keepends=True)
    sections = split(lines)
    existing = [i for i, s in enumerate(sections) if s.under(table.path)]
    if current is not None or existing:
        # In place: the block goes where the old table was, and the old lines are kept in the record.
        spans = runs(sections, existing)
        if spans:
            spans = _with_block_starts(lines, spans, spans[0][0], blank=True)
        kept = [line for n, line in enumerate(lines) if not any(a <= n < b for a, b in spans)]
        left = current if not spans else _lookup(
            _parse("".join(kept), "removing the old table would leave invalid TOML; edit it by hand"), table.path)
        if left is not None:
            raise ConfigMergeError(
                f"{_header(table.path)} is defined inline or with dotted keys; edit it by hand or move it into "
                "its own [table] section, then merge again"
            )
        replaced = "".join("".join(lines[a:b]) for a, b in spans)
        leading_blank = replaced.startswith(("\n", "\r\n"))
        at = spans[0][0]
        new_text = "".join(kept[:at]) + ("\n" if leading_blank else "") + block + "".join(kept[at:])
        record = MergeRecord(table.render(), runc, replaced, leading_blank, False)
        notes.append(f"replaced the existing {_header(table.path)} in place")
    else:
        newline_added = bool(text) and not text.endswith("\n")
        new_text = text + ("\n" if newline_added else "") + "\n" + block
        record = MergeRecord(table.render(), runc, "", True, newline_added)
        notes.append(f"added {_header(table.path)}")
    if runc:
        notes.append(f"added {_header((*plugin_path, 'runc'))} (the default runtime, which containerd would "
                     "otherwise lose)")
    merged = _parse(new_text, "merging would produce invalid TOML; the file was left unchanged")
    got = _without(merged, table.path, *([(*plugin_path, "runc")] if runc else []))
    if _lookup(merged, table.path) != table.as_data() or got != _without(data, table.path):
        raise ConfigMergeError("merging would change more than our table; the file was left unchanged")
    return Merge(new_text, notes, record)


def merge_runtime_table(text: str, table: RuntimeTable) -> tuple[str | None, list[str]]:
    """`merge` for `wasm-shim containerd-config --merge`: (new text or None when already there, notes)."""
    result = merge(text, table)
    return result.text, result.notes


@dataclass(frozen=True)
class Unmerge:
    text: str  # the file without our block (the same text when nothing of ours was left to remove)
    notes: list[str] = field(default_factory=list)  # what was done
    kept: list[str] = field(default_factory=list)  # tables of ours left in place, and why (someone changed them)


def unmerge(text: str, record: MergeRecord) -> Unmerge:
    """Remove from the config `text`, as it is now, exactly what the merge `record` describes added; put back the
    table it replaced. A table of ours whose values changed since is left, and named in `kept`; the runc table we
    added stays while other runtimes are declared beside it (they need the default declared too).

    Raises ConfigMergeError when the file does not parse, or when the line edit would change anything but our
    tables (then nothing is edited).
    """
    data = _parse(text, "does not parse as TOML now; nothing of ours was removed from it")
    path = record.table_path()
    ours = _lookup(_parse(record.table, "the record's table text is not TOML"), path)
    lines = text.splitlines(keepends=True)
    sections = split(lines)
    notes: list[str] = []
    kept: list[str] = []
    chosen: list[int] = []
    removed: list[tuple[str, ...]] = []
    current = _lookup(data, path)
    if current is None:
        notes.append(f"{_header(path)} was no longer in the file")
    elif current != ours:
        kept.append(f"{_header(path)} was changed since install: left as it is (remove it by hand once no pod uses "
                    f"handler {path[-1]})")
    else:
        chosen += [i for i, s in enumerate(sections) if s.under(path)]
        removed.append(path)
    runc_path = record.runc_path()
    if runc_path is not None:
        runc_now = _lookup(data, runc_path)
        others = sorted(set(_lookup(data, runc_path[:-1]) or {}) - {"runc", *(p[-1] for p in removed)})
        if runc_now is None:
            notes.append(f"{_header(runc_path)} was no longer in the file")
        elif runc_now != _lookup(_parse(record.runc, "the record's runc text is not TOML"), runc_path):
            kept.append(f"{_header(runc_path)} (added by install) was changed since: left as it is")
        elif others:
            notes.append(f"kept {_header(runc_path)}, added by install: the file now declares other runtimes "
                         f"({', '.join(others)}), which need the default runtime declared beside them")
        else:
            chosen += [i for i, s in enumerate(sections) if s.under(runc_path)]
            removed.append(runc_path)
    if not chosen:
        return Unmerge(text, notes, kept)
    spans = runs(sections, chosen)
    first_ours = min((sections[i].start for i in chosen if sections[i].under(path)), default=-1)
    spans = _with_block_starts(lines, spans, next((a for a, b in spans if a <= first_ours < b), -1),
                               blank=record.leading_blank)
    put_back = bool(record.replaced) and path in removed
    out: list[str] = []
    for n, line in enumerate(lines):
        span = next(((a, b) for a, b in spans if a <= n < b), None)
        if span is None:
            out.append(line)
        elif put_back and n == span[0] and span[0] <= first_ours < span[1]:
            out.append(record.replaced)
    new_text = "".join(out)
    if record.newline_added and path in removed and spans[-1][0] <= first_ours and spans[-1][1] == len(lines) \
            and new_text.endswith("\n"):
        new_text = new_text[:-1]  # our block was still the file's end: the line before it gets its ending back
    notes.append("removed " + " and ".join(_header(p) for p in removed) + " (added by install)"
                 + (f"; put back the {_header(path)} it had replaced" if put_back else ""))
    after = _parse(new_text, "removing our tables would leave invalid TOML; the file was left as it is")
    if put_back:
        table_ok = _lookup(after, path) == _lookup(_parse(record.replaced, "the record's replaced text is not TOML"),
                                                   path)
        got = _without(after, path)
    else:
        table_ok = all(_lookup(after, p) is None for p in removed)
        got = _without(after)
    if not table_ok or got != _without(data, *removed):
        raise ConfigMergeError("removing our tables by lines would change other settings; the file was left as it "
                               "is: remove " + " and ".join(_header(p) for p in removed) + " by hand")
    return Unmerge(new_text, notes, kept)


def conflicts(text: str, table: RuntimeTable) -> list[str]:
    """The runtimes the config `text` declares that `table` would take over: a different table for its handler
    (another installer's: runwasi's, kwasm's, runtime-class-manager's, an operator's), and any other handler whose
    runtime_type is `table`'s, since containerd would run the same binary for both. Our own table, exactly as
    `table` renders it, is no conflict."""
    data = _parse(text, "does not parse as TOML")
    runtimes = _lookup(data, table.path[:-1])
    out: list[str] = []
    for name, spec in (runtimes.items() if isinstance(runtimes, Mapping) else ()):
        if not isinstance(spec, Mapping):
            continue
        kind = spec.get("runtime_type", "")
        header = _header((*table.path[:-1], name))
        if name == table.handler and spec != table.as_data():
            out.append(f"{header} (runtime_type {kind!r}) is a runtime for handler {name} that this installer "
                       "did not write")
        elif name != table.handler and kind == table.runtime_type:
            out.append(f"{header} uses runtime_type {kind!r}: containerd would run the same binary "
                       f"{shim_binary(table.runtime_type)} for it and for handler {table.handler}")
    return out


def table_present(text: str, table: str) -> bool:
    """Whether the config `text` holds the table `table` (rendered text) with exactly its values."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return False
    path = _first_table(table)
    return _lookup(data, path) == _lookup(tomllib.loads(table), path)
