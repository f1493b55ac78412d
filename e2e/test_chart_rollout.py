"""The chart over both nodes, as an operator rolls it out: opt-in by node label, one containerd restart at a time,
and the chart as a subchart of an operator's own.

A release of its own with the chart's default nodeSelector (only nodes labelled `wasm.shim.io/install=true`) and
its default `node.maxConcurrentRestarts: 1`, and `maxSurge: 2` so the DaemonSet itself starts both nodes' pods
together: a first install over both nodes, an upgrade that must restart containerd on both (their configs were
rewritten without our table meanwhile, as a config-management run does), and the uninstall. Each node's
containerd log gives its restarts (from "Stop CRI service" to "containerd successfully booted"); no two overlap.
"""

from __future__ import annotations

import datetime
import re
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
    OPT_IN,
    RESTART_COMMAND,
    absent_ok,
    helm,
    installer_image,
    installer_pods,
    node_labels,
)
from lab.cluster import cluster as cl
from lab.cluster.topology import NODE_SUPPORT_DIR

RELEASE = "wasm-shim-rollout"
RELEASE_NS = "wasm-system-rollout"
NODES = ("node-a", "node-b")
_LINE = re.compile(r'^time="([^"]+)" .*msg="?(Stop CRI service|containerd successfully booted)')

pytestmark = pytest.mark.skipif(not CHART.is_dir(), reason="charts/wasm-shim is not in this tree yet")

Window = tuple[datetime.datetime, datetime.datetime]


def _time(text: str) -> datetime.datetime:
    # containerd writes RFC 3339 with nanoseconds; Python reads microseconds.
    text = re.sub(r"(\.\d{6})\d*", r"\1", text.replace("Z", "+00:00"))
    return datetime.datetime.fromisoformat(text)


def containerd_log(cluster: Cluster, node: str) -> Path:
    return cluster.state.node_dir(cl.node_by_name(node)) / "logs" / "containerd.log"


def restarts(log: Path, offset: int) -> list[Window]:
    """The restarts in a node's containerd log after byte `offset`: from the old process's first "Stop CRI
    service" to the new one's "containerd successfully booted"."""
    windows: list[Window] = []
    stopping: datetime.datetime | None = None
    with log.open("rb") as f:
        f.seek(offset)
        for raw in f:
            match = _LINE.match(raw.decode("utf-8", "replace"))
            if not match:
                continue
            at, what = _time(match.group(1)), match.group(2)
            if what == "Stop CRI service" and stopping is None:
                stopping = at
            elif what.startswith("containerd successfully booted") and stopping is not None:
                windows.append((stopping, at))
                stopping = None
    return windows


def assert_one_at_a_time(cluster: Cluster, offsets: dict[str, int], what: str) -> None:
    found = {node: restarts(containerd_log(cluster, node), offsets[node]) for node in NODES}
    assert all(len(w) == 1 for w in found.values()), f"{what}: one containerd restart per node expected: {found}"
    (a_start, a_end), (b_start, b_end) = found["node-a"][0], found["node-b"][0]
    print(f"{what}: containerd restarts, node-a {a_start:%H:%M:%S.%f} - {a_end:%H:%M:%S.%f}, "  # shown with -s
          f"node-b {b_start:%H:%M:%S.%f} - {b_end:%H:%M:%S.%f}")
    assert a_end < b_start or b_end < a_start, f"{what}: the two nodes' containerd restarts overlap: {found}"


def log_offsets(cluster: Cluster) -> dict[str, int]:
    return {node: containerd_log(cluster, node).stat().st_size for node in NODES}


@pytest.fixture
def opted_in(cluster: Cluster) -> Iterator[dict[str, str]]:
    """Both nodes opted in (the label the chart's default nodeSelector asks for); their containerd configs before,
    written back at the end if the test left them otherwise."""
    core = client.CoreV1Api(cluster.api)
    before = {node: cluster.node_ok(node, "cat", CONFIG) for node in NODES}
    for node in NODES:
        core.patch_node(node, {"metadata": {"labels": {OPT_IN: "true"}}})
    try:
        yield before
    finally:
        for node in NODES:
            core.patch_node(node, {"metadata": {"labels": {OPT_IN: None}}})
            if cluster.node_ok(node, "cat", CONFIG) != before[node]:
                cluster.node_ok(node, "sh", "-c", f'printf "%s" "$1" > {CONFIG}', "sh", before[node])
                cluster.node_ok(node, f"{NODE_SUPPORT_DIR}/restart-containerd")


@pytest.fixture(scope="module")
def installer(cluster: Cluster, guests: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The installer image from this clone, on both nodes."""
    tar = installer_image(tmp_path_factory.mktemp("installer"), guests)
    for node in cl.NODES:
        cl.load_image(cluster.state, node, tar)


def test_install_upgrade_and_uninstall_restart_one_node_at_a_time(cluster: Cluster, installer: None, tmp_path: Path,
                                                                   opted_in: dict[str, str]) -> None:
    core = client.CoreV1Api(cluster.api)
    values = {
        "image": {"repository": INSTALLER.rsplit(":", 1)[0], "tag": INSTALLER.rsplit(":", 1)[1],
                  "pullPolicy": "Never"},
        "node": {"restartCommand": RESTART_COMMAND},
        "maxSurge": 2,  # the DaemonSet replaces both nodes' pods at once: only the slots keep restarts apart
        "runtimeClass": {"create": False}, "test": {"enabled": False},
    }
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    installed = False
    try:
        offsets = log_offsets(cluster)
        result = helm(cluster, "install", RELEASE, str(CHART), "-n", RELEASE_NS, "--create-namespace",
                      "-f", str(values_file), "--wait", "--timeout", "5m")
        assert result.returncode == 0, f"helm install failed:\n{result.stdout}{result.stderr}"
        installed = True
        for node in NODES:
            wait_until(f"{node} labelled ready", lambda n=node: node_labels(core, n).get(LABEL) == "ready",
                       timeout=180)
        assert sorted(p.spec.node_name for p in installer_pods(core, RELEASE_NS)) == list(NODES)
        assert_one_at_a_time(cluster, offsets, "helm install")

        # Configuration management puts both configs back as they were (our table gone; containerd not
        # restarted); the upgrade's new installers put the table back and must restart containerd on both.
        for node in NODES:
            cluster.node_ok(node, "sh", "-c", f'printf "%s" "$1" > {CONFIG}', "sh", opted_in[node])
        rolled_from = {p.metadata.uid for p in installer_pods(core, RELEASE_NS)}
        offsets = log_offsets(cluster)
        values_file.write_text(yaml.safe_dump({**values, "podAnnotations": {"e2e/upgrade": uuid.uuid4().hex[:6]}}))
        result = helm(cluster, "upgrade", RELEASE, str(CHART), "-n", RELEASE_NS, "-f", str(values_file),
                      "--wait", "--timeout", "5m")
        assert result.returncode == 0, f"helm upgrade failed:\n{result.stdout}{result.stderr}"
        wait_until("both upgraded installer pods Ready", lambda: (
            len(pods := installer_pods(core, RELEASE_NS)) == 2 and not {p.metadata.uid for p in pods} & rolled_from
            and all(all(s.ready for s in p.status.container_statuses or [False]) for p in pods)), timeout=180)
        assert all("wasmtime" in cluster.node_ok(node, "cat", CONFIG) for node in NODES)
        assert_one_at_a_time(cluster, offsets, "helm upgrade")

        offsets = log_offsets(cluster)
        result = helm(cluster, "uninstall", RELEASE, "-n", RELEASE_NS, "--wait", "--timeout", "5m")
        assert result.returncode == 0, f"helm uninstall failed:\n{result.stdout}{result.stderr}"
        installed = False
        for node in NODES:
            wait_until(f"{node}'s label removed", lambda n=node: LABEL not in node_labels(core, n), timeout=180)
        assert_one_at_a_time(cluster, offsets, "helm uninstall")
        assert {node: cluster.node_ok(node, "cat", CONFIG) for node in NODES} == opted_in
    finally:
        if installed:
            helm(cluster, "uninstall", RELEASE, "-n", RELEASE_NS, "--wait", "--timeout", "5m")
        absent_ok(core.delete_namespace, RELEASE_NS)


def test_the_chart_installs_as_a_subchart(cluster: Cluster, installer: None, tmp_path: Path) -> None:
    # An operator's own chart that depends on ours, with `global` values of its own: helm install of the parent
    # installs on the opted-in node (node-a) only, and its uninstall puts node-a back.
    from tests.integration.test_chart import parent_chart

    core = client.CoreV1Api(cluster.api)
    before = cluster.node_ok("node-a", "cat", CONFIG)
    parent = parent_chart(tmp_path, {
        "global": {"imageRegistry": "registry.example.com", "team": "platform"},
        "wasm-shim": {"image": {"repository": INSTALLER.rsplit(":", 1)[0], "tag": INSTALLER.rsplit(":", 1)[1],
                                "pullPolicy": "Never"},
                      "node": {"restartCommand": RESTART_COMMAND}, "podLabels": {"team": "platform"},
                      "runtimeClass": {"create": False}, "test": {"enabled": False}}})
    env_home = ("--repository-cache", str(tmp_path / "cache"))
    result = helm(cluster, "dependency", "build", str(parent), *env_home)
    assert result.returncode == 0, result.stdout + result.stderr
    core.patch_node("node-a", {"metadata": {"labels": {OPT_IN: "true"}}})
    installed = False
    try:
        result = helm(cluster, "install", "platform", str(parent), "-n", "platform", "--create-namespace",
                      "--wait", "--timeout", "5m")
        assert result.returncode == 0, f"helm install of the parent chart failed:\n{result.stdout}{result.stderr}"
        installed = True
        wait_until("node-a labelled ready", lambda: node_labels(core, "node-a").get(LABEL) == "ready", timeout=180)
        assert LABEL not in node_labels(core, "node-b")
        [pod] = installer_pods(core, "platform")
        assert (pod.spec.node_name, pod.metadata.labels["team"]) == ("node-a", "platform")
        assert "wasmtime" in cluster.node_ok("node-a", "cat", CONFIG)
        result = helm(cluster, "uninstall", "platform", "-n", "platform", "--wait", "--timeout", "5m")
        assert result.returncode == 0, f"helm uninstall failed:\n{result.stdout}{result.stderr}"
        installed = False
        wait_until("node-a's label removed", lambda: LABEL not in node_labels(core, "node-a"), timeout=180)
        assert cluster.node_ok("node-a", "cat", CONFIG) == before
    finally:
        if installed:
            helm(cluster, "uninstall", "platform", "-n", "platform", "--wait", "--timeout", "5m")
        core.patch_node("node-a", {"metadata": {"labels": {OPT_IN: None}}})
        absent_ok(core.delete_namespace, "platform")
