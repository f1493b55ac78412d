"""Traces of the daemon's task calls (OpenTelemetry, exported over OTLP): off unless configured.

Owns: whether this daemon traces (``tracing_from``), the tracer provider and its exporter, the server span of each
traced task call (Create, Start, Kill, Delete: ``Tracing.traced`` wraps their handlers), and ``Tracer.span`` for
the steps inside them that other modules open (the policy check, registry pulls, the engine's prepare).

Configured by, in this order (the first that names an endpoint wins):
- the shim options ``tracing_endpoint`` and ``tracing_protocol`` (shim/config.py);
- the standard OpenTelemetry variables in the daemon's environment, which it inherits from containerd through
  the shim binary: ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``, with
  ``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`` (``http/protobuf``, the default, as containerd's own, or ``grpc``) and
  whatever else the SDK reads itself (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``,
  ``OTEL_BSP_*``, the exporter's headers, certificates and timeout). ``OTEL_SDK_DISABLED=true`` turns it off.

The parent of a server span is containerd's own span for the call when containerd sends one: its otelttrpc client
interceptor injects the W3C Trace Context (``traceparent``, ``tracestate``) into the ttrpc request metadata, keys
lower-cased (docs/protocol.md "Trace context"). Without it the span starts a trace of its own.

Invariants:
- Off (the default), nothing of OpenTelemetry is imported and ``NO_TRACING`` hands out one shared no-op span: a
  traced call costs an attribute lookup. The lean start/delete path never imports this module.
- Tracing never fails a call: a bad ``traceparent`` starts a new trace, an unreachable collector drops spans in the
  SDK's export thread, a configuration the SDK cannot use is logged once and the daemon runs untraced.
- Spans leave in batches from the SDK's own thread; ``close`` flushes what is left within a bounded time.
- Steps that run on a worker thread see the call's span as their parent only when the caller copied its context
  (``contextvars.copy_context().run``): the task service does for Create's blocking part.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ..config import TRACING_PROTOCOLS

if TYPE_CHECKING:
    from ..config import ShimConfig
    from ..ttrpc.server import CallContext, Handler

log = logging.getLogger(__name__)

#: The task calls that get a server span: the ones that change a task (Wait blocks for the guest's life, and the
#: rest are reads a client polls).
TRACED_METHODS = ("Create", "Start", "Kill", "Delete")
SERVICE_NAME = "wasm-shim"
CONTAINERD_SERVICE_NAME = "containerd"
#: W3C Trace Context (https://www.w3.org/TR/trace-context/ section 3): the headers containerd's otelttrpc puts
#: into ttrpc metadata.
TRACE_CONTEXT_KEYS = ("traceparent", "tracestate")
_FLUSH_MILLIS = 5000


class Tracer:
    """Opens spans. This base class is the no-op one (tracing off); ``_OtelTracer`` is the real one."""

    enabled = False

    @contextlib.contextmanager
    def span(self, name: str, attributes: Mapping[str, str | int | bool] | None = None) -> Iterator[Span]:
        """A span named ``name`` under the current one for the ``with`` block; an exception leaving the block is
        recorded on it and marks it failed (then propagates)."""
        yield _NO_SPAN

    def tag(self, key: str, value: str | int | bool) -> None:
        """Set an attribute on the current span (the task call's, or a step's), e.g. the container id once a
        handler has decoded it."""


class Span:
    """What a ``with tracer.span(...)`` block may add to its span (no-op here)."""

    def set(self, key: str, value: str | int | bool) -> None:
        """Set an attribute, e.g. the verdict a step reached."""


_NO_SPAN = Span()


class Tracing(Tracer):
    """The daemon's tracing: a tracer for the steps, server spans for the task calls, and shutdown."""

    def traced(self, handlers: Mapping[tuple[str, str], Handler]) -> dict[tuple[str, str], Handler]:
        """The handler table with a server span around each of ``TRACED_METHODS`` (unchanged when off)."""
        return dict(handlers)

    def close(self) -> None:
        """Flush the spans still queued and stop the exporter (bounded)."""


NO_TRACING = Tracing()


class _OtelSpan(Span):
    def __init__(self, span: Any) -> None:
        self._span = span

    def set(self, key: str, value: str | int | bool) -> None:
        self._span.set_attribute(key, value)


class _OtelTracing(Tracing):
    """Tracing through the OpenTelemetry SDK: one TracerProvider (never the process-global one), a batch span
    processor and the OTLP exporter of the configured protocol."""

    enabled = True

    def __init__(self, provider: Any) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._provider = provider
        self._tracer = provider.get_tracer("wasm_shim.shim.daemon")
        self._trace = trace
        self._context = context
        self._propagator = TraceContextTextMapPropagator()

    @contextlib.contextmanager
    def span(self, name: str, attributes: Mapping[str, str | int | bool] | None = None) -> Iterator[Span]:
        with self._tracer.start_as_current_span(name, attributes=dict(attributes or {})) as span:
            yield _OtelSpan(span)

    def tag(self, key: str, value: str | int | bool) -> None:
        self._trace.get_current_span().set_attribute(key, value)

    def traced(self, handlers: Mapping[tuple[str, str], Handler]) -> dict[tuple[str, str], Handler]:
        return {key: self._server_span(handler) if key[1] in TRACED_METHODS else handler
                for key, handler in handlers.items()}

    def parent(self, metadata: Mapping[str, list[str]]) -> Any:
        """The OpenTelemetry context continuing containerd's trace from the ttrpc metadata (keys compared without
        case: ttrpc's MD lower-cases them on Set and Get)."""
        carrier = {key.lower(): values[0] for key, values in metadata.items()
                   if values and key.lower() in TRACE_CONTEXT_KEYS}
        return self._propagator.extract(carrier) if carrier else None

    def _server_span(self, handler: Handler) -> Handler:
        from opentelemetry.trace import SpanKind, Status, StatusCode

        from ..ttrpc.status import RpcError

        async def call(payload: bytes, ctx: CallContext) -> bytes:
            # The span's name and rpc.* attributes as containerd's otelttrpc names its own spans (service/method).
            attributes: dict[str, str] = {"rpc.system": "ttrpc", "rpc.service": ctx.service, "rpc.method": ctx.method}
            if ctx.namespace:
                attributes["containerd.namespace"] = ctx.namespace
            with self._tracer.start_as_current_span(f"{ctx.service}/{ctx.method}", context=self.parent(ctx.metadata),
                                                    kind=SpanKind.SERVER, attributes=attributes,
                                                    record_exception=False, set_status_on_exception=False) as span:
                try:
                    return await handler(payload, ctx)
                except RpcError as exc:
                    span.set_attribute("rpc.ttrpc.status_code", exc.code.value)
                    span.set_status(Status(StatusCode.ERROR, f"{exc.code.name}: {exc.message}"))
                    raise
                except Exception as exc:
                    span.record_exception(exc)
                    span.set_status(Status(StatusCode.ERROR, str(exc)))
                    raise

        return call

    def close(self) -> None:
        try:
            self._provider.force_flush(_FLUSH_MILLIS)
            self._provider.shutdown()
        except Exception as exc:  # a collector that went away: the spans are lost, the daemon still exits
            log.warning("tracing: flushing spans at exit failed: %s", exc)


def _truthy(value: str) -> bool:
    return value.strip().lower() == "true"


def tracing_from(config: ShimConfig, environ: Mapping[str, str] | None = None) -> Tracing:
    """The daemon's tracing per the module docstring: ``NO_TRACING`` when nothing names an endpoint (or
    ``OTEL_SDK_DISABLED=true``), else a tracer exporting over OTLP. A setting the SDK cannot use is logged and
    costs tracing only."""
    env = os.environ if environ is None else environ
    if _truthy(env.get("OTEL_SDK_DISABLED", "")):
        return NO_TRACING
    endpoint = config.tracing_endpoint
    from_env = not endpoint
    if from_env and not (env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")):
        return NO_TRACING
    exporter_kind = env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if exporter_kind == "none":
        return NO_TRACING
    protocol = (config.tracing_protocol or env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").strip()
    if exporter_kind != "otlp":
        log.error("tracing off: OTEL_TRACES_EXPORTER=%s is not supported (only otlp)", exporter_kind)
        return NO_TRACING
    if protocol not in TRACING_PROTOCOLS:
        log.error("tracing off: OTLP protocol %r is not supported (%s)", protocol, ", ".join(TRACING_PROTOCOLS))
        return NO_TRACING
    try:
        provider = _provider(protocol, None if from_env else endpoint, env)
    except Exception as exc:  # the SDK's own checks of its variables (a bad sampler, header or certificate)
        log.error("tracing off: the OpenTelemetry SDK cannot be set up: %s", exc)
        return NO_TRACING
    log.info("tracing: OTLP %s to %s", protocol, endpoint or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
             or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
    return _OtelTracing(provider)


def _provider(protocol: str, endpoint: str | None, env: Mapping[str, str]) -> Any:
    """A TracerProvider with a batch processor and the OTLP exporter; ``endpoint`` None: the exporter reads its
    endpoint from the environment (OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT) as the specification says."""
    from opentelemetry.sdk.resources import SERVICE_NAME as SERVICE_NAME_KEY
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporter: Any
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        exporter = GrpcExporter(endpoint=endpoint, insecure=True if endpoint and endpoint.startswith("http://")
                                else None)
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        # The option is the base URL, like OTEL_EXPORTER_OTLP_ENDPOINT; the signal's path is appended as the
        # specification says for that variable (OTLP exporter configuration, "Endpoint URLs for OTLP/HTTP").
        exporter = HttpExporter(endpoint=endpoint.rstrip("/") + "/v1/traces" if endpoint else None)
    # An operator's OTEL_SERVICE_NAME wins over ours, except "containerd": containerd 2.x writes that into its own
    # environment when it is unset (pkg/tracing/plugin/otlp.go, newTracer), and every shim inherits it. Attributes
    # given here win over OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME (Resource.create merges them last).
    named = env.get("OTEL_SERVICE_NAME", "")
    resource = Resource.create({} if named and named != CONTAINERD_SERVICE_NAME else {SERVICE_NAME_KEY: SERVICE_NAME})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider
