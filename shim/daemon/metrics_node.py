"""The node's one metrics endpoint: every daemon's metrics on a node, read from their unix sockets and served as
one Prometheus exposition, each series labelled with the daemon it came from.

Why a reader on the node and not each daemon on the network: a node runs one daemon per namespace, or per pod with
``grouping = "pod"``, each started by containerd at an unknowable time, and none can own a port the cluster's
Prometheus knows. Each daemon serves its figures on a unix socket of its own in the root-only ``metrics_dir``
(shim/daemon/metrics.py, unchanged: no authentication needed where only root can connect); this module, run as
``wasm-shim metrics serve`` by the chart's unprivileged ``metrics`` container beside the installer, lists that
directory at each scrape, asks every socket, and answers on the pod network. The daemons stay simple (no
discovery, no registration, no network listener), and the one process facing the network holds no privilege
beyond reading that directory.

Labels: every series of a daemon gets ``daemon="<id>"``, the name of its socket (the first 16 hex digits of the
daemon's own socket name, as in ``ps`` and its log file name); ``wasm_shim_daemon_info`` says what it serves (its
containerd namespace, grouping and group). Added here: ``wasm_shim_daemon_up{daemon}`` (1: scraped; 0: its socket
accepted but the scrape failed or timed out) and ``wasm_shim_node_daemons`` (sockets that answered). A socket
nobody listens on (a daemon that was killed before it could remove it) is skipped and counted in
``wasm_shim_node_stale_sockets``.

Invariants: a scrape reads each socket once with bounded time (``DAEMON_TIMEOUT``) and size (``MAX_EXPOSITION``);
one daemon that stalls or answers garbage costs its own series (``up`` 0), never the scrape; series of one name
from several daemons are one family (one HELP and TYPE), as the text format requires.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from .metrics import serve_http

log = logging.getLogger(__name__)

SOCKET_SUFFIX = ".sock"
DAEMON_LABEL = "daemon"
DAEMON_TIMEOUT = 3.0  # seconds for one daemon's answer; Prometheus's default scrape timeout is 10 s
MAX_EXPOSITION = 16 << 20  # bytes read from one daemon


class ScrapeFailed(Exception):
    """One daemon's socket accepted but did not give a metrics page; the message says why."""


async def scrape_socket(path: str, timeout: float = DAEMON_TIMEOUT) -> str:
    """GET /metrics over the unix socket ``path``: the exposition text. ConnectionRefusedError and
    FileNotFoundError when nobody listens there; ScrapeFailed for anything else."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_unix_connection(path)
        try:
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            await writer.drain()
            data = await reader.read(MAX_EXPOSITION + 1)
            while len(data) <= MAX_EXPOSITION and (more := await reader.read(MAX_EXPOSITION + 1 - len(data))):
                data += more
        finally:
            writer.close()
    if len(data) > MAX_EXPOSITION:
        raise ScrapeFailed(f"more than {MAX_EXPOSITION} bytes")
    head, sep, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if not sep or len(status) < 2 or status[1] != b"200":
        raise ScrapeFailed(f"answered {head[:80]!r}")
    return body.decode("utf-8", errors="replace")


class _Merged(Collector):
    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


class NodeMetrics:
    """The metrics of every daemon whose socket is in ``directory``."""

    def __init__(self, directory: str, timeout: float = DAEMON_TIMEOUT) -> None:
        self.directory = directory
        self._timeout = timeout

    def _sockets(self) -> list[tuple[str, str]]:
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return []  # no daemon has served metrics on this node yet
        return [(name[: -len(SOCKET_SUFFIX)], os.path.join(self.directory, name))
                for name in names if name.endswith(SOCKET_SUFFIX)]

    async def _one(self, daemon: str, path: str) -> tuple[str, str | None, bool]:
        """(daemon, its text or None, stale)."""
        try:
            return daemon, await scrape_socket(path, self._timeout), False
        except (ConnectionRefusedError, FileNotFoundError):
            return daemon, None, True
        except (TimeoutError, OSError, ScrapeFailed) as exc:
            log.warning("metrics of daemon %s (%s): %s", daemon, path, exc or type(exc).__name__)
            return daemon, None, False

    async def exposition(self) -> bytes:
        """One exposition of every daemon's series, labelled, plus the node's own."""
        results = await asyncio.gather(*(self._one(daemon, path) for daemon, path in self._sockets()))
        families: dict[str, Metric] = {}
        up = GaugeMetricFamily("wasm_shim_daemon_up", "1 when the daemon's metrics were read at this scrape, 0 when "
                               "its socket accepted but the read failed", labels=[DAEMON_LABEL])
        answered = stale = 0
        for daemon, text, was_stale in results:
            if was_stale:
                stale += 1
                continue
            merged = text is not None and self._merge(families, daemon, text)
            up.add_metric([daemon], 1 if merged else 0)
            answered += 1 if merged else 0
        count = GaugeMetricFamily("wasm_shim_node_daemons", "Daemons on this node whose metrics were read")
        count.add_metric([], answered)
        stale_gauge = GaugeMetricFamily("wasm_shim_node_stale_sockets",
                                        "Sockets in the metrics directory nobody listens on (a daemon killed before "
                                        "it could remove its own)")
        stale_gauge.add_metric([], stale)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Merged([*families.values(), up, count, stale_gauge]))
        return generate_latest(registry)

    @staticmethod
    def _merge(families: dict[str, Metric], daemon: str, text: str) -> bool:
        try:
            parsed = list(text_string_to_metric_families(text))
        except ValueError as exc:
            log.warning("metrics of daemon %s do not parse: %s", daemon, exc)
            return False
        for family in parsed:
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            elif merged.type != family.type:
                log.warning("metrics of daemon %s: %s is a %s here and a %s elsewhere; skipped", daemon,
                            family.name, family.type, merged.type)
                continue
            for sample in family.samples:
                labels = {**sample.labels, DAEMON_LABEL: daemon}
                merged.samples.append(Sample(sample.name, labels, sample.value, sample.timestamp, sample.exemplar))
        return True


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` (``0.0.0.0:9464`` in the chart: the pod's network); ValueError naming it."""
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--listen {value!r}: expected HOST:PORT with a port in 1..65535 (e.g. 0.0.0.0:9464)")
    return host, int(port)


async def serve(directory: str, listen: str) -> None:
    """Serve the node's metrics on ``listen`` until cancelled (SIGTERM in the CLI)."""
    host, port = parse_listen(listen)
    node = NodeMetrics(directory)
    server = await serve_http(node.exposition, host=host, port=port)
    log.info("node metrics of %s on http://%s/metrics", directory, listen)
    async with server:
        await server.serve_forever()
