"""`helm uninstall` after an operator edited node-a's containerd config: their edit stays, our table goes.

The sequence an operator's node goes through: `helm install`, the operator adds a runtime of their own to
containerd's config (and a comment), `helm upgrade` (the DaemonSet's pod rolls, the new installer runs again and
finds our table), `helm uninstall`. Afterwards the file is the one the operator left minus our block, byte for
byte, and containerd was restarted on it: CRI knows the operator's runtime and no longer ours. A release of its
own (node-a only, no RuntimeClass, no helm test), after e2e/test_chart.py's release is gone; node-a's config is
put back as it was at the end.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from e2e.conftest import Cluster, wait_until
from e2e.test_chart import (
    CHART,
    CONFIG,
    INSTALLER,
    LABEL,
    RESTART_COMMAND,
    absent_ok,
    helm,
    installer_image,
    installer_pods,
    node_labels,
)
from lab.cluster import cluster as cl
from lab.cluster.topology import NODE_SUPPORT_DIR

RELEASE = "wasm-shim-edit"
RELEASE_NS = "wasm-system-edit"
GENERATION = f"{NODE_SUPPORT_DIR}/containerd.generation"  # bumped by the node's supervisor at each restart
OPERATOR_EDIT = ("\n# the operator's own runtime, added while wasm-shim was installed\n"
                 "[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.e2e-operator]\n"
                 "  runtime_type = \"io.containerd.runc.v2\"\n")

pytestmark = pytest.mark.skipif(not CHART.is_dir(), reason="charts/wasm-shim is not in this tree yet")


def write_config(cluster: Cluster, text: str) -> None:
    """Replace node-a's containerd config with `text`, exactly (inside the node's mount namespace)."""
    cluster.node_ok("node-a", "sh", "-c", f'printf "%s" "$1" > {CONFIG}', "sh", text)


def cri_runtimes(cluster: Cluster) -> set[str]:
    """The runtime handlers node-a's running containerd has loaded (`crictl info`)."""
    info = cluster.node_ok("node-a", cl.tool("crictl"), "--runtime-endpoint", "unix:///run/containerd/containerd.sock",
                           "info")
    return set(json.loads(info)["config"]["containerd"]["runtimes"])


@pytest.fixture
def node_a_config(cluster: Cluster) -> Iterator[str]:
    """node-a's containerd config before the test; written back (and containerd restarted on it) afterwards."""
    before = cluster.node_ok("node-a", "cat", CONFIG)
    try:
        yield before
    finally:
        if cluster.node_ok("node-a", "cat", CONFIG) != before:
            write_config(cluster, before)
            cluster.node_ok("node-a", f"{NODE_SUPPORT_DIR}/restart-containerd")


def test_operator_edit_survives_helm_upgrade_and_uninstall(cluster: Cluster, guests: Path, tmp_path: Path,
                                                           node_a_config: str) -> None:
    core = client.CoreV1Api(cluster.api)
    cl.load_image(cluster.state, cl.node_by_name("node-a"), installer_image(tmp_path, guests))
    values = {
        "image": {"repository": INSTALLER.rsplit(":", 1)[0], "tag": INSTALLER.rsplit(":", 1)[1],
                  "pullPolicy": "Never"},
        "nodeSelector": {"kubernetes.io/hostname": "node-a", "wasm.shim.io/install": None},  # no opt-in label
        "node": {"restartCommand": RESTART_COMMAND},
        "runtimeClass": {"create": False}, "test": {"enabled": False},
    }
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    installed = False
    try:
        result = helm(cluster, "install", RELEASE, str(CHART), "-n", RELEASE_NS, "--create-namespace",
                      "-f", str(values_file), "--wait", "--timeout", "5m")
        assert result.returncode == 0, f"helm install failed:\n{result.stdout}{result.stderr}"
        installed = True
        wait_until("node-a labelled ready", lambda: node_labels(core, "node-a").get(LABEL) == "ready", timeout=180)
        assert "wasmtime" in cri_runtimes(cluster)

        # The operator's edit, while the shim is installed; containerd not restarted for it.
        edited = cluster.node_ok("node-a", "cat", CONFIG) + OPERATOR_EDIT
        write_config(cluster, edited)

        # helm upgrade: the DaemonSet's pod rolls; the new installer finds our table and changes nothing.
        rolled_from = {p.metadata.uid for p in installer_pods(core, RELEASE_NS)}
        upgraded = {**values, "podAnnotations": {"e2e/upgrade": uuid.uuid4().hex[:6]}}
        values_file.write_text(yaml.safe_dump(upgraded))
        result = helm(cluster, "upgrade", RELEASE, str(CHART), "-n", RELEASE_NS, "-f", str(values_file),
                      "--wait", "--timeout", "5m")
        assert result.returncode == 0, f"helm upgrade failed:\n{result.stdout}{result.stderr}"
        wait_until("the upgraded installer pod alone and Ready", lambda: (
            len(pods := installer_pods(core, RELEASE_NS)) == 1 and pods[0].metadata.uid not in rolled_from
            and all(s.ready for s in pods[0].status.container_statuses or [False])), timeout=180)
        assert cluster.node_ok("node-a", "cat", CONFIG) == edited

        generation = cluster.node_ok("node-a", "cat", GENERATION)
        result = helm(cluster, "uninstall", RELEASE, "-n", RELEASE_NS, "--wait", "--timeout", "5m")
        assert result.returncode == 0, f"helm uninstall failed:\n{result.stdout}{result.stderr}"
        installed = False
        wait_until("node-a's label removed", lambda: LABEL not in node_labels(core, "node-a"), timeout=180)
    finally:
        if installed:
            helm(cluster, "uninstall", RELEASE, "-n", RELEASE_NS, "--wait", "--timeout", "5m")
        absent_ok(core.delete_namespace, RELEASE_NS)

    # The operator's file, minus our block, byte for byte: their runtime and comment are there, ours is not.
    assert cluster.node_ok("node-a", "cat", CONFIG) == node_a_config + OPERATOR_EDIT
    # containerd was restarted on those bytes: its CRI has the operator's runtime (never restarted for it
    # before) and no longer ours.
    assert cluster.node_ok("node-a", "cat", GENERATION) != generation
    runtimes = cri_runtimes(cluster)
    assert "e2e-operator" in runtimes and "wasmtime" not in runtimes, sorted(runtimes)
    # Nothing of the install is left on the node.
    assert cluster.node_exec("node-a", "test", "-e", "/opt/wasm-shim").returncode != 0
    assert cluster.node_exec("node-a", "test", "-e", "/usr/local/bin/containerd-shim-wasmtime-v1").returncode != 0
