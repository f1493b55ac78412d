"""The wasmtime engine: compiles, caches, runs and kills WebAssembly guests (core modules and components).

This is the only module that imports ``wasmtime`` (DESIGN principle 6). It owns one ``wasmtime.Engine`` per
``WasmtimeEngine`` (compiled code is shared by every guest of the daemon), the compiled-artifact cache, one
thread per running guest, and at most one ticker thread.

Guests
    WASI preview1 modules run through a ``Linker`` with ``define_wasi`` and an ``InstancePre`` made once per
    compiled module (imports are resolved at prepare time, so a module importing something we do not provide
    fails in ``prepare`` with the import named). Components run through a component ``Linker`` with
    ``add_wasip2`` and must export ``wasi:cli/run@0.2.x`` (a wasi:cli command). The guest gets exactly its
    grant (DESIGN principle 7): argv = process.args (args[0] as written), env = process.env, the rootfs
    preopened at ``/`` (read-only when the root is), each mount preopened at its destination (read-only
    honoured: wasmtime-py 50 exposes only ``fs_mutable``, which maps to read-only dir and file permissions),
    stdio from ``GuestStdio``. WASI preview1 has no working directory: ``process.cwd`` only resolves a
    relative args[0] (wasi-libc starts at ``/``).

Stdio
    Paths are opened before ``start`` returns, by wasmtime itself (its file streams cost ~2.5 us per write;
    the ``*_custom`` callbacks run on wasmtime's tokio workers and cost ~100 us). Opening a FIFO blocks until
    the other side exists, so around wasmtime's open we hold a non-blocking guard fd on the other side and
    close it right after: the guest never blocks on open, sees EOF on stdin when the last writer leaves, and
    EPIPE on stdout when the reader is gone (rather than blocking forever on a full pipe). The engine keeps
    one non-blocking fd to the stderr destination to write the ``wasm trap: ...`` line of a trapped guest.

Kill (stopping one guest without touching the others)
    Stores are created with an epoch deadline of one tick and an epoch-deadline *callback* (the C API's
    ``wasmtime_store_epoch_deadline_callback``; wasmtime-py 50 does not wrap it, so we call it through
    ``wasmtime._ffi``). ``Engine.increment_epoch`` is engine-wide: after it, every guest that is executing
    wasm reaches its deadline at its next loop back-edge or function entry and the callback runs on that
    guest's own thread, inside its own store (the only place a store may be touched while wasm runs). The
    callback reads the guest's kill flag: set -> it returns an error and the guest unwinds (status 128 +
    signal); unset -> it extends the deadline by one tick and wasm continues. So a kill never traps another
    guest.

    ``kill`` sets the flag and increments the epoch at once. A callback that read the flag just before it was
    set can extend the deadline past that increment, so a ticker thread (one per engine, started on the first
    kill) keeps incrementing every ``TICK_SECONDS`` while any killed guest is still running, and sleeps
    otherwise.

    Cost: nothing while no kill is pending (no ticks, no callbacks); while one is, each guest that is
    executing wasm pays one callback (a ctypes call into Python, a few microseconds plus the GIL) per tick;
    idle guests (blocked in a host call) pay nothing.

    Blocked guests (issue 3). Epochs do not reach a guest blocked inside a host call, so:
    - Modules sleeping: ``wasi_snapshot_preview1.poll_oneoff`` is shadowed in the module linker by our own
      (``_HostCalls``): clock subscriptions wait on the guest's condition variable, so a kill wakes it and
      the call raises (a trap: status 128 + signal). fd subscriptions are reported ready at once (their host
      fds live in wasmtime's WASI table, out of our reach); the read that follows blocks in wasmtime, which
      for stdin is handled next. Monotonic ``abstime`` deadlines use the time the WASI context was made as
      wasmtime's clock origin (microseconds apart).
    - Any guest (module or component) blocked reading stdin: a FIFO/pipe stdin is not handed to wasmtime
      directly; a pump thread (``_StdinPump``) copies it into a pipe of ours whose only writer it holds, and
      a kill closes that writer: the guest's read returns EOF, the guest re-enters wasm, reaches its deadline
      and unwinds. A guest that then exits on its own still ends with the kill's status.
    - Components sleeping (``wasi:io/poll`` on a monotonic-clock pollable) block inside wasmtime's own WASI
      implementation on a tokio timer. wasmtime-py 50 offers nothing to cancel it: no async support, no
      per-store interrupt for host calls, and shadowing ``wasi:io/poll#poll`` from Python would receive only
      opaque handles of wasmtime's own pollables, so components run in a process of their own by default
      (the runner, next section), where a kill is SIGKILL. A component in a thread (isolation ``thread``)
      that sleeps is killed only when its sleep ends (the status is the kill's).

Component runner (issue 3: kill of blocked components; network grants)
    Components block inside wasmtime's own Rust WASI code (sleep, poll, socket accept) where no Python runs,
    so by default each component runs in a child process of its own, the runner, started with
    ``os.posix_spawn`` (the daemon has threads: no fork, no preexec_fn) in its own process group, with the
    guest's stdio as its fds 0-2 (opened by the daemon with the FIFO guards of ``_open_stdio``, so neither side
    blocks on open), nothing else inherited (every other fd of ours is close-on-exec) and one argument, a JSON
    plan: args, env, preopens, memory and CPU limits, the network grant. The daemon always compiles the
    component first (bad input fails Create with our messages). Two runners take the same kind of plan:
    - ``wasm-shim-component-runner`` (``runner/``: Rust on the wasmtime 48 crates, built by scripts/setup.sh;
      found beside our interpreter, on PATH, or at the ``component_runner`` config path), the default. It
      starts in milliseconds, compiles the component with its own engine once per node (the result is cached
      in our cache directory, under its own fingerprint, checked like ours; ``wasm-shim precompile`` warms it
      through ``--precompile``), and it is the only one that can give a component sockets (next section).
    - ``python -m wasm_shim.shim.engines.wasmtime_engine --component-runner PLAN``, the fallback when the Rust
      runner is not installed (said once in the log): it loads the compiled component from our own cache file
      (re-checking the directory, the file and the digest; it never compiles) and runs it with this same
      engine code in a thread; one interpreter and ``import wasmtime`` per guest make it slower to start and
      bigger (measured in tests/integration/test_network.py).
    Both exit with the guest's status (trap 134 with ``wasm trap`` on stderr, run returning err 1) and ask for
    SIGKILL if their parent thread dies (PR_SET_PDEATHSIG: ``start`` is called from the daemon's event-loop
    thread, which lives as long as the daemon), so no runner outlives a crashed daemon.
    Kill(sig) sends SIGKILL through a pidfd (never a bare pid that could have been reused); the status is
    128 + the first terminating signal. Pause/Resume are SIGSTOP/SIGCONT. ``stats`` reads the runner's RSS and
    CPU time from /proc. Exit: one watcher thread per engine polls the runners' pidfds and reaps each with
    waitid(P_PIDFD) (never waitpid(-1), which would steal the native engine's children); on_exit runs after the
    reap, once our own pidfd is closed, so every fd of the guest is gone (the kernel closed the runner's).
    Components that never block may choose a thread with the annotation
    ``wasm.shim.io/component-isolation: thread`` (docs/annotations.md).

Network (issue 3)
    No sockets unless ``wasm.shim.io/network`` grants them (``network.py`` parses the grammar: ``pod`` or rules
    such as ``tcp-listen=*:8080,tcp-connect=10.0.0.0/8:5432``). wasmtime-py 50 gives components no sockets
    (its C API builds their WASI context with TCP off) and no socket-address check, so only the Rust component
    runner honours a grant: it joins the pod's network namespace (config.json ``linux.namespaces``, the network
    entry's path) before it has a thread, so every socket lives there, and decides every bind, listen, accept,
    connect, send and receive with wasmtime's socket-address check (``runner/src/main.rs``, ``allowed``).
    Without a grant it gives no sockets at all. No path in the spec, a thread-isolated component, a core module
    (WASI preview1 has no sockets API) or a missing Rust runner fails Create. Name lookup stays off: the
    resolver would read the node's /etc/resolv.conf, not the pod's.

Pause, CPU limits (issue 3)
    ``pause`` sets a flag and asks for ticks until the guest parks: its deadline callback (or our
    poll_oneoff on the way out) waits on the guest's condition until ``resume`` or a kill, using no CPU.
    A guest paused while blocked in wasmtime's own host code (a stdin read) parks when that call returns;
    until then the ticker keeps ticking on its account.
    A guest with ``cpu_limit`` (CPUs, from linux.resources.cpu quota/period) keeps the ticker running; at
    each tick its callback runs a token bucket on its own thread's CPU clock (it earns ``cpu_limit`` CPU-ns
    per wall-ns, banking at most ``CPU_BURST_SECONDS`` of it) and sleeps off any debt, so a spinning guest
    cannot take more than its share. While a CPU-limited guest runs, every other guest executing wasm pays
    one callback per tick too.

Memory and OOM (issue 3)
    ``memory_limit`` becomes the store's memory limit: a memory.grow beyond it fails inside the guest
    (malloc returns NULL). ``oom`` is set when a guest ends in failure with its linear memory near the limit
    (see ``_check_memory``); the task service publishes /tasks/oom for it. ``stats()`` reports the linear
    memory as last sampled (at deadlines and host calls; 0 for components, whose memories wasmtime-py does
    not expose) and the CPU time of the guest's thread. In the Rust component runner a resource limiter sees
    every refused memory.grow; when the guest then fails, the runner writes ``oom`` on its report pipe (its
    fd 3), which ``ComponentRunner`` reads after the reap (the Python runner reports nothing).

Resources
    On exit the guest thread closes its ``Store`` explicitly (``Store.close()`` frees the instance, the WASI
    context and every fd wasmtime opened for it: stdio files and preopened directories), then its own fds,
    then calls ``on_exit``. Nothing of a finished guest waits for the garbage collector. wasmtime itself keeps
    two tokio worker threads and a few epoll/eventfd fds for the whole process; compiled modules hold one
    memfd each (their memory image) for as long as they are cached.

Compiled-artifact cache
    Key: sha256 of the wasm bytes, under a directory named by the engine fingerprint (wasmtime version, the
    ``Config`` we set, machine). In memory: an LRU of ``memory_entries`` compiled artifacts. On disk, under
    ``cache_dir`` (if given): ``<fingerprint>/<sha256>.<kind>.cwasm`` = magic + sha256(payload) + payload,
    written to a temporary file and renamed. Deserializing untrusted bytes is unsafe (they are machine code),
    so the cache directory must be owned by us and not accessible to group/others (0700; checked at
    construction), files are opened with O_NOFOLLOW and must be ours, and a file whose digest or header does
    not match, or that wasmtime refuses, is deleted and the module recompiled. ``precompile`` (behind
    ``wasm-shim precompile``) fills the same cache through the same code, so it writes exactly the files a
    daemon reads; ``prepare`` logs at debug where each artifact came from (memory, disk, compiled).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import re
import select
import shutil
import signal as signals
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import wasmtime
import wasmtime.component as wasm_component
from wasmtime import _ffi as wasmtime_ffi  # the epoch-deadline callback is only in the C API bindings

from .base import (
    EXIT_FAILURE,
    EXIT_TRAP,
    EngineError,
    Entrypoint,
    GuestMount,
    GuestSpec,
    GuestStdio,
    WasmKind,
    classify_header,
    killed_status,
    network_namespace_path,
    read_header,
    resolve_entrypoint,
    signal_terminates,
    split_env,
)
from .native import _ExitWatcher  # one pidfd-polling reaper thread (issue 3), shared design with native
from .network import NETWORK_ANNOTATION, NO_NETWORK, NetworkGrant, parse_network_grant

log = logging.getLogger(__name__)
RUNNER_FLAG = "--component-runner"
COMPONENT_RUNNER = "wasm-shim-component-runner"  # runner/: the default runner process of a component
PRECOMPILE_TIMEOUT = 600  # seconds for the Rust runner to compile one component (a hang bound)

TICK_SECONDS = 0.01  # ticker period while a kill/pause is pending or a CPU-limited guest runs
CPU_BURST_SECONDS = 0.05  # a CPU-limited guest may bank at most this much of its share (at its rate)
WASM_PAGE = 65536
MAX_TRAP_FRAMES = 10  # a trap report includes the wasm backtrace only when it is at most this long
_CACHE_MAGIC = b"wasm-shim-cwasm-v1\n"
_RUN_INTERFACE = re.compile(r"^wasi:cli/run@0\.2\.\d+$")

# The C signature of the epoch-deadline callback (wasmtime/store.h); it returns an owned wasmtime_error_t*
# (NULL = carry on) and may set the next deadline (delta, in ticks) and how to apply it.
_DeadlineCallback = ctypes.CFUNCTYPE(
    ctypes.c_size_t,
    ctypes.POINTER(wasmtime_ffi.wasmtime_context_t),
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_uint64),
    ctypes.POINTER(wasmtime_ffi.wasmtime_update_deadline_kind_t),
)
_NO_FINALIZER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)()  # a NULL function pointer: nothing to finalize
_UPDATE_DEADLINE_CONTINUE = 0  # WASMTIME_UPDATE_DEADLINE_CONTINUE


@dataclass(frozen=True)
class CacheStats:
    """Counters of the compiled-artifact cache (a snapshot)."""

    compiles: int = 0
    memory_hits: int = 0
    disk_hits: int = 0
    disk_writes: int = 0
    disk_discarded: int = 0  # corrupt, foreign or incompatible files deleted


@dataclass(frozen=True)
class _Compiled:
    """A compiled artifact and what every start of it needs, shared by all guests of the same bytes."""

    kind: WasmKind
    digest: str
    module: wasmtime.Module | None
    instance_pre: wasmtime.InstancePre | None  # modules: imports resolved against the WASI linker
    component: wasm_component.Component | None
    run_index: wasm_component.ExportIndex | None  # components: wasi:cli/run@0.2.x#run
    function_exports: tuple[str, ...]  # modules: exported functions taking no parameters; components: exports


@dataclass(frozen=True)
class RunnerArtifact:
    """Where a runner finds a compiled component: a cache file and the sha256 (hex) of its payload."""

    path: str
    payload_sha256: str


@dataclass(frozen=True)
class WasmtimePrepared:
    """The result of ``prepare``: a compiled artifact plus the resolved entry and the guest's grant."""

    spec: GuestSpec
    entry: Entrypoint
    compiled: _Compiled
    export: str | None  # modules: the function to call; components: None (wasi:cli/run)
    initialize: bool  # call the reactor's `_initialize` before `export`
    env: tuple[tuple[str, str], ...]
    preopens: tuple[GuestMount, ...]  # the directory mounts (file mounts cannot be WASI preopens)
    isolation: str = "thread"  # "process": a component runner (see the module docstring)
    network: NetworkGrant = NO_NETWORK  # granted: only the Rust component runner honours it (runner/)
    netns: str | None = None  # the pod's network namespace path the Rust runner joins (granted only)
    artifact: RunnerArtifact | None = None  # the compiled component on disk, for the Python runner
    component_runner: str | None = None  # the Rust component runner (process isolation, when installed)


class _ArtifactCache:
    """Compiled artifacts by sha256 of their bytes: a bounded in-memory LRU over an optional on-disk store."""

    def __init__(self, engine: wasmtime.Engine, fingerprint: str, cache_dir: str | None, memory_entries: int):
        self._engine = engine
        self._memory: OrderedDict[str, _Compiled] = OrderedDict()
        self._memory_entries = memory_entries
        self._lock = threading.Lock()
        self._inflight: dict[str, threading.Lock] = {}
        self._counts = {name: 0 for name in CacheStats.__dataclass_fields__}
        self._runner_files: dict[str, tuple[tuple[int, ...], str]] = {}  # path -> (identity, payload sha256)
        self._dir: str | None = None
        if cache_dir is not None:
            _check_private_dir(cache_dir, create=True)
            self._dir = os.path.join(cache_dir, fingerprint)
            _check_private_dir(self._dir, create=True)

    @property
    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(**self._counts)

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def get(
        self, digest: str, kind: WasmKind, wasm: bytes, name: str, finish: Callable[[Any], _Compiled]
    ) -> tuple[_Compiled, str]:
        """The compiled artifact for ``wasm`` and where it came from: "memory", "disk" or "compiled".

        ``finish`` turns a fresh Module/Component into the shared ``_Compiled`` (links it, finds its entry);
        only finished artifacts enter the memory cache.
        """
        key = f"{digest}.{kind.value}"
        with self._lock:
            hit = self._memory.get(key)
            if hit is not None:
                self._memory.move_to_end(key)
                self._counts["memory_hits"] += 1
                return hit, "memory"
            gate = self._inflight.setdefault(key, threading.Lock())
        with gate:  # concurrent prepares of the same bytes compile once
            with self._lock:
                hit = self._memory.get(key)
                if hit is not None:
                    self._memory.move_to_end(key)
                    self._counts["memory_hits"] += 1
                    return hit, "memory"
            try:
                source = "disk"
                artifact = self._load(key, kind)
                if artifact is None:
                    source = "compiled"
                    artifact = self._compile(kind, wasm, name)
                    self._store(key, artifact)
                compiled = finish(artifact)
            finally:
                with self._lock:
                    self._inflight.pop(key, None)
            with self._lock:
                self._memory[key] = compiled
                while len(self._memory) > self._memory_entries:
                    self._memory.popitem(last=False)
            return compiled, source

    def _compile(self, kind: WasmKind, wasm: bytes, name: str) -> Any:
        self._count("compiles")
        try:
            if kind is WasmKind.MODULE:
                return wasmtime.Module(self._engine, wasm)
            return wasm_component.Component(self._engine, wasm)
        except wasmtime.WasmtimeError as exc:
            raise EngineError(f"{name} is not valid WebAssembly: {error_summary(str(exc))}") from None

    def _path(self, key: str) -> str | None:
        return None if self._dir is None else os.path.join(self._dir, key + ".cwasm")

    def _load(self, key: str, kind: WasmKind) -> Any:
        path = self._path(key)
        if path is None:
            return None
        try:
            payload = read_cache_file(path)
        except FileNotFoundError:
            return None
        except _CacheFileRefused as exc:
            self._discard(path, str(exc))
            return None
        try:
            if kind is WasmKind.MODULE:
                artifact: Any = wasmtime.Module.deserialize(self._engine, payload)
            else:
                artifact = wasm_component.Component.deserialize(self._engine, payload)
        except wasmtime.WasmtimeError as exc:
            self._discard(path, f"wasmtime refused it: {error_summary(str(exc))}")
            return None
        self._count("disk_hits")
        return artifact

    def _store(self, key: str, artifact: Any) -> None:
        path = self._path(key)
        if path is None:
            return
        try:
            self._write(path, bytes(artifact.serialize()))
        except OSError as exc:
            # The cache is an optimisation: a full disk must not fail the container.
            log.warning("cannot write compiled-module cache file %s: %s", path, exc)

    def _write(self, path: str, payload: bytes) -> str:
        """Write a cache file (temporary name, fsync, rename); return the payload's sha256 (hex)."""
        digest = _sha256(payload)
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as file:
                file.write(_CACHE_MAGIC + digest + payload)
                file.flush()
                os.fsync(file.fileno())
            os.rename(tmp, path)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        self._count("disk_writes")
        return digest.hex()

    def runner_file(self, compiled: _Compiled, fallback_dir: Callable[[], str]) -> RunnerArtifact:
        """The compiled component of ``compiled`` on disk, for a runner: the cache file, written if missing.

        The file is read back and its digest checked once per (inode, size, mtime); a file that changed or
        went away since is rewritten from the in-memory component. Without a cache_dir, ``fallback_dir()``
        (a private temporary directory of the engine) holds it.
        """
        assert compiled.component is not None
        key = f"{compiled.digest}.{compiled.kind.value}"
        path = self._path(key) or os.path.join(fallback_dir(), key + ".cwasm")
        with self._lock:
            known = self._runner_files.get(path)
        try:
            info = os.lstat(path)
            identity: tuple[int, ...] | None = (info.st_ino, info.st_size, info.st_mtime_ns)
        except OSError:
            identity = None
        if known is not None and identity == known[0]:
            return RunnerArtifact(path, known[1])
        try:
            digest = _sha256(read_cache_file(path)).hex() if identity is not None else None
        except (OSError, _CacheFileRefused) as exc:
            self._discard(path, str(exc))
            digest = None
        if digest is None:
            try:
                digest = self._write(path, bytes(compiled.component.serialize()))
            except OSError as exc:
                raise EngineError(
                    f"cannot write the compiled component to {path} for its runner process: {exc.strerror}"
                ) from None
        info = os.lstat(path)
        with self._lock:
            self._runner_files[path] = ((info.st_ino, info.st_size, info.st_mtime_ns), digest)
        return RunnerArtifact(path, digest)

    def _discard(self, path: str, why: str) -> None:
        log.warning("discarding compiled-module cache file %s: %s", path, why)
        self._count("disk_discarded")
        try:
            os.unlink(path)
        except OSError:
            pass


class _DeadlineHandler:
    """The epoch-deadline callback, run on a guest's own thread: trap the guest if it was killed, else go on."""

    def __init__(self, guests: dict[int, WasmtimeGuest]):
        self._guests = guests  # the engine's table of running guests, by the key given to the store
        self.calls = 0

    def __call__(self, context: Any, data: int | None, delta: Any, kind: Any) -> int:
        try:
            self.calls += 1
            guest = self._guests.get(data or 0)
            signal = None if guest is None else guest._at_deadline(context)
            if signal is not None:
                error = wasmtime_ffi.wasmtime_error_new(f"guest killed by signal {signal}".encode())
                return ctypes.cast(error, ctypes.c_void_p).value or 0
        except BaseException:  # an exception must not escape into wasmtime's frames
            log.exception("epoch deadline callback failed")
        delta[0] = 1
        kind[0] = _UPDATE_DEADLINE_CONTINUE
        return 0


# WASI preview1 (wasi_snapshot_preview1.witx) layouts used by poll_oneoff.
_SUBSCRIPTION_SIZE = 48  # userdata u64 @0, tag u8 @8, payload @16 (clock: id u32 @16, timeout u64 @24,
#                          precision u64 @32, flags u16 @40; fd_read/fd_write: fd u32 @16)
_EVENT = struct.Struct("<QHBxxxxxQHxxxxxx")  # userdata, error, type, fd_readwrite.nbytes, fd_readwrite.flags
_EVENTTYPE_CLOCK = 0
_SUBCLOCKFLAGS_ABSTIME = 1
_CLOCK_REALTIME, _CLOCK_MONOTONIC = 0, 1
_ERRNO_SUCCESS, _ERRNO_FAULT, _ERRNO_INVAL, _ERRNO_NOTSUP = 0, 21, 28, 58


class _GuestKilled(Exception):
    """Raised from a host call of a killed guest: wasmtime turns it into a trap that unwinds the guest."""


class _HostCalls:
    """Our own versions of the blocking WASI preview1 calls, so that a kill reaches a guest blocked in them.

    Defined over ``wasi_snapshot_preview1.poll_oneoff`` in the module linker (shadowing wasmtime's); runs on
    the calling guest's thread, found in ``threads`` (thread ident -> guest). Refers to no engine (no cycle).
    """

    def __init__(self, threads: dict[int, WasmtimeGuest]):
        self._threads = threads

    def poll_oneoff(self, caller: wasmtime.Caller, in_ptr: int, out_ptr: int, nsubs: int, nevents_ptr: int) -> int:
        """WASI preview1 poll_oneoff: clock subscriptions wait on the guest's kill/pause condition.

        fd subscriptions are reported ready at once (their host fds are inside wasmtime's WASI table, out of
        our reach): the guest's next read/write then blocks in wasmtime, where a blocking stdin is made
        killable by the stdin pump (see ``_StdinPump``). Output and regular files are always ready anyway.
        """
        guest = self._threads.get(threading.get_ident())
        memory = caller.get("memory")
        if guest is None or not isinstance(memory, wasmtime.Memory):
            return _ERRNO_NOTSUP
        if nsubs == 0:
            return _ERRNO_INVAL
        size = memory.data_len(caller)
        guest._memory_bytes = size
        if in_ptr + _SUBSCRIPTION_SIZE * nsubs > size or out_ptr + _EVENT.size * nsubs > size or nevents_ptr + 4 > size:
            return _ERRNO_FAULT
        subs = memory.read(caller, in_ptr, in_ptr + _SUBSCRIPTION_SIZE * nsubs)
        now = time.monotonic_ns()
        clocks: list[tuple[int, int, int]] = []  # (deadline on our monotonic clock, userdata, errno)
        ready: list[bytes] = []
        for index in range(nsubs):
            base = index * _SUBSCRIPTION_SIZE
            userdata, tag = struct.unpack_from("<QB", subs, base)
            if tag != _EVENTTYPE_CLOCK:  # fd_read / fd_write: ready now (see the docstring)
                ready.append(_EVENT.pack(userdata, _ERRNO_SUCCESS, tag, 0, 0))
                continue
            clock_id, timeout, _precision, flags = struct.unpack_from("<I4xQQH", subs, base + 16)
            if clock_id not in (_CLOCK_REALTIME, _CLOCK_MONOTONIC):
                ready.append(_EVENT.pack(userdata, _ERRNO_INVAL, tag, 0, 0))  # CPU-time clocks: no timers
                continue
            if not flags & _SUBCLOCKFLAGS_ABSTIME:
                deadline = now + timeout
            elif clock_id == _CLOCK_REALTIME:
                deadline = now + (timeout - time.time_ns())
            else:  # wasmtime's monotonic clock counts from when the guest's WASI context was made
                deadline = guest._monotonic_origin + timeout
            clocks.append((deadline, userdata, _ERRNO_SUCCESS))
        if not ready and clocks:
            first = min(deadline for deadline, _, _ in clocks)
            guest._sleep_until(first)  # raises _GuestKilled
            now = time.monotonic_ns()
            ready = [_EVENT.pack(u, e, _EVENTTYPE_CLOCK, 0, 0) for d, u, e in clocks if d <= now or d == first]
        guest._check_in()  # a kill or pause that came while we were here
        memory.write(caller, b"".join(ready), out_ptr)
        memory.write(caller, struct.pack("<I", len(ready)), nevents_ptr)
        return _ERRNO_SUCCESS


class _StdinPump:
    """Copies a stdin FIFO/pipe into a pipe of ours that the guest reads, so a kill can end its read with EOF.

    wasmtime reads stdin with a blocking read(2) inside its own code, where no epoch or Python function
    reaches; closing the only writer of the guest's pipe is what wakes it (pipe(7): EOF once every writer is
    closed). One thread per guest that has a stdin; it ends on EOF of the source, when the guest closes its
    end, or when ``stop`` is called (kill, or the guest's end).
    """

    def __init__(self, source: str, task_id: str):
        self._task_id = task_id
        self._source = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self.guest_end, self._sink = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self._sink, False)
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._run, name=f"wasm-stdin-{task_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass  # already woken (the pipe is full) or closed

    def close(self, timeout: float = 1.0) -> None:
        """Stop the thread, wait for it, and close every fd of ours."""
        self.stop()
        if self._thread.ident is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("task %s: the stdin pump did not stop within %.1f s", self._task_id, timeout)
                return  # leave its fds alone: the thread still uses them
        else:
            self._close_streams()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        if self.guest_end >= 0:
            os.close(self.guest_end)
            self.guest_end = -1

    def _close_streams(self) -> None:
        for fd in (self._source, self._sink):
            if fd >= 0:
                os.close(fd)
        self._source = self._sink = -1

    def _run(self) -> None:
        pending = b""
        try:
            while True:
                poller = select.poll()
                poller.register(self._wake_r, select.POLLIN)
                if pending:
                    poller.register(self._sink, select.POLLOUT)
                else:
                    poller.register(self._source, select.POLLIN)
                events = dict(poller.poll())
                if self._wake_r in events:
                    return
                try:
                    if self._sink in events:
                        if events[self._sink] & (select.POLLERR | select.POLLHUP):
                            return  # the guest closed its end
                        pending = pending[os.write(self._sink, pending) :]
                    elif self._source in events:
                        chunk = os.read(self._source, 65536)
                        if not chunk:
                            return  # EOF: every writer of the source is gone
                        pending = chunk
                except BlockingIOError:
                    continue  # a spurious wake-up: poll again
        except OSError as exc:
            log.info("task %s: stdin pump stopped: %s", self._task_id, exc)
        finally:
            self._close_streams()


class WasmtimeEngine:
    """Runs WebAssembly modules and components in wasmtime; see the module docstring for the design."""

    name = "wasmtime"

    def __init__(
        self,
        cache_dir: str | None = None,
        *,
        memory_entries: int = 64,
        component_isolation: str = "process",
        component_runner: str = "",
    ):
        if component_isolation not in ISOLATIONS:
            raise EngineError(f"component_isolation must be one of {', '.join(ISOLATIONS)}")
        self._component_isolation = component_isolation
        self._cache_dir = cache_dir
        self._component_runner = component_runner  # "" = beside our interpreter, then PATH (_find_component_runner)
        self._runner_found: str | None = None  # the runner once found: Create does not search again
        self._warned_no_runner = False
        self._runner_dir: str | None = None
        self._runners: dict[int, ComponentRunner] = {}  # by pid, until reaped
        self._exit_watcher: _ExitWatcher | None = None
        if not hasattr(wasmtime_ffi, "wasmtime_store_epoch_deadline_callback"):
            raise EngineError("wasmtime-py lacks wasmtime_store_epoch_deadline_callback (kill needs it)")
        config = wasmtime.Config()
        config.epoch_interruption = True  # kill: see the module docstring
        self._wasm = wasmtime.Engine(config)
        self._fingerprint: str | None = None
        self._cache = _ArtifactCache(
            self._wasm, self.fingerprint if cache_dir is not None else "", cache_dir, memory_entries
        )
        self._module_linker = wasmtime.Linker(self._wasm)
        self._module_linker.define_wasi()
        # Guests by the thread running them, for our host calls (issue 3: kill of a guest blocked in them).
        self._threads: dict[int, WasmtimeGuest] = {}
        self._host = _HostCalls(self._threads)
        i32 = wasmtime.ValType.i32()
        self._module_linker.allow_shadowing = True  # our poll_oneoff replaces wasmtime's
        self._module_linker.define_func(
            "wasi_snapshot_preview1", "poll_oneoff", wasmtime.FuncType([i32] * 4, [i32]),
            self._host.poll_oneoff, access_caller=True,
        )
        self._module_linker.allow_shadowing = False
        self._component_linker = wasm_component.Linker(self._wasm)
        self._component_linker.add_wasip2()
        # Guests by the key passed to the epoch-deadline callback; the lock also guards _pending and _closed.
        self._cond = threading.Condition()
        self._guests: dict[int, WasmtimeGuest] = {}
        self._next_key = 1
        # Guests the ticker must reach: killed and still running, or paused and not yet parked.
        self._pending: set[WasmtimeGuest] = set()
        self._limited: set[WasmtimeGuest] = set()  # running with a CPU limit: the ticker slices their time
        self._ticker: threading.Thread | None = None
        self._ticker_stop = False
        self._closed = False  # no new guests
        # The callback object must not refer back to the engine: a cycle would keep a closed engine (and its
        # compiled code) alive until the garbage collector runs.
        self._deadline = _DeadlineHandler(self._guests)
        self._deadline_callback = _DeadlineCallback(self._deadline)

    @property
    def fingerprint(self) -> str:
        """Names the on-disk cache directory: artifacts of another wasmtime, Config or machine never load.

        Computed on first use: ``importlib.metadata`` costs ~45 ms to import, which a runner (no cache_dir)
        must not pay on every container start.
        """
        if self._fingerprint is None:
            import importlib.metadata

            version = importlib.metadata.version("wasmtime")
            self._fingerprint = f"wasmtime-{version}-epoch-{os.uname().machine}"
        return self._fingerprint

    # --- Engine protocol ------------------------------------------------------------------------------------

    @property
    def stats(self) -> CacheStats:
        return self._cache.stats

    def can_handle(self, spec: GuestSpec) -> bool:
        try:
            return read_header(resolve_entrypoint(spec))[:4] == b"\0asm"
        except (EngineError, OSError):
            return False

    def prepare(self, spec: GuestSpec) -> WasmtimePrepared:
        if not os.path.isdir(spec.rootfs):
            raise EngineError(f"rootfs {spec.rootfs} is not a directory")
        entry = resolve_entrypoint(spec)
        name = f"entrypoint {entry.guest_path}"
        kind = classify_header(read_header(entry), name)
        env = tuple(split_env(spec.env))
        network = parse_network_grant(spec.annotations)
        isolation = "thread"
        netns = component_runner = None
        if kind is WasmKind.COMPONENT:
            isolation = component_isolation(spec.annotations, self._component_isolation)
        if isolation == "process":
            component_runner = self._find_component_runner()
        if network.granted:
            if isolation == "process" and component_runner is None:
                raise EngineError(
                    f"annotation {NETWORK_ANNOTATION}={network}: components with a network grant run in "
                    f"{COMPONENT_RUNNER}, which is not installed here (looked for "
                    f"{', '.join(self._component_runner_candidates())}); build it with scripts/setup.sh (cargo, "
                    "runner/) or set component_runner in the shim config"
                )
            netns = self._pod_network(spec, kind, isolation, network)
        compiled, source = self._compiled(entry.host_path, kind, name)
        # issue 3: tests and operators see cache reuse here (the daemon logs at debug in tests).
        log.debug("task %s: %s %s from %s (cache %s)", spec.task_id, kind.value, compiled.digest[:16], source,
                  self._cache.stats)
        if kind is WasmKind.MODULE:
            export, initialize = _module_entry(compiled, entry, name)
        else:
            export, initialize = None, False
            _check_component_entry(compiled, entry, name)
        preopens = []
        for mount in spec.mounts:
            if not mount.destination.startswith("/"):
                raise EngineError(f"mount {mount.destination!r}: the destination must be an absolute path")
            if os.path.isdir(mount.source):
                preopens.append(mount)
            elif os.path.exists(mount.source):
                # WASI can only grant directories. Kubernetes bind-mounts files into every container
                # (/etc/hosts, /etc/resolv.conf, /dev/termination-log): refusing them would refuse every pod.
                log.warning(
                    "task %s: mount %s is not a directory (%s); WASI grants only directories: not granted",
                    spec.task_id,
                    mount.destination,
                    mount.source,
                )
            else:
                raise EngineError(f"mount {mount.destination}: source {mount.source} does not exist")
        artifact = None
        if isolation == "process" and component_runner is None:  # the Python runner loads the daemon's artifact
            artifact = self._cache.runner_file(compiled, self._private_runner_dir)
        return WasmtimePrepared(
            spec, entry, compiled, export, initialize, env, tuple(preopens), isolation, network, netns, artifact,
            component_runner,
        )

    def _component_runner_candidates(self) -> list[str]:
        if self._component_runner:
            return [self._component_runner]
        candidates = [os.path.join(os.path.dirname(sys.executable), COMPONENT_RUNNER)]
        found = shutil.which(COMPONENT_RUNNER)
        if found and found not in candidates:
            candidates.append(found)
        return candidates

    def _find_component_runner(self) -> str | None:
        """The component runner executable (the configured path, else beside our interpreter, else on PATH), or
        None: then components run in the slower Python runner and network grants are refused (said once).

        Found once, then remembered (this is on every component's Create); while it is missing, each call looks
        again, so a runner installed later is picked up without restarting the daemon.
        """
        if self._runner_found is not None:
            return self._runner_found
        for path in self._component_runner_candidates():
            if os.path.isfile(path) and os.access(path, os.X_OK):
                self._runner_found = path
                return path
        if not self._warned_no_runner:
            self._warned_no_runner = True
            log.warning("%s not found (looked for %s): components run in the Python runner (slower to start, "
                        "no network grants); build it with scripts/setup.sh", COMPONENT_RUNNER,
                        ", ".join(self._component_runner_candidates()))
        return None

    def _pod_network(self, spec: GuestSpec, kind: WasmKind, isolation: str, network: NetworkGrant) -> str:
        """The network namespace a grant joins; EngineError when the grant cannot be honoured exactly."""
        grant = f"annotation {NETWORK_ANNOTATION}={network}"
        if kind is WasmKind.MODULE:
            raise EngineError(
                f"{grant}: the entrypoint is a WASI preview1 core module, which has no sockets API; only "
                "components (wasi:sockets) can use a network grant"
            )
        if isolation != "process":
            raise EngineError(
                f"{grant} needs {ISOLATION_ANNOTATION}=process: a component in the daemon's threads would open "
                "its sockets in the node's network namespace"
            )
        path = network_namespace_path(spec.bundle) if spec.bundle else None
        if path is None:
            raise EngineError(
                f"{grant}: the OCI spec names no network namespace to join (linux.namespaces has no network "
                "entry with a path); a pod's containers have one under CRI, with ctr use "
                "--with-ns network:/var/run/netns/NAME. Sockets are never opened in the node's namespace"
            )
        if not os.path.exists(path):
            raise EngineError(f"{grant}: network namespace {path} does not exist")
        return path

    def _private_runner_dir(self) -> str:
        """Without a cache_dir, compiled components for runners live in a private (0700) temporary directory."""
        with self._cond:
            if self._runner_dir is None:
                self._runner_dir = tempfile.mkdtemp(prefix="wasm-shim-runner-")
            return self._runner_dir

    def precompile(self, path: str) -> tuple[str, WasmKind, str]:
        """Compile ``path`` into the cache exactly as ``prepare`` would: (sha256, kind, "memory"/"disk"/"compiled").

        Used by ``wasm-shim precompile`` to warm the on-disk cache; raises EngineError naming the problem.
        """
        try:
            with open(path, "rb") as file:
                header = file.read(8)
        except OSError as exc:
            raise EngineError(f"{path}: {exc.strerror}") from None
        kind = classify_header(header, path)
        compiled, source = self._compiled(path, kind, path)
        runner = self._find_component_runner() if kind is WasmKind.COMPONENT and self._cache_dir else None
        if runner is not None:  # components run in the Rust runner, which caches its own compilation
            assert self._cache_dir is not None
            try:
                done = subprocess.run([runner, "--precompile", self._cache_dir, path], capture_output=True,
                                      text=True, timeout=PRECOMPILE_TIMEOUT)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise EngineError(f"{path}: {COMPONENT_RUNNER} --precompile: {exc}") from None
            if done.returncode != 0:
                raise EngineError(f"{path}: {COMPONENT_RUNNER} --precompile failed: {done.stderr.strip()}")
        return compiled.digest, kind, source

    def _compiled(self, host_path: str, kind: WasmKind, name: str) -> tuple[_Compiled, str]:
        try:
            with open(host_path, "rb") as file:
                wasm = file.read()
        except OSError as exc:
            raise EngineError(f"{name}: cannot read: {exc.strerror}") from None
        digest = hashlib.sha256(wasm).hexdigest()
        if kind is WasmKind.MODULE:
            return self._cache.get(
                digest, kind, wasm, name, lambda module: self._finish_module(module, digest, name)
            )
        return self._cache.get(digest, kind, wasm, name, lambda c: self._finish_component(c, digest))

    def start(
        self, prepared: Any, stdio: GuestStdio, on_exit: Callable[[int], None]
    ) -> WasmtimeGuest | ComponentRunner:
        if not isinstance(prepared, WasmtimePrepared):
            raise TypeError("start() needs what this engine's prepare() returned")
        if prepared.isolation == "process":
            return self._start_runner(prepared, stdio, on_exit)
        return self._start_thread(prepared, stdio, on_exit)

    def _start_thread(
        self, prepared: WasmtimePrepared, stdio: GuestStdio | None, on_exit: Callable[[int], None]
    ) -> WasmtimeGuest:
        """Run the guest on a thread of this process; ``stdio`` None = the process's own fds 0-2 (a runner)."""
        with self._cond:
            if self._closed:
                raise EngineError("the wasmtime engine is shut down")
            key = self._next_key
            self._next_key += 1
        guest = WasmtimeGuest(self, key, prepared, on_exit)
        try:
            guest._setup(stdio)
        except BaseException:
            guest._release()
            raise
        with self._cond:
            self._guests[key] = guest
            if guest._cpu_limit is not None:
                self._limited.add(guest)
                self._start_ticker()
                self._cond.notify_all()
        thread = threading.Thread(target=guest._main, name=f"wasm-{prepared.spec.task_id}", daemon=True)
        guest._thread = thread
        try:
            thread.start()
        except RuntimeError as exc:
            self._unregister(guest)
            guest._release()
            raise EngineError(f"cannot start a thread for task {prepared.spec.task_id}: {exc}") from None
        return guest

    # --- lifecycle ------------------------------------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """Refuse new guests, kill every guest (SIGKILL), wait up to ``timeout`` for them, stop the ticker
        and the runners' exit watcher, remove the private runner directory."""
        with self._cond:
            self._closed = True
            guests: list[WasmtimeGuest | ComponentRunner] = [*self._guests.values(), *self._runners.values()]
        for guest in guests:
            guest.kill(9)
        for guest in guests:
            guest.join(timeout)
        with self._cond:
            self._ticker_stop = True
            self._cond.notify_all()
            ticker, watcher = self._ticker, self._exit_watcher
            runner_dir, self._runner_dir = self._runner_dir, None
        if ticker is not None:
            ticker.join(timeout)
        if watcher is not None:
            watcher.close(timeout)
        if runner_dir is not None:
            shutil.rmtree(runner_dir, ignore_errors=True)

    @property
    def running(self) -> int:
        """How many guests (threads and runner processes) have started and not yet released their resources."""
        with self._cond:
            return len(self._guests) + len(self._runners)

    # --- component runners ----------------------------------------------------------------------------------

    def _start_runner(
        self, prepared: WasmtimePrepared, stdio: GuestStdio, on_exit: Callable[[int], None]
    ) -> ComponentRunner:
        """Spawn a runner process for a component (see the module docstring); returns at once.

        The Rust component runner (runner/) when it is installed, else our Python runner; both take a JSON plan as
        their one argument and the guest's stdio as fds 0-2, and are killed, paused and reaped the same way.
        """
        spec = prepared.spec
        with self._cond:
            if self._closed:
                raise EngineError("the wasmtime engine is shut down")
            if self._exit_watcher is None:
                self._exit_watcher = _ExitWatcher()
            watcher = self._exit_watcher
        common = {
            "task_id": spec.task_id, "rootfs": spec.rootfs, "root_readonly": spec.root_readonly,
            "args": list(spec.args), "env": [list(pair) for pair in prepared.env],
            "mounts": [[m.destination, m.source, m.readonly] for m in prepared.preopens],
            "memory_limit": spec.memory_limit, "cpu_limit": spec.cpu_limit, "parent": os.getpid(),
        }
        report: tuple[int, int] | None = None  # the Rust runner's report pipe (read end, write end)
        if prepared.component_runner is not None:
            plan = {
                **common, "wasm": prepared.entry.host_path, "digest": prepared.compiled.digest,
                "cache_dir": self._cache_dir or self._private_runner_dir(), "netns": prepared.netns,
                "network": prepared.network.plan(), "report_fd": _REPORT_FD,
            }
            report = os.pipe2(os.O_CLOEXEC)
            program = prepared.component_runner
            argv = [program, json.dumps(plan)]
            env: dict[str, str] = {}  # nothing of ours; the guest's env is in the plan
        else:
            artifact = prepared.artifact
            assert artifact is not None
            plan = {
                **common, "artifact": artifact.path, "payload_sha256": artifact.payload_sha256,
                "digest": prepared.compiled.digest, "cwd": spec.cwd, "guest_path": prepared.entry.guest_path,
                "host_path": prepared.entry.host_path,
            }
            program = sys.executable
            argv = [program, "-m", __spec__.name if __spec__ else "wasm_shim.shim.engines.wasmtime_engine",
                    RUNNER_FLAG, json.dumps(plan)]
            # Only what locates the interpreter's modules (the guest's env is in the plan, never inherited).
            env = {key: value for key, value in os.environ.items() if key.startswith("PYTHON") or key == "PATH"}
        try:
            fds = _open_runner_stdio(stdio)
        except BaseException:
            for fd in report or ():
                os.close(fd)
            raise
        if report is not None:
            fds.append(report[1])  # becomes the runner's fd 3 (_REPORT_FD)
        try:
            pid = os.posix_spawn(
                program, argv, env,
                file_actions=[(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(fds)],
                setpgroup=0, setsigmask=(),
            )
        except OSError as exc:
            if report is not None:
                os.close(report[0])
            raise EngineError(f"cannot start a runner process for task {spec.task_id}: {exc.strerror}") from None
        finally:
            for fd in fds:
                os.close(fd)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:  # never expected: the child is unreaped; make sure it does not run on
            os.kill(pid, signals.SIGKILL)
            os.waitpid(pid, 0)
            if report is not None:
                os.close(report[0])
            raise EngineError(f"cannot watch the runner process of task {spec.task_id}: {exc.strerror}") from None
        runner = ComponentRunner(self, spec.task_id, pid, os.dup(pidfd), on_exit,
                                 report[0] if report is not None else None)
        with self._cond:
            self._runners[pid] = runner
        log.debug("task %s: component runner pid %d", spec.task_id, pid)
        watcher.watch(pidfd, runner._reaped)
        return runner

    def _runner_gone(self, runner: ComponentRunner) -> None:
        with self._cond:
            self._runners.pop(runner.pid, None)

    def load_runner_component(self, artifact: RunnerArtifact) -> _Compiled:
        """In a runner: the compiled component from the daemon's cache file, checked, never compiled.

        The directory must be ours and 0700, the file pass ``read_cache_file`` and its payload digest equal
        what the daemon verified; raises EngineError naming the failed check.
        """
        _check_private_dir(os.path.dirname(artifact.path), create=False)
        try:
            payload = read_cache_file(artifact.path)
        except FileNotFoundError:
            raise EngineError(f"compiled component {artifact.path} is missing") from None
        except _CacheFileRefused as exc:
            raise EngineError(f"compiled component {artifact.path} refused: {exc}") from None
        if _sha256(payload).hex() != artifact.payload_sha256:
            raise EngineError(f"compiled component {artifact.path} changed since the daemon checked it")
        try:
            component = wasm_component.Component.deserialize(self._wasm, payload)
        except wasmtime.WasmtimeError as exc:
            raise EngineError(f"compiled component {artifact.path}: {error_summary(str(exc))}") from None
        del payload
        return self._finish_component(component, os.path.basename(artifact.path).split(".", 1)[0])

    # --- internals -----------------------------------------------------------------------------------------

    def _finish_module(self, module: wasmtime.Module, digest: str, name: str) -> _Compiled:
        """What every start of this module reuses: an InstancePre (imports resolved once, here)."""
        try:
            pre = self._module_linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as exc:
            raise EngineError(f"{name} cannot be linked: {error_summary(str(exc))}") from None
        functions = tuple(
            export.name
            for export in module.exports
            if isinstance(export.type, wasmtime.FuncType) and not export.type.params
        )
        return _Compiled(WasmKind.MODULE, digest, module, pre, None, None, functions)

    def _finish_component(self, component: wasm_component.Component, digest: str) -> _Compiled:
        """What every start of this component reuses: the export index of wasi:cli/run#run (if any)."""
        exports = tuple(component.type.exports(self._wasm))
        interfaces = [export for export in exports if _RUN_INTERFACE.match(export)]
        run_index = None
        if interfaces:
            interface = component.get_export_index(interfaces[0])
            if interface is not None:
                run_index = component.get_export_index("run", interface)
        return _Compiled(WasmKind.COMPONENT, digest, None, None, component, run_index, exports)

    @property
    def deadline_callbacks(self) -> int:
        """How often a guest reached its epoch deadline (a measurement of what kills cost running guests)."""
        return self._deadline.calls

    def _request_attention(self, guest: WasmtimeGuest) -> None:
        """Make ``guest`` reach its epoch deadline soon (a kill or a pause), ticking until it has."""
        with self._cond:
            if self._guests.get(guest._key) is not guest:
                return  # already finished (or never registered)
            self._pending.add(guest)
            self._start_ticker()
            self._cond.notify_all()
        self._wasm.increment_epoch()

    def _attended(self, guest: WasmtimeGuest) -> None:
        """``guest`` has seen its pause (it is parked): no more ticks on its account."""
        with self._cond:
            self._pending.discard(guest)

    def _start_ticker(self) -> None:  # with self._cond held
        if self._ticker is None and not self._ticker_stop:
            self._ticker = threading.Thread(target=self._tick, name="wasm-epoch-ticker", daemon=True)
            self._ticker.start()

    def _tick(self) -> None:
        """The ticker: increments the epoch every TICK_SECONDS while a guest needs it (_pending, _limited)."""
        with self._cond:
            while not self._ticker_stop:
                if not self._pending and not self._limited:
                    self._cond.wait()
                    continue
                self._wasm.increment_epoch()
                self._cond.wait(TICK_SECONDS)

    def _unregister(self, guest: WasmtimeGuest) -> None:
        with self._cond:
            self._guests.pop(guest._key, None)
            self._pending.discard(guest)
            self._limited.discard(guest)


class WasmtimeGuest:
    """One running guest: its store, its thread, its kill flag. Created by ``WasmtimeEngine.start``."""

    def __init__(
        self, engine: WasmtimeEngine, key: int, prepared: WasmtimePrepared, on_exit: Callable[[int], None]
    ):
        self._engine = engine
        self._key = key
        self._prepared = prepared
        self._on_exit = on_exit
        self._kill_signal: int | None = None
        self._store: wasmtime.Store | None = None
        self._stderr_fd: int | None = None  # ours, non-blocking: for the trap report
        self._stdin_pump: _StdinPump | None = None
        self._thread: threading.Thread | None = None
        self.exit_status: int | None = None
        self.oom = False  # set before on_exit: ended non-zero with its memory at the limit (issue 3)
        # Kill, pause and CPU slicing (issue 3). _signal guards _paused and wakes a guest waiting in our
        # host calls, in a pause or in a CPU-limit pause; the other fields are touched by the guest's thread.
        self._signal = threading.Condition()
        self._paused = False
        self._in_host = False  # inside our poll_oneoff: it checks for pause/kill itself on the way out
        self._monotonic_origin = 0
        self._memory: wasmtime.Memory | None = None
        self._memory_bytes = 0
        self._at_memory_limit = False
        limit = prepared.spec.cpu_limit
        self._cpu_limit = limit if limit is not None and limit > 0 else None
        self._cpu_credit = 0.0
        self._cpu_wall = 0
        self._cpu_used = 0
        self._cpu_final: int | None = None

    @property
    def task_id(self) -> str:
        return self._prepared.spec.task_id

    def kill(self, signal: int) -> None:
        """Stop the guest (see the module docstring); signal 0 and default-ignored signals do nothing."""
        if not signal_terminates(signal):
            return
        with self._signal:
            if self._kill_signal is None:
                self._kill_signal = signal  # the first terminating signal decides the status
            self._signal.notify_all()
        if self._stdin_pump is not None:
            self._stdin_pump.stop()  # a guest blocked reading stdin gets EOF
        self._engine._request_attention(self)

    def pause(self) -> None:
        """Freeze the guest: it parks at its next epoch deadline (or on leaving a host call) until resumed."""
        with self._signal:
            if self._paused or self._kill_signal is not None:
                return
            self._paused = True
            in_host = self._in_host
        if not in_host:
            self._engine._request_attention(self)

    def resume(self) -> None:
        with self._signal:
            self._paused = False
            self._signal.notify_all()
        self._engine._attended(self)

    def stats(self) -> tuple[int, int]:
        """(linear memory bytes as last sampled, CPU ns of the guest's thread). Components report memory 0."""
        cpu = self._cpu_final
        thread = self._thread
        if cpu is None and thread is not None and thread.ident is not None:
            try:
                cpu = time.clock_gettime_ns(time.pthread_getcpuclockid(thread.ident))
            except OSError:
                cpu = self._cpu_final  # the thread ended in between
        return self._memory_bytes, cpu or 0

    # --- on the guest's own thread: epoch deadline, host calls ----------------------------------------------

    def _at_deadline(self, context: Any) -> int | None:
        """The epoch-deadline callback's work: the kill signal to trap with, or None to go on.

        Parks here while paused; sleeps here while over its CPU limit (issue 3).
        """
        memory = self._memory
        if memory is not None:
            self._memory_bytes = wasmtime_ffi.wasmtime_memory_data_size(context, ctypes.byref(memory._memory))
        if self._kill_signal is None and self._paused:
            self._park()
        if self._kill_signal is None and self._cpu_limit is not None:
            self._throttle(self._cpu_limit)
        return self._kill_signal

    def _park(self) -> None:
        with self._signal:
            self._engine._attended(self)
            while self._paused and self._kill_signal is None:
                self._signal.wait()
        self._cpu_wall = time.monotonic_ns()  # no CPU credit accrues while paused

    def _throttle(self, limit: float) -> None:
        """A token bucket: the guest earns ``limit`` CPU-ns per wall-ns and sleeps off any debt."""
        now, used = time.monotonic_ns(), time.thread_time_ns()
        credit = self._cpu_credit + limit * (now - self._cpu_wall) - (used - self._cpu_used)
        self._cpu_credit = min(credit, limit * CPU_BURST_SECONDS * 1e9)
        self._cpu_wall, self._cpu_used = now, used
        if self._cpu_credit < 0:
            debt_seconds = -self._cpu_credit / limit / 1e9
            with self._signal:
                self._signal.wait_for(lambda: self._kill_signal is not None, debt_seconds)
            after = time.monotonic_ns()
            self._cpu_credit += limit * (after - now)
            self._cpu_wall = after

    def _sleep_until(self, deadline_ns: int) -> None:
        """Wait until ``deadline_ns`` (time.monotonic_ns); a kill ends the wait by trapping the guest."""
        with self._signal:
            self._in_host = True
            try:
                while self._kill_signal is None:
                    remaining = deadline_ns - time.monotonic_ns()
                    if remaining <= 0:
                        break
                    self._signal.wait(remaining / 1e9)
            finally:
                self._in_host = False
        self._check_in()

    def _check_in(self) -> None:
        """On the way back into wasm from a host call: honour a kill (trap) or a pause (park)."""
        if self._kill_signal is None and self._paused:
            self._park()
        if self._kill_signal is not None:
            raise _GuestKilled(f"guest killed by signal {self._kill_signal}")

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the guest's thread to end (it ends right after on_exit returns); True if it has."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    # --- setup on the caller's thread -----------------------------------------------------------------------

    def _setup(self, stdio: GuestStdio | None) -> None:
        prepared = self._prepared
        spec = prepared.spec
        wasi = wasmtime.WasiConfig()
        try:
            self._configure(wasi, stdio)
        except BaseException:
            wasi.close()  # frees what it opened so far (stdio files, preopened directories) now, not at GC
            raise
        store = wasmtime.Store(self._engine._wasm)
        self._store = store
        self._monotonic_origin = time.monotonic_ns()  # ~ when wasmtime's WASI monotonic clock starts
        store.set_wasi(wasi)  # the store owns the WASI context (and its fds) from here on
        if spec.memory_limit is not None and spec.memory_limit > 0:
            store.set_limits(memory_size=spec.memory_limit)  # memory.grow fails beyond it (issue 3)
        store.set_epoch_deadline(1)
        wasmtime_ffi.wasmtime_store_epoch_deadline_callback(
            store.ptr(), self._engine._deadline_callback, ctypes.c_void_p(self._key), _NO_FINALIZER
        )

    def _configure(self, wasi: wasmtime.WasiConfig, stdio: GuestStdio | None) -> None:
        prepared = self._prepared
        spec = prepared.spec
        wasi.argv = list(spec.args)
        wasi.env = [list(pair) for pair in prepared.env]
        if prepared.network.granted:  # never here: granted components run in the Rust component runner
            raise EngineError("a network grant is only honoured by the component runner, in the pod's namespace")
        if stdio is None:  # a runner: fds 0-2 are the guest's stdio, opened for it by the daemon
            wasi.inherit_stdin()
            wasi.inherit_stdout()
            wasi.inherit_stderr()
            self._stderr_fd = os.dup(2)
        elif stdio.stdin is not None:
            self._stdin_pump = _stdin_pump(stdio.stdin, spec.task_id)
            if self._stdin_pump is None:
                _open_stdio(stdio.stdin, "stdin", lambda path: setattr(wasi, "stdin_file", path))
            else:
                pump = self._stdin_pump
                try:
                    wasi.stdin_file = f"/proc/self/fd/{pump.guest_end}"
                except wasmtime.WasmtimeError:
                    raise EngineError(f"stdin {stdio.stdin}: cannot open it for the guest") from None
                os.close(pump.guest_end)  # wasmtime has its own fd now; the pump's writer is the only one
                pump.guest_end = -1
                pump.start()
        if stdio is not None and stdio.stdout is not None:
            _open_stdio(stdio.stdout, "stdout", lambda path: setattr(wasi, "stdout_file", path))
        if stdio is not None and stdio.stderr is not None:
            self._stderr_fd = _open_stdio(
                stdio.stderr, "stderr", lambda path: setattr(wasi, "stderr_file", path), keep_writer=True
            )
        _preopen(wasi, spec.rootfs, "/", spec.root_readonly, "rootfs")
        for mount in prepared.preopens:
            _preopen(wasi, mount.source, mount.destination, mount.readonly, f"mount {mount.destination}")

    # --- the guest thread ---------------------------------------------------------------------------------

    def _main(self) -> None:
        status = EXIT_FAILURE
        me = threading.get_ident()
        self._engine._threads[me] = self
        self._cpu_wall, self._cpu_used = time.monotonic_ns(), time.thread_time_ns()
        try:
            status = self._execute()
            if self._kill_signal is not None:
                # Killed while ending: a guest whose stdin read was ended by the kill (EOF) may have returned
                # normally before reaching its deadline; it still ended because of the kill.
                status = killed_status(self._kill_signal)
            # Out of memory: ended in failure (a trap, or exit(n != 0) after a failed allocation) with its
            # linear memory at the limit; a guest that coped with the failure and exited 0 is not.
            self.oom = status != 0 and self._kill_signal is None and self._at_memory_limit
        except BaseException as exc:
            log.exception("task %s: unexpected failure running the guest", self.task_id)
            self._report(f"wasm: internal error running the guest: {exc!r}\n")
        finally:
            self._engine._threads.pop(me, None)
            self._cpu_final = time.thread_time_ns()
            self._release()
            self._engine._unregister(self)
            self.exit_status = status
            try:
                self._on_exit(status)
            except Exception:
                log.exception("task %s: on_exit callback failed", self.task_id)

    def _execute(self) -> int:
        store = self._store
        assert store is not None
        prepared = self._prepared
        compiled = prepared.compiled
        if self._kill_signal is not None:
            return killed_status(self._kill_signal)
        try:
            if compiled.kind is WasmKind.MODULE:
                assert compiled.instance_pre is not None and prepared.export is not None
                instance = compiled.instance_pre.instantiate(store)
                exports = instance.exports(store)
                memory = exports.get("memory")
                if isinstance(memory, wasmtime.Memory):
                    self._memory = memory
                    self._memory_bytes = memory.data_len(store)
                try:
                    for name in ("_initialize", prepared.export) if prepared.initialize else (prepared.export,):
                        func = exports[name]  # `_initialize` first: a WASI reactor is initialised before use
                        assert isinstance(func, wasmtime.Func)  # checked in prepare
                        func(store)
                finally:
                    self._check_memory(store)
                return 0
            assert compiled.component is not None and compiled.run_index is not None
            component_instance = self._engine._component_linker.instantiate(store, compiled.component)
            run = component_instance.get_func(store, compiled.run_index)
            if run is None:
                self._report(f"wasm: {prepared.entry.guest_path}: wasi:cli/run#run is not a function\n")
                return EXIT_FAILURE
            result = run(store)
            return 0 if getattr(result, "tag", "ok") == "ok" else EXIT_FAILURE
        except wasmtime.ExitTrap as exc:
            code = exc.code
            _dispose(exc)
            return code & 0xFF  # WASI proc_exit(n): a POSIX exit status keeps the low 8 bits
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
            # WasmtimeError: a kill, a trap in a component, or another error; Trap: a core module's trap.
            text = str(exc)
            _dispose(exc)
            return self._failed(text)
        except _GuestKilled as exc:  # raised by our host calls; wasmtime hands it back to us as it was
            exc.__traceback__ = None
            return self._failed(str(exc))

    def _check_memory(self, store: wasmtime.Store) -> None:
        """Record the final memory size and whether it ended near its memory limit (for ``oom``).

        wasmtime-py 50 cannot observe a refused memory.grow (its C API has limits but no resource-limiter
        callback), and the refused request may be large (malloc asks for what it needs at once), so "near" is
        within an eighth of the limit (at least one page): a guest that fails there did so for lack of memory.
        """
        memory = self._memory
        if memory is None:
            return
        size = memory.data_len(store)
        self._memory_bytes = size
        limit = self._prepared.spec.memory_limit
        self._at_memory_limit = limit is not None and size + max(limit // 8, WASM_PAGE) > limit

    def _failed(self, text: str) -> int:
        """Status for a guest that ended in an error: killed, trapped (134), or another error (1).

        Like the wasmtime CLI, only a trap aborts (134); other errors (wasmtime refusing proc_exit(n) for
        n >= 126, a failed instantiation, a host error) exit 1. Both leave a line on the guest's stderr.
        """
        if self._kill_signal is not None:
            return killed_status(self._kill_signal)
        report = trap_report(text)
        self._report(report)
        return EXIT_TRAP if report.startswith("wasm trap:") else EXIT_FAILURE

    def _report(self, message: str) -> None:
        """Best effort: the pipe may be full or its reader gone, and the guest thread must not block on it."""
        if self._stderr_fd is None:
            log.info("task %s: %s", self.task_id, message.rstrip())
            return
        try:
            os.write(self._stderr_fd, message.encode("utf-8", "replace"))
        except OSError as exc:
            log.info("task %s: could not write to stderr (%s): %s", self.task_id, exc, message.rstrip())

    def _release(self) -> None:
        """Free the store (and with it every fd wasmtime opened for this guest), then our own fds."""
        self._memory = None
        store, self._store = self._store, None
        if store is not None:
            store.close()
        pump, self._stdin_pump = self._stdin_pump, None
        if pump is not None:
            pump.close()
        fd, self._stderr_fd = self._stderr_fd, None
        if fd is not None:
            os.close(fd)


class ComponentRunner:
    """A component running in a runner process (see the module docstring); created by ``WasmtimeEngine.start``.

    Thread-safe. ``_lock`` guards the pidfd we signal through (a dup of the watcher's, closed before on_exit,
    so a kill after the reap can never reach a recycled fd) and the kill signal.
    """

    def __init__(
        self, engine: WasmtimeEngine, task_id: str, pid: int, pidfd: int, on_exit: Callable[[int], None],
        report_fd: int | None = None,
    ):
        self._engine = engine
        self._report_fd = report_fd  # the read end of the Rust runner's report pipe; read once, after the reap
        self.oom = False  # the runner reported that the guest failed after its memory limit refused it
        self.task_id = task_id
        self.pid = pid
        self._pidfd: int | None = pidfd
        self._on_exit = on_exit
        self._lock = threading.Lock()
        self._kill_signal: int | None = None
        self._done = threading.Event()
        self._last_stats = (0, 0)
        self.exit_status: int | None = None

    def kill(self, signal: int) -> None:
        """SIGKILL to the runner for any terminating signal; the first one decides the status (128 + it)."""
        if not signal_terminates(signal):
            return
        with self._lock:
            if self._kill_signal is None:
                self._kill_signal = signal
            self._send(signals.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP: every thread of the runner stops, whatever the guest is doing; a kill still ends it."""
        with self._lock:
            self._send(signals.SIGSTOP)

    def resume(self) -> None:
        with self._lock:
            self._send(signals.SIGCONT)

    def stats(self) -> tuple[int, int]:
        """(resident set size in bytes, CPU ns) of the runner process, from /proc/PID/stat (proc(5))."""
        with self._lock:
            if self._pidfd is None:
                return self._last_stats
            try:
                with open(f"/proc/{self.pid}/stat", "rb") as file:
                    fields = file.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                return self._last_stats
            # After the ")" of comm: fields[0] is field 3 (state); utime 14, stime 15, rss 24 (pages).
            ticks = int(fields[11]) + int(fields[12])
            self._last_stats = (int(fields[21]) * _PAGE_SIZE, ticks * 1_000_000_000 // _CLOCK_TICKS)
            return self._last_stats

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the runner was reaped and on_exit returned; True if it has."""
        return self._done.wait(timeout)

    def _send(self, signal: int) -> None:  # with self._lock held
        if self._pidfd is None:
            return  # reaped: nothing to signal
        try:
            signals.pidfd_send_signal(self._pidfd, signal)
        except ProcessLookupError:
            pass  # exited, not yet reaped

    def _reaped(self, status: int) -> None:
        """From the exit watcher, once, after waitid reaped the runner."""
        with self._lock:
            fd, self._pidfd = self._pidfd, None
            if fd is not None:
                os.close(fd)
            if self._kill_signal is not None:
                status = killed_status(self._kill_signal)
            report, self._report_fd = self._report_fd, None
        if report is not None:
            with os.fdopen(report, "rb") as pipe:  # the runner is gone: its end is closed, so this reads to EOF
                lines = pipe.read(_REPORT_LIMIT).split(b"\n")
            self.oom = status != 0 and self._kill_signal is None and b"oom" in lines
        self.exit_status = status
        self._engine._runner_gone(self)
        log.debug("task %s: component runner %d ended with status %d", self.task_id, self.pid, status)
        try:
            self._on_exit(status)
        except Exception:
            log.exception("task %s: on_exit callback failed", self.task_id)
        finally:
            self._done.set()


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_REPORT_FD = 3  # the Rust runner's report pipe (runner/src/main.rs, `report`)
_REPORT_LIMIT = 4096  # bytes we read of it: a few short lines
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _open_runner_stdio(stdio: GuestStdio) -> list[int]:
    """The runner's fds 0, 1, 2, opened here (close-on-exec; posix_spawn's dup2 places them); EngineError."""
    fds: list[int] = []

    def opener(flags: int) -> Callable[[str], None]:
        return lambda path: fds.append(os.open(path, flags | os.O_CLOEXEC, 0o644))

    try:
        for stream, path, flags in (
            ("stdin", stdio.stdin, os.O_RDONLY),
            ("stdout", stdio.stdout, os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
            ("stderr", stdio.stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
        ):
            if path is None:
                fds.append(os.open(os.devnull, (os.O_RDONLY if stream == "stdin" else os.O_WRONLY) | os.O_CLOEXEC))
            else:
                _open_stdio(path, stream, opener(flags))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


# --- the runner process (python -m wasm_shim.shim.engines.wasmtime_engine --component-runner PLAN) ----------

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def run_component_runner(plan_text: str) -> int:
    """The runner's main: load the checked artifact, run the guest; its status (no network: see runner/)."""
    plan = json.loads(plan_text)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signals.SIGKILL, 0, 0, 0)
    if os.getppid() != plan["parent"]:
        return killed_status(signals.SIGKILL)  # the daemon died before the line above took effect
    engine = WasmtimeEngine(cache_dir=None, component_isolation="thread")
    compiled = engine.load_runner_component(RunnerArtifact(plan["artifact"], plan["payload_sha256"]))
    spec = GuestSpec(
        task_id=plan["task_id"], rootfs=plan["rootfs"], root_readonly=plan["root_readonly"],
        args=tuple(plan["args"]), env=(), cwd=plan["cwd"], memory_limit=plan["memory_limit"],
        cpu_limit=plan["cpu_limit"],
    )
    entry = Entrypoint(plan["guest_path"], plan["host_path"], None)
    prepared = WasmtimePrepared(
        spec, entry, compiled, None, False, tuple((key, value) for key, value in plan["env"]),
        tuple(GuestMount(dest, source, readonly) for dest, source, readonly in plan["mounts"]),
        "thread",
    )
    guest = engine._start_thread(prepared, None, lambda status: None)
    guest.join()
    return guest.exit_status if guest.exit_status is not None else EXIT_FAILURE


def _runner_entry(argv: list[str]) -> None:
    if len(argv) != 2 or argv[0] != RUNNER_FLAG:
        sys.stderr.write(f"usage: python -m {__spec__.name if __spec__ else __name__} {RUNNER_FLAG} PLAN\n")
        os._exit(2)
    try:
        status = run_component_runner(argv[1])
    except EngineError as exc:
        os.write(2, f"wasm error: component runner: {exc}\n".encode("utf-8", "replace"))
        status = EXIT_FAILURE
    except BaseException as exc:  # the guest's stderr is where the user looks
        os.write(2, f"wasm error: component runner failed: {exc!r}\n".encode("utf-8", "replace"))
        status = EXIT_FAILURE
    os._exit(status)  # no interpreter teardown: the guest's fds are closed by the kernel, now


# --- helpers ------------------------------------------------------------------------------------------------


def _dispose(exc: wasmtime.WasmtimeError | wasmtime.Trap) -> None:
    """Free a wasmtime error now rather than at the next garbage collection.

    wasmtime-py raises it from a generator frame that also holds it: a reference cycle (exception ->
    traceback -> frame -> exception) that would keep it, its native error and our frames (with the store
    object) alive until the collector runs.
    """
    exc.__traceback__ = None
    exc.close()


def trap_report(text: str) -> str:
    """The one-line ``wasm trap: ...`` for a guest's stderr, plus the wasm backtrace when it is short.

    wasmtime formats errors as ``error while executing at wasm backtrace:`` + frames + ``Caused by:`` + cause.
    """
    lines = text.splitlines()
    frames = [line.rstrip() for line in lines if re.match(r"^\s+\d+:\s+0x[0-9a-f]+ - ", line)]
    cause = ""
    if "Caused by:" in lines:
        after = [line.strip() for line in lines[lines.index("Caused by:") + 1 :] if line.strip()]
        cause = next((line for line in after if line.startswith("wasm trap:")), after[-1] if after else "")
    if not cause:
        cause = next((line.strip() for line in lines if line.strip()), "unknown error")
    if not cause.startswith("wasm trap:"):
        cause = f"wasm error: {cause}"
    report = cause + "\n"
    if 0 < len(frames) <= MAX_TRAP_FRAMES:
        report += "wasm backtrace:\n" + "\n".join(frames) + "\n"
    return report


def _module_entry(compiled: _Compiled, entry: Entrypoint, name: str) -> tuple[str, bool]:
    """(export to call, whether to call `_initialize` first) for a core module; EngineError if none."""
    module = compiled.module
    assert module is not None
    exports = {export.name: export.type for export in module.exports}
    listing = ", ".join(compiled.function_exports) or "none"
    wanted = entry.export or "_start"
    kind = exports.get(wanted)
    if kind is None:
        if entry.export is None:
            raise EngineError(
                f"{name} has no _start export (it is not a WASI command); pick a function with "
                f"{entry.guest_path}#EXPORT (function exports: {listing})"
            )
        raise EngineError(f"{name} has no export named {wanted!r} (function exports: {listing})")
    if not isinstance(kind, wasmtime.FuncType):
        raise EngineError(
            f"{name}: export {wanted!r} is a {type(kind).__name__.removesuffix('Type').lower()}, "
            f"not a function (function exports: {listing})"
        )
    if kind.params:
        raise EngineError(
            f"{name}: export {wanted!r} takes {len(kind.params)} parameter(s); an entrypoint must take none "
            f"(function exports: {listing})"
        )
    initialize = entry.export is not None and wanted != "_initialize" and "_initialize" in exports
    return wanted, initialize


def _check_component_entry(compiled: _Compiled, entry: Entrypoint, name: str) -> None:
    """A component runs only as a wasi:cli command; ``path#export`` may only name that interface."""
    listing = ", ".join(compiled.function_exports) or "none"
    if compiled.run_index is None:
        raise EngineError(
            f"{name} is a component that does not export wasi:cli/run@0.2.x (exports: {listing}); "
            "only wasi:cli command components can run"
        )
    if entry.export is not None:
        selector = entry.export.removesuffix("#run")
        runs = [export for export in compiled.function_exports if _RUN_INTERFACE.match(export)]
        if selector not in ("wasi:cli/run", "run", *runs):
            raise EngineError(
                f"{name}: a component can only be started through wasi:cli/run, not {entry.export!r} "
                f"(exports: {listing})"
            )


def _open_stdio(
    path: str, stream: str, hand_to_wasmtime: Callable[[str], None], keep_writer: bool = False
) -> int | None:
    """Let wasmtime open ``path`` for ``stream`` without blocking; optionally return a writer fd of our own.

    open(2) of a FIFO blocks until the other side exists (fifo(7)). A guard fd on the other side, opened
    non-blocking (O_RDWR for stdin: a writer; O_RDONLY for output: a reader) and closed as soon as wasmtime
    has its fd, makes that open immediate without changing what the guest sees afterwards.
    """
    try:
        is_fifo = stat.S_ISFIFO(os.stat(path).st_mode)
    except FileNotFoundError:
        is_fifo = False
        if stream == "stdin":
            raise EngineError(f"{stream} {path}: no such file or FIFO") from None
    except OSError as exc:
        raise EngineError(f"{stream} {path}: {exc.strerror}") from None
    guard = None
    mine = None
    try:
        if is_fifo:
            flags = os.O_RDWR if stream == "stdin" else os.O_RDONLY
            guard = os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            hand_to_wasmtime(path)
        except wasmtime.WasmtimeError:
            raise EngineError(f"{stream} {path}: cannot open it for the guest") from None
        if keep_writer:
            flags = os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if is_fifo else os.O_APPEND)
            mine = os.open(path, flags)
    except OSError as exc:
        raise EngineError(f"{stream} {path}: {exc.strerror}") from None
    finally:
        if guard is not None:
            os.close(guard)
    return mine


ISOLATION_ANNOTATION = "wasm.shim.io/component-isolation"
ISOLATIONS = ("process", "thread")


def component_isolation(annotations: Mapping[str, str], default: str) -> str:
    """How a component runs: "process" (a runner; killable whatever it does) or "thread" (in the daemon)."""
    value = annotations.get(ISOLATION_ANNOTATION, "").strip().lower() or default
    if value not in ISOLATIONS:
        raise EngineError(
            f"annotation {ISOLATION_ANNOTATION}={value!r}: use \"process\" (the default: the component runs in "
            "a process of its own and a kill stops it whatever it does) or \"thread\" (in the daemon: cheaper, "
            "but a component sleeping or blocked in a socket call is stopped only when that call returns)"
        )
    return value


def _stdin_pump(path: str, task_id: str) -> _StdinPump | None:
    """A pump for a FIFO or pipe stdin (see ``_StdinPump``); None for anything else (files do not block)."""
    try:
        if not stat.S_ISFIFO(os.stat(path).st_mode):
            return None
        return _StdinPump(path, task_id)
    except FileNotFoundError:
        raise EngineError(f"stdin {path}: no such file or FIFO") from None
    except OSError as exc:
        raise EngineError(f"stdin {path}: {exc.strerror}") from None


def _preopen(wasi: wasmtime.WasiConfig, host: str, guest: str, readonly: bool, what: str) -> None:
    try:
        wasi.preopen_dir(host, guest, not readonly)
    except wasmtime.WasmtimeError:
        raise EngineError(f"{what}: cannot open directory {host}") from None


def _check_private_dir(path: str, create: bool) -> None:
    """The cache directory must be ours and closed to group/others: its files are machine code we run."""
    if create:
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise EngineError(f"compiled-module cache {path}: cannot create it: {exc.strerror}") from None
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise EngineError(f"compiled-module cache {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise EngineError(f"compiled-module cache {path} is not a directory")
    if info.st_uid != os.geteuid():
        raise EngineError(
            f"compiled-module cache {path} is owned by uid {info.st_uid}, not by us ({os.geteuid()})"
        )
    if info.st_mode & 0o077:
        raise EngineError(
            f"compiled-module cache {path} has mode {stat.S_IMODE(info.st_mode):04o}; it must be 0700 "
            "(its files are machine code this process executes)"
        )


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class _CacheFileRefused(Exception):
    """A cache file we must not deserialize (not ours, not private, bad header or digest); says why."""


def read_cache_file(path: str) -> bytes:
    """The payload of the cache file ``path`` once it passed every check; FileNotFoundError if missing.

    Deserializing is running machine code, so the file must be a regular file (not a symlink) owned by us and
    closed to group/others, start with our magic and carry the sha256 of its payload. Raises
    ``_CacheFileRefused`` naming the failed check.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise _CacheFileRefused(f"cannot open: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
            raise _CacheFileRefused("not a private regular file of ours")
        with os.fdopen(os.dup(fd), "rb") as file:
            blob = file.read()
    finally:
        os.close(fd)
    header = len(_CACHE_MAGIC) + 32
    payload = blob[header:]
    if blob[: len(_CACHE_MAGIC)] != _CACHE_MAGIC or blob[len(_CACHE_MAGIC) : header] != _sha256(payload):
        raise _CacheFileRefused("header or digest mismatch")
    return payload


def error_summary(text: str) -> str:
    """wasmtime's multi-line error (message, backtrace, ``Caused by:`` chain) as one line for a user."""
    parts = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line == "Caused by:" or re.match(r"^\d+:\s+0x[0-9a-f]+ - ", line):
            continue
        if line.endswith("wasm backtrace:"):
            continue
        parts.append(line.removeprefix("0: ").removeprefix("1: "))
    return ": ".join(parts) or text


__all__ = [
    "CacheStats",
    "ComponentRunner",
    "RunnerArtifact",
    "TICK_SECONDS",
    "WasmtimeEngine",
    "WasmtimeGuest",
    "WasmtimePrepared",
    "trap_report",
]


if __name__ == "__main__":
    _runner_entry(sys.argv[1:])
