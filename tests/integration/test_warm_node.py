"""Warm before the first pod, for real: a daemon that never idles out while its config is current, the images of
`warm_images` compiled as soon as it starts, and the installer's warm-up (shim/node/warmup.py) starting it through
containerd's CRI and pulling an artifact from a registry on loopback. The first container of a warmed image finds
its module in the daemon's memory: no compile on its path."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lab.containerd import Containerd, ContainerdFactory
from lab.cri_tools import HANDLER, CriNode, LocalRegistry, start_cri_node, wait_for
from lab.registries import push_artifact
from lab.shimtools import RUNTIME, daemon_pids, shim_log_text
from wasm_shim.oci.artifact import build_artifact
from wasm_shim.shim.node.warmup import STATUS_FILE, warm_up

pytestmark = pytest.mark.integration

IMAGE = "localhost/wasm-shim-test/warm-hello:latest"


def _status(containerd: Containerd) -> dict:  # type: ignore[type-arg]
    path = Path(containerd.env["WASM_SHIM_CACHE_DIR"]) / STATUS_FILE
    try:
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {}


def _first_container(node: CriNode, image: str) -> str:
    """Run one container of ``image`` in a wasm pod; the shim's debug line saying where its module came from."""
    pod = node.pod_config("first")
    pod_id = node.crictl.runp(pod, runtime=HANDLER)
    cid = node.crictl.create(pod_id, node.container_config("first", image, command=["/app.wasm"]), pod)
    node.crictl.run("start", cid)
    node.crictl.wait_state(cid, "CONTAINER_EXITED")
    assert node.crictl.logs(cid).stdout.strip() == "hello from wasm"
    found = re.findall(rf"task {cid}: module \S+ from (\w+)", shim_log_text(node.containerd))
    assert found, "no cache line for the first container"
    return str(found[0])


@pytest.fixture
def cri(request: pytest.FixtureRequest, containerd_factory: ContainerdFactory, guests: Path,
        tmp_path: Path) -> Iterator[Callable[..., CriNode]]:
    kind = request.node.callspec.params["containerd_factory"]
    nodes: list[CriNode] = []

    def make(env: dict[str, str], extra_config: str = "") -> CriNode:
        node = start_cri_node(containerd_factory, kind, guests / "pause", tmp_path / f"cri{len(nodes)}",
                              extra_config=extra_config, env=env)
        nodes.append(node)
        return node

    try:
        yield make
    finally:
        for node in nodes:
            node.teardown()


def test_a_daemon_started_for_the_node_compiles_its_warm_images_first(cri: Callable[..., CriNode],
                                                                      guests: Path) -> None:
    node = cri({"WASM_SHIM_IDLE_TIMEOUT": "never", "WASM_SHIM_WARM_IMAGES": IMAGE})
    node.image("warm-hello", {"/app.wasm": guests / "hello.wasm"}, entrypoint=["/app.wasm"])
    # The installer's warm-up with nothing to pull: containerd starts the daemon for a warm-up sandbox.
    said: list[str] = []
    assert warm_up(node.containerd.address, HANDLER, [], "", 60, said.append) == []
    assert len(daemon_pids(node.containerd)) == 1 and "the shim daemon is up" in said[0]
    assert node.crictl.json("pods").get("items", []) == [], "the warm-up sandbox is gone"
    wait_for(lambda: _status(node.containerd).get("done"), 60, "the daemon's warm status")
    outcome = _status(node.containerd)["outcomes"][IMAGE]
    assert outcome["state"] == "compiled" and outcome["detail"].startswith("module "), outcome
    assert _first_container(node, IMAGE) == "memory", "the first container found its module compiled"


def test_warm_up_pulls_an_artifact_and_the_first_pod_finds_it_compiled(
        cri: Callable[..., CriNode], guests: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if request.node.callspec.params["containerd_factory"] == "1.6":
        pytest.skip("containerd 1.6.20 unpacks every layer as a tar: wasm artifacts need containerd 2.x")
    registry = LocalRegistry(tmp_path / "registry").start()
    try:
        push_artifact(build_artifact((guests / "hello.wasm").read_bytes()), registry.address, "wasm/warm", "v1")
        ref = f"{registry.address}/wasm/warm:v1"
        hosts = registry.hosts_config(tmp_path / "certs.d")
        node = cri({"WASM_SHIM_IDLE_TIMEOUT": "never", "WASM_SHIM_WARM_IMAGES": ref},
                   extra_config=f'[plugins."io.containerd.cri.v1.images".registry]\n  config_path = "{hosts}"\n')
        said: list[str] = []
        status = str(Path(node.containerd.env["WASM_SHIM_CACHE_DIR"]) / STATUS_FILE)
        assert warm_up(node.containerd.address, HANDLER, [ref], status, 120, said.append) == [], said
        assert f"warm: pulled {ref}" in said and any(line.startswith(f"warm: {ref}: module ") for line in said)
        registry.stop()  # the pod's image is in containerd's store now; the module in the daemon's memory
        assert _first_container(node, ref) == "memory"
    finally:
        registry.stop()


def test_an_image_that_cannot_be_warmed_is_a_warning_not_a_failure(cri: Callable[..., CriNode]) -> None:
    missing = "localhost/wasm-shim-test/not-there:latest"
    node = cri({"WASM_SHIM_IDLE_TIMEOUT": "never", "WASM_SHIM_WARM_IMAGES": missing})
    said: list[str] = []
    status = str(Path(node.containerd.env["WASM_SHIM_CACHE_DIR"]) / STATUS_FILE)
    warnings = warm_up(node.containerd.address, HANDLER, [missing], status, 60, said.append)
    assert [w for w in warnings if w.startswith(f"cannot pull {missing}")], warnings
    wait_for(lambda: _status(node.containerd).get("done"), 60, "the daemon's warm status")
    outcome = _status(node.containerd)["outcomes"][missing]
    assert outcome["state"] == "failed" and "not in containerd's image store" in outcome["detail"]
    assert len(daemon_pids(node.containerd)) == 1, "the daemon serves on"


def test_a_kept_daemon_stays_until_its_config_changes(containerd_factory: ContainerdFactory, tmp_path: Path,
                                                      guests: Path, request: pytest.FixtureRequest) -> None:
    node_file = tmp_path / "wasm-shim.toml"
    node_file.write_text('idle_timeout = "never"\n')
    containerd = containerd_factory(env={"WASM_SHIM_CONFIG": str(node_file)})
    from wasm_shim.oci.layout import build_image_tar

    tar = tmp_path / "hello.tar"
    build_image_tar(tar, IMAGE, {"/app.wasm": guests / "hello.wasm"}, entrypoint=["/app.wasm"])
    containerd.import_image(tar)
    out = containerd.ctr("run", "--rm", "--runtime", RUNTIME, IMAGE, "kept", "/app.wasm")
    assert out.stdout.strip() == "hello from wasm"
    (pid,) = daemon_pids(containerd)
    time.sleep(3)  # three idle ticks: a daemon with idle_timeout 0 would be gone after the first
    assert daemon_pids(containerd) == [pid], "never idles out while its config is current"
    node_file.write_text('idle_timeout = "never"\n')  # rewritten, the same config: still current
    time.sleep(2)
    assert daemon_pids(containerd) == [pid]
    node_file.write_text('idle_timeout = "never"\nartifact_cache_mb = 512\n')  # an upgrade's new config
    wait_for(lambda: daemon_pids(containerd) == [], 10, "the superseded daemon to exit once idle")
    assert "no longer current" in shim_log_text(containerd)
