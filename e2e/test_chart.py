"""`helm install wasm-shim charts/wasm-shim` on the cluster, the way an operator does it, with real helm.

The installer image is built from this clone (`wasm-shim bundle build` + `wasm-shim image build`, no Docker) and
imported into both nodes; the release selects node-a only. The installer restarts node-a's containerd through the
node's supervisor (`node.restartCommand`, e2e/README.md): on a systemd node the chart's default does that job.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e.conftest import Cluster, wait_until
from lab.cluster import cluster as cl
from lab.cluster import images
from lab.cluster.topology import NODE_SUPPORT_DIR

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "wasm-shim"
RELEASE = "wasm-shim"
RELEASE_NS = "wasm-system"
INSTALLER = "wasm-shim.local/installer:e2e"
LABEL = "wasm.shim.io/runtime"
OPT_IN = "wasm.shim.io/install"  # the label an operator sets on the nodes the chart may install on (its default)
CONFIG = "/etc/containerd/config.toml"
NODE_POLICY = "/opt/wasm-shim/policy/policy.toml"  # where the installer puts the chart's signaturePolicy
NAMESPACE = "default"
RESTART_COMMAND = f"nsenter -t 1 -m -n -p -- {NODE_SUPPORT_DIR}/restart-containerd"

pytestmark = pytest.mark.skipif(not CHART.is_dir(), reason="charts/wasm-shim is not in this tree yet")


def helm(cluster: Cluster, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([cl.tool("helm"), "--kubeconfig", str(cluster.kubeconfig), *args], capture_output=True,
                          text=True, timeout=timeout)


def installer_image(work: Path, guests: Path, *, runner: Path | None = None, ref: str = INSTALLER) -> Path:
    """The installer image tarball, built from this clone with the project's own tools (`runner`: another
    component runner binary in the bundle)."""
    bundle = work / "bundle"
    tar = work / "installer.tar"
    steps = [
        [str(ROOT / ".venv" / "bin" / "wasm-shim"), "bundle", "build", str(bundle),
         *(["--runner", str(runner)] if runner else [])],
        [str(bundle / "bin" / "wasm-shim"), "image", "build", str(tar), "--bundle", str(bundle),
         "--test-wasm", str(guests / "hello.wasm"), "--ref", ref],
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
    # The chart's default nodeSelector: only the nodes an operator opted in. node-a is; node-b is not.
    core = client.CoreV1Api(cluster.api)
    core.patch_node("node-a", {"metadata": {"labels": {OPT_IN: "true"}}})
    values = {
        "image": {"repository": INSTALLER.rsplit(":", 1)[0], "tag": INSTALLER.rsplit(":", 1)[1],
                  "pullPolicy": "Never"},
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
        core.patch_node("node-a", {"metadata": {"labels": {OPT_IN: None}}})
        assert not uninstall_error, uninstall_error
        assert after == before, "node-a's containerd config differs after helm uninstall"
        assert client.NodeV1Api(cluster.api).list_runtime_class(
            field_selector="metadata.name=wasmtime").items == []


def test_installer_runs_on_the_opted_in_node_only(cluster: Cluster, release: dict) -> None:
    core = client.CoreV1Api(cluster.api)
    wait_until("node-a labelled ready", lambda: node_labels(core, "node-a").get(LABEL) == "ready", timeout=180)
    assert LABEL not in node_labels(core, "node-b")
    installers = core.list_namespaced_pod(RELEASE_NS, label_selector="app.kubernetes.io/instance=wasm-shim").items
    assert [p.spec.node_name for p in installers] == ["node-a"]
    # The installer changed node-a's containerd config (inside the node), not node-b's.
    assert cluster.node_exec("node-a", "cat", CONFIG).stdout != release["before"]
    assert "wasmtime" not in cluster.node_exec("node-b", "cat", CONFIG).stdout


TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def test_the_installer_pods_token_can_change_only_its_own_node(cluster: Cluster, release: dict) -> None:
    # What a compromised node holds: its installer pod's ServiceAccount token. RBAC grants `patch nodes` on every
    # node; the chart's ValidatingAdmissionPolicy (templates/node-restriction.yaml) lets the token change only
    # the Node named in it (the kubelet-mounted token's node-name claim), and there only our label and
    # annotations. Dry runs: admission decides, nothing is written.
    core = client.CoreV1Api(cluster.api)
    wait_until("node-a labelled ready", lambda: node_labels(core, "node-a").get(LABEL) == "ready", timeout=180)
    [pod] = installer_pods(core)
    read = cluster.kubectl("exec", "-n", RELEASE_NS, pod.metadata.name, "-c", "installer", "--",
                           "/bundle/python/bin/python3", "-IS", "-c", f"print(open({TOKEN!r}).read())")
    assert read.returncode == 0, read.stderr
    configuration = client.Configuration()
    configuration.host = cluster.api.configuration.host  # type: ignore[attr-defined]
    configuration.ssl_ca_cert = cluster.api.configuration.ssl_ca_cert  # type: ignore[attr-defined]
    configuration.api_key = {"authorization": f"Bearer {read.stdout.strip()}"}
    as_installer = client.ApiClient(configuration)
    try:
        nodes = client.CoreV1Api(as_installer)

        def patch(node: str, labels: dict[str, str]) -> str:
            try:
                nodes.patch_node(node, {"metadata": {"labels": labels}}, dry_run="All")
            except ApiException as exc:
                return f"{exc.status} {exc.body}"
            return ""

        other = patch("node-b", {LABEL: "ready"})
        assert other.startswith("403 ") and \
            "the wasm-shim installer on node node-a may change only its own Node, not node-b" in other, other
        assert patch("node-a", {LABEL: "ready"}) == ""
        foreign = patch("node-a", {"node-role.kubernetes.io/control-plane": ""})
        assert foreign.startswith("403 ") and "may change only the label wasm.shim.io/runtime" in foreign, foreign
    finally:
        as_installer.close()
    assert LABEL not in node_labels(core, "node-b")


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
        # node-a runs containerd 2.x, where the installer's table says sandboxer = "shim": each pod is held by a
        # holder process of our daemon (its hostname the pod's name), not by CRI's pause container under runc.
        holders = [line for line in node_a_processes(cluster) if line.split()[0].endswith("/wasm-shim-sandbox-holder")]
        for pod in pods:
            assert any(f"--hostname {pod.metadata.name}" in line for line in holders), holders
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



# --- workloads through the chart-installed shim -------------------------------------------------------------------
# Each test makes its own objects (random names), waits for them with bounded polls and deletes them again.

def wasm_container(name: str, image: str, args: list[str] | None = None, **extra: object) -> client.V1Container:
    return client.V1Container(name=name, image=image, image_pull_policy="Never", args=args,
                              resources=client.V1ResourceRequirements(limits={"memory": "64Mi"}), **extra)


def wasm_deployment(name: str, containers: list[client.V1Container], replicas: int = 1,
                    annotations: dict[str, str] | None = None) -> client.V1Deployment:
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1DeploymentSpec(
            replicas=replicas, selector=client.V1LabelSelector(match_labels={"app": name}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"app": name}, annotations=annotations),
                spec=client.V1PodSpec(runtime_class_name="wasmtime", termination_grace_period_seconds=2,
                                      containers=containers))))


def available(apps: client.AppsV1Api, name: str, replicas: int) -> Callable[[], bool]:
    return lambda: (apps.read_namespaced_deployment(name, NAMESPACE).status.available_replicas or 0) == replicas


def pods_of(core: client.CoreV1Api, name: str) -> list[client.V1Pod]:
    return core.list_namespaced_pod(NAMESPACE, label_selector=f"app={name}").items


def delete_deployment(apps: client.AppsV1Api, core: client.CoreV1Api, name: str) -> None:
    absent_ok(apps.delete_namespaced_deployment, name, NAMESPACE)
    wait_until(f"{name}'s pods gone", lambda: not pods_of(core, name), timeout=120)


def finished(core: client.CoreV1Api, pod: str) -> Callable[[], bool]:
    return lambda: core.read_namespaced_pod(pod, NAMESPACE).status.phase in ("Succeeded", "Failed")


def client_on_node_b(core: client.CoreV1Api, script: str) -> str:
    """Run a busybox pod on node-b (the node without the shim) with this shell script; its log once it ended."""
    name = f"client-{uuid.uuid4().hex[:6]}"
    core.create_namespaced_pod(NAMESPACE, client.V1Pod(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PodSpec(
            node_selector={"kubernetes.io/hostname": "node-b"}, restart_policy="Never",
            containers=[client.V1Container(name="main", image=images.BUSYBOX, image_pull_policy="Never",
                                           command=["sh", "-c", script])])))
    try:
        wait_until(f"client {name} finished", finished(core, name), timeout=120)
        return core.read_namespaced_pod_log(name, NAMESPACE)
    finally:
        absent_ok(core.delete_namespaced_pod, name, NAMESPACE, grace_period_seconds=0)


def http_get_script(host: str, paths: list[str]) -> str:
    """Busybox sh + nc (busybox wget segfaults in a container on this kind of machine): each path's raw HTTP/1.1 answer,
    separated by `=====`; each request is retried a few times while the connection is refused. nc's stdin stays
    open for a while after the request: with `echo ... | nc` alone (stdin at its end at once), 200 answers came
    back empty here while the quick 500 did not."""
    parts = []
    for path in paths:
        request = f"GET {path} HTTP/1.1\\r\\nHost: e2e\\r\\nx-test: e2e\\r\\nConnection: close\\r\\n\\r\\n"
        parts.append(f'for i in 1 2 3; do out=$( (echo -ne "{request}"; sleep 8) | nc -w 20 {host} 80); '
                     f'[ -n "$out" ] && break; sleep 1; done; echo "$out"; echo =====')
    return "; ".join(parts)


def node_a_tasks(cluster: Cluster) -> set[str]:
    """The task IDs node-a's containerd knows in the k8s.io namespace (`ctr -n k8s.io tasks ls`)."""
    _, ctr = cl.containerd_binaries(cl.node_by_name("node-a"))
    result = cluster.node_exec("node-a", ctr, "--address", "/run/containerd/containerd.sock", "-n", "k8s.io",
                               "tasks", "ls", "-q")
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def node_a_processes(cluster: Cluster, columns: str = "args") -> list[str]:
    """Every process inside node-a's PID namespace, one line each with ``columns`` (ps -o)."""
    result = cluster.node_exec("node-a", "ps", "-ww", "-eo", columns)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()[1:]


def container_ids(pod: client.V1Pod) -> set[str]:
    statuses = (pod.status.container_statuses or []) + (pod.status.init_container_statuses or [])
    return {s.container_id.split("://", 1)[1] for s in statuses if s.container_id}


def test_wasi_http_component_behind_a_service_answers_a_pod_on_the_other_node(cluster: Cluster,
                                                                               release: dict) -> None:
    # k8s/examples/http-deployment.yaml with the e2e image: the component runner serves the wasi:http component on
    # :8080 in the pod's network namespace; a busybox pod on node-b asks through the Service's ClusterIP.
    apps = client.AppsV1Api(cluster.api)
    core = client.CoreV1Api(cluster.api)
    example = list(yaml.safe_load_all((ROOT / "k8s" / "examples" / "http-deployment.yaml").read_text()))
    deployment, service = (next(d for d in example if d["kind"] == kind) for kind in ("Deployment", "Service"))
    name = f"wasm-http-{uuid.uuid4().hex[:6]}"
    deployment["metadata"]["name"] = service["metadata"]["name"] = name
    deployment["spec"]["replicas"] = 1
    deployment["spec"]["selector"]["matchLabels"] = service["spec"]["selector"] = {"app": name}
    template = deployment["spec"]["template"]
    template["metadata"]["labels"] = {"app": name}
    template["spec"]["terminationGracePeriodSeconds"] = 2
    container = template["spec"]["containers"][0]
    container["image"], container["imagePullPolicy"] = images.WASM_HTTP, "Never"
    container.pop("livenessProbe")  # the first start compiles a 14 MB component: no restarts while it does
    apps.create_namespaced_deployment(NAMESPACE, deployment)
    core.create_namespaced_service(NAMESPACE, service)
    try:
        wait_until(f"deployment {name} available", available(apps, name, 1), timeout=300, interval=2)
        cluster_ip = core.read_namespaced_service(name, NAMESPACE).spec.cluster_ip
        # Under load the first CreateContainer (the runner compiling the 14 MB component) can outlast the kubelet's
        # 2 min runtime-request timeout ("context deadline exceeded"); the kubelet's retry finds it compiled.
        restarts = pods_of(core, name)[0].status.container_statuses[0].restart_count
        log = client_on_node_b(core, http_get_script(cluster_ip, ["/hello/e2e?x=1", "/trap", "/after"]))
        hello, trap, after = log.split("=====")[:3]
        assert hello.strip().startswith("HTTP/1.1 200"), log
        assert "path /hello/e2e?x=1" in hello and "x-test e2e" in hello, log
        assert trap.strip().startswith("HTTP/1.1 500"), log
        assert after.strip().startswith("HTTP/1.1 200") and "path /after" in after, log
        [server] = pods_of(core, name)
        assert server.spec.node_name == "node-a"
        assert server.status.container_statuses[0].restart_count == restarts  # the trap did not end the server
        assert "(GET /trap): 500" in core.read_namespaced_pod_log(server.metadata.name, NAMESPACE)
    finally:
        absent_ok(core.delete_namespaced_service, name, NAMESPACE)
        delete_deployment(apps, core, name)


def test_wasm_job_completes_with_the_guests_exit_status(cluster: Cluster, release: dict) -> None:
    batch = client.BatchV1Api(cluster.api)
    core = client.CoreV1Api(cluster.api)
    jobs = {f"wasm-job-ok-{uuid.uuid4().hex[:6]}": "0", f"wasm-job-fail-{uuid.uuid4().hex[:6]}": "3"}
    for name, code in jobs.items():
        batch.create_namespaced_job(NAMESPACE, client.V1Job(
            metadata=client.V1ObjectMeta(name=name),
            spec=client.V1JobSpec(
                backoff_limit=0, active_deadline_seconds=120,
                template=client.V1PodTemplateSpec(spec=client.V1PodSpec(
                    runtime_class_name="wasmtime", restart_policy="Never",
                    containers=[wasm_container("guest", images.WASM_EXIT, [code])])))))
    try:
        for name, code in jobs.items():
            def job_done(name: str = name) -> str | None:
                for condition in batch.read_namespaced_job_status(name, NAMESPACE).status.conditions or []:
                    if condition.type in ("Complete", "Failed") and condition.status == "True":
                        return condition.type
                return None
            outcome = wait_until(f"job {name} done", job_done, timeout=180)
            assert outcome == ("Complete" if code == "0" else "Failed"), name
            [pod] = core.list_namespaced_pod(NAMESPACE, label_selector=f"job-name={name}").items
            terminated = pod.status.container_statuses[0].state.terminated
            assert terminated is not None and terminated.exit_code == int(code), pod.status
            assert pod.spec.node_name == "node-a"
            assert f"exiting with {code}" in core.read_namespaced_pod_log(pod.metadata.name, NAMESPACE)
    finally:
        for name in jobs:
            absent_ok(batch.delete_namespaced_job, name, NAMESPACE, propagation_policy="Foreground")


def test_wasm_pod_with_a_native_sidecar_runs_both_and_deleting_it_stops_both(cluster: Cluster,
                                                                             release: dict) -> None:
    # k8s/examples/sidecar-pod.yaml's shape: a native busybox init container with restartPolicy Always (runc,
    # delegated by the shim) beside a wasm container. Deleting the pod ends both: no task, no busybox left.
    core = client.CoreV1Api(cluster.api)
    before = node_a_tasks(cluster)
    name = f"sidecar-{uuid.uuid4().hex[:6]}"
    marker = f"sidecar-{uuid.uuid4().hex[:8]}"
    core.create_namespaced_pod(NAMESPACE, client.V1Pod(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PodSpec(
            runtime_class_name="wasmtime", termination_grace_period_seconds=2,
            init_containers=[client.V1Container(
                name="log-tail", image=images.BUSYBOX, image_pull_policy="Never", restart_policy="Always",
                command=["sh", "-c", f"echo {marker} up; exec sleep 3600"])],
            containers=[wasm_container("app", images.WASM_SLEEP, ["3600"])])))
    try:
        def both_ready() -> client.V1Pod | None:
            pod = core.read_namespaced_pod(name, NAMESPACE)
            statuses = (pod.status.init_container_statuses or []) + (pod.status.container_statuses or [])
            return pod if len(statuses) == 2 and all(s.ready for s in statuses) else None
        pod = wait_until(f"pod {name}'s two containers ready", both_ready, timeout=180)
        assert pod.spec.node_name == "node-a"
        assert f"{marker} up" in core.read_namespaced_pod_log(name, NAMESPACE, container="log-tail")
        assert "sleeping 3600 s" in core.read_namespaced_pod_log(name, NAMESPACE, container="app")
        ids = container_ids(pod)
        assert len(ids) == 2 and ids <= node_a_tasks(cluster)
        assert any("sleep 3600" in line for line in node_a_processes(cluster))
    finally:
        absent_ok(core.delete_namespaced_pod, name, NAMESPACE)
        wait_until(f"pod {name} gone", lambda: name not in {p.metadata.name for p in core.list_namespaced_pod(
            NAMESPACE).items}, timeout=120)
    wait_until("node-a's tasks back to those before the pod", lambda: node_a_tasks(cluster) <= before, timeout=60)
    assert not any("sleep 3600" in line for line in node_a_processes(cluster))


def test_deleting_a_pod_and_scaling_down_stop_the_guests(cluster: Cluster, release: dict) -> None:
    apps = client.AppsV1Api(cluster.api)
    core = client.CoreV1Api(cluster.api)
    before = node_a_tasks(cluster)
    name = f"wasm-scale-{uuid.uuid4().hex[:6]}"
    apps.create_namespaced_deployment(NAMESPACE, wasm_deployment(
        name, [wasm_container("guest", images.WASM_SLEEP, ["3600"])], replicas=3))
    try:
        wait_until(f"deployment {name} available", available(apps, name, 3), timeout=180)
        pods = pods_of(core, name)
        running = set().union(*(container_ids(p) for p in pods))
        assert len(running) == 3 and running <= node_a_tasks(cluster)
        # Delete one pod: its guest's task goes; the ReplicaSet's replacement runs.
        victim = pods[0]
        core.delete_namespaced_pod(victim.metadata.name, NAMESPACE)
        wait_until("the deleted pod's task gone", lambda: not container_ids(victim) & node_a_tasks(cluster),
                   timeout=60)
        wait_until(f"deployment {name} available again", lambda: available(apps, name, 3)() and victim.metadata.uid
                   not in {p.metadata.uid for p in pods_of(core, name)}, timeout=180)
        # Scale to zero: every guest's task and every sandbox goes, and only the one daemon stays.
        apps.patch_namespaced_deployment_scale(name, NAMESPACE, {"spec": {"replicas": 0}})
        wait_until(f"{name} scaled to 0", lambda: not pods_of(core, name), timeout=120)
        wait_until("node-a's tasks back to those before the deployment", lambda: node_a_tasks(cluster) <= before,
                   timeout=60)
        processes = node_a_processes(cluster, "pid,ppid,args")
        # grouping=namespace: one daemon of the release's bundle for containerd's k8s.io namespace (a daemon an
        # earlier module's hand-installed shim left, with another config, may still be idling out beside it).
        daemons = [line for line in processes if "wasm_shim.shim.daemon.main" in line and "/opt/wasm-shim/" in line]
        assert len(daemons) == 1, daemons
        # No component runner is left under that daemon (a runner's plan, pod names included, is not in its argv).
        daemon_pid = daemons[0].split()[0]
        runners = [line for line in processes if "wasm-shim-component-runner" in line]
        assert not [line for line in runners if line.split()[1] == daemon_pid], runners
    finally:
        delete_deployment(apps, core, name)


def backoff_events(core: client.CoreV1Api, pod: str) -> list[str]:
    events = core.list_namespaced_event(NAMESPACE, field_selector=f"involvedObject.name={pod},reason=BackOff").items
    return [e.message for e in events]


def test_a_guest_that_exits_at_once_crash_loops_with_its_message(cluster: Cluster, release: dict) -> None:
    # A Deployment whose guest exits 1 at once with a message on stderr, beside the same failure as a native
    # busybox container under runc on the same node: both go through the kubelet's restart back-off the same way.
    # Kubernetes 1.37's kubelet re-syncs a crashed container only when its back-off expires, so between restarts
    # the container status mostly reads `terminated` (reason Error, `kubectl get pods` STATUS "Error") and shows
    # `waiting: CrashLoopBackOff` only briefly; what stays is the restart count, the last termination with its
    # exit code and message, and the BackOff event. `kubectl logs --previous` fails for both ("unable to retrieve
    # container logs"): the kubelet's container GC keeps one dead container per pod container, the current one.
    apps = client.AppsV1Api(cluster.api)
    core = client.CoreV1Api(cluster.api)
    wasm, native = f"wasm-crash-{uuid.uuid4().hex[:6]}", f"native-crash-{uuid.uuid4().hex[:6]}"
    apps.create_namespaced_deployment(NAMESPACE, wasm_deployment(wasm, [wasm_container(
        "guest", images.WASM_CAT, ["/missing.txt"], termination_message_policy="FallbackToLogsOnError")]))
    runc = wasm_deployment(native, [client.V1Container(
        name="guest", image=images.BUSYBOX, image_pull_policy="Never",
        termination_message_policy="FallbackToLogsOnError",
        command=["sh", "-c", "echo 'cat_file: /missing.txt: No such file or directory' >&2; exit 1"])])
    runc.spec.template.spec.runtime_class_name = None
    runc.spec.template.spec.node_selector = {"kubernetes.io/hostname": "node-a"}
    apps.create_namespaced_deployment(NAMESPACE, runc)
    try:
        for name in (wasm, native):
            def crash_looping(name: str = name) -> client.V1Pod | None:
                pods = pods_of(core, name)
                if len(pods) != 1 or not pods[0].status.container_statuses:
                    return None
                status = pods[0].status.container_statuses[0]
                return pods[0] if status.restart_count >= 2 and backoff_events(core, pods[0].metadata.name) else None
            pod = wait_until(f"{name} restarting with back-off", crash_looping, timeout=120, interval=2)
            status = pod.status.container_statuses[0]
            assert pod.spec.node_name == "node-a"  # (ready may read true for the moment a restarted one runs)
            terminated = status.last_state.terminated or status.state.terminated
            assert terminated is not None and terminated.exit_code == 1 and terminated.reason == "Error", status
            assert "cat_file: /missing.txt: No such file or directory" in (terminated.message or ""), status
            assert any("Back-off restarting failed container guest" in m
                       for m in backoff_events(core, pod.metadata.name))
            logs = cluster.kubectl("logs", "-n", NAMESPACE, pod.metadata.name)
            assert "cat_file: /missing.txt: No such file or directory" in logs.stdout, logs.stderr
    finally:
        delete_deployment(apps, core, wasm)
        delete_deployment(apps, core, native)


def test_a_file_the_pod_was_not_granted_is_not_there(cluster: Cluster, release: dict) -> None:
    # docs/annotations.md "Spec fields": directory mounts are preopened (granted); file mounts -- the kubelet's
    # /etc/hostname, a subPath of a ConfigMap key -- are not, so the guest sees no such file (ENOENT); a path
    # climbing out of a preopen with `..` is refused (EPERM). Each ends the container with status 1 and the
    # guest's own message, in the container's status and `kubectl logs`.
    core = client.CoreV1Api(cluster.api)
    name = f"grants-{uuid.uuid4().hex[:6]}"
    core.create_namespaced_config_map(NAMESPACE, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=name), data={"greeting": "hello from a configmap\n"}))
    cases = {  # container: (path, exit code, what the guest prints)
        "directory": ("/config/greeting", 0, "hello from a configmap"),
        "file-mount": ("/single/greeting", 1, "cat_file: /single/greeting: No such file or directory"),
        "kubelet-file": ("/etc/hostname", 1, "cat_file: /etc/hostname: No such file or directory"),
        "escape": ("/../../../etc/passwd", 1, "cat_file: /../../../etc/passwd: Operation not permitted"),
    }
    mounts = [client.V1VolumeMount(name="config", mount_path="/config"),
              client.V1VolumeMount(name="config", mount_path="/single/greeting", sub_path="greeting")]
    core.create_namespaced_pod(NAMESPACE, client.V1Pod(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PodSpec(
            runtime_class_name="wasmtime", restart_policy="Never",
            volumes=[client.V1Volume(name="config", config_map=client.V1ConfigMapVolumeSource(name=name))],
            containers=[wasm_container(container, images.WASM_CAT, [path], volume_mounts=mounts)
                        for container, (path, _, _) in cases.items()])))
    try:
        wait_until(f"pod {name} finished", finished(core, name), timeout=180)
        pod = core.read_namespaced_pod(name, NAMESPACE)
        assert pod.status.phase == "Failed" and pod.spec.node_name == "node-a"
        statuses = {s.name: s.state.terminated for s in pod.status.container_statuses}
        for container, (_, code, text) in cases.items():
            assert statuses[container] is not None and statuses[container].exit_code == code, (container, statuses)
            assert text in core.read_namespaced_pod_log(name, NAMESPACE, container=container), container
        assert "hello from a configmap" not in core.read_namespaced_pod_log(name, NAMESPACE, container="file-mount")
    finally:
        absent_ok(core.delete_namespaced_pod, name, NAMESPACE, grace_period_seconds=0)
        absent_ok(core.delete_namespaced_config_map, name, NAMESPACE)


def test_bad_input_surfaces_where_a_cluster_user_looks(cluster: Cluster, release: dict) -> None:
    # An image that is not on the node; a wasmtime pod pinned to node-b (no shim) with nodeName, which bypasses
    # the scheduler; and a RuntimeClass without scheduling that lets the scheduler put a pod on node-b, where
    # containerd 1.6 has no such runtime. Each shows in the pod's status/events; a wasm pod keeps running.
    apps = client.AppsV1Api(cluster.api)
    core = client.CoreV1Api(cluster.api)
    node_v1 = client.NodeV1Api(cluster.api)
    suffix = uuid.uuid4().hex[:6]
    healthy, missing, pinned, anywhere = (f"{what}-{suffix}" for what in ("healthy", "missing", "pinned", "anywhere"))
    apps.create_namespaced_deployment(NAMESPACE, wasm_deployment(
        healthy, [wasm_container("guest", images.WASM_SLEEP, ["3600"])]))
    node_v1.create_runtime_class(client.V1RuntimeClass(metadata=client.V1ObjectMeta(name=anywhere),
                                                       handler="wasmtime"))
    pods = {
        missing: client.V1PodSpec(runtime_class_name="wasmtime", restart_policy="Never", containers=[
            wasm_container("guest", "wasm-shim.local/not-there:e2e")]),
        pinned: client.V1PodSpec(runtime_class_name="wasmtime", restart_policy="Never", node_name="node-b",
                                 containers=[wasm_container("guest", images.WASM_HELLO)]),
        anywhere: client.V1PodSpec(runtime_class_name=anywhere, restart_policy="Never",
                                   node_selector={"kubernetes.io/hostname": "node-b"},
                                   containers=[wasm_container("guest", images.WASM_HELLO)]),
    }
    try:
        wait_until(f"deployment {healthy} available", available(apps, healthy, 1), timeout=180)
        [healthy_pod] = pods_of(core, healthy)
        for name, spec in pods.items():
            core.create_namespaced_pod(NAMESPACE, client.V1Pod(metadata=client.V1ObjectMeta(name=name), spec=spec))

        def event(name: str, reason: str) -> str | None:
            found = core.list_namespaced_event(NAMESPACE, field_selector=f"involvedObject.name={name},"
                                                                         f"reason={reason}").items
            return found[0].message if found else None

        # Not on the node, pull policy Never: the container waits with ErrImageNeverPull, and an event says so.
        message = wait_until("ErrImageNeverPull event", lambda: event(missing, "ErrImageNeverPull"), timeout=120)
        assert "wasm-shim.local/not-there:e2e" in message and "not present" in message
        def waiting_reason() -> str | None:  # the status follows the event on the kubelet's next status update
            statuses = core.read_namespaced_pod(missing, NAMESPACE).status.container_statuses or []
            waiting = statuses[0].state.waiting if statuses else None
            return waiting.reason if waiting is not None and waiting.reason != "ContainerCreating" else None
        assert wait_until("the missing image's waiting reason", waiting_reason, timeout=60) == "ErrImageNeverPull"
        # nodeName skips the scheduler, but the RuntimeClass's nodeSelector was merged into the pod at admission:
        # node-b's kubelet rejects it (phase Failed, reason NodeAffinity) before any sandbox is asked for.
        pod = wait_until("the pinned pod rejected", lambda: (p := core.read_namespaced_pod(pinned, NAMESPACE))
                         .status.phase == "Failed" and p, timeout=120)
        assert pod.spec.node_selector == {LABEL: "ready"}
        assert pod.status.reason == "NodeAffinity", pod.status
        assert event(pinned, "NodeAffinity")
        # A RuntimeClass without scheduling: containerd 1.6 on node-b refuses the sandbox, the kubelet retries.
        message = wait_until("FailedCreatePodSandBox event", lambda: event(anywhere, "FailedCreatePodSandBox"),
                             timeout=120)
        assert 'no runtime for "wasmtime" is configured' in message, message
        assert core.read_namespaced_pod(anywhere, NAMESPACE).status.phase == "Pending"
        # The cluster and the wasm pod beside it keep running.
        pod = core.read_namespaced_pod(healthy_pod.metadata.name, NAMESPACE)
        assert pod.status.phase == "Running" and pod.status.container_statuses[0].restart_count == 0
        assert all(c.status == "True" for n in core.list_node().items for c in n.status.conditions
                   if c.type == "Ready")
    finally:
        for name in pods:
            absent_ok(core.delete_namespaced_pod, name, NAMESPACE, grace_period_seconds=0)
        absent_ok(node_v1.delete_runtime_class, anywhere)
        delete_deployment(apps, core, healthy)


def installer_pods(core: client.CoreV1Api, namespace: str = RELEASE_NS) -> list[client.V1Pod]:
    """The DaemonSet's pods only: `helm test`'s hook pods carry the release's instance label too."""
    return [p for p in core.list_namespaced_pod(namespace).items
            if any(o.kind == "DaemonSet" for o in p.metadata.owner_references or [])]


def test_helm_upgrade_keeps_running_wasm_pods_running(cluster: Cluster, release: dict, tmp_path: Path) -> None:
    # A new revision with changed values (the shim's log level, a pod annotation): the DaemonSet rolls its pod,
    # the new installer finds the node installed; the wasm server keeps its pod, its container and its answers.
    apps = client.AppsV1Api(cluster.api)
    core = client.CoreV1Api(cluster.api)
    wait_until("node-a labelled ready", lambda: node_labels(core, "node-a").get(LABEL) == "ready", timeout=180)
    name = f"wasm-upgrade-{uuid.uuid4().hex[:6]}"
    apps.create_namespaced_deployment(NAMESPACE, wasm_deployment(
        name, [wasm_container("server", images.WASM_NET, ["listen", "0.0.0.0", "8080", "0"],
                              ports=[client.V1ContainerPort(container_port=8080)],
                              readiness_probe=client.V1Probe(tcp_socket=client.V1TCPSocketAction(port=8080),
                                                             period_seconds=2))],
        replicas=2, annotations={"wasm.shim.io/network": "tcp-listen=*:8080"}))
    core.create_namespaced_service(NAMESPACE, client.V1Service(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1ServiceSpec(selector={"app": name}, ports=[client.V1ServicePort(port=80, target_port=8080)])))
    script = "for i in 1 2 3 4 5 6 7 8 9 10; do out=$(nc -w 3 IP 80 </dev/null); " \
             '[ -n "$out" ] && { echo "got: $out"; exit 0; }; sleep 1; done; exit 1'
    try:
        wait_until(f"deployment {name} available", available(apps, name, 2), timeout=180)
        cluster_ip = core.read_namespaced_service(name, NAMESPACE).spec.cluster_ip
        assert "got: hello from wasm" in client_on_node_b(core, script.replace("IP", cluster_ip))
        before = {p.metadata.uid: (p.status.container_statuses[0].container_id,
                                   p.status.container_statuses[0].restart_count) for p in pods_of(core, name)}
        upgrade(cluster, {**release["values"], "shim": {"logLevel": "debug"}, "podAnnotations": {"e2e/upgrade": "1"}},
                tmp_path)
        assert "STATUS: deployed" in helm(cluster, "status", RELEASE, "-n", RELEASE_NS).stdout
        assert node_labels(core, "node-a").get(LABEL) == "ready"
        after = {p.metadata.uid: (p.status.container_statuses[0].container_id,
                                  p.status.container_statuses[0].restart_count) for p in pods_of(core, name)}
        assert after == before  # same pods, same containers, no restarts
        assert all(p.status.container_statuses[0].ready for p in pods_of(core, name))
        assert "got: hello from wasm" in client_on_node_b(core, script.replace("IP", cluster_ip))
    finally:
        absent_ok(core.delete_namespaced_service, name, NAMESPACE)
        delete_deployment(apps, core, name)


def test_install_on_a_node_whose_containerd_config_cannot_change_fails_visibly(cluster: Cluster, release: dict,
                                                                               tmp_path: Path) -> None:
    # node-b's /etc/containerd/config.toml bound read-only over itself inside node-b's mount namespace (what the
    # installer's hostPath of / sees), then a second release selecting node-b only. The installer cannot replace
    # the config: node-b is labelled `failed` with the reason in an annotation and a Warning event, the installer
    # pod is not Ready; node-a, its wasm pod and node-b's
    # config are untouched, and uninstalling that release leaves node-b as it was. helm sees it too: the
    # DaemonSet's maxUnavailable 0 makes --wait wait for every selected node, so the install fails and
    # `helm status` says failed.
    apps = client.AppsV1Api(cluster.api)
    core = client.CoreV1Api(cluster.api)
    wait_until("node-a labelled ready", lambda: node_labels(core, "node-a").get(LABEL) == "ready", timeout=180)
    name = f"wasm-beside-{uuid.uuid4().hex[:6]}"
    apps.create_namespaced_deployment(NAMESPACE, wasm_deployment(
        name, [wasm_container("guest", images.WASM_SLEEP, ["3600"])]))
    before = cluster.node_exec("node-b", "cat", CONFIG).stdout
    for argv in (["mount", "--bind", CONFIG, CONFIG], ["mount", "-o", "remount,bind,ro", CONFIG]):
        result = cluster.node_exec("node-b", *argv)
        assert result.returncode == 0, result.stderr
    other, other_ns = "wasm-shim-b", "wasm-system-b"
    try:
        wait_until(f"deployment {name} available", available(apps, name, 1), timeout=180)
        [beside] = pods_of(core, name)
        values = {**release["values"], "nodeSelector": {"kubernetes.io/hostname": "node-b", OPT_IN: None},
                  "runtimeClass": {"create": False}, "test": {"enabled": False}}
        values_file = tmp_path / "values.yaml"
        values_file.write_text(yaml.safe_dump(values))
        result = helm(cluster, "install", other, str(CHART), "-n", other_ns, "--create-namespace",
                      "-f", str(values_file), "--wait", "--timeout", "90s")
        assert result.returncode != 0, result.stdout + result.stderr
        assert "context deadline exceeded" in result.stderr or "timed out" in result.stderr, result.stderr
        assert "STATUS: failed" in helm(cluster, "status", other, "-n", other_ns).stdout
        wait_until("node-b labelled failed", lambda: node_labels(core, "node-b").get(LABEL) == "failed", timeout=180)
        reason = core.read_node("node-b").metadata.annotations.get("wasm.shim.io/runtime-reason", "")
        assert CONFIG in reason, reason
        events = core.list_namespaced_event(NAMESPACE, field_selector="involvedObject.kind=Node,"
                                                                      "involvedObject.name=node-b,"
                                                                      "reason=WasmShimInstallFailed").items
        assert events and CONFIG in events[0].message
        [installer] = installer_pods(core, other_ns)
        assert installer.spec.node_name == "node-b"
        assert not all(s.ready for s in installer.status.container_statuses or [])
        # The rest of the cluster keeps running.
        pod = core.read_namespaced_pod(beside.metadata.name, NAMESPACE)
        assert pod.status.phase == "Running" and pod.status.container_statuses[0].restart_count == 0
        assert node_labels(core, "node-a").get(LABEL) == "ready"
        assert cluster.node_exec("node-b", "cat", CONFIG).stdout == before
    finally:
        result = helm(cluster, "uninstall", other, "-n", other_ns, "--wait", "--timeout", "3m")
        cluster.node_exec("node-b", "umount", CONFIG)
        absent_ok(core.delete_namespace, other_ns)
        core.patch_node("node-b", {"metadata": {"labels": {LABEL: None},
                                                "annotations": {"wasm.shim.io/runtime-reason": None}}})
        delete_deployment(apps, core, name)
    assert result.returncode == 0, f"helm uninstall {other} failed:\n{result.stdout}{result.stderr}"
    assert cluster.node_exec("node-b", "cat", CONFIG).stdout == before


def test_a_node_with_another_wasmtime_shim_is_labelled_failed_and_left_alone(cluster: Cluster, release: dict,
                                                                            tmp_path: Path) -> None:
    # node-b's containerd already has a `wasmtime` runtime of another installer (runwasi's runtime type and binary
    # name; not restarted, as an operator's edit waiting for the next restart would be). A release selecting
    # node-b refuses it: label failed with the reason, a Warning event, the config byte for byte as it was.
    core = client.CoreV1Api(cluster.api)
    before = cluster.node_exec("node-b", "cat", CONFIG).stdout
    theirs = ('\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.wasmtime]\n'
              '  runtime_type = "io.containerd.wasmtime.v1"\n')
    cluster.node_ok("node-b", "sh", "-c", f'printf "%s" "$1" > {CONFIG}', "sh", before + theirs)
    other, other_ns = "wasm-shim-foreign", "wasm-system-foreign"
    values = {**release["values"], "nodeSelector": {"kubernetes.io/hostname": "node-b", OPT_IN: None},
              "runtimeClass": {"create": False}, "test": {"enabled": False}}
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    try:
        result = helm(cluster, "install", other, str(CHART), "-n", other_ns, "--create-namespace",
                      "-f", str(values_file), "--wait", "--timeout", "90s")
        assert result.returncode != 0, result.stdout + result.stderr
        wait_until("node-b labelled failed", lambda: node_labels(core, "node-b").get(LABEL) == "failed", timeout=180)
        reason = core.read_node("node-b").metadata.annotations.get("wasm.shim.io/runtime-reason", "")
        assert "runtimes.wasmtime] (runtime_type 'io.containerd.wasmtime.v1') is a runtime for handler wasmtime " \
               "that this installer did not write. Refusing to take it over; nothing was changed" in reason, reason
        events = core.list_namespaced_event(NAMESPACE, field_selector="involvedObject.kind=Node,"
                                                                      "involvedObject.name=node-b,"
                                                                      "reason=WasmShimInstallFailed").items
        assert any("Refusing to take it over" in e.message for e in events)
        assert cluster.node_exec("node-b", "cat", CONFIG).stdout == before + theirs
        assert cluster.node_exec("node-b", "test", "-e", "/opt/wasm-shim").returncode != 0
        assert cluster.node_exec("node-b", "test", "-e", "/usr/local/bin/containerd-shim-wasmtime-v1").returncode != 0
    finally:
        result = helm(cluster, "uninstall", other, "-n", other_ns, "--wait", "--timeout", "3m")
        absent_ok(core.delete_namespace, other_ns)
        core.patch_node("node-b", {"metadata": {"labels": {LABEL: None},
                                                "annotations": {"wasm.shim.io/runtime-reason": None}}})
        cluster.node_ok("node-b", "sh", "-c", f'printf "%s" "$1" > {CONFIG}', "sh", before)
    assert result.returncode == 0, f"helm uninstall {other} failed:\n{result.stdout}{result.stderr}"


def test_a_node_the_bundle_cannot_start_on_is_labelled_failed_before_its_config_changes(
        cluster: Cluster, release: dict, guests: Path, tmp_path: Path) -> None:
    # An installer image whose bundle's component runner needs GLIBC_2.99 (the real runner with the version its
    # libc symbols need renamed: what a runner linked on a newer glibc than the node's looks like to the node's
    # loader). `bundle build` reports that floor; the installer on node-b runs the bundle on the node first and
    # labels it failed with the loader's message, before containerd's config changes.
    from tests.unit.test_node_installer import needing_glibc_2_99, patched_runner

    core = client.CoreV1Api(cluster.api)
    ref = "wasm-shim.local/installer:e2e-glibc-2.99"
    tar = installer_image(tmp_path, guests, runner=patched_runner(tmp_path, "runner", needing_glibc_2_99), ref=ref)
    assert json.loads((tmp_path / "bundle" / "BUNDLE.json").read_text())["glibc"] == "2.99"
    for node in cl.NODES:  # the release's pre-delete hook pod may run on either node
        cl.load_image(cluster.state, node, tar)
    before = cluster.node_exec("node-b", "cat", CONFIG).stdout
    other, other_ns = "wasm-shim-glibc", "wasm-system-glibc"
    values = {**release["values"], "image": {**release["values"]["image"], "tag": ref.rsplit(":", 1)[1]},
              "nodeSelector": {"kubernetes.io/hostname": "node-b", OPT_IN: None},
              "runtimeClass": {"create": False}, "test": {"enabled": False}}
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    try:
        result = helm(cluster, "install", other, str(CHART), "-n", other_ns, "--create-namespace",
                      "-f", str(values_file), "--wait", "--timeout", "90s")
        assert result.returncode != 0, result.stdout + result.stderr
        wait_until("node-b labelled failed", lambda: node_labels(core, "node-b").get(LABEL) == "failed", timeout=180)
        reason = core.read_node("node-b").metadata.annotations.get("wasm.shim.io/runtime-reason", "")
        assert "the bundle cannot start on this node: the component runner" in reason, reason
        assert "version `GLIBC_2.99' not found" in reason and "glibc >= 2.99" in reason, reason
        assert cluster.node_exec("node-b", "cat", CONFIG).stdout == before
        assert cluster.node_exec("node-b", "test", "-e", "/opt/wasm-shim").returncode != 0
        assert node_labels(core, "node-a").get(LABEL) == "ready"
    finally:
        result = helm(cluster, "uninstall", other, "-n", other_ns, "--wait", "--timeout", "3m")
        absent_ok(core.delete_namespace, other_ns)
        core.patch_node("node-b", {"metadata": {"labels": {LABEL: None},
                                                "annotations": {"wasm.shim.io/runtime-reason": None}}})
    assert result.returncode == 0, f"helm uninstall {other} failed:\n{result.stdout}{result.stderr}"
    assert cluster.node_exec("node-b", "cat", CONFIG).stdout == before


def upgrade(cluster: Cluster, values: dict, work: Path) -> None:
    """`helm upgrade --wait` of the release to ``values``; then the rolled installer pod is the only one and Ready
    (maxSurge: the old one goes once the new one is Ready)."""
    core = client.CoreV1Api(cluster.api)
    before = {p.metadata.uid for p in installer_pods(core)}
    values_file = work / f"values-{uuid.uuid4().hex[:6]}.yaml"
    values_file.write_text(yaml.safe_dump(values))
    result = helm(cluster, "upgrade", RELEASE, str(CHART), "-n", RELEASE_NS, "-f", str(values_file),
                  "--wait", "--timeout", "5m")
    assert result.returncode == 0, f"helm upgrade failed:\n{result.stdout}{result.stderr}"

    def rolled() -> bool:
        pods = installer_pods(core)
        return len(pods) == 1 and pods[0].metadata.uid not in before and \
            all(s.ready for s in pods[0].status.container_statuses or [False])
    wait_until("the upgraded installer pod alone and Ready", rolled, timeout=180)


def test_signature_policy_from_chart_values_refuses_unsigned_and_runs_signed(cluster: Cluster, release: dict,
                                                                              guests: Path, tmp_path: Path) -> None:
    # An enforcing policy set through the chart's values. Two artifacts in the cluster's registry,
    # one signed with the e2e key (`wasm-shim sign`, cosign's bundle format). After `helm upgrade` the installer
    # has written the policy onto node-a and the shim daemon already running there re-reads it at the next Create:
    # the unsigned pod's refusal shows in `kubectl describe`, the signed pod runs. Back to no policy afterwards.
    core = client.CoreV1Api(cluster.api)
    password = "e2e-password"
    keygen = subprocess.run([str(ROOT / ".venv" / "bin" / "wasm-shim"), "generate-key-pair", "--output-key-prefix",
                             str(tmp_path / "e2e")], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "COSIGN_PASSWORD": password})
    assert keygen.returncode == 0, keygen.stderr
    signed = cluster.push_artifact(guests / "hello.wasm", "e2e/policy-signed:v1")
    unsigned = cluster.push_artifact(guests / "sleep.wasm", "e2e/policy-unsigned:v1")
    sign = cluster.node_exec("node-a", "env", f"COSIGN_PASSWORD={password}", str(ROOT / ".venv" / "bin" / "wasm-shim"),
                             "sign", "--key", str(tmp_path / "e2e.key"), "--insecure-registry", cl.REGISTRY, signed)
    assert sign.returncode == 0, sign.stdout + sign.stderr
    # No `[registry] insecure` for the plain-HTTP cluster registry: the shim follows the hosts.toml containerd pulls
    # with (its config_path), which says http://.
    policy = (f'default = "allow"\n[[rule]]\nimages = ["{cl.REGISTRY}/e2e/policy-*"]\nkeys = ["e2e.pub"]\n'
              'mode = "enforce"\n[registry]\ntimeout = 10\n')
    upgrade(cluster, {**release["values"], "signaturePolicy": {
        "toml": policy, "keys": {"e2e.pub": (tmp_path / "e2e.pub").read_text()}}}, tmp_path)
    suffix = uuid.uuid4().hex[:6]
    # By tag, as a pod author writes it: containerd resolves the digest the policy then checks.
    pods = {f"unsigned-{suffix}": unsigned.rsplit("@", 1)[0] + ":v1",
            f"signed-{suffix}": signed.rsplit("@", 1)[0] + ":v1"}
    try:
        assert cluster.node_exec("node-a", "cat", NODE_POLICY).stdout == policy
        for name, image in pods.items():
            core.create_namespaced_pod(NAMESPACE, client.V1Pod(
                metadata=client.V1ObjectMeta(name=name),
                spec=client.V1PodSpec(runtime_class_name="wasmtime", restart_policy="Never",
                                      termination_grace_period_seconds=2, containers=[client.V1Container(
                                          # An artifact has no entrypoint: the command names the module by its
                                          # title (docs/cri.md "Wasm OCI artifacts").
                                          name="guest", image=image, image_pull_policy="IfNotPresent",
                                          command=["/sleep.wasm"] if name.startswith("unsigned") else ["/hello.wasm"],
                                          args=["3600"] if name.startswith("unsigned") else None)])))
        unsigned_pod, signed_pod = pods

        def refusal() -> str | None:
            found = [e.message for e in core.list_namespaced_event(
                NAMESPACE, field_selector=f"involvedObject.name={unsigned_pod},reason=Failed").items
                if "signature policy" in (e.message or "")]
            return found[0] if found else None
        message = wait_until("the unsigned pod's refusal event", refusal, timeout=180)
        assert "refused by the signature policy" in message and f"{cl.REGISTRY}/e2e/policy-unsigned" in message, \
            message
        describe = cluster.kubectl("describe", "pod", unsigned_pod, "-n", NAMESPACE)
        assert "refused by the signature policy" in describe.stdout, describe.stdout[-2000:]
        state = core.read_namespaced_pod(unsigned_pod, NAMESPACE).status.container_statuses[0]
        assert not state.ready and state.state.running is None
        wait_until("the signed pod finished", finished(core, signed_pod), timeout=180)
        pod = core.read_namespaced_pod(signed_pod, NAMESPACE)
        assert pod.status.phase == "Succeeded", pod.status
        assert "hello from wasm" in core.read_namespaced_pod_log(signed_pod, NAMESPACE)
    finally:
        for name in pods:
            absent_ok(core.delete_namespaced_pod, name, NAMESPACE, grace_period_seconds=0)
        upgrade(cluster, release["values"], tmp_path)
    allow_all = cluster.node_exec("node-a", "cat", NODE_POLICY).stdout
    assert 'default = "allow"' in allow_all and "[[rule]]" not in allow_all
