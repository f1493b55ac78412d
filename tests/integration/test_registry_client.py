"""The registry client, transfers and signatures against real registries on loopback (no containerd).

Debian's docker-registry (distribution 2.8: no referrers API, so signatures go through the fallback tag), one
instance plain, one with TLS from a test CA and basic auth, one with bearer-token auth (TokenServer); faults a real
registry will not produce on demand (500s, a hang, a lying manifest) come from a tiny fault server or from editing
the registry's own storage.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from lab.registries import DockerRegistry, ReferrersRegistry, TokenServer, make_tls
from wasm_shim.oci.auth import DockerCredentials
from wasm_shim.oci.cosign import VerificationFailed, sign_image, signature_tag, verify_image
from wasm_shim.oci.digest import DigestMismatch
from wasm_shim.oci.manifest import MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST, Descriptor, canonical_json
from wasm_shim.oci.reference import parse_reference
from wasm_shim.oci.registry import NotFoundError, RegistryClient, RegistryError, fallback_tag
from wasm_shim.oci.signature import BUNDLE_MEDIA_TYPE
from wasm_shim.oci.transfer import pull_wasm, push_wasm

pytestmark = pytest.mark.integration

MODULE = b"\0asm\x01\0\0\0" + bytes(range(256)) * 64  # a header and a custom-section-sized tail: 16 KiB


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[DockerRegistry]:
    instance = DockerRegistry(tmp_path / "registry").start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def client() -> Iterator[RegistryClient]:
    with RegistryClient(DockerCredentials({}), attempts=2, backoff=0.01, read_timeout=5) as c:
        yield c


def _wasm(tmp_path: Path, data: bytes = MODULE, name: str = "app.wasm") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_push_pull_round_trip_and_tags(registry: DockerRegistry, client: RegistryClient, tmp_path: Path) -> None:
    ref = parse_reference(f"{registry.address}/team/app:v1")
    digest = push_wasm(client, str(_wasm(tmp_path)), ref)
    push_wasm(client, str(_wasm(tmp_path)), ref.with_tag("v2"))
    out = tmp_path / "out"
    out.mkdir()
    pulled = pull_wasm(client, ref, str(out / "pulled.wasm"))
    assert pulled.manifest_digest == digest
    assert (out / "pulled.wasm").read_bytes() == MODULE
    assert _files(out) == ["pulled.wasm"]
    assert sorted(client.list_tags(ref)) == ["v1", "v2"]
    manifest = client.get_manifest(ref).json("m")
    assert manifest["config"]["mediaType"] == "application/vnd.wasm.config.v0+json"
    assert manifest["layers"][0]["annotations"] == {"org.opencontainers.image.title": "app.wasm"}
    with pytest.raises(NotFoundError, match="manifest not found"):
        client.get_manifest(ref.with_tag("nope"))


@pytest.mark.parametrize("damage", ["swapped", "truncated"])
def test_damaged_blob_is_refused_and_nothing_is_left(registry: DockerRegistry, client: RegistryClient,
                                                     tmp_path: Path, damage: str) -> None:
    ref = parse_reference(f"{registry.address}/team/app:v1")
    push_wasm(client, str(_wasm(tmp_path)), ref)
    layer = "sha256:" + hashlib.sha256(MODULE).hexdigest()
    stored = registry.blob_path(layer)
    stored.write_bytes(MODULE[::-1] if damage == "swapped" else MODULE[:1000])
    out = tmp_path / "out"
    out.mkdir()
    expected = "tampered or corrupt" if damage == "swapped" else "truncated"
    with pytest.raises((DigestMismatch, RegistryError), match=expected):
        pull_wasm(client, ref, str(out / "app.wasm"))
    assert _files(out) == []


def test_manifest_that_lies_about_the_layer_size(registry: DockerRegistry, client: RegistryClient,
                                                  tmp_path: Path) -> None:
    ref = parse_reference(f"{registry.address}/team/liar:v1")
    push_wasm(client, str(_wasm(tmp_path)), ref)
    doc = client.get_manifest(ref).json("m")
    doc["layers"][0]["size"] = 100
    client.put_manifest(ref, "small", canonical_json(doc), MEDIA_TYPE_MANIFEST)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DigestMismatch, match="more than the 100 bytes"):
        pull_wasm(client, ref.with_tag("small"), str(out / "app.wasm"))
    assert _files(out) == []


def test_pull_by_digest_checks_the_manifest_digest(registry: DockerRegistry, client: RegistryClient,
                                                    tmp_path: Path) -> None:
    ref = parse_reference(f"{registry.address}/team/app:v1")
    digest = push_wasm(client, str(_wasm(tmp_path)), ref)
    pulled = pull_wasm(client, parse_reference(f"{registry.address}/team/app@{digest}"), str(tmp_path / "x.wasm"))
    assert pulled.manifest_digest == digest


def test_legacy_layer_type_is_still_read(registry: DockerRegistry, client: RegistryClient, tmp_path: Path) -> None:
    ref = parse_reference(f"{registry.address}/team/old:v1")
    push_wasm(client, str(_wasm(tmp_path)), ref)
    doc = client.get_manifest(ref).json("m")
    doc["layers"][0]["mediaType"] = "application/vnd.wasm.content.layer.v1+wasm"
    doc["config"]["mediaType"] = "application/vnd.wasm.config.v1+json"
    client.put_manifest(ref, "v1", canonical_json(doc), MEDIA_TYPE_MANIFEST)
    pull_wasm(client, ref, str(tmp_path / "old.wasm"))
    assert (tmp_path / "old.wasm").read_bytes() == MODULE


# -- signatures through the fallback tag schema ------------------------------------------------------------------
@pytest.fixture(scope="module")
def team_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.mark.parametrize("format", ["bundle", "legacy"])
def test_sign_and_verify_on_a_registry_without_referrers(registry: DockerRegistry, client: RegistryClient,
                                                         tmp_path: Path, team_key: ec.EllipticCurvePrivateKey,
                                                         format: str) -> None:
    ref = parse_reference(f"{registry.address}/team/app:v1")
    digest = push_wasm(client, str(_wasm(tmp_path)), ref)
    with pytest.raises(VerificationFailed, match="no signature found"):
        verify_image(client, ref, [team_key.public_key()])
    assert sign_image(client, ref, team_key, format=format) == digest
    verification = verify_image(client, ref, [team_key.public_key()])
    assert [s.format for s in verification.signatures] == [format]
    assert verification.digest == digest
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(VerificationFailed, match="made by another key"):
        verify_image(client, ref, [other])
    tags = client.list_tags(ref)
    assert (fallback_tag(digest) if format == "bundle" else signature_tag(digest)) in tags
    if format == "bundle":
        index = client.get_manifest(ref.with_tag(fallback_tag(digest))).json("index")
        assert index["mediaType"] == MEDIA_TYPE_INDEX
        assert [m["artifactType"] for m in index["manifests"]] == [BUNDLE_MEDIA_TYPE]
        assert all("annotations" not in m for m in index["manifests"])


def test_retagged_after_signing_is_not_verified(registry: DockerRegistry, client: RegistryClient, tmp_path: Path,
                                                team_key: ec.EllipticCurvePrivateKey) -> None:
    ref = parse_reference(f"{registry.address}/team/app:v1")
    push_wasm(client, str(_wasm(tmp_path)), ref)
    sign_image(client, ref, team_key)
    other_bytes = push_wasm(client, str(_wasm(tmp_path, MODULE + b"x", "evil.wasm")), ref)  # v1 now names these
    with pytest.raises(VerificationFailed, match=f"{other_bytes}: no valid signature: no signature found"):
        verify_image(client, ref, [team_key.public_key()])


def test_referrer_index_pointing_at_junk(registry: DockerRegistry, client: RegistryClient, tmp_path: Path,
                                         team_key: ec.EllipticCurvePrivateKey) -> None:
    ref = parse_reference(f"{registry.address}/team/app:v1")
    digest = push_wasm(client, str(_wasm(tmp_path)), ref)
    # (distribution refuses an index naming a manifest it does not have, so the junk is a real manifest whose
    # "bundle" layer is junk bytes.)
    junk = b"not a bundle"
    junk_desc = Descriptor(BUNDLE_MEDIA_TYPE, "sha256:" + hashlib.sha256(junk).hexdigest(), len(junk))
    client.push_blob(ref, junk_desc, lambda: junk)
    empty = Descriptor("application/vnd.oci.empty.v1+json", "sha256:" + hashlib.sha256(b"{}").hexdigest(), 2)
    client.push_blob(ref, empty, lambda: b"{}")
    manifest = canonical_json({"schemaVersion": 2, "mediaType": MEDIA_TYPE_MANIFEST, "artifactType": BUNDLE_MEDIA_TYPE,
                               "config": empty.to_json(), "layers": [junk_desc.to_json()]})
    junk_digest, _ = client.put_manifest(ref, "sha256:" + hashlib.sha256(manifest).hexdigest(), manifest,
                                         MEDIA_TYPE_MANIFEST)
    client.add_fallback_referrer(ref, digest, Descriptor(MEDIA_TYPE_MANIFEST, junk_digest, len(manifest),
                                                         artifact_type=BUNDLE_MEDIA_TYPE))
    with pytest.raises(VerificationFailed) as failure:
        verify_image(client, ref, [team_key.public_key()])
    assert f"referrer {junk_digest}: bundle: not a sigstore bundle" in str(failure.value)
    # The junk does not hide a good signature.
    sign_image(client, ref, team_key)
    assert [s.format for s in verify_image(client, ref, [team_key.public_key()]).signatures] == ["bundle"]


# -- TLS and basic auth ------------------------------------------------------------------------------------------
@pytest.fixture
def secure_registry(tmp_path: Path) -> Iterator[DockerRegistry]:
    tls = make_tls(tmp_path / "tls")
    instance = DockerRegistry(tmp_path / "secure", tls=tls, users={"alice": "wonderland"}).start()
    try:
        yield instance
    finally:
        instance.stop()


def _docker_config(directory: Path, registry: str, user: str, password: str) -> DockerCredentials:
    directory.mkdir(parents=True, exist_ok=True)
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    (directory / "config.json").write_text(json.dumps({"auths": {registry: {"auth": auth}}}))
    return DockerCredentials.from_environment({"DOCKER_CONFIG": str(directory)})


def test_tls_and_basic_auth(secure_registry: DockerRegistry, tmp_path: Path,
                            team_key: ec.EllipticCurvePrivateKey) -> None:
    assert secure_registry.tls is not None
    ref = parse_reference(f"{secure_registry.address}/team/app:v1")
    creds = _docker_config(tmp_path / "docker", secure_registry.address, "alice", "wonderland")
    with RegistryClient(creds, ca_bundle=str(secure_registry.tls.ca_pem), attempts=1) as client:
        digest = push_wasm(client, str(_wasm(tmp_path)), ref)
        pull_wasm(client, ref, str(tmp_path / "back.wasm"))
        sign_image(client, ref, team_key, format="legacy")
        assert verify_image(client, ref, [team_key.public_key()]).digest == digest
    assert (tmp_path / "back.wasm").read_bytes() == MODULE
    # Without the CA the certificate does not verify, and the client never falls back to plain HTTP.
    with RegistryClient(creds, attempts=1) as client, pytest.raises(RegistryError, match="certificate"):
        client.get_manifest(ref)
    wrong = _docker_config(tmp_path / "wrong", secure_registry.address, "alice", "queen")
    with RegistryClient(wrong, ca_bundle=str(secure_registry.tls.ca_pem), attempts=1) as client, \
            pytest.raises(RegistryError, match="HTTP 401 .credentials were refused."):
        client.get_manifest(ref)
    with RegistryClient(DockerCredentials({}), ca_bundle=str(secure_registry.tls.ca_pem), attempts=1) as client, \
            pytest.raises(RegistryError, match=f"no(ne)? .*for {secure_registry.address}"):
        client.get_manifest(ref)


def test_plain_http_is_not_used_for_a_registry_not_named_insecure() -> None:
    ref = parse_reference("registry.invalid:5000/team/app:v1")
    with RegistryClient(DockerCredentials({}), attempts=1, connect_timeout=2) as client, \
            pytest.raises(RegistryError, match="https://registry.invalid:5000"):
        client.get_manifest(ref)


# -- faults: 500, a hang ---------------------------------------------------------------------------------------
class FaultServer:
    """Answers every HTTP request with `status` (or never answers when `status` is 0), counting the requests for
    anything but the API root (`GET /v2/`, which the client's plain-HTTP probe asks once)."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.requests = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        held: list[socket.socket] = []
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(2)
            try:
                request = conn.recv(65536)
            except OSError:
                request = b""
            if request.startswith(b"\x16"):  # a TLS ClientHello: answer like a plain HTTP server does
                conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")
                conn.close()
                continue
            if not request.startswith(b"GET /v2/ "):
                self.requests += 1
            if self.status == 0:
                held.append(conn)  # never answer
                continue
            body = b'{"errors":[{"code":"UNKNOWN","message":"storage exploded"}]}'
            conn.sendall(b"HTTP/1.1 %d Oops\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n%s" % (self.status, len(body), body))
            conn.close()
        for conn in held:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()


@pytest.mark.parametrize("status, message", [(500, "HTTP 500: UNKNOWN: storage exploded .after 3 attempts."),
                                             (0, "no answer within 0.5s .*after 3 attempts.")])
def test_failing_or_hanging_registry_gives_up_with_the_reason(tmp_path: Path, status: int, message: str) -> None:
    server = FaultServer(status)
    try:
        ref = parse_reference(f"127.0.0.1:{server.port}/team/app:v1")
        with RegistryClient(DockerCredentials({}), attempts=3, backoff=0.01, read_timeout=0.5,
                            connect_timeout=0.5) as client:
            with pytest.raises(RegistryError, match=message):
                pull_wasm(client, ref, str(tmp_path / "app.wasm"))
        assert server.requests == 3
        assert not os.listdir(tmp_path)
    finally:
        server.close()


# -- a registry with the referrers API -----------------------------------------------------------------------
def test_bundle_found_through_the_referrers_api(tmp_path: Path, client: RegistryClient,
                                                team_key: ec.EllipticCurvePrivateKey) -> None:
    registry = ReferrersRegistry(tmp_path / "referrers").start()
    try:
        ref = parse_reference(f"{registry.address}/team/app:v1")
        digest = push_wasm(client, str(_wasm(tmp_path)), ref)
        assert client.referrers(ref, digest) == []
        sign_image(client, ref, team_key)
        found = client.referrers(ref, digest)
        assert len(found) == 1 and found[0].annotations["dev.sigstore.bundle.content"] == "dsse-envelope"
        # Without the fallback tag the signature is still found: the index came from the API.
        connection = http.client.HTTPConnection(registry.address, timeout=10)
        connection.request("DELETE", f"/v2/team/app/manifests/{fallback_tag(digest)}")
        assert connection.getresponse().status == 202
        connection.close()
        assert fallback_tag(digest) not in client.list_tags(ref)
        assert [s.format for s in verify_image(client, ref, [team_key.public_key()]).signatures] == ["bundle"]
    finally:
        registry.stop()


def test_bearer_token_auth(tmp_path: Path, team_key: ec.EllipticCurvePrivateKey) -> None:
    token = TokenServer(tmp_path / "token", {"alice": "wonderland"})
    registry = DockerRegistry(tmp_path / "registry", token=token).start()
    try:
        ref = parse_reference(f"{registry.address}/team/app:v1")
        creds = _docker_config(tmp_path / "docker", registry.address, "alice", "wonderland")
        with RegistryClient(creds, attempts=1) as client:
            digest = push_wasm(client, str(_wasm(tmp_path)), ref)  # pull,push scope
            pull_wasm(client, ref, str(tmp_path / "back.wasm"))
            sign_image(client, ref, team_key)
            assert verify_image(client, ref, [team_key.public_key()]).digest == digest
        assert (tmp_path / "back.wasm").read_bytes() == MODULE
        assert token.requests >= 1
        wrong = _docker_config(tmp_path / "wrong", registry.address, "alice", "queen")
        with RegistryClient(wrong, attempts=1) as client, \
                pytest.raises(RegistryError, match=f"token endpoint {token.realm} .*HTTP 401"):
            client.get_manifest(ref)
    finally:
        registry.stop()
        token.close()
