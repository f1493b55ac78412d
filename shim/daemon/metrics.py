"""The daemon's Prometheus metrics: off by default, on with the config keys ``metrics_address`` and ``metrics_dir``.

Owns one ``prometheus_client`` registry per daemon (never the library's global one), what is counted in it, and the
small HTTP endpoint that serves it on loopback TCP or a unix socket: ``metrics_address`` (one per node: the first
daemon binds it), and a socket of its own, ``<metrics_dir>/<daemon id>.sock``, that the node's endpoint reads
(metrics_node.py). The directory is root's and 0700, checked (and tightened) before a socket goes into it. The
exposition format is prometheus_client's (``generate_latest``); only the HTTP framing of one GET is ours, so the
endpoint runs on the daemon's event loop and reads the task table where it lives, without locks or a thread.

Where the figures come from (one module, nothing scattered through the daemon):
- the events queue (``EventQueue.observe``): instance starts (``/tasks/start``) and OOM events (``/tasks/oom``);
- the RPC handler table (``timed``): calls by method and status, and the Start latency histogram (Start received
  to answered: the instance start as containerd sees it);
- at scrape time: tasks by state and per-task memory (``TaskService.snapshot``), and the compiled-module cache
  counters of every engine that keeps one (``Engine.cache_stats``, the engine contract);
- the daemon itself: ``wasm_shim_daemon_info`` (its containerd namespace, grouping and group, pid).

Invariants: a scrape never changes a task; a failing collector costs that metric, never the scrape or the daemon;
the endpoint answers one request per connection with bounded reads (headers <= 8 KiB, 5 s), so a client that
stalls or sends garbage costs one connection only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from ..config import parse_metrics_address
from ..ttrpc.status import RpcError

if TYPE_CHECKING:
    from ..engines.base import Engine
    from ..ttrpc.server import CallContext, Handler
    from .events import Envelope
    from .task_service import TaskService

log = logging.getLogger(__name__)

START_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_MAX_REQUEST_HEAD = 8 << 10
_READ_TIMEOUT = 5.0


class _Snapshot:
    """What a scrape reads, gathered on the event loop just before it: task states and guest memory."""

    def __init__(self) -> None:
        self.states: list[tuple[str, str]] = []  # (namespace, state name)
        self.memory: list[tuple[str, str, int]] = []  # (namespace, task id, bytes)


class _ScrapeCollector(Collector):
    def __init__(self, snapshot: Callable[[], _Snapshot], engines: Sequence[Engine]) -> None:
        self._snapshot = snapshot
        self._engines = engines

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        tasks = GaugeMetricFamily("wasm_shim_tasks", "Tasks this daemon holds, by namespace and lifecycle state",
                                  labels=["namespace", "state"])
        counts: dict[tuple[str, str], int] = {}
        for namespace, state in snap.states:
            counts[(namespace, state)] = counts.get((namespace, state), 0) + 1
        for (namespace, state), count in sorted(counts.items()):
            tasks.add_metric([namespace, state], count)
        yield tasks
        memory = GaugeMetricFamily("wasm_shim_task_memory_bytes", "Memory a live task's guest uses now",
                                   labels=["namespace", "task"])
        for namespace, task_id, size in snap.memory:
            memory.add_metric([namespace, task_id], size)
        yield memory
        hits = CounterMetricFamily("wasm_shim_compile_cache_hits", "Compiled-module cache hits, by tier",
                                   labels=["engine", "tier"])
        misses = CounterMetricFamily("wasm_shim_compile_cache_misses",
                                     "Compiled-module cache misses (the module or component was compiled)",
                                     labels=["engine"])
        for engine in self._engines:
            stats = engine.cache_stats()
            if stats is None:
                continue  # this engine keeps no compile cache (native)
            name = engine.name
            hits.add_metric([name, "memory"], stats.memory_hits)
            hits.add_metric([name, "disk"], stats.disk_hits)
            misses.add_metric([name], stats.compiles)
        yield hits
        yield misses


class Metrics:
    """The daemon's metrics: fed by the events queue and the handler table, read by the endpoint."""

    def __init__(self, service: TaskService, engines: Sequence[Engine],
                 identity: Mapping[str, str] | None = None) -> None:
        self._service = service
        self.registry = CollectorRegistry(auto_describe=True)
        info = Gauge("wasm_shim_daemon_info", "This daemon: its containerd namespace, grouping and group (always 1)",
                     list(identity or {}), registry=self.registry)
        (info.labels(**identity) if identity else info).set(1)
        self._starts = Counter("wasm_shim_instance_starts", "Guests started (/tasks/start events)",
                               ["namespace"], registry=self.registry)
        self._ooms = Counter("wasm_shim_oom_events", "Guests that ended at their memory limit (/tasks/oom events)",
                             ["namespace"], registry=self.registry)
        self._start_seconds = Histogram("wasm_shim_instance_start_seconds",
                                        "Start calls, received to answered (instance start as containerd sees it)",
                                        buckets=START_BUCKETS, registry=self.registry)
        self._calls = Counter("wasm_shim_rpc_calls", "Task API calls, by method and status code",
                              ["method", "code"], registry=self.registry)
        self._last = _Snapshot()
        self.registry.register(_ScrapeCollector(lambda: self._last, engines))
        self._servers: list[asyncio.AbstractServer] = []
        self._unix_paths: list[str] = []

    # -- feeding ---------------------------------------------------------------------------------------------

    def on_event(self, event: Envelope) -> None:
        """An ``EventQueue`` observer: counts starts and OOMs as they are published (on the loop)."""
        if event.topic == "/tasks/start":
            self._starts.labels(event.namespace).inc()
        elif event.topic == "/tasks/oom":
            self._ooms.labels(event.namespace).inc()

    def timed(self, handlers: Mapping[tuple[str, str], Handler]) -> dict[tuple[str, str], Handler]:
        """The handler table, each handler counted by method and status, Start also timed."""
        return {key: self._timed(handler) for key, handler in handlers.items()}

    def _timed(self, handler: Handler) -> Handler:
        async def call(payload: bytes, ctx: CallContext) -> bytes:
            started = time.perf_counter()
            code = "OK"
            try:
                return await handler(payload, ctx)
            except RpcError as exc:
                code = exc.code.name
                raise
            except BaseException:
                code = "INTERNAL"
                raise
            finally:
                self._calls.labels(ctx.method, code).inc()
                if ctx.method == "Start" and code == "OK":
                    self._start_seconds.observe(time.perf_counter() - started)

        return call

    # -- reading ---------------------------------------------------------------------------------------------

    async def _refresh(self) -> None:
        snap = _Snapshot()
        for task in await self._service.snapshot():
            snap.states.append((task.namespace, task.state))
            if task.memory is not None:
                snap.memory.append((task.namespace, task.id, task.memory))
        self._last = snap

    async def exposition(self) -> bytes:
        """The text a scrape returns (prometheus_client's exposition format)."""
        await self._refresh()
        return generate_latest(self.registry)

    # -- the endpoint ----------------------------------------------------------------------------------------

    async def serve(self, address: str) -> None:
        """Listen on ``address`` (config.parse_metrics_address). An address in use is logged, not fatal."""
        where = parse_metrics_address(address)
        try:
            if isinstance(where, str):
                self._servers.append(await serve_http(self.exposition, path=where))
                self._unix_paths.append(where)
            else:
                self._servers.append(await serve_http(self.exposition, host=where[0], port=where[1]))
        except OSError as exc:
            log.error("metrics endpoint %s cannot listen: %s (this daemon serves no metrics)", address, exc)
            return
        log.info("metrics endpoint listening on %s", address)

    async def serve_in(self, directory: str, daemon_id: str) -> None:
        """Serve on ``directory/<daemon_id>.sock`` for the node's endpoint (metrics_node.py). A directory that is
        not root's and private (a symlink, another owner, a mode this cannot tighten) is logged, and this daemon
        then serves no metrics there: metrics are never worth a socket where other users reach it."""
        problem = private_directory_problem(directory)
        if problem:
            log.error("metrics_dir %s: %s (this daemon serves no metrics there)", directory, problem)
            return
        path = os.path.join(directory, daemon_id + ".sock")
        try:
            # Left by a daemon of the same id (the same group and config) that was killed: one daemon serves a
            # group at a time (the group lock of `start`), so nobody listens on it.
            os.unlink(path)
        except FileNotFoundError:
            pass
        await self.serve("unix:" + path)

    async def close(self) -> None:
        for server in self._servers:
            server.close()
            await server.wait_closed()
        self._servers.clear()
        for path in self._unix_paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self._unix_paths.clear()


def private_directory_problem(directory: str) -> str:
    """"" when ``directory`` is a real directory of this user with mode 0700 (created so, or tightened: the
    kubelet creates a hostPath directory 0755); else what is wrong with it."""
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        info = os.lstat(directory)
    except OSError as exc:
        return f"cannot be created: {exc.strerror or exc}"
    if not stat.S_ISDIR(info.st_mode):
        return "is not a directory (a symlink is not followed)"
    if info.st_uid != os.geteuid():
        return f"belongs to uid {info.st_uid}, not to this daemon's uid {os.geteuid()}"
    if stat.S_IMODE(info.st_mode) != 0o700:
        try:
            os.chmod(directory, 0o700, follow_symlinks=False)
        except OSError as exc:
            return f"has mode {stat.S_IMODE(info.st_mode):o} and cannot be made 0700: {exc.strerror or exc}"
    return ""


async def serve_http(exposition: Callable[[], Awaitable[bytes]], *, host: str | None = None, port: int = 0,
                     path: str = "") -> asyncio.AbstractServer:
    """An HTTP endpoint answering ``GET /metrics`` with ``exposition()``: on the unix socket ``path`` (0600: root
    only, like the daemon's own), else on TCP ``host:port``. One request per connection, bounded reads."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0].split()
            if len(line) != 3 or line[0] not in (b"GET", b"HEAD"):
                await _respond(writer, 405, b"only GET /metrics\n", "text/plain")
            elif line[1].split(b"?", 1)[0] != b"/metrics":
                await _respond(writer, 404, b"metrics are at /metrics\n", "text/plain")
            else:
                body = await exposition()
                await _respond(writer, 200, body if line[0] == b"GET" else b"", CONTENT_TYPE_LATEST,
                               length=len(body))
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass  # a client that stalls, hangs up or sends more than a request head: drop it
        except Exception:
            log.exception("metrics: scrape failed")
        finally:
            writer.close()

    if path:
        old = os.umask(0o177)
        try:
            return await asyncio.start_unix_server(answer, path, limit=_MAX_REQUEST_HEAD)
        finally:
            os.umask(old)
    return await asyncio.start_server(answer, host, port, limit=_MAX_REQUEST_HEAD)


async def _respond(writer: asyncio.StreamWriter, status: int, body: bytes, content_type: str,
                   length: int | None = None) -> None:
    reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}[status]
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\nConnection: close\r\n\r\n")
    writer.write(head.encode("ascii") + body)
    async with asyncio.timeout(_READ_TIMEOUT):
        await writer.drain()

