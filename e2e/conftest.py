"""The e2e suite's fixtures: one two-node cluster (e2e/cluster/) for the whole session, and the shim on node-a.

Every test here is marked ``e2e``. The session fixture ``cluster`` builds what is missing first (Kubernetes and
etcd through e2e/cluster/build, cached in ~/.cache/wasm-shim; the node images from lab/guests), starts the
cluster in a state directory of its own (so a cluster a person started with e2e/cluster/up is left alone), and at
the end asserts that ``down`` left nothing behind.

``shim_on_node_a`` (module scope, so each module that asks for it installs it and undoes it again) puts the shim on
node-a by hand, the way an operator without the chart would; it checks on the way out that node-a's containerd
config is byte-identical to before.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from lab.cluster import cluster as cl
from lab.cluster import images
from lab.cluster.topology import NODE_SUPPORT_DIR

BUILD_TIMEOUT = 3600  # seconds: a cold Kubernetes build is ~25 CPU-minutes, longer on a shared machine
ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "default"  # where the tests put their objects
SHIM_NODE = "node-a"  # the node the shim is put on by hand (containerd 2.x)
CONTAINERD_CONFIG = "/etc/containerd/config.toml"
SHIM_LINK = "/usr/local/bin/containerd-shim-wasmtime-v1"

pytest_plugins = ["lab.guests.fixtures"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.e2e)


@dataclass
class Cluster:
    state: cl.State
    kubeconfig: Path
    api: object  # kubernetes.client.ApiClient

    def kubectl(self, *args: str, timeout: float = 120, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """The real kubectl (built by e2e/cluster/build) against this cluster."""
        return subprocess.run([cl.tool("kubectl"), "--kubeconfig", str(self.kubeconfig), *args], capture_output=True,
                              text=True, timeout=timeout, input=input)

    def node_exec(self, node: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return cl.node_exec(self.state, cl.node_by_name(node), argv)

    def node_ok(self, node: str, *argv: str) -> str:
        """``node_exec`` that must succeed; returns its stdout."""
        result = self.node_exec(node, *argv)
        assert result.returncode == 0, f"{' '.join(argv)} on {node}: {result.stderr}"
        return result.stdout

    def oras_push(self, wasm: Path, config: bytes, repository_tag: str) -> str:
        """Push ``wasm`` with the real ``oras push --config`` (that exact config blob) from inside node-a."""
        try:
            return cl.oras_push_artifact(self.state, wasm, config, repository_tag)
        except cl.ClusterError as exc:
            pytest.fail(str(exc))

    def push_artifact(self, wasm: Path, repository_tag: str) -> str:
        """Push ``wasm`` into the cluster's registry (from inside node-a); returns ``REGISTRY/REPO@sha256:...``."""
        try:
            return cl.push_artifact(self.state, wasm, repository_tag)
        except cl.ClusterError as exc:
            pytest.fail(str(exc))


def unique(prefix: str) -> str:
    """A fresh object name: tests never reuse a name, so a slow deletion from an earlier test cannot collide."""
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def wait_until(what: str, check: Callable[[], object], timeout: float = 90, interval: float = 0.5) -> object:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` (bounded in count and time)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"{what}: not reached within {timeout:.0f} s (last: {last!r})")


@pytest.fixture(scope="session")
def cluster(guests: Path) -> Iterator[Cluster]:
    if os.geteuid() != 0:
        pytest.skip("the e2e cluster needs root (namespaces, mounts, cgroups)")
    result = subprocess.run([str(ROOT / "e2e" / "cluster" / "build")], capture_output=True, text=True,
                            timeout=BUILD_TIMEOUT)
    if result.returncode != 0:
        pytest.fail(f"e2e/cluster/build failed:\n{result.stdout}{result.stderr}")
    from kubernetes import config

    reuse = os.environ.get("WASM_SHIM_E2E_CLUSTER")
    if reuse:
        # For iterating on a test: a cluster a person started with e2e/cluster/up (its state directory), used as it
        # is and left running. Its images are those `up` imported.
        state = cl.State(Path(reuse))
        kubeconfig = state.root / "kubeconfig"
        if not kubeconfig.exists():
            pytest.fail(f"WASM_SHIM_E2E_CLUSTER={reuse}: no kubeconfig there (is the cluster up?)")
        api = config.new_client_from_config(config_file=str(kubeconfig))
        try:
            yield Cluster(state=state, kubeconfig=kubeconfig, api=api)
        finally:
            api.close()
        return
    work = Path(tempfile.mkdtemp(prefix="wasm-shim-e2e-"))
    tars = images.build(work / "images", guests)
    state = cl.State(work / "cluster")
    try:
        kubeconfig = cl.up(state, images=tars)
    except cl.ClusterError as exc:
        pytest.fail(f"the e2e cluster did not come up: {exc}")
    api = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        yield Cluster(state=state, kubeconfig=kubeconfig, api=api)
    finally:
        api.close()
        problems = cl.down(state)
        for tar in tars:
            tar.unlink(missing_ok=True)
        (work / "images").rmdir()
        work.rmdir()
        assert not problems, f"e2e/cluster down left things behind: {problems}"


def runtimeclass() -> dict:
    return yaml.safe_load((ROOT / "k8s" / "runtimeclass.yaml").read_text())


@pytest.fixture(scope="module")
def shim_on_node_a(cluster: Cluster) -> Iterator[str]:
    """node-a runs the shim; yields the RuntimeClass name. Undone (and checked) at the end of the module.

    Exactly what an operator without the chart does: link the shim binary into /usr/local/bin, merge our runtime
    table into containerd's config with `wasm-shim containerd-config --merge` (both inside the node's overlays),
    restart containerd through the node's supervisor, apply k8s/runtimeclass.yaml and give node-a the label its
    nodeSelector asks for.
    """
    core = client.CoreV1Api(cluster.api)
    node_api = client.NodeV1Api(cluster.api)
    rc = runtimeclass()
    labels = rc["scheduling"]["nodeSelector"]
    node, config = SHIM_NODE, CONTAINERD_CONFIG
    original = cluster.node_ok(node, "cat", config)
    cluster.node_ok(node, "ln", "-sfn", str(ROOT / ".venv" / "bin" / "containerd-shim-wasmtime-v1"), SHIM_LINK)
    cluster.node_ok(node, str(ROOT / ".venv" / "bin" / "wasm-shim"), "containerd-config", "--merge", config)
    cluster.node_ok(node, f"{NODE_SUPPORT_DIR}/restart-containerd")
    node_api.create_runtime_class(rc)
    core.patch_node(node, {"metadata": {"labels": labels}})
    try:
        yield rc["metadata"]["name"]
    finally:
        core.patch_node(node, {"metadata": {"labels": {k: None for k in labels}}})
        node_api.delete_runtime_class(rc["metadata"]["name"])
        backups = cluster.node_ok(node, "sh", "-c", f"ls {config}.* 2>/dev/null || true").split()
        cluster.node_ok(node, "sh", "-c", f"printf '%s' \"$1\" > {config}", "sh", original)
        for backup in backups:
            cluster.node_ok(node, "rm", "-f", backup)
        cluster.node_ok(node, "rm", "-f", SHIM_LINK)
        cluster.node_ok(node, f"{NODE_SUPPORT_DIR}/restart-containerd")
        assert cluster.node_ok(node, "cat", config) == original


@pytest.fixture
def core(cluster: Cluster) -> client.CoreV1Api:
    return client.CoreV1Api(cluster.api)


@pytest.fixture
def pods(core: client.CoreV1Api) -> Iterator[Callable[[client.V1Pod], str]]:
    """Create pods in NAMESPACE through this fixture; they are deleted (and waited for) at the end of the test."""
    created: list[str] = []

    def create(pod: client.V1Pod) -> str:
        core.create_namespaced_pod(NAMESPACE, pod)
        created.append(pod.metadata.name)
        return pod.metadata.name

    yield create
    for name in created:
        core.delete_namespaced_pod(name, NAMESPACE, grace_period_seconds=0)
    for name in created:
        wait_until(f"pod {name} deleted", lambda n=name: n not in {
            p.metadata.name for p in core.list_namespaced_pod(NAMESPACE).items}, timeout=60)
