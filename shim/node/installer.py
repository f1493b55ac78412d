"""`wasm-shim node install|uninstall|status`: the I/O around `layout`'s plans, on a node seen through a host root.

Owns: the lock, the bundle copy (versioned directory + atomic `current` switch), the shim's options file, the link
containerd finds the shim binary by, the config write with its backup, the restart through the host's init and the
wait for CRI, the rollback, and the state file that lets uninstall put every byte back.

Paths: a *node path* is what the node's own processes see (`/etc/containerd/config.toml`); `Host.path` maps it
under the host-root mount the installer sees it through (`/host/etc/...`). Text the node's processes read (the
shebang of the shim binary, `ConfigPath`, the bin link target) names `node_root` + node path, where `node_root` is
`/` on a real node (a fixture root in tests, where containerd runs beside the test).

Invariants:
- One installer at a time per node: an exclusive, non-blocking flock on `<prefix>/.lock`; a second one stops.
- Every change this run makes is recorded in an undo log before it is made; any failure (bad input, a write
  refused, containerd not answering CRI after the restart) replays the log backwards, so the node is as found.
- Uninstall removes exactly what the state file lists (files, links, directories we created) and writes back the
  original config bytes when the file is as we left it; afterwards nothing of ours is on the node.
- Running daemons keep working across an upgrade: the previous version directory stays until the next upgrade.
- The signature policy: unless an explicit `--option policy=...` names the operator's own file, the installer
  owns `<prefix>/policy/` (the policy and the keys it names, from `--policy-dir`, or an allow-all policy without
  one) and the `policy` option points there. It is checked (oci.policy.parse_policy, keys read) before anything
  is restarted; a bad one fails the install with the reason. Running daemons re-read the file at their next
  Create (oci.policy.PolicyFile), so a new policy needs no restart of anything.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..config import ShimConfig
from . import bundle as bundle_mod
from .containerd_config import RuntimeTable, validate_options
from .layout import NSENTER, InstallError, Layout, Probe, detect, plan_install, plan_restore, runtime_table

SHIM_BINARY = "containerd-shim-wasmtime-v1"
STATE_FILE = "state.json"
OPTIONS_FILE = "config.toml"
POLICY_DIR = "policy"
POLICY_FILE = "policy.toml"
ALLOW_ALL_POLICY = (b"# Written by `wasm-shim node install` without --policy-dir: no signature checks.\n"
                    b"# docs/supply-chain.md \"The node's policy\"; the chart's signaturePolicy values set one.\n"
                    b'default = "allow"\n')
DEFAULT_CACHE_DIR: str = ShimConfig.DEFAULTS["cache_dir"]


def write_atomic(path: str, data: bytes, *, mode_from: str | None = None, mode: int = 0o644) -> None:
    """Replace `path` with `data` all at once (temp file in the same directory + rename; mode of `mode_from`)."""
    partial = path + ".wasm-shim.partial"
    try:
        with open(partial, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode_from is not None and os.path.exists(mode_from):
            shutil.copymode(mode_from, partial)
        else:
            os.chmod(partial, mode)
        os.replace(partial, path)
    except OSError:
        try:
            os.unlink(partial)
        except OSError:
            pass
        raise


class Host:
    """A node's file system through its host-root mount."""

    def __init__(self, root: str) -> None:
        if not os.path.isdir(root):
            raise InstallError(f"--host-root {root} is not a directory (mount the node's / there)")
        self.root = os.path.abspath(root)

    def path(self, node_path: str) -> str:
        return os.path.join(self.root, node_path.lstrip("/"))

    def exists(self, node_path: str) -> bool:
        return os.path.lexists(self.path(node_path))

    def read(self, node_path: str) -> bytes | None:
        try:
            with open(self.path(node_path), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            raise InstallError(f"{node_path} is a directory, not a file") from None
        except OSError as exc:
            raise InstallError(f"cannot read {node_path}: {exc.strerror}") from None

    def probe(self) -> Probe:
        return Probe(self.exists, self.read)


class UndoLog:
    """Inverse actions of what this run changed, replayed newest first when the run fails."""

    def __init__(self) -> None:
        self._undo: list[tuple[str, Callable[[], None]]] = []

    def add(self, what: str, action: Callable[[], None]) -> None:
        self._undo.append((what, action))

    def replay(self) -> list[str]:
        errors = []
        while self._undo:
            what, action = self._undo.pop()
            try:
                action()
            except OSError as exc:
                errors.append(f"undo {what}: {exc}")
        return errors


@dataclass
class Options:
    """What `wasm-shim node install` was asked to do (the CLI's flags)."""

    host_root: str = "/host"
    node_root: str = "/"
    prefix: str = "/opt/wasm-shim"
    bin_dir: str = "/usr/local/bin"
    bundle: str = ""  # the bundle to install; "" = the one this process runs from
    layout: str = ""
    containerd_config: str = ""
    config_version: int | None = None
    shim_options: Mapping[str, str] = field(default_factory=dict)
    restart: bool = True
    restart_command: str = ""
    cri_socket: str = ""
    restart_timeout: float = 90.0
    policy_dir: str = ""  # a directory with policy.toml and the key files it names ("" = allow-all policy)


class Reporter:
    """Where the outcome goes besides stdout (the node object, via report.KubeReporter). This one: nowhere."""

    def ready(self, version: str, layout: str) -> None: ...

    def failed(self, reason: str, kept: str = "") -> None:
        """The install did not happen; ``kept``: the version that was installed before and still is (an upgrade
        rolled back whole), so the node still runs wasm."""

    def removed(self) -> None: ...


def _say(message: str) -> None:
    sys.stdout.write(f"wasm-shim node: {message}\n")
    sys.stdout.flush()


class Node:
    """One node's install state and the operations on it."""

    def __init__(self, options: Options, *, run: Callable[..., subprocess.CompletedProcess[bytes]] = subprocess.run,
                 cri_ready: Callable[[str, float], str] | None = None) -> None:
        self.o = options
        self.host = Host(options.host_root)
        self._run = run
        self._cri_ready = cri_ready or wait_for_cri
        self.undo = UndoLog()
        self._lock_fd = -1
        self._restarted: Layout | None = None  # set once a restart was tried: a rollback restarts again

    # --- paths ---------------------------------------------------------------------------------------------
    def node_view(self, node_path: str) -> str:
        """How the node's processes name `node_path` (node_root + node path)."""
        return os.path.join(os.path.abspath(self.o.node_root), node_path.lstrip("/"))

    def p(self, *parts: str) -> str:
        """A node path under the prefix."""
        return os.path.join(self.o.prefix, *parts)

    # --- primitive changes, each with its undo -------------------------------------------------------------
    def _mkdirs(self, node_path: str, created: list[str]) -> None:
        missing = []
        path = node_path
        while path not in ("/", "") and not self.host.exists(path):
            missing.append(path)
            path = os.path.dirname(path)
        for directory in reversed(missing):
            try:
                os.mkdir(self.host.path(directory), 0o755)
            except OSError as exc:
                raise InstallError(f"cannot create {directory}: {exc.strerror}") from None
            created.append(directory)
            self.undo.add(f"mkdir {directory}", functools.partial(os.rmdir, self.host.path(directory)))

    def _write(self, node_path: str, data: bytes, mode: int = 0o644) -> None:
        before = self.host.read(node_path)
        try:
            write_atomic(self.host.path(node_path), data, mode_from=self.host.path(node_path), mode=mode)
        except OSError as exc:
            raise InstallError(f"cannot write {node_path}: {exc.strerror}") from None
        self.undo.add(f"write {node_path}", lambda: self._put_back(node_path, before))

    def _put_back(self, node_path: str, data: bytes | None) -> None:
        if data is None:
            os.unlink(self.host.path(node_path))
        else:
            write_atomic(self.host.path(node_path), data, mode_from=self.host.path(node_path))

    def _symlink(self, node_path: str, target: str) -> None:
        real = self.host.path(node_path)
        before = os.readlink(real) if os.path.islink(real) else None
        if before == target:
            return
        tmp = real + ".wasm-shim.partial"
        try:
            if os.path.lexists(tmp):
                os.unlink(tmp)
            os.symlink(target, tmp)
            os.replace(tmp, real)
        except OSError as exc:
            raise InstallError(f"cannot link {node_path}: {exc.strerror}") from None

        def back() -> None:
            if before is None:
                os.unlink(real)
            else:
                os.unlink(real)
                os.symlink(before, real)

        self.undo.add(f"link {node_path}", back)

    # --- lock and state -------------------------------------------------------------------------------------
    def lock(self, created: list[str]) -> None:
        self._mkdirs(self.o.prefix, created)
        lock_path = self.host.path(self.p(".lock"))
        existed = os.path.exists(lock_path)
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise InstallError(f"cannot create the lock {self.p('.lock')}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InstallError(
                f"another `wasm-shim node` install or uninstall is running on this node (it holds {self.p('.lock')});"
                " this one changed nothing"
            ) from None
        self._lock_fd = fd
        if not existed:
            self.undo.add("lock file", lambda: os.unlink(lock_path))

    def unlock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def state(self) -> dict[str, object] | None:
        data = self.host.read(self.p(STATE_FILE))
        if data is None:
            return None
        try:
            state = json.loads(data)
        except ValueError:
            raise InstallError(f"{self.p(STATE_FILE)} is not JSON; the install record is damaged") from None
        if not isinstance(state, dict):
            raise InstallError(f"{self.p(STATE_FILE)} is not an install record")
        return state

    # --- restart ----------------------------------------------------------------------------------------------
    def restart(self, layout: Layout) -> None:
        argv = shlex.split(self.o.restart_command) if self.o.restart_command else list(layout.restart)
        self._restarted = layout
        _say(f"restarting containerd: {shlex.join(argv)}")
        try:
            done = self._run(argv, capture_output=True, timeout=self.o.restart_timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise InstallError(f"restart command {shlex.join(argv)} did not run: {exc}") from None
        if done.returncode != 0:
            tail = (done.stderr or b"").decode("utf-8", "replace").strip()[-400:]
            raise InstallError(f"restart command {shlex.join(argv)} failed (exit {done.returncode}): {tail}")
        socket = self.o.cri_socket or layout.cri_socket
        problem = self._cri_ready(self.host.path(socket), self.o.restart_timeout)
        if problem:
            raise InstallError(f"containerd did not come back after the restart: {problem}")

    # --- install ----------------------------------------------------------------------------------------------
    def install(self, reporter: Reporter) -> int:
        created: list[str] = []
        previous: Mapping[str, object] = {}
        try:
            try:
                self.lock(created)
                previous = self.state() or {}
                version, layout = self._install(created)
            except InstallError as exc:
                # Still under the lock: nobody else sees the node half-way back.
                errors = self.undo.replay()
                if self._restarted is not None:
                    # containerd may be down or running our config: bring it back on the bytes it had.
                    try:
                        self.restart(self._restarted)
                    except InstallError as again:
                        errors.append(f"restart after the rollback: {again}")
                reason = str(exc) + ("; while undoing: " + "; ".join(errors) if errors else "")
                sys.stderr.write(f"wasm-shim node install: {reason}\n")
                if errors:
                    sys.stderr.write("wasm-shim node install: the node could not be fully put back (above)\n")
                else:
                    sys.stderr.write("wasm-shim node install: the node is as it was before this run\n")
                kept = str(previous.get("version", "")) if not errors else ""
                if kept:
                    sys.stderr.write(f"wasm-shim node install: version {kept} stays installed and in use\n")
                reporter.failed(reason, kept=kept)
                return 1
        finally:
            self.unlock()
        reporter.ready(version, layout.name)
        return 0

    def _install(self, created: list[str]) -> tuple[str, Layout]:
        state = self.state() or {}
        probe = self.host.probe()
        layout = detect(probe, layout=self.o.layout, containerd_config=self.o.containerd_config,
                        config_version=self.o.config_version)
        if state and state.get("config_path") not in (None, layout.config_path):
            raise InstallError(
                f"already installed into {state.get('config_path')}, but this node now looks like "
                f"{layout.describe()}; uninstall first"
            )
        _say(f"layout: {layout.describe()}")
        shim_options = validate_or_fail(self.o.shim_options)
        if "policy" in shim_options and self.o.policy_dir:
            raise InstallError("--policy-dir and --option policy=... both name a signature policy: choose one")
        table = runtime_table(layout, self.node_view(self.p(OPTIONS_FILE)))
        plan = plan_install(layout, probe, table)

        source = os.path.abspath(self.o.bundle or bundle_mod.running_bundle())
        info = bundle_mod.read_info(source)
        version = info["id"]
        bin_link = os.path.join(self.o.bin_dir, SHIM_BINARY)
        link_target = self.node_view(self.p("current", "bin", SHIM_BINARY))
        real_link = self.host.path(bin_link)
        if os.path.lexists(real_link) and not (os.path.islink(real_link) and os.readlink(real_link) == link_target):
            raise InstallError(f"{bin_link} exists and is not ours (a link to {link_target}); remove it or choose "
                               "another --bin-dir")

        # Files: versioned bundle directory, then the switch, then the options file and the link.
        self._mkdirs(self.p("versions"), created)
        self._mkdirs(self.p("backup"), created)
        self._mkdirs(self.o.bin_dir, created)
        self._copy_bundle(source, version)
        previous = None
        current_real = self.host.path(self.p("current"))
        if os.path.islink(current_real):
            previous = os.path.basename(os.readlink(current_real))
        self._symlink(self.p("current"), os.path.join("versions", version))
        if "policy" not in shim_options:
            self._install_policy(created)
            shim_options["policy"] = self.node_view(self.p(POLICY_DIR, POLICY_FILE))
        self._write(self.p(OPTIONS_FILE), options_toml(shim_options))
        self._symlink(bin_link, link_target)

        # The containerd config: back up the original once (the first install's), then write.
        if "original" not in state:
            original = plan.original
            backup = self.p("backup", "original")
            if original is not None:
                self._write(backup, original, mode=0o600)
        if plan.new is not None:
            if plan.original is None:
                self._mkdirs(os.path.dirname(layout.config_path), created)
            self._write(layout.config_path, plan.new)
        for note in plan.notes:
            _say(f"{layout.config_path}: {note}")
        installed = plan.new if plan.new is not None else (plan.original or b"")
        new_state = {
            "version": version,
            "layout": layout.name,
            "config_path": layout.config_path,
            "config_version": layout.config_version,
            "options_path": self.node_view(self.p(OPTIONS_FILE)),
            "installed_sha256": hashlib.sha256(installed).hexdigest(),
            "original": state.get("original", "backup/original" if plan.original is not None else None),
            "added_runc": bool(state.get("added_runc")) or plan.added_runc,
            "bin_link": bin_link,
            "created_dirs": list(state.get("created_dirs", [])) + created,  # type: ignore[call-overload]
            "shim_data": state.get("shim_data", self._missing_ancestor(shim_options.get("cache_dir",
                                                                                           DEFAULT_CACHE_DIR))),
        }
        self._write(self.p(STATE_FILE), json.dumps(new_state, indent=2, sort_keys=True).encode() + b"\n")
        if self.o.restart and plan.new is not None:
            self.restart(layout)
        elif plan.new is None:
            _say("containerd's config already has the wasmtime runtime: no restart needed")
        else:
            _say("--no-restart: restart containerd to load the wasmtime runtime")
        # The previous version stays: a running daemon may still import modules from it.
        self._prune_versions(keep={version, previous or version})
        _say(f"installed {version} ({layout.describe()})")
        return version, layout

    def _missing_ancestor(self, node_path: str) -> str | None:
        """The topmost directory of `node_path` that does not exist yet: what the daemon will create, so what
        uninstall removes (None: it all exists, and is not ours)."""
        missing = None
        path = os.path.normpath(node_path)
        while path not in ("/", "") and not self.host.exists(path):
            missing = path
            path = os.path.dirname(path)
        return missing

    def _copy_bundle(self, source: str, version: str) -> None:
        target = self.p("versions", version)
        if self.host.exists(target):
            return  # same id = same bytes (bundle.read_info: the id is a digest of the content)
        partial = self.host.path(self.p("versions", f".{version}.partial"))
        shutil.rmtree(partial, ignore_errors=True)
        try:
            shutil.copytree(source, partial, symlinks=True,
                            ignore=lambda d, names: [bundle_mod.INSTALLER_DIR] if d == source else [])
            bundle_mod.write_launchers(partial, self.node_view(target))
            os.rename(partial, self.host.path(target))
        except OSError as exc:
            shutil.rmtree(partial, ignore_errors=True)
            raise InstallError(f"cannot copy the bundle to {target}: {exc.strerror or exc}") from None
        self.undo.add(f"bundle {target}", lambda: shutil.rmtree(self.host.path(target)))

    def _install_policy(self, created: list[str]) -> None:
        """Make `<prefix>/policy/` hold exactly the policy and keys of `--policy-dir` (or the allow-all policy),
        then check it as the shim will read it. Each write and removal is undoable."""
        files = read_policy_dir(self.o.policy_dir) if self.o.policy_dir else {POLICY_FILE: ALLOW_ALL_POLICY}
        directory = self.p(POLICY_DIR)
        self._mkdirs(directory, created)
        for stale in sorted(set(os.listdir(self.host.path(directory))) - set(files)):
            node_path = os.path.join(directory, stale)
            before = self.host.read(node_path)
            if before is None:
                continue  # not a regular file: nothing we wrote
            os.unlink(self.host.path(node_path))
            self.undo.add(f"remove {node_path}", functools.partial(self._put_back, node_path, before))
        for name in sorted(files, key=lambda n: n == POLICY_FILE):  # the keys first, the policy that names them last
            if self.host.read(os.path.join(directory, name)) != files[name]:
                self._write(os.path.join(directory, name), files[name])
        from wasm_shim.oci.policy import PolicyError, parse_policy

        def read(node_path: str) -> bytes:
            data = self.host.read(node_path)
            if data is None:
                raise FileNotFoundError(2, "No such file or directory")
            return data

        source = self.p(POLICY_DIR, POLICY_FILE)
        try:
            policy = parse_policy(files[POLICY_FILE].decode("utf-8", errors="replace"), source, read)
        except PolicyError as exc:
            raise InstallError(f"signature policy: {exc}") from None
        _say(f"signature policy {source}: default {policy.default}, {len(policy.rules)} rule(s)")

    def _prune_versions(self, keep: set[str]) -> None:
        versions = self.host.path(self.p("versions"))
        for name in sorted(os.listdir(versions)):
            if name not in keep:
                shutil.rmtree(os.path.join(versions, name), ignore_errors=True)

    # --- uninstall ----------------------------------------------------------------------------------------------
    def uninstall(self, reporter: Reporter) -> int:
        if not self.host.exists(self.p(STATE_FILE)) and not self.host.exists(self.p(".lock")):
            _say("not installed on this node: nothing to do")
            reporter.removed()
            return 0
        try:
            self.lock([])
            try:
                problem = self._uninstall()
            finally:
                self.unlock()
        except InstallError as exc:
            sys.stderr.write(f"wasm-shim node uninstall: {exc}\n")
            reporter.failed(str(exc))
            return 1
        if problem:
            sys.stderr.write(f"wasm-shim node uninstall: {problem}\n")
            reporter.failed(problem)
            return 1
        reporter.removed()
        return 0

    def _uninstall(self) -> str:
        state = self.state()
        problem = ""
        if state is not None:
            config_path = str(state["config_path"])
            current = self.host.read(config_path)
            original = self.host.read(self.p(str(state["original"]))) if state.get("original") else None
            if state.get("original") and original is None:
                raise InstallError(f"the backup {self.p(str(state['original']))} is missing; restore "
                                   f"{config_path} by hand")
            installed = current if current is not None and hashlib.sha256(current).hexdigest() == \
                state["installed_sha256"] else b"\0not ours"
            table = RuntimeTable(int(state["config_version"]),  # type: ignore[call-overload]
                                 config_path=str(state["options_path"]))
            restored, note = plan_restore(current, installed, original, table, bool(state.get("added_runc")))
            if restored != current:
                try:
                    if restored is None:
                        os.unlink(self.host.path(config_path))
                    else:
                        write_atomic(self.host.path(config_path), restored, mode_from=self.host.path(config_path))
                except OSError as exc:
                    raise InstallError(f"cannot write {config_path}: {exc.strerror}") from None
            _say(f"{config_path}: {note}")
            if self.o.restart and restored != current:
                try:
                    self.restart(_layout_for_restart(self.host.probe(), state, self.o))
                except InstallError as exc:
                    problem = str(exc)
            link = self.host.path(str(state.get("bin_link", "")))
            if state.get("bin_link") and os.path.islink(link) and \
                    os.readlink(link) == self.node_view(self.p("current", "bin", SHIM_BINARY)):
                os.unlink(link)
        shutil.rmtree(self.host.path(self.o.prefix))
        if state and state.get("shim_data"):
            # The daemon's compiled-module cache, created after install: ours, so it goes too.
            shutil.rmtree(self.host.path(str(state["shim_data"])), ignore_errors=True)
        created = list(state.get("created_dirs", [])) if state else []  # type: ignore[call-overload]
        for directory in reversed(created):
            real = self.host.path(directory)
            if os.path.isdir(real):
                try:
                    os.rmdir(real)
                except OSError:
                    pass  # something else put files there since: it stays
        _say("uninstalled")
        return problem

    # --- status ---------------------------------------------------------------------------------------------
    def status(self) -> dict[str, object]:
        state = self.state()
        result: dict[str, object] = {"installed": state is not None}
        try:
            layout = detect(self.host.probe(), layout=self.o.layout, containerd_config=self.o.containerd_config,
                            config_version=self.o.config_version)
            result["layout"] = layout.name
            result["config_path"] = layout.config_path
            result["config_version"] = layout.config_version
        except InstallError as exc:
            result["layout_error"] = str(exc)
        if state is not None:
            result["version"] = state["version"]
            current = self.host.read(str(state["config_path"]))
            result["config_as_installed"] = current is not None and \
                hashlib.sha256(current).hexdigest() == state["installed_sha256"]
            result["bin_link"] = state.get("bin_link")
        return result


def _layout_for_restart(probe: Probe, state: Mapping[str, object], options: Options) -> Layout:
    try:
        return detect(probe, layout=str(state["layout"]),
                      containerd_config=str(state["config_path"]) if state["layout"] == "containerd" else "",
                      config_version=int(state["config_version"]))  # type: ignore[call-overload]
    except InstallError:
        # The config is gone or unreadable now; the restart command and socket do not depend on it.
        return Layout(str(state["layout"]), str(state["config_path"]), 2, "merge",
                      (*NSENTER, "systemctl", "restart", "containerd"), "/run/containerd/containerd.sock")


def validate_or_fail(options: Mapping[str, str]) -> dict[str, str]:
    from .containerd_config import ConfigMergeError

    try:
        return validate_options(options)
    except ConfigMergeError as exc:
        raise InstallError(f"shim option: {exc}") from None


def read_policy_dir(directory: str) -> dict[str, bytes]:
    """The files of a policy directory (a mounted ConfigMap: `policy.toml` and key files, each a link into
    `..data/`): name -> bytes. Hidden entries are the ConfigMap's own; anything else must be a regular file
    with a plain name."""
    files: dict[str, bytes] = {}
    try:
        names = sorted(n for n in os.listdir(directory) if not n.startswith("."))
    except OSError as exc:
        raise InstallError(f"--policy-dir {directory}: {exc.strerror}") from None
    for name in names:
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            raise InstallError(f"--policy-dir {directory}: {name} is not a regular file")
        with open(path, "rb") as f:
            files[name] = f.read()
    if POLICY_FILE not in files:
        raise InstallError(f"--policy-dir {directory} has no {POLICY_FILE}")
    return files


def options_toml(options: Mapping[str, str]) -> bytes:
    """The shim's options file (ConfigPath): one `key = "value"` line per option, in the order given."""
    lines = ["# wasm-shim options, written by `wasm-shim node install` (keys: shim/config.py)"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in options.items()]
    return ("\n".join(lines) + "\n").encode("utf-8")


def wait_for_cri(socket_path: str, timeout: float) -> str:
    """"" once containerd answers CRI's Version on `socket_path` (within `timeout` s); else what went wrong.

    A socket that accepts is not enough: containerd 1.6 keeps serving with its CRI plugin failed to load (a bad
    runtime table does that), and then only CRI calls fail (UNIMPLEMENTED).
    """
    import grpc

    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not os.path.exists(socket_path):
            last = f"{socket_path} does not exist"
            time.sleep(0.5)
            continue
        channel = grpc.insecure_channel(f"unix://{socket_path}")
        try:
            call = channel.unary_unary("/runtime.v1.RuntimeService/Version")
            call(b"", timeout=max(0.5, min(5.0, deadline - time.monotonic())))
            return ""
        except grpc.RpcError as exc:
            last = f"CRI Version on {socket_path}: {exc.code().name} {exc.details() or ''}".strip()
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return last + " (containerd is up but its CRI plugin is not: see containerd's log)"
        finally:
            channel.close()
        time.sleep(0.5)
    return last + f" after {timeout:g} s"
