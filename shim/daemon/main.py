"""The long-lived shim daemon: one per group of containers (see ShimConfig.grouping).

Owns the process: the listening socket it inherited from `start` (fd 3), the ttrpc server, the task service, the
event publisher, logging, signals and the decision to exit.

Lifecycle of the process:
- Spawned by `start` with fd 3 = a bound, listening unix socket, stdin/stdout = /dev/null, stderr = the first
  bundle's `log` FIFO (containerd copies it into its log), in its own session (not in containerd's process group).
- Serves until it has been idle — no tasks, no pod sandboxes and no client connections — for `idle_timeout`
  seconds, so back-to-back containers skip interpreter start, imports and compilation. Shutdown requests do not end
  it while tasks remain. With `idle_timeout = "never"` (the installer's keep-warm) it stays while its config is
  current: once the options file or the node config file it was started from changes into another config (an
  upgrade, an uninstall), it is superseded and exits as soon as it is idle.
- With `warm_images` set, compiles those images on a thread of their own as soon as it serves (warm.py).
- Exits under the group lock that `start` takes, after removing its socket, so a concurrent `start` either sees
  the old daemon alive (and it stays) or no socket (and launches a new one). SIGTERM/SIGINT: kill every guest,
  flush events, exit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import logging
import logging.handlers
import os
import select
import signal
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING

from ..config import DEFAULT_CONFIG_FILE, ConfigError, ShimConfig, load_config
from .tracing import NO_TRACING, Tracing, tracing_from

if TYPE_CHECKING:
    from ..engines.wasmtime import WasmtimeEngine
    from ..image.admission import Admission
    from ..image.source import EntrypointSource
    from ..ttrpc.server import Server

log = logging.getLogger("wasm_shim")

LISTEN_FD = 3
TRACING_FLUSH_SECONDS = 6.0  # the exporter's flush at exit (5 s, tracing.py) and a margin
WORKERS = 6  # the loop's worker threads (blocking steps of Create/Start/Kill/Delete, stdio drains)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to the bundle's log FIFO; once containerd stops reading (EPIPE), stays quiet instead of failing."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        self.setLevel(logging.CRITICAL + 1)


class _PrivateRotatingFile(logging.handlers.RotatingFileHandler):
    """The daemon's log file, root-only like the socket beside it (docs/reliability.md "Access"): task ids,
    namespaces and guest errors are not for other users. Every open (the first and after each rotation) makes it
    0600."""

    def _open(self):  # type: ignore[no-untyped-def]  # logging's private hook for opening the stream
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        os.fchmod(fd, 0o600)  # an existing file from an older daemon may have been created 0644
        return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)


def _setup_logging(debug: bool, level: str, log_file: str) -> logging.handlers.QueueListener:
    """Log to stderr (the first bundle's `log` FIFO, copied into containerd's log while that container lives)
    and to `<socket>.log` beside the socket, which outlives any one container (rotated at 1 MiB).

    Records are written by a listener thread (QueueHandler): writing a FIFO and a file on the event loop cost the
    instance-start path about a millisecond per line (profiled).
    """
    import queue
    from logging.handlers import QueueListener

    from .logfmt import LogfmtFormatter

    formatter = LogfmtFormatter()  # one logfmt line per record, task= and namespace= on task lines (logfmt.py)
    handlers: list[logging.Handler] = [_StderrHandler(sys.stderr)]
    if log_file:
        try:
            handlers.append(_PrivateRotatingFile(log_file, maxBytes=1 << 20, backupCount=1))
        except OSError:
            pass
    for handler in handlers:
        handler.setFormatter(formatter)
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = QueueListener(records, *handlers, respect_handler_level=True)
    listener.start()
    root = logging.getLogger()
    root.handlers[:] = [_RecordQueue(records)]
    root.setLevel(logging.DEBUG if debug else getattr(logging, level.upper(), logging.INFO))
    return listener


class _RecordQueue(logging.handlers.QueueHandler):
    """Hands the record itself to the listener thread, which formats it: QueueHandler's own ``prepare`` formats a
    copy in the caller (so it could be pickled to another process), which put that work on the path of every
    Create and Start. The queue never leaves this process."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


def _worker_pool(size: int) -> concurrent.futures.ThreadPoolExecutor:
    """The loop's executor, with all `size` threads started now: a fixed pool (blocking work: mounts, compiles,
    runc, stdio drains) whose thread count does not drift with load, so a leak shows as growth."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=size, thread_name_prefix="shim-worker")
    barrier = threading.Barrier(size)
    for future in [pool.submit(barrier.wait, 5.0) for _ in range(size)]:
        future.result()
    return pool


class Daemon:
    """Wires the collaborators together and owns the exit decision."""

    def __init__(self, config: ShimConfig, listener: socket.socket, socket_path: str, namespace: str,
                 ttrpc_address: str) -> None:
        self.config = config
        self.listener = listener
        self.socket_path = socket_path
        self.namespace = namespace
        self.ttrpc_address = ttrpc_address
        self.entrypoints: EntrypointSource | None = None  # set by main(): the policy and the image providers
        self.tracing: Tracing = NO_TRACING  # set by main(): traces of the task calls (tracing.py), off by default
        self.group = ""  # the grouping's key this daemon serves (`start` passes it: pod:SANDBOX, namespace, ...)
        self._stop = asyncio.Event()
        self._idle_since = time.monotonic()
        self._sources = _config_sources()  # the files the config was read from, and their stat at start
        self._superseded = False

    @property
    def daemon_id(self) -> str:
        """A short, stable name of this daemon: the start of its socket's name (a digest of containerd's address,
        namespace, group and config), so its metrics socket, log file and `ps` line can be matched."""
        return os.path.basename(self.socket_path)[:16] or f"pid-{os.getpid()}"

    def _touch(self, *_: object) -> None:
        self._idle_since = time.monotonic()

    async def run(self) -> None:
        from ..engines.native import DEFAULT_RUNC_ROOT, NativeEngine
        from ..engines.subreaper import become_subreaper
        from ..engines.wasmtime import WasmtimeEngine
        from ..sandbox.holder import Holders, find_holder
        from ..sandbox.service import SandboxService
        from ..ttrpc.server import Server
        from .events import EventQueue, TtrpcForwarder
        from .rpc import sandbox_handlers, task_handlers
        from .task_service import TaskService

        asyncio.get_running_loop().set_default_executor(_worker_pool(WORKERS))
        engine = _wasmtime_engine(WasmtimeEngine, self.config)
        # Native (ELF/#!) containers run through runc; their init processes are re-parented to the daemon (a
        # child subreaper), which reaps them. Each engine claims the entry kinds it declares (`accepts`).
        become_subreaper()
        native = NativeEngine(root=os.path.join(DEFAULT_RUNC_ROOT, self.namespace or "default"))
        forwarder = TtrpcForwarder(self.ttrpc_address)
        events = EventQueue(forwarder)
        events.start()
        self.tasks = TaskService([engine, native], events, on_empty=self._touch, entrypoints=self.entrypoints,
                                 tracer=self.tracing)
        # Pods whose CRI table says `sandboxer = "shim"` (containerd 2.x): each held by a holder process.
        holder_binary = find_holder()
        holders = Holders(holder_binary) if holder_binary else None
        self.sandboxes = SandboxService(holders, on_empty=self._touch)
        handlers = self.tracing.traced(task_handlers(self.tasks, self.namespace))
        handlers.update(sandbox_handlers(self.sandboxes, self.namespace))
        metrics = None
        if self.config.metrics_address or self.config.metrics_dir:
            from .metrics import Metrics  # off by default (config.py); prometheus_client is imported only then

            metrics = Metrics(self.tasks, [engine, native], {
                "namespace": self.namespace, "grouping": self.config.grouping, "group": self.group,
                "pid": str(os.getpid())})
            events.observe(metrics.on_event)
            handlers = metrics.timed(handlers)
            if self.config.metrics_address:
                await metrics.serve(self.config.metrics_address)
            if self.config.metrics_dir:
                await metrics.serve_in(self.config.metrics_dir, self.daemon_id)
        server = Server(handlers, on_connection_change=self._touch)
        await server.start(sock=self.listener)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        log.info("daemon serving %s (namespace %s, grouping %s, idle timeout %s)",
                 self.socket_path, self.namespace, self.config.grouping,
                 "never" if self.config.idle_timeout == float("inf") else f"{self.config.idle_timeout:.0f}s")
        if self.config.warm_images:
            _start_warming(self.config, engine)
        try:
            await self._serve_until_done(server)
        finally:
            await self.tasks.kill_all()
            await self.sandboxes.stop_all()
            if holders is not None:
                await loop.run_in_executor(None, holders.close)
            # No runc container and no runner process outlives the daemon; the wasmtime engine's compiled code,
            # ticker and watcher go with it.
            for closing in (native, engine):
                await loop.run_in_executor(None, closing.close)
            await server.close(grace=2.0)
            if metrics is not None:
                await metrics.close()
            await events.close(timeout=5.0)
            await forwarder.close()
            if self.entrypoints is not None:
                self.entrypoints.close()
            if self.tracing.enabled:
                await _bounded(loop.run_in_executor(None, self.tracing.close), TRACING_FLUSH_SECONDS,
                               "tracing: spans still queued at exit are dropped (the collector did not take them)")
            log.info("daemon exiting")

    def _busy(self, server: Server) -> bool:
        return bool(self.tasks.tasks) or bool(self.sandboxes.sandboxes) or server.connection_count > 0

    async def _serve_until_done(self, server: Server) -> None:
        tick = max(0.05, min(1.0, self.config.idle_timeout / 4 or 0.05))
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), tick)
                return
            except TimeoutError:
                pass
            if self._busy(server):
                self._touch()
                continue
            timeout = self.config.idle_timeout
            if timeout == float("inf") and self._config_changed():
                timeout = 0.0  # superseded: a new daemon serves the current config; this one goes once idle
            if time.monotonic() - self._idle_since >= timeout and self._release_socket(server):
                return

    def _config_changed(self) -> bool:
        """Whether the config this daemon was started from is no longer what its files say (checked by stat; the
        files are read again only when one changed, and a change that leaves the config as it was is no change)."""
        if self._superseded:
            return True
        now = _config_sources()
        if now == self._sources:
            return False
        self._sources = now
        env = os.environ
        try:
            current = load_config(options_body=env.get("WASM_SHIM_DAEMON_OPTIONS_BODY", ""),
                                  options_path=env.get("WASM_SHIM_DAEMON_OPTIONS_PATH", ""))
        except ConfigError as exc:
            current = None
            log.info("the config this daemon was started from no longer loads (%s)", exc)
        if current != self.config:
            self._superseded = True
            log.info("this daemon's config is no longer current: it exits once idle")
        return self._superseded

    def _release_socket(self, server: Server) -> bool:
        """Under the group lock: if still idle and nobody is queued on the socket, remove it and say so."""
        try:
            lock_fd = os.open(self.socket_path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            lock_fd = -1
        try:
            if lock_fd >= 0:
                try:
                    fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return False  # a `start` is deciding; look again later
            pending, _, _ = select.select([self.listener], [], [], 0)
            if pending or self._busy(server):
                self._touch()
                return False
            try:
                os.unlink(self.socket_path)
            except FileNotFoundError:
                pass
            return True
        finally:
            if lock_fd >= 0:
                os.close(lock_fd)


async def _bounded(work: asyncio.Future[None], seconds: float, message: str) -> None:
    try:
        await asyncio.wait_for(work, seconds)
    except TimeoutError:
        log.warning("%s", message)


def _config_sources() -> tuple[tuple[str, tuple[int, int, int, int] | None], ...]:
    """The files a daemon's config came from (the options file containerd named, the node config file) with their
    (inode, size, mtime, ctime) in ns, or None for one that is not there."""
    env = os.environ
    paths = [env.get("WASM_SHIM_DAEMON_OPTIONS_PATH", ""), env.get("WASM_SHIM_CONFIG", DEFAULT_CONFIG_FILE)]
    found: list[tuple[str, tuple[int, int, int, int] | None]] = []
    for path in paths:
        if not path:
            continue
        try:
            st = os.stat(path)
            found.append((path, (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)))
        except OSError:
            found.append((path, None))
    return tuple(found)


def _start_warming(config: ShimConfig, engine: WasmtimeEngine) -> None:
    """Compile `warm_images` on a thread of its own (warm.py): minutes for a large component must not hold a worker
    of the loop's pool."""
    from ..image.content_store import GRPC_ADDRESS_ENV
    from .warm import NAMESPACE, Warmer

    address = os.environ.get(GRPC_ADDRESS_ENV, "")
    if not address:
        log.warning("warm_images: the daemon was not given containerd's gRPC address; nothing is warmed")
        return

    def run() -> None:
        from ..image.containerd import ContainerdClient

        with ContainerdClient(address, NAMESPACE) as client:
            Warmer(config.warm_images, client, engine.warm, config.cache_dir).run()

    threading.Thread(target=run, name="warm-images", daemon=True).start()


def _entrypoints(config: ShimConfig, admission: Admission | None = None,
                 tracing: Tracing = NO_TRACING) -> EntrypointSource:
    """Where Create finds a task's entrypoint and which image it is (shim/image/source.py), with the signature
    policy, if configured, loaded now so that one that does not parse is reported at once (oci.policy.PolicyError;
    main() then refuses every container), and re-read at a Create after the file changed."""
    from ..image.admission import Admission
    from ..image.registry import NodeRegistryAccess, RegistryArtifacts
    from ..image.source import EntrypointSource

    if admission is None:
        policy_file = None
        if config.policy:
            from wasm_shim.oci.policy import PolicyFile

            policy_file = PolicyFile(config.policy)
            policy = policy_file.current()
            log.info("signature policy %s: default %s, %d rule(s); re-read when it changes", config.policy,
                     policy.default, len(policy.rules))
        admission = Admission(policy_file, verified_dir=os.path.join(config.cache_dir, "verified"),
                              access=NodeRegistryAccess.from_config(config), tracer=tracing)
    return EntrypointSource(admission, registry=RegistryArtifacts(config.artifact_dir,
                                                                  config.artifact_cache_mb << 20,
                                                                  allowed=config.artifact_registries,
                                                                  access=admission.access, tracer=tracing))


def _wasmtime_engine(factory: type[WasmtimeEngine], config: ShimConfig) -> WasmtimeEngine:
    """The wasmtime engine with its on-disk compiled cache, or without one when the cache dir is unusable.

    The cache is an optimisation (shim/engines/wasmtime/compile_cache.py): a cache dir that cannot be created or
    checked (a full disk, no inodes left, wrong owner or mode) must cost compiles, never every container of the
    node. The warning names the dir and the reason.
    """
    from ..engines.base import EngineError

    try:
        os.makedirs(config.cache_dir, mode=0o700, exist_ok=True)
        return factory(cache_dir=config.cache_dir, component_runner=config.component_runner)
    except (OSError, EngineError) as exc:
        reason = f"{exc.strerror}" if isinstance(exc, OSError) and exc.strerror else str(exc)
        log.warning("compiled-module cache %s is unusable (%s): running without an on-disk cache",
                    config.cache_dir, reason)
        return factory(cache_dir=None, component_runner=config.component_runner)


def main() -> int:
    env = os.environ
    try:
        config = load_config(
            options_body=env.get("WASM_SHIM_DAEMON_OPTIONS_BODY", ""),
            options_path=env.get("WASM_SHIM_DAEMON_OPTIONS_PATH", ""),
        )
    except ConfigError as exc:
        sys.stderr.write(f"wasm-shim daemon: {exc}\n")
        return 2
    socket_path = env.get("WASM_SHIM_DAEMON_SOCKET", "")
    log_listener = _setup_logging(bool(env.get("WASM_SHIM_DAEMON_DEBUG")), config.log_level,
                                  socket_path + ".log" if socket_path else "")
    try:
        listener = socket.socket(fileno=LISTEN_FD)
    except OSError as exc:
        log.error("no listening socket on fd %d (the daemon is started by `start`): %s", LISTEN_FD, exc)
        return 2
    listener.set_inheritable(False)
    tracing = tracing_from(config)  # NO_TRACING unless configured; then the SDK is imported here, once
    try:
        entrypoints = _entrypoints(config, tracing=tracing)
    except Exception as exc:  # PolicyError, CacheError: never run without the policy the operator asked for
        # Exiting here would leave containerd with "ttrpc: closed" and the reason only in a log; instead every
        # Create is refused with it (what `ctr` and `kubectl describe` show), and the daemon exits as soon as it is
        # idle, so the next container after a fix starts a daemon that reads the fixed file.
        from ..image.admission import Admission

        log.error("the signature policy cannot be used, every container will be refused: %s", exc)
        entrypoints = _entrypoints(config, Admission.refusing(
            f"the shim's signature policy cannot be used, so nothing runs: {exc}"))
        config = config.merged({"idle_timeout": 0}, "a policy that cannot be used")
    daemon = Daemon(
        config,
        listener,
        socket_path,
        env.get("WASM_SHIM_DAEMON_NAMESPACE", ""),
        env.get("WASM_SHIM_DAEMON_TTRPC_ADDRESS", ""),
    )
    daemon.entrypoints = entrypoints
    daemon.tracing = tracing
    daemon.group = env.get("WASM_SHIM_DAEMON_GROUP", "")
    try:
        asyncio.run(daemon.run())
    except Exception:
        log.exception("daemon failed")
        return 1
    finally:
        log_listener.stop()  # flushes what is queued
    return 0


if __name__ == "__main__":
    sys.exit(main())
