"""A registry that is down, hangs, answers 500, or stalls in the middle of a blob.

A real docker-registry holds a pushed wasm artifact; a fault proxy on 127.0.0.1 stands between it and the client
and misbehaves in one of four ways: ``down`` (nothing listens), ``hang`` (accepts, never answers), ``500`` (answers
every request with 500), ``stall`` (forwards everything, but stops in the middle of the blob's body and holds the
connection open). Through ``wasm-shim pull`` and through the shim's own registry path at Create (the
``wasm.shim.io/artifact`` annotation): bounded timeouts (the client's; each wait here is a hang guard), an error
naming the registry and the reason, and nothing partial left in the output dir or the node's artifact cache; at
Create, a task already running in the same daemon keeps running.
"""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.fixtures import BUSYBOX_REF
from lab.registries import DockerRegistry
from lab.shimtools import RUNTIME, remove_task, shim_log_text, task_status, wait_for
from lab.soak import record
from wasm_shim.oci.auth import DockerCredentials
from wasm_shim.oci.reference import parse_reference
from wasm_shim.oci.registry import RegistryClient
from wasm_shim.oci.transfer import push_wasm

pytestmark = [pytest.mark.integration, pytest.mark.soak, pytest.mark.timeout(300)]

WASM_SHIM = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "wasm-shim"
MODES = ["down", "hang", "500", "stall"]
EXPECTED = {  # what the error says, per mode
    "down": "cannot connect",
    "hang": "no answer within",
    "500": "HTTP 500",
    "stall": "the stream broke",  # named with the blob's digest, the bytes received and the read timeout
}


class FaultProxy:
    """A TCP proxy to ``upstream`` on 127.0.0.1 that misbehaves as ``mode`` says (see the module docstring)."""

    def __init__(self, upstream: int, mode: str) -> None:
        self.upstream, self.mode = upstream, mode
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        if mode == "down":
            self._listener.close()  # the port was ours a moment ago: nothing listens there now
            return
        self._listener.settimeout(0.2)
        self._stop = threading.Event()
        self._held: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._held.append(conn)
            if self.mode == "hang":
                continue
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        try:
            first = conn.recv(65536)
        except OSError:
            return
        if first.startswith(b"\x16"):  # a TLS ClientHello (the client's HTTPS probe): answer like plain HTTP does
            conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")
            return
        if self.mode == "500":
            body = b'{"errors":[{"code":"UNKNOWN","message":"storage exploded"}]}'
            conn.sendall(b"HTTP/1.1 500 Oops\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n%s" % (len(body), body))
            return
        upstream = socket.create_connection(("127.0.0.1", self.upstream), timeout=30)
        self._held.append(upstream)
        stall = threading.Event()

        def down() -> None:  # upstream -> client; in a blob's response, stop after a few hundred bytes
            sent = 0
            while True:
                try:
                    data = upstream.recv(65536)
                except OSError:
                    return
                if not data:
                    conn.close()
                    return
                if stall.is_set():
                    data = data[: max(0, 600 - sent)]
                    sent += len(data)
                    if not data:
                        continue  # hold: the client waits for the rest of the body
                conn.sendall(data)

        thread = threading.Thread(target=down, daemon=True)
        thread.start()
        data = first
        while data:
            if b"/blobs/sha256:" in data and data.startswith(b"GET "):
                stall.set()
            upstream.sendall(data)
            try:
                data = conn.recv(65536)
            except OSError:
                return

    def close(self) -> None:
        if self.mode == "down":
            return
        self._stop.set()
        self._listener.close()
        for held in self._held:
            held.close()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[DockerRegistry]:
    reg = DockerRegistry(tmp_path / "registry").start()
    try:
        yield reg
    finally:
        reg.stop()


def _push(registry: DockerRegistry, wasm: Path, repo: str) -> str:
    """Push ``wasm`` as an artifact (a layer large enough to stall in the middle of); the path after the host."""
    ref = parse_reference(f"{registry.address}/{repo}:v1")
    with RegistryClient(DockerCredentials({}), attempts=1) as client:
        push_wasm(client, str(wasm), ref)
    return f"{repo}:v1"


def _leftovers(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


@pytest.mark.parametrize("mode", MODES)
def test_pull_from_a_faulty_registry(registry, guests, tmp_path, mode):
    path = _push(registry, guests / "alloc.wasm", "team/app")
    proxy = FaultProxy(registry.port, mode)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    try:
        done = subprocess.run([str(WASM_SHIM), "pull", "--timeout", "1", f"127.0.0.1:{proxy.port}/{path}",
                               "-o", str(out_dir / "app.wasm")], capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)
    finally:
        proxy.close()
    assert done.returncode != 0, done.stdout
    assert f"127.0.0.1:{proxy.port}" in done.stderr and EXPECTED[mode] in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert _leftovers(out_dir) == [], "a partial file was left"
    record(f"fault: registry {mode} (wasm-shim pull)", tried=f"`wasm-shim pull --timeout 1` through a {mode} proxy",
           held=f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1][:160]}; no file left")


@pytest.mark.parametrize("containerd_factory", ["1.6"], indirect=True)
def test_artifact_annotation_with_a_faulty_registry(containerd_factory, wasm_image_factory, busybox_image_tar,
                                                    registry, guests, tmp_path):
    """The shim's own registry path at Create (containerd 1.6 cannot pull wasm artifacts): each fault fails only
    that Create, with the reason; the node's artifact cache keeps nothing partial; a running task is untouched."""
    path = _push(registry, guests / "alloc.wasm", "team/app")
    policy = tmp_path / "policy.toml"
    policy.write_text('default = "allow"\n[registry]\ntimeout = 1\n')
    artifacts = tmp_path / "artifacts"
    cache = tmp_path / "shim-cache"
    cache.mkdir(mode=0o700)
    proxies = {mode: FaultProxy(registry.port, mode) for mode in MODES}  # first: the node allows their ports
    allowed = ",".join([registry.address] + [f"127.0.0.1:{proxy.port}" for proxy in proxies.values()])
    containerd = containerd_factory(env={"WASM_SHIM_POLICY": str(policy), "WASM_SHIM_CACHE_DIR": str(cache),
                                         "WASM_SHIM_ARTIFACT_DIR": str(artifacts),
                                         "WASM_SHIM_ARTIFACT_REGISTRIES": allowed})
    containerd.import_image(busybox_image_tar)
    sleeper = wasm_image_factory(containerd)("sleep", guests / "sleep.wasm")
    containerd.ctr("run", "-d", "--runtime", RUNTIME, sleeper, "bystander", "/app.wasm", "3600")
    wait_for(lambda: task_status(containerd, "bystander") == "RUNNING", 20, "bystander running")
    seen: dict[str, str] = {}
    for mode, proxy in proxies.items():
        annotation = f"wasm.shim.io/artifact=127.0.0.1:{proxy.port}/{path}"
        try:
            failed = containerd.ctr("run", "--rm", "--runtime", RUNTIME, "--annotation", annotation, BUSYBOX_REF,
                                    f"faulty-{mode}", "/app.wasm", "1", check=False, timeout=120)
        finally:
            proxy.close()
        containerd.ctr("container", "rm", f"faulty-{mode}", check=False)
        assert failed.returncode != 0, (mode, failed.stdout)
        assert annotation in failed.stderr and EXPECTED[mode] in failed.stderr, (mode, failed.stderr)
        seen[mode] = failed.stderr.strip().splitlines()[-1][-160:]
        blobs = artifacts / "blobs" / "sha256"
        layers = [p for p in blobs.iterdir() if p.stat().st_size > 4096] if blobs.exists() else []
        assert layers == [], f"{mode}: a layer entered the artifact cache"
        tmp = artifacts / "tmp"
        assert not tmp.exists() or list(tmp.iterdir()) == [], f"{mode}: a partial download was left"
        assert task_status(containerd, "bystander") == "RUNNING"
    # The registry back in the path: the same annotation now runs.
    ok = containerd.ctr("run", "--rm", "--runtime", RUNTIME, "--annotation",
                        f"wasm.shim.io/artifact={registry.address}/{path}", BUSYBOX_REF, "healthy", "/app.wasm", "1",
                        timeout=120)
    assert "reached 1 MiB" in ok.stdout
    assert "Traceback" not in shim_log_text(containerd)
    remove_task(containerd, "bystander")
    record("fault: registry down/hang/500/stall at Create (artifact annotation, 1.6)",
           tried="4 faulty registries behind the wasm.shim.io/artifact annotation, timeout 1 s",
           held="each Create failed with the reason (" + "; ".join(f"{m}: ...{t[-70:]}" for m, t in seen.items())
           + "); no partial blob in the artifact cache; bystander ran on; the healthy registry then worked")
