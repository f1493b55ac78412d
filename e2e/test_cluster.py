"""The cluster itself, before anything of ours is installed: nodes, native pods, the pod network, the API.

What a chart install relies on: both kubelets Ready on their own containerd (2.x and 1.6), pods running on each
node, pods on different nodes reaching each other and Services (kube-proxy), the API server validating our
manifests, and a node's containerd restartable through its supervisor the way the installer restarts it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from e2e.conftest import NAMESPACE, Cluster, unique, wait_until
from lab.cluster import cluster as cl
from lab.cluster import images
from lab.cluster.topology import NODE_SUPPORT_DIR

ROOT = Path(__file__).resolve().parents[1]


def busybox_pod(name: str, node: str, script: str, *, restart: str = "Always", labels: dict | None = None
                ) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels or {}),
        spec=client.V1PodSpec(
            node_selector={"kubernetes.io/hostname": node},
            restart_policy=restart,
            termination_grace_period_seconds=1,
            containers=[client.V1Container(name="main", image=images.BUSYBOX, image_pull_policy="Never",
                                           command=["sh", "-c", script])],
        ),
    )


def pod_phase(core: client.CoreV1Api, name: str) -> str:
    return core.read_namespaced_pod(name, NAMESPACE).status.phase


def test_both_nodes_ready_each_on_its_own_containerd(core: client.CoreV1Api) -> None:
    # The kubelet reports "containerd://Unknown" when its status sync ran while containerd was restarting (the chart
    # tests before this module restart node-a's); its next sync (every 10 s) has the version again.
    def known() -> dict[str, client.V1Node] | None:
        found = {n.metadata.name: n for n in core.list_node().items}
        versions = [n.status.node_info.container_runtime_version for n in found.values()]
        return None if any(v.endswith("://Unknown") for v in versions) else found
    nodes = wait_until("both kubelets report their containerd's version", known, timeout=60)
    assert set(nodes) == {"node-a", "node-b"}
    for node in nodes.values():
        ready = next(c for c in node.status.conditions if c.type == "Ready")
        assert ready.status == "True", f"{node.metadata.name}: {ready.reason} {ready.message}"
        assert node.status.node_info.kubelet_version == "v1.37.2"
    assert nodes["node-a"].status.node_info.container_runtime_version.startswith("containerd://2.")
    assert nodes["node-b"].status.node_info.container_runtime_version.startswith("containerd://1.6")
    addresses = {n: {a.address for a in node.status.addresses if a.type == "InternalIP"} for n, node in nodes.items()}
    assert addresses == {"node-a": {"10.255.0.11"}, "node-b": {"10.255.0.12"}}


@pytest.mark.parametrize("node", ["node-a", "node-b"])
def test_native_busybox_pod_runs_and_logs(core: client.CoreV1Api, pods, node: str) -> None:
    name = pods(busybox_pod(unique("busybox"), node, "echo hello from busybox on $(hostname); sleep 3600"))
    wait_until(f"pod {name} Running", lambda: pod_phase(core, name) == "Running")
    pod = core.read_namespaced_pod(name, NAMESPACE)
    assert pod.spec.node_name == node
    assert pod.status.pod_ip.startswith("10.244.1." if node == "node-a" else "10.244.2.")
    # The log travels kubelet -> API server -> client: the API server reaches the kubelet by its InternalIP.
    logs = wait_until("the pod's log line", lambda: core.read_namespaced_pod_log(name, NAMESPACE))
    assert f"hello from busybox on {name}" in str(logs)


def test_pods_on_different_nodes_reach_each_other_and_a_service(core: client.CoreV1Api, pods) -> None:
    server = pods(busybox_pod(unique("server"), "node-a",
                              "while true; do echo pong from node-a | nc -l -p 8080; done",
                              labels={"app": "e2e-pong"}))
    wait_until("server Running", lambda: pod_phase(core, server) == "Running")
    server_ip = core.read_namespaced_pod(server, NAMESPACE).status.pod_ip
    service = unique("pong")
    core.create_namespaced_service(NAMESPACE, client.V1Service(
        metadata=client.V1ObjectMeta(name=service),
        spec=client.V1ServiceSpec(selector={"app": "e2e-pong"},
                                  ports=[client.V1ServicePort(port=80, target_port=8080)])))
    try:
        cluster_ip = core.read_namespaced_service(service, NAMESPACE).spec.cluster_ip
        for target, port in ((server_ip, 8080), (cluster_ip, 80)):
            # The client retries a few times: kube-proxy programs a new Service within a second or two.
            script = (f"for i in 1 2 3 4 5 6 7 8 9 10; do out=$(nc -w 3 {target} {port} </dev/null); "
                      f'[ -n "$out" ] && {{ echo "got: $out"; exit 0; }}; sleep 1; done; exit 1')
            name = pods(busybox_pod(unique("client"), "node-b", script, restart="Never"))
            wait_until(f"client of {target}:{port} finished",
                       lambda n=name: pod_phase(core, n) in ("Succeeded", "Failed"), timeout=120)
            log = core.read_namespaced_pod_log(name, NAMESPACE)
            assert pod_phase(core, name) == "Succeeded", f"node-b could not reach {target}:{port}: {log!r}"
            assert "got: pong from node-a" in log
    finally:
        core.delete_namespaced_service(service, NAMESPACE)


def manifests() -> list[Path]:
    return sorted((ROOT / "k8s").rglob("*.yaml"))


@pytest.fixture(scope="module")
def runtimeclass(cluster: Cluster) -> Iterator[None]:
    """k8s/runtimeclass.yaml applied for real: the RuntimeClass admission plugin rejects a Pod naming a missing one."""
    result = cluster.kubectl("apply", "-f", str(ROOT / "k8s" / "runtimeclass.yaml"))
    assert result.returncode == 0, result.stderr
    yield
    result = cluster.kubectl("delete", "-f", str(ROOT / "k8s" / "runtimeclass.yaml"))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("manifest", manifests(), ids=lambda p: str(p.relative_to(ROOT)))
def test_k8s_manifests_pass_server_side_dry_run(cluster: Cluster, runtimeclass: None, manifest: Path) -> None:
    result = cluster.kubectl("apply", "--dry-run=server", "-f", str(manifest))
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(not (ROOT / "charts" / "wasm-shim").is_dir(), reason="no chart in this tree")
@pytest.mark.parametrize("values", [[], ["--set", "runtimeClass.overhead.memory=8Mi",
                                         "--set", "priorityClassName=system-node-critical"]],
                         ids=["defaults", "overhead"])
def test_chart_objects_pass_server_side_dry_run(cluster: Cluster, runtimeclass: None, values: list[str]) -> None:
    # Every object the chart renders, hooks and helm-test pods included, validated by this API server.
    rendered = subprocess.run([cl.tool("helm"), "template", "wasm-shim", str(ROOT / "charts" / "wasm-shim"),
                               "-n", "default", "--kube-version", "v1.37.2", *values], capture_output=True, text=True,
                              timeout=120)
    assert rendered.returncode == 0, rendered.stderr
    objects = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    assert "DaemonSet" in {doc["kind"] for doc in objects}
    # A dry run creates nothing, so pods naming the chart's ServiceAccounts would be refused for their absence
    # alone: those are created for real first (and removed after); the RuntimeClass comes from the fixture.
    prerequisites = yaml.safe_dump_all([d for d in objects if d["kind"] == "ServiceAccount"])
    created = cluster.kubectl("apply", "-n", "default", "-f", "-", input=prerequisites)
    assert created.returncode == 0, created.stderr
    try:
        result = cluster.kubectl("apply", "--dry-run=server", "-n", "default", "-f", "-", input=rendered.stdout)
        assert result.returncode == 0, result.stderr
    finally:
        deleted = cluster.kubectl("delete", "-n", "default", "-f", "-", input=prerequisites)
        assert deleted.returncode == 0, deleted.stderr


def test_server_side_dry_run_rejects_an_invalid_object(cluster: Cluster) -> None:
    # The same check on an object the API server must refuse: the dry-run above can fail.
    bad = "apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata: {name: bad}\nhandler: Not_A_DNS_Label!\n"
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=bad)
    assert result.returncode != 0
    assert "handler" in result.stderr


def test_containerd_restart_through_the_node_supervisor_keeps_pods(core: client.CoreV1Api, cluster: Cluster,
                                                                   pods) -> None:
    name = pods(busybox_pod(unique("survivor"), "node-a", "echo up; sleep 3600"))
    wait_until(f"pod {name} Running", lambda: pod_phase(core, name) == "Running")
    before = cluster.node_exec("node-a", "cat", f"{NODE_SUPPORT_DIR}/containerd.generation").stdout
    restart = cluster.node_exec("node-a", f"{NODE_SUPPORT_DIR}/restart-containerd")
    assert restart.returncode == 0, restart.stderr
    after = cluster.node_exec("node-a", "cat", f"{NODE_SUPPORT_DIR}/containerd.generation").stdout
    assert int(after) == int(before) + 1
    # The task outlives containerd (its shim keeps running); the kubelet finds it again, so no restart count.
    _, ctr = cl.containerd_binaries(cl.node_by_name("node-a"))
    tasks = cluster.node_exec("node-a", ctr, "-n", "k8s.io", "tasks", "ls")
    assert tasks.returncode == 0, tasks.stderr
    assert "RUNNING" in tasks.stdout
    wait_until("node-a Ready after the restart", lambda: next(
        c.status for c in core.read_node("node-a").status.conditions if c.type == "Ready") == "True")
    pod = core.read_namespaced_pod(name, NAMESPACE)
    assert pod.status.phase == "Running"
    assert pod.status.container_statuses[0].restart_count == 0


def test_restart_helper_refuses_outside_the_node_pid_namespace(cluster: Cluster) -> None:
    # Entered without the node's PID namespace, `kill -HUP 1` would reach the machine's init: the helper refuses.
    pid = cl.node_pid1(cluster.state, cl.node_by_name("node-b"))
    result = subprocess.run(["nsenter", "-t", str(pid), "-m", "-n", "--", f"{NODE_SUPPORT_DIR}/restart-containerd"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "not in a wasm-shim e2e node's PID namespace" in result.stderr
