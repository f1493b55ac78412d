"""An OpenTelemetry Collector on loopback for one test, and the spans it received.

Owns: starting ``.tools/bin/otel-collector`` (lab/tools/otel-collector: the collector's OTLP receiver over gRPC and
HTTP, and its debug exporter) on free loopback ports, reading the spans the debug exporter writes into the
collector's log at ``verbosity: detailed``, and stopping it.

Invariants: it listens on 127.0.0.1 only and exports nowhere (the collector's own telemetry is off); ``stop()`` is
idempotent; ``spans()`` parses only complete batches (a batch is logged as one record).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .containerd import TOOLS_BIN, HarnessError
from .procs import stop_process

COLLECTOR = TOOLS_BIN / "otel-collector"

_CONFIG = """\
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{grpc}
      http:
        endpoint: 127.0.0.1:{http}
exporters:
  debug:
    verbosity: detailed
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [debug]
"""


@dataclass
class ReceivedSpan:
    """One span as the collector received it."""

    service: str  # the resource's service.name
    trace_id: str
    span_id: str
    parent_id: str  # "" for a root span
    name: str
    kind: str  # "Server", "Client", "Internal", ...
    status: str  # "Unset", "Ok", "Error"
    attributes: dict[str, str] = field(default_factory=dict)  # values as the debug exporter prints them: Str(x)


@dataclass
class Collector:
    process: subprocess.Popen[bytes]
    log_path: Path
    grpc_port: int
    http_port: int

    @property
    def http_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    def spans(self) -> list[ReceivedSpan]:
        return parse_debug_log(self.log_path.read_text(errors="replace"))

    def wait_for(self, predicate: Callable[[list[ReceivedSpan]], bool], timeout: float,
                 what: str) -> list[ReceivedSpan]:
        deadline = time.monotonic() + timeout
        while True:
            spans = self.spans()
            if predicate(spans):
                return spans
            if time.monotonic() > deadline:
                names = sorted({f"{s.service}:{s.name}" for s in spans})
                raise HarnessError(f"the collector did not receive {what} within {timeout:g} s; it has {names}")
            time.sleep(0.1)

    def stop(self) -> None:
        stop_process(self.process, timeout=10)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _value(text: str) -> str:
    match = re.fullmatch(r"\w+\((.*)\)", text.strip())
    return match.group(1) if match else text.strip()


def parse_debug_log(text: str) -> list[ReceivedSpan]:
    """The spans in the debug exporter's detailed output (ResourceSpans -> Resource attributes -> Span blocks,
    each followed by its Attributes, Events and Links)."""
    spans: list[ReceivedSpan] = []
    service = ""
    section = ""  # which "-> key: value" lines we are in: resource or span attributes, or another list
    current: ReceivedSpan | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if "ResourceSpans #" in line:
            service, current, section = "", None, ""
        elif stripped == "Resource attributes:":
            section = "resource"
        elif stripped.startswith("Span #"):
            current = ReceivedSpan(service, "", "", "", "", "", "")
            spans.append(current)
            section = ""
        elif stripped == "Attributes:":
            section = "span" if current is not None else ""
        elif stripped in ("Events:", "Links:") or stripped.startswith(("ScopeSpans", "InstrumentationScope")):
            section = "other"
        elif stripped.startswith("-> ") and ":" in stripped:
            key, _, value = stripped[3:].partition(": ")
            if section == "resource" and key == "service.name":
                service = _value(value)
            elif section == "span" and current is not None:
                current.attributes[key] = _value(value)
        elif current is not None and " : " in line:
            key, _, value = (part.strip() for part in line.partition(" : "))
            field_name = {"Trace ID": "trace_id", "Parent ID": "parent_id", "ID": "span_id", "Name": "name",
                          "Kind": "kind", "Status code": "status"}.get(key)
            if field_name:
                setattr(current, field_name, value)
    return spans


def start_collector(workdir: Path) -> Collector:
    if not os.access(COLLECTOR, os.X_OK):
        raise HarnessError(f"{COLLECTOR} is missing; run `make setup` (it builds lab/tools/otel-collector)")
    workdir.mkdir(parents=True, exist_ok=True)
    grpc, http = _free_port(), _free_port()
    config = workdir / "collector.yaml"
    config.write_text(_CONFIG.format(grpc=grpc, http=http))
    log_path = workdir / "collector.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([str(COLLECTOR), "--config", str(config)], stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    collector = Collector(process, log_path, grpc, http)
    deadline = time.monotonic() + 30
    while "Everything is ready" not in log_path.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            collector.stop()
            raise HarnessError(f"the collector did not start:\n{log_path.read_text(errors='replace')[-3000:]}")
        time.sleep(0.05)
    return collector


@contextmanager
def running_collector(workdir: Path) -> Iterator[Collector]:
    collector = start_collector(workdir)
    try:
        yield collector
    finally:
        collector.stop()
