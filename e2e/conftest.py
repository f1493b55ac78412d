"""The e2e suite's session fixture: one two-node cluster (e2e/cluster/) for the whole session, then torn down.

Every test here is marked ``e2e``. The fixture builds what is missing first (Kubernetes and etcd through
e2e/cluster/build, cached in ~/.cache/wasm-shim; the node images from tests/guests), starts the cluster in a
state directory of its own (so a cluster a person started with e2e/cluster/up is left alone), and at the end
asserts that ``down`` left nothing behind.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from e2e.cluster import cluster as cl
from e2e.cluster import images

BUILD_TIMEOUT = 3600  # seconds: a cold Kubernetes build is ~25 CPU-minutes, longer on a shared machine
ROOT = Path(__file__).resolve().parents[1]

pytest_plugins = ["tests.guests.fixtures"]


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
