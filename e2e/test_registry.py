"""Wasm OCI artifacts pulled by the kubelet from the cluster's own registry (10.255.0.1:5000) and run on node-a.

The artifacts are pushed with `wasm-shim push` from inside node-a (the registry answers only inside the cluster's
network namespace) and pods name them by digest, so node-a's containerd 2.x pulls them like any image, over plain
HTTP as its /etc/containerd/certs.d hosts.toml says; the shim (put on node-a by conftest's ``shim_on_node_a``)
then finds the module in containerd's content store. An artifact's rootfs is empty and its config has no
entrypoint, so each pod names the module as its command (docs/cri.md, "Wasm OCI artifacts").

Also what a cluster user sees when the reference is wrong (ErrImagePull / ImagePullBackOff carrying the registry's
"not found") while an artifact pod beside it keeps running, and that node-b's containerd 1.6 reaches the same
registry but refuses to unpack an artifact (it unpacks every layer as a tar).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes import client

from e2e.conftest import NAMESPACE, SHIM_NODE, Cluster, unique, wait_until
from lab.cluster import cluster as cl

PULL_TIMEOUT = 180  # seconds for a pull, the first compile and the guest's start on a busy 2-core machine
PULL_FAILED = ("ErrImagePull", "ImagePullBackOff")


@pytest.fixture(scope="module")
def artifacts(cluster: Cluster, guests: Path) -> dict[str, str]:
    """hello.wasm and sleep.wasm pushed to the cluster's registry: name -> REGISTRY/REPOSITORY@sha256:..."""
    return {name: cluster.push_artifact(guests / f"{name}.wasm", f"e2e/{name}:v1") for name in ("hello", "sleep")}


def artifact_pod(name: str, image: str, command: list[str], *, args: list[str] | None = None,
                 runtime_class: str | None = None, node: str | None = None, restart: str = "Never") -> client.V1Pod:
    """One container running ``image``; a digest reference gets imagePullPolicy IfNotPresent, so the kubelet pulls."""
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PodSpec(
            runtime_class_name=runtime_class, restart_policy=restart, termination_grace_period_seconds=2,
            node_selector={"kubernetes.io/hostname": node} if node else None,
            containers=[client.V1Container(name="guest", image=image, command=command, args=args,
                                           resources=client.V1ResourceRequirements(limits={"memory": "64Mi"}))]))


def pull_failure(core: client.CoreV1Api, name: str) -> client.V1ContainerStateWaiting | None:
    """The container's waiting state once the kubelet reports the pull failed, else None."""
    statuses = core.read_namespaced_pod(name, NAMESPACE).status.container_statuses or []
    waiting = statuses[0].state.waiting if statuses else None
    return waiting if waiting is not None and waiting.reason in PULL_FAILED else None


def kubelet_events(core: client.CoreV1Api, name: str, reason: str) -> list[str]:
    """Messages of the pod's events with ``reason``: what `kubectl describe pod` lists."""
    events = core.list_namespaced_event(NAMESPACE, field_selector=f"involvedObject.name={name}").items
    return [e.message or "" for e in events if e.reason == reason]


def test_an_artifact_pod_on_node_a_completes_with_the_guest_output(core: client.CoreV1Api, pods,
                                                                   artifacts: dict[str, str],
                                                                   shim_on_node_a: str) -> None:
    image = artifacts["hello"]
    name = pods(artifact_pod(unique("hello-artifact"), image, ["/hello.wasm"], runtime_class=shim_on_node_a))
    wait_until(f"pod {name} finished", lambda: core.read_namespaced_pod(name, NAMESPACE).status.phase
               in ("Succeeded", "Failed"), timeout=PULL_TIMEOUT)
    pod = core.read_namespaced_pod(name, NAMESPACE)
    status = pod.status.container_statuses[0]
    assert pod.status.phase == "Succeeded", status
    assert pod.spec.node_name == SHIM_NODE  # the RuntimeClass's nodeSelector
    assert status.state.terminated.exit_code == 0
    # The kubelet ran exactly what was pushed: the image it reports is the pushed manifest's digest.
    assert status.image_id.endswith(image.rpartition("@")[2]), status.image_id
    assert core.read_namespaced_pod_log(name, NAMESPACE).strip() == "hello from wasm"


def test_a_reference_the_registry_lacks_fails_the_pull_while_an_artifact_pod_keeps_running(
        core: client.CoreV1Api, pods, artifacts: dict[str, str], shim_on_node_a: str) -> None:
    sleeper = pods(artifact_pod(unique("sleep-artifact"), artifacts["sleep"], ["/sleep.wasm"], args=["3600"],
                                runtime_class=shim_on_node_a, restart="Always"))
    wait_until(f"pod {sleeper} Running", lambda: core.read_namespaced_pod(sleeper, NAMESPACE).status.phase
               == "Running", timeout=PULL_TIMEOUT)
    log = wait_until("the sleeping guest's log", lambda: core.read_namespaced_pod_log(sleeper, NAMESPACE))
    assert "sleeping 3600 s" in str(log)

    # A digest that exists, in a repository nobody pushed to: the registry answers 404 for the manifest.
    missing = f"{cl.REGISTRY}/e2e/missing@{artifacts['hello'].rpartition('@')[2]}"
    broken = pods(artifact_pod(unique("missing-artifact"), missing, ["/hello.wasm"], runtime_class=shim_on_node_a))
    waiting = wait_until(f"pod {broken}: the pull of {missing} failed", lambda: pull_failure(core, broken),
                         timeout=PULL_TIMEOUT)
    assert isinstance(waiting, client.V1ContainerStateWaiting)
    assert missing in waiting.message and "not found" in waiting.message, waiting.message
    assert any("not found" in message for message in kubelet_events(core, broken, "Failed"))
    assert core.read_namespaced_pod(broken, NAMESPACE).status.phase == "Pending"

    pod = core.read_namespaced_pod(sleeper, NAMESPACE)
    assert pod.status.phase == "Running"
    assert pod.status.container_statuses[0].ready and pod.status.container_statuses[0].restart_count == 0


def test_node_b_containerd_1_6_reaches_the_registry_but_cannot_unpack_an_artifact(
        cluster: Cluster, core: client.CoreV1Api, pods, artifacts: dict[str, str]) -> None:
    image = artifacts["hello"]
    # containerd 1.6 keeps the image record of a pull whose unpack failed, so the kubelet's retry finds the image
    # "already present" and runc fails the start instead (no /hello.wasm). On a cluster used before, forget it.
    cluster.node_exec("node-b", cl.tool("crictl"), "--runtime-endpoint", "unix:///run/containerd/containerd.sock",
                      "rmi", image)  # "no such image" on a fresh cluster
    # Without node-b's hosts.toml the pull would stop at "server gave HTTP response to HTTPS client"; with it,
    # containerd 1.6 resolves and fetches the artifact, then fails where docs/cri.md says: unpacking a non-tar layer.
    name = pods(artifact_pod(unique("artifact-on-1-6"), image, ["/hello.wasm"], node="node-b"))
    failed = wait_until(f"pod {name}: a Failed event for the pull on node-b",
                        lambda: [m for m in kubelet_events(core, name, "Failed") if "Failed to pull" in m],
                        timeout=PULL_TIMEOUT)
    assert isinstance(failed, list)
    assert "mismatched image rootfs and manifest layers" in failed[0], failed
    assert "HTTPS" not in failed[0]


def test_artifacts_sharing_one_config_each_run_their_own_module(core: client.CoreV1Api, pods, cluster: Cluster,
                                                                guests: Path, shim_on_node_a: str) -> None:
    """Two artifacts pushed by the real oras with one config file: node-a's CRI holds them as one image (one config
    digest) under two names, and names a container's image by the first; each pod still runs its own module."""
    config = b'{"architecture":"wasm","os":"wasip1"}'
    first = cluster.oras_push(guests / "hello.wasm", config, "e2e/shared-a:v1")  # sorts first
    second = cluster.oras_push(guests / "args_env.wasm", config, "e2e/shared-b:v1")
    names = {}
    for label, image in (("a", first), ("b", second)):
        names[label] = pods(artifact_pod(unique(f"shared-{label}"), image, ["/m.wasm"],
                                         runtime_class=shim_on_node_a))
    for name in names.values():
        wait_until(f"pod {name} finished", lambda name=name: core.read_namespaced_pod(name, NAMESPACE).status.phase
                   in ("Succeeded", "Failed"), timeout=PULL_TIMEOUT)
    assert core.read_namespaced_pod_log(names["a"], NAMESPACE).strip() == "hello from wasm"
    assert core.read_namespaced_pod_log(names["b"], NAMESPACE).startswith("argv[0]=/m.wasm")
