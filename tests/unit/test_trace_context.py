"""Tracing without containerd: when it is on, what a server span continues from the ttrpc metadata, how a failed
call shows, and the config keys. Spans are collected with the SDK's own in-memory exporter (the OTLP export to a
real collector is tests/integration/test_tracing.py)."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from wasm_shim.shim.config import ConfigError, ShimConfig
from wasm_shim.shim.daemon.tracing import NO_TRACING, _OtelTracing, tracing_from
from wasm_shim.shim.ttrpc.server import CallContext
from wasm_shim.shim.ttrpc.status import Code, RpcError

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def _tracing() -> tuple[_OtelTracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return _OtelTracing(provider), exporter


def _ctx(method: str, metadata: dict[str, list[str]]) -> CallContext:
    return CallContext(service="containerd.task.v3.Task", method=method, metadata=metadata, namespace="k8s.io",
                       timeout=None, deadline=None)


def test_off_unless_an_endpoint_is_named():
    assert tracing_from(ShimConfig(), {}) is NO_TRACING
    assert tracing_from(ShimConfig(), {"OTEL_SERVICE_NAME": "x"}) is NO_TRACING
    assert tracing_from(ShimConfig(), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
                                       "OTEL_SDK_DISABLED": "true"}) is NO_TRACING
    assert tracing_from(ShimConfig(), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
                                       "OTEL_TRACES_EXPORTER": "none"}) is NO_TRACING
    handlers = {("svc", "Create"): object()}
    assert NO_TRACING.traced(handlers) == handlers  # type: ignore[arg-type]


def test_off_imports_nothing_of_opentelemetry():
    code = ("import sys; from wasm_shim.shim.config import ShimConfig; import wasm_shim.shim.daemon.main; "
            "from wasm_shim.shim.daemon.tracing import tracing_from; tracing_from(ShimConfig(), {}); "
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


def test_a_protocol_it_cannot_speak_leaves_tracing_off_with_the_reason(caplog):
    with caplog.at_level(logging.ERROR):
        tracing = tracing_from(ShimConfig(), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
                                              "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
    assert tracing is NO_TRACING
    assert "OTLP protocol 'http/json' is not supported" in caplog.text


def test_on_with_the_option_or_the_environment():
    for config, env in ((ShimConfig(tracing_endpoint="http://127.0.0.1:1"), {}),
                        (ShimConfig(), {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:1"}),
                        (ShimConfig(tracing_protocol="grpc"), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"})):
        tracing = tracing_from(config, env)
        try:
            assert tracing.enabled
        finally:
            tracing.close()


@pytest.mark.parametrize("key, value, reason", [
    ("tracing_endpoint", "otel:4318", "must be an http:// or https:// URL"),
    ("tracing_protocol", "http/json", "must be one of http/protobuf, grpc"),
    ("metrics_dir", "run/metrics", "must be an absolute path"),
])
def test_bad_tracing_and_metrics_options_are_config_errors(key, value, reason):
    with pytest.raises(ConfigError, match=reason):
        ShimConfig().merged({key: value}, "test")


@pytest.mark.asyncio
@pytest.mark.parametrize("key", ["traceparent", "Traceparent"])
async def test_server_span_continues_containerds_trace(key):
    tracing, exporter = _tracing()

    async def create(payload: bytes, ctx: CallContext) -> bytes:
        tracing.tag("container.id", "c1")
        with tracing.span("wasm_shim.engine.prepare", {"wasm_shim.engine": "wasmtime"}):
            pass
        return b"ok"

    handlers = tracing.traced({("containerd.task.v3.Task", "Create"): create,
                               ("containerd.task.v3.Task", "State"): create})
    ctx = _ctx("Create", {key: [f"00-{TRACE_ID}-{PARENT_ID}-01"], "containerd-namespace-ttrpc": ["k8s.io"]})
    assert await handlers[("containerd.task.v3.Task", "Create")](b"", ctx) == b"ok"
    spans = {span.name: span for span in exporter.get_finished_spans()}
    server = spans["containerd.task.v3.Task/Create"]
    assert server.kind is SpanKind.SERVER
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert server.parent is not None and format(server.parent.span_id, "016x") == PARENT_ID
    assert dict(server.attributes or {}) == {"rpc.system": "ttrpc", "rpc.service": "containerd.task.v3.Task",
                                             "rpc.method": "Create", "containerd.namespace": "k8s.io",
                                             "container.id": "c1"}
    step = spans["wasm_shim.engine.prepare"]
    assert step.parent is not None and step.parent.span_id == server.context.span_id
    # Only Create, Start, Kill and Delete are traced: State is what clients poll.
    exporter.clear()
    await handlers[("containerd.task.v3.Task", "State")](b"", _ctx("State", {}))
    assert [span.name for span in exporter.get_finished_spans()] == ["wasm_shim.engine.prepare"]


@pytest.mark.asyncio
async def test_a_garbled_traceparent_starts_a_trace_and_a_failed_call_is_marked():
    tracing, exporter = _tracing()

    async def start(payload: bytes, ctx: CallContext) -> bytes:
        raise RpcError(Code.NOT_FOUND, "task 'x' not found")

    handler = tracing.traced({("containerd.task.v3.Task", "Start"): start})[("containerd.task.v3.Task", "Start")]
    with pytest.raises(RpcError):
        await handler(b"", _ctx("Start", {"traceparent": ["00-not-a-trace-context"]}))
    (span,) = exporter.get_finished_spans()
    assert span.parent is None
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "NOT_FOUND: task 'x' not found"
    assert (span.attributes or {})["rpc.ttrpc.status_code"] == Code.NOT_FOUND.value
