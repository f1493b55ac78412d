"""The chart's `registryAccess` values, from `helm template` to a node and to the shim reaching a private registry.

The chart is rendered by the real helm; its installer command line is run (`wasm-shim node install`, on a fixture
host root) with a policy directory laid out as the kubelet projects the chart's ConfigMap and the docker config
Secret; the options file it writes is then the shim's config under a private containerd, which must verify a
signature in Debian's docker-registry with TLS from a test CA and bcrypt basic auth: reachable only with the
credentials and the CA the chart carried. Covered: proxies, credentials and CA become shim options; the Secret's
`.dockerconfigjson` lands as config.json, root-only (0600) on the node; without those files the shim is refused.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from lab.containerd import ContainerdFactory, CtrError
from lab.registries import DockerRegistry, make_tls
from lab.shimtools import RUNTIME
from tests.integration.test_chart import (  # noqa: F401  (the helm fixture)
    assert_valid,
    by_kind,
    helm,
    installer_argv,
    openapi,
    render,
)
from tests.unit.test_node_installer import LAYOUT_ROOTS, _configmap_dir, make_bundle, make_root, node, snapshot
from wasm_shim.oci.auth import DockerCredentials
from wasm_shim.oci.cosign import sign_image
from wasm_shim.oci.layout import build_image, layout_tar
from wasm_shim.oci.manifest import MEDIA_TYPE_MANIFEST, Descriptor
from wasm_shim.oci.reference import parse_reference
from wasm_shim.oci.registry import RegistryClient
from wasm_shim.shim.cli.main import build_parser

pytestmark = pytest.mark.integration

USER, PASSWORD = "node-puller", "pull only"


@pytest.fixture
def private(tmp_path: Path) -> Iterator[DockerRegistry]:
    registry = DockerRegistry(tmp_path / "registry", tls=make_tls(tmp_path / "tls"), users={USER: PASSWORD}).start()
    try:
        yield registry
    finally:
        registry.stop()


def test_registry_access_values_reach_the_node_and_the_shim_reaches_a_private_registry(
        helm: str, private: DockerRegistry, containerd_factory: ContainerdFactory, guests: Path,  # noqa: F811
        tmp_path: Path) -> None:
    assert private.tls is not None
    ca = private.tls.ca_pem.read_text()
    key = ec.generate_private_key(ec.SECP256R1())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    values = {
        "registryAccess": {"httpsProxy": "http://proxy.internal:3128", "noProxy": ".cluster.local,10.0.0.0/8",
                           "dockerConfigSecret": "node-pull", "caBundle": ca},
        "signaturePolicy": {"toml": f'default = "allow"\n[[rule]]\nimages = ["{private.address}/team/*"]\n'
                                    'keys = ["team.pub"]\n[registry]\ntimeout = 5\n', "keys": {"team.pub": pub}},
    }
    (tmp_path / "values.json").write_text(json.dumps(values))
    objects = render(helm, "-f", str(tmp_path / "values.json"))
    assert_valid(objects)
    argv = installer_argv(objects)
    args = build_parser().parse_args(argv)
    access = ("https_proxy", "no_proxy", "registry_docker_config", "registry_ca_bundle")
    assert [o for o in args.option if o.split("=", 1)[0] in access] == [
        "https_proxy=http://proxy.internal:3128", "no_proxy=.cluster.local,10.0.0.0/8",
        "registry_docker_config=/opt/wasm-shim/policy", "registry_ca_bundle=/opt/wasm-shim/policy/registry-ca.pem"]
    (ds,) = by_kind(objects, "DaemonSet")
    volume = next(v for v in ds["spec"]["template"]["spec"]["volumes"] if v["name"] == "signature-policy")
    assert volume["projected"]["sources"][1] == {"secret": {"name": "node-pull", "items": [
        {"key": ".dockerconfigjson", "path": "config.json"}]}}
    (configmap,) = by_kind(objects, "ConfigMap")
    assert configmap["data"]["registry-ca.pem"] == ca

    # The node: what the kubelet projects (the ConfigMap's data and the Secret's config.json), then the installer
    # with the chart's own options (the node paths under the fixture root).
    docker_config = json.dumps({"auths": {private.address: {
        "auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}}}).encode()
    projected = _configmap_dir(tmp_path / "projected", {**{k: v.encode() for k, v in configmap["data"].items()},
                                                         "config.json": docker_config})
    files, _, _ = LAYOUT_ROOTS["containerd-2.x"]
    root = make_root(tmp_path, files)
    before = snapshot(root)
    prefix = root / "opt/wasm-shim"
    options = [f"--option={o.replace('/opt/wasm-shim', str(prefix))}" for o in args.option if "proxy" not in o]
    done = node(root, "install", "--no-restart", "--policy-dir", str(projected), *options,
                bundle=make_bundle(tmp_path))
    assert done.returncode == 0, done.stderr
    installed = prefix / "policy"
    assert stat.S_IMODE((installed / "config.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((installed / "registry-ca.pem").stat().st_mode) == 0o644
    shim_options = tomllib.loads((prefix / "config.toml").read_text())
    assert shim_options["registry_docker_config"] == str(installed)
    assert shim_options["registry_ca_bundle"] == str(installed / "registry-ca.pem")

    # The shim with exactly those options verifies the signature in the private registry.
    cache = tmp_path / "shim-cache"
    cache.mkdir(mode=0o700)
    containerd = containerd_factory(env={"WASM_SHIM_CONFIG": str(prefix / "config.toml"),
                                         "WASM_SHIM_CACHE_DIR": str(cache)})
    names = []
    with RegistryClient(DockerCredentials(json.loads(docker_config)), ca_bundle=str(private.tls.ca_pem)) as client:
        for repository in ("hello", "hello2"):
            image = build_image({"/app.wasm": (guests / "hello.wasm").read_bytes(), "/id": repository.encode()},
                                entrypoint=["/app.wasm"])
            ref = parse_reference(f"{private.address}/team/{repository}:v1")
            for blob in (image.layer, image.config):
                client.push_blob(ref, Descriptor(blob.media_type, blob.digest, blob.size), lambda b=blob: b.data)
            digest, _ = client.put_manifest(ref, "v1", image.manifest.data, MEDIA_TYPE_MANIFEST)
            sign_image(client, ref.with_digest(digest), key)
            tar = tmp_path / f"{repository}.tar"
            tar.write_bytes(layout_tar(image, f"{ref.name}:v1", architecture="amd64", os="linux"))
            containerd.import_image(tar)
            names.append(f"{ref.name}:v1")
    out = containerd.ctr("run", "--rm", "--runtime", RUNTIME, names[0], "private-1", timeout=120)
    assert out.stdout == "hello from wasm\n"

    # Without the credentials the lookup is refused (what the chart could not give a node before).
    os.unlink(installed / "config.json")
    with pytest.raises(CtrError) as refused:
        containerd.ctr("run", "--rm", "--runtime", RUNTIME, names[1], "private-2", timeout=120)
    assert "the registry asks for a username and password and there are none" in refused.value.stderr
    (installed / "config.json").write_bytes(docker_config)
    (installed / "config.json").chmod(0o600)
    gone = node(root, "uninstall", "--no-restart")
    assert gone.returncode == 0, gone.stderr
    assert snapshot(root) == before
