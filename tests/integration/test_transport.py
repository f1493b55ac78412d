"""The registry client's own HTTP/1.1 transport (oci/transport.py, oci/tls.py) against real servers and proxies.

- Kept-alive connections: a real docker-registry, plain and TLS, behind a TCP relay that counts the connections it
  carries: a pull, a tag listing and more manifests go over one connection. A connection the server closed while it
  sat idle is not used again; a request on one the server closed as it arrived is sent once more on a new one.
- A blob and a manifest in a chunked transfer coding (lab/hostile_registry.py `chunked`): read, verified, capped.
- Proxies, through Debian's tinyproxy in a linked network namespace (Go clients and we never proxy loopback): a
  plain-HTTP registry is asked through HTTP_PROXY in absolute form (tinyproxy's log shows the absolute URLs); proxy
  credentials in the proxy URL become Proxy-Authorization (tinyproxy's BasicAuth: a wrong password is refused with
  407, named); an `https://` proxy (Debian's stunnel in front of tinyproxy) carries TLS to the registry inside its
  own TLS, and plain requests over TLS.
- containerd's hosts.toml: client certificates (a registry that demands them, docker-registry's clientcas) and
  skip_verify (a registry whose certificate no CA here signed).
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.hostile_registry import HostileRegistry, chunked
from lab.netns import LinkedNamespace, linked_namespace
from lab.proxy import TinyProxy, TLSFront
from lab.registries import DockerRegistry, make_tls
from tests.integration.test_cosign_oras import WASM_SHIM, run
from wasm_shim.oci.auth import DockerCredentials
from wasm_shim.oci.digest import DigestMismatch
from wasm_shim.oci.hosts import RegistryHosts
from wasm_shim.oci.manifest import Descriptor
from wasm_shim.oci.proxy import ProxySettings
from wasm_shim.oci.reference import parse_reference
from wasm_shim.oci.registry import RegistryClient, RegistryError
from wasm_shim.oci.transfer import pull_wasm, push_wasm

pytestmark = pytest.mark.integration

MODULE = b"\0asm\x01\0\0\0" + bytes(range(256)) * 300


class Relay:
    """A TCP relay on 127.0.0.1 to `upstream` (a port on 127.0.0.1) that counts the connections it accepts.
    `hang_up()` closes every connection it carries (what a server does to idle ones); after `drop_next(start)` it
    closes the next connection that sends bytes beginning with `start`, without passing them on."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.accepted = 0
        self._drop = threading.Event()
        self._drop_start = b""
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []  # carried now
        self._all: list[socket.socket] = []  # ever: closed at close()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream), timeout=10)
            with self._lock:
                self.accepted += 1
                self._open += [client, server]
                self._all += [client, server]
            for source, sink, watch in ((client, server, True), (server, client, False)):
                thread = threading.Thread(target=self._pump, args=(source, sink, watch), daemon=True)
                self._threads.append(thread)
                thread.start()

    def _pump(self, source: socket.socket, sink: socket.socket, watch: bool) -> None:
        try:
            while data := source.recv(65536):
                if watch and self._drop.is_set() and data.startswith(self._drop_start):
                    self._drop.clear()
                    break  # read and not passed on: the request dies with the connection
                sink.sendall(data)
        except OSError:
            pass
        for each in (source, sink):
            try:
                each.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def hang_up(self) -> None:
        with self._lock:
            carried, self._open = self._open, []
        for each in carried:
            try:
                each.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def drop_next(self, start: bytes = b"") -> None:
        self._drop_start = start
        self._drop.set()

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        self.hang_up()
        for thread in self._threads:
            thread.join(timeout=5)
        for each in self._all:
            each.close()


@pytest.fixture
def plain_registry(tmp_path: Path) -> Iterator[DockerRegistry]:
    registry = DockerRegistry(tmp_path / "registry").start()
    try:
        yield registry
    finally:
        registry.stop()


def _wasm(tmp_path: Path) -> Path:
    path = tmp_path / "app.wasm"
    path.write_bytes(MODULE)
    return path


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_one_connection_carries_every_request(tmp_path: Path, tls: bool) -> None:
    ca = make_tls(tmp_path / "tls") if tls else None
    registry = DockerRegistry(tmp_path / "registry", tls=ca).start()
    relay = Relay(registry.port)
    try:
        ref = parse_reference(f"127.0.0.1:{relay.port}/team/app:v1")
        with RegistryClient(DockerCredentials({}), ca_bundle=str(ca.ca_pem) if ca else None, attempts=1) as client:
            digest = push_wasm(client, str(_wasm(tmp_path)), ref)
            pulled = pull_wasm(client, ref, str(tmp_path / "out.wasm"))
            assert client.list_tags(ref) == ["v1"]
            for _ in range(3):
                assert client.get_manifest(ref.with_digest(digest)).digest == digest
        assert pulled.manifest_digest == digest and (tmp_path / "out.wasm").read_bytes() == MODULE
        # TLS: the plain-HTTP probe of a loopback registry is one connection (a TLS server answers it 400), then
        # one TLS connection carries everything.
        assert relay.accepted == (2 if tls else 1), f"{relay.accepted} connections for one client's requests"
    finally:
        relay.close()
        registry.stop()


def test_a_connection_the_server_closed_is_not_used_again(plain_registry: DockerRegistry, tmp_path: Path) -> None:
    relay = Relay(plain_registry.port)
    try:
        ref = parse_reference(f"127.0.0.1:{relay.port}/team/app:v1")
        with RegistryClient(DockerCredentials({}), attempts=1) as client:
            digest = push_wasm(client, str(_wasm(tmp_path)), ref)
            assert relay.accepted == 1
            relay.hang_up()  # the server closed the idle connection: the client sees it before sending on it
            time.sleep(0.2)
            assert client.get_manifest(ref).digest == digest
            assert relay.accepted == 2
            relay.drop_next(b"GET ")  # closed as the request arrived: no byte of an answer; sent once more
            assert client.get_manifest(ref).digest == digest
            assert relay.accepted == 3
            relay.drop_next(b"PUT ")  # the same for an upload: the file is sent again from its start
            other = tmp_path / "other.wasm"
            other.write_bytes(MODULE + b"more")
            assert push_wasm(client, str(other), ref.with_tag("v2")) != digest
            assert relay.accepted == 4
        with RegistryClient(DockerCredentials({})) as client:  # what was stored is the whole file
            pull_wasm(client, ref.with_tag("v2"), str(tmp_path / "v2.wasm"))
        assert (tmp_path / "v2.wasm").read_bytes() == MODULE + b"more"
    finally:
        relay.close()


def test_chunked_bodies_are_read_verified_and_capped() -> None:
    layer = Descriptor("application/wasm", "sha256:" + hashlib.sha256(MODULE).hexdigest(), len(MODULE))
    with HostileRegistry() as hostile:
        ref = parse_reference(f"{hostile.address}/team/app:v1")
        hostile.route("GET", f"/v2/team/app/blobs/{layer.digest}", chunked(200, MODULE, pieces=7))
        hostile.route("GET", "/v2/team/app/manifests/", chunked(200, b'{"schemaVersion":2}', pieces=2))
        hostile.route("GET", "/v2/team/app/tags/list", chunked(200, b'{"tags":["' + b"x" * (5 << 20) + b'"]}'))
        with RegistryClient(DockerCredentials({}), attempts=1) as client:
            assert client.fetch_blob_bytes(ref, layer, 1 << 20) == MODULE
            assert client.get_manifest(ref).json("m") == {"schemaVersion": 2}
            with pytest.raises(RegistryError, match="over the 4194304 byte limit"):
                client.list_tags(ref)
            hostile.route("GET", f"/v2/team/app/blobs/{layer.digest}", chunked(200, MODULE[::-1]))
            with pytest.raises(DigestMismatch, match="tampered or corrupt"):
                client.fetch_blob_bytes(ref, layer, 1 << 20)


# -- proxies -----------------------------------------------------------------------------------------------------
@pytest.fixture
def namespace() -> Iterator[LinkedNamespace]:
    with linked_namespace("wshtp") as linked:
        yield linked


def _env(tmp_path: Path, **proxies: str) -> dict[str, str]:
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True, exist_ok=True)
    clean = {k: v for k, v in os.environ.items() if k.lower() not in ("https_proxy", "http_proxy", "no_proxy")}
    return {**clean, "HOME": str(home), "DOCKER_CONFIG": str(home / ".docker"), **proxies}


def _started(*processes):  # type: ignore[no-untyped-def]
    for process in processes:
        process.start()
    return processes


def test_a_plain_http_registry_is_asked_through_an_http_proxy_in_absolute_form(
        namespace: LinkedNamespace, tmp_path: Path) -> None:
    registry = DockerRegistry(tmp_path / "registry", host=namespace.peer_ip, netns=namespace.name)
    proxy = TinyProxy(tmp_path / "proxy", host=namespace.peer_ip, netns=namespace.name,
                      allow=(namespace.host_ip, namespace.peer_ip), basic_auth=("alice", "s3cret"))
    _started(registry, proxy)
    try:
        address = registry.address
        ref = f"{address}/team/app:v1"
        url = f"http://al%69ce:s3cr%65t@{namespace.peer_ip}:{proxy.port}"  # percent-encoded: alice, s3cret
        env = _env(tmp_path, HTTP_PROXY=url)
        run([WASM_SHIM, "push", "--insecure-registry", address, str(_wasm(tmp_path)), ref], env)
        run([WASM_SHIM, "pull", "--insecure-registry", address, ref, "-o", str(tmp_path / "out.wasm")], env)
        assert (tmp_path / "out.wasm").read_bytes() == MODULE
        forwarded = [target for method, target in proxy.requests() if method in ("GET", "HEAD", "PUT", "POST")]
        assert f"http://{address}/v2/team/app/manifests/v1" in forwarded, forwarded
        assert all(target.startswith(f"http://{address}/") for target in forwarded), forwarded
        refused = run([WASM_SHIM, "pull", "--insecure-registry", address, ref, "-o", str(tmp_path / "x.wasm"),
                       "--timeout", "5"], _env(tmp_path, HTTP_PROXY=f"http://{namespace.peer_ip}:{proxy.port}"),
                      check=False)
        assert refused.returncode == 1 and "cannot connect through the proxy" in refused.stderr and \
            "HTTP 407 Proxy Authentication Required (proxy authentication required: give user:password in the " \
            "proxy URL)" in refused.stderr, refused.stderr
    finally:
        proxy.stop()
        registry.stop()


def test_proxy_credentials_open_the_connect_tunnel_and_a_wrong_password_is_named(
        namespace: LinkedNamespace, tmp_path: Path) -> None:
    ca = make_tls(tmp_path / "tls", (namespace.peer_ip,))
    registry = DockerRegistry(tmp_path / "registry", tls=ca, host=namespace.peer_ip, netns=namespace.name)
    proxy = TinyProxy(tmp_path / "proxy", host=namespace.peer_ip, netns=namespace.name,
                      allow=(namespace.host_ip, namespace.peer_ip), basic_auth=("alice", "wonderland"))
    _started(registry, proxy)
    try:
        ref = f"{registry.address}/team/app:v1"
        good = _env(tmp_path, HTTPS_PROXY=f"http://alice:wonderland@{namespace.peer_ip}:{proxy.port}")
        run([WASM_SHIM, "push", "--ca-file", str(ca.ca_pem), str(_wasm(tmp_path)), ref], good)
        assert set(proxy.connects()) == {registry.address}
        bad = _env(tmp_path, HTTPS_PROXY=f"http://alice:queen@{namespace.peer_ip}:{proxy.port}")
        refused = run([WASM_SHIM, "tags", "--ca-file", str(ca.ca_pem), "--timeout", "5",
                       f"{registry.address}/team/app"], bad, check=False)
        assert refused.returncode == 1, refused.stderr
        # tinyproxy answers a wrong password 401 (a missing one 407); either names the proxy and its URL's user
        assert "cannot connect through the proxy" in refused.stderr and \
            "(proxy authentication required: it refused the user and password of the proxy URL)" in refused.stderr \
            and "queen" not in refused.stderr, refused.stderr
    finally:
        proxy.stop()
        registry.stop()


def test_an_https_proxy_carries_tls_inside_tls_and_plain_requests_over_tls(
        namespace: LinkedNamespace, tmp_path: Path) -> None:
    ca = make_tls(tmp_path / "tls", (namespace.peer_ip,))
    secure = DockerRegistry(tmp_path / "secure", tls=ca, host=namespace.peer_ip, netns=namespace.name)
    plain = DockerRegistry(tmp_path / "plain", host=namespace.peer_ip, netns=namespace.name)
    proxy = TinyProxy(tmp_path / "proxy", host=namespace.peer_ip, netns=namespace.name,
                      allow=(namespace.host_ip, namespace.peer_ip))
    _started(secure, plain, proxy)
    front = TLSFront(tmp_path / "front", ca, f"{namespace.peer_ip}:{proxy.port}", host=namespace.peer_ip,
                     netns=namespace.name)
    front.start()
    try:
        settings = ProxySettings(https_proxy=front.url, http_proxy=front.url)
        with RegistryClient(DockerCredentials({}), ca_bundle=str(ca.ca_pem), proxies=settings, attempts=1,
                            insecure=(plain.address,)) as client:
            for registry in (secure, plain):
                ref = parse_reference(f"{registry.address}/team/app:v1")
                digest = push_wasm(client, str(_wasm(tmp_path)), ref)
                assert pull_wasm(client, ref, str(tmp_path / "out.wasm")).manifest_digest == digest
        assert secure.address in proxy.connects()
        assert any(target.startswith(f"http://{plain.address}/v2/") for _, target in proxy.requests())
        # The same through the CLI's environment, as oras and cosign take it.
        env = _env(tmp_path, HTTPS_PROXY=front.url)
        run([WASM_SHIM, "pull", "--ca-file", str(ca.ca_pem), f"{secure.address}/team/app:v1", "-o",
             str(tmp_path / "cli.wasm")], env)
        assert (tmp_path / "cli.wasm").read_bytes() == MODULE
    finally:
        front.stop()
        proxy.stop()
        plain.stop()
        secure.stop()


# -- containerd's hosts.toml: client certificates, skip_verify ---------------------------------------------------
def _hosts(directory: Path, address: str, body: str) -> RegistryHosts:
    (directory / address).mkdir(parents=True)
    (directory / address / "hosts.toml").write_text(f'server = "https://{address}"\n' + body)
    return RegistryHosts.from_config_path(str(directory))


def test_client_certificates_from_hosts_toml(tmp_path: Path) -> None:
    ca = make_tls(tmp_path / "tls")
    assert ca.client_cert_pem and ca.client_key_pem
    registry = DockerRegistry(tmp_path / "registry", tls=ca, client_certificates=True).start()
    try:
        ref = parse_reference(f"{registry.address}/team/app:v1")
        showing = _hosts(tmp_path / "with", registry.address,
                         f'ca = "{ca.ca_pem}"\nclient = [["{ca.client_cert_pem}", "{ca.client_key_pem}"]]\n')
        with RegistryClient(DockerCredentials({}), hosts=showing, attempts=1) as client:
            digest = push_wasm(client, str(_wasm(tmp_path)), ref)
            assert pull_wasm(client, ref, str(tmp_path / "out.wasm")).manifest_digest == digest
        hiding = _hosts(tmp_path / "without", registry.address, f'ca = "{ca.ca_pem}"\n')
        with RegistryClient(DockerCredentials({}), hosts=hiding, attempts=1) as client, \
                pytest.raises(RegistryError, match="TLS failed: .*certificate"):
            client.get_manifest(ref)
    finally:
        registry.stop()


def test_skip_verify_from_hosts_toml(tmp_path: Path) -> None:
    registry = DockerRegistry(tmp_path / "registry", tls=make_tls(tmp_path / "unknown-ca")).start()
    try:
        ref = parse_reference(f"{registry.address}/team/app:v1")
        skipping = _hosts(tmp_path / "skip", registry.address, "skip_verify = true\n")
        with RegistryClient(DockerCredentials({}), hosts=skipping, attempts=1) as client:
            digest = push_wasm(client, str(_wasm(tmp_path)), ref)
            assert client.get_manifest(ref).digest == digest
        verifying = _hosts(tmp_path / "verify", registry.address, "skip_verify = false\n")
        with RegistryClient(DockerCredentials({}), hosts=verifying, attempts=1) as client, \
                pytest.raises(RegistryError, match="TLS failed: .*certificate verify failed"):
            client.get_manifest(ref)
    finally:
        registry.stop()
