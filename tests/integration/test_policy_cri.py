"""The signature policy through CRI (crictl -> containerd 2.x's CRI -> our shim): a wasm OCI artifact pulled by CRI
from a loopback registry runs when signed and is refused at StartContainer (what `kubectl describe` shows) when
not. The policy reaches the shim as a runtime option (`wasm-shim containerd-config --option policy=...`); CRI
names the image in the `io.kubernetes.cri.image-name` annotation.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from lab.cri_tools import HANDLER, CrictlError, CriNode, LocalRegistry
from lab.shimtools import shim_log_text
from tests.integration.test_cri import (  # noqa: F401  (fixtures)
    CriNodeFactory,
    _wasm_pod,
    cri_node_factory,
    registry,
)
from wasm_shim.oci.auth import DockerCredentials
from wasm_shim.oci.cosign import sign_image
from wasm_shim.oci.reference import parse_reference
from wasm_shim.oci.registry import RegistryClient
from wasm_shim.oci.transfer import push_wasm

pytestmark = pytest.mark.integration


def _node(cri_node_factory: CriNodeFactory, registry: LocalRegistry, tmp_path: Path,  # noqa: F811
          request: pytest.FixtureRequest, policy: Path) -> CriNode:
    if request.node.callspec.params["containerd_factory"] == "1.6":
        pytest.skip("containerd 1.6.20 unpacks every layer as a tar: CRI pulls of wasm artifacts need 2.x "
                    "(1.6 uses the wasm.shim.io/artifact annotation: test_policy_containerd.py)")
    hosts = registry.hosts_config(tmp_path / "certs.d")
    cache = tmp_path / "shim-cache"
    cache.mkdir(mode=0o700)
    return cri_node_factory(runtime_options=[f"policy={policy}", f"cache_dir={cache}"],
                            extra_config=f'[plugins."io.containerd.cri.v1.images".registry]\n'
                                         f'  config_path = "{hosts}"\n')


def test_cri_signed_artifact_runs_and_unsigned_is_refused(
    cri_node_factory: CriNodeFactory, registry: LocalRegistry, guests: Path, tmp_path: Path,  # noqa: F811
    request: pytest.FixtureRequest,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "team.pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    policy = tmp_path / "policy.toml"
    policy.write_text(f'default = "deny"\n[[rule]]\nimages = ["{registry.address}/wasm/*"]\nkeys = ["team.pub"]\n'
                      'mode = "enforce"\n')
    node = _node(cri_node_factory, registry, tmp_path, request, policy)
    with RegistryClient(DockerCredentials({})) as client:
        signed = parse_reference(f"{registry.address}/wasm/signed:v1")
        signed = signed.with_digest(push_wasm(client, str(guests / "hello.wasm"), signed))
        sign_image(client, signed, key)
        unsigned = parse_reference(f"{registry.address}/wasm/unsigned:v1")
        unsigned = unsigned.with_digest(push_wasm(client, str(guests / "hello.wasm"), unsigned,
                                                  annotations={"unsigned": "yes"}))
    for ref in (signed, unsigned):
        node.crictl.run("pull", f"{ref.name}:v1", timeout=120)
    pod_id, pod = _wasm_pod(node, "policy")
    ok = node.crictl.create(pod_id, node.container_config("ok", f"{signed.name}:v1", command=["/hello.wasm"]), pod)
    node.crictl.run("start", ok)
    node.crictl.wait_state(ok, "CONTAINER_EXITED")
    assert node.crictl.logs(ok).stdout.strip() == "hello from wasm"
    assert f"image {signed.name}@{signed.digest} allowed by rule 1" in shim_log_text(node.containerd)
    bad = node.crictl.create(pod_id, node.container_config("bad", f"{unsigned.name}:v1", command=["/hello.wasm"]),
                             pod)
    with pytest.raises(CrictlError) as refused:
        node.crictl.run("start", bad)
    assert (f"image {unsigned.name}@{unsigned.digest} refused by the signature policy: rule 1"
            in refused.value.stderr)
    assert "no signature found" in refused.value.stderr
    node.crictl.run("rm", ok, bad)
    node.crictl.run("stopp", pod_id)
    node.crictl.run("rmp", pod_id)


def test_cri_pod_annotation_artifact_on_containerd_16(
    cri_node_factory: CriNodeFactory, registry: LocalRegistry, guests: Path, tmp_path: Path,  # noqa: F811
    request: pytest.FixtureRequest,
) -> None:
    """containerd 1.6 cannot pull artifacts: the pod names one in `wasm.shim.io/artifact` on a stand-in image,
    the shim pulls it into the node's artifact cache under the same policy."""
    kind = request.node.callspec.params["containerd_factory"]
    if kind != "1.6":
        pytest.skip("the annotation path is for containerd 1.6 (2.x pulls artifacts itself: test above)")
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "team.pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    (tmp_path / "policy.toml").write_text(f'[[rule]]\nimages = ["{registry.address}/wasm/*"]\nkeys = ["team.pub"]\n')
    cache = tmp_path / "shim-cache"
    cache.mkdir(mode=0o700)
    options = tmp_path / "wasm-shim.toml"  # containerd 1.6 passes only ConfigPath to the shim (docs/cri.md)
    options.write_text(f'policy = "{tmp_path / "policy.toml"}"\ncache_dir = "{cache}"\n'
                       f'artifact_dir = "{tmp_path / "artifacts"}"\n'
                       f'artifact_registries = ["{registry.address}/wasm"]\n')
    plugin = "io.containerd.grpc.v1.cri"
    node = cri_node_factory(extra_config=f'[plugins."{plugin}".containerd.runtimes.wasmtime.options]\n'
                                         f'  ConfigPath = "{options}"\n')
    with RegistryClient(DockerCredentials({})) as client:
        signed = parse_reference(f"{registry.address}/wasm/signed:v1")
        signed = signed.with_digest(push_wasm(client, str(guests / "hello.wasm"), signed))
        sign_image(client, signed, key)
        unsigned = parse_reference(f"{registry.address}/wasm/unsigned:v1")
        unsigned = unsigned.with_digest(push_wasm(client, str(guests / "hello.wasm"), unsigned,
                                                  annotations={"unsigned": "yes"}))
    standin = node.wasm_image("standin", guests / "exit_code.wasm")  # has /app.wasm, not /hello.wasm
    for name, ref, runs in (("signed", signed, True), ("unsigned", unsigned, False)):
        pod = node.pod_config(name, annotations={"wasm.shim.io/artifact": f"{ref.name}:v1"})
        pod_id = node.crictl.runp(pod, runtime=HANDLER)
        cid = node.crictl.create(pod_id, node.container_config(name, standin, command=["/hello.wasm"]), pod)
        if runs:
            node.crictl.run("start", cid)
            node.crictl.wait_state(cid, "CONTAINER_EXITED")
            assert node.crictl.logs(cid).stdout.strip() == "hello from wasm"
        else:
            with pytest.raises(CrictlError) as refused:
                node.crictl.run("start", cid)
            assert f"image {ref.name}@{ref.digest} refused by the signature policy: rule 1" in refused.value.stderr
        node.crictl.run("rm", cid)
        node.crictl.run("stopp", pod_id)
        node.crictl.run("rmp", pod_id)
