"""Real registries on loopback for the supply-chain tests, and the real oras/cosign CLIs.

- `DockerRegistry`: Debian's `docker-registry` (distribution 2.8, no referrers API), optionally with TLS (a test CA
  and a server certificate for 127.0.0.1 made here with `cryptography`) and basic auth (a bcrypt htpasswd file,
  the only hash distribution accepts).
- `ReferrersRegistry`: go-containerregistry's in-memory registry with its OCI referrers API on
  (lab/tools/referrers-registry; GET /v2/<name>/referrers/<digest> answers an image index). `crane registry
  serve` is the same registry with the API off (it answers 404), and zot is not served by the Go module proxy.
- `TokenServer`: a token issuer for docker-registry's bearer-token authentication (distribution's token spec).
- `tool(name)`: the path of a Go CLI built by scripts/setup.sh into .tools/bin; a missing one fails the test
  (setup builds it), like the containerd fixtures do.

Every process started here is stopped by `stop()`; every wait is bounded.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from lab.containerd import TOOLS_BIN, HarnessError
from lab.procs import stop_process
from wasm_shim.oci.artifact import Artifact
from wasm_shim.oci.layout import Blob


def tool(name: str) -> str:
    path = TOOLS_BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found:
        return found
    raise HarnessError(f"{name} is not built (scripts/setup.sh builds it into .tools/bin)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_listening(port: int, process: subprocess.Popen[bytes], log: Path, what: str,
                    host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited: {log.read_text()[-2000:]}")
        with socket.socket() as conn:
            conn.settimeout(1)
            if conn.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {host}:{port} within 20 s")


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    stop_process(process)


@dataclass(frozen=True)
class TestCA:
    ca_pem: Path
    cert_pem: Path
    key_pem: Path
    client_cert_pem: Path | None = None  # a client certificate signed by the same CA (clientAuth)
    client_key_pem: Path | None = None


def make_tls(directory: Path, addresses: tuple[str, ...] = ()) -> TestCA:
    """A CA, and a server certificate for 127.0.0.1 / localhost (and `addresses`) and a client certificate signed by
    it (PEM files in `directory`)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wasm-shim test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                *(x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", *addresses)),
                x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wasm-shim test client")]))
              .issuer_name(ca_name).public_key(client_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
              .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    files = TestCA(directory / "ca.pem", directory / "server.pem", directory / "server.key", directory / "client.pem",
                   directory / "client.key")
    assert files.client_cert_pem is not None and files.client_key_pem is not None
    files.ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.client_cert_pem.write_bytes(client.public_bytes(serialization.Encoding.PEM))
    for path, secret in ((files.key_pem, key), (files.client_key_pem, client_key)):
        path.write_bytes(secret.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    return files


@dataclass
class DockerRegistry:
    root: Path
    tls: TestCA | None = None
    users: dict[str, str] = field(default_factory=dict)
    token: TokenServer | None = None  # bearer-token auth instead of htpasswd
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    host: str = "127.0.0.1"  # where it listens
    netns: str = ""  # a network namespace to run it in (lab/netns.py linked_namespace: host is its peer_ip)
    client_certificates: bool = False  # with tls: only clients showing a certificate of the test CA (mutual TLS)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> DockerRegistry:
        binary = shutil.which("docker-registry")
        if binary is None:
            raise HarnessError("docker-registry is missing (scripts/setup.sh installs it)")
        self.port = free_port()
        self.root.mkdir(parents=True, exist_ok=True)
        http = f"http:\n  addr: {self.host}:{self.port}\n"
        if self.tls:
            http += f"  tls:\n    certificate: {self.tls.cert_pem}\n    key: {self.tls.key_pem}\n"
            if self.client_certificates:
                http += f"    clientcas:\n      - {self.tls.ca_pem}\n"
        auth = self.token.registry_auth() if self.token else ""
        if self.users and not self.token:
            import bcrypt

            lines = [f"{user}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=5)).decode()}"
                     for user, pw in self.users.items()]
            (self.root / "htpasswd").write_text("\n".join(lines) + "\n")
            auth = f"auth:\n  htpasswd:\n    realm: test\n    path: {self.root / 'htpasswd'}\n"
        config = self.root / "config.yml"
        config.write_text("version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
                          f"    rootdirectory: {self.root / 'data'}\n  delete:\n    enabled: true\n" + http + auth)
        log = self.root / "registry.log"
        with log.open("ab") as out:
            argv = [binary, "serve", str(config)]
            if self.netns:
                argv = ["ip", "netns", "exec", self.netns, *argv]
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        _wait_listening(self.port, self.process, log, "docker-registry", self.host)
        return self

    def stop(self) -> None:
        _stop(self.process)

    def blob_path(self, digest: str) -> Path:
        hex_digest = digest.removeprefix("sha256:")
        return self.root / "data/docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest / "data"


@dataclass
class ReferrersRegistry:
    root: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ReferrersRegistry:
        binary = tool("referrers-registry")
        self.port = free_port()
        self.root.mkdir(parents=True, exist_ok=True)
        log = self.root / "registry.log"
        with log.open("ab") as out:
            self.process = subprocess.Popen([binary, "--address", self.address],
                                            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        _wait_listening(self.port, self.process, log, "referrers-registry")
        return self

    def stop(self) -> None:
        _stop(self.process)


class TokenServer:
    """A token issuer for docker-registry's `auth: token` (distribution's token authentication spec): checks Basic
    credentials and answers {"token": JWT} granting the scope asked for, signed ES256 by a key whose certificate
    the registry trusts (rootcertbundle). Loopback only; stops with `close()`."""

    def __init__(self, directory: Path, users: dict[str, str], service: str = "test-registry",
                 issuer: str = "test-issuer") -> None:
        import base64
        import http.server
        import json
        import threading

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
        from cryptography.x509.oid import NameOID

        self.service, self.issuer, self.requests = service, issuer, 0
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "token signer")])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
        directory.mkdir(parents=True, exist_ok=True)
        self.cert_pem = directory / "token-signer.pem"
        self.cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        # libtrust's key ID, which distribution matches the JWT's `kid` against: base32 of the first 30 bytes of
        # sha256(SPKI DER), in groups of four joined by ':'.
        spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
        digest = base64.b32encode(hashlib.sha256(spki).digest()[:30]).decode().rstrip("=")
        kid = ":".join(digest[i:i + 4] for i in range(0, len(digest), 4))
        expected = {"Basic " + base64.b64encode(f"{u}:{p}".encode()).decode() for u, p in users.items()}
        outer = self

        def b64url(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).decode().rstrip("=")

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                from urllib.parse import parse_qs, urlsplit

                outer.requests += 1
                if self.headers.get("Authorization") not in expected:
                    self.send_response(401)
                    self.end_headers()
                    return
                query = parse_qs(urlsplit(self.path).query)
                access = []
                for scope in query.get("scope", []):
                    kind, repo, actions = scope.split(":")
                    access.append({"type": kind, "name": repo, "actions": actions.split(",")})
                issued = int(time.time())
                header = {"typ": "JWT", "alg": "ES256", "kid": kid}
                claims = {"iss": outer.issuer, "sub": "alice", "aud": query.get("service", [""])[0],
                          "exp": issued + 300, "nbf": issued - 10, "iat": issued, "jti": str(issued),
                          "access": access}
                signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
                r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
                token = f"{signing_input}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
                body = json.dumps({"token": token}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self._server.server_address[1]}/token"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        daemon=True)
        self._thread.start()

    def registry_auth(self) -> str:
        return (f"auth:\n  token:\n    realm: {self.realm}\n    service: {self.service}\n    issuer: {self.issuer}\n"
                f"    rootcertbundle: {self.cert_pem}\n")

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


# --- a minimal artifact pusher (plain HTTP, loopback only), to put hand-built artifacts into a test registry ---

_PUSH_TIMEOUT = 30.0


def _require_loopback(host: str) -> None:
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise HarnessError(f"push_artifact only talks to a registry on loopback (127.0.0.1, ::1, localhost), not {host}")


class _Registry:
    def __init__(self, registry: str) -> None:
        parts = urlsplit(f"http://{registry}")
        if not parts.hostname or not parts.port:
            raise HarnessError(f"registry must be HOST:PORT, got {registry!r}")
        _require_loopback(parts.hostname)
        self.host, self.port = parts.hostname, parts.port

    def request(self, method: str, path: str, body: bytes = b"",
                headers: Mapping[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        import http.client

        conn = http.client.HTTPConnection(self.host, self.port, timeout=_PUSH_TIMEOUT)
        try:
            all_headers = {"Content-Length": str(len(body)), **(headers or {})}
            conn.request(method, path, body=body, headers=all_headers)
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        except OSError as exc:
            raise HarnessError(f"{method} http://{self.host}:{self.port}{path}: {exc}") from None
        finally:
            conn.close()


def _push_blob(registry: _Registry, repository: str, blob: Blob) -> None:
    status, _, _ = registry.request("HEAD", f"/v2/{repository}/blobs/{blob.digest}")
    if status == 200:
        return
    # distribution-spec "Pushing a blob monolithically": POST to open an upload session, then PUT with ?digest=.
    status, headers, body = registry.request("POST", f"/v2/{repository}/blobs/uploads/")
    if status != 202 or "location" not in headers:
        raise HarnessError(f"opening a blob upload in {repository} failed: HTTP {status} {body[:300]!r}")
    location = urlsplit(headers["location"])
    separator = "&" if location.query else "?"
    target = f"{location.path}?{location.query}" if location.query else location.path
    target += f"{separator}digest={blob.digest}"
    status, _, body = registry.request("PUT", target, blob.data, {"Content-Type": "application/octet-stream"})
    if status != 201:
        raise HarnessError(f"uploading blob {blob.digest} to {repository} failed: HTTP {status} {body[:300]!r}")


def push_artifact(artifact: Artifact, registry: str, repository: str, tag: str) -> str:
    """Push to `registry` (HOST:PORT on loopback) as `repository:tag`; return the manifest digest."""
    target = _Registry(registry)
    for blob in (artifact.layer, artifact.config):
        _push_blob(target, repository, blob)
    status, _, body = target.request("PUT", f"/v2/{repository}/manifests/{tag}", artifact.manifest.data,
                                     {"Content-Type": artifact.manifest.media_type})
    if status != 201:
        raise HarnessError(f"pushing the manifest {repository}:{tag} failed: HTTP {status} {body[:300]!r}")
    return artifact.manifest.digest
