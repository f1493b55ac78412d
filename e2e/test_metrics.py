"""The chart's node metrics endpoint on the cluster: `metrics.enabled` with `grouping: pod`, two wasm pods on node-a
(two daemons), and both daemons' series scraped through node-a's one endpoint from a pod on node-b.

The chart is installed by this module with its own values (a release of its own, node-a only) and uninstalled at
the end, node-a's containerd config checked byte for byte as in test_chart.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from e2e.conftest import Cluster, wait_until
from e2e.test_chart import (
    CHART,
    CONFIG,
    INSTALLER,
    LABEL,
    NAMESPACE,
    OPT_IN,
    RESTART_COMMAND,
    absent_ok,
    available,
    delete_deployment,
    finished,
    helm,
    installer_image,
    node_labels,
    pods_of,
    wasm_container,
    wasm_deployment,
)
from lab.cluster import cluster as cl
from lab.cluster import images

RELEASE = "wasm-shim-metrics"
RELEASE_NS = "wasm-metrics"
PORT = 9464


@pytest.fixture(scope="module")
def metrics_release(cluster: Cluster, guests: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    work = tmp_path_factory.mktemp("installer-metrics")
    tar = installer_image(work, guests)
    for node in cl.NODES:
        cl.load_image(cluster.state, node, tar)
    before = cluster.node_exec("node-a", "cat", CONFIG).stdout
    values = {
        "image": {"repository": INSTALLER.rsplit(":", 1)[0], "tag": INSTALLER.rsplit(":", 1)[1],
                  "pullPolicy": "Never"},
        # node-a by name, without the chart's default opt-in label (this module does not set it on the node).
        "nodeSelector": {"kubernetes.io/hostname": "node-a", OPT_IN: None},
        "node": {"restartCommand": RESTART_COMMAND},
        "shim": {"grouping": "pod"},
        "metrics": {"enabled": True, "port": PORT},
    }
    values_file = work / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    result = helm(cluster, "install", RELEASE, str(CHART), "-n", RELEASE_NS, "--create-namespace",
                  "-f", str(values_file), "--wait", "--timeout", "5m")
    assert result.returncode == 0, f"helm install failed:\n{result.stdout}{result.stderr}"
    try:
        yield values
    finally:
        result = helm(cluster, "uninstall", RELEASE, "-n", RELEASE_NS, "--wait", "--timeout", "5m")
        core = client.CoreV1Api(cluster.api)
        wait_until("node-a's label removed", lambda: LABEL not in node_labels(core, "node-a"), timeout=180)
        assert result.returncode == 0, f"helm uninstall failed:\n{result.stdout}{result.stderr}"
        assert cluster.node_exec("node-a", "cat", CONFIG).stdout == before
        absent_ok(core.delete_namespace, RELEASE_NS)


def scrape_from_node_b(core: client.CoreV1Api, host: str) -> str:
    """GET /metrics from a busybox pod on node-b (busybox nc: its wget segfaults in a container here); the body."""
    request = "GET /metrics HTTP/1.1\\r\\nHost: e2e\\r\\nConnection: close\\r\\n\\r\\n"
    script = (f'for i in 1 2 3 4 5; do out=$( (echo -ne "{request}"; sleep 5) | nc -w 20 {host} {PORT}); '
              f'[ -n "$out" ] && break; sleep 2; done; echo "$out"')
    name = f"scraper-{uuid.uuid4().hex[:6]}"
    core.create_namespaced_pod(NAMESPACE, client.V1Pod(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PodSpec(
            node_selector={"kubernetes.io/hostname": "node-b"}, restart_policy="Never",
            containers=[client.V1Container(name="main", image=images.BUSYBOX, image_pull_policy="Never",
                                           command=["sh", "-c", script])])))
    try:
        wait_until(f"scraper {name} finished", finished(core, name), timeout=120)
        answer = core.read_namespaced_pod_log(name, NAMESPACE)
    finally:
        absent_ok(core.delete_namespaced_pod, name, NAMESPACE, grace_period_seconds=0)
    head, _, body = answer.replace("\r\n", "\n").partition("\n\n")
    assert head.startswith("HTTP/1.1 200"), answer[:500]
    return body


def test_two_pod_daemons_scraped_through_the_nodes_one_endpoint(cluster: Cluster, metrics_release: dict) -> None:
    apps = client.AppsV1Api(cluster.api)
    core = client.CoreV1Api(cluster.api)
    wait_until("node-a labelled ready", lambda: node_labels(core, "node-a").get(LABEL) == "ready", timeout=180)
    name = f"wasm-metrics-{uuid.uuid4().hex[:6]}"
    apps.create_namespaced_deployment(NAMESPACE, wasm_deployment(
        name, [wasm_container("guest", images.WASM_SLEEP, ["3600"])], replicas=2))
    try:
        wait_until(f"deployment {name} available", available(apps, name, 2), timeout=180)
        assert {p.spec.node_name for p in pods_of(core, name)} == {"node-a"}
        selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=installer"
        installer = core.list_namespaced_pod(RELEASE_NS, label_selector=selector).items
        assert len(installer) == 1
        pod_ip = installer[0].status.pod_ip
        # The headless Service lists the endpoint: what a Prometheus's endpoints discovery finds.
        slices = client.DiscoveryV1Api(cluster.api).list_namespaced_endpoint_slice(
            RELEASE_NS, label_selector=f"kubernetes.io/service-name={RELEASE}-metrics").items
        assert {a for s in slices for e in (s.endpoints or []) for a in e.addresses} == {pod_ip}
        assert {(p.name, p.port) for s in slices for p in (s.ports or [])} == {("metrics", PORT)}

        samples = [(s.name, s.labels, s.value) for family in text_string_to_metric_families(
            scrape_from_node_b(core, pod_ip)) for s in family.samples]
        info = {labels["daemon"]: labels for n, labels, _ in samples if n == "wasm_shim_daemon_info"}
        pod_daemons = {d: labels for d, labels in info.items() if labels["grouping"] == "pod"
                       and labels["namespace"] == "k8s.io" and labels["group"].startswith("pod:")}
        assert len(pod_daemons) >= 2, info  # one daemon per pod: both wasm pods, through one endpoint
        running = {labels["daemon"]: value for n, labels, value in samples
                   if n == "wasm_shim_tasks" and labels.get("state") == "running"}
        # Each pod's daemon runs its guest; on node-a (containerd 2.x, sandboxer = "shim") the pod's sandbox is the
        # daemon's holder process, not a pause container task.
        assert sum(1 for d in pod_daemons if running.get(d) == 1) >= 2, (running, pod_daemons)
        up = {labels["daemon"]: value for n, labels, value in samples if n == "wasm_shim_daemon_up"}
        assert all(up[d] == 1 for d in pod_daemons)
    finally:
        delete_deployment(apps, core, name)
