"""The signature policy enforced by the shim at Create, through a private containerd (1.6 and 2.x) and `ctr`.

Images are pushed to Debian's docker-registry on loopback, signed there (our signer; cosign interop is in
test_cosign_oras.py), pulled by containerd with `ctr images pull --plain-http`, and run with `ctr run`. The shim
gets its policy through the environment (WASM_SHIM_POLICY, config source 4). Covered: under enforce a signed image
runs; unsigned, signed by another key, signed for another digest and re-tagged after signing are refused with a
message naming the image, the rule and the reason; warn runs and logs; verification is cached, so a second start
needs no registry; a policy that does not parse refuses everything; and the shim's own registry path (annotation
wasm.shim.io/artifact) for containerd 1.6, verified by the same policy.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from lab.containerd import Containerd, ContainerdFactory, CtrError
from lab.fixtures import BUSYBOX_REF
from lab.registries import DockerRegistry
from lab.shimtools import RUNTIME, daemon_pids, shim_log_text, task_status, wait_for
from wasm_shim.oci.auth import DockerCredentials
from wasm_shim.oci.cosign import sign_image, signature_tag
from wasm_shim.oci.layout import build_image
from wasm_shim.oci.manifest import MEDIA_TYPE_MANIFEST, Descriptor
from wasm_shim.oci.reference import Reference, parse_reference
from wasm_shim.oci.registry import RegistryClient
from wasm_shim.oci.transfer import push_wasm

pytestmark = pytest.mark.integration


@dataclass
class Node:
    containerd: Containerd
    registry: DockerRegistry
    client: RegistryClient
    team: ec.EllipticCurvePrivateKey
    tmp: Path

    def push_image(self, repository: str, wasm: bytes) -> Reference:
        """A regular OCI image whose rootfs holds /app.wasm (its entrypoint), pushed as REPOSITORY:v1."""
        image = build_image({"/app.wasm": wasm}, entrypoint=["/app.wasm"])
        ref = parse_reference(f"{self.registry.address}/{repository}:v1")
        for blob in (image.layer, image.config):
            descriptor = Descriptor(blob.media_type, blob.digest, blob.size)
            self.client.push_blob(ref, descriptor, functools.partial(bytes, blob.data))
        digest, _ = self.client.put_manifest(ref, "v1", image.manifest.data, MEDIA_TYPE_MANIFEST)
        return ref.with_digest(digest)

    def pull(self, ref: Reference) -> str:
        name = f"{ref.name}:{ref.tag}"
        self.containerd.ctr("images", "pull", "--plain-http", name, timeout=120)
        return name

    def run(self, image: str, task_id: str, *extra: str, check: bool = True) -> str:
        try:
            out = self.containerd.ctr("run", "--rm", "--runtime", RUNTIME, *extra, image, task_id, timeout=120)
        except CtrError as exc:
            if check:
                raise
            return str(exc.stderr)
        assert not check or out.returncode == 0
        return out.stdout


def _write_pub(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


@pytest.fixture
def node_factory(containerd_factory: ContainerdFactory, tmp_path: Path) -> Iterator[Callable[..., Node]]:
    registry = DockerRegistry(tmp_path / "registry").start()
    team = ec.generate_private_key(ec.SECP256R1())
    _write_pub(tmp_path / "team.pub", team)
    client = RegistryClient(DockerCredentials({}), attempts=1)

    def make(policy: str | Callable[[int], str] | None = None, **env: str) -> Node:
        addr = registry.address
        if callable(policy):  # the policy text for the registry's port
            policy = policy(registry.port)
        text = policy if policy is not None else (
            'default = "allow"\n'
            f'[[rule]]\nimages = ["{addr}/team/*"]\nkeys = ["team.pub"]\nmode = "enforce"\n'
            f'[[rule]]\nimages = ["{addr}/relaxed/*"]\nkeys = ["team.pub"]\nmode = "warn"\n'
            '[registry]\ntimeout = 5\n')
        (tmp_path / "policy.toml").write_text(text)
        cache = tmp_path / "shim-cache"
        cache.mkdir(mode=0o700, exist_ok=True)
        containerd = containerd_factory(env={"WASM_SHIM_POLICY": str(tmp_path / "policy.toml"),
                                             "WASM_SHIM_CACHE_DIR": str(cache),
                                             "WASM_SHIM_ARTIFACT_DIR": str(tmp_path / "artifacts"),
                                             "WASM_SHIM_ARTIFACT_REGISTRIES": f"{addr}/team", **env})
        return Node(containerd, registry, client, team, tmp_path)

    try:
        yield make
    finally:
        client.close()
        registry.stop()


@pytest.fixture
def node(node_factory: Callable[..., Node]) -> Node:
    return node_factory()


def test_signed_runs_and_the_verification_is_cached(node: Node, guests: Path) -> None:
    ref = node.push_image("team/hello", (guests / "hello.wasm").read_bytes())
    sign_image(node.client, ref, node.team)
    image = node.pull(ref)
    assert node.run(image, "signed-1").strip() == "hello from wasm"
    log = shim_log_text(node.containerd)
    assert f"image {ref.name}@{ref.digest} allowed by rule 1" in log and "signature verified with team.pub" in log
    node.registry.stop()  # a warm start needs no registry: the verification is cached
    assert node.run(image, "signed-2").strip() == "hello from wasm"
    assert "signature verified (cached)" in shim_log_text(node.containerd)


def _refusal(node: Node, image: str, ref: Reference, task_id: str) -> str:
    stderr = node.run(image, task_id, check=False)
    assert f"image {ref.name}@{ref.digest} refused by the signature policy: rule 1 (images " in stderr, stderr
    assert "hello from wasm" not in stderr
    return stderr


def test_unsigned_is_refused(node: Node, guests: Path) -> None:
    ref = node.push_image("team/unsigned", (guests / "hello.wasm").read_bytes())
    stderr = _refusal(node, node.pull(ref), ref, "unsigned-1")
    assert "no signature found" in stderr
    assert "refused by the signature policy" in shim_log_text(node.containerd)


def test_signed_by_another_key_is_refused(node: Node, guests: Path) -> None:
    ref = node.push_image("team/otherkey", (guests / "hello.wasm").read_bytes())
    sign_image(node.client, ref, ec.generate_private_key(ec.SECP256R1()), format="legacy")
    assert "made by another key" in _refusal(node, node.pull(ref), ref, "otherkey-1")


def test_signature_for_another_digest_is_refused(node: Node, guests: Path) -> None:
    signed = node.push_image("team/pair", (guests / "hello.wasm").read_bytes())
    sign_image(node.client, signed, node.team, format="legacy")
    target = node.push_image("team/pair2", (guests / "hello.wasm").read_bytes() + b"\0")
    # Copy the .sig manifest (and its blobs) of the signed image to the other image's .sig tag.
    sig = node.client.get_manifest(signed.with_tag(signature_tag(signed.digest)))
    doc = sig.json("sig")
    for blob in [doc["config"], *doc["layers"]]:
        desc = Descriptor.parse(blob, "sig")
        data = node.client.fetch_blob_bytes(signed, desc, 1 << 20)
        node.client.push_blob(target, desc, functools.partial(bytes, data))
    node.client.put_manifest(target, signature_tag(target.digest), sig.data, MEDIA_TYPE_MANIFEST)
    stderr = _refusal(node, node.pull(target), target, "otherdigest-1")
    assert f"signed for another digest ({signed.digest}), not {target.digest}" in stderr


def test_retagged_after_signing_is_refused(node: Node, guests: Path) -> None:
    first = node.push_image("team/retag", (guests / "hello.wasm").read_bytes())
    sign_image(node.client, first, node.team)
    second = node.push_image("team/retag", (guests / "hello.wasm").read_bytes() + b"\0\0")  # v1 -> other bytes
    assert second.digest != first.digest
    assert "no signature found" in _refusal(node, node.pull(second), second, "retag-1")


def test_warn_mode_runs_and_logs(node: Node, guests: Path) -> None:
    ref = node.push_image("relaxed/hello", (guests / "hello.wasm").read_bytes())
    assert node.run(node.pull(ref), "warn-1").strip() == "hello from wasm"
    assert (f"image {ref.name}@{ref.digest} would be refused (warn mode, running it): rule 2"
            in shim_log_text(node.containerd))


def test_unreachable_registry_without_cached_verification_refuses(node: Node, guests: Path) -> None:
    ref = node.push_image("team/offline", (guests / "hello.wasm").read_bytes())
    sign_image(node.client, ref, node.team)
    image = node.pull(ref)
    node.registry.stop()
    stderr = _refusal(node, image, ref, "offline-1")
    assert "cannot check signatures" in stderr


def test_policy_that_does_not_parse_refuses_everything(node_factory: Callable[..., Node], guests: Path) -> None:
    node = node_factory(policy='default = "allow"\n[[rule]]\nimages = "not a list"\n')
    ref = node.push_image("open/any", (guests / "hello.wasm").read_bytes())  # no rule would match it
    image = node.pull(ref)
    stderr = node.run(image, "badpolicy-1", check=False)
    assert "hello from wasm" not in stderr
    assert "the shim's signature policy cannot be used, so nothing runs" in stderr
    assert "rule 1: images must be a non-empty list of strings" in stderr
    assert "every container will be refused" in shim_log_text(node.containerd)
    # The daemon exits once idle (no lingering with the broken file): the next container reads it again.
    wait_for(lambda: not daemon_pids(node.containerd), 20, "the daemon with the unusable policy to exit")

def test_shim_pulls_annotated_artifact_itself(node: Node, guests: Path, busybox_image_tar: Path) -> None:
    # The stand-in image: any small image; the process args name where the artifact's module goes.
    node.containerd.import_image(busybox_image_tar)
    busybox_image = BUSYBOX_REF
    signed = parse_reference(f"{node.registry.address}/team/artifact:v1")
    signed = signed.with_digest(push_wasm(node.client, str(guests / "hello.wasm"), signed))
    sign_image(node.client, signed, node.team)
    annotation = f"wasm.shim.io/artifact={signed.name}:v1"
    out = node.containerd.ctr("run", "--rm", "--runtime", RUNTIME, "--annotation", annotation, busybox_image,
                              "artifact-1", "/app.wasm", timeout=120)
    assert out.stdout.strip() == "hello from wasm"
    cached = node.tmp / "artifacts" / "blobs" / "sha256"
    assert any(p.stat().st_size == (guests / "hello.wasm").stat().st_size for p in cached.iterdir())
    unsigned = parse_reference(f"{node.registry.address}/team/artifact2:v1")
    unsigned = unsigned.with_digest(push_wasm(node.client, str(guests / "hello.wasm"), unsigned,
                                              annotations={"x": "unsigned"}))
    failed = node.containerd.ctr("run", "--rm", "--runtime", RUNTIME, "--annotation",
                                 f"wasm.shim.io/artifact={unsigned.name}:v1", busybox_image, "artifact-2",
                                 "/app.wasm", check=False, timeout=120)
    assert failed.returncode != 0
    assert f"image {unsigned.name}@{unsigned.digest} refused by the signature policy: rule 1" in failed.stderr


def test_refusal_leaves_the_daemon_and_other_tasks_running(node: Node, guests: Path) -> None:
    sleeper = node.push_image("team/sleeper", (guests / "sleep.wasm").read_bytes())
    sign_image(node.client, sleeper, node.team)
    node.containerd.ctr("run", "-d", "--runtime", RUNTIME, node.pull(sleeper), "sleeper-1", "/app.wasm", "60",
                        timeout=120)
    wait_for(lambda: task_status(node.containerd, "sleeper-1") == "RUNNING", 30, "the signed sleeper to run")
    unsigned = node.push_image("team/sleeper-unsigned", (guests / "sleep.wasm").read_bytes() + b"\0")
    _refusal(node, node.pull(unsigned), unsigned, "refused-1")
    assert task_status(node.containerd, "sleeper-1") == "RUNNING"
    assert task_status(node.containerd, "refused-1") == ""
    node.containerd.ctr("task", "kill", "-s", "SIGKILL", "sleeper-1")
    wait_for(lambda: task_status(node.containerd, "sleeper-1") in ("STOPPED", ""), 30, "the sleeper to stop")
    node.containerd.ctr("task", "rm", "sleeper-1", check=False)
    node.containerd.ctr("container", "rm", "sleeper-1", check=False)


def test_annotated_artifact_with_a_swapped_blob_is_refused_and_not_cached(node: Node, guests: Path,
                                                                         busybox_image_tar: Path) -> None:
    node.containerd.import_image(busybox_image_tar)
    wasm = (guests / "hello.wasm").read_bytes()
    ref = parse_reference(f"{node.registry.address}/team/swapped:v1")
    ref = ref.with_digest(push_wasm(node.client, str(guests / "hello.wasm"), ref))
    sign_image(node.client, ref, node.team)
    layer = "sha256:" + hashlib.sha256(wasm).hexdigest()
    node.registry.blob_path(layer).write_bytes(wasm[::-1])  # the registry now serves other bytes for that digest
    failed = node.containerd.ctr("run", "--rm", "--runtime", RUNTIME, "--annotation",
                                 f"wasm.shim.io/artifact={ref.name}:v1", BUSYBOX_REF, "swapped-1", "/app.wasm",
                                 check=False, timeout=120)
    assert failed.returncode != 0
    assert f"annotation wasm.shim.io/artifact={ref.name}:v1: blob {layer}" in failed.stderr
    assert "tampered or corrupt" in failed.stderr
    cache = node.tmp / "artifacts"
    assert not (cache / "blobs" / "sha256" / layer.removeprefix("sha256:")).exists()
    assert list((cache / "tmp").iterdir()) == []


# -- the registries a pod may name ------------------------------------------------------------------------------
def test_an_artifact_from_a_registry_the_node_does_not_allow_is_refused_before_any_connection(
        node: Node, guests: Path, busybox_image_tar: Path) -> None:
    node.containerd.import_image(busybox_image_tar)
    allowed = parse_reference(f"{node.registry.address}/team/listed:v1")
    allowed = allowed.with_digest(push_wasm(node.client, str(guests / "hello.wasm"), allowed))
    sign_image(node.client, allowed, node.team)
    watched = socket.create_server(("127.0.0.1", 0))  # a registry a pod might aim the daemon at
    watched.setblocking(False)
    try:
        port = watched.getsockname()[1]
        for task_id, reference, name in (
                ("elsewhere-1", f"127.0.0.1:{port}/team/app:v1", f"127.0.0.1:{port}/team/app"),
                ("loopback-1", f"LocalHost:{port}/team/app:v1", f"localhost:{port}/team/app"),
                ("other-repo-1", f"{node.registry.address}/other/app:v1", f"{node.registry.address}/other/app")):
            failed = node.containerd.ctr("run", "--rm", "--runtime", RUNTIME, "--annotation",
                                         f"wasm.shim.io/artifact={reference}", BUSYBOX_REF, task_id, "/app.wasm",
                                         check=False, timeout=120)
            node.containerd.ctr("container", "rm", task_id, check=False)
            assert failed.returncode != 0
            assert (f"annotation wasm.shim.io/artifact={reference}: {reference} is not fetched: its registry and "
                    f"repository ({name}) are not in the node's allowed artifact registries (artifact_registries: "
                    f"{node.registry.address}/team)" in failed.stderr), failed.stderr
        with pytest.raises(BlockingIOError):
            watched.accept()  # the kernel queues every connection made, even a closed one: none was
    finally:
        watched.close()
    ok = node.containerd.ctr("run", "--rm", "--runtime", RUNTIME, "--annotation",
                             f"wasm.shim.io/artifact={allowed.name}:v1", BUSYBOX_REF, "listed-1", "/app.wasm",
                             timeout=120)
    assert ok.stdout.strip() == "hello from wasm"


# -- caches checked before they are trusted ---------------------------------------------------------------------
def _forge_verification(node: Node, ref: Reference, directory: Path) -> Path:
    """A verification record for `ref` under rule 1's keys, with the right name, as a forger would write it."""
    from wasm_shim.oci.policy import load_policy

    fingerprint = load_policy(str(node.tmp / "policy.toml")).rules[0].fingerprint
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / (hashlib.sha256(f"{ref.digest}\n{fingerprint}".encode()).hexdigest() + ".json")
    path.write_text(json.dumps({"digest": ref.digest, "keys": fingerprint, "verified_at": time.time()}))
    os.chmod(path, 0o600)
    return path


def test_a_forged_verification_record_does_not_let_an_unsigned_image_run(node: Node, guests: Path) -> None:
    ref = node.push_image("team/forged", (guests / "hello.wasm").read_bytes())
    forged = _forge_verification(node, ref, node.tmp / "shim-cache" / "verified")
    stderr = _refusal(node, node.pull(ref), ref, "forged-1")
    assert "no signature found" in stderr and "signature verified (cached)" not in stderr
    assert not forged.exists(), "the forged record is removed"
    assert f"signature verification record {forged} refused and removed" in shim_log_text(node.containerd)


@pytest.mark.parametrize("problem", ["mode", "owner", "symlink"])
def test_a_cache_dir_others_control_is_not_used(node_factory: Callable[..., Node], guests: Path,
                                                problem: str) -> None:
    node = node_factory()
    cache = node.tmp / "shim-cache"
    ref = node.push_image("team/planted", (guests / "hello.wasm").read_bytes())
    verified = cache / "verified"
    if problem == "symlink":
        planted = node.tmp / "planted"
        forged = _forge_verification(node, ref, planted)
        verified.symlink_to(planted)
    else:
        forged = _forge_verification(node, ref, verified)
        if problem == "mode":
            os.chmod(cache, 0o777)  # a local user may write in it
        else:
            os.chown(verified, 65534, 65534)
    stderr = _refusal(node, node.pull(ref), ref, f"planted-{problem}")
    assert "no signature found" in stderr
    log = shim_log_text(node.containerd)
    assert f"signature verification cache {verified} is not used (" in log
    assert "verifications are kept in memory only" in log
    assert forged.exists(), "nothing is read, written or removed in a directory others control"


@pytest.mark.parametrize("damage", ["tampered", "planted"])
def test_a_tampered_artifact_cache_entry_is_detected_and_fetched_again(node: Node, guests: Path,
                                                                        busybox_image_tar: Path, damage: str) -> None:
    node.containerd.import_image(busybox_image_tar)
    wasm = (guests / "hello.wasm").read_bytes()
    ref = parse_reference(f"{node.registry.address}/team/cached:v1")
    ref = ref.with_digest(push_wasm(node.client, str(guests / "hello.wasm"), ref))
    sign_image(node.client, ref, node.team)
    artifacts = node.tmp / "artifacts"
    blob = artifacts / "blobs" / "sha256" / hashlib.sha256(wasm).hexdigest()
    other = (guests / "exit_code.wasm").read_bytes()  # a valid module that is not the one signed
    annotation = f"wasm.shim.io/artifact={ref.name}:v1"
    if damage == "tampered":  # the daemon cached it, then the file changed under it
        first = node.containerd.ctr("run", "--rm", "--runtime", RUNTIME, "--annotation", annotation, BUSYBOX_REF,
                                    "cached-1", "/app.wasm", timeout=120)
        assert first.stdout.strip() == "hello from wasm"
        blob.write_bytes(other)
    else:  # a local user planted it before the first daemon, in a directory left writable for others
        blob.parent.mkdir(parents=True)
        blob.write_bytes(other)
        for directory in (artifacts, artifacts / "blobs", blob.parent):
            os.chmod(directory, 0o777)
    again = node.containerd.ctr("run", "--rm", "--runtime", RUNTIME, "--annotation", annotation, BUSYBOX_REF,
                                "cached-2", "/app.wasm", timeout=120)
    assert again.stdout.strip() == "hello from wasm", again.stdout
    log = shim_log_text(node.containerd)
    if damage == "tampered":
        assert f"artifact cache: blob {blob} refused and removed (its content has digest sha256:" in log
        assert blob.read_bytes() == wasm, "fetched again into the cache"
    else:
        assert f"artifact cache {artifacts} is not used (" in log
        assert blob.read_bytes() == other, "the refused directory is not written to"


# -- policy names in canonical form -----------------------------------------------------------------------------
@pytest.mark.parametrize("spelling", ["rule", "image"])
def test_a_differently_spelled_name_of_a_protected_repository_is_still_checked(
        node_factory: Callable[..., Node], guests: Path, spelling: str) -> None:
    """The rule or the pulled name spells the registry host in other letter case; either way the rule applies."""
    rule_host = "LocalHost" if spelling == "rule" else "localhost"
    node = node_factory(policy=lambda port: f'default = "allow"\n[[rule]]\nimages = ["{rule_host}:{port}/team/*"]\n'
                                            'keys = ["team.pub"]\nmode = "enforce"\n[registry]\ntimeout = 5\n')
    pushed = node.push_image("team/spelled", (guests / "hello.wasm").read_bytes())
    image_host = f"LOCALHOST:{node.registry.port}" if spelling == "image" else f"localhost:{node.registry.port}"
    ref = parse_reference(f"{image_host}/team/spelled:v1").with_digest(pushed.digest)
    stderr = _refusal(node, node.pull(ref), ref, f"spelled-{spelling}")
    assert "no signature found" in stderr
    sign_image(node.client, pushed, node.team)
    assert node.run(node.pull(ref), f"spelled-{spelling}-signed").strip() == "hello from wasm"
