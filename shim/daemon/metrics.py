"""The daemon's Prometheus metrics: off by default, on with the config key ``metrics_address``.

Owns one ``prometheus_client`` registry per daemon (never the library's global one), what is counted in it, and the
small HTTP endpoint that serves it on loopback TCP or a unix socket. The exposition format is prometheus_client's
(``generate_latest``); only the HTTP framing of one GET is ours, so the endpoint runs on the daemon's event loop
and reads the task table where it lives, without locks or a thread.

Where the figures come from (one module, nothing scattered through the daemon):
- the events queue (``EventQueue.observe``): instance starts (``/tasks/start``) and OOM events (``/tasks/oom``);
- the RPC handler table (``timed``): calls by method and status, and the Start latency histogram (Start received
  to answered: the instance start as containerd sees it);
- at scrape time: tasks by state and per-task memory (``TaskService.snapshot``), and the compiled-module cache
  counters of every engine that keeps one (``Engine.cache_stats``, the engine contract).

Invariants: a scrape never changes a task; a failing collector costs that metric, never the scrape or the daemon;
the endpoint answers one request per connection with bounded reads (headers <= 8 KiB, 5 s), so a client that
stalls or sends garbage costs one connection only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
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

    def __init__(self, service: TaskService, engines: Sequence[Engine]) -> None:
        self._service = service
        self.registry = CollectorRegistry(auto_describe=True)
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
        self._unix_path = ""

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
                old = os.umask(0o177)  # the socket is 0600: root only, like the daemon's own
                try:
                    self._servers.append(await asyncio.start_unix_server(self._answer, where, limit=_MAX_REQUEST_HEAD))
                finally:
                    os.umask(old)
                self._unix_path = where
            else:
                self._servers.append(await asyncio.start_server(self._answer, where[0], where[1],
                                                                  limit=_MAX_REQUEST_HEAD))
        except OSError as exc:
            log.error("metrics endpoint %s cannot listen: %s (this daemon serves no metrics)", address, exc)
            return
        log.info("metrics endpoint listening on %s", address)

    async def close(self) -> None:
        for server in self._servers:
            server.close()
            await server.wait_closed()
        self._servers.clear()
        if self._unix_path:
            try:
                os.unlink(self._unix_path)
            except FileNotFoundError:
                pass

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0].split()
            if len(line) != 3 or line[0] not in (b"GET", b"HEAD"):
                await _respond(writer, 405, b"only GET /metrics\n", "text/plain")
            elif line[1].split(b"?", 1)[0] != b"/metrics":
                await _respond(writer, 404, b"metrics are at /metrics\n", "text/plain")
            else:
                body = await self.exposition()
                await _respond(writer, 200, body if line[0] == b"GET" else b"", CONTENT_TYPE_LATEST,
                               length=len(body))
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass  # a client that stalls, hangs up or sends more than a request head: drop it
        except Exception:
            log.exception("metrics: scrape failed")
        finally:
            writer.close()


async def _respond(writer: asyncio.StreamWriter, status: int, body: bytes, content_type: str,
                   length: int | None = None) -> None:
    reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}[status]
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\nConnection: close\r\n\r\n")
    writer.write(head.encode("ascii") + body)
    async with asyncio.timeout(_READ_TIMEOUT):
        await writer.drain()

