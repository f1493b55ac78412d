"""The engine contract: what the task service hands an engine, what it gets back, and the engine-neutral rules.

This module owns the interface between the task service and an engine (an engine sits behind one declared
contract, and what it lacks answers UNIMPLEMENTED) plus the pure helpers every engine needs: finding the
entrypoint inside the container's filesystem without escaping it and telling what it is (one rule for every
engine, "Entrypoint" below), and the exit-status, memory and CPU rules below. It imports no engine and does no
I/O beyond ``stat``/``lstat``/``readlink`` and reading 8 header bytes of the entrypoint. What a guest is granted
arrives as a ``GuestSpec``, which ``bundle.py`` alone maps from the OCI spec.

Rules (the contract the task service codes against):
- ``Engine.prepare`` may compile and is called off the event loop, except with ``cached_only``, where it answers
  from memory or raises ``WouldBlock``; it raises ``EngineError`` whose message names the path or export at fault
  (the user reads it in ``ctr`` output or ``kubectl describe``).
- ``Engine.stage`` does, at Create (after it has answered), what a start can do ahead: it returns a ``Staged``
  whose ``launch`` (at Start) returns a ``Guest``, or whose ``discard`` frees it unstarted (killed or deleted
  before Start). ``Engine.start`` is the two at once. Once launched, ``on_exit(status)`` is called exactly once,
  from another thread,
  after every fd and native resource the engine opened for the guest is closed (``ctr`` waits for EOF on the
  stdout/stderr FIFOs; a leaked writer is a hung ``ctr run``). A guest in a child process of the daemon
  exposes its ``pid``, and its on_exit runs only after that process was reaped.
- ``Engine.runs_off_loop`` says whether ``launch`` and the guest's calls block (``stage`` never blocks and runs
  on the loop); ``Engine.close`` stops every guest and frees the engine (the daemon calls it on exit).
- ``Guest.kill`` is thread-safe and idempotent. A wasm guest cannot handle signals: a signal whose default
  action terminates a process terminates the guest, one whose default action is to ignore is a no-op, and
  signal 0 only checks. Stop/continue signals cannot be honoured and raise ``EngineError``.
- Optional capabilities (``pause``/``resume``, ``stats``, ``pids``) raise ``Unsupported`` by default, which
  the task service answers with UNIMPLEMENTED naming the capability and the engine.

Exit statuses (one rule for every way a wasm guest runs: a module or a component in a daemon thread, a
component in the runner process, ``runner/src/exit.rs``):
- normal return, or a component's ``run`` returning ok: 0; ``run`` returning err: 1 (``EXIT_FAILURE``).
- WASI ``proc_exit(n)`` / ``wasi:cli/exit``: n (its low 8 bits, as POSIX keeps them).
- a trap: 134 (``EXIT_TRAP``, 128 + SIGABRT, what the wasmtime CLI exits with). A failure is a trap exactly when
  wasmtime raised it as one, with a trap code (unreachable, out-of-bounds access, stack overflow, ...): the runner
  finds a ``Trap`` in the error; the daemon reads ``wasmtime.Trap.trap_code``, or, for a component (whose errors
  wasmtime-py passes as text only), requires the root cause to be exactly wasmtime's description of a trap code.
  A host error whose message merely mentions a trap is an error. The guest's stderr gets exactly one line,
  ``wasm trap: `` and wasmtime's description of the code; no backtrace.
- any other error (a failed instantiation, one refused by the memory limit, a host error, wasmtime refusing an
  exit code): 1, with exactly one line ``wasm error: ...`` (the error's causes joined by ``: ``) on its stderr.
- killed by a terminating signal: 128 + that signal (the first one sent), whatever the guest did meanwhile.

Memory limits (``GuestSpec.memory_limit``, bytes): a limit bounds the guest as a whole. Every linear memory and
every table of every instance the guest makes (a component's core instances; all requests in flight of a served
component) are summed, a table element counting ``TABLE_ELEMENT_BYTES``, and the sum never passes the limit:
- a ``memory.grow`` or ``table.grow`` that would pass it fails inside the guest (it returns -1; malloc returns
  NULL); an instantiation whose initial memories and tables pass it fails (status 1, ``wasm error: ...``);
- a guest that ends in failure (a status other than 0, not killed) after such a refusal ran out of memory:
  ``Guest.oom`` is set and the task service publishes ``/tasks/oom`` before ``/tasks/exit``;
- what an engine cannot sum it refuses at Create, with the reason, and never runs unbounded. The component runner
  sums exactly (one budget per guest; every store's resource limiter draws on it). wasmtime-py limits each memory
  and each table on its own, so in a daemon thread a module with a limit may declare one memory, and a maximum
  for every table; its tables count at their maxima and its memory gets the rest (``wasmtime.footprint``; other
  modules fail Create, saying which). A component with a limit runs in the runner whatever its isolation asks
  (its core instances cannot be counted before it runs), and fails Create if the runner is not installed.
Without a limit the bound is wasm32's own (4 GiB per memory); the shim sets no default.

CPU limits (``GuestSpec.cpu_limit``, CPUs = quota / period): a token bucket on the guest's own CPU clock. The
guest earns ``cpu_limit`` CPU-seconds per wall-second, holds at most ``cpu_limit * CPU_BURST_SECONDS`` of them,
starts with a full bucket, and sleeps off any debt at its next epoch tick (every 10 ms while limited). Time spent
paused is wall time like any other: it earns, up to a full bucket (a runner stopped by SIGSTOP cannot tell a pause
from a wait, and a thawed cgroup starts a fresh CFS period with its quota). That is CFS bandwidth control with its
default 100 ms period (a fresh cgroup may run its whole quota in its first period; unused quota does not carry
over beyond one period).

Both implementations of the trap and CPU rules (the daemon's and ``runner/``) answer the same test vectors,
tests/vectors/engine_rules.json.
"""

from __future__ import annotations

import abc
import errno
import os
import posixpath
import signal as signals
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, Protocol

from .errors import EngineError as EngineError  # re-exported: engines import it from here
from .grant import Grant


@dataclass(frozen=True)
class GuestMount:
    """A host directory (``source``) the guest sees at ``destination`` (a WASI preopen)."""

    destination: str
    source: str
    readonly: bool
    directory: bool = True  # False for a bind mount of a single file (Kubernetes mounts /etc/hosts so)


@dataclass(frozen=True)
class GuestSpec:
    """What the OCI spec and pod annotations grant a guest (docs/design.md, rule 7): nothing else reaches it."""

    task_id: str
    rootfs: str  # host path of the container's mounted rootfs (bundle/rootfs)
    root_readonly: bool
    args: tuple[str, ...]  # OCI process.args; args[0] = entrypoint in the rootfs, optionally "path#export"
    env: tuple[str, ...]  # OCI process.env, "K=V"
    cwd: str  # OCI process.cwd
    mounts: tuple[GuestMount, ...] = ()
    grant: Grant = field(default_factory=Grant)  # what the annotations grant and ask, parsed once (grant.py)
    memory_limit: int | None = None  # bytes, from linux.resources.memory.limit
    bundle: str = ""  # host path of the OCI bundle (config.json); the native engine hands it to runc
    cpu_limit: float | None = None  # CPUs (quota / period), from linux.resources.cpu
    network_namespace: str | None = None  # the existing network namespace the spec joins (a pod's), by path
    cgroups_path: str = ""  # linux.cgroupsPath; runc places a native container's processes there


@dataclass(frozen=True)
class GuestStdio:
    """Host paths the engine opens itself before ``start`` returns (a FIFO, or /proc/self/fd/N of a pipe).

    None = the null device. Regular files are opened by the engine with create+truncate (not append): hand the
    engine a pipe when output must be appended to an existing file.
    """

    stdin: str | None = None
    stdout: str | None = None
    stderr: str | None = None


class WouldBlock(Exception):
    """A step asked to answer at once (``cached_only``, ``local_only``) would have to block: compile, read a whole
    file, run a process or call a registry. The caller does the step again where blocking is allowed."""


class Unsupported(Exception):
    """A guest capability its engine does not have; the task service answers it with UNIMPLEMENTED.

    The message names the capability and the engine (``the native engine cannot pause tasks``).
    """

    def __init__(self, engine: str, capability: str):
        super().__init__(f"the {engine} engine cannot {capability}")
        self.engine = engine
        self.capability = capability


class Guest(abc.ABC):
    """A started guest, as the task service drives it. Every engine's guest type derives from this class.

    Only ``kill`` is required; a capability an engine lacks keeps the default here, which raises
    ``Unsupported`` (never an AttributeError). Attributes:

    - ``engine_name``: the engine, for messages.
    - ``pid``: the guest's own process (a child of the daemon), or 0 for a guest in a thread of the daemon
      (the task then reports the daemon's pid).
    - ``oom``: True, by the time on_exit runs, when the guest ended after its memory limit refused a growth.
    - ``in_daemon``: the guest runs in a thread of the daemon, so the fds it writes its output to are the
      daemon's: a kill cannot stop a write blocked on a full FIFO nobody reads, and the task service must drain
      that FIFO for the kill to be seen (``TaskIO.unblock_writers``). A child process is simply killed.
    """

    engine_name: ClassVar[str] = "unknown"
    in_daemon: ClassVar[bool] = False
    pid: int = 0
    oom: bool = False

    @abc.abstractmethod
    def kill(self, signal: int, all: bool = False) -> None:
        """Thread-safe, idempotent; the guest stops soon and on_exit gets 128 + signal.

        ``all`` (KillRequest.all) signals every process of the guest; a guest that is one process or thread
        treats it like a plain kill. Raises EngineError for a signal the guest cannot take.
        """

    def pause(self) -> None:
        """Thread-safe: the guest executes no more until ``resume``; a kill still stops it."""
        raise Unsupported(self.engine_name, "pause tasks")

    def resume(self) -> None:
        raise Unsupported(self.engine_name, "resume tasks")

    def stats(self) -> tuple[int, int]:
        """(memory bytes, CPU nanoseconds) the guest uses now (or used last, once it has ended)."""
        raise Unsupported(self.engine_name, "report task statistics")

    def pids(self) -> list[int]:
        """The guest's processes, its main one first; empty once it has ended."""
        raise Unsupported(self.engine_name, "list task processes")

    def delete(self) -> None:
        """Remove what the guest holds beyond its exit (idempotent). Most guests hold nothing: a no-op."""
        return None


@dataclass(frozen=True)
class CacheStats:
    """Counters of an engine's compiled-artifact cache (a snapshot), for metrics and logs."""

    compiles: int = 0
    memory_hits: int = 0
    disk_hits: int = 0
    disk_writes: int = 0
    disk_discarded: int = 0  # corrupt, foreign or incompatible files deleted


class Prepared(Protocol):
    """Opaque, engine-specific: the compiled module/component and the resolved entry."""


class Staged(Protocol):
    """A guest made ready by ``Engine.stage`` and not started: what runc's created (not yet started) container is.

    Owned by the task service from Create until Start (``launch``) or until the task is killed or deleted
    unstarted (``discard``). Invariant: exactly one of the two is called, once; after ``discard`` nothing of the
    guest is left open (its fds closed, its thread ended), so the rootfs can be unmounted.
    """

    def launch(self) -> Guest:
        """Start the guest; on_exit (given to ``stage``) is then called exactly once, from another thread.
        EngineError, everything released, if it cannot start."""
        ...

    def discard(self) -> None:
        """Free everything staged, without running any of the guest's code; on_exit is never called."""
        ...


class StartLater:
    """``Staged`` for an engine with nothing to do ahead of Start: ``launch`` calls its ``start`` then."""

    def __init__(self, start: Callable[[Any, GuestStdio, Callable[[int], None]], Guest], prepared: Prepared,
                 stdio: GuestStdio, on_exit: Callable[[int], None]) -> None:
        self._start, self._prepared, self._stdio, self._on_exit = start, prepared, stdio, on_exit

    def launch(self) -> Guest:
        return self._start(self._prepared, self._stdio, self._on_exit)

    def discard(self) -> None:
        return None


class Engine(Protocol):
    """An engine: runs the entrypoint kinds it declares, prepares and starts guests, and frees all on close.

    ``accepts`` is the kinds of entrypoint it runs; the task service gives an entrypoint to the one engine that
    accepts its kind, so the order engines are listed in never matters (no two engines accept one kind).
    ``runs_off_loop`` is the one scheduling fact the task service needs: True when ``launch`` and the calls of
    its guests (kill, pause, resume, delete) block (they run subprocesses, e.g. runc), so the task service runs
    them on a worker thread; False when they return at once and are called on the event loop. ``prepare``
    may compile and is called off the loop, unless asked ``cached_only``.
    """

    name: str
    runs_off_loop: bool
    accepts: frozenset[EntryKind]

    def prepare(self, spec: GuestSpec, entry: Entrypoint, *, cached_only: bool = False) -> Prepared:
        """May compile (cached); raises EngineError naming the path or export at fault. ``entry`` was found and
        read once by the caller (``find_entrypoint``, ``read_entrypoint``): the engine does not look it up again.
        ``cached_only``: answer at once from what the engine already holds in memory (a stat and a lookup, the
        checks), or raise ``WouldBlock`` before doing anything that blocks; the event loop asks so first."""
        ...

    def stage(self, prepared: Prepared, stdio: GuestStdio, on_exit: Callable[[int], None]) -> Staged:
        """Everything of a start that can come before it (Create's work, done after Create has answered, so off
        both calls' paths): e.g. the guest's store, its WASI context and its parked thread. Called on the event
        loop, so it never blocks: local opens that never wait (no FIFO peer, no process, no network); an engine
        whose start must wait for something returns ``StartLater``. EngineError, everything released, when the
        guest could never start (stdio, preopens)."""
        ...

    def start(self, prepared: Prepared, stdio: GuestStdio, on_exit: Callable[[int], None]) -> Guest:
        """``stage`` then ``launch`` at once: the guest runs; on_exit(status) is then called exactly once, from
        another thread."""
        ...

    def close(self, timeout: float = 5.0) -> None:
        """Refuse new guests, stop every guest still running and wait up to ``timeout`` for them."""
        ...

    def cache_stats(self) -> CacheStats | None:
        """The compiled-artifact cache's counters now; None for an engine that compiles nothing (native)."""
        ...


# --- Exit statuses ------------------------------------------------------------------------------------------

EXIT_TRAP = 134  # 128 + SIGABRT: what the wasmtime CLI exits with on a trap
EXIT_FAILURE = 1  # component run returned err; any error that is not a trap (e.g. failed instantiation)
CPU_BURST_SECONDS = 0.1  # the CPU-limit bucket's size in seconds of the guest's share (see "CPU limits")
TABLE_ELEMENT_BYTES = 8  # what one table element counts against a memory limit: wasmtime stores a pointer each

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


def classify_header(header: bytes, name: str) -> EntryKind:
    """Tell a core module from a component by the 8-byte preamble; else raise EngineError naming ``name``.

    Core spec 5.5.16: magic ``\\0asm`` then the 4-byte little-endian version 1. Component model Binary.md:
    the same magic, then version 0x000d and layer 0x0001 (bytes ``0d 00 01 00``); layer 0 is a core module.
    """
    if len(header) < 8 or header[:4] != WASM_MAGIC:
        magic = header[:4].hex(" ") or "empty file"
        raise EngineError(f"{name} is not a WebAssembly module or component (magic {magic})")
    version = header[4:8]
    if version == b"\x01\x00\x00\x00":
        return EntryKind.MODULE
    if version[2:4] == b"\x01\x00":
        if version[0:2] == b"\x0d\x00":
            return EntryKind.COMPONENT
        raise EngineError(
            f"{name} is a WebAssembly component of an unsupported pre-release encoding "
            f"(version {version[:2].hex(' ')}; this engine reads 0d 00): rebuild it with current tools"
        )
    raise EngineError(f"{name} is WebAssembly of an unknown version/layer ({version.hex(' ')})")


# --- Entrypoint ---------------------------------------------------------------------------------------------
#
# args[0] is found once per Create (``find_entrypoint``), a missing artifact layer may be placed there (shim/image),
# and then it is read once (``read_entrypoint``): the engine that accepts its kind gets the resulting
# ``Entrypoint`` and never looks the file up again. One rule for every engine:
# - a name with a slash, or with an ``#export``, is a path relative to process.cwd;
# - a bare name is a WebAssembly file of that name in process.cwd if there is one, else it is looked up in each
#   directory of the spec's PATH like runc's init does (Go's exec.LookPath: the first executable regular file; an
#   empty entry is the working directory; no PATH, no lookup);
# - a path under a bind mount continues in the mount's source, elsewhere in the rootfs; symlinks are resolved
#   inside the one tree they are in (``safe_join``), so nothing leads out of the container's filesystem.

MAX_SYMLINKS = 40  # like Linux's MAXSYMLINKS: more hops than this is ELOOP
ELF_MAGIC = b"\x7fELF"
SCRIPT_MAGIC = b"#!"


class EntryKind(Enum):
    """What an entrypoint file is; each engine declares the kinds it accepts (``Engine.accepts``)."""

    MODULE = "module"  # a WebAssembly core module
    COMPONENT = "component"  # a WebAssembly component
    NATIVE = "native"  # an ELF binary or a ``#!`` script, run through runc


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


def spec_path(env: tuple[str, ...]) -> str | None:
    """The PATH a container's init uses for lookup: the last ``PATH=`` of process.env (runc sets env in order)."""
    found = None
    for entry in env:
        if entry.startswith("PATH="):
            found = entry[5:]
    return found


def host_path(spec: GuestSpec, guest_path: str) -> str:
    """Where the file at ``guest_path`` (absolute, normalized) is on the host, as the container will see it.

    Under the bind mount with the longest matching destination, the path continues in that mount's source;
    elsewhere in the rootfs. Symlinks are followed inside the one tree they are in (``safe_join``); a symlink
    in the rootfs that points into a mount is not followed across (a lookup then finds nothing there).
    """
    mount = covering_mount(spec, guest_path)
    if mount is None:
        return safe_join(spec.rootfs, guest_path)
    destination = posixpath.normpath(mount.destination)
    rest = guest_path[len(destination):]
    if not rest.strip("/"):
        return mount.source  # the mount itself (a file bind mount, or a directory)
    return safe_join(mount.source, rest)


def covering_mount(spec: GuestSpec, guest_path: str) -> GuestMount | None:
    """The bind mount ``guest_path`` lies under (the longest matching destination), or None: the rootfs."""
    best: GuestMount | None = None
    for mount in spec.mounts:
        destination = posixpath.normpath(mount.destination)
        if guest_path == destination or guest_path.startswith(destination.rstrip("/") + "/"):
            if best is None or len(destination) > len(posixpath.normpath(best.destination)):
                best = mount
    return best


@dataclass(frozen=True)
class EntryPath:
    """args[0] found in the container's filesystem, not read yet (``find_entrypoint``)."""

    name: str  # args[0] as written, without the "#export" part
    guest_path: str  # absolute and normalised, as the container sees it
    host_path: str  # the same file on the host
    export: str | None
    in_rootfs: bool  # not under a bind mount: the only place the shim may put a file (an artifact's layer)
    searched: str | None = None  # the PATH a bare name was looked up in without being found there

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Entrypoint:
    """The entrypoint the engines get: found, read once, of one kind. Engines never look the file up again."""

    guest_path: str  # absolute, as the container sees it
    host_path: str
    export: str | None  # ``path#export``: the export of a module to call instead of its default
    kind: EntryKind


def find_entrypoint(spec: GuestSpec) -> EntryPath:
    """Find args[0] (the rule above) without reading it; EngineError for args that name nothing."""
    if not spec.args or not spec.args[0]:
        raise EngineError("process.args is empty: nothing to run (set an entrypoint or command; for wasm, the "
                          "path of the .wasm file inside the image)")
    name, sep, export = spec.args[0].partition("#")
    if sep and not export:
        raise EngineError(f"entrypoint {spec.args[0]!r}: nothing after '#' (expected path#export)")
    if not name:
        raise EngineError(f"entrypoint {spec.args[0]!r}: no path before '#'")
    here = posixpath.normpath(posixpath.join(spec.cwd or "/", name))
    if "/" in name or sep:
        return _entry_path(spec, name, here, export or None)
    local = _entry_path(spec, name, here, None)
    if _starts_with(local.host_path, WASM_MAGIC):
        return local
    path = spec_path(spec.env)
    for directory in (path or "").split(":") if path is not None else ():
        guest = posixpath.normpath(posixpath.join(spec.cwd or "/", directory or ".", name))
        found = _entry_path(spec, name, guest, None)
        if _is_executable_file(found.host_path):
            return found
    if os.path.lexists(local.host_path):
        return local  # not WebAssembly and not on PATH: reading it says what it is instead
    return EntryPath(name, here, local.host_path, None, local.in_rootfs,
                     searched=path if path is not None else "")


def _entry_path(spec: GuestSpec, name: str, guest_path: str, export: str | None) -> EntryPath:
    return EntryPath(name, guest_path, host_path(spec, guest_path), export,
                     in_rootfs=covering_mount(spec, guest_path) is None)


def _is_executable_file(path: str) -> bool:
    try:
        st = os.stat(path)  # already resolved inside its tree
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and bool(st.st_mode & 0o111)


def _starts_with(path: str, magic: bytes) -> bool:
    try:
        with open(path, "rb") as file:
            return file.read(len(magic)) == magic
    except OSError:
        return False


def read_entrypoint(path: EntryPath) -> Entrypoint:
    """Read the file's first bytes once and say what it is; EngineError naming the path and what is wrong."""
    what = f"entrypoint {path.guest_path}"
    if path.searched is not None:
        where = f"in $PATH ({path.searched})" if path.searched else "(process.env has no PATH to look it up in)"
        raise EngineError(f"executable {path.name!r} not found in the container's rootfs {where}")
    try:
        fd = os.open(path.host_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError as exc:
        raise EngineError(f"{what}: {_describe_open_error(exc)}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise EngineError(f"{what}: not a regular file")
        header = os.pread(fd, 8, 0)
    finally:
        os.close(fd)
    if header[:4] == WASM_MAGIC:
        kind = classify_header(header, what)
    elif header[:4] == ELF_MAGIC or header[:2] == SCRIPT_MAGIC:
        if path.export:
            raise EngineError(f"{what}: '#{path.export}' names an export of a WebAssembly module, and this is a "
                              "native program")
        if not st.st_mode & 0o111:
            raise EngineError(f"{what}: permission denied (the file is not executable)")
        kind = EntryKind.NATIVE
    else:
        raise EngineError(f"{what} is neither a WebAssembly module or component nor a native program (starts "
                          f"with {header[:4]!r})")
    return Entrypoint(path.guest_path, path.host_path, path.export, kind)


def locate_entrypoint(spec: GuestSpec) -> Entrypoint:
    """``find_entrypoint`` then ``read_entrypoint``: for callers with nothing to place in between."""
    return read_entrypoint(find_entrypoint(spec))


def _describe_open_error(exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return "no such file in the container's rootfs"
    if exc.errno == errno.ELOOP:
        return "is a symbolic link that could not be resolved inside the rootfs"
    return f"cannot open: {exc.strerror}"


def split_env(entries: tuple[str, ...]) -> list[tuple[str, str]]:
    """OCI process.env ("KEY=value") as pairs; an entry without '=' is an error the user must fix."""
    pairs = []
    for entry in entries:
        key, sep, value = entry.partition("=")
        if not sep or not key:
            raise EngineError(f"process.env entry {entry!r} is not of the form KEY=value")
        pairs.append((key, value))
    return pairs
