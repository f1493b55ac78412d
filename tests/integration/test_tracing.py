"""Traces of the shim's task calls, received by a real OpenTelemetry Collector on loopback (lab/otel.py).

A wasm pod started through containerd 2.4's CRI, with containerd and (through its environment) the shim exporting
over OTLP to the collector: the shim's Create and Start spans, their steps, and their parents (containerd's own
client spans, whose context containerd sends in the ttrpc metadata). Containerd 1.7 sends none: its shim calls
start traces of their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.containerd import ContainerdFactory
from lab.cri_tools import HANDLER, CriNode, start_cri_node
from lab.otel import Collector, ReceivedSpan, running_collector

pytestmark = pytest.mark.integration

SHIM = "wasm-shim"


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    with running_collector(tmp_path / "otel") as running:
        yield running


def _traced_node(containerd_factory: ContainerdFactory, kind: str, guests: Path, tmp_path: Path,
                 env: dict[str, str]) -> CriNode:
    # A short batch delay (the SDKs' standard OTEL_BSP_SCHEDULE_DELAY, Go's and Python's) so spans arrive quickly.
    return start_cri_node(containerd_factory, kind, guests / "pause", tmp_path / "cri",  # type: ignore[arg-type]
                          env={"OTEL_BSP_SCHEDULE_DELAY": "100", **env})


def _run_wasm_pod(node: CriNode, guests: Path) -> str:
    hello = node.wasm_image("hello", guests / "hello.wasm")
    pod = node.pod_config("traced")
    pod_id = node.crictl.runp(pod, runtime=HANDLER)
    cid = node.crictl.create(pod_id, node.container_config("hello", hello), pod)
    node.crictl.run("start", cid)
    node.crictl.wait_state(cid, "CONTAINER_EXITED")
    assert node.crictl.logs(cid).stdout.strip() == "hello from wasm"
    return cid


def _shim_call(spans: list[ReceivedSpan], method: str, container_id: str) -> ReceivedSpan | None:
    for span in spans:
        # containerd 2.x calls the v3 task API, 1.6 and 1.7 the v2 one (wire-identical).
        names = (f"containerd.task.v3.Task/{method}", f"containerd.task.v2.Task/{method}")
        if span.service == SHIM and span.name in names and span.attributes.get("container.id") == container_id:
            return span
    return None


@pytest.mark.parametrize("containerd_factory", ["2.x"], indirect=True)
def test_wasm_pod_start_is_traced_under_containerds_spans(containerd_factory: ContainerdFactory, guests: Path,
                                                          tmp_path: Path, collector: Collector) -> None:
    node = _traced_node(containerd_factory, "2.x", guests, tmp_path,
                        {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.http_endpoint})
    try:
        cid = _run_wasm_pod(node, guests)
        spans = collector.wait_for(lambda s: _shim_call(s, "Start", cid) is not None, 30,
                                   f"the shim's Start span of container {cid}")
    finally:
        node.teardown()

    by_id = {(span.trace_id, span.span_id): span for span in spans}
    for method in ("Create", "Start"):
        call = _shim_call(spans, method, cid)
        assert call is not None, f"no {method} span of {cid} from the shim"
        assert call.kind == "Server"
        assert call.attributes["rpc.system"] == "ttrpc"
        assert call.attributes["containerd.namespace"] == "k8s.io"
        # Parented to containerd's client span of the same call: the trace context came through ttrpc metadata.
        parent = by_id.get((call.trace_id, call.parent_id))
        assert parent is not None, f"the shim's {method} span has no parent among containerd's spans: {call}"
        assert parent.service == "containerd"
        assert parent.kind == "Client"
        assert parent.name == f"containerd.task.v3.Task/{method}"

    create = _shim_call(spans, "Create", cid)
    assert create is not None
    steps = {span.name for span in spans if span.trace_id == create.trace_id and span.parent_id == create.span_id}
    assert {"wasm_shim.entrypoint", "wasm_shim.engine.prepare"} <= steps
    prepare = next(s for s in spans if s.name == "wasm_shim.engine.prepare" and s.parent_id == create.span_id)
    assert prepare.attributes["wasm_shim.engine"] == "wasmtime"


@pytest.mark.parametrize("containerd_factory", ["1.7"], indirect=True)
def test_containerd_17_sends_no_trace_context(containerd_factory: ContainerdFactory, guests: Path,
                                              tmp_path: Path, collector: Collector) -> None:
    """containerd 1.7 traces its own calls (CRI, content, snapshots) but calls shims without a trace context (its
    runtime/v2 ttrpc client has no otelttrpc interceptor): the shim's spans, exported over OTLP/gRPC this time,
    each start a trace of their own, and their steps are still their children."""
    node = _traced_node(containerd_factory, "1.7", guests, tmp_path,
                        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": collector.grpc_endpoint,
                         "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"})
    try:
        cid = _run_wasm_pod(node, guests)
        spans = collector.wait_for(lambda s: _shim_call(s, "Start", cid) is not None, 30,
                                   f"the shim's Start span of container {cid}")
    finally:
        node.teardown()
    assert any(span.service == "containerd" for span in spans)
    for method in ("Create", "Start"):
        call = _shim_call(spans, method, cid)
        assert call is not None and call.parent_id == "", call
    create = _shim_call(spans, "Create", cid)
    assert create is not None
    assert any(s.name == "wasm_shim.engine.prepare" and s.parent_id == create.span_id for s in spans)
