"""One `wasm-shim node` run on one node: its options, its view of the host, its undo log, its lock.

Paths: a *node path* is what the node's own processes see; `Session.node_view` is how they name it (the node root
+ node path): the text the node's processes read (the shebang of the shim binary, `ConfigPath`, the bin link's
target) uses that, where `node_root` is `/` on a real node (a fixture root in tests, where containerd runs beside
the test).

Invariants: the prefix is a plain absolute path other than `/` from the moment a session exists
(prefix.plain); one installer or uninstaller at a time per node: an exclusive, non-blocking flock on
`<prefix>/.lock`, and a second one stops having changed nothing; a run that will restart containerd holds a
restart slot (restart_slots.py) from before its first write until containerd answered again.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from .changes import Changes
from .containerd_config import HANDLER, RUNTIME_TYPE, ConfigMergeError, shim_binary
from .distributions import InstallError
from .host import Host
from .prefix import LOCK_FILE, check_parts, plain
from .restart import Restarter


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
    handler: str = HANDLER  # the RuntimeClass handler: the runtime table's name in containerd's config
    runtime_type: str = RUNTIME_TYPE  # the table's runtime_type; containerd runs the binary it names
    shim_binary: str = ""  # the link's name in bin_dir; "" = the one containerd derives from runtime_type
    warm_timeout: float = 0.0  # > 0: warm the node before reporting it ready (warmup.py), waiting at most this long


def binary_for(runtime_type: str, named: str) -> str:
    """The shim binary's name on the node: the one containerd derives from `runtime_type`; `named`, when given,
    must be that name (containerd finds the binary by it, on its PATH)."""
    try:
        derived = shim_binary(runtime_type)
    except ConfigMergeError as exc:
        raise InstallError(str(exc)) from None
    if named and named != derived:
        raise InstallError(f"shim binary {named!r} does not go with runtime type {runtime_type!r}: containerd runs "
                           f"{derived} for that type (the type's last two parts); name the binary {derived}, or "
                           f"choose a runtime type ending in the binary's name")
    return derived


class Slots(Protocol):
    """What bounds how many nodes restart containerd at once (restart_slots.RestartSlots)."""

    def take(self) -> None: ...

    def give_back(self) -> None: ...


class Session:
    def __init__(self, options: Options, *, run: Callable[..., subprocess.CompletedProcess[bytes]] = subprocess.run,
                 cri_ready: Callable[[str, float], str] | None = None, slots: Slots | None = None) -> None:
        self.o = options
        self.prefix = plain(options.prefix)
        self.shim_binary = binary_for(options.runtime_type, options.shim_binary)
        self.host = Host(options.host_root)
        self.changes = Changes(self.host)
        self.restarter = Restarter(self.host, command=options.restart_command, cri_socket=options.cri_socket,
                                   timeout=options.restart_timeout, run=run, cri_ready=cri_ready)
        self._lock_fd = -1
        self.slots = slots

    def before_restarting_changes(self) -> None:
        """Called before the first write of a run that will restart containerd: wait for a restart slot (none
        configured: at once). Given back by `after_restart`."""
        if self.slots is not None and self.o.restart:
            self.slots.take()

    def after_restart(self) -> None:
        if self.slots is not None:
            self.slots.give_back()

    def node_view(self, node_path: str) -> str:
        """How the node's processes name `node_path` (node_root + node path)."""
        return os.path.join(os.path.abspath(self.o.node_root), node_path.lstrip("/"))

    def p(self, *parts: str) -> str:
        """A node path under the prefix."""
        return os.path.join(self.prefix, *parts)

    def lock(self, created: list[str]) -> None:
        """Take `<prefix>/.lock`, creating the prefix (recorded in `created`) and the file if missing."""
        check_parts(self.host, self.prefix)  # never through a link, never in a directory others may write
        self.changes.mkdirs(self.prefix, created)
        lock_path = self.host.path(self.p(LOCK_FILE))
        existed = os.path.exists(lock_path)
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise InstallError(f"cannot create the lock {self.p(LOCK_FILE)}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InstallError(
                f"another `wasm-shim node` install or uninstall is running on this node (it holds "
                f"{self.p(LOCK_FILE)}); this one changed nothing"
            ) from None
        self._lock_fd = fd
        if not existed:
            self.changes.undo.add("lock file", lambda: os.unlink(lock_path))

    def unlock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
