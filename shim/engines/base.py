"""The engine seam: what the task service hands an engine, what it gets back, and the engine-neutral rules.

This module owns the interface between the task service and a WebAssembly engine (DESIGN principle 6: an
engine is one module behind a small interface) plus the pure helpers every engine needs: resolving the
entrypoint inside a rootfs without escaping it, classifying a WebAssembly header, and mapping signals to exit
statuses. It imports no engine and does no I/O beyond ``lstat``/``readlink``/reading 8 header bytes inside the
rootfs.

Rules (the contract the task service codes against):
- ``Engine.prepare`` may compile and is called off the event loop; it raises ``EngineError`` whose message
  names the path or export at fault (the user reads it in ``ctr`` output or ``kubectl describe``).
- ``Engine.start`` returns at once; the guest runs on its own thread. ``on_exit(status)`` is called exactly
  once, from that thread, after every fd and native resource the engine opened for the guest is closed
  (``ctr`` waits for EOF on the stdout/stderr FIFOs; a leaked writer is a hung ``ctr run``).
- Exit statuses: normal return 0; WASI exit(n) -> n; component ``run`` returning err -> 1; trap -> 134 (like
  the wasmtime CLI, a one-line ``wasm trap: ...`` goes to the guest's stderr); any other error (e.g. a failed
  instantiation) -> 1 with ``wasm error: ...`` on stderr; kill(sig) -> 128 + sig.
- ``Guest.kill`` is thread-safe and idempotent. A wasm guest cannot handle signals: a signal whose default
  action terminates a process terminates the guest, one whose default action is to ignore is a no-op, and
  signal 0 only checks. Stop/continue signals cannot be honoured and raise ``EngineError``.
- Optional (``PausableGuest``): ``pause``/``resume`` freeze and thaw a guest; ``stats`` reports its memory and
  CPU; ``oom`` says, by the time on_exit runs, that the guest ended after hitting its memory limit.
- A guest may run in a child process of the daemon (the wasmtime engine's component runner); it then exposes
  ``pid`` and its on_exit runs only after that process was reaped.
"""

from __future__ import annotations

import errno
import json
import os
import posixpath
import signal as signals
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol


class EngineError(Exception):
    """A failure the user caused or must fix; the message is shown to them, so it names the path/export."""


@dataclass(frozen=True)
class GuestMount:
    """A host directory (``source``) the guest sees at ``destination`` (a WASI preopen)."""

    destination: str
    source: str
    readonly: bool


@dataclass(frozen=True)
class GuestSpec:
    """What the OCI spec and pod annotations grant a guest (DESIGN principle 7): nothing else reaches it."""

    task_id: str
    rootfs: str  # host path of the container's mounted rootfs (bundle/rootfs)
    root_readonly: bool
    args: tuple[str, ...]  # OCI process.args; args[0] = entrypoint in the rootfs, optionally "path#export"
    env: tuple[str, ...]  # OCI process.env, "K=V"
    cwd: str  # OCI process.cwd
    mounts: tuple[GuestMount, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict)
    memory_limit: int | None = None  # bytes, from linux.resources.memory.limit
    bundle: str = ""  # host path of the OCI bundle (config.json); the native engine hands it to runc
    cpu_limit: float | None = None  # CPUs (quota / period), from linux.resources.cpu (issue 3)


@dataclass(frozen=True)
class GuestStdio:
    """Host paths the engine opens itself before ``start`` returns (a FIFO, or /proc/self/fd/N of a pipe).

    None = the null device. Regular files are opened by the engine with create+truncate (not append): hand the
    engine a pipe when output must be appended to an existing file.
    """

    stdin: str | None = None
    stdout: str | None = None
    stderr: str | None = None


class Guest(Protocol):
    def kill(self, signal: int) -> None:
        """Thread-safe, idempotent; the guest stops soon and on_exit gets 128 + signal."""
        ...


class PausableGuest(Guest, Protocol):
    """Optional: a guest that can be frozen and thawed (Pause/Resume) and report its usage.

    ``oom`` is True once the guest has ended after its memory limit refused a growth (read it in on_exit).
    """

    oom: bool

    def pause(self) -> None:
        """Thread-safe: the guest executes no more wasm until ``resume``; a kill still stops it."""
        ...

    def resume(self) -> None:
        ...

    def stats(self) -> tuple[int, int]:
        """(memory bytes, CPU nanoseconds): linear memory and the guest thread's CPU for an in-process guest;
        resident set size and CPU of the process for a guest in its own process."""
        ...


class Prepared(Protocol):
    """Opaque, engine-specific: the compiled module/component and the resolved entry."""


class Engine(Protocol):
    name: str

    def can_handle(self, spec: GuestSpec) -> bool:
        """Cheap: resolves args[0] inside the rootfs and reads 8 bytes looking for the wasm magic."""
        ...

    def prepare(self, spec: GuestSpec) -> Prepared:
        """May compile (cached); raises EngineError; call it off the event loop."""
        ...

    def start(self, prepared: Prepared, stdio: GuestStdio, on_exit: Callable[[int], None]) -> Guest:
        """Returns at once; the guest runs on its own thread and on_exit(status) is called exactly once."""
        ...


# --- Exit statuses ------------------------------------------------------------------------------------------

EXIT_TRAP = 134  # 128 + SIGABRT: what the wasmtime CLI exits with on a trap
EXIT_FAILURE = 1  # component run returned err; any error that is not a trap (e.g. failed instantiation)

# Signals whose default action (signal(7)) is to ignore: a wasm guest has no handlers, so delivering them does
# nothing. Stop/continue cannot be honoured by a thread running wasm.
_IGNORED_SIGNALS = frozenset({signals.SIGCHLD, signals.SIGURG, signals.SIGWINCH})
_STOP_SIGNALS = frozenset(
    {signals.SIGSTOP, signals.SIGTSTP, signals.SIGTTIN, signals.SIGTTOU, signals.SIGCONT}
)


def killed_status(signal: int) -> int:
    """The exit status of a process killed by ``signal``, as containerd reports it (128 + signal)."""
    return 128 + signal


def signal_terminates(signal: int) -> bool:
    """True when delivering ``signal`` ends a wasm guest; False for signal 0 and default-ignore signals.

    Raises EngineError for numbers that are not signals and for stop/continue signals.
    """
    if signal == 0 or signal in _IGNORED_SIGNALS:
        return False
    if not 0 < signal < signals.NSIG:
        raise EngineError(f"invalid signal number {signal}")
    if signal in _STOP_SIGNALS:
        name = signals.Signals(signal).name
        raise EngineError(
            f"signal {name} ({signal}) is not supported: a wasm guest cannot be stopped or continued"
        )
    return True


# --- WebAssembly headers ------------------------------------------------------------------------------------

WASM_MAGIC = b"\0asm"


class WasmKind(Enum):
    MODULE = "module"
    COMPONENT = "component"


def classify_header(header: bytes, name: str) -> WasmKind:
    """Tell a core module from a component by the 8-byte preamble; else raise EngineError naming ``name``.

    Core spec 5.5.16: magic ``\\0asm`` then the 4-byte little-endian version 1. Component model Binary.md:
    the same magic, then version 0x000d and layer 0x0001 (bytes ``0d 00 01 00``); layer 0 is a core module.
    """
    if len(header) < 8 or header[:4] != WASM_MAGIC:
        magic = header[:4].hex(" ") or "empty file"
        raise EngineError(f"{name} is not a WebAssembly module or component (magic {magic})")
    version = header[4:8]
    if version == b"\x01\x00\x00\x00":
        return WasmKind.MODULE
    if version[2:4] == b"\x01\x00":
        if version[0:2] == b"\x0d\x00":
            return WasmKind.COMPONENT
        raise EngineError(
            f"{name} is a WebAssembly component of an unsupported pre-release encoding "
            f"(version {version[:2].hex(' ')}; this engine reads 0d 00): rebuild it with current tools"
        )
    raise EngineError(f"{name} is WebAssembly of an unknown version/layer ({version.hex(' ')})")


# --- Entrypoint ---------------------------------------------------------------------------------------------

MAX_SYMLINKS = 40  # like Linux's MAXSYMLINKS: more hops than this is ELOOP


def safe_join(root: str, path: str, cwd: str = "/") -> str:
    """Resolve ``path`` as if ``root`` were ``/`` and return the host path; it never leaves ``root``.

    ``path`` is absolute or relative to ``cwd`` (itself inside root). Every component that exists is checked
    with lstat: ``..`` stops at root, an absolute symlink target restarts from root, a relative one from the
    link's directory (path_resolution(7) under chroot). Components that do not exist are joined lexically, so
    the result may name a missing file; the caller reports that. Raises EngineError on a symlink loop.
    """
    root = os.path.abspath(root)
    start = path if path.startswith("/") else posixpath.join(cwd or "/", path)
    pending = [part for part in start.split("/") if part not in ("", ".")]
    pending.reverse()  # a stack: the next component is at the end
    resolved: list[str] = []
    hops = 0
    while pending:
        part = pending.pop()
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        try:
            mode = os.lstat(candidate).st_mode
        except OSError:
            resolved.append(part)  # missing or unreadable: nothing below it is a symlink we could follow
            continue
        if not stat.S_ISLNK(mode):
            resolved.append(part)
            continue
        hops += 1
        if hops > MAX_SYMLINKS:
            raise EngineError(f"{path}: too many levels of symbolic links inside the rootfs")
        target = os.readlink(candidate)
        if target.startswith("/"):
            resolved = []
        for piece in reversed([p for p in target.split("/") if p not in ("", ".")]):
            pending.append(piece)
    return os.path.join(root, *resolved)


@dataclass(frozen=True)
class Entrypoint:
    """args[0] split into the guest path and the optional export (``path#export``), resolved on the host."""

    guest_path: str  # as written in args[0], without the "#export" part
    host_path: str  # inside the rootfs, symlinks resolved
    export: str | None


def resolve_entrypoint(spec: GuestSpec) -> Entrypoint:
    """Find the entrypoint file for ``spec`` inside its rootfs; raise EngineError naming what is missing."""
    if not spec.args or not spec.args[0]:
        raise EngineError(
            "process.args is empty: the first argument must be the path of the .wasm file inside the image"
        )
    guest_path, sep, export = spec.args[0].partition("#")
    if sep and not export:
        raise EngineError(f"entrypoint {spec.args[0]!r}: nothing after '#' (expected path#export)")
    if not guest_path:
        raise EngineError(f"entrypoint {spec.args[0]!r}: no path before '#'")
    host_path = safe_join(spec.rootfs, guest_path, spec.cwd)
    return Entrypoint(guest_path=guest_path, host_path=host_path, export=export or None)


def read_header(entry: Entrypoint) -> bytes:
    """The first 8 bytes of the entrypoint file; EngineError when it is missing, not a file, or unreadable."""
    try:
        fd = os.open(entry.host_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise EngineError(f"entrypoint {entry.guest_path}: {_describe_open_error(exc)}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise EngineError(f"entrypoint {entry.guest_path}: not a regular file")
        return os.pread(fd, 8, 0)
    finally:
        os.close(fd)


def _describe_open_error(exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return "no such file in the container's rootfs"
    if exc.errno == errno.ELOOP:
        return "is a symbolic link that could not be resolved inside the rootfs"
    return f"cannot open: {exc.strerror}"


def network_namespace_path(bundle: str) -> str | None:
    """The path of the network namespace the OCI spec joins (``linux.namespaces[type=network].path``), or None.

    OCI runtime-spec config-linux.md "Namespaces": an entry without ``path`` asks the runtime to create a new
    namespace; only an entry with a path names an existing one (the pod sandbox's, under CRI). Raises
    EngineError when config.json cannot be read or the entry is malformed.
    """
    config = os.path.join(bundle, "config.json")
    try:
        with open(config, encoding="utf-8") as file:
            spec = json.load(file)
    except (OSError, ValueError) as exc:
        raise EngineError(f"cannot read the network namespace from {config}: {exc}") from None
    linux = spec.get("linux") if isinstance(spec, dict) else None
    namespaces = linux.get("namespaces") if isinstance(linux, dict) else None
    for entry in namespaces if isinstance(namespaces, list) else ():
        if isinstance(entry, dict) and entry.get("type") == "network":
            path = entry.get("path")
            if path is None or path == "":
                return None
            if not isinstance(path, str) or not path.startswith("/"):
                raise EngineError(f"{config}: linux.namespaces network path {path!r} is not an absolute path")
            return path
    return None


def split_env(entries: tuple[str, ...]) -> list[tuple[str, str]]:
    """OCI process.env ("KEY=value") as pairs; an entry without '=' is an error the user must fix."""
    pairs = []
    for entry in entries:
        key, sep, value = entry.partition("=")
        if not sep or not key:
            raise EngineError(f"process.env entry {entry!r} is not of the form KEY=value")
        pairs.append((key, value))
    return pairs
