"""The install record, `<prefix>/state.json`: everything the installs on a node put there, so that uninstall removes
exactly that and nothing else.

What it names: the bundle versions copied under `versions/`, the files written under the prefix (the shim's
options file, the policy and its keys, the backup of the original config), the two links (`current` and the bin
link, each with the target we gave it), the directories install created, the daemon's data directories that did
not exist at install (the daemon makes them later), and the config edit (`layout.ConfigEdit`: the block merged
into containerd's config and what it replaced).

Invariants: written as the last step of every install, once everything it names exists (through the undo log, so
a failed install leaves the previous record); paths under the prefix are kept relative and checked on reading
(plain names, no `..`), so a damaged record can never name a file outside the prefix; a daemon directory must not
be a system directory. A record written by an older installer (no `format` key, which then removed the whole
prefix) is read as the files and edit that installer made, never as "everything under the prefix".
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from .containerd_config import HANDLER, RUNTIME_TYPE, ConfigMergeError, MergeRecord, RuntimeTable, runc_table, unmerge
from .distributions import ConfigEdit, InstallError
from .host import Host
from .prefix import SYSTEM_DIRS, refuse_system_dir
from .toml_sections import runs, split

FORMAT = 2
STATE_FILE = "state.json"
OPTIONS_FILE = "config.toml"
POLICY_DIR = "policy"
BACKUP = "backup/original"
SHIM_BINARY = "containerd-shim-wasmtime-v1"  # the bundle's launcher (bin/); the link to it may have another name


@dataclass
class Record:
    version: str  # the bundle id `current` points at
    layout: str
    config_path: str  # node path of the file we edited (or created)
    config_version: int
    options_path: str  # the options file as containerd names it (ConfigPath)
    installed_sha256: str  # the config's bytes as the last install left them
    config_edit: ConfigEdit
    bin_link: str  # node path
    bin_link_target: str
    original: str | None = None  # prefix-relative backup of the config before the first install (None: no file)
    files: list[str] = field(default_factory=list)  # prefix-relative regular files we wrote
    versions: list[str] = field(default_factory=list)  # directory names under versions/ we copied
    created_dirs: list[str] = field(default_factory=list)  # node paths, parents before children
    daemon_dirs: list[dict[str, str]] = field(default_factory=list)  # {"path", "top"}: see `daemon_dir`
    handler: str = HANDLER  # the runtime table's handler and type (records before these keys: the defaults)
    runtime_type: str = RUNTIME_TYPE

    def dump(self) -> bytes:
        data = asdict(self)
        data["config_edit"] = self.config_edit.as_json()
        data["format"] = FORMAT
        return json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"


def daemon_dir(host: Host, node_path: str) -> dict[str, str] | None:
    """A data directory the shim daemon creates on first use (the compiled-module cache, the artifact cache): when
    it does not exist yet, the daemon's making it is part of what install started, so uninstall removes it, and
    its parents up to `top` (the topmost one missing now) while they are empty. None when it exists already."""
    path = os.path.normpath(node_path)
    if host.exists(path) or path in SYSTEM_DIRS:
        return None
    top = path
    while not host.exists(os.path.dirname(top)) and os.path.dirname(top) not in SYSTEM_DIRS:
        top = os.path.dirname(top)
    return {"path": path, "top": top}


def _relative(name: object, what: str) -> str:
    if not isinstance(name, str) or not name or name.startswith("/") or os.path.normpath(name) != name \
            or name.split("/")[0] == "..":
        raise InstallError(f"the install record's {what} entry {name!r} is not a plain path under the prefix; "
                           "the record is damaged: remove what is left by hand")
    return name


def _strings(data: Mapping[str, Any], key: str) -> list[str]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InstallError(f"the install record's {key} is not a list of paths; the record is damaged")
    return list(value)


def load(host: Host, prefix: str, node_view: str) -> Record | None:
    """The record under `prefix` (None: not installed). `node_view` names `prefix` as the node's processes do
    (node root + prefix): what an older record's links point into."""
    path = os.path.join(prefix, STATE_FILE)
    raw = host.read(path)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        raise InstallError(f"{path} is not JSON; the install record is damaged") from None
    if not isinstance(data, dict):
        raise InstallError(f"{path} is not an install record")
    try:
        if "format" not in data:
            return _legacy(host, prefix, node_view, data)
        record = Record(
            version=str(data["version"]), layout=str(data["layout"]), config_path=str(data["config_path"]),
            config_version=int(data["config_version"]), options_path=str(data["options_path"]),
            installed_sha256=str(data["installed_sha256"]), config_edit=ConfigEdit.from_json(data["config_edit"]),
            bin_link=str(data["bin_link"]), bin_link_target=str(data["bin_link_target"]),
            original=None if data.get("original") is None else _relative(data["original"], "original"),
            files=[_relative(f, "files") for f in _strings(data, "files")],
            versions=[_relative(v, "versions") for v in _strings(data, "versions")],
            created_dirs=_strings(data, "created_dirs"),
            daemon_dirs=list(data.get("daemon_dirs", [])),
            handler=str(data.get("handler", HANDLER)), runtime_type=str(data.get("runtime_type", RUNTIME_TYPE)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InstallError(f"{path} lacks or mangles {exc}; the install record is damaged") from None
    if any("/" in v for v in record.versions):
        raise InstallError(f"{path}: a version is not a plain directory name; the install record is damaged")
    for entry in record.daemon_dirs:
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("path", "top")):
            raise InstallError(f"{path}: a daemon directory entry is damaged")
        refuse_system_dir(entry["top"], "the install record's daemon directory")
        if not (entry["path"] == entry["top"] or entry["path"].startswith(entry["top"].rstrip("/") + "/")):
            raise InstallError(f"{path}: a daemon directory entry is damaged ({entry['path']} is not under "
                               f"{entry['top']})")
    return record


def _legacy(host: Host, prefix: str, node_view: str, data: Mapping[str, Any]) -> Record:
    """A record of the installer before this format: it listed no files (its uninstall removed the whole prefix)
    and kept the original config bytes instead of the merge. Read as what that installer wrote."""
    version = str(data["version"])
    config_path = str(data["config_path"])
    config_version = int(data["config_version"])
    options_path = str(data["options_path"])
    original_name = data.get("original")
    original = host.read(os.path.join(prefix, str(original_name))) if original_name else None
    table = RuntimeTable(config_version, config_path=options_path)
    runc = runc_table(config_version) if data.get("added_runc") else ""
    replaced = ""
    original_text = original.decode("utf-8", "replace") if original is not None else ""
    if original_text:
        lines = original_text.splitlines(keepends=True)
        sections = split(lines)
        spans = runs(sections, [i for i, s in enumerate(sections) if s.under(table.path)])
        replaced = "".join("".join(lines[a:b]) for a, b in spans)
    merge = MergeRecord(table.render(), runc, replaced, True,
                        bool(original_text) and not original_text.endswith("\n"))
    created = ""
    current = host.read(config_path)
    if original is None and current is not None and hashlib.sha256(current).hexdigest() == data.get("installed_sha256"):
        # That installer made this file and nobody changed it since: without our block, it is what it was made of.
        try:
            created = hashlib.sha256(unmerge(current.decode("utf-8"), merge).text.encode()).hexdigest()
        except (ConfigMergeError, UnicodeDecodeError):
            created = ""
    files = [OPTIONS_FILE] + ([str(original_name)] if original_name else [])
    policy = host.path(os.path.join(prefix, POLICY_DIR))
    if os.path.isdir(policy):
        files += [f"{POLICY_DIR}/{n}" for n in sorted(os.listdir(policy)) if os.path.isfile(os.path.join(policy, n))]
    versions_dir = host.path(os.path.join(prefix, "versions"))
    versions = sorted(n for n in os.listdir(versions_dir)
                      if os.path.isfile(os.path.join(versions_dir, n, "BUNDLE.json"))) if os.path.isdir(versions_dir) \
        else []
    shim_data = data.get("shim_data")
    return Record(
        version=version, layout=str(data["layout"]), config_path=config_path, config_version=config_version,
        options_path=options_path, installed_sha256=str(data.get("installed_sha256", "")),
        config_edit=ConfigEdit(merge, created), bin_link=str(data.get("bin_link", "")),
        bin_link_target=os.path.join(node_view, "current", "bin", SHIM_BINARY),
        original=str(original_name) if original_name else None, files=files, versions=versions,
        created_dirs=[str(d) for d in data.get("created_dirs", [])],
        daemon_dirs=[{"path": str(shim_data), "top": str(shim_data)}] if shim_data else [],
    )

