"""Which containerd a node runs, where its config lives, and the exact bytes an install or uninstall writes.

Sans-IO: every function here takes what it needs to know about the host as arguments (a `Probe` that answers
"does this host path exist" and "what are its bytes") and returns values; the installer does the reading, writing
and restarting. Paths are host paths (as the node's own processes see them), never prefixed by a host-root mount.

Layouts (`LAYOUTS`), each with its config file, how our table gets in, its restart command and its CRI socket:
- `containerd`: a packaged or hand-installed containerd, `/etc/containerd/config.toml`, config version 2
  (containerd 1.6/1.7) or 3 (2.x), read from the file's `version` key; the table is merged into the file.
- `k3s`, `rke2`: the agent regenerates `config.toml` on every start from `config.toml.tmpl` (`config-v3.toml.tmpl`
  for containerd 2.x) when that exists (docs.k3s.io "Configuring containerd"); we merge into the template, or
  create it from the generated file when there is none (uninstall then deletes it again).
- `microk8s`: `/var/snap/microk8s/current/args/containerd-template.toml` (its containerd reads that template at
  start); merged in place.
- `k0s`: `/etc/k0s/containerd.d/*.toml` drop-ins are merged into the generated config by k0s (docs.k0sproject.io
  "runtime.md"); we own one drop-in file, `wasm-shim.toml`.

Invariants: `plan_install` never returns bytes that do not parse as TOML with our table in them (it goes through
`containerd_config.merge`, the same code path as `wasm-shim containerd-config --merge`), and returns the
`ConfigEdit` the install record keeps; `plan_uninstall` works on the file as it is at uninstall time: it removes
exactly the block the record describes (containerd_config.unmerge), so every later edit of the operator's stays,
and deletes a file only when the install created it and it holds nothing else now. A first install refuses a
file that already has another runtime for our handler or our runtime type (another installer's shim), changing
nothing: the operator names another handler, runtime type and binary instead.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .containerd_config import HANDLER, ConfigMergeError, MergeRecord, RuntimeTable, conflicts, merge, unmerge

LABEL = "wasm.shim.io/runtime"
REASON_ANNOTATION = "wasm.shim.io/runtime-reason"
VERSION_ANNOTATION = "wasm.shim.io/runtime-version"


def node_keys(handler: str) -> tuple[str, str, str]:
    """The Node label and the two annotations an install for `handler` owns: the plain names for the default
    handler, `-<handler>` after them for any other, so two releases on one node never touch each other's (the
    chart's RuntimeClass selects on the label of its own handler: charts/wasm-shim/templates/_helpers.tpl)."""
    if handler == HANDLER:
        return LABEL, REASON_ANNOTATION, VERSION_ANNOTATION
    return f"{LABEL}-{handler}", f"{REASON_ANNOTATION}-{handler}", f"{VERSION_ANNOTATION}-{handler}"
DROPIN_NAME = "wasm-shim.toml"
#: Where containerd finds a shim binary by name: its PATH (a systemd unit's default PATH) and, for the
#: distributions that ship containerd in a directory of their own, that directory, which they put first on it.
CONTAINERD_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
LAYOUT_BIN_DIRS = {"k3s": ("/var/lib/rancher/k3s/data/current/bin",), "rke2": ("/var/lib/rancher/rke2/bin",),
                   "microk8s": ("/snap/microk8s/current/bin",), "k0s": ("/var/lib/k0s/bin",)}
#: Run the restart inside PID 1's namespaces: the installer pod has hostPID, so PID 1 is the node's init, and its
#: mount/UTS/IPC/net/PID namespaces are where `systemctl` finds the system bus (nsenter(1)).
NSENTER = ("nsenter", "-t", "1", "-m", "-u", "-i", "-n", "-p", "--")


class InstallError(RuntimeError):
    """The node cannot be installed or uninstalled; the message names what failed and what to do."""


class Probe:
    """What the pure functions may ask about the host: existence and bytes of host paths."""

    def __init__(self, exists: Callable[[str], bool], read: Callable[[str], bytes | None]) -> None:
        self.exists = exists
        self.read = read


@dataclass(frozen=True)
class Layout:
    name: str
    config_path: str  # the file we edit or create
    config_version: int  # 2: containerd 1.6/1.7; 3: 2.x
    mode: str  # "merge": edit in place; "template": k3s/rke2 .tmpl (created from base_path if absent); "dropin"
    restart: tuple[str, ...]
    cri_socket: str
    base_path: str = ""  # template mode: the generated config a new template starts from

    def describe(self) -> str:
        return f"{self.name} (config version {self.config_version}, {self.config_path})"


CONTAINERD_CONFIG = "/etc/containerd/config.toml"
K3S_DIR = "/var/lib/rancher/k3s/agent/etc/containerd"
RKE2_DIR = "/var/lib/rancher/rke2/agent/etc/containerd"
MICROK8S_TEMPLATE = "/var/snap/microk8s/current/args/containerd-template.toml"
K0S_DROPINS = "/etc/k0s/containerd.d"
LAYOUTS = ("containerd", "k3s", "rke2", "microk8s", "k0s")
UNIT_DIRS = ("/etc/systemd/system", "/usr/local/lib/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system")


def _version_of(text: str, path: str) -> int:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InstallError(f"{path} does not parse as TOML ({exc}); fix it by hand, then install again") from None
    version = data.get("version", 1)
    if version not in (2, 3):
        raise InstallError(
            f"{path} has config version {version!r}: the installer knows version 2 (containerd 1.6/1.7) and 3 (2.x); "
            "migrate it with `containerd config migrate`"
        )
    return int(version)


def _unit(probe: Probe, *names: str) -> str:
    """The first systemd unit among `names` that has a unit file; else the first name."""
    for name in names:
        if any(probe.exists(f"{d}/{name}.service") for d in UNIT_DIRS):
            return name
    return names[0]


def _grpc_address(text: str) -> str:
    try:
        grpc = tomllib.loads(text).get("grpc", {})
    except tomllib.TOMLDecodeError:
        return ""
    address = grpc.get("address", "") if isinstance(grpc, Mapping) else ""
    return address if isinstance(address, str) else ""


def _read_text(probe: Probe, path: str) -> str | None:
    data = probe.read(path)
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InstallError(f"{path} is not UTF-8 text; it cannot be a containerd config") from None


def _containerd(probe: Probe, config_path: str) -> Layout:
    text = _read_text(probe, config_path)
    if text is None:
        raise InstallError(
            f"no containerd config at {config_path}: containerd runs on its built-in defaults there, which the "
            "installer will not guess; write one (`containerd config default > " + config_path + "`), restart "
            "containerd, then install again (or name another file with --containerd-config)"
        )
    version = _version_of(text, config_path)
    socket = _grpc_address(text) or "/run/containerd/containerd.sock"
    return Layout("containerd", config_path, version, "merge", (*NSENTER, "systemctl", "restart", "containerd"),
                  socket)


def _rancher(probe: Probe, name: str, directory: str) -> Layout:
    base = f"{directory}/config.toml"
    base_text = _read_text(probe, base)
    # A template that already exists is the source of truth (the agent rewrites config.toml from it).
    for tmpl, version in ((f"{directory}/config-v3.toml.tmpl", 3), (f"{directory}/config.toml.tmpl", 0)):
        text = _read_text(probe, tmpl)
        if text is not None:
            if "{{" in text:
                raise InstallError(
                    f"{tmpl} holds Go template actions, which the installer cannot merge into safely; add the "
                    "table printed by `wasm-shim containerd-config` by hand"
                )
            return Layout(name, tmpl, version or _version_of(text, tmpl), "template", _rancher_restart(probe, name),
                          "/run/k3s/containerd/containerd.sock", base)
    if base_text is None:
        raise InstallError(f"no containerd config at {base}: start {name} once so it writes it, then install again")
    version = _version_of(base_text, base)
    tmpl = f"{directory}/config-v3.toml.tmpl" if version == 3 else f"{directory}/config.toml.tmpl"
    return Layout(name, tmpl, version, "template", _rancher_restart(probe, name), "/run/k3s/containerd/containerd.sock",
                  base)


def _rancher_restart(probe: Probe, name: str) -> tuple[str, ...]:
    unit = _unit(probe, f"{name}-agent", name) if name == "k3s" else _unit(probe, "rke2-agent", "rke2-server")
    return (*NSENTER, "systemctl", "restart", unit)


def _microk8s(probe: Probe) -> Layout:
    text = _read_text(probe, MICROK8S_TEMPLATE)
    if text is None:
        raise InstallError(f"no containerd template at {MICROK8S_TEMPLATE}")
    version = _version_of(text, MICROK8S_TEMPLATE)
    return Layout("microk8s", MICROK8S_TEMPLATE, version, "merge",
                  (*NSENTER, "snap", "restart", "microk8s.daemon-containerd"),
                  "/var/snap/microk8s/common/run/containerd.sock")


def dropin_name(handler: str) -> str:
    """Our k0s drop-in: one per handler, so a second release (another handler) owns a file of its own."""
    return DROPIN_NAME if handler == HANDLER else f"wasm-shim-{handler}.toml"


def _k0s(probe: Probe, version: int | None, handler: str) -> Layout:
    path = f"{K0S_DROPINS}/{dropin_name(handler)}"
    text = _read_text(probe, path)
    # k0s 1.27-1.31 embed containerd 1.7 (config version 2); a drop-in of ours names its version explicitly.
    found = _version_of(text, path) if text is not None else None
    unit = _unit(probe, "k0sworker", "k0scontroller")
    return Layout("k0s", path, version or found or 2, "dropin", (*NSENTER, "systemctl", "restart", unit),
                  "/run/k0s/containerd.sock")


def detect(probe: Probe, *, layout: str = "", containerd_config: str = "", config_version: int | None = None,
           handler: str = HANDLER) -> Layout:
    """The node's layout: the one named, else the first whose files exist (k0s, k3s, rke2, microk8s, containerd).

    Raises InstallError for a host with none of them, or with a config we cannot read.
    """
    if layout and layout not in LAYOUTS:
        raise InstallError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    if containerd_config and layout not in ("", "containerd"):
        raise InstallError("--containerd-config names a plain containerd's file; it does not apply to " + layout)
    if layout == "k0s" or (not layout and not containerd_config and probe.exists(K0S_DROPINS)):
        return _k0s(probe, config_version, handler)
    if layout == "k3s" or (not layout and not containerd_config and probe.exists(K3S_DIR)):
        return _rancher(probe, "k3s", K3S_DIR)
    if layout == "rke2" or (not layout and not containerd_config and probe.exists(RKE2_DIR)):
        return _rancher(probe, "rke2", RKE2_DIR)
    if layout == "microk8s" or (not layout and not containerd_config and probe.exists(MICROK8S_TEMPLATE)):
        return _microk8s(probe)
    path = containerd_config or CONTAINERD_CONFIG
    if not layout and not containerd_config and not probe.exists(path) and not probe.exists("/etc/containerd"):
        raise InstallError(
            "unknown node layout: none of /etc/containerd, " + ", ".join((K3S_DIR, RKE2_DIR, MICROK8S_TEMPLATE,
                                                                           K0S_DROPINS))
            + " exists; name the file with --containerd-config (and --layout containerd)"
        )
    return _containerd(probe, path)


@dataclass(frozen=True)
class ConfigEdit:
    """What the install did to the config file, kept in the install record for uninstall.

    `merge` is None when the file held our table already before the first install (someone else put it there:
    uninstall leaves it). `created_from_sha256` is set when the file did not exist (a k3s/rke2 template made from
    the generated config, a k0s drop-in): the digest of the text it was made from, so uninstall deletes the file
    when, without our block, it is back to exactly that.
    """

    merge: MergeRecord | None
    created_from_sha256: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"merge": None if self.merge is None else self.merge.as_json(),
                "created_from_sha256": self.created_from_sha256}

    @classmethod
    def from_json(cls, data: object) -> ConfigEdit:
        if not isinstance(data, Mapping):
            raise InstallError("the install record's config_edit is damaged")
        try:
            record = None if data.get("merge") is None else MergeRecord.from_json(data["merge"])
        except ConfigMergeError as exc:
            raise InstallError(f"the install record's config_edit: {exc}") from None
        created = data.get("created_from_sha256", "")
        if not isinstance(created, str):
            raise InstallError("the install record's config_edit is damaged (created_from_sha256)")
        return cls(record, created)


@dataclass(frozen=True)
class ConfigPlan:
    """The edit of one file: its bytes before (None: it did not exist) and after (None: leave it as it is), and
    the record of what the install has done to it so far (this run and the ones before)."""

    path: str
    original: bytes | None
    new: bytes | None
    notes: list[str] = field(default_factory=list)
    edit: ConfigEdit = ConfigEdit(None)


def runtime_table(layout: Layout, options_path: str, handler: str = HANDLER, runtime_type: str = "") -> RuntimeTable:
    # Options always through ConfigPath: the only form containerd 1.6 passes (containerd_config's docstring), and
    # a file the installer can rewrite on upgrade without touching containerd's config.
    try:
        if runtime_type:
            return RuntimeTable(layout.config_version, handler, config_path=options_path, runtime_type=runtime_type)
        return RuntimeTable(layout.config_version, handler, config_path=options_path)
    except ConfigMergeError as exc:
        raise InstallError(str(exc)) from None


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def plan_install(layout: Layout, probe: Probe, table: RuntimeTable, previous: ConfigEdit | None = None) -> ConfigPlan:
    """The config edit that adds `table` on this layout (new=None when it is already there).

    `previous` is the record of the installs before this one: a table they merged is ours, so replacing it (an
    upgrade that changes the table) keeps what the first merge took out and whether it made the file.
    """
    current = _read_text(probe, layout.config_path)
    original = None if current is None else current.encode("utf-8")
    if current is None:
        if layout.mode == "merge":
            raise InstallError(f"no containerd config at {layout.config_path}")
        if layout.mode == "template":
            base = _read_text(probe, layout.base_path)
            if base is None:
                raise InstallError(f"no containerd config at {layout.base_path}")
            source = base
        else:  # dropin: our own file, holding only the version and our table
            source = f"version = {layout.config_version}\n"
    else:
        source = current
    if previous is None:
        # A first install never takes over another runtime: not a table for our handler that someone else wrote,
        # not another handler running our binary (containerd_config.conflicts).
        try:
            found = conflicts(source, table)
        except ConfigMergeError as exc:
            raise InstallError(f"{layout.config_path}: {exc}") from None
        if found:
            raise InstallError(
                f"{layout.config_path}: {'; '.join(found)}. Refusing to take it over; nothing was changed. To run "
                "beside it, give this install another handler, runtime type and binary (chart values "
                "runtimeClass.handler, node.runtimeType, node.shimBinary; docs/node-install.md)")
    try:
        result = merge(source, table)
    except ConfigMergeError as exc:
        raise InstallError(f"{layout.config_path}: {exc}") from None
    created = _sha256(source) if current is None else ""
    if result.record is None:
        # Already there. In a file we create (a template from an already merged base): the copy is the edit.
        edit = previous or ConfigEdit(None, created)
        return ConfigPlan(layout.config_path, original, None if current is not None else source.encode("utf-8"),
                          result.notes, edit)
    record = result.record
    if previous is not None and previous.merge is not None:
        # The table being replaced is the one an earlier install merged: what that merge took out (and added
        # around it) is still what uninstall must undo.
        record = replace(record, replaced=previous.merge.replaced, newline_added=previous.merge.newline_added,
                         runc=record.runc or previous.merge.runc)
        created = previous.created_from_sha256
    elif previous is not None:
        created = previous.created_from_sha256
    assert result.text is not None
    return ConfigPlan(layout.config_path, original, result.text.encode("utf-8"), result.notes,
                      ConfigEdit(record, created))


@dataclass(frozen=True)
class ConfigRestore:
    """What uninstall does to the config file: `write` these bytes, `delete` it, or neither (leave it)."""

    write: bytes | None
    delete: bool
    notes: list[str]
    kept: list[str]  # what of ours stays in the file, and why (someone changed it)


def plan_uninstall(path: str, current: bytes | None, edit: ConfigEdit) -> ConfigRestore:
    """The file minus exactly what the install added, from its bytes as they are now (see ConfigEdit)."""
    if current is None:
        return ConfigRestore(None, False, ["the file is gone; nothing to remove"], [])
    if edit.merge is None:
        if edit.created_from_sha256 and hashlib.sha256(current).hexdigest() == edit.created_from_sha256:
            return ConfigRestore(None, True, ["the install created the file (a copy holding the table already) and "
                                              "it is unchanged: deleted"], [])
        return ConfigRestore(None, False, ["the table was there before install: left as it is"], [])
    try:
        text = current.decode("utf-8")
    except UnicodeDecodeError:
        raise InstallError(f"{path} is no longer UTF-8 text; remove our tables from it by hand") from None
    try:
        result = unmerge(text, edit.merge)
    except ConfigMergeError as exc:
        raise InstallError(f"{path}: {exc}") from None
    notes = list(result.notes)
    if edit.created_from_sha256 and _sha256(result.text) == edit.created_from_sha256 and not result.kept:
        return ConfigRestore(None, True, [*notes, "the install created the file and nothing else is in it now: "
                                                  "deleted"], [])
    if edit.created_from_sha256:
        notes.append("the install created the file, but it holds changes made since: kept")
    new = result.text.encode("utf-8")
    return ConfigRestore(new if new != current else None, False, notes, result.kept)
