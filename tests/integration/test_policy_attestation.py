"""A policy that requires signed SLSA provenance, made by the real `cosign attest`, enforced by the shim at Create
through a private containerd (1.6 and 2.x, with `ctr`) and through CRI (containerd 2.x, with `crictl`).

The rule requires an attestation of predicate type https://slsa.dev/provenance/v1 signed by the builder's key whose
`runDetails.builder.id` is the trusted builder. Covered: present and valid (cosign's bundle format, and its legacy
`.att` format) runs, and a second start is answered from the verification cache; missing, signed by another key,
and with another builder id are refused with a message naming the image, the rule and the reason.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.containerd import ContainerdFactory, CtrError
from lab.cri_tools import CrictlError, LocalRegistry
from lab.registries import DockerRegistry, tool
from lab.shimtools import RUNTIME, shim_log_text
from tests.integration.test_cri import (  # noqa: F401  (fixtures)
    CriNodeFactory,
    _wasm_pod,
    cri_node_factory,
    registry,
)
from wasm_shim.oci.auth import DockerCredentials
from wasm_shim.oci.layout import build_image
from wasm_shim.oci.manifest import MEDIA_TYPE_MANIFEST, Descriptor
from wasm_shim.oci.reference import Reference, parse_reference
from wasm_shim.oci.registry import RegistryClient
from wasm_shim.oci.transfer import push_wasm

pytestmark = pytest.mark.integration

PASSWORD = "builder password"
BUILDER = "https://ci.example/builders/wasm@v1"
SLSA1 = "https://slsa.dev/provenance/v1"


def _policy(address: str) -> str:
    return (f'default = "allow"\n[[rule]]\nimages = ["{address}/team/*"]\nmode = "enforce"\n'
            f'[[rule.attestations]]\ntype = "slsaprovenance1"\nkeys = ["builder/cosign.pub"]\n'
            f'conditions = {{ "runDetails.builder.id" = "{BUILDER}" }}\n[registry]\ntimeout = 5\n')


@dataclass
class Builders:
    """Two cosign key pairs (the trusted builder's, another's) and the real cosign that attests with them."""

    tmp: Path

    def __post_init__(self) -> None:
        home = self.tmp / "home"
        (home / ".docker").mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "HOME": str(home), "DOCKER_CONFIG": str(home / ".docker"),
                    "COSIGN_PASSWORD": PASSWORD, "COSIGN_YES": "true"}
        for name in ("builder", "other"):
            (self.tmp / name).mkdir(exist_ok=True)
            self._cosign(["generate-key-pair"], cwd=self.tmp / name)

    def _cosign(self, argv: list[str], cwd: Path | None = None) -> None:
        done = subprocess.run([tool("cosign"), *argv], env=self.env, cwd=cwd, capture_output=True, text=True,
                              timeout=120, check=False)
        assert done.returncode == 0, f"cosign {' '.join(argv)}: {done.stdout}\n{done.stderr}"

    def attest(self, ref: Reference, *, key: str = "builder", builder: str = BUILDER, legacy: bool = False) -> None:
        predicate = self.tmp / f"provenance-{ref.digest}.json"
        predicate.write_text(json.dumps({
            "buildDefinition": {"buildType": "https://ci.example/wasm-build/v1", "externalParameters": {}},
            "runDetails": {"builder": {"id": builder}}}))
        argv = ["attest", "--key", str(self.tmp / key / "cosign.key"), "--type", "slsaprovenance1", "--predicate",
                str(predicate), "--tlog-upload=false", "--use-signing-config=false", "--allow-http-registry", "-y",
                f"{ref.name}@{ref.digest}"]
        if legacy:
            argv.insert(1, "--new-bundle-format=false")
        self._cosign(argv)


def _push_image(client: RegistryClient, address: str, repository: str, wasm: bytes) -> Reference:
    """A regular OCI image whose rootfs holds /app.wasm (its entrypoint), pushed as REPOSITORY:v1 (its digest is
    the repository's own: a file names it)."""
    image = build_image({"/app.wasm": wasm, "/build": repository.encode()}, entrypoint=["/app.wasm"])
    ref = parse_reference(f"{address}/{repository}:v1")
    for blob in (image.layer, image.config):
        client.push_blob(ref, Descriptor(blob.media_type, blob.digest, blob.size), functools.partial(bytes, blob.data))
    digest, _ = client.put_manifest(ref, "v1", image.manifest.data, MEDIA_TYPE_MANIFEST)
    return ref.with_digest(digest)


@pytest.fixture
def docker_registry(tmp_path: Path) -> Iterator[DockerRegistry]:
    instance = DockerRegistry(tmp_path / "registry").start()
    try:
        yield instance
    finally:
        instance.stop()


def test_ctr_runs_an_image_with_valid_provenance_and_refuses_the_others(
        containerd_factory: ContainerdFactory, docker_registry: DockerRegistry, guests: Path, tmp_path: Path) -> None:
    address = docker_registry.address
    builders = Builders(tmp_path)
    (tmp_path / "policy.toml").write_text(_policy(address))
    cache = tmp_path / "shim-cache"
    cache.mkdir(mode=0o700)
    containerd = containerd_factory(env={"WASM_SHIM_POLICY": str(tmp_path / "policy.toml"),
                                         "WASM_SHIM_CACHE_DIR": str(cache)})
    wasm = (guests / "hello.wasm").read_bytes()
    with RegistryClient(DockerCredentials({}), attempts=1) as client:
        images = {name: _push_image(client, address, f"team/{name}", wasm)
                  for name in ("bundle", "legacy", "missing", "otherkey", "otherbuilder")}
    builders.attest(images["bundle"])
    builders.attest(images["legacy"], legacy=True)
    builders.attest(images["otherkey"], key="other")
    builders.attest(images["otherbuilder"], builder="https://evil.example/builder")

    def run(name: str, task_id: str) -> tuple[int, str]:
        ref = images[name]
        containerd.ctr("images", "pull", "--plain-http", f"{ref.name}:v1", timeout=120)
        try:
            done = containerd.ctr("run", "--rm", "--runtime", RUNTIME, f"{ref.name}:v1", task_id, timeout=120)
        except CtrError as exc:
            return exc.returncode, str(exc.stderr)
        return done.returncode, done.stdout

    for name in ("bundle", "legacy"):
        outcome = run(name, f"{name}-1")
        assert outcome == (0, "hello from wasm\n"), outcome[1]
        ref = images[name]
        assert (f"image {ref.name}@{ref.digest} allowed by rule 1 (images {address}/team/*; mode enforce): "
                f"attestation {SLSA1} verified with builder/cosign.pub") in shim_log_text(containerd)
    refusals = {
        "missing": "no attestation found (no sigstore bundle referrer of",
        "otherkey": "made by another key (the DSSE signature does not verify with any key of the rule)",
        "otherbuilder": f'the predicate\'s runDetails.builder.id is "https://evil.example/builder", the rule '
                        f'requires "{BUILDER}"',
    }
    for name, reason in refusals.items():
        status, stderr = run(name, f"{name}-1")
        ref = images[name]
        assert status != 0 and "hello from wasm" not in stderr
        assert (f"image {ref.name}@{ref.digest} refused by the signature policy: rule 1 (images {address}/team/*; "
                f"mode enforce): {ref.name}:v1@{ref.digest}: no valid attestation of predicate type {SLSA1}: "
                in stderr), stderr
        assert reason in stderr, stderr
    docker_registry.stop()  # a second start needs no registry: the verification is cached
    done = containerd.ctr("run", "--rm", "--runtime", RUNTIME, f"{images['legacy'].name}:v1", "legacy-2",
                          timeout=120)
    assert done.stdout == "hello from wasm\n"
    assert "attestations verified (cached)" in shim_log_text(containerd)


def test_crictl_runs_an_artifact_with_valid_provenance_and_refuses_another_builders(
        cri_node_factory: CriNodeFactory, registry: LocalRegistry, guests: Path, tmp_path: Path,  # noqa: F811
        request: pytest.FixtureRequest) -> None:
    if request.node.callspec.params["containerd_factory"] == "1.6":
        pytest.skip("containerd 1.6.20 unpacks every layer as a tar: CRI pulls of wasm artifacts need 2.x "
                    "(the ctr test above covers 1.6)")
    builders = Builders(tmp_path)
    (tmp_path / "policy.toml").write_text(_policy(registry.address))
    hosts = registry.hosts_config(tmp_path / "certs.d")
    cache = tmp_path / "shim-cache"
    cache.mkdir(mode=0o700)
    node = cri_node_factory(runtime_options=[f"policy={tmp_path / 'policy.toml'}", f"cache_dir={cache}"],
                            extra_config=f'[plugins."io.containerd.cri.v1.images".registry]\n'
                                         f'  config_path = "{hosts}"\n')
    with RegistryClient(DockerCredentials({})) as client:
        good = parse_reference(f"{registry.address}/team/good:v1")
        good = good.with_digest(push_wasm(client, str(guests / "hello.wasm"), good))
        bad = parse_reference(f"{registry.address}/team/bad:v1")
        bad = bad.with_digest(push_wasm(client, str(guests / "hello.wasm"), bad, annotations={"build": "2"}))
    builders.attest(good)
    builders.attest(bad, builder="https://evil.example/builder")
    for ref in (good, bad):
        node.crictl.run("pull", f"{ref.name}:v1", timeout=120)
    pod_id, pod = _wasm_pod(node, "provenance")
    ok = node.crictl.create(pod_id, node.container_config("ok", f"{good.name}:v1", command=["/hello.wasm"]), pod)
    node.crictl.run("start", ok)
    node.crictl.wait_state(ok, "CONTAINER_EXITED")
    assert node.crictl.logs(ok).stdout.strip() == "hello from wasm"
    assert f"image {good.name}@{good.digest} allowed by rule 1" in shim_log_text(node.containerd)
    refused = node.crictl.create(pod_id, node.container_config("bad", f"{bad.name}:v1", command=["/hello.wasm"]),
                                 pod)
    with pytest.raises(CrictlError) as failed:
        node.crictl.run("start", refused)
    assert f"image {bad.name}@{bad.digest} refused by the signature policy: rule 1" in failed.value.stderr
    # crictl prints the message inside a quoted string: its own quotes come back escaped.
    assert 'runDetails.builder.id is \\"https://evil.example/builder\\", the rule requires' in failed.value.stderr
    node.crictl.run("rm", ok, refused)
    node.crictl.run("stopp", pod_id)
    node.crictl.run("rmp", pod_id)
