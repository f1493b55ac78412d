"""The installer's outcome on the Node object: label `wasm.shim.io/runtime=ready|failed`, annotations, events.

Owns the `kubernetes` client use (imported here only, so neither the shim binary nor the daemon ever loads it).
The RuntimeClass's `scheduling.nodeSelector` picks `wasm.shim.io/runtime=ready` nodes, so the label is what puts
wasm pods on a node and takes them off it.

Invariants: a failure to reach the API server is reported on stderr and never changes the installer's exit code
decision for the node itself (the node's files are already as the installer left them); the RBAC it needs is
exactly `patch` on nodes and `create` on events (charts/wasm-shim/templates/rbac.yaml), and what it writes is what
the chart's node restriction admits (templates/node-restriction.yaml): on its own Node only its handler's label
and two annotations (distributions.node_keys), events only about that Node, as COMPONENT.
"""

from __future__ import annotations

import datetime
import sys
from collections.abc import Sequence
from typing import Any

from .containerd_config import HANDLER
from .distributions import node_keys
from .installer import Reporter

COMPONENT = "wasm-shim-installer"


class KubeReporter(Reporter):
    def __init__(self, node_name: str, namespace: str = "default", kubeconfig: str = "",
                 events_namespace: str = "default", handler: str = HANDLER) -> None:
        from kubernetes import client, config

        if kubeconfig:
            config.load_kube_config(config_file=kubeconfig)
        else:
            config.load_incluster_config()
        self.node_name = node_name
        self.handler = handler
        self.label, self.reason_key, self.version_key = node_keys(handler)
        self.namespace = namespace  # where the installer's DaemonSet is
        # An event about a cluster-scoped object must be in "default" (the API server's event validation: an
        # involvedObject without a namespace allows only "" or "default"), as the kubelet's node events are.
        self.events_namespace = events_namespace
        self.core = client.CoreV1Api()
        self._client = client

    def _patch(self, labels: dict[str, Any], annotations: dict[str, Any]) -> None:
        body = {"metadata": {"labels": labels, "annotations": annotations}}
        self.core.patch_node(self.node_name, body)

    def _event(self, kind: str, reason: str, message: str) -> None:
        now = datetime.datetime.now(datetime.UTC)
        c = self._client
        event = c.CoreV1Event(
            metadata=c.V1ObjectMeta(generate_name=f"{self.node_name}.wasm-shim.", namespace=self.events_namespace),
            involved_object=c.V1ObjectReference(kind="Node", name=self.node_name, api_version="v1"),
            reason=reason, message=message[:1024], type=kind, first_timestamp=now, last_timestamp=now, count=1,
            source=c.V1EventSource(component=COMPONENT, host=self.node_name),
        )
        self.core.create_namespaced_event(self.events_namespace, event)

    def _safely(self, what: str, action: Any) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            action()
        except (ApiException, OSError) as exc:
            sys.stderr.write(f"wasm-shim node: could not {what} on node {self.node_name}: {exc}\n")

    def ready(self, version: str, layout: str) -> None:
        self._safely("label", lambda: self._patch({self.label: "ready"},
                                                   {self.version_key: version, self.reason_key: None}))
        message = f"wasm-shim {version} installed ({layout}); containerd has handler {self.handler}"
        self._safely("create an event", lambda: self._event("Normal", "WasmShimInstalled", message))

    def failed(self, reason: str, kept: str = "") -> None:
        if kept:
            # An upgrade that rolled back: the node still runs `kept`, so it stays schedulable for wasm pods; the
            # reason and the event say the new version did not go on.
            reason = f"upgrade failed, {kept} still installed: {reason}"
            self._safely("annotate", lambda: self._patch({self.label: "ready"}, {self.reason_key: reason[:1024]}))
            self._safely("create an event", lambda: self._event("Warning", "WasmShimUpgradeFailed", reason))
            return
        self._safely("label", lambda: self._patch({self.label: "failed"}, {self.reason_key: reason[:1024]}))
        self._safely("create an event", lambda: self._event("Warning", "WasmShimInstallFailed", reason))

    def removed(self, left: Sequence[str] = ()) -> None:
        self._safely("unlabel", lambda: self._patch({self.label: None},
                                                     {self.reason_key: None, self.version_key: None}))
        if left:
            # Not a failure: what stays is the operator's (their files, a table of ours they changed); they
            # should know it is there.
            message = "wasm-shim removed; left on the node: " + "; ".join(left)
            self._safely("create an event", lambda: self._event("Warning", "WasmShimUninstalledLeftSome", message))
            return
        self._safely("create an event", lambda: self._event("Normal", "WasmShimUninstalled",
                                                            "wasm-shim removed; containerd config restored"))

    def daemonset_going(self, name: str) -> bool:
        """True when DaemonSet `name` (the reporter's namespace) is gone or being deleted: helm uninstall."""
        from kubernetes.client.exceptions import ApiException

        try:
            ds = self._client.AppsV1Api().read_namespaced_daemon_set(name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return True
            sys.stderr.write(f"wasm-shim node: cannot read DaemonSet {self.namespace}/{name}: {exc.reason}; "
                             "leaving the node installed\n")
            return False
        return ds.metadata is None or ds.metadata.deletion_timestamp is not None


def check_log(pod: str, namespace: str, expect: str, timeout: float, kubeconfig: str = "") -> str:
    """"" once pod `pod` has Succeeded and its log holds `expect`; else what is wrong (the helm test's checker)."""
    import time

    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig)
    else:
        config.load_incluster_config()
    core = client.CoreV1Api()
    deadline = time.monotonic() + timeout
    phase = "unknown"
    while time.monotonic() < deadline:
        try:
            status = core.read_namespaced_pod(pod, namespace).status
            phase = (status.phase if status is not None else None) or "unknown"
        except ApiException as exc:
            return f"cannot read pod {namespace}/{pod}: {exc.status} {exc.reason}"
        if phase in ("Succeeded", "Failed"):
            break
        time.sleep(2)
    log = core.read_namespaced_pod_log(pod, namespace) if phase in ("Succeeded", "Failed") else ""
    if phase != "Succeeded":
        return f"pod {namespace}/{pod} is {phase}, not Succeeded (after at most {timeout:g} s); log: {log[-500:]!r}"
    if expect not in log:
        return f"pod {namespace}/{pod} succeeded but its log lacks {expect!r}: {log[-500:]!r}"
    return ""


def delete_daemonset(name: str, namespace: str, timeout: float, kubeconfig: str = "") -> str:
    """Delete DaemonSet `name` in the foreground and wait until it is gone; "" on success, else the problem.

    The chart's pre-delete hook: its installer pods get SIGTERM while the release's ServiceAccount and RBAC still
    exist, see the DaemonSet being deleted, and put their nodes back (they could not once helm had deleted their
    credentials). Foreground deletion keeps the DaemonSet (with a deletionTimestamp) until its pods are gone.
    """
    import time

    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig)
    else:
        config.load_incluster_config()
    apps = client.AppsV1Api()
    try:
        apps.delete_namespaced_daemon_set(name, namespace, propagation_policy="Foreground")
    except ApiException as exc:
        if exc.status == 404:
            return ""
        return f"cannot delete DaemonSet {namespace}/{name}: {exc.status} {exc.reason}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            apps.read_namespaced_daemon_set(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return ""
            return f"cannot read DaemonSet {namespace}/{name}: {exc.status} {exc.reason}"
        time.sleep(2)
    return f"DaemonSet {namespace}/{name} still exists after {timeout:g} s (its pods are still uninstalling?)"
