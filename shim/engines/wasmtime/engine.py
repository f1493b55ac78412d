"""``WasmtimeEngine``: the wasmtime engine's front, behind ``base.Engine``.

Owns one ``wasmtime.Engine`` (compiled code is shared by every guest of the daemon), the compiled-artifact cache,
the module and component linkers, the table of running guests (threads via ``Epochs``; runner processes by pid)
and the runners' exit watcher. ``prepare`` resolves and checks everything a start needs (bad input fails here,
with the path or export named); ``stage`` (after Create) readies a module or a thread-isolated component on a
parked thread of the daemon (``ModuleGuest``, ``ComponentGuest``) that ``launch`` (Start) lets run, while any other
component runs, from ``launch``, in a runner process
(``ComponentRunner``), and so does a component with a memory limit whatever its isolation asks (base.py's
"Memory limits": only the runner can sum its memories and tables); a component exporting
wasi:http/incoming-handler instead of wasi:cli/run is served by its runner (``serving``). ``close`` kills every
guest and frees what the engine holds.

Invariants: the ``Epochs`` object and the host calls refer to no engine, so a closed engine (and its compiled
code) is freed without the garbage collector; ``prepare`` logs at debug where each artifact came from (memory,
disk, compiled).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import wasmtime
import wasmtime.component as wasm_component

from ..base import (
    CacheStats,
    EngineError,
    EntryKind,
    Entrypoint,
    GuestMount,
    GuestSpec,
    GuestStdio,
    Prepared,
    Staged,
    StartLater,
    WouldBlock,
    classify_header,
    split_env,
)
from ..child import ExitWatcher
from ..grant import ISOLATION_ANNOTATION, ISOLATIONS, NETWORK_ANNOTATION
from .compile_cache import (
    CompileCache,
    check_private_dir,
)
from .components import (
    CompiledComponent,
    ComponentGuest,
    ComponentPrepared,
    check_component_entry,
    exports_run,
    inspect_component,
)
from .epochs import Epochs
from .footprint import store_limits
from .modules import CompiledModule, ModuleGuest, ModulePrepared, finish_module, module_entry
from .poll import HostCalls, module_linker
from .runner import (
    COMPONENT_RUNNER,
    PRECOMPILE_TIMEOUT,
    ComponentRunner,
    RunnerLocator,
    check_in_runner,
    pod_network,
    spawn_runner,
)
from .serving import component_role, serve_network, serve_plan
from .thread_guest import ThreadGuest

log = logging.getLogger(__name__)
CHECKED_ENTRIES = 1024  # components whose runner check is remembered (a digest and a few export names each)
KNOWN_FILES = 4096  # files whose digest is remembered by identity (below)

WasmtimePrepared = ModulePrepared | ComponentPrepared
WasmtimeGuest = ThreadGuest | ComponentRunner


class WasmtimeEngine:
    """Runs WebAssembly modules and components in wasmtime; see the package docstring for the design."""

    name = "wasmtime"
    accepts = frozenset({EntryKind.MODULE, EntryKind.COMPONENT})
    runs_off_loop = False  # start, kill, pause and resume only set flags, tick epochs or send signals

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
        self._runner = RunnerLocator(component_runner)
        self._runner_dir: str | None = None
        self._lock = threading.Lock()  # guards _runners, _exit_watcher, _runner_dir, _closed
        self._runners: dict[int, ComponentRunner] = {}  # by pid, until reaped
        self._checked: OrderedDict[str, tuple[str, ...]] = OrderedDict()  # components the runner compiled: exports
        self._checking: dict[str, threading.Lock] = {}  # digest -> held while one runner compiles it
        # (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns) -> sha256 of a file already read: an image layer's
        # module is the same bytes at every Create (a write to it changes its ctime, which no user can set), so
        # a memory hit needs a stat, not a read and a hash of the whole module.
        self._digests: OrderedDict[tuple[int, int, int, int, int], str] = OrderedDict()
        self._exit_watcher: ExitWatcher | None = None
        self._closed = False  # no new guests
        config = wasmtime.Config()
        config.epoch_interruption = True  # kill, pause and CPU limits reach running wasm at epoch deadlines
        self._wasm = wasmtime.Engine(config)
        self._epochs = Epochs(self._wasm)
        self._fingerprint: str | None = None
        self._cache: CompileCache[CompiledModule | CompiledComponent] = CompileCache(
            self._wasm, self.fingerprint if cache_dir is not None else "", cache_dir, memory_entries
        )
        # Guests by the thread running them, for our host calls (a kill reaches a module sleeping in them).
        self._threads: dict[int, ThreadGuest] = {}
        self._module_linker = module_linker(self._wasm, HostCalls(self._threads))
        self._component_linker = wasm_component.Linker(self._wasm)
        self._component_linker.add_wasip2()

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

    def cache_stats(self) -> CacheStats:
        return self._cache.stats

    @property
    def deadline_callbacks(self) -> int:
        """How often a guest reached its epoch deadline (a measurement of what kills cost running guests)."""
        return self._epochs.callbacks

    @property
    def running(self) -> int:
        """How many guests (threads and runner processes) have started and not yet released their resources."""
        with self._lock:
            return len(self._epochs.running()) + len(self._runners)

    # --- Engine contract ------------------------------------------------------------------------------------

    def prepare(self, spec: GuestSpec, entry: Entrypoint, *, cached_only: bool = False) -> WasmtimePrepared:
        if not os.path.isdir(spec.rootfs):
            raise EngineError(f"rootfs {spec.rootfs} is not a directory")
        name = f"entrypoint {entry.guest_path}"
        kind = entry.kind
        env = tuple(split_env(spec.env))
        network = spec.grant.network
        isolation = "thread"
        netns = runner = None
        bounded_in_runner = False  # a component asked for a thread, but only the runner can bound its memory limit
        if kind is EntryKind.COMPONENT:
            isolation = spec.grant.isolation or self._component_isolation
            if isolation == "thread" and spec.memory_limit:
                isolation, bounded_in_runner = "process", True
                log.info("task %s: a component with a memory limit runs in %s, which sums its memories and "
                         "tables (a daemon thread cannot)", spec.task_id, COMPONENT_RUNNER)
        if isolation == "process":
            runner = self._runner.find()
        if isolation == "process" and runner is None:
            looked = ", ".join(self._runner.candidates())
            if bounded_in_runner:
                raise EngineError(
                    f"{name}: a component with a memory limit ({spec.memory_limit} bytes) runs in "
                    f"{COMPONENT_RUNNER}, which sums every memory and table of its instances, and it is not "
                    f"installed here (looked for {looked}); a daemon thread ({ISOLATION_ANNOTATION}=thread) cannot "
                    "bound them. Build the runner with scripts/setup.sh, set component_runner in the shim config, "
                    "or remove the memory limit"
                )
            if network.granted:
                raise EngineError(
                    f"annotation {NETWORK_ANNOTATION}={network}: components with a network grant run in "
                    f"{COMPONENT_RUNNER}, which is not installed here (looked for {looked}); build it with "
                    "scripts/setup.sh (cargo, runner/) or set component_runner in the shim config"
                )
            raise EngineError(
                f"{name}: components run in {COMPONENT_RUNNER}, which is not installed here (looked for {looked}); "
                "build it with scripts/setup.sh (cargo, runner/), set component_runner in the shim config, or run "
                f"this component in the daemon with the annotation {ISOLATION_ANNOTATION}=thread"
            )
        if network.granted:
            netns = pod_network(spec, kind, isolation, network)
        preopens = _directory_mounts(spec)
        if runner is not None:  # a component in its runner process: the runner compiles it, the daemon does not
            digest, exports, source = self._check_in_runner(runner, entry.host_path, name, cached_only)
            log.debug("task %s: component %s checked by %s (%s)", spec.task_id, digest[:16], COMPONENT_RUNNER,
                      source)
            if component_role(exports, entry.export, name) == "serve":
                netns = netns or serve_network(spec)
                return ComponentPrepared(spec, entry, digest, exports, env, preopens, isolation, network, netns,
                                         runner, serve=serve_plan(spec.grant.http, env))
            check_component_entry(exports, exports_run(exports), entry, name)
            return ComponentPrepared(spec, entry, digest, exports, env, preopens, isolation, network, netns, runner)
        compiled, source = self._compiled(entry.host_path, kind, name, cached_only)
        # Operators and tests see cache reuse here (the daemon logs at debug in tests).
        log.debug("task %s: %s %s from %s (cache %s)", spec.task_id, kind.value, compiled.digest[:16], source,
                  self._cache.stats)
        if isinstance(compiled, CompiledModule):
            export, initialize = module_entry(compiled, entry, name)
            limits = store_limits(compiled.declared, spec.memory_limit, name)
            return ModulePrepared(spec, entry, compiled, export, initialize, env, preopens, limits)
        if component_role(compiled.exports, entry.export, name) == "serve":
            raise EngineError(f"{name} exports wasi:http/incoming-handler: it is served by {COMPONENT_RUNNER}, "
                              f"which needs {ISOLATION_ANNOTATION}=process")
        check_component_entry(compiled.exports, compiled.run_index is not None, entry, name)
        return ComponentPrepared(spec, entry, compiled.digest, compiled.exports, env, preopens, isolation,
                                 compiled=compiled)

    def _check_in_runner(self, runner: str, path: str, name: str,
                         cached_only: bool = False) -> tuple[str, tuple[str, ...], str]:
        """(sha256, export names, "memory" or "runner") of the component at ``path``, checked by its runner.

        The runner compiles it into the cache the runner processes read (``runner.check_in_runner``); what was
        checked is remembered by digest, so a component is checked once per daemon. One compile per digest at a
        time: Creates of the same component that arrive while its first compile runs (a Deployment scaled up on a
        node that has not compiled it yet) wait for that compile instead of starting their own, which on a busy
        node shared the CPU among N copies of the same work (the cluster benchmark, figure 11).
        """
        try:
            with open(path, "rb") as file:
                digest = self._digest_of(file, cached_only)
        except OSError as exc:
            raise EngineError(f"{name}: cannot read: {exc.strerror}") from None
        with self._lock:
            known = self._remembered(digest)
            if known is not None:
                return digest, known, "memory"
            if cached_only:
                raise WouldBlock(f"{name}: not checked by {COMPONENT_RUNNER} yet")
            checking = self._checking.setdefault(digest, threading.Lock())
        with checking:
            with self._lock:
                known = self._remembered(digest)  # the compile this Create waited for succeeded
            if known is not None:
                return digest, known, "memory"
            exports: tuple[str, ...] | None = None
            try:
                exports = check_in_runner(runner, self._runner_cache_dir(), path, digest, name)
            finally:  # remembered and unmarked at once: a Create arriving now finds one or the other
                with self._lock:
                    if exports is not None:
                        self._checked[digest] = exports
                        while len(self._checked) > CHECKED_ENTRIES:
                            self._checked.popitem(last=False)
                    if self._checking.get(digest) is checking:
                        del self._checking[digest]
        return digest, exports, "runner"

    def _digest_of(self, file: Any, cached_only: bool = False) -> str:
        """The sha256 of an open file, from the identity memo when the same file was hashed before (see
        ``_digests``: a large component is not read at every Create); WouldBlock instead of a read with
        ``cached_only``."""
        st = os.fstat(file.fileno())
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        with self._lock:
            known = self._digests.get(identity)
            if known is not None:
                self._digests.move_to_end(identity)
                return known
        if cached_only:
            raise WouldBlock(f"{file.name}: not hashed yet")
        digest = hashlib.file_digest(file, "sha256").hexdigest()
        with self._lock:
            self._digests[identity] = digest
            while len(self._digests) > KNOWN_FILES:
                self._digests.popitem(last=False)
        return digest

    def _remembered(self, digest: str) -> tuple[str, ...] | None:
        """Exports of a component the runner already checked, or None (caller holds ``_lock``)."""
        known = self._checked.get(digest)
        if known is not None:
            self._checked.move_to_end(digest)
        return known

    def stage(self, prepared: Prepared, stdio: GuestStdio, on_exit: Callable[[int], None]) -> Staged:
        """A guest in a daemon thread is staged whole (store, WASI context, its thread parked, a module without a
        start function instantiated); a runner is started at ``launch``."""
        if isinstance(prepared, ComponentPrepared) and prepared.isolation == "process":
            return StartLater(self._start_runner, prepared, stdio, on_exit)
        if not isinstance(prepared, ModulePrepared | ComponentPrepared):
            raise TypeError("stage() needs what this engine's prepare() returned")
        return self._stage_thread(prepared, stdio, on_exit)

    def start(self, prepared: Prepared, stdio: GuestStdio, on_exit: Callable[[int], None]) -> WasmtimeGuest:
        guest = self.stage(prepared, stdio, on_exit).launch()
        assert isinstance(guest, ThreadGuest | ComponentRunner)
        return guest

    def close(self, timeout: float = 5.0) -> None:
        """Refuse new guests, kill every guest (SIGKILL), wait up to ``timeout`` for them, stop the ticker
        and the runners' exit watcher, remove the private runner directory."""
        with self._lock:
            self._closed = True
            guests: list[Any] = [*self._epochs.running(), *self._runners.values()]
        for guest in guests:
            guest.kill(9)
        for guest in guests:
            guest.join(timeout)
        self._epochs.close(timeout)
        with self._lock:
            watcher = self._exit_watcher
            runner_dir, self._runner_dir = self._runner_dir, None
        if watcher is not None:
            watcher.close(timeout)
        if runner_dir is not None:
            shutil.rmtree(runner_dir, ignore_errors=True)

    # --- in-process guests ----------------------------------------------------------------------------------

    def _stage_thread(
        self, prepared: WasmtimePrepared, stdio: GuestStdio, on_exit: Callable[[int], None]
    ) -> ThreadGuest:
        """Ready the guest on a thread of this process, parked until ``launch`` (``thread_guest``)."""
        with self._lock:
            if self._closed:
                raise EngineError("the wasmtime engine is shut down")
        guest: ThreadGuest
        if isinstance(prepared, ModulePrepared):
            guest = ModuleGuest(self._wasm, self._epochs, self._threads, prepared, on_exit)
        else:
            guest = ComponentGuest(self._wasm, self._epochs, self._threads, self._component_linker, prepared,
                                   on_exit)
        limits = prepared.limits if isinstance(prepared, ModulePrepared) else None
        try:
            guest.setup(prepared.env, prepared.preopens, stdio, limits)
        except BaseException:
            guest.release()
            raise
        guest.stage()
        return guest

    # --- component runners ----------------------------------------------------------------------------------

    def _start_runner(
        self, prepared: ComponentPrepared, stdio: GuestStdio, on_exit: Callable[[int], None]
    ) -> ComponentRunner:
        with self._lock:
            if self._closed:
                raise EngineError("the wasmtime engine is shut down")
            if self._exit_watcher is None:
                self._exit_watcher = ExitWatcher()
            watcher = self._exit_watcher
        runner, pidfd = spawn_runner(prepared, stdio, on_exit, self._runner_cache_dir(), self._runner_gone)
        with self._lock:
            self._runners[runner.pid] = runner
        watcher.watch(pidfd, runner.reaped)  # after the line above: the reap removes it from _runners
        return runner

    def _runner_gone(self, runner: ComponentRunner) -> None:
        with self._lock:
            self._runners.pop(runner.pid, None)

    def _runner_cache_dir(self) -> str:
        """The directory a runner compiles into and loads from, made again if it went away.

        The daemon outlives the node bundle that started it (it serves its pods until they end), so ``helm
        uninstall`` removing the shim's data (``/var/lib/wasm-shim``) and a reinstall reusing this daemon must not
        leave every later component failing with "cache directory ...: No such file or directory". One stat per
        component start; the 0700/owner checks apply as at start-up.
        """
        if self._cache_dir is None:
            return self._private_runner_dir()
        check_private_dir(self._cache_dir, create=True)
        return self._cache_dir

    def _private_runner_dir(self) -> str:
        """Without a cache_dir, compiled components for runners live in a private (0700) temporary directory."""
        with self._lock:
            if self._runner_dir is None:
                self._runner_dir = tempfile.mkdtemp(prefix="wasm-shim-runner-")
            return self._runner_dir

    # --- compiling ------------------------------------------------------------------------------------------

    def precompile(self, path: str) -> tuple[str, EntryKind, str]:
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
        runner = self._runner.find() if kind is EntryKind.COMPONENT and self._cache_dir else None
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

    def warm(self, path: str, name: str) -> str:
        """Make the wasm at ``path`` start without a compile (shim/daemon/warm.py): a module compiled into the memory
        and disk caches; a component checked and compiled by its runner (remembered, as a Create does), or in the
        daemon when no runner is installed. Says what was done; EngineError naming ``name`` when it cannot."""
        try:
            with open(path, "rb") as file:
                header = file.read(8)
        except OSError as exc:
            raise EngineError(f"{name}: {exc.strerror}") from None
        kind = classify_header(header, name)
        runner = self._runner.find() if kind is EntryKind.COMPONENT else None
        if runner is not None:
            digest, _, source = self._check_in_runner(runner, path, name)
            return f"component {digest[:16]} checked by {COMPONENT_RUNNER} ({source})"
        compiled, source = self._compiled(path, kind, name)
        return f"{kind.value} {compiled.digest[:16]} ({source})"

    def _compiled(self, host_path: str, kind: EntryKind, name: str,
                  cached_only: bool = False) -> tuple[CompiledModule | CompiledComponent, str]:
        try:
            with open(host_path, "rb") as file:
                st = os.fstat(file.fileno())
                identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                with self._lock:
                    known = self._digests.get(identity)
                if known is not None:
                    hit = self._cache.peek(known, kind)
                    if hit is not None:
                        return hit, "memory"
                if cached_only:
                    raise WouldBlock(f"{name}: not compiled in memory")
                wasm = file.read()
        except OSError as exc:
            raise EngineError(f"{name}: cannot read: {exc.strerror}") from None
        digest = hashlib.sha256(wasm).hexdigest()
        with self._lock:
            self._digests[identity] = digest
            while len(self._digests) > KNOWN_FILES:
                self._digests.popitem(last=False)
        finish: Callable[[Any], CompiledModule | CompiledComponent]
        if kind is EntryKind.MODULE:
            def finish(module: Any) -> CompiledModule | CompiledComponent:
                return finish_module(self._module_linker, module, digest, name, wasm)
        else:
            def finish(component: Any) -> CompiledModule | CompiledComponent:
                return inspect_component(self._wasm, component, digest)
        return self._cache.get(digest, kind, wasm, name, finish)


#: Files Kubernetes (the kubelet and CRI) bind-mounts into every container: not the pod author's choice, so not
#: worth a warning at every Create of every pod (a log line is paid on the start path).
KUBERNETES_FILES = frozenset({"/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/dev/termination-log"})


def _directory_mounts(spec: GuestSpec) -> tuple[GuestMount, ...]:
    """The mounts a WASI guest is granted: the directories (WASI preopens are directories only)."""
    for mount in spec.mounts:
        if not mount.directory:
            # Kubernetes bind-mounts files into every container (/etc/hosts, /etc/resolv.conf,
            # /dev/termination-log): refusing them would refuse every pod.
            level = logging.DEBUG if mount.destination in KUBERNETES_FILES else logging.WARNING
            log.log(level, "task %s: mount %s is not a directory (%s); WASI grants only directories: not granted",
                    spec.task_id, mount.destination, mount.source)
    return tuple(mount for mount in spec.mounts if mount.directory)


__all__ = ["Entrypoint", "WasmtimeEngine", "WasmtimeGuest", "WasmtimePrepared"]
