"""Registry requests through an HTTP proxy, as oras, cosign and containerd make them: `HTTPS_PROXY` (CONNECT for
TLS), `NO_PROXY`'s grammar, through a real proxy (Debian's tinyproxy) whose own log says which CONNECTs it carried.

Registry (TLS, a test CA) and proxy listen at a non-loopback address inside a network namespace the test links to
this one (Go clients never proxy loopback, and neither do we). Covered: the CLI's push and pull go through the proxy
(and so does the real oras with the same environment); NO_PROXY by address, CIDR, domain suffix and `*` keeps
requests direct; lower-case variables work; the node's daemon takes the proxy from containerd's environment, or from
the shim option https_proxy (what the chart sets), for its signature lookups through containerd 1.6 and 2.x.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from lab import registries
from lab.containerd import ContainerdFactory
from lab.netns import LinkedNamespace, linked_namespace
from lab.proxy import TinyProxy
from lab.registries import DockerRegistry, make_tls, tool
from lab.shimtools import RUNTIME, shim_log_text
from tests.integration.test_cosign_oras import WASM_SHIM, run
from wasm_shim.oci.auth import DockerCredentials
from wasm_shim.oci.cosign import sign_image
from wasm_shim.oci.layout import build_image, layout_tar
from wasm_shim.oci.manifest import MEDIA_TYPE_MANIFEST, Descriptor
from wasm_shim.oci.proxy import ProxySettings
from wasm_shim.oci.reference import parse_reference
from wasm_shim.oci.registry import RegistryClient

pytestmark = pytest.mark.integration


@dataclass
class Proxied:
    namespace: LinkedNamespace
    registry: DockerRegistry
    proxy: TinyProxy
    tls: registries.TestCA

    @property
    def env(self) -> dict[str, str]:
        clean = {k: v for k, v in os.environ.items() if k.lower() not in ("https_proxy", "http_proxy", "no_proxy")}
        return {**clean, "HTTPS_PROXY": self.proxy.url}


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[Proxied]:
    with linked_namespace("wshpx") as namespace:
        tls = make_tls(tmp_path / "tls", (namespace.peer_ip,))
        registry = DockerRegistry(tmp_path / "registry", tls=tls, host=namespace.peer_ip, netns=namespace.name)
        proxy = TinyProxy(tmp_path / "proxy", host=namespace.peer_ip, netns=namespace.name,
                          allow=(namespace.host_ip, namespace.peer_ip))
        registry.start()
        try:
            proxy.start()
            try:
                yield Proxied(namespace, registry, proxy, tls)
            finally:
                proxy.stop()
        finally:
            registry.stop()


def _home(tmp_path: Path, env: dict[str, str]) -> dict[str, str]:
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True, exist_ok=True)
    return {**env, "HOME": str(home), "DOCKER_CONFIG": str(home / ".docker")}


def test_the_cli_pushes_and_pulls_through_the_proxy_and_no_proxy_keeps_requests_direct(
        proxied: Proxied, guests: Path, tmp_path: Path) -> None:
    address = proxied.registry.address
    env = _home(tmp_path, proxied.env)
    ca = ["--ca-file", str(proxied.tls.ca_pem)]
    ref = f"{address}/team/hello:v1"
    run([WASM_SHIM, "push", *ca, str(guests / "hello.wasm"), ref], env)
    assert proxied.proxy.connects() and set(proxied.proxy.connects()) == {address}
    carried = len(proxied.proxy.connects())
    run([WASM_SHIM, "pull", *ca, ref, "-o", str(tmp_path / "a.wasm")], env)
    assert len(proxied.proxy.connects()) > carried
    assert (tmp_path / "a.wasm").read_bytes() == (guests / "hello.wasm").read_bytes()
    carried = len(proxied.proxy.connects())
    run([tool("oras"), "pull", *ca, ref, "-o", str(tmp_path / "oras")], env)  # the same environment, the same way
    assert len(proxied.proxy.connects()) > carried
    peer = proxied.namespace.peer_ip
    for no_proxy in (peer, f"{peer}:{proxied.registry.port}", "10.234.0.0/16", "*"):
        carried = len(proxied.proxy.connects())
        run([WASM_SHIM, "pull", *ca, ref, "-o", str(tmp_path / "b.wasm")], {**env, "NO_PROXY": no_proxy})
        assert len(proxied.proxy.connects()) == carried, f"NO_PROXY={no_proxy} went through the proxy"
    for no_proxy in (".example.com", f"{peer}:1", "10.235.0.0/16"):
        carried = len(proxied.proxy.connects())
        run([WASM_SHIM, "pull", *ca, ref, "-o", str(tmp_path / "c.wasm")], {**env, "no_proxy": no_proxy})
        assert len(proxied.proxy.connects()) > carried, f"NO_PROXY={no_proxy} kept the request direct"
    lower = {k: v for k, v in env.items() if k != "HTTPS_PROXY"} | {"https_proxy": proxied.proxy.url}
    carried = len(proxied.proxy.connects())
    run([WASM_SHIM, "tags", *ca, f"{address}/team/hello"], lower)
    assert len(proxied.proxy.connects()) > carried


def test_a_dead_proxy_is_named_in_the_error(proxied: Proxied, tmp_path: Path) -> None:
    env = _home(tmp_path, proxied.env) | {"HTTPS_PROXY": f"http://{proxied.namespace.peer_ip}:1"}
    failed = run([WASM_SHIM, "tags", "--ca-file", str(proxied.tls.ca_pem), "--timeout", "2",
                  f"{proxied.registry.address}/team/hello"], env, check=False)
    assert failed.returncode == 1 and "cannot connect through the proxy" in failed.stderr, failed.stderr


@pytest.mark.parametrize("source", ["environment", "option"])
def test_the_daemon_checks_signatures_through_the_proxy(
        containerd_factory: ContainerdFactory, proxied: Proxied, guests: Path, tmp_path: Path, source: str) -> None:
    address = proxied.registry.address
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "team.pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    policy = tmp_path / "policy.toml"
    policy.write_text(f'[[rule]]\nimages = ["{address}/team/*"]\nkeys = ["team.pub"]\n'
                      f'[registry]\nca_bundle = "{proxied.tls.ca_pem}"\ntimeout = 5\n')
    image = build_image({"/app.wasm": (guests / "hello.wasm").read_bytes()}, entrypoint=["/app.wasm"])
    ref = parse_reference(f"{address}/team/hello:v1")
    with RegistryClient(DockerCredentials({}), ca_bundle=str(proxied.tls.ca_pem),
                        proxies=ProxySettings(https_proxy=proxied.proxy.url)) as client:
        for blob in (image.layer, image.config):
            client.push_blob(ref, Descriptor(blob.media_type, blob.digest, blob.size),
                             functools.partial(bytes, blob.data))
        digest, _ = client.put_manifest(ref, "v1", image.manifest.data, MEDIA_TYPE_MANIFEST)
        sign_image(client, ref.with_digest(digest), key)
    carried = len(proxied.proxy.connects())
    cache = tmp_path / "shim-cache"
    cache.mkdir(mode=0o700)
    setting = {"HTTPS_PROXY": proxied.proxy.url} if source == "environment" else \
        {"WASM_SHIM_HTTPS_PROXY": proxied.proxy.url}
    containerd = containerd_factory(env={"WASM_SHIM_POLICY": str(policy), "WASM_SHIM_CACHE_DIR": str(cache),
                                         **setting})
    tar = tmp_path / "image.tar"
    tar.write_bytes(layout_tar(image, f"{ref.name}:v1", architecture="amd64", os="linux"))
    containerd.import_image(tar)  # the same bytes as pushed: containerd needs no proxy, the policy lookup does
    out = containerd.ctr("run", "--rm", "--runtime", RUNTIME, f"{ref.name}:v1", f"proxied-{source}", timeout=120)
    assert out.stdout == "hello from wasm\n"
    assert f"image {ref.name}@{digest} allowed by rule 1" in shim_log_text(containerd)
    assert len(proxied.proxy.connects()) > carried, "the signature lookup did not go through the proxy"
    assert set(proxied.proxy.connects()) == {address}
