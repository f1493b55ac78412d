"""The Kubernetes node path. RuntimeClass handler `wasmtime` through containerd's CRI, driven by real
`crictl` (no kubelet) against a private containerd 1.6 and 2.x with CNI and a locally built pause image.

Each step asserts what a user sees: `crictl logs` output, states in `crictl ps -a`/`pods`, exit codes in
`crictl inspect`, error text from `crictl runp`/`create`.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from lab.containerd import ARTIFACT_PULL_KINDS, CONFIG_V2_KINDS, ContainerdFactory
from lab.cri_tools import HANDLER, CrictlError, CriNode, LocalRegistry, start_cri_node, wait_for
from lab.fixtures import BUSYBOX, BUSYBOX_APPLETS
from lab.registries import push_artifact
from lab.shimtools import daemon_pids, shim_log_text
from wasm_shim.oci.artifact import Artifact, build_artifact
from wasm_shim.oci.layout import MEDIA_TYPE_MANIFEST, Blob, Symlink
from wasm_shim.shim.cli.main import main as cli_main

# The CRI path runs on containerd 1.7 too (lab/fixtures.py): the release many clusters still run.
pytestmark = [pytest.mark.integration, pytest.mark.containerd_1_7]


CriNodeFactory = Callable[..., CriNode]


@pytest.fixture
def cri_node_factory(
    request: pytest.FixtureRequest, containerd_factory: ContainerdFactory, guests: Path, tmp_path: Path
) -> Iterator[CriNodeFactory]:
    """Factory(runtime_options=(), extra_config="") -> a CRI node on this test's containerd kind."""
    kind = request.node.callspec.params["containerd_factory"]
    nodes: list[CriNode] = []

    def factory(runtime_options: Sequence[str] = (), extra_config: str = "") -> CriNode:
        node = start_cri_node(containerd_factory, kind, guests / "pause", tmp_path / f"cri{len(nodes)}",
                              runtime_options=runtime_options, extra_config=extra_config)
        nodes.append(node)
        return node

    try:
        yield factory
    finally:
        for node in nodes:
            node.teardown()


@pytest.fixture
def cri_node(cri_node_factory: CriNodeFactory) -> CriNode:
    return cri_node_factory()


def busybox_files() -> dict[str, object]:
    files: dict[str, object] = {"/bin/busybox": BUSYBOX}
    files.update({f"/bin/{applet}": Symlink("busybox") for applet in BUSYBOX_APPLETS})
    return files


def test_runc_pod_baseline(cri_node: CriNode) -> None:
    """The harness itself: a runc pod with a busybox container, as any node runs it."""
    crictl = cri_node.crictl
    image = cri_node.image("busybox", busybox_files(), entrypoint=["/bin/sh"])  # type: ignore[arg-type]
    pod = cri_node.pod_config("baseline")
    pod_id = crictl.runp(pod, runtime="runc")
    assert crictl.pod_state(pod_id) == "SANDBOX_READY"
    ctr = cri_node.container_config("echo", image, command=["/bin/echo"], args=["hello from runc"])
    cid = crictl.create(pod_id, ctr, pod)
    crictl.run("start", cid)
    crictl.wait_state(cid, "CONTAINER_EXITED")
    assert crictl.logs(cid).stdout.strip() == "hello from runc"
    assert crictl.inspect(cid)["exitCode"] == 0
    crictl.run("rm", cid)
    crictl.run("stopp", pod_id)
    crictl.run("rmp", pod_id)
    assert crictl.pod_state(pod_id) == ""


# -- the wasmtime handler: the pause container runs native (runc) inside our shim, app containers in wasmtime --
def _wasm_pod(cri_node: CriNode, name: str) -> tuple[str, Path]:
    pod = cri_node.pod_config(name)
    pod_id = cri_node.crictl.runp(pod, runtime=HANDLER)
    assert cri_node.crictl.pod_state(pod_id) == "SANDBOX_READY"
    return pod_id, pod


def test_wasm_pod_lifecycle(cri_node: CriNode, guests: Path) -> None:
    crictl = cri_node.crictl
    hello = cri_node.wasm_image("hello", guests / "hello.wasm")
    exit_code = cri_node.wasm_image("exitcode", guests / "exit_code.wasm")
    stderr = cri_node.wasm_image("stderr", guests / "stderr.wasm")
    pod_id, pod = _wasm_pod(cri_node, "wasm-lifecycle")

    cid = crictl.create(pod_id, cri_node.container_config("hello", hello), pod)
    assert crictl.container_state(cid) == "CONTAINER_CREATED"
    crictl.run("start", cid)
    crictl.wait_state(cid, "CONTAINER_EXITED")
    assert crictl.logs(cid).stdout.strip() == "hello from wasm"
    status = crictl.inspect(cid)
    assert status["exitCode"] == 0
    assert status["reason"] == "Completed"

    failing = crictl.create(pod_id, cri_node.container_config("exit3", exit_code, args=["3"]), pod)
    crictl.run("start", failing)
    crictl.wait_state(failing, "CONTAINER_EXITED")
    status = crictl.inspect(failing)
    assert status["exitCode"] == 3
    assert status["reason"] == "Error"

    errs = crictl.create(pod_id, cri_node.container_config("stderr", stderr), pod)
    crictl.run("start", errs)
    crictl.wait_state(errs, "CONTAINER_EXITED")
    assert "written to stderr by wasm" in crictl.logs(errs).stderr

    for container in (cid, failing, errs):
        crictl.run("rm", container)
        assert crictl.container_state(container) == ""
    crictl.run("stopp", pod_id)
    assert crictl.pod_state(pod_id) == "SANDBOX_NOTREADY"
    crictl.run("rmp", pod_id)
    assert crictl.pod_state(pod_id) == ""


def test_stats_and_stop_of_spinning_guest(cri_node: CriNode, guests: Path) -> None:
    crictl = cri_node.crictl
    spin = cri_node.wasm_image("spin", guests / "spin.wasm")
    pod_id, pod = _wasm_pod(cri_node, "wasm-spin")
    cid = crictl.create(pod_id, cri_node.container_config("spin", spin), pod)
    crictl.run("start", cid)
    crictl.wait_state(cid, "CONTAINER_RUNNING")

    def usage() -> tuple[int, int]:
        stats = crictl.json("stats", "--id", cid)["stats"]
        assert stats, f"`crictl stats --id {cid}` listed nothing"
        entry = stats[0]
        memory = int((entry.get("memory") or {}).get("workingSetBytes", {}).get("value", 0))
        cpu = int((entry.get("cpu") or {}).get("usageCoreNanoSeconds", {}).get("value", 0))
        return memory, cpu

    wait_for(lambda: all(usage()), 10, lambda: f"non-zero memory and cpu in `crictl stats` (now {usage()})")

    # The guest spins and ignores SIGTERM's grace: CRI sends SIGTERM, waits the timeout, then SIGKILL.
    crictl.run("stop", "--timeout", "1", cid, timeout=30)
    assert crictl.container_state(cid) == "CONTAINER_EXITED"
    status = crictl.inspect(cid)
    assert status["exitCode"] in (137, 143), status
    crictl.run("rm", cid)
    crictl.run("stopp", pod_id)
    crictl.run("rmp", pod_id)


def test_two_pods_at_once(cri_node: CriNode, guests: Path) -> None:
    crictl = cri_node.crictl
    hello = cri_node.wasm_image("hello", guests / "hello.wasm")
    spin = cri_node.wasm_image("spin", guests / "spin.wasm")
    first, first_cfg = _wasm_pod(cri_node, "pod-a")
    second, second_cfg = _wasm_pod(cri_node, "pod-b")
    spinner = crictl.create(first, cri_node.container_config("spin", spin), first_cfg)
    greeter = crictl.create(second, cri_node.container_config("hello", hello), second_cfg)
    crictl.run("start", spinner, greeter)
    crictl.wait_state(greeter, "CONTAINER_EXITED")
    assert crictl.logs(greeter).stdout.strip() == "hello from wasm"
    assert crictl.container_state(spinner) == "CONTAINER_RUNNING"
    # Stopping one pod leaves the other alone.
    crictl.run("stopp", second)
    assert crictl.pod_state(second) == "SANDBOX_NOTREADY"
    assert crictl.pod_state(first) == "SANDBOX_READY"
    assert crictl.container_state(spinner) == "CONTAINER_RUNNING"
    crictl.run("stopp", first)
    assert crictl.container_state(spinner) == "CONTAINER_EXITED"
    crictl.run("rmp", first, second)
    assert crictl.json("pods").get("items", []) == []


def test_wasm_with_native_sidecar(cri_node: CriNode, guests: Path) -> None:
    crictl = cri_node.crictl
    spin = cri_node.wasm_image("spin", guests / "spin.wasm")
    busybox = cri_node.image("busybox", busybox_files(), entrypoint=["/bin/sh"])  # type: ignore[arg-type]
    pod_id, pod = _wasm_pod(cri_node, "mixed")
    app = crictl.create(pod_id, cri_node.container_config("app", spin), pod)
    sidecar = crictl.create(pod_id, cri_node.container_config(
        "sidecar", busybox, command=["/bin/sh"], args=["-c", "echo sidecar up; exec sleep 600"]), pod)
    crictl.run("start", app, sidecar)
    crictl.wait_state(app, "CONTAINER_RUNNING")
    crictl.wait_state(sidecar, "CONTAINER_RUNNING")
    wait_for(lambda: "sidecar up" in crictl.logs(sidecar).stdout, 10, "the sidecar's output in `crictl logs`")
    crictl.run("stopp", pod_id, timeout=60)
    assert crictl.container_state(app) == "CONTAINER_EXITED"
    assert crictl.container_state(sidecar) == "CONTAINER_EXITED"
    crictl.run("rmp", pod_id)


def test_containerd_restart_keeps_wasm_pod(cri_node: CriNode, guests: Path) -> None:
    crictl = cri_node.crictl
    spin = cri_node.wasm_image("spin", guests / "spin.wasm")
    pod_id, pod = _wasm_pod(cri_node, "survivor")
    cid = crictl.create(pod_id, cri_node.container_config("spin", spin), pod)
    crictl.run("start", cid)
    crictl.wait_state(cid, "CONTAINER_RUNNING")

    cri_node.restart_containerd()

    assert crictl.pod_state(pod_id) == "SANDBOX_READY"
    assert crictl.container_state(cid) == "CONTAINER_RUNNING"
    crictl.run("stop", "--timeout", "1", cid, timeout=30)
    assert crictl.container_state(cid) == "CONTAINER_EXITED"
    crictl.run("rm", cid)
    crictl.run("stopp", pod_id)
    crictl.run("rmp", pod_id)
    assert crictl.pod_state(pod_id) == ""


def test_image_without_wasm_or_entrypoint_is_a_clear_error(cri_node: CriNode, guests: Path) -> None:
    crictl = cri_node.crictl
    text = cri_node.image("notwasm", {"/app.wasm": b"this is not wasm\n"}, entrypoint=["/app.wasm"])
    pod_id, pod = _wasm_pod(cri_node, "bad-image")
    cid = crictl.create(pod_id, cri_node.container_config("notwasm", text), pod)
    # CRI creates the task (and so asks the shim) in StartContainer: that is where `kubectl describe` shows it.
    with pytest.raises(CrictlError) as failed:
        crictl.run("start", cid)
    assert "is neither a WebAssembly module or component nor a native program" in failed.value.stderr
    crictl.run("rm", cid)
    crictl.run("stopp", pod_id)
    crictl.run("rmp", pod_id)


# -- runtime options (runtimeoptions.v1.Options): how each containerd passes them, and bad ones ---------------
def _options_table(kind: str, body: str) -> str:
    plugin = "io.containerd.grpc.v1.cri" if kind in CONFIG_V2_KINDS else "io.containerd.cri.v1.runtime"
    return f'[plugins."{plugin}".containerd.runtimes.{HANDLER}.options]\n{body}'


def test_runtime_options_reach_the_shim(cri_node_factory: CriNodeFactory, guests: Path, tmp_path: Path,
                                        request: pytest.FixtureRequest) -> None:
    """Grouping=pod (one daemon per pod) set through containerd's options table: inline on 2.x (config_body),
    through ConfigPath on 1.6 (the only key 1.6 passes on)."""
    kind = request.node.callspec.params["containerd_factory"]
    if kind == "1.6":
        options_file = tmp_path / "wasm-shim.toml"
        options_file.write_text('grouping = "pod"\n')
        node = cri_node_factory(extra_config=_options_table(kind, f'  ConfigPath = "{options_file}"\n'))
    else:
        node = cri_node_factory(runtime_options=["grouping=pod"])
    hello = node.wasm_image("hello", guests / "hello.wasm")
    pods = set()
    for name in ("grouped-a", "grouped-b"):
        pod_id, pod = _wasm_pod(node, name)
        pods.add(pod_id)
        cid = node.crictl.create(pod_id, node.container_config("hello", hello), pod)
        node.crictl.run("start", cid)
        node.crictl.wait_state(cid, "CONTAINER_EXITED")
        assert node.crictl.logs(cid).stdout.strip() == "hello from wasm"
    daemons = daemon_pids(node.containerd)
    assert len(daemons) == 2, "grouping=pod: one shim daemon per pod"
    # Each daemon names its pod (what its metrics' `group` label says): through the pause container's annotations
    # on 1.6, through the Sandbox API's start (the sandbox's own id) on 2.x.
    groups = {_environ(pid).get("WASM_SHIM_DAEMON_GROUP") for pid in daemons}
    assert groups == {f"pod:{pod_id}" for pod_id in pods}, groups


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


@pytest.mark.parametrize("where", ["inline", "config_path"])
def test_unknown_runtime_option_fails_runp_clearly(cri_node_factory: CriNodeFactory, tmp_path: Path,
                                                   request: pytest.FixtureRequest, where: str) -> None:
    kind = request.node.callspec.params["containerd_factory"]
    if where == "inline":
        if kind == "1.6":
            pytest.skip("containerd 1.6 passes only ConfigPath/TypeUrl from the options table, it drops other keys")
        table = _options_table(kind, '  grouping = "pod"\n  bogus_key = "1"\n')
    else:
        options_file = tmp_path / "wasm-shim.toml"
        options_file.write_text('bogus_key = 1\n')
        table = _options_table(kind, f'  ConfigPath = "{options_file}"\n')
    node = cri_node_factory(extra_config=table)
    with pytest.raises(CrictlError) as failed:
        node.crictl.runp(node.pod_config("bad-options"), runtime=HANDLER)
    assert "unknown option 'bogus_key'" in failed.value.stderr
    assert "known options: grouping" in failed.value.stderr
    assert node.crictl.json("pods").get("items", []) == []


# -- wasm OCI artifacts (CNCF layout) pulled by containerd 2.x's CRI from a registry on 127.0.0.1 ---------------
@pytest.fixture
def registry(tmp_path: Path) -> Iterator[LocalRegistry]:
    instance = LocalRegistry(tmp_path / "registry").start()
    try:
        yield instance
    finally:
        instance.stop()


def _artifact_node(cri_node_factory: CriNodeFactory, registry: LocalRegistry, tmp_path: Path,
                   request: pytest.FixtureRequest) -> CriNode:
    kind = request.node.callspec.params["containerd_factory"]
    if kind not in ARTIFACT_PULL_KINDS:
        pytest.skip("containerd 1.6.20 unpacks every layer as a tar: wasm artifacts need containerd 1.7 or 2.x")
    hosts = registry.hosts_config(tmp_path / "certs.d")
    plugin = "io.containerd.grpc.v1.cri" if kind in CONFIG_V2_KINDS else "io.containerd.cri.v1.images"
    return cri_node_factory(extra_config=f'[plugins."{plugin}".registry]\n  config_path = "{hosts}"\n')


def test_crictl_pulls_wasm_artifact(cri_node_factory: CriNodeFactory, registry: LocalRegistry, guests: Path,
                                    tmp_path: Path, request: pytest.FixtureRequest) -> None:
    node = _artifact_node(cri_node_factory, registry, tmp_path, request)
    artifact = build_artifact((guests / "hello.wasm").read_bytes())
    digest = push_artifact(artifact, registry.address, "wasm/hello", "v1")
    ref = f"{registry.address}/wasm/hello:v1"
    node.crictl.run("pull", ref, timeout=120)
    images = node.crictl.json("images")["images"]
    pulled = [image for image in images if ref in image.get("repoTags", [])]
    assert pulled, f"{ref} not in `crictl images`: {images}"
    assert f"{registry.address}/wasm/hello@{digest}" in pulled[0]["repoDigests"]


def _pull_and_pod(node: CriNode, registry: LocalRegistry, artifact: Artifact, name: str) -> tuple[str, str, Path]:
    """Push `artifact` to the registry, `crictl pull` it, stop the registry (the shim must read the layer from
    containerd's content store, not the network) and start a wasm pod: (ref, pod id, pod config)."""
    push_artifact(artifact, registry.address, f"wasm/{name}", "v1")
    ref = f"{registry.address}/wasm/{name}:v1"
    node.crictl.run("pull", ref, timeout=120)
    registry.stop()
    pod_id, pod = _wasm_pod(node, name)
    return ref, pod_id, pod


def test_wasm_artifact_runs_from_content_store(cri_node_factory: CriNodeFactory, registry: LocalRegistry,
                                                guests: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    node = _artifact_node(cri_node_factory, registry, tmp_path, request)
    artifact = build_artifact((guests / "hello.wasm").read_bytes())
    ref, pod_id, pod = _pull_and_pod(node, registry, artifact, "hello")
    # An artifact's config has no entrypoint: CRI refuses a container without a command ("no command
    # specified"), so the pod names the module, as with runwasi.
    config = node.container_config("hello", ref, command=["/hello.wasm"])
    cid = node.crictl.create(pod_id, config, pod)
    node.crictl.run("start", cid)
    node.crictl.wait_state(cid, "CONTAINER_EXITED")
    assert node.crictl.logs(cid).stdout.strip() == "hello from wasm"
    assert node.crictl.inspect(cid)["exitCode"] == 0
    # The daemon says it read exactly this layer from containerd's content store (the registry is down).
    wait_for(lambda: f"placed wasm layer {artifact.layer.digest}" in shim_log_text(node.containerd), 10,
             "the daemon's log line naming the layer digest it read from the content store")
    assert f"(manifest {artifact.manifest.digest})" in shim_log_text(node.containerd)

    # A second container of the same artifact: read again, compiled never (cache keyed by the layer digest).
    again = node.crictl.create(pod_id, node.container_config("again", ref, command=["/hello.wasm"]), pod)
    node.crictl.run("start", again)
    node.crictl.wait_state(again, "CONTAINER_EXITED")
    assert node.crictl.logs(again).stdout.strip() == "hello from wasm"
    layer_hex = artifact.layer.digest.removeprefix("sha256:")
    assert f"task {again}: module {layer_hex[:16]} from memory" in shim_log_text(node.containerd)  # debug log
    node.crictl.run("rm", cid, again)
    node.crictl.run("stopp", pod_id)
    node.crictl.run("rmp", pod_id)


@pytest.mark.parametrize("problem", ["two layers", "unknown media type"])
def test_bad_wasm_artifact_fails_start_with_the_reason(cri_node_factory: CriNodeFactory, registry: LocalRegistry,
                                                       guests: Path, tmp_path: Path, request: pytest.FixtureRequest,
                                                       problem: str) -> None:
    node = _artifact_node(cri_node_factory, registry, tmp_path, request)
    good = build_artifact((guests / "hello.wasm").read_bytes())
    doc = json.loads(good.manifest.data)
    if problem == "two layers":
        extra = Blob("application/wasm", (guests / "exit_code.wasm").read_bytes())
        layers, expected = [good.layer, extra], "a wasm artifact must have exactly one layer, this one has 2"
    else:
        extra = Blob("application/vnd.example.not-wasm", good.layer.data + b"\0")
        layers, expected = [extra], "wasm artifact layer has media type 'application/vnd.example.not-wasm'"
    doc["layers"] = [layer.descriptor() for layer in layers]
    manifest = Blob(MEDIA_TYPE_MANIFEST, json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())
    bad = Artifact(config=good.config, layer=extra, manifest=manifest)
    name = problem.replace(" ", "-")
    # push_artifact pushes `layer` and `config`; the good layer too, for the two-layer manifest.
    push_artifact(Artifact(config=good.config, layer=good.layer, manifest=good.manifest), registry.address,
                  f"wasm/{name}", "base")
    ref, pod_id, pod = _pull_and_pod(node, registry, bad, name)
    cid = node.crictl.create(pod_id, node.container_config(name, ref, command=["/hello.wasm"]), pod)
    # CRI creates the task (and so asks the shim) in StartContainer: that is where `kubectl describe` shows it.
    with pytest.raises(CrictlError) as failed:
        node.crictl.run("start", cid)
    assert f"is a wasm OCI artifact the shim cannot run: {expected}" in failed.value.stderr
    node.crictl.run("rm", cid)
    node.crictl.run("stopp", pod_id)
    node.crictl.run("rmp", pod_id)


def test_pod_network_grant_serves_on_the_pod_ip(cri_node: CriNode, guests: Path) -> None:
    """Through CRI: a pod annotation grants a component one listening port, in the pod's network namespace.

    The annotation reaches the container's spec because our runtime table passes `wasm.shim.io/*` pod annotations
    (`wasm-shim containerd-config`). The test connects from the node to the pod's CNI address (the test's bridge);
    a use the grant does not list (connecting out) is denied in the guest.
    """
    crictl = cri_node.crictl
    net = cri_node.wasm_image("net", guests / "net.component.wasm")
    pod = cri_node.pod_config("served", annotations={"wasm.shim.io/network": "tcp-listen=*:8080"})
    pod_id = crictl.runp(pod, runtime=HANDLER)
    ip = crictl.json("inspectp", pod_id)["status"]["network"]["ip"]
    server = crictl.create(pod_id, cri_node.container_config("server", net, args=["listen", "0.0.0.0", "8080"]),
                           pod)
    crictl.run("start", server)
    reply = b""
    deadline = time.monotonic() + 60  # the first start compiles the component (a hang bound, not a speed check)
    while not reply:
        try:
            with socket.create_connection((ip, 8080), timeout=5) as conn:
                while chunk := conn.recv(1024):
                    reply += chunk
        except ConnectionRefusedError:
            assert time.monotonic() < deadline, crictl.logs(server).stdout
            time.sleep(0.1)
    assert reply == b"hello from wasm\n"
    crictl.wait_state(server, "CONTAINER_EXITED")
    assert crictl.logs(server).stdout.splitlines() == ["listening 0.0.0.0:8080", "served"]
    assert crictl.inspect(server)["exitCode"] == 0

    gateway = cri_node.network.gateway
    client = crictl.create(pod_id, cri_node.container_config("client", net, args=["connect", gateway, "8080"]), pod)
    crictl.run("start", client)
    crictl.wait_state(client, "CONTAINER_EXITED")
    assert "denied: access-denied" in crictl.logs(client).stdout
    crictl.run("rm", server, client)
    crictl.run("stopp", pod_id)
    crictl.run("rmp", pod_id)


def test_wasi_http_component_is_served_on_the_pod_ip(cri_node: CriNode, guests: Path) -> None:
    """A wasi:http/proxy component in a pod: served on the pod's CNI address, port 8080, until `crictl stop`.

    No network grant: listening is what a served component does; the annotation here only bounds requests. Ready
    means the listener accepts (what a kubelet TCP probe checks); stop sends SIGTERM, which drains and exits.
    """
    crictl = cri_node.crictl
    component = guests / "http.component.wasm"
    # Compiling this 14 MB component takes longer than CRI's 30 s StartContainer deadline on a loaded machine (on
    # containerd 1.6 the shim's Create runs inside it): warm the node's cache first, as an operator would.
    cache = str(cri_node.containerd.tmp / "wasm-cache")
    assert cli_main(["precompile", "--cache-dir", cache, str(component)]) == 0
    image = cri_node.wasm_image("http", component)
    pod = cri_node.pod_config("http-served", annotations={"wasm.shim.io/http-request-timeout": "5"})
    pod_id = crictl.runp(pod, runtime=HANDLER)
    ip = crictl.json("inspectp", pod_id)["status"]["network"]["ip"]
    server = crictl.create(pod_id, cri_node.container_config("http", image), pod)
    crictl.run("start", server)
    deadline = time.monotonic() + 180  # the first start compiles a 14 MB component (a hang bound)
    while True:
        try:
            socket.create_connection((ip, 8080), timeout=5).close()
            break
        except OSError:
            assert time.monotonic() < deadline, crictl.logs(server).stderr
            time.sleep(0.1)

    def fetch(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://{ip}:8080{path}", timeout=60) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    assert fetch("/from/the/node") == (200, "method GET\npath /from/the/node\nx-test none\n")
    assert fetch("/trap")[0] == 500
    assert fetch("/spin")[0] == 504
    assert fetch("/log") == (200, "logged\n")
    crictl.run("stop", "--timeout", "20", server)
    crictl.wait_state(server, "CONTAINER_EXITED")
    logs = crictl.logs(server)
    assert "log: to stdout" in logs.stdout and "drained" in logs.stderr, (logs.stdout, logs.stderr)
    crictl.run("rm", server)
    crictl.run("stopp", pod_id)
    crictl.run("rmp", pod_id)
