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
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from lab.containerd import ContainerdFactory
from lab.cri_tools import HANDLER, CriNode, start_cri_node
from lab.fixtures import BUSYBOX_REF
from lab.otel import Collector, ReceivedSpan, running_collector
from lab.registries import DockerRegistry
from lab.shimtools import RUNTIME
from wasm_shim.oci.auth import DockerCredentials
from wasm_shim.oci.cosign import sign_image
from wasm_shim.oci.reference import parse_reference
from wasm_shim.oci.registry import RegistryClient
from wasm_shim.oci.transfer import push_wasm

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


def _parent(spans: list[ReceivedSpan], call: ReceivedSpan | None) -> ReceivedSpan | None:
    if call is None:
        return None
    return next((s for s in spans if (s.trace_id, s.span_id) == (call.trace_id, call.parent_id)), None)


@pytest.mark.parametrize("containerd_factory", ["2.x"], indirect=True)
def test_wasm_pod_start_is_traced_under_containerds_spans(containerd_factory: ContainerdFactory, guests: Path,
                                                          tmp_path: Path, collector: Collector) -> None:
    node = _traced_node(containerd_factory, "2.x", guests, tmp_path,
                        {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.http_endpoint})
    try:
        cid = _run_wasm_pod(node, guests)
        # containerd and the shim export in batches of their own: wait for both sides of both calls.
        spans = collector.wait_for(lambda s: all(_parent(s, _shim_call(s, m, cid)) is not None
                                                 for m in ("Create", "Start")), 30,
                                   f"the shim's Create and Start spans of container {cid} and containerd's parents")
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


@pytest.mark.parametrize("containerd_factory", ["1.6"], indirect=True)
def test_policy_check_and_registry_pull_are_steps_of_create(containerd_factory: ContainerdFactory, guests: Path,
                                                            tmp_path: Path, collector: Collector,
                                                            busybox_image_tar: Path) -> None:
    """The annotation path (containerd 1.6: the shim pulls the artifact itself) under an enforcing policy: the
    resolve, the signature check and the layer pull are children of the shim's Create span; a refused image's
    check span is marked failed."""
    registry = DockerRegistry(tmp_path / "registry").start()
    client = RegistryClient(DockerCredentials({}), attempts=1)
    try:
        team = ec.generate_private_key(ec.SECP256R1())
        (tmp_path / "team.pub").write_bytes(team.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        (tmp_path / "policy.toml").write_text(f'default = "allow"\n[[rule]]\nimages = ["{registry.address}/team/*"]\n'
                                              'keys = ["team.pub"]\nmode = "enforce"\n')
        cache = tmp_path / "shim-cache"
        cache.mkdir(mode=0o700)
        containerd = containerd_factory(env={
            "WASM_SHIM_POLICY": str(tmp_path / "policy.toml"), "WASM_SHIM_CACHE_DIR": str(cache),
            "WASM_SHIM_ARTIFACT_DIR": str(tmp_path / "artifacts"),
            "WASM_SHIM_ARTIFACT_REGISTRIES": f"{registry.address}/team",
            "WASM_SHIM_TRACING_ENDPOINT": collector.http_endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"})
        containerd.import_image(busybox_image_tar)
        signed = parse_reference(f"{registry.address}/team/artifact:v1")
        signed = signed.with_digest(push_wasm(client, str(guests / "hello.wasm"), signed))
        sign_image(client, signed, team)
        unsigned = parse_reference(f"{registry.address}/team/unsigned:v1")
        unsigned = unsigned.with_digest(push_wasm(client, str(guests / "hello.wasm"), unsigned,
                                                  annotations={"x": "unsigned"}))
        out = containerd.ctr("run", "--rm", "--runtime", RUNTIME, "--annotation",
                             f"wasm.shim.io/artifact={signed.name}:v1", BUSYBOX_REF, "signed-1", "/app.wasm",
                             timeout=120)
        assert out.stdout.strip() == "hello from wasm"
        refused = containerd.ctr("run", "--rm", "--runtime", RUNTIME, "--annotation",
                                 f"wasm.shim.io/artifact={unsigned.name}:v1", BUSYBOX_REF, "unsigned-1",
                                 "/app.wasm", check=False, timeout=120)
        assert refused.returncode != 0
        spans = collector.wait_for(lambda s: _shim_call(s, "Create", "unsigned-1") is not None, 30,
                                   "the shim's Create span of the refused container")
    finally:
        client.close()
        registry.stop()

    def steps(container_id: str) -> dict[str, ReceivedSpan]:
        create = _shim_call(spans, "Create", container_id)
        assert create is not None
        entrypoint = next(s for s in spans if s.name == "wasm_shim.entrypoint" and s.parent_id == create.span_id)
        return {s.name: s for s in spans if s.parent_id == entrypoint.span_id} | {"create": create}

    signed_steps = steps("signed-1")
    assert signed_steps["wasm_shim.registry.resolve"].attributes["oci.digest"] == signed.digest
    check = signed_steps["wasm_shim.policy.check"]
    assert check.attributes["oci.digest"] == signed.digest
    assert check.attributes["wasm_shim.policy.verdict"] == "allow"
    pull = signed_steps["wasm_shim.registry.pull"]
    assert pull.attributes["wasm_shim.cache_hit"] == "false"
    assert pull.attributes["oci.size"] == str((guests / "hello.wasm").stat().st_size)

    refused_steps = steps("unsigned-1")
    assert refused_steps["wasm_shim.policy.check"].status == "Error"
    assert "wasm_shim.registry.pull" not in refused_steps  # refused before anything was placed
    assert refused_steps["create"].status == "Error"
