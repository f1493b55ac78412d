"""``WasmtimeEngine``: the wasmtime engine's front, behind ``base.Engine``.

Owns one ``wasmtime.Engine`` (compiled code is shared by every guest of the daemon), the compiled-artifact cache,
the module and component linkers, the table of running guests (threads via ``Epochs``; runner processes by pid)
and the runners' exit watcher. ``prepare`` resolves and checks everything a start needs (bad input fails here,
with the path or export named); ``start`` returns at once: a module or a thread-isolated component runs on a
thread of the daemon (``ModuleGuest``, ``ComponentGuest``), any other component in a runner process
(``ComponentRunner``); a component exporting wasi:http/incoming-handler instead of wasi:cli/run is served by its
runner (``serving``). ``close`` kills every guest and frees what the engine holds.

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
from collections.abc import Callable
from typing import Any

import wasmtime
import wasmtime.component as wasm_component

from ..base import (
    EngineError,
    Entrypoint,
    GuestMount,
    GuestSpec,
    GuestStdio,
    Prepared,
    WasmKind,
    classify_header,
    read_header,
    resolve_entrypoint,
    split_env,
)
from ..native import _ExitWatcher
from ..network import NETWORK_ANNOTATION, parse_network_grant
from .cache import (
    ArtifactCache,
    CacheFileRefused,
    CacheStats,
    RunnerArtifact,
    check_private_dir,
    read_cache_file,
    sha256,
)
from .components import (
    ISOLATION_ANNOTATION,
    ISOLATIONS,
    CompiledComponent,
    ComponentGuest,
    ComponentPrepared,
    check_component_entry,
    component_isolation,
    inspect_component,
)
from .epochs import Epochs
from .modules import CompiledModule, ModuleGuest, ModulePrepared, finish_module, module_entry
from .poll import HostCalls, module_linker
from .reports import error_summary
from .runner import COMPONENT_RUNNER, PRECOMPILE_TIMEOUT, ComponentRunner, RunnerLocator, pod_network, spawn_runner
from .serving import component_role, serve_network, serve_plan
from .thread_guest import ThreadGuest

log = logging.getLogger(__name__)

WasmtimePrepared = ModulePrepared | ComponentPrepared
WasmtimeGuest = ThreadGuest | ComponentRunner


class WasmtimeEngine:
    """Runs WebAssembly modules and components in wasmtime; see the package docstring for the design."""

    name = "wasmtime"
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
        self._exit_watcher: _ExitWatcher | None = None
        self._closed = False  # no new guests
        config = wasmtime.Config()
        config.epoch_interruption = True  # kill, pause and CPU limits reach running wasm at epoch deadlines
        self._wasm = wasmtime.Engine(config)
        self._epochs = Epochs(self._wasm)
        self._fingerprint: str | None = None
        self._cache: ArtifactCache[CompiledModule | CompiledComponent] = ArtifactCache(
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

    @property
    def stats(self) -> CacheStats:
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
        netns = runner = None
        if kind is WasmKind.COMPONENT:
            isolation = component_isolation(spec.annotations, self._component_isolation)
        if isolation == "process":
            runner = self._runner.find()
        if network.granted:
            if isolation == "process" and runner is None:
                raise EngineError(
                    f"annotation {NETWORK_ANNOTATION}={network}: components with a network grant run in "
                    f"{COMPONENT_RUNNER}, which is not installed here (looked for "
                    f"{', '.join(self._runner.candidates())}); build it with scripts/setup.sh (cargo, "
                    "runner/) or set component_runner in the shim config"
                )
            netns = pod_network(spec, kind, isolation, network)
        compiled, source = self._compiled(entry.host_path, kind, name)
        # Operators and tests see cache reuse here (the daemon logs at debug in tests).
        log.debug("task %s: %s %s from %s (cache %s)", spec.task_id, kind.value, compiled.digest[:16], source,
                  self._cache.stats)
        preopens = _directory_mounts(spec)
        if isinstance(compiled, CompiledModule):
            export, initialize = module_entry(compiled, entry, name)
            return ModulePrepared(spec, entry, compiled, export, initialize, env, preopens)
        if component_role(compiled.exports, entry.export, name) == "serve":
            serve = serve_plan(spec.annotations, env)
            if isolation != "process" or runner is None:
                raise EngineError(
                    f"{name} exports wasi:http/incoming-handler: it is served by {COMPONENT_RUNNER}, which "
                    + ("is not installed here; build it with scripts/setup.sh (cargo, runner/)" if runner is None
                       else f"needs {ISOLATION_ANNOTATION}=process")
                )
            netns = netns or serve_network(spec)
            return ComponentPrepared(spec, entry, compiled, env, preopens, isolation, network, netns, runner,
                                     serve=serve)
        check_component_entry(compiled, entry, name)
        artifact = None
        if isolation == "process" and runner is None:  # the Python runner loads the daemon's artifact
            artifact = self._cache.runner_file(compiled.digest, compiled.component, self._private_runner_dir)
        return ComponentPrepared(spec, entry, compiled, env, preopens, isolation, network, netns, runner, artifact)

    def start(self, prepared: Prepared, stdio: GuestStdio, on_exit: Callable[[int], None]) -> WasmtimeGuest:
        if isinstance(prepared, ComponentPrepared) and prepared.isolation == "process":
            return self._start_runner(prepared, stdio, on_exit)
        if not isinstance(prepared, ModulePrepared | ComponentPrepared):
            raise TypeError("start() needs what this engine's prepare() returned")
        return self.start_thread(prepared, stdio, on_exit)

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

    def start_thread(
        self, prepared: WasmtimePrepared, stdio: GuestStdio | None, on_exit: Callable[[int], None]
    ) -> ThreadGuest:
        """Run the guest on a thread of this process; ``stdio`` None = the process's own fds 0-2 (a runner)."""
        with self._lock:
            if self._closed:
                raise EngineError("the wasmtime engine is shut down")
        guest: ThreadGuest
        if isinstance(prepared, ModulePrepared):
            guest = ModuleGuest(self._wasm, self._epochs, self._threads, prepared, on_exit)
        else:
            guest = ComponentGuest(self._wasm, self._epochs, self._threads, self._component_linker, prepared,
                                   on_exit)
        try:
            guest.setup(prepared.env, prepared.preopens, stdio)
        except BaseException:
            guest.release()
            raise
        guest.launch()
        return guest

    # --- component runners ----------------------------------------------------------------------------------

    def _start_runner(
        self, prepared: ComponentPrepared, stdio: GuestStdio, on_exit: Callable[[int], None]
    ) -> ComponentRunner:
        with self._lock:
            if self._closed:
                raise EngineError("the wasmtime engine is shut down")
            if self._exit_watcher is None:
                self._exit_watcher = _ExitWatcher()
            watcher = self._exit_watcher
        cache_dir = self._cache_dir or self._private_runner_dir()
        runner, pidfd = spawn_runner(prepared, stdio, on_exit, cache_dir, self._runner_gone)
        with self._lock:
            self._runners[runner.pid] = runner
        watcher.watch(pidfd, runner.reaped)  # after the line above: the reap removes it from _runners
        return runner

    def _runner_gone(self, runner: ComponentRunner) -> None:
        with self._lock:
            self._runners.pop(runner.pid, None)

    def _private_runner_dir(self) -> str:
        """Without a cache_dir, compiled components for runners live in a private (0700) temporary directory."""
        with self._lock:
            if self._runner_dir is None:
                self._runner_dir = tempfile.mkdtemp(prefix="wasm-shim-runner-")
            return self._runner_dir

    def load_runner_component(self, artifact: RunnerArtifact) -> CompiledComponent:
        """In the Python runner: the compiled component from the daemon's cache file, checked, never compiled.

        The directory must be ours and 0700, the file pass ``read_cache_file`` and its payload digest equal
        what the daemon verified; raises EngineError naming the failed check.
        """
        check_private_dir(os.path.dirname(artifact.path), create=False)
        try:
            payload = read_cache_file(artifact.path)
        except FileNotFoundError:
            raise EngineError(f"compiled component {artifact.path} is missing") from None
        except CacheFileRefused as exc:
            raise EngineError(f"compiled component {artifact.path} refused: {exc}") from None
        if sha256(payload).hex() != artifact.payload_sha256:
            raise EngineError(f"compiled component {artifact.path} changed since the daemon checked it")
        try:
            component = wasm_component.Component.deserialize(self._wasm, payload)
        except wasmtime.WasmtimeError as exc:
            raise EngineError(f"compiled component {artifact.path}: {error_summary(str(exc))}") from None
        del payload
        return inspect_component(self._wasm, component, os.path.basename(artifact.path).split(".", 1)[0])

    # --- compiling ------------------------------------------------------------------------------------------

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
        runner = self._runner.find() if kind is WasmKind.COMPONENT and self._cache_dir else None
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

    def _compiled(self, host_path: str, kind: WasmKind, name: str) -> tuple[CompiledModule | CompiledComponent, str]:
        try:
            with open(host_path, "rb") as file:
                wasm = file.read()
        except OSError as exc:
            raise EngineError(f"{name}: cannot read: {exc.strerror}") from None
        digest = hashlib.sha256(wasm).hexdigest()
        finish: Callable[[Any], CompiledModule | CompiledComponent]
        if kind is WasmKind.MODULE:
            def finish(module: Any) -> CompiledModule | CompiledComponent:
                return finish_module(self._module_linker, module, digest, name)
        else:
            def finish(component: Any) -> CompiledModule | CompiledComponent:
                return inspect_component(self._wasm, component, digest)
        return self._cache.get(digest, kind, wasm, name, finish)


def _directory_mounts(spec: GuestSpec) -> tuple[GuestMount, ...]:
    """The mounts a WASI guest is granted: directories only (WASI preopens), destinations absolute."""
    preopens = []
    for mount in spec.mounts:
        if not mount.destination.startswith("/"):
            raise EngineError(f"mount {mount.destination!r}: the destination must be an absolute path")
        if os.path.isdir(mount.source):
            preopens.append(mount)
        elif os.path.exists(mount.source):
            # WASI can only grant directories. Kubernetes bind-mounts files into every container
            # (/etc/hosts, /etc/resolv.conf, /dev/termination-log): refusing them would refuse every pod.
            log.warning("task %s: mount %s is not a directory (%s); WASI grants only directories: not granted",
                        spec.task_id, mount.destination, mount.source)
        else:
            raise EngineError(f"mount {mount.destination}: source {mount.source} does not exist")
    return tuple(preopens)


__all__ = ["Entrypoint", "WasmtimeEngine", "WasmtimeGuest", "WasmtimePrepared"]
