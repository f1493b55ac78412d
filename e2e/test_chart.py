"""`helm install wasm-shim charts/wasm-shim` on the cluster, the way an operator does it, with real helm.

The installer image is built from this clone (`wasm-shim bundle build` + `wasm-shim image build`, no Docker) and
imported into both nodes; the release selects node-a only. The installer restarts node-a's containerd through the
node's supervisor (`node.restartCommand`, e2e/README.md): on a systemd node the chart's default does that job.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e.cluster import cluster as cl
from e2e.cluster import images
from e2e.conftest import Cluster, wait_until

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "wasm-shim"
RELEASE = "wasm-shim"
RELEASE_NS = "wasm-system"
INSTALLER = "wasm-shim.local/installer:e2e"
LABEL = "wasm.shim.io/runtime"
CONFIG = "/etc/containerd/config.toml"
NAMESPACE = "default"
RESTART_COMMAND = f"nsenter -t 1 -m -n -p -- {cl.NODE_SUPPORT_DIR}/restart-containerd"

pytestmark = pytest.mark.skipif(not CHART.is_dir(), reason="charts/wasm-shim is not in this tree yet")


def helm(cluster: Cluster, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([cl.tool("helm"), "--kubeconfig", str(cluster.kubeconfig), *args], capture_output=True,
                          text=True, timeout=timeout)


def installer_image(work: Path, guests: Path) -> Path:
    """The installer image tarball, built from this clone with the project's own tools."""
    bundle = work / "bundle"
    tar = work / "installer.tar"
    steps = [
        [str(ROOT / ".venv" / "bin" / "wasm-shim"), "bundle", "build", str(bundle)],
        [str(bundle / "bin" / "wasm-shim"), "image", "build", str(tar), "--bundle", str(bundle),
         "--test-wasm", str(guests / "hello.wasm"), "--ref", INSTALLER],
    ]
    for argv in steps:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"{' '.join(argv)} failed:\n{result.stdout}{result.stderr}"
    return tar


def absent_ok(delete: Callable[..., object], *args: object, **kwargs: object) -> None:
    """Delete, where "already gone" (404) is fine: a cleanup must not hide the failure that preceded it."""
    try:
        delete(*args, **kwargs)
    except ApiException as exc:
        if exc.status != 404:
            raise


def node_labels(core: client.CoreV1Api, node: str) -> dict[str, str]:
    return core.read_node(node).metadata.labels or {}


@pytest.fixture(scope="module")
def release(cluster: Cluster, guests: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The chart installed for node-a only; uninstalled at the end, with node-a's config checked byte for byte."""
    work = tmp_path_factory.mktemp("installer")
    tar = installer_image(work, guests)
    for node in cl.NODES:
        cl.load_image(cluster.state, node, tar)
    before = cluster.node_exec("node-a", "cat", CONFIG).stdout
    values = {
        "image": {"repository": INSTALLER.rsplit(":", 1)[0], "tag": INSTALLER.rsplit(":", 1)[1],
                  "pullPolicy": "Never"},
        "nodeSelector": {"kubernetes.io/hostname": "node-a"},
        "node": {"restartCommand": RESTART_COMMAND},
    }
    values_file = work / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    result = helm(cluster, "install", RELEASE, str(CHART), "-n", RELEASE_NS, "--create-namespace",
                  "-f", str(values_file), "--wait", "--timeout", "5m")
    assert result.returncode == 0, f"helm install failed:\n{result.stdout}{result.stderr}"
    info = {"before": before, "values": values}
    try:
        yield info
    finally:
        result = helm(cluster, "uninstall", RELEASE, "-n", RELEASE_NS, "--wait", "--timeout", "5m")
        uninstall_error = "" if result.returncode == 0 else f"helm uninstall failed:\n{result.stdout}{result.stderr}"
        core = client.CoreV1Api(cluster.api)
        # The installer puts the node back when its DaemonSet goes away: label, config, restart.
        wait_until("node-a's label removed", lambda: LABEL not in node_labels(core, "node-a"), timeout=180)
        after = cluster.node_exec("node-a", "cat", CONFIG).stdout
        assert not uninstall_error, uninstall_error
        assert after == before, "node-a's containerd config differs after helm uninstall"
        assert client.NodeV1Api(cluster.api).list_runtime_class(
            field_selector="metadata.name=wasmtime").items == []


def test_installer_labels_the_selected_node_only(cluster: Cluster, release: dict) -> None:
    core = client.CoreV1Api(cluster.api)
    wait_until("node-a labelled ready", lambda: node_labels(core, "node-a").get(LABEL) == "ready", timeout=180)
    assert LABEL not in node_labels(core, "node-b")
    installers = core.list_namespaced_pod(RELEASE_NS, label_selector="app.kubernetes.io/instance=wasm-shim").items
    assert [p.spec.node_name for p in installers] == ["node-a"]
    # The installer changed node-a's containerd config (inside the node), not node-b's.
    assert cluster.node_exec("node-a", "cat", CONFIG).stdout != release["before"]
    assert "wasmtime" not in cluster.node_exec("node-b", "cat", CONFIG).stdout


def test_runtimeclass_exists_with_the_ready_selector(cluster: Cluster, release: dict) -> None:
    rc = client.NodeV1Api(cluster.api).read_runtime_class("wasmtime")
    assert rc.handler == "wasmtime"
    assert rc.scheduling.node_selector == {LABEL: "ready"}


def test_wasm_deployment_ready_on_the_installed_node(cluster: Cluster, release: dict) -> None:
    apps = client.AppsV1Api(cluster.api)
    core = client.CoreV1Api(cluster.api)
    wait_until("node-a labelled ready", lambda: node_labels(core, "node-a").get(LABEL) == "ready", timeout=180)
    name = f"wasm-{uuid.uuid4().hex[:6]}"
    deployment = client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1DeploymentSpec(
            replicas=2, selector=client.V1LabelSelector(match_labels={"app": name}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"app": name}),
                spec=client.V1PodSpec(
                    runtime_class_name="wasmtime", termination_grace_period_seconds=2,
                    containers=[client.V1Container(
                        name="guest", image=images.WASM_SLEEP, image_pull_policy="Never", args=["3600"],
                        resources=client.V1ResourceRequirements(limits={"memory": "64Mi"}))]))))
    apps.create_namespaced_deployment(NAMESPACE, deployment)
    try:
        wait_until(f"deployment {name} available", lambda: (apps.read_namespaced_deployment(name, NAMESPACE)
                                                            .status.available_replicas or 0) == 2, timeout=180)
        pods = core.list_namespaced_pod(NAMESPACE, label_selector=f"app={name}").items
        assert {p.spec.node_name for p in pods} == {"node-a"}
        for pod in pods:
            # What `kubectl logs` shows: the guest's own output, through the shim and the kubelet.
            logs = cluster.kubectl("logs", "-n", NAMESPACE, pod.metadata.name)
            assert logs.returncode == 0, logs.stderr
            assert "sleeping 3600 s" in logs.stdout
    finally:
        apps.delete_namespaced_deployment(name, NAMESPACE)
        wait_until("the deployment's pods gone", lambda: not core.list_namespaced_pod(
            NAMESPACE, label_selector=f"app={name}").items, timeout=120)


def test_helm_test_passes(cluster: Cluster, release: dict) -> None:
    result = helm(cluster, "test", RELEASE, "-n", RELEASE_NS, "--timeout", "5m")
    assert result.returncode == 0, f"helm test failed:\n{result.stdout}{result.stderr}"
    # The hook's wasm pod stays until the next `helm test`: it ran on node-a through the RuntimeClass.
    core = client.CoreV1Api(cluster.api)
    wasm = [p for p in core.list_namespaced_pod(RELEASE_NS).items if p.spec.runtime_class_name == "wasmtime"]
    assert len(wasm) == 1
    assert wasm[0].status.phase == "Succeeded"
    assert wasm[0].spec.node_name == "node-a"
    assert "hello from wasm" in core.read_namespaced_pod_log(wasm[0].metadata.name, RELEASE_NS)


def test_wasm_server_behind_a_service_answers_a_pod_on_the_other_node(cluster: Cluster, release: dict) -> None:
    # A component served through the component runner in the pod's network namespace, with the network grant
    # (docs/annotations.md); a busybox pod on node-b reaches it through the Service's ClusterIP (kube-proxy).
    apps = client.AppsV1Api(cluster.api)
    core = client.CoreV1Api(cluster.api)
    wait_until("node-a labelled ready", lambda: node_labels(core, "node-a").get(LABEL) == "ready", timeout=180)
    name = f"wasm-server-{uuid.uuid4().hex[:6]}"
    apps.create_namespaced_deployment(NAMESPACE, client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1DeploymentSpec(
            replicas=1, selector=client.V1LabelSelector(match_labels={"app": name}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"app": name},
                                             annotations={"wasm.shim.io/network": "tcp-listen=*:8080"}),
                spec=client.V1PodSpec(
                    runtime_class_name="wasmtime", termination_grace_period_seconds=2,
                    containers=[client.V1Container(
                        name="server", image=images.WASM_NET, image_pull_policy="Never",
                        args=["listen", "0.0.0.0", "8080", "0"], ports=[client.V1ContainerPort(container_port=8080)],
                        resources=client.V1ResourceRequirements(limits={"memory": "128Mi"}))])))))
    core.create_namespaced_service(NAMESPACE, client.V1Service(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1ServiceSpec(selector={"app": name}, ports=[client.V1ServicePort(port=80, target_port=8080)])))
    client_pod = f"client-{uuid.uuid4().hex[:6]}"
    try:
        wait_until(f"deployment {name} available", lambda: (apps.read_namespaced_deployment(name, NAMESPACE)
                                                            .status.available_replicas or 0) == 1, timeout=180)
        cluster_ip = core.read_namespaced_service(name, NAMESPACE).spec.cluster_ip
        script = (f"for i in 1 2 3 4 5 6 7 8 9 10; do out=$(nc -w 3 {cluster_ip} 80 </dev/null); "
                  f'[ -n "$out" ] && {{ echo "got: $out"; exit 0; }}; sleep 1; done; exit 1')
        core.create_namespaced_pod(NAMESPACE, client.V1Pod(
            metadata=client.V1ObjectMeta(name=client_pod),
            spec=client.V1PodSpec(
                node_selector={"kubernetes.io/hostname": "node-b"}, restart_policy="Never",
                containers=[client.V1Container(name="main", image=images.BUSYBOX, image_pull_policy="Never",
                                               command=["sh", "-c", script])])))
        wait_until("the client finished", lambda: core.read_namespaced_pod(client_pod, NAMESPACE).status.phase
                   in ("Succeeded", "Failed"), timeout=120)
        log = core.read_namespaced_pod_log(client_pod, NAMESPACE)
        assert "got: hello from wasm" in log, log
        server = core.list_namespaced_pod(NAMESPACE, label_selector=f"app={name}").items[0]
        assert server.spec.node_name == "node-a"
        assert "listening 0.0.0.0:8080" in core.read_namespaced_pod_log(server.metadata.name, NAMESPACE)
    finally:
        absent_ok(core.delete_namespaced_pod, client_pod, NAMESPACE, grace_period_seconds=0)
        absent_ok(core.delete_namespaced_service, name, NAMESPACE)
        absent_ok(apps.delete_namespaced_deployment, name, NAMESPACE)
        wait_until("the server's pods gone", lambda: not core.list_namespaced_pod(
            NAMESPACE, label_selector=f"app={name}").items, timeout=120)

