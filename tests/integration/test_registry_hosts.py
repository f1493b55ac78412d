"""The shim's own registry lookups follow containerd's registry host configuration (`config_path`, hosts.toml),
through a private containerd (1.6 and 2.x) and `ctr`: one configuration per node.

- A TLS registry whose CA only hosts.toml names (`ca = ...`): containerd pulls with it, and the policy's signature
  lookup, found through the config_path in containerd's own config file, verifies with it too (before, the lookup
  used the system's CAs and refused the signed image with a TLS error).
- A plain-HTTP registry at a non-loopback address (in a network namespace the test links to this one), named
  `server = "http://..."` in a hosts.toml the shim option registry_config_path points at: the lookup speaks plain
  HTTP there, as containerd does (before, only the policy's `[registry] insecure` list allowed it: the failure seen
  where signature checks refused a signed pod that containerd had pulled).
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from lab.containerd import Containerd, ContainerdFactory
from lab.netns import LinkedNamespace, linked_namespace
from lab.registries import DockerRegistry, make_tls
from lab.shimtools import RUNTIME, shim_log_text
from wasm_shim.oci.auth import DockerCredentials
from wasm_shim.oci.cosign import sign_image
from wasm_shim.oci.layout import build_image
from wasm_shim.oci.manifest import MEDIA_TYPE_MANIFEST, Descriptor
from wasm_shim.oci.reference import Reference, parse_reference
from wasm_shim.oci.registry import RegistryClient

pytestmark = pytest.mark.integration


def _config_path_table(containerd_kind: str, directory: Path) -> str:
    plugin = "io.containerd.grpc.v1.cri" if containerd_kind == "1.6" else "io.containerd.cri.v1.images"
    return f'[plugins."{plugin}".registry]\n  config_path = "{directory}"\n'


def _policy(tmp: Path, address: str) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp / "team.pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    (tmp / "team.key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    path = tmp / "policy.toml"
    path.write_text(f'default = "allow"\n[[rule]]\nimages = ["{address}/team/*"]\nkeys = ["team.pub"]\n'
                    'mode = "enforce"\n[registry]\ntimeout = 5\n')
    return path


def _push_signed(client: RegistryClient, tmp: Path, address: str, wasm: bytes) -> Reference:
    image = build_image({"/app.wasm": wasm}, entrypoint=["/app.wasm"])
    ref = parse_reference(f"{address}/team/hello:v1")
    for blob in (image.layer, image.config):
        client.push_blob(ref, Descriptor(blob.media_type, blob.digest, blob.size), functools.partial(bytes, blob.data))
    digest, _ = client.put_manifest(ref, "v1", image.manifest.data, MEDIA_TYPE_MANIFEST)
    key = serialization.load_pem_private_key((tmp / "team.key.pem").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    pinned = ref.with_digest(digest)
    sign_image(client, pinned, key)
    return pinned


def _pull_and_run(containerd: Containerd, ref: Reference, hosts: Path, task_id: str) -> str:
    image = f"{ref.name}:v1"
    containerd.ctr("images", "pull", "--hosts-dir", str(hosts), image, timeout=120)
    return containerd.ctr("run", "--rm", "--runtime", RUNTIME, image, task_id, timeout=120).stdout


@pytest.fixture
def tls_registry(tmp_path: Path) -> Iterator[DockerRegistry]:
    registry = DockerRegistry(tmp_path / "registry", tls=make_tls(tmp_path / "tls")).start()
    try:
        yield registry
    finally:
        registry.stop()


def test_a_ca_named_in_hosts_toml_verifies_the_signature_lookup(
        containerd_factory: ContainerdFactory, tls_registry: DockerRegistry, guests: Path, tmp_path: Path,
        request: pytest.FixtureRequest) -> None:
    address = tls_registry.address
    assert tls_registry.tls is not None
    hosts = tmp_path / "certs.d"
    (hosts / address).mkdir(parents=True)
    shutil.copy(tls_registry.tls.ca_pem, hosts / address / "registry-ca.crt")
    (hosts / address / "hosts.toml").write_text(f'server = "https://{address}"\n\n[host."https://{address}"]\n'
                                                '  capabilities = ["pull", "resolve"]\n  ca = "registry-ca.crt"\n')
    policy = _policy(tmp_path, address)
    cache = tmp_path / "shim-cache"
    cache.mkdir(mode=0o700)
    kind = request.node.callspec.params["containerd_factory"]
    containerd = containerd_factory(extra_config=_config_path_table(kind, hosts),
                                    env={"WASM_SHIM_POLICY": str(policy), "WASM_SHIM_CACHE_DIR": str(cache)})
    with RegistryClient(DockerCredentials({}), ca_bundle=str(tls_registry.tls.ca_pem)) as client:
        ref = _push_signed(client, tmp_path, address, (guests / "hello.wasm").read_bytes())
    assert _pull_and_run(containerd, ref, hosts, "tls-1") == "hello from wasm\n"
    log = shim_log_text(containerd)
    assert f"image {ref.name}@{ref.digest} allowed by rule 1" in log
    assert f"registry lookups follow containerd's host configuration: config_path {hosts} (from " \
           f"{containerd.config_path})" in log


@pytest.fixture
def remote_registry(tmp_path: Path) -> Iterator[tuple[DockerRegistry, LinkedNamespace]]:
    with linked_namespace("wshreg") as namespace:
        registry = DockerRegistry(tmp_path / "registry", host=namespace.peer_ip, netns=namespace.name).start()
        try:
            yield registry, namespace
        finally:
            registry.stop()


def test_a_plain_http_server_in_hosts_toml_is_asked_in_plain_http(
        containerd_factory: ContainerdFactory, remote_registry: tuple[DockerRegistry, LinkedNamespace],
        guests: Path, tmp_path: Path) -> None:
    registry, _ = remote_registry
    address = registry.address  # 10.234.x.y:PORT: not loopback, so plain HTTP needs saying
    hosts = tmp_path / "certs.d"
    (hosts / address).mkdir(parents=True)
    (hosts / address / "hosts.toml").write_text(f'server = "http://{address}"\n\n[host."http://{address}"]\n'
                                                '  capabilities = ["pull", "resolve"]\n')
    policy = _policy(tmp_path, address)
    cache = tmp_path / "shim-cache"
    cache.mkdir(mode=0o700)
    containerd = containerd_factory(env={"WASM_SHIM_POLICY": str(policy), "WASM_SHIM_CACHE_DIR": str(cache),
                                         "WASM_SHIM_REGISTRY_CONFIG_PATH": f"/nonexistent:{hosts}"})
    with RegistryClient(DockerCredentials({}), insecure=(address,)) as client:
        ref = _push_signed(client, tmp_path, address, (guests / "hello.wasm").read_bytes())
    assert _pull_and_run(containerd, ref, hosts, "plain-1") == "hello from wasm\n"
    assert f"image {ref.name}@{ref.digest} allowed by rule 1" in shim_log_text(containerd)
