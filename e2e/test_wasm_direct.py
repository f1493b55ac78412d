"""Wasm pods on a real kubelet with the shim put on one node by hand (no chart): what the installer automates.

The shim is put on node-a by e2e/conftest.py's module fixture ``shim_on_node_a`` (link, `wasm-shim
containerd-config --merge`, restart, k8s/runtimeclass.yaml, the node label), which undoes every step afterwards and
checks that the node's containerd config is byte-identical to before. The images are the ones every node imported
at start (lab/cluster/images.py), so pods never pull.
"""

from __future__ import annotations

import uuid

from kubernetes import client

from e2e.conftest import SHIM_NODE as NODE
from e2e.conftest import Cluster, wait_until
from lab.cluster import cluster as cl
from lab.cluster import images

NAMESPACE = "default"


def wasm_pod_spec(runtime_class: str, image: str, args: list[str], restart: str) -> client.V1PodSpec:
    return client.V1PodSpec(
        runtime_class_name=runtime_class, restart_policy=restart, termination_grace_period_seconds=2,
        containers=[client.V1Container(name="guest", image=image, image_pull_policy="Never", args=args,
                                       resources=client.V1ResourceRequirements(limits={"memory": "64Mi"}))])


def test_wasm_deployment_ready_on_the_labelled_node_only(cluster: Cluster, shim_on_node_a: str) -> None:
    apps = client.AppsV1Api(cluster.api)
    core = client.CoreV1Api(cluster.api)
    name = f"wasm-sleep-{uuid.uuid4().hex[:6]}"
    deployment = client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1DeploymentSpec(
            replicas=2, selector=client.V1LabelSelector(match_labels={"app": name}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"app": name}),
                spec=wasm_pod_spec(shim_on_node_a, images.WASM_SLEEP, ["3600"], "Always"))))
    apps.create_namespaced_deployment(NAMESPACE, deployment)
    try:
        wait_until(f"deployment {name} available", lambda: (apps.read_namespaced_deployment(name, NAMESPACE)
                                                            .status.available_replicas or 0) == 2, timeout=120)
        pods = core.list_namespaced_pod(NAMESPACE, label_selector=f"app={name}").items
        assert {p.spec.node_name for p in pods} == {NODE}  # the RuntimeClass's scheduling keeps them off node-b
        for pod in pods:
            log = wait_until("the guest's log", lambda p=pod: core.read_namespaced_pod_log(p.metadata.name,
                                                                                           NAMESPACE))
            assert "sleeping 3600 s" in str(log)
    finally:
        apps.delete_namespaced_deployment(name, NAMESPACE)
        wait_until("the deployment's pods gone", lambda: not core.list_namespaced_pod(
            NAMESPACE, label_selector=f"app={name}").items, timeout=90)
    # Deleting the pods stopped the guests: no container of that image has a running task in node-a's containerd.
    # (The container records themselves may outlive the pods: the kubelet removes them in its own garbage
    # collection, a minute or more later.)
    _, ctr = cl.containerd_binaries(cl.node_by_name(NODE))
    containers = cluster.node_ok(NODE, ctr, "-n", "k8s.io", "containers", "ls")
    guests = {line.split()[0] for line in containers.splitlines()[1:] if images.WASM_SLEEP in line}
    tasks = cluster.node_ok(NODE, ctr, "-n", "k8s.io", "tasks", "ls")
    running = [line for line in tasks.splitlines()[1:] if line.split() and line.split()[0] in guests
               and "RUNNING" in line]
    assert not running, tasks


def test_wasm_job_completes_with_the_guest_output(cluster: Cluster, shim_on_node_a: str) -> None:
    batch = client.BatchV1Api(cluster.api)
    core = client.CoreV1Api(cluster.api)
    name = f"wasm-hello-{uuid.uuid4().hex[:6]}"
    job = client.V1Job(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1JobSpec(backoff_limit=0, template=client.V1PodTemplateSpec(
            spec=wasm_pod_spec(shim_on_node_a, images.WASM_HELLO, [], "Never"))))
    batch.create_namespaced_job(NAMESPACE, job)
    try:
        wait_until(f"job {name} complete", lambda: (batch.read_namespaced_job(name, NAMESPACE).status.succeeded
                                                    or 0) == 1, timeout=120)
        pod = core.list_namespaced_pod(NAMESPACE, label_selector=f"job-name={name}").items[0]
        assert pod.spec.node_name == NODE
        assert core.read_namespaced_pod_log(pod.metadata.name, NAMESPACE).strip() == "hello from wasm"
        assert pod.status.container_statuses[0].state.terminated.exit_code == 0
    finally:
        batch.delete_namespaced_job(name, NAMESPACE, propagation_policy="Foreground")
